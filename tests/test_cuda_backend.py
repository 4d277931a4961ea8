"""The process backend on a GPU (CUDA tier: skipped where no GPU is visible, so never in CI here).

Several ranks on one GPU over gloo (states on cuda, messages through the CPU), and NCCL with two
ranks (one GPU each: NCCL refuses two ranks on one GPU, so one GPU is a clean skip): the outputs
equal ``hardware=local`` bit for bit (the digits model's velocity is exact under batching), a
worker killed mid-round is named within seconds, and nothing is left behind.
"""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from chords import CHORDS, sample
from chords.backends import LocalBackend, ProcessBackend, WorkerError
from chords.models.digits import DigitsModel

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DIGITS = {"model_name": "digits", "height": 16, "width": 16, "num_inference_steps": 16, "dtype": "float32", "shift": 1.0}
ALGO = CHORDS(4, [0, 2, 4, 8])


def _reference():
    ad = DigitsModel(DIGITS, "cuda:0")
    enc = ad.encode("a handwritten digit 7", 42)
    local = LocalBackend(ad, "loop")
    local.set_condition(enc.cond)
    return ad, enc, sample(ALGO, local.velocity, enc.x0, enc.step, enc.num_steps)


def _run(dist_backend: str, world: int):
    ad, enc, ref = _reference()
    with ProcessBackend(ad, "chords.models.digits.DigitsModel", DIGITS, world, device_type="cuda", dist_backend=dist_backend,
                        num_cores=4, timeout_s=60) as backend:
        backend.set_condition(enc.cond)
        got = sample(ALGO, backend.velocity, enc.x0, enc.step, enc.num_steps)
        assert all(h.x.device.type == "cuda" for h in got.hits)
        assert all(torch.equal(a.x, b.x) for a, b in zip(got.hits, ref.hits))
        # a worker killed mid-run is named within seconds, not after timeout_s
        os.kill(backend.procs[-1].pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match=f"worker rank {world - 1}"):
            for _ in range(20):
                backend.velocity(torch.stack([enc.x0] * 4), torch.tensor([0, 1, 2, 3]))
        assert time.monotonic() - t0 < 15


def test_several_ranks_on_one_gpu_over_gloo():
    _run("gloo", 3)


def test_nccl_two_ranks():
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL needs one GPU per rank: two ranks need two GPUs")
    _run("nccl", 2)
