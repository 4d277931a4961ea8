"""Rank 0 in a process of its own, for tests/test_liveness.py: 3 ranks of
``tests.fault_adapters.FaultyDigits`` with rank 2 hanging in its first round (stamp in
``argv[1]``); prints its pid, then samples that round and waits (the test kills or stops it)."""
from __future__ import annotations

import os
import sys

import torch

from chords.backends import ProcessBackend
from tests.fault_adapters import FaultyDigits


def main() -> None:
    cfg = {"model_name": "digits", "height": 8, "width": 8, "num_inference_steps": 10, "dtype": "float32", "shift": 1.0,
           "fault": "hang_velocity", "fault_rank": 2, "fault_stamp": sys.argv[1]}
    torch.set_num_threads(1)
    ad = FaultyDigits(cfg)
    enc = ad.encode("digit 1", 0)
    backend = ProcessBackend(ad, "tests.fault_adapters.FaultyDigits", cfg, 3, timeout_s=600, load_timeout_s=300)
    print("PIDS", os.getpid(), *(p.pid for p in backend.procs), flush=True)
    backend.set_condition(enc.cond)
    backend.velocity(torch.stack([enc.x0] * 3), torch.tensor([0, 1, 2]))


if __name__ == "__main__":
    main()
