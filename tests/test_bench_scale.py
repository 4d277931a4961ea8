"""The scale-out benchmark keeps running (a reduced grid), and its phase split adds up."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, cli_env


def test_phases_split_each_round_into_send_overshoot_wait_and_algorithm():
    sys.path.insert(0, str(ROOT))
    from bench.bench_scale import phases

    # two rounds: the backend entered at 0 and 10, rank 0's own forward slept 1..6 and 12..17
    calls = [(0.0, 7.0), (10.0, 17.5)]
    sleeps = [(1.0, 6.0), (12.0, 17.0)]
    got = phases(calls, sleeps, 4.0)
    assert got == {"send_ms": pytest.approx(1.5e3), "over_ms": pytest.approx(1e3), "wait_ms": pytest.approx(0.75e3),
                   "algo_ms": pytest.approx(3e3)}


def test_reduced_benchmark_prints_every_column():
    cmd = [sys.executable, "bench/bench_scale.py", "--steps", "6", "--sleep-ms", "5", "--latents", "flux",
           "--configs", "K1", "K2", "--algos", "CHORDS", "SRDS", "--transport", "shm"]
    out = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for col in ("eff", "lost_ms", "MB/round", "send_ms", "over_ms", "wait_ms", "algo_ms"):
        assert f"\n{col}\n" in out.stdout
    assert "K=2 on 2" in out.stdout and "('flux', 5, 'SRDS', 'shm')" in out.stdout
