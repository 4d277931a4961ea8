"""scripts/train_epd.py (issue 18, item 3): deterministic, and its table runs through algo=epd.

Small settings (3 classes x 1 noise, a 3-step student, a 30-step teacher, 4 grid values of r) keep
this to seconds; the committed tables were made with the script's defaults.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chords.config import validate
from chords.epd_tables import read_table
from tests.conftest import ROOT, cli_env, compose

SMALL = ["--model", "digits", "--steps", "3", "--directions", "2", "--teacher-steps", "30", "--samples", "1",
         "--classes", "3", "--r-grid", "4"]


def train(out, *extra):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train_epd.py"), *SMALL, *extra, "--out", str(out)],
                          capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=600)


def test_training_is_deterministic_and_the_table_fits_its_run(tmp_path, monkeypatch):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path in (a, b):
        res = train(path)
        assert res.returncode == 0, res.stderr
    assert a.read_bytes() == b.read_bytes()
    table, key, _ = read_table(a)
    assert (table.num_steps, table.num_directions) == (3, 2)
    assert key == {"model": "digits", "num_steps": 3, "shift": 1.0, "guidance_scale": 2.0, "num_directions": 2,
                   "predictor": "euler"}
    log = json.loads(a.read_text())["training"]
    assert log["seeds"][0] >= 10_000  # above every evaluation seed
    # the fitted rule beats plain Euler with the same steps on its own training samples
    scores = log["rmse_at_data_vs_teacher"]
    assert scores["fitted"] < scores["euler_same_steps"]
    monkeypatch.chdir(ROOT)
    spec = validate(compose(["model=digits", "model.num_inference_steps=3", "algo=epd", "ngpu=2", "hardware=local",
                             f"algo.table={a}", f"output_base_path={tmp_path / 'out'}"]), check_weights=False)
    assert spec.algorithm.table == table


@pytest.mark.parametrize("args,word", [(["--steps", "0"], "--steps 0"), (["--seed-base", "5"], "--seed-base 5"),
                                       (["--directions", "5"], "--directions 5")])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, args, word):
    res = train(tmp_path / "x.json", *args)
    assert res.returncode == 2 and word in res.stderr and len(res.stderr.strip().splitlines()) == 1
