"""Run identity: a run folder is keyed on everything that can change its sample or its timing.

The key is derived from the resolved config (chords.rundir.run_identity), so every override of
a model, algorithm or hardware setting makes a new folder, and eval never pairs across them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from chords.rundir import BOOKKEEPING_KEYS, digest, run_identity
from chords.runner import run
from eval.cli import run_eval
from tests.conftest import ROOT, compose
from tests.test_eval import eval_cfg

BASE = ["model=gaussian", "model.num_inference_steps=8", "hardware=local", "ngpu=2", "algo.num_cores=2"]


def _prompts(tmp_path: Path) -> str:
    p = tmp_path / "prompts.txt"
    p.write_text("a sample\n", encoding="utf-8")
    return f"prompt_file={p}"


def _folders(tmp_path: Path, *overrides: str):
    cfg = compose([*BASE, f"output_base_path={tmp_path / 'out'}", _prompts(tmp_path), *overrides])
    (main, ref), = run(cfg)
    return main.folder, ref.folder if ref is not None else None


# Each override changes one setting of the model, algorithm, stop rule, step arithmetic or hardware.
OVERRIDES = [
    "model.shift=2.0", "model.seed=7", "model.num_inference_steps=9", "model.height=8", "model.dtype=float64",
    "model.guidance_scale=1.5", "+model.flow_shift=5.0", "+model.scheduler=euler", "+model.timestep_spacing=leading",
    "+model.max_sequence_length=77", "+model.prompt_template=x", "model.model_path=/somewhere",
    "model.step_precision=float32", "algo.init_t=0-3", "algo.stopping_kwargs.index=2",
    "algo.stopping_kwargs.criterion=none", "hardware=batched", "+experiment_label=mine",
]


def test_every_setting_makes_a_new_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    base, base_ref = _folders(tmp_path)
    assert base.is_dir() and base_ref.is_dir()
    seen = {base}
    for o in OVERRIDES:
        folder, _ = _folders(tmp_path, o)
        assert folder not in seen, f"{o} reused a folder"
        seen.add(folder)
        ident = json.loads((folder / "stats.json").read_text())["identity"]
        assert ident == json.loads((folder / "stats.json").read_text())["identity"]
    # the same settings again: the same folder, skipped (not recomputed)
    again, _ = _folders(tmp_path)
    assert again == base


def test_hardware_batched_after_cpu_makes_a_new_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cpu, ref_cpu = _folders(tmp_path, "hardware=cpu")
    batched, ref_batched = _folders(tmp_path, "hardware=batched")
    assert cpu != batched
    s_cpu = json.loads((cpu / "stats.json").read_text())
    s_b = json.loads((batched / "stats.json").read_text())
    assert (s_cpu["identity"]["hardware"]["name"], s_cpu["identity"]["hardware"]["world_size"]) == ("cpu", 2)
    assert (s_b["identity"]["hardware"]["name"], s_b["identity"]["hardware"]["world_size"]) == ("batched", 1)
    # the in-process reference ran on the same local backend both times: one folder
    assert ref_cpu == ref_batched
    res = run_eval(eval_cfg(tmp_path, [tmp_path / "out"], "figures=[]"))
    chords_rows = res.summary[res.summary["algorithm"] == "chords"]
    assert len(chords_rows) == 2 and chords_rows["latent_rmse"].notna().all()


def test_eval_never_pairs_runs_of_different_model_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    a, ref_a = _folders(tmp_path)
    b, ref_b = _folders(tmp_path, "model.shift=2.0")
    assert ref_a != ref_b
    res = run_eval(eval_cfg(tmp_path, [tmp_path / "out"], "figures=[]"))
    runs = res.runs.set_index("run")
    assert Path(runs.loc[str(a), "reference"]) == ref_a
    assert Path(runs.loc[str(b), "reference"]) == ref_b


def test_identity_is_the_resolved_config(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    folder, ref = _folders(tmp_path, "algo.init_t=preset")
    s = json.loads((folder / "stats.json").read_text())
    ident = s["identity"]
    assert s["key"] == digest(ident) and folder.name.endswith(s["key"][:10])
    assert ident["model"] == s["config"]["model"]  # the whole model group
    assert ident["algo"]["init_t"] == [0, 4]  # resolved, not "preset"
    assert ident["algo"]["stopping_kwargs"] == s["config"]["algo"]["stopping_kwargs"]
    assert not any(k.endswith("timeout_s") for k in ident["hardware"])
    assert not set(ident["run"]) & BOOKKEEPING_KEYS
    r = json.loads((ref / "stats.json").read_text())["identity"]
    assert r["algo"]["algo_name"] == "sequential" and r["hardware"]["name"] == "local" and r["hardware"]["world_size"] == 1
    assert r["model"] == ident["model"]


def test_unknown_future_keys_change_the_identity():
    cfg = {"model": {"a": 1}, "algo": {}, "hardware": {}, "prompt_file": "x", "new_knob": 1}
    a = run_identity(cfg, "p", {"algo_name": "chords"}, {"name": "cpu"}, 2)
    b = run_identity({**cfg, "new_knob": 2}, "p", {"algo_name": "chords"}, {"name": "cpu"}, 2)
    c = run_identity({**cfg, "prompt_file": "y", "output_base_path": "z", "overwrite": True}, "p", {"algo_name": "chords"}, {"name": "cpu"}, 2)
    assert digest(a) != digest(b) and digest(a) == digest(c)
    d = run_identity({**cfg, "model": {"a": 1, "brand_new": 0}}, "p", {"algo_name": "chords"}, {"name": "cpu"}, 2)
    assert digest(a) != digest(d)
    assert digest(a) != digest(run_identity(cfg, "p", {"algo_name": "chords"}, {"name": "cpu"}, 4))


def test_stats_record_warm_up_and_device_names(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    folder, ref = _folders(tmp_path, "hardware=cpu")
    s = json.loads((folder / "stats.json").read_text())
    assert s["warmup"]["states"] == 2 and s["warmup"]["seconds"] >= 0  # one forward per rank, timed apart
    assert len(s["devices"]) == s["world_size"] == 2 and all(isinstance(d, str) and d for d in s["devices"])
    r = json.loads((ref / "stats.json").read_text())
    assert r["warmup"] == s["warmup"] and len(r["devices"]) == 1


def test_clock_synchronises_cuda_before_every_reading(monkeypatch):
    import torch

    from chords.runner import Clock

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    clock = Clock(torch.device("cuda:0"))
    clock.start()
    clock.elapsed()
    clock.elapsed()
    assert calls == [torch.device("cuda:0")] * 3
    calls.clear()
    cpu = Clock(torch.device("cpu"))
    cpu.start()
    cpu.elapsed()
    assert calls == []
