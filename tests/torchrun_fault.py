"""Run under ``torchrun --nproc-per-node 2`` by tests/test_faults.py: rank 1 serves a faulty
denoiser (``tests.fault_adapters.FaultyDigits``, fault ``argv[1]``), rank 0 samples CHORDS over
the process backend with ``timeout_s = argv[2]`` and prints how long after the first round began
the failure was reported, and the message. Rank 0 exits 3 on a WorkerError, 0 otherwise."""
from __future__ import annotations

import sys
import time

import torch

from chords import CHORDS, sample
from chords.backends.processes import ProcessBackend, WorkerError, serve_torchrun, torchrun_env
from tests.fault_adapters import FaultyDigits

FAULTY = "tests.fault_adapters.FaultyDigits"


def main() -> int:
    fault, timeout_s = sys.argv[1], float(sys.argv[2])
    cfg = {"model_name": "digits", "height": 8, "width": 8, "num_inference_steps": 6, "dtype": "float32", "shift": 1.0,
           "fault": fault, "fault_rank": 1}
    torch.set_num_threads(1)
    if torchrun_env()["rank"] != 0:
        serve_torchrun(FAULTY, cfg, device_type="cpu", dist_backend="gloo", num_cores=2)
        return 0
    ad = FaultyDigits(cfg)
    enc = ad.encode("digit 1", 0)
    backend = ProcessBackend(ad, FAULTY, cfg, 0, launcher="torchrun", num_cores=2, timeout_s=timeout_s, load_timeout_s=120)
    t0 = time.monotonic()
    try:
        with backend:
            backend.set_condition(enc.cond)
            sample(CHORDS(2, [0, 2]), backend.velocity, enc.x0, enc.step, enc.num_steps)
    except WorkerError as e:
        print(f"REPORTED after {time.monotonic() - t0:.2f}s: {e}", flush=True)
        return 3
    print("FINISHED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
