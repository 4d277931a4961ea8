"""VBench Quality Score: the normalisation by hand, the worker protocol, clear errors, and an
end-to-end temporal_flickering run when a VBench environment is present (VBENCH_PYTHON)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.cli import main, run_eval
from eval.vbench_quality import QUALITY_DIMENSIONS, VBenchUnavailable, column, evaluate_videos, preflight, quality_score
from tests.test_eval import eval_cfg, read_csv, shifted, write_run

VBENCH_PYTHON = os.environ.get("VBENCH_PYTHON")
needs_vbench = pytest.mark.skipif(
    not (VBENCH_PYTHON and os.path.isfile(VBENCH_PYTHON)),
    reason="no VBench environment: set VBENCH_PYTHON to the python made by scripts/setup_vbench_env.sh",
)


def test_quality_score_by_hand():
    v = {
        "subject_consistency": 0.95,
        "background_consistency": 0.96,
        "temporal_flickering": 0.97,
        "motion_smoothness": 0.98,
        "dynamic_degree": 0.5,
        "aesthetic_quality": 0.6,
        "imaging_quality": 0.65,
    }
    expected = (
        (0.95 - 0.1462) / (1 - 0.1462)
        + (0.96 - 0.2615) / (1 - 0.2615)
        + (0.97 - 0.6293) / (1 - 0.6293)
        + (0.98 - 0.706) / (0.9975 - 0.706)
        + 0.5 * 0.5
        + 0.6
        + 0.65
    ) / 6.5
    assert quality_score(v) == pytest.approx(expected)
    assert quality_score({d: hi for d, (lo, hi, w) in QUALITY_DIMENSIONS.items()}) == pytest.approx(1.0)
    assert quality_score({d: lo for d, (lo, hi, w) in QUALITY_DIMENSIONS.items()}) == pytest.approx(0.0)
    partial = dict(v)
    del partial["dynamic_degree"]
    assert math.isnan(quality_score(partial))
    assert quality_score(partial, allow_partial=True) == pytest.approx((expected * 6.5 - 0.25) / 6.0)
    assert quality_score({"temporal_flickering": 0.9}, allow_partial=True) == pytest.approx((0.9 - 0.6293) / 0.3707)
    assert math.isnan(quality_score({}, allow_partial=True))


def test_no_vbench_python_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VBENCH_PYTHON", raising=False)
    root = tmp_path / "runs"
    write_run(root, model="tiny-vid", media="video")
    out = tmp_path / "eval_out"
    code = main([f"runs=[{root}]", f"out={out}", "vbench.enabled=true"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("eval:")]
    assert code == 2 and len(lines) == 1 and "vbench.python is not set" in lines[0]
    assert "scripts/setup_vbench_env.sh" in lines[0] and not out.exists()
    code = main([f"runs=[{root}]", f"out={out}", "vbench.enabled=true", f"vbench.python={tmp_path / 'nope'}"])
    assert code == 2 and "is not an executable python" in capsys.readouterr().err and not out.exists()
    code = main([f"runs=[{root}]", f"out={out}", "vbench.enabled=true", f"vbench.python={sys.executable}",
                 "vbench.dimensions=[temporal_flickering,overall_vibes]"])
    err = capsys.readouterr().err
    assert code == 2 and "vbench.dimensions: unknown 'overall_vibes'; accepted: subject_consistency" in err
    assert not out.exists()


def test_worker_protocol_without_vbench(tmp_path):
    """The worker runs under any python; without vbench it answers one clear line."""
    import importlib.util

    if importlib.util.find_spec("vbench") is not None:
        pytest.skip("vbench is importable in this environment")
    with pytest.raises(VBenchUnavailable, match=r"vbench does not import in .*ModuleNotFoundError"):
        preflight(sys.executable, ["temporal_flickering"])


# --------------------------------------------------------------------------- with a VBench environment


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 8) -> None:
    import imageio.v2 as imageio

    imageio.mimwrite(path, frames, fps=fps, codec="libx264", quality=10, macro_block_size=16)


def _flicker_by_hand(path: Path) -> float:
    """VBench's temporal_flickering: (255 - mean over frame pairs of mean |f[i+1] - f[i]|) / 255."""
    import imageio.v2 as imageio

    frames = [f.astype(np.float32) for f in imageio.mimread(path)]
    maes = [np.mean(np.abs(b - a)) for a, b in zip(frames, frames[1:])]
    return (255.0 - float(np.mean(maes))) / 255.0


def _synthetic_videos(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, (64, 64, 3), dtype=np.uint8)
    still = [base.copy() for _ in range(8)]
    flicker = [np.clip(base.astype(int) + (i % 2) * 50, 0, 255).astype(np.uint8) for i in range(8)]
    vids = {}
    for name, frames in (("still", still), ("flicker", flicker)):
        vids[name] = tmp_path / f"{name}.mp4"
        _write_video(vids[name], frames)
    return vids


@needs_vbench
def test_temporal_flickering_end_to_end(tmp_path):
    vids = _synthetic_videos(tmp_path)
    got = evaluate_videos({k: (p, "a synthetic video") for k, p in vids.items()}, ["temporal_flickering"],
                          tmp_path / "work", VBENCH_PYTHON)
    assert set(got) == {"still", "flicker"}
    for k, p in vids.items():
        assert got[k]["temporal_flickering"] == pytest.approx(_flicker_by_hand(p), abs=5e-3)
    assert got["still"]["temporal_flickering"] > 0.99 > got["flicker"]["temporal_flickering"]


@needs_vbench
def test_table1_vbench_column_through_the_pipeline(tmp_path):
    vids = _synthetic_videos(tmp_path)
    root = tmp_path / "out"
    p = "a cat"
    write_run(root, model="tiny-vid", media="video", prompt=p, video=vids["still"])
    write_run(root, model="tiny-vid", media="video", algorithm="chords", prompt=p, num_cores=4, init_t=[0, 8, 16, 32],
              hits=[(4, 20, shifted(p, 0, 0.4))], rounds=50, video=vids["flicker"])
    res = run_eval(eval_cfg(tmp_path, [root], f"vbench.python={VBENCH_PYTHON}", "vbench.enabled=true", "vbench.mode=custom",
                            "vbench.dimensions=[temporal_flickering]", "vbench.allow_partial=true", "figures=[]"))
    t1 = read_csv(tmp_path / "eval_out" / "table1.csv").set_index(["Model", "Method"])
    for method, video in (("Sequential", "still"), ("CHORDS", "flicker")):
        x = _flicker_by_hand(vids[video])
        assert t1.loc[("tiny-vid", method), "K4_vbench_quality"] == pytest.approx((x - 0.6293) / (1 - 0.6293), abs=2e-2)
    md = (tmp_path / "eval_out" / "table1.md").read_text()
    assert "%" in md
    # Without allow_partial a single dimension gives no Quality Score ("n/a"), never a wrong one.
    res = run_eval(eval_cfg(tmp_path, [root], f"vbench.python={VBENCH_PYTHON}", "vbench.enabled=true", "vbench.mode=custom",
                            "vbench.dimensions=[temporal_flickering]", "figures=[]"))
    assert res.summary["vbench_quality"].isna().all()
    assert res.summary["vbench_temporal_flickering"].notna().all()


@needs_vbench
def test_missing_vbench_weights_name_what_to_fetch(tmp_path, capsys):
    with pytest.raises(VBenchUnavailable, match=r"amt_model/amt-s\.pth \(motion_smoothness; from https://"):
        preflight(VBENCH_PYTHON, ["temporal_flickering", "motion_smoothness"], cache_dir=str(tmp_path / "empty"))
    root = tmp_path / "runs"
    write_run(root, model="tiny-vid", media="video")
    out = tmp_path / "eval_out"
    code = main([f"runs=[{root}]", f"out={out}", "vbench.enabled=true", f"vbench.python={VBENCH_PYTHON}",
                 f"vbench.cache_dir={tmp_path / 'empty'}"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("eval:")]
    assert code == 2 and len(lines) == 1 and "VBench weights missing under" in lines[0]
    for rel in ("dino_vitbase16_pretrain.pth", "ViT-B-32.pt", "raft-things.pth", "musiq_spaq_ckpt-358bb6af.pth"):
        assert rel in lines[0]
    assert not out.exists()


def test_setup_script_is_valid_bash():
    script = Path(__file__).resolve().parent.parent / "scripts" / "setup_vbench_env.sh"
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert "vbench==0.1.5" in text and "setuptools<81" in text and "torch===2.13.0" in text


def test_per_video_values_as_vbench_writes_them_give_a_realistic_quality_score(tmp_path):
    """VBench 0.1.5 writes imaging quality per video as MUSIQ on 0-100 (only its aggregate is /100);
    the other dimensions on 0-1. A worker answering exactly that must give a Quality Score near 0.8."""
    per_video = {"subject_consistency": 0.95, "background_consistency": 0.96, "temporal_flickering": 0.97,
                 "motion_smoothness": 0.98, "dynamic_degree": 0.5, "aesthetic_quality": 0.6, "imaging_quality": 65.0}
    answer = json.dumps({"ok": True, "per_video": {"000000.mp4": per_video}})
    fake = tmp_path / "fake-python"
    fake.write_text(f"#!/bin/sh\necho 'vbench chatter'\necho '{answer}'\n")
    fake.chmod(0o755)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0")
    got = evaluate_videos({"run": (video, "a prompt")}, list(per_video), tmp_path / "work", str(fake))
    assert got["run"]["imaging_quality"] == pytest.approx(0.65)
    assert got["run"]["subject_consistency"] == pytest.approx(0.95)
    expected = (
        (0.95 - 0.1462) / 0.8538 + (0.96 - 0.2615) / 0.7385 + (0.97 - 0.6293) / 0.3707 + (0.98 - 0.706) / 0.2915
        + 0.5 * 0.5 + 0.6 + 0.65
    ) / 6.5
    assert quality_score(got["run"]) == pytest.approx(expected)
    assert 0.75 < quality_score(got["run"]) < 0.85


# --------------------------------------------------------------------------- standard mode (a fake VBench)

FAKE_WORKER = r"""
import json, os, sys
log, full_info = os.environ["FAKE_VBENCH_LOG"], os.environ["FAKE_VBENCH_FULL_INFO"]
cmd = sys.argv[2]
if cmd == "check":
    print(json.dumps({"ok": True, "vbench": "fake", "cache_dir": "-", "python": sys.executable, "full_info": full_info}))
    sys.exit(0)
job = json.load(open(sys.argv[3]))
with open(log, "a") as f:
    f.write(json.dumps({"dimensions": job["dimensions"], "prompts": sorted(job["prompts"].values())}) + "\n")
# a per-video value that depends on the prompt and the dimension: 0.5 + len(prompt) / 1000 + 0.01 * rank of the dimension
dims = sorted(job["dimensions"])
# (imaging quality per video on MUSIQ's 0-100, as VBench 0.1.5 writes it)
scale = {"imaging_quality": 100.0}
per = {name: {d: scale.get(d, 1.0) * (0.5 + len(p) / 1000 + 0.01 * dims.index(d)) for d in job["dimensions"]}
       for name, p in job["prompts"].items()}
print(json.dumps({"ok": True, "per_video": per}))
"""


def fake_vbench(tmp_path: Path, info: list[dict]) -> tuple[str, Path]:
    worker = tmp_path / "fake_worker.py"
    worker.write_text(FAKE_WORKER)
    python = tmp_path / "fake-python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {worker} \"$@\"\n")
    python.chmod(0o755)
    fi = tmp_path / "VBench_full_info.json"
    fi.write_text(json.dumps(info))
    log = tmp_path / "calls.jsonl"
    os.environ["FAKE_VBENCH_LOG"], os.environ["FAKE_VBENCH_FULL_INFO"] = str(log), str(fi)
    return str(python), log


def test_standard_mode_scores_each_dimension_only_on_its_own_prompts(tmp_path, monkeypatch):
    """VBench's standard protocol: a dimension is scored only on the prompts tagged with it in
    VBench_full_info.json; the per-dimension table lists each with its n; the Quality Score of a
    cell comes from its dimension means; fewer than 5 seeds per prompt is reported."""
    monkeypatch.setenv("FAKE_VBENCH_LOG", "")
    dims = list(QUALITY_DIMENSIONS)
    pa, pb = "a dog running", "a quiet beach at dawn"
    info = [{"prompt_en": pa, "dimension": dims[:4]}, {"prompt_en": "a quiet  beach\nat dawn", "dimension": dims[4:]},
            {"prompt_en": "never sampled", "dimension": dims}]
    python, log = fake_vbench(tmp_path, info)
    root = tmp_path / "runs"
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0")
    for seed in (0, 1):
        for p in (pa, pb, "a prompt VBench does not have"):
            write_run(root, model="tiny-vid", media="video", prompt=p, seed=seed, video=video)
            write_run(root, model="tiny-vid", media="video", algorithm="chords", prompt=p, seed=seed, num_cores=4,
                      init_t=[0, 8, 16, 32], hits=[(4, 21, shifted(p, seed, 0.1))], rounds=50, video=video)
    res = run_eval(eval_cfg(tmp_path, [root], f"vbench.python={python}", "vbench.enabled=true", "figures=[]"))
    calls = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert sorted(tuple(c["dimensions"]) for c in calls) == sorted([tuple(dims[:4]), tuple(dims[4:])])
    for c in calls:
        assert set(c["prompts"]) == ({pa} if c["dimensions"] == dims[:4] else {pb})
    s = res.summary.set_index("method")
    dsorted = {d: sorted(dims[:4]).index(d) if d in dims[:4] else sorted(dims[4:]).index(d) for d in dims}
    for d in dims:
        p = pa if d in dims[:4] else pb
        assert s.loc["CHORDS", column(d)] == pytest.approx(0.5 + len(p) / 1000 + 0.01 * dsorted[d])
        assert s.loc["CHORDS", f"n_{column(d)}"] == 2  # two seeds of its one prompt
    expected = quality_score({d: s.loc["CHORDS", column(d)] for d in dims})
    assert s.loc["CHORDS", "vbench_quality"] == pytest.approx(expected)
    assert s.loc["CHORDS", "vbench_quality_lo"] <= expected <= s.loc["CHORDS", "vbench_quality_hi"]
    assert any("not in VBench_full_info.json" in p and "1 " not in p[:3] for p in res.problems)
    assert any("sample(s) per prompt; VBench's standard protocol uses 5" in p for p in res.problems)
    table = (tmp_path / "eval_out" / "vbench_dimensions.md").read_text()
    assert "subject_consistency" in table and "(n=2)" in table and "vbench_quality" in table.replace("VBench Quality", "vbench_quality")
    # custom mode: every video on every dimension, in one call
    log.write_text("")
    run_eval(eval_cfg(tmp_path, [root], f"vbench.python={python}", "vbench.enabled=true", "vbench.mode=custom",
                      "figures=[]", "cache=false", f"out={tmp_path / 'eo_custom'}"))
    calls = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert len(calls) == 1 and len(calls[0]["prompts"]) == 12
