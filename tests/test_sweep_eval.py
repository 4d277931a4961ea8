"""Evaluate one sweep: each job's Hydra folder holds a runs.json manifest of the run folders it
made or reused, and eval given that folder (or the sweep's tag) reads exactly those runs, never
the earlier runs of the same output tree (chords/manifest.py, eval/runs.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chords.manifest import MANIFEST, read_manifest
from tests.conftest import ROOT, cli_env


def _sample(tmp_path, out, *args, multirun=False):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a handwritten digit 3\na handwritten digit 5\n")
    cmd = [sys.executable, "run_image_mp.py", *(["-m"] if multirun else []), "model=gaussian", "hardware=local",
           "model.num_inference_steps=8", "summary=false", "grid=false", f"prompt_file={prompts}",
           f"output_base_path={out}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def eval_cli(capsys):
    """``python -m eval ARGS`` in this process: (exit status, stderr)."""
    from eval.cli import main

    def call(*args):
        code = main([*args, "figures=[]", "tables=[table2]"])
        return code, capsys.readouterr().err

    return call


def test_a_sweep_folder_and_a_tag_give_exactly_that_sweeps_runs(tmp_path, eval_cli):
    out = tmp_path / "out"
    _sample(tmp_path, out, "ngpu=2", "algo=paradigms")  # an earlier run in the same output tree
    (single,) = out.glob(f"logs/*/{MANIFEST}")  # a single run's Hydra folder has its manifest too
    rec = json.loads(single.read_text())
    assert rec["tag"] is None and len(rec["runs"]) == 4 and not any(e["reused"] for e in rec["runs"])
    _sample(tmp_path, out, "ngpu=2,4", "model.seed=1", "tag=sweep-a", multirun=True)
    sweep = next(out.glob("logs/multirun-*"))
    manifests = sorted(sweep.glob(f"*/{MANIFEST}"))
    assert len(manifests) == 2  # one per job
    records = [read_manifest(m) for m in manifests]
    assert {r["tag"] for r in records} == {"sweep-a"}
    listed = {e["folder"] for r in records for e in r["runs"]}
    roles = sorted(e["role"] for r in records for e in r["runs"])
    # 2 prompts x 2 K of CHORDS, and the 2 sequential references (the second job reuses them)
    assert len(listed) == 6 and roles.count("run") == 4
    assert any(e["reused"] for r in records for e in r["runs"] if e["role"] == "reference")

    for how in ([f"runs=[{sweep}]"], [f"runs=[{out}]", "tag=sweep-a"]):
        ev = tmp_path / ("ev_" + str(len(how)))
        code, err = eval_cli(*how, f"out={ev}")
        assert code == 0, err[-3000:]
        import pandas as pd

        runs = pd.read_csv(ev / "runs.csv")
        assert set(runs["run"]) == listed  # the earlier ParaDIGMS run and seed 0 stay out
        assert set(runs["algorithm"]) == {"chords", "sequential"} and set(runs["seed"]) == {1}

    assert eval_cli(f"runs=[{out}]", f"out={tmp_path / 'all'}")[0] == 0
    import pandas as pd

    assert "paradigms" in set(pd.read_csv(tmp_path / "all" / "runs.csv")["algorithm"])

    code, err = eval_cli(f"runs=[{out}]", "tag=nosuch", f"out={tmp_path / 'x'}")
    assert code == 2 and err.count("\n") == 1
    assert "tag='nosuch'" in err and "sweep-a" in err
