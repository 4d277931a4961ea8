"""Eval stage on synthetic run folders: every number in the tables against a hand computation.

``write_run`` writes a valid run folder per docs/run_folders.md with known latents, rounds and
times; the other eval test files import it from here.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from eval.cli import main, run_eval, validate, compose_config
from eval.metrics import latent_rmse, l1_distance
from eval.runs import Problems, assign_labels, load_run, load_runs, pair_references

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (1, 2, 3, 4)


# --------------------------------------------------------------------------- run-folder writer


def base_latent(prompt: str, seed: int) -> torch.Tensor:
    """A deterministic 'sequential output' per (prompt, seed)."""
    g = torch.Generator().manual_seed(int(hashlib.sha1(f"{prompt}|{seed}".encode()).hexdigest()[:8], 16))
    return torch.randn(SHAPE, generator=g)


def write_run(
    root: Path,
    *,
    model: str = "tiny-img",
    media: str = "image",
    algorithm: str = "sequential",
    prompt: str = "a red cube",
    seed: int = 0,
    num_steps: int = 50,
    num_cores: int = 1,
    hits: list[tuple[int, int, torch.Tensor]] | None = None,
    output_index: int | None = None,
    rounds: int | None = None,
    sample_s: float = 1.0,
    encode_s: float = 0.25,
    decode_s: float = 0.5,
    init_t: list[int] | None = None,
    stop: dict | None = None,
    tolerance: float | None = None,
    algo_tag: str | None = None,
    experiment_label: str | None = None,
    image: bool = False,
    video: Path | None = None,
    dtype: torch.dtype = torch.float32,
    hardware: str = "cpu",
    world_size: int | None = None,
    model_settings: dict | None = None,
    legacy: bool = False,
) -> Path:
    """Write one complete run folder; returns its path.

    ``hits``: (core, round, latent) in arrival order; default: one hit at round ``num_steps``
    holding ``base_latent(prompt, seed)`` (what sequential produces).
    """
    if hits is None:
        hits = [(1, num_steps, base_latent(prompt, seed))]
    if output_index is None:
        output_index = len(hits) - 1
    if rounds is None:
        rounds = max(h[1] for h in hits)
    tag = algo_tag or (algorithm if algorithm == "sequential" else f"{algorithm}-k{num_cores}" + (
        "-" + "-".join(map(str, init_t)) if init_t else "") + (f"-tol{tolerance}" if tolerance is not None else ""))
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:48]
    algo = {"algo_name": algorithm, "num_cores": num_cores, "init_t": init_t,
            "stopping_kwargs": stop or {"criterion": "none", "index": 0, "threshold": 4e-4}}
    if tolerance is not None:
        algo["tolerance"] = tolerance
    model_cfg = {"model_name": model, "num_inference_steps": num_steps, "seed": seed, **(model_settings or {})}
    world_size = num_cores if world_size is None else world_size
    identity = {"prompt": prompt, "model": model_cfg, "algo": algo,
                "hardware": {"name": hardware, "world_size": world_size},
                "run": {"experiment_label": experiment_label} if experiment_label else {}}
    key = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    folder = root / model / tag / f"{slug}-{key}"
    folder.mkdir(parents=True)
    latents = {f"hit_{i:02d}": h[2].to(dtype).contiguous() for i, h in enumerate(hits)}
    latents["output"] = hits[output_index][2].to(dtype).clone().contiguous()
    save_file(latents, str(folder / "latents.safetensors"))
    media_files = []
    if image:
        from PIL import Image

        g = torch.Generator().manual_seed(seed)
        arr = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / "image.png")
        media_files = ["image.png"]
    if video is not None:
        folder.joinpath("video.mp4").write_bytes(video.read_bytes())
        media_files = ["video.mp4"]
    config = {"algo": dict(algo), "model": dict(model_cfg)}
    if experiment_label:
        config["experiment_label"] = experiment_label
    stats = {
        "format": 1 if legacy else 2,
        **({} if legacy else {"key": key, "identity": identity}),
        "prompt": prompt,
        "seed": seed,
        "model": model,
        "media": media,
        "algorithm": algorithm,
        "algo_tag": tag,
        "algo": algo,
        "num_cores": num_cores,
        "num_steps": num_steps,
        "hardware": hardware,
        "world_size": world_size,
        "hits": [
            {"index": i, "core": c, "round": r, "wall_s": sample_s * r / rounds, "latent": f"hit_{i:02d}", "media": None}
            for i, (c, r, _x) in enumerate(hits)
        ],
        "rounds": rounds,
        "nfe": rounds * num_cores,
        "output_index": output_index,
        "output_round": hits[output_index][1],
        "timing": {"encode_s": encode_s, "sample_s": sample_s, "decode_s": decode_s,
                   "total_s": encode_s + sample_s + decode_s},
        "latent_shape": list(SHAPE),
        "latent_dtype": str(dtype).removeprefix("torch."),
        "media_files": media_files,
        "fps": 8 if media == "video" else None,
        "config": config,
        "versions": {"python": "3.11"},
        "created": "2026-11-22T00:00:00Z",
    }
    (folder / "stats.json").write_text(json.dumps(stats, indent=1), encoding="utf-8")
    return folder


def shifted(prompt: str, seed: int, c: float) -> torch.Tensor:
    """The sequential output plus a constant: latent RMSE against it is exactly |c|."""
    return base_latent(prompt, seed) + c


P1, P2 = "a red cube", "a blue sphere on grass"


def image_sweep(root: Path) -> None:
    """The Table 2 sweep, with numbers chosen so that every cell is a hand computation.

    Sequential (N=50): 50 rounds; sample_s 2.0 (P1) and 4.0 (P2).
    CHORDS K=4 0-8-16-32 (ours): output at round 21 (hit index 1 of 5), RMSE 0.1 (P1) and 0.3
      (P2), sample_s 1.0 and 2.0.
    CHORDS K=4 0-12-24-36 (uniform): output at round 25, RMSE 0.5 and 0.5, sample_s 1.5, 1.5.
    CHORDS K=8 0-2-4-8-16-24-32-40 (ours): output at round 17, RMSE 0.2, 0.2, sample_s 0.5, 1.5.
    ParaDIGMS K=4 tol 0.1: output at rounds 40 and 30, RMSE 0.05, 0.15, sample_s 1.6, 2.4.
    """
    for p, t in ((P1, 2.0), (P2, 4.0)):
        write_run(root, prompt=p, sample_s=t, image=True)
    for p, c, t in ((P1, 0.1, 1.0), (P2, 0.3, 2.0)):
        hits = [(0, 19, shifted(p, 0, 0.9)), (4, 21, shifted(p, 0, c)), (3, 30, shifted(p, 0, c / 2)),
                (2, 40, shifted(p, 0, c / 4)), (1, 50, shifted(p, 0, 0.0))]
        write_run(root, algorithm="chords", prompt=p, num_cores=4, init_t=[0, 8, 16, 32], hits=hits, output_index=1,
                  rounds=50, sample_s=t, stop={"criterion": "core_index", "index": 1}, image=True)
    for p in (P1, P2):
        hits = [(0, 24, shifted(p, 0, 2.0)), (4, 25, shifted(p, 0, 0.5)), (3, 38, shifted(p, 0, 0.25)),
                (2, 44, shifted(p, 0, 0.1)), (1, 50, shifted(p, 0, 0.0))]
        write_run(root, algorithm="chords", prompt=p, num_cores=4, init_t=[0, 12, 24, 36], hits=hits, output_index=1,
                  rounds=50, sample_s=1.5, stop={"criterion": "core_index", "index": 1}, image=True)
    for p, t in ((P1, 0.5), (P2, 1.5)):
        hits = [(0, 15, shifted(p, 0, 1.0)), (8, 17, shifted(p, 0, 0.2))]
        write_run(root, algorithm="chords", prompt=p, num_cores=8, init_t=[0, 2, 4, 8, 16, 24, 32, 40], hits=hits,
                  output_index=1, rounds=17, sample_s=t, stop={"criterion": "core_index", "index": 1}, image=True)
    for p, r, c, t in ((P1, 40, 0.05, 1.6), (P2, 30, 0.15, 2.4)):
        write_run(root, algorithm="paradigms", prompt=p, num_cores=4, hits=[(1, r, shifted(p, 0, c))], sample_s=t,
                  tolerance=0.1, image=True)


def video_sweep(root: Path) -> None:
    """Table 1 / Table 4: a video model at N=50 and N=100.

    N=50: Sequential 50 rounds, sample_s 10; CHORDS K=4 ours: round 20, RMSE 0.4, sample_s 4.
    N=100: Sequential 100 rounds, sample_s 20; CHORDS K=4 0-16-32-64 (preset scaled): round 40,
    RMSE 0.25, sample_s 8.
    """
    p = "a cat"
    write_run(root, model="tiny-vid", media="video", prompt=p, sample_s=10.0, decode_s=2.0)
    write_run(root, model="tiny-vid", media="video", algorithm="chords", prompt=p, num_cores=4, init_t=[0, 8, 16, 32],
              hits=[(4, 20, shifted(p, 0, 0.4)), (1, 50, shifted(p, 0, 0.0))], output_index=0, rounds=50, sample_s=4.0,
              decode_s=2.0)
    write_run(root, model="tiny-vid", media="video", prompt=p, num_steps=100, sample_s=20.0, decode_s=2.0,
              hits=[(1, 100, base_latent(p, 0))])
    f = write_run(root, model="tiny-vid", media="video", algorithm="chords", prompt=p, num_steps=100, num_cores=4,
                  init_t=[0, 16, 32, 64], hits=[(4, 40, shifted(p, 0, 0.25)), (1, 100, base_latent(p, 0))],
                  output_index=0, rounds=100, sample_s=8.0, decode_s=2.0)
    # Preset chosen by the runner for N=100: the resolved config says init_t=preset.
    s = json.loads((f / "stats.json").read_text())
    s["config"]["algo"]["init_t"] = "preset"
    (f / "stats.json").write_text(json.dumps(s))


def eval_cfg(tmp_path: Path, runs: list[Path], *overrides: str) -> dict:
    return validate(compose_config([f"runs=[{','.join(map(str, runs))}]", f"out={tmp_path / 'eval_out'}", *overrides]))


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=True)


def means(columns) -> list[str]:
    """A table's columns without their interval bounds (``*_lo`` / ``*_hi``)."""
    return [c for c in columns if not str(c).endswith(("_lo", "_hi"))]


# --------------------------------------------------------------------------- metrics


def test_latent_rmse_and_l1_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[1.0, 0.0], [3.0, 8.0]])
    assert latent_rmse(a, b) == pytest.approx(math.sqrt((0 + 4 + 0 + 16) / 4))
    assert l1_distance(a, b) == pytest.approx((0 + 2 + 0 + 4) / 4)
    # bfloat16 latents are compared in float64
    assert latent_rmse(a.bfloat16(), b.bfloat16()) == pytest.approx(math.sqrt(5))
    with pytest.raises(ValueError):
        latent_rmse(a, b[:1])


# --------------------------------------------------------------------------- tables


def test_table2_every_number_by_hand(tmp_path):
    image_sweep(tmp_path / "out")
    res = run_eval(eval_cfg(tmp_path, [tmp_path / "out"]))
    out = tmp_path / "eval_out"
    t2 = read_csv(out / "table2.csv").set_index(["Model", "Method"])
    assert list(t2.index) == [("tiny-img", "Sequential"), ("tiny-img", "ParaDIGMS"), ("tiny-img", "CHORDS"),
                              ("tiny-img", "CHORDS (uniform)")]
    per_k = ["time_s", "time_s_lo", "time_s_hi", "speedup", "speedup_lo", "speedup_hi", "nfe", "nfe_lo", "nfe_hi",
             "clip_score", "clip_score_lo", "clip_score_hi", "latent_rmse", "latent_rmse_lo", "latent_rmse_hi", "n"]
    assert [c for c in t2.columns] == [f"K{k}_{c}" for k in (4, 8) for c in per_k]
    seq, pdm, ch, uni = (t2.loc[("tiny-img", m)] for m in ("Sequential", "ParaDIGMS", "CHORDS", "CHORDS (uniform)"))
    # Sequential: time = mean(2, 4) in both K groups; no speedup / RMSE.
    assert seq["K4_time_s"] == pytest.approx(3.0) and seq["K8_time_s"] == pytest.approx(3.0)
    assert math.isnan(seq["K4_speedup"]) and math.isnan(seq["K4_latent_rmse"])
    # CHORDS K=4: time mean(1, 2); speedup 50/21; RMSE mean(0.1, 0.3).
    assert ch["K4_time_s"] == pytest.approx(1.5)
    assert ch["K4_speedup"] == pytest.approx(50 / 21)
    assert ch["K4_latent_rmse"] == pytest.approx(0.2)
    # CHORDS K=8: time mean(0.5, 1.5); speedup 50/17; RMSE 0.2.
    assert ch["K8_time_s"] == pytest.approx(1.0)
    assert ch["K8_speedup"] == pytest.approx(50 / 17)
    assert ch["K8_latent_rmse"] == pytest.approx(0.2)
    # Uniform K=4: 50/25, RMSE 0.5; no K=8 run: blank.
    assert uni["K4_speedup"] == pytest.approx(2.0) and uni["K4_latent_rmse"] == pytest.approx(0.5)
    assert math.isnan(uni["K8_speedup"]) and math.isnan(uni["K8_time_s"])
    # ParaDIGMS: output rounds 40 and 30 -> ratio of means 50 / 35 (not the mean of ratios).
    assert pdm["K4_speedup"] == pytest.approx(50 / 35)
    assert pdm["K4_time_s"] == pytest.approx(2.0)
    assert pdm["K4_latent_rmse"] == pytest.approx(0.1)
    # CLIP not enabled: quality columns empty.
    assert t2["K4_clip_score"].isna().all()
    # n, NFE and 95% intervals: the percentile bootstrap of the mean over the two prompts (a resample
    # of two values has mean 0.1, 0.2 or 0.3, so the interval is [0.1, 0.3]: never below 0 as the
    # t-interval's -1.07 was), bootstrap for speedup.
    assert ch["K4_n"] == 2 and seq["K4_n"] == 2 and ch["K4_nfe"] == pytest.approx(200)
    assert ch["K4_latent_rmse_lo"] == pytest.approx(0.1) and ch["K4_latent_rmse_hi"] == pytest.approx(0.3)
    assert ch["K4_speedup_lo"] == pytest.approx(50 / 21) and ch["K4_speedup_hi"] == pytest.approx(50 / 21)
    assert ch["K4_nfe_lo"] == pytest.approx(200) and ch["K4_nfe_hi"] == pytest.approx(200)
    assert pdm["K4_speedup_lo"] == pytest.approx(50 / 40) and pdm["K4_speedup_hi"] == pytest.approx(50 / 30)

    md = (out / "table2.md").read_text()
    row = next(ln for ln in md.splitlines() if "| CHORDS |" in ln.replace("  ", " ") or re.search(r"\|\s+CHORDS\s+\|", ln))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Model, Method, K4: time speedup nfe clip rmse n, K8: the same (paper's decimals, mean [95% CI])
    # time: bootstrap of mean(1, 2) stays within [1, 2]; CHORDS at hit 1 stops at round 21 in every
    # run: its speedup is set by the schedule and labelled so, not given a zero-width interval
    assert cells[:8] == ["tiny-img", "CHORDS", "1.5 [1.0, 2.0]", "2.4 (fixed)", "200 [200, 200]", "n/a",
                         "0.200 [0.100, 0.300]", "2"]
    assert cells[9] == "2.9 (fixed)" and cells[10] == "136 [136, 136]"
    seq_row = next(ln for ln in md.splitlines() if re.search(r"\|\s+Sequential\s+\|", ln))
    seq_cells = [c.strip() for c in seq_row.strip("|").split("|")]
    assert seq_cells[:2] == ["tiny-img", "Sequential"] and seq_cells[2].startswith("3.0 [")
    assert seq_cells[3] == "-" and seq_cells[4] == "50 [50, 50]" and seq_cells[5:8] == ["n/a", "-", "2"]
    uni_row = next(ln for ln in md.splitlines() if "uniform" in ln)
    assert [c.strip() for c in uni_row.strip("|").split("|")][8:] == ["", "", "", "", "", ""]
    header = md.splitlines()[2]
    assert "K=4 Time per sample (s) ↓" in header and "K=8 Latent RMSE ↓" in header and "K=4 NFE ↓" in header
    assert "K=4 n" in header and "95% CI" in md.splitlines()[0]
    tex = (out / "table2.tex").read_text()
    assert r"\multicolumn{6}{c}{Num Core = 4}" in tex and r"Speedup $\uparrow$" in tex and "\\begin{tabular}" in tex

    # Wall-clock ratio is reported separately (summary), never as "Speedup".
    s = res.summary.set_index(["method", "num_cores"])
    assert s.loc[("CHORDS", 4), "wall_speedup"] == pytest.approx(3.0 / 1.5)
    assert s.loc[("CHORDS", 4), "speedup"] == pytest.approx(50 / 21)
    assert s.loc[("CHORDS", 8), "wall_speedup"] == pytest.approx(3.0 / 1.0)
    assert s.loc[("ParaDIGMS", 4), "wall_speedup"] == pytest.approx(3.0 / 2.0)
    # End to end time: encode 0.25 + sample + decode 0.5.
    assert s.loc[("CHORDS", 4), "time_total_s"] == pytest.approx(1.5 + 0.75)
    assert s.loc[("Sequential", 1), "speedup"] == pytest.approx(1.0)
    runs = res.runs.set_index(["method", "prompt"])
    assert runs.loc[("CHORDS (uniform)", P1), "output_round"] == 25
    assert not res.problems


def test_time_total_option_and_decimals(tmp_path):
    image_sweep(tmp_path / "out")
    run_eval(eval_cfg(tmp_path, [tmp_path / "out"], "time=total", "decimals.speedup=3", "formats=[csv,md]"))
    out = tmp_path / "eval_out"
    t2 = read_csv(out / "table2.csv").set_index(["Model", "Method"])
    assert t2.loc[("tiny-img", "CHORDS"), "K4_time_s"] == pytest.approx(2.25)
    assert t2.loc[("tiny-img", "Sequential"), "K4_time_s"] == pytest.approx(3.75)
    assert "2.381" in (out / "table2.md").read_text()
    assert not (out / "table2.tex").exists()


def test_table3_init_sequence_ablation(tmp_path):
    image_sweep(tmp_path / "out")
    video_sweep(tmp_path / "out")
    run_eval(eval_cfg(tmp_path, [tmp_path / "out"]))
    out = tmp_path / "eval_out"
    t3 = read_csv(out / "table3.csv")
    assert means(t3.columns) == ["Num Core", "Initialization Sequence", *[f"{m}_{c}" for m, q in (
        ("tiny-img", "clip_score"), ("tiny-vid", "vbench_quality")) for c in ("speedup", "nfe", q, "latent_rmse", "n")]]
    rows = {(r["Num Core"], r["Initialization Sequence"]): r for _, r in t3.iterrows()}
    assert list(rows) == [(8, "Ours"), (4, "Ours"), (4, "Uniform")]  # K descending, Ours first
    assert rows[(8, "Ours")]["tiny-img_speedup"] == pytest.approx(50 / 17)
    assert math.isnan(rows[(8, "Ours")]["tiny-vid_speedup"])
    assert rows[(4, "Ours")]["tiny-img_speedup"] == pytest.approx(50 / 21)
    assert rows[(4, "Ours")]["tiny-vid_speedup"] == pytest.approx(50 / 20)
    assert rows[(4, "Uniform")]["tiny-img_speedup"] == pytest.approx(2.0)
    md = (out / "table3.md").read_text()
    row = next(ln for ln in md.splitlines() if "Uniform" in ln)
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "4", "Uniform", "2.0 (fixed)", "200 [200, 200]", "n/a", "0.500 [0.500, 0.500]", "2", "", "", "", "", ""]


def test_table1_and_table4_step_counts(tmp_path):
    video_sweep(tmp_path / "out")
    res = run_eval(eval_cfg(tmp_path, [tmp_path / "out"]))
    out = tmp_path / "eval_out"
    # Table 1 uses N=50 (the paper's default) and says which N it left out.
    t1 = read_csv(out / "table1.csv").set_index(["Model", "Method"])
    assert t1.loc[("tiny-vid", "CHORDS"), "K4_speedup"] == pytest.approx(2.5)
    assert t1.loc[("tiny-vid", "CHORDS"), "K4_time_s"] == pytest.approx(4.0)
    assert t1.loc[("tiny-vid", "CHORDS"), "K4_latent_rmse"] == pytest.approx(0.4)
    assert t1.loc[("tiny-vid", "Sequential"), "K4_time_s"] == pytest.approx(10.0)
    assert any("mixed step counts" in p and "N=50" in p and "100" in p for p in res.problems)
    # Table 4: every N.
    t4 = read_csv(out / "table4.csv").set_index(["Model", "Method", "Num Core", "Total Steps"])
    assert means(t4.columns) == ["time_s", "speedup", "nfe", "vbench_quality", "latent_rmse", "n"]
    assert t4.loc[("tiny-vid", "CHORDS", 4, 50), "speedup"] == pytest.approx(2.5)
    assert t4.loc[("tiny-vid", "CHORDS", 4, 100), "speedup"] == pytest.approx(100 / 40)
    assert t4.loc[("tiny-vid", "CHORDS", 4, 100), "latent_rmse"] == pytest.approx(0.25)
    assert t4.loc[("tiny-vid", "CHORDS", 4, 100), "time_s"] == pytest.approx(8.0)
    assert "| tiny-vid |" in (out / "table4.md").read_text().replace("  ", " ") or "tiny-vid" in (out / "table4.md").read_text()
    # The video model's N=100 CHORDS run (init_t=preset in its config) counts as "Ours".
    assert res.runs.set_index("num_steps").loc[100].query("algorithm == 'chords'")["init_kind"].iloc[0] == "ours"
    # filter.num_steps picks N=100 for tables 1-3.
    run_eval(eval_cfg(tmp_path, [tmp_path / "out"], "filter.num_steps=100", "tables=[table1]"))
    t1 = read_csv(out / "table1.csv").set_index(["Model", "Method"])
    assert t1.loc[("tiny-vid", "CHORDS"), "K4_speedup"] == pytest.approx(2.5)
    assert t1.loc[("tiny-vid", "Sequential"), "K4_time_s"] == pytest.approx(20.0)


def test_labels_experiment_label_and_disambiguation(tmp_path):
    root = tmp_path / "out"
    write_run(root, prompt=P1)
    for idx, r in ((1, 21), (2, 30)):
        write_run(root, algorithm="chords", prompt=P1, num_cores=4, init_t=[0, 8, 16, 32],
                  hits=[(0, 19, shifted(P1, 0, 1)), (4, 21, shifted(P1, 0, .3)), (3, 30, shifted(P1, 0, .1))],
                  output_index=idx, rounds=r, stop={"criterion": "core_index", "index": idx},
                  algo_tag=f"chords-k4-0-8-16-32-core_index{idx}")
    write_run(root, algorithm="srds", prompt=P1, num_cores=4, hits=[(1, 28, shifted(P1, 0, 0.01))],
              experiment_label="SRDS (pipelined)")
    res = run_eval(eval_cfg(tmp_path, [root], "figures=[]"))
    methods = set(res.summary["method"])
    assert methods == {"Sequential", "CHORDS (stop=core_index=1)", "CHORDS (stop=core_index=2)", "SRDS (pipelined)"}
    assert any("several 'CHORDS' settings would share a cell" in p for p in res.problems)
    s = res.summary.set_index("method")
    assert s.loc["CHORDS (stop=core_index=2)", "speedup"] == pytest.approx(50 / 30)
    assert s.loc["SRDS (pipelined)", "speedup"] == pytest.approx(50 / 28)


def test_filters(tmp_path):
    image_sweep(tmp_path / "out")
    video_sweep(tmp_path / "out")
    res = run_eval(eval_cfg(tmp_path, [tmp_path / "out"], "filter.models=[tiny-img]", "filter.methods=[CHORDS]",
                            "filter.num_cores=[8]", "figures=[]"))
    cells = set(zip(res.summary["method"], res.summary["num_cores"]))
    assert cells == {("Sequential", 1), ("CHORDS", 8)}  # Sequential always stays
    t2 = read_csv(tmp_path / "eval_out" / "table2.csv")
    assert means(t2.columns)[2:] == ["K8_time_s", "K8_speedup", "K8_nfe", "K8_clip_score", "K8_latent_rmse", "K8_n"]
    assert set(res.summary["model"]) == {"tiny-img"}


def test_mixed_hardware_never_shares_a_cell(tmp_path):
    """Runs on different hardware (timings differ) are separate, labelled rows; one line says so."""
    root = tmp_path / "out"
    write_run(root, prompt=P1, hardware="cpu", sample_s=2.0)
    write_run(root, prompt=P2, hardware="gpu", sample_s=1.0)
    res = run_eval(eval_cfg(tmp_path, [root], "figures=[]"))
    assert any("told apart by hw.name" in p for p in res.problems)
    s = res.summary.set_index("method")
    assert s.loc["Sequential (hw.name=cpu)", "time_sample_s"] == pytest.approx(2.0)
    assert s.loc["Sequential (hw.name=gpu)", "time_sample_s"] == pytest.approx(1.0)


def test_same_algorithm_on_cpu_and_batched_hardware_are_separate_rows(tmp_path):
    root = tmp_path / "out"
    write_run(root, prompt=P1)
    for hw, ws, t in (("cpu", 4, 2.0), ("batched", 1, 0.5)):
        write_run(root, algorithm="chords", prompt=P1, num_cores=4, init_t=[0, 8, 16, 32], hardware=hw, world_size=ws,
                  hits=[(4, 21, shifted(P1, 0, .2))], rounds=21, sample_s=t)
    res = run_eval(eval_cfg(tmp_path, [root], "figures=[]"))
    s = res.summary.set_index("method")
    assert s.loc["CHORDS (hw.name=batched, hw.world_size=1)", "time_sample_s"] == pytest.approx(0.5)
    assert s.loc["CHORDS (hw.name=cpu, hw.world_size=4)", "time_sample_s"] == pytest.approx(2.0)
    # both pair with the one sequential reference (hardware is not a model setting)
    assert s.loc["CHORDS (hw.name=cpu, hw.world_size=4)", "latent_rmse"] == pytest.approx(0.2)


@pytest.mark.parametrize("setting", [
    {"guidance_scale": 5.0}, {"flow_shift": 3.0}, {"scheduler": "euler"}, {"timestep_spacing": "leading"},
    {"max_sequence_length": 256}, {"prompt_template": {"template": "{}", "crop_start": 0}}, {"model_path": "/x"},
    {"dtype": "float32"}, {"height": 64}, {"num_frames": 9}, {"step_precision": "float32"},
])
def test_eval_never_pairs_across_model_settings(tmp_path, setting):
    """A run pairs only with a reference of its own model settings; rows are split and labelled."""
    root = tmp_path / "out"
    base = {"guidance_scale": 3.5, "dtype": "bfloat16", "height": 32}
    other = {**base, **setting}
    write_run(root, prompt=P1, model_settings=base)
    write_run(root, prompt=P1, model_settings=other, hits=[(1, 50, shifted(P1, 0, 7.0))])
    write_run(root, algorithm="chords", prompt=P1, num_cores=4, init_t=[0, 8, 16, 32], model_settings=other,
              hits=[(4, 21, shifted(P1, 0, 7.25))], rounds=21)
    write_run(root, algorithm="chords", prompt=P1, num_cores=4, init_t=[0, 8, 16, 32], model_settings=base,
              hits=[(4, 21, shifted(P1, 0, .5))], rounds=21)
    res = run_eval(eval_cfg(tmp_path, [root], "figures=[]"))
    assert any("differ in model settings" in p for p in res.problems)
    rows = res.summary[res.summary["algorithm"] == "chords"].set_index("model")
    assert len(rows) == 2 and all(m.startswith("tiny-img [") for m in rows.index)
    assert sorted(rows["latent_rmse"]) == pytest.approx([0.25, 0.5])
    assert len(res.summary[res.summary["algorithm"] == "sequential"]) == 2


def test_experiment_label_never_renames_the_sequential_row(tmp_path):
    root = tmp_path / "out"
    write_run(root, prompt=P1, experiment_label="my study")
    write_run(root, algorithm="chords", prompt=P1, num_cores=4, init_t=[0, 8, 16, 32], experiment_label="my study",
              hits=[(4, 21, shifted(P1, 0, .2))], rounds=21)
    res = run_eval(eval_cfg(tmp_path, [root], "figures=[]"))
    assert set(res.summary["method"]) == {"Sequential", "my study"}


def test_legacy_format_1_folders_still_read(tmp_path):
    root = tmp_path / "out"
    write_run(root, prompt=P1, legacy=True)
    write_run(root, algorithm="chords", prompt=P1, num_cores=4, init_t=[0, 8, 16, 32], legacy=True,
              hits=[(4, 21, shifted(P1, 0, .2))], rounds=21)
    res = run_eval(eval_cfg(tmp_path, [root], "figures=[]"))
    assert any("written before run identities" in p for p in res.problems)
    s = res.summary.set_index("method")
    assert s.loc["CHORDS", "latent_rmse"] == pytest.approx(0.2)


# --------------------------------------------------------------------------- robustness


def test_partial_corrupt_unpaired_runs_are_reported_and_left_out(tmp_path, caplog):
    root = tmp_path / "out"
    image_sweep(root)
    # 1. a folder still being written (temporary name)
    tmp_run = write_run(root, algorithm="chords", prompt="tmp prompt", num_cores=4, init_t=[0, 8, 16, 32])
    tmp_run.rename(tmp_run.with_name(tmp_run.name + ".tmp-abcd"))
    # 2. run files without stats.json
    nostats = write_run(root, algorithm="chords", prompt="no stats", num_cores=4, init_t=[0, 8, 16, 32])
    (nostats / "stats.json").unlink()
    # 3. stats.json that is not JSON
    bad = write_run(root, algorithm="chords", prompt="bad json", num_cores=4, init_t=[0, 8, 16, 32])
    (bad / "stats.json").write_text("{not json")
    # 4. stats.json without a required field
    lacks = write_run(root, algorithm="chords", prompt="lacks rounds", num_cores=4, init_t=[0, 8, 16, 32])
    s = json.loads((lacks / "stats.json").read_text())
    del s["rounds"]
    (lacks / "stats.json").write_text(json.dumps(s))
    # 5. a CHORDS run with a seed that has no sequential run (mixed seeds)
    write_run(root, algorithm="chords", prompt=P1, seed=7, num_cores=4, init_t=[0, 8, 16, 32],
              hits=[(4, 21, shifted(P1, 7, 9.0))], rounds=50, sample_s=100.0, stop={"criterion": "core_index", "index": 1})
    # 6. a run whose latents are garbage: keeps its speedup, loses its RMSE
    garbage = write_run(root, algorithm="paradigms", prompt=P1, num_cores=8, hits=[(1, 25, shifted(P1, 0, 0.3))],
                        tolerance=0.1, sample_s=1.0)
    (garbage / "latents.safetensors").write_bytes(b"\x00garbage")
    # 7. a run at another step count whose sequential run is missing
    write_run(root, algorithm="chords", prompt=P2, num_steps=75, num_cores=4, hits=[(4, 30, shifted(P2, 0, 0.1))],
              stop={"criterion": "core_index", "index": 1})

    caplog.set_level("WARNING", logger="eval")
    res = run_eval(eval_cfg(tmp_path, [root]))
    text = "\n".join(res.problems)
    assert "temporary name" in text and ".tmp-abcd" in text
    assert "no stats.json" in text and "no_stats" in text
    assert "not valid JSON" in text
    assert "lacks 'rounds'" in text
    assert re.search(r"CHORDS / K=4 / N=50: 1 run\(s\) have no sequential reference .*\[7\]", text)
    assert "no sequential run of model tiny-img with N=75" in text
    assert "latents unusable" in text and "unreadable" in text
    assert all("\n" not in p for p in res.problems)  # one line each
    # problems.txt holds the same lines
    assert (tmp_path / "eval_out" / "problems.txt").read_text().splitlines() == res.problems
    # The table still builds, with the bad runs left out of their cells only.
    t2 = read_csv(tmp_path / "eval_out" / "table2.csv").set_index(["Model", "Method"])
    assert t2.loc[("tiny-img", "CHORDS"), "K4_speedup"] == pytest.approx(50 / 21)  # seed-7 run left out
    assert t2.loc[("tiny-img", "CHORDS"), "K4_time_s"] == pytest.approx(1.5)
    assert t2.loc[("tiny-img", "ParaDIGMS"), "K8_speedup"] == pytest.approx(2.0)  # speedup kept
    assert math.isnan(t2.loc[("tiny-img", "ParaDIGMS"), "K8_latent_rmse"])  # RMSE left out
    md = (tmp_path / "eval_out" / "table2.md").read_text()
    pdm = next(ln for ln in md.splitlines() if "ParaDIGMS" in ln)
    assert [c.strip() for c in pdm.strip("|").split("|")][8:] == ["1.0", "2.0", "200", "n/a", "n/a", "1"]
    assert any(r.levelname == "WARNING" for r in caplog.records)


def test_duplicate_sequential_references_and_shape_mismatch(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(a, prompt=P1, sample_s=2.0)
    write_run(b, prompt=P1, sample_s=6.0)
    write_run(a, algorithm="chords", prompt=P1, num_cores=4, init_t=[0, 8, 16, 32], hits=[(4, 21, shifted(P1, 0, .1))])
    problems = Problems()
    runs = load_runs([a, b], problems)
    assign_labels(runs, problems)
    refs = pair_references(runs, problems)
    chords_run = next(r for r in runs if r.algorithm == "chords")
    assert refs[chords_run.path].path.parts[-4] == "a"  # first by path
    assert any("2 sequential runs" in p for p in problems)
    # a latent_shape that differs from the reference's
    s = json.loads((chords_run.path / "stats.json").read_text())
    s["latent_shape"] = [1, 2, 3, 5]
    (chords_run.path / "stats.json").write_text(json.dumps(s))
    problems = Problems()
    runs = load_runs([a], problems)
    assign_labels(runs, problems)
    refs = pair_references(runs, problems)
    assert len(refs) == 1 and any("differ in latent_shape" in p for p in problems)


def test_load_run_validation_messages(tmp_path):
    f = write_run(tmp_path, algorithm="chords", num_cores=4, init_t=[0, 8, 16, 32],
                  hits=[(4, 21, shifted(P1, 0, .1)), (1, 50, shifted(P1, 0, 0))], output_index=0)
    s = json.loads((f / "stats.json").read_text())
    s["output_round"] = 50
    (f / "stats.json").write_text(json.dumps(s))
    with pytest.raises(Exception, match=r"output_round 50 != hits\[0\].round 21"):
        load_run(f)
    s["output_round"] = 21
    s["media"] = "audio"
    (f / "stats.json").write_text(json.dumps(s))
    with pytest.raises(Exception, match="neither 'image' nor 'video'"):
        load_run(f)
    s["media"] = "image"
    s["format"] = 3
    (f / "stats.json").write_text(json.dumps(s))
    with pytest.raises(Exception, match="format 3 is not supported"):
        load_run(f)


def test_hydra_multirun_layout_is_found(tmp_path):
    """Run folders under a Hydra multirun tree (job subfolders, .hydra folders) are all found."""
    sweep = tmp_path / "multirun" / "2026-11-22" / "10-00-00"
    (sweep / ".hydra").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    write_run(sweep / "0" / "out", prompt=P1)
    write_run(sweep / "1" / "out", algorithm="chords", prompt=P1, num_cores=4, init_t=[0, 8, 16, 32],
              hits=[(4, 21, shifted(P1, 0, .1))])
    (sweep / "1" / ".hydra").mkdir()
    (sweep / "1" / ".hydra" / "stats.json").write_text("{}")  # hidden: ignored
    res = run_eval(eval_cfg(tmp_path, [tmp_path / "multirun"], "figures=[]", "tables=[table2]"))
    assert len(res.runs) == 2 and not res.problems
    assert res.summary.set_index("method").loc["CHORDS", "speedup"] == pytest.approx(50 / 21)


def test_bfloat16_latents(tmp_path):
    root = tmp_path / "out"
    write_run(root, prompt=P1, dtype=torch.bfloat16)
    write_run(root, algorithm="chords", prompt=P1, num_cores=4, init_t=[0, 8, 16, 32],
              hits=[(4, 21, shifted(P1, 0, 0.25))], dtype=torch.bfloat16)
    res = run_eval(eval_cfg(tmp_path, [root], "figures=[]"))
    a = base_latent(P1, 0).bfloat16().double()
    b = shifted(P1, 0, 0.25).bfloat16().double()
    expected = math.sqrt(float(((a - b) ** 2).mean()))
    assert res.summary.set_index("method").loc["CHORDS", "latent_rmse"] == pytest.approx(expected)


# --------------------------------------------------------------------------- figures


def test_figures_are_written_and_convergence_by_hand(tmp_path):
    image_sweep(tmp_path / "out")
    video_sweep(tmp_path / "out")
    run_eval(eval_cfg(tmp_path, [tmp_path / "out"]))
    out = tmp_path / "eval_out"
    for stem in ("figure4_tiny-img", "figure4_tiny-vid", "figure5_tiny-img", "figure5_tiny-vid"):
        for ext in ("png", "pdf"):
            p = out / f"{stem}.{ext}"
            assert p.is_file() and p.stat().st_size > 1000, p
    assert (out / "figure4_tiny-img.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "figure4_tiny-img.pdf").read_bytes()[:5] == b"%PDF-"
    d = read_csv(out / "figure5_data.csv")
    # CHORDS K=4 ours, prompt P1: hits are the final output plus 0.9, 0.1, 0.05, 0.025, 0: L1 = |c|.
    ours = d[(d["model"] == "tiny-img") & (d["method"] == "CHORDS") & (d["num_cores"] == 4)
             & (d["run"].str.contains("a_red_cube"))].sort_values("hit")
    assert list(ours["round"]) == [19, 21, 30, 40, 50]
    assert list(ours["distance"]) == pytest.approx([0.9, 0.1, 0.05, 0.025, 0.0], abs=1e-6)
    # K=8 runs end at their early output (no full run): the last hit is the reference.
    k8 = d[(d["num_cores"] == 8)].sort_values(["run", "hit"])
    assert list(k8["distance"])[1] == pytest.approx(0.0)
    # Only the table's N (50) for the video model.
    assert set(d.loc[d["model"] == "tiny-vid", "num_steps"]) == {50}
    # distance=rmse and reference=sequential
    run_eval(eval_cfg(tmp_path, [tmp_path / "out"], "convergence.distance=rmse", "convergence.reference=sequential",
                      "tables=[]", "figures=[figure5]", "figure_formats=[png]"))
    d = read_csv(out / "figure5_data.csv")
    uni = d[(d["model"] == "tiny-img") & (d["method"] == "CHORDS (uniform)") & d["run"].str.contains("a_red_cube")]
    assert list(uni.sort_values("hit")["distance"]) == pytest.approx([2.0, 0.5, 0.25, 0.1, 0.0], abs=1e-6)


# --------------------------------------------------------------------------- CLI


def _cli(args, cwd=ROOT):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "eval", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_cli_end_to_end(tmp_path):
    image_sweep(tmp_path / "out")
    out = tmp_path / "eo"
    proc = _cli([f"runs=[{tmp_path / 'out'}]", f"out={out}", "figures=[figure4]", "figure_formats=[png]"])
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    for n in ("table2.md", "table2.csv", "table2.tex", "table3.md", "table4.csv", "runs.csv", "summary.csv",
              "summary.md", "problems.txt", "eval.log", "figure4_tiny-img.png"):
        assert n in names, names
    assert "table1.md" not in names  # no video runs
    # bare folders work as runs too
    proc = _cli([str(tmp_path / "out"), f"out={tmp_path / 'eo2'}", "tables=[table2]", "figures=[]"])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "eo2" / "table2.md").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "runs=[] : give one or more run folders"),
        (["runs=[{missing}]"], "does not exist"),
        (["runs=[{empty}]"], "no run folders (with stats.json) found under"),
        (["runs=[{runs}]", "tables=[table9]"], "tables: unknown 'table9'; accepted: table1, table2, table3, table4"),
        (["runs=[{runs}]", "figures=[fig7]"], "figures: unknown 'fig7'; accepted: figure4, figure5"),
        (["runs=[{runs}]", "formats=[html]"], "formats: unknown 'html'; accepted: md, csv, tex"),
        (["runs=[{runs}]", "time=wall"], "time='wall': accepted: sample, total"),
        (["runs=[{runs}]", "convergence.distance=l7"], "convergence.distance='l7': accepted: l1, rmse"),
        (["runs=[{runs}]", "clip.enabld=true"], "bad override"),
        (["runs=[{runs}]", "out={file}/x"], "cannot be created"),
        (["runs=[{runs}]", "out={file}"], "exists and is not a folder"),
        (["--frobnicate"], "unknown option '--frobnicate'"),
        (["runs=[{runs}]", "filter.models=[flux]"], "filter.models: no runs of model 'flux'; found: tiny-img"),
        (["runs=[{runs}]", "filter.methods=[Ours]"], "filter.methods: no runs labelled 'Ours'; found: Sequential"),
        (["runs=[{runs}]", "filter.num_cores=[3]"], "filter.num_cores: no runs with 3 cores; found: none"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    runs = tmp_path / "runs"
    write_run(runs, prompt=P1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    fmt = dict(missing=tmp_path / "nope", empty=tmp_path / "empty", runs=runs, file=tmp_path / "afile")
    args = [a.format(**fmt) for a in args]
    if not any(a.startswith("out=") for a in args):
        args.append(f"out={tmp_path / 'eval_out'}")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("eval:")]
    assert len(lines) == 1 and message in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_cli_help():
    proc = _cli(["--help"])
    assert proc.returncode == 0 and "runs:" in proc.stdout and "usage: python -m eval" in proc.stdout


# --------------------------------------------------------------------------- a real run (when the runner exists)


def test_real_digits_runs_from_the_runner(tmp_path):
    pytest.importorskip("chords.runner")
    if not (ROOT / "run_image_mp.py").is_file():
        pytest.skip("run_image_mp.py is not in this checkout")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit 3\na handwritten digit 7\n")
    out = tmp_path / "samples"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    for extra in (["algo.init_t=0-8-16-32"], ["algo.init_t=0-12-24-36"]):
        proc = subprocess.run(
            [sys.executable, "run_image_mp.py", "model=digits", "hardware=local", "ngpu=4", "algo=chords",
             "algo.num_cores=4", f"prompt_file={prompts}", f"output_base_path={out}", "algo.full_return=false", *extra],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        if proc.returncode != 0:
            pytest.skip(f"the runner did not run here: {proc.stderr.strip().splitlines()[-1:]}")
    res = run_eval(eval_cfg(tmp_path, [out]))
    s = res.summary.set_index(["method", "num_cores"])
    assert ("Sequential", 1) in s.index and ("CHORDS", 4) in s.index and ("CHORDS (uniform)", 4) in s.index
    # Speedup is sequential rounds over the output round that the runner recorded.
    r = res.runs[res.runs["method"] == "CHORDS"]
    assert (r["speedup"] == r["ref_rounds"] / r["output_round"]).all()
    assert s.loc[("CHORDS", 4), "speedup"] > 1.5
    assert 0 <= s.loc[("CHORDS", 4), "latent_rmse"] < 1.0
    assert (tmp_path / "eval_out" / "table2.md").is_file() and (tmp_path / "eval_out" / "table3.md").is_file()


def test_every_kind_of_corruption_at_once_still_builds_the_tables(tmp_path):
    """Each malformed field is one warning line naming the folder and the field; the rest builds."""
    root = tmp_path / "out"
    image_sweep(root)

    def corrupt(prompt, edit, **kw):
        f = write_run(root, algorithm="chords", prompt=prompt, num_cores=4, init_t=[0, 8, 16, 32],
                      stop={"criterion": "core_index", "index": 1}, **kw)
        s = json.loads((f / "stats.json").read_text())
        edit(s)
        (f / "stats.json").write_text(json.dumps(s))
        return f

    corrupt("index string", lambda s: s["hits"][0].update(index="zero"))
    corrupt("index null", lambda s: s["hits"][0].update(index=None))
    corrupt("round negative", lambda s: s["hits"][0].update(round=-3))
    corrupt("hit not object", lambda s: s["hits"].__setitem__(0, 5))
    corrupt("core bool", lambda s: s["hits"][0].update(core=True))
    corrupt("latent null", lambda s: s["hits"][0].update(latent=None))
    corrupt("identity missing", lambda s: s.pop("identity"))
    corrupt("seed string", lambda s: s.update(seed="42"))
    corrupt("timing not object", lambda s: s.update(timing=[1, 2]))
    corrupt("negative sample", lambda s: s["timing"].update(sample_s=-1.0))
    corrupt("nfe below rounds", lambda s: s.update(nfe=1))
    corrupt("output after last round", lambda s: s.update(rounds=1))
    neg_decode = corrupt("negative decode", lambda s: s["timing"].update(decode_s=-0.5))
    bad_wall = corrupt("wall string", lambda s: s["hits"][0].update(wall_s="soon"))
    nan_out = write_run(root, algorithm="chords", prompt=P1, num_cores=6, init_t=[0, 3, 6, 12, 24, 36],
                        hits=[(6, 19, torch.full(SHAPE, float("nan")))], stop={"criterion": "core_index", "index": 1})
    res = run_eval(eval_cfg(tmp_path, [root]))
    text = "\n".join(res.problems)
    for needle in ("hits[0].index is 'zero'", "hits[0].index is None", "hits[0].round is -3", "hits[0] is not an object",
                   "hits[0].core is True", "hits[0].latent is None", "lacks an 'identity'", "field 'seed' has type str",
                   "field 'timing' has type list", "timing.sample_s is missing, negative", "nfe 1 is below rounds",
                   "is after the last round", "timing.decode_s is -0.5", "hits[0].wall_s is 'soon'",
                   "latent RMSE is not finite"):
        assert needle in text, needle
    assert neg_decode.name in text and bad_wall.name in text and nan_out.name in text
    assert all("\n" not in p for p in res.problems)
    t2 = read_csv(tmp_path / "eval_out" / "table2.csv").set_index(["Model", "Method"])
    assert t2.loc[("tiny-img", "CHORDS"), "K4_speedup"] == pytest.approx(50 / 21)
    assert math.isnan(t2.loc[("tiny-img", "CHORDS"), "K6_latent_rmse"])  # the NaN output is not averaged in


# --------------------------------------------------------------------------- honest intervals


def test_intervals_stay_inside_what_the_metric_can_be():
    from scipy.stats import binomtest

    from eval.stats import binomial_interval, interval, is_fixed, mean_interval, paired_difference, ratio_interval

    acc = binomial_interval([1.0] * 15 + [0.0])  # 93.8%: the t-interval said [73.9, 113.6]
    ci = binomtest(15, 16).proportion_ci(0.95, method="wilson")
    assert (acc.value, acc.lo, acc.hi) == (15 / 16, pytest.approx(ci.low), pytest.approx(ci.high)) and acc.hi < 1
    perfect = binomial_interval([1.0] * 16)  # not "100% [100, 100]"
    assert perfect.hi == 1.0 and perfect.lo < 0.85
    assert interval([1.0, 0.0, 1.0], "auto").lo == pytest.approx(binomtest(2, 3).proportion_ci(method="wilson").low)
    tiny = mean_interval([0.0, 0.0004, 0.0, 0.0011])  # the t-interval went below 0
    assert 0.0 <= tiny.lo <= tiny.value <= tiny.hi <= 0.0011
    assert is_fixed([50, 50, 50], [21, 21, 21]) and not is_fixed([50, 50], [40, 30]) and not is_fixed([50], [21])
    sp = ratio_interval([50, 50, 50, 50], [40, 30, 35, 45])
    assert 50 / 45 <= sp.lo < sp.value < sp.hi <= 50 / 30
    d = paired_difference([1.0, 2.0, 3.0, math.nan], [0.5, 1.5, 2.5, 1.0])  # the NaN pair is left out
    assert d.n == 3 and d.value == pytest.approx(0.5) and d.lo == pytest.approx(0.5) and d.hi == pytest.approx(0.5)


def test_methods_are_compared_on_the_same_prompts_and_seeds(tmp_path):
    image_sweep(tmp_path / "out")
    # an extra ParaDIGMS run on a prompt that CHORDS never sampled: unmatched, left out of the pair
    write_run(tmp_path / "out", prompt="a green cone", sample_s=3.0, image=True)
    write_run(tmp_path / "out", algorithm="paradigms", prompt="a green cone", num_cores=4,
              hits=[(1, 10, shifted("a green cone", 0, 0.9))], sample_s=0.1, tolerance=0.1, image=True)
    run_eval(eval_cfg(tmp_path, [tmp_path / "out"]))
    out = tmp_path / "eval_out"
    comp = read_csv(out / "comparisons.csv")
    row = comp[(comp["method_a"] == "ParaDIGMS") & (comp["method_b"] == "CHORDS") | (comp["method_a"] == "CHORDS")
               & (comp["method_b"] == "ParaDIGMS")].iloc[0]
    sign = 1 if row["method_a"] == "CHORDS" else -1
    assert row["n_pairs"] == 2 and row["unmatched"] == 1 and row["num_cores"] == 4
    assert sign * row["diff_speedup"] == pytest.approx(((50 / 21 - 50 / 40) + (50 / 21 - 50 / 30)) / 2)
    assert sign * row["diff_latent_rmse"] == pytest.approx(((0.1 - 0.05) + (0.3 - 0.15)) / 2)
    md = (out / "summary.md").read_text()
    assert "## Method against method, paired on (prompt, seed)" in md
    widths = [ln.count("|") - 1 for ln in md.splitlines() if ln.startswith("|")]
    assert max(widths) <= 12  # was one table of 50+ columns
