"""Runs inside the VBench environment (vbench 0.1.5); started by eval/vbench_quality.py.

Standalone on purpose: standard library + vbench only, no import of the harness.

    python vbench_worker.py check --dimensions subject_consistency,temporal_flickering
    python vbench_worker.py run JOB.json

Both print one JSON line last on stdout: {"ok": true, ...} or {"ok": false, "error": "one line"}.
``run`` reads {"videos_dir", "prompts": {file name: prompt}, "dimensions", "output_dir",
"device"} and answers {"ok": true, "per_video": {file name: {dimension: value}},
"aggregate": {dimension: value}}. VBench runs in custom-input mode with ``local=True``, so every
model comes from $VBENCH_CACHE_DIR (default ~/.cache/vbench) and nothing is downloaded behind
the user's back; ``check`` names each missing file and where to fetch it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

# What each quality dimension needs under VBENCH_CACHE_DIR with local=True (vbench 0.1.5).
_OPENAI = "https://openaipublic.azureedge.net/clip/models"
REQUIRED = {
    "subject_consistency": [
        ("dino_model/facebookresearch_dino_main", "git clone https://github.com/facebookresearch/dino"),
        ("dino_model/dino_vitbase16_pretrain.pth",
         "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    ],
    "background_consistency": [
        ("clip_model/ViT-B-32.pt",
         f"{_OPENAI}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"),
    ],
    "aesthetic_quality": [
        ("clip_model/ViT-L-14.pt",
         f"{_OPENAI}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"),
        ("aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
         "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth"),
    ],
    "imaging_quality": [
        ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",
         "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/musiq_spaq_ckpt-358bb6af.pth"),
    ],
    "motion_smoothness": [
        ("amt_model/amt-s.pth", "https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth"),
    ],
    "dynamic_degree": [
        ("raft_model/models/raft-things.pth",
         "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip (unzip into raft_model/)"),
    ],
    "temporal_flickering": [],
}


def answer(obj: dict, code: int = 0) -> None:
    sys.stdout.write("\n" + json.dumps(obj) + "\n")
    sys.stdout.flush()
    sys.exit(code)


def cache_dir() -> str:
    return os.environ.get("VBENCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vbench")


def missing(dimensions: list[str]) -> list[str]:
    root = cache_dir()
    out = []
    for dim in dimensions:
        for rel, src in REQUIRED[dim]:
            if not os.path.exists(os.path.join(root, rel)):
                out.append(f"{rel} ({dim}; from {src})")
    return out


def check(dimensions: list[str]) -> None:
    unknown = [d for d in dimensions if d not in REQUIRED]
    if unknown:
        answer({"ok": False, "error": f"unknown VBench quality dimension {unknown[0]!r}; accepted: {', '.join(REQUIRED)}"}, 2)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            import torch  # noqa: F401
            import vbench  # noqa: F401
    except Exception as e:  # noqa: BLE001 - report any import failure in one line
        answer({"ok": False, "error": f"vbench does not import in {sys.executable}: {type(e).__name__}: {' '.join(str(e).split())[:300]}"}, 2)
    lost = missing(dimensions)
    if lost:
        answer({"ok": False, "error": f"VBench weights missing under {cache_dir()}: " + "; ".join(lost)
                + " — fetch them there (or set vbench.cache_dir / VBENCH_CACHE_DIR, or narrow vbench.dimensions)"}, 3)
    try:
        from importlib.metadata import version
        v = version("vbench")
    except Exception:  # noqa: BLE001
        v = "unknown"
    full_info = os.path.join(os.path.dirname(__import__("vbench").__file__), "VBench_full_info.json")
    answer({"ok": True, "vbench": v, "cache_dir": cache_dir(), "python": sys.executable,
            "full_info": full_info if os.path.isfile(full_info) else None})


def run(job_path: str) -> None:
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    dims = list(job["dimensions"])
    lost = missing(dims)
    if lost:
        answer({"ok": False, "error": f"VBench weights missing under {cache_dir()}: " + "; ".join(lost)}, 3)
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the answer
        import torch
        from vbench import VBench

        device = job.get("device") or "auto"
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        videos_dir = job["videos_dir"]
        out_dir = job["output_dir"]
        os.makedirs(out_dir, exist_ok=True)
        full_info = os.path.join(os.path.dirname(__import__("vbench").__file__), "VBench_full_info.json")
        bench = VBench(torch.device(device), full_info, out_dir)
        bench.evaluate(
            videos_path=videos_dir,
            name="eval",
            prompt_list=job.get("prompts") or [],
            dimension_list=dims,
            local=True,
            mode="custom_input",
        )
    with open(os.path.join(out_dir, "eval_eval_results.json"), encoding="utf-8") as f:
        results = json.load(f)
    per_video: dict[str, dict[str, float]] = {}
    aggregate: dict[str, float] = {}
    for dim, value in results.items():
        if not isinstance(value, list) or len(value) != 2:
            continue
        agg, rows = value
        if isinstance(agg, (int, float)):
            aggregate[dim] = float(agg)
        for row in rows if isinstance(rows, list) else []:
            score = row.get("video_results") if isinstance(row, dict) else None
            if isinstance(score, bool):
                score = float(score)
            if isinstance(score, (int, float)):
                name = os.path.basename(str(row.get("video_path", "")))
                per_video.setdefault(name, {})[dim] = float(score)
    answer({"ok": True, "per_video": per_video, "aggregate": aggregate})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--dimensions", required=True)
    r = sub.add_parser("run")
    r.add_argument("job")
    a = ap.parse_args()
    try:
        if a.cmd == "check":
            check([d for d in a.dimensions.split(",") if d])
        else:
            run(a.job)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - one line back to eval
        answer({"ok": False, "error": f"VBench failed: {type(e).__name__}: {' '.join(str(e).split())[:400]}"}, 1)


if __name__ == "__main__":
    main()
