"""Scale-out benchmark (a script, not a test): `python bench/bench_scale.py`.

Orchestration cost of the process backend, measured with a fixed-latency stand-in forward:
:class:`SleepAdapter` sleeps T per call whatever its batch (a GPU forward that is not the
bottleneck) and returns zero velocities. Side by side in one run, for CHORDS (paper presets),
ParaDIGMS and SRDS, K = 1, 2, 4, 8 cores on K ranks and K = 8 on 4 ranks, T = 50 and 500 ms,
latents Flux-size 1x4096x64 bf16 and HunyuanVideo-size 1x16x33x68x120 bf16:

* ``eff`` = wall / (rounds x T): 1.0 is the physical limit (only the forwards take time);
* ``lost_ms`` = (wall - rounds x T) / rounds: what orchestration costs per round;
* ``MB/round``: state and velocity bytes moved between ranks per round (the backend's count);
* where rank 0's round goes (medians over the run's rounds, ms): ``send_ms`` (the backend's entry
  to rank 0's own forward: cutting the round, signalling the workers), ``over_ms`` (rank 0's own
  forward beyond T: the sleep's overshoot), ``wait_ms`` (rank 0's forward done to the backend's
  return: waiting for the workers, the velocities put together) and ``algo_ms`` (the backend's return to
  its next entry: the algorithm's steps and rectification, the stack).

Both transports side by side: ``shm`` (states and velocities in shared memory, only headers on
the sockets; the default for CPU ranks) and ``socket`` (everything over gloo). ``--receive before
after`` also puts side by side where rank 0 posts its receives: before its own forward, or after
it (on a GPU, pending NCCL receive kernels would share rank 0's device with its forward).

One process group per (K, ranks, latent) serves both T values and the three algorithms (T
travels in the conditioning). ``--steps`` (default 50), ``--sleep-ms``, ``--latents``,
``--configs`` and ``--algos`` shrink the grid on a small machine.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from baselines import SRDS, ParaDIGMS  # noqa: E402
from chords import CHORDS, sample  # noqa: E402
from chords.backends import ProcessBackend  # noqa: E402
from chords.chords import preset_init_sequence  # noqa: E402
from chords.models.base import Adapter, Encoded  # noqa: E402
from chords.steps import EulerStep  # noqa: E402

Tensor = torch.Tensor
LATENTS = {"flux": (1, 4096, 64), "hunyuan": (1, 16, 33, 68, 120)}
CONFIGS = {"K1": (1, 1), "K2": (2, 2), "K4": (4, 4), "K8": (8, 8), "K8/4": (8, 4)}  # name: (cores, ranks)


class SleepAdapter(Adapter):
    """A stand-in denoiser: each velocity call sleeps ``cond["sleep_s"]`` and returns zeros."""

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str = "cpu", role: str = "full"):
        super().__init__(cfg, device, role)
        self.shape = tuple(cfg["shape"])
        self.dtype = getattr(torch, cfg["dtype"])
        self.zeros = torch.zeros((int(cfg["max_batch"]), *self.shape), dtype=self.dtype)
        self.sleeps: list[tuple[float, float]] = []

    def encode(self, prompt: str, seed: int) -> Encoded:
        n = int(self.cfg["num_inference_steps"])
        x0 = torch.randn(self.shape, generator=torch.Generator().manual_seed(seed)).to(self.dtype)
        cond = {"sleep_s": torch.tensor(float(self.cfg["sleep_s"]), dtype=torch.float64)}
        return Encoded(x0=x0, cond=cond, step=EulerStep(torch.linspace(1, 0, n + 1)), num_steps=n)

    def velocity(self, xs: Tensor, steps: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        start = time.perf_counter()
        time.sleep(float(cond["sleep_s"]))
        self.sleeps.append((start, time.perf_counter()))  # read on rank 0 only (phases())
        return self.zeros[: xs.shape[0]]

    def decode(self, x: Tensor, out_dir: Path, stem: str) -> list[str]:
        return []


def algorithms(k: int, n: int) -> dict[str, Any]:
    return {"CHORDS": CHORDS(k, preset_init_sequence(k, n)), "ParaDIGMS": ParaDIGMS(num_cores=k, tolerance=0.1),
            "SRDS": SRDS(num_cores=k)}


def phases(calls: list[tuple[float, float]], sleeps: list[tuple[float, float]], sleep_s: float) -> dict[str, float]:
    """Medians (ms) of where rank 0's rounds went: ``calls`` are the backend's (entry, return)
    times, ``sleeps`` rank 0's own forwards, one inside each call."""
    send, over, wait, algo = [], [], [], []
    for (enter, leave), (start, end) in zip(calls, sleeps):
        send.append(start - enter)
        over.append(end - start - sleep_s)
        wait.append(leave - end)
    algo = [nxt[0] - cur[1] for cur, nxt in zip(calls, calls[1:])]
    med = lambda xs: 1e3 * statistics.median(xs) if xs else float("nan")  # noqa: E731
    return {"send_ms": med(send), "over_ms": med(over), "wait_ms": med(wait), "algo_ms": med(algo)}


def measure(latent: str, cores: int, ranks: int, sleeps: list[float], steps: int, algos: list[str], shm: bool,
            receive: str | None = None) -> list[dict]:
    cfg = {"model_name": "sleep", "shape": list(LATENTS[latent]), "dtype": "bfloat16", "num_inference_steps": steps,
           "sleep_s": 0.0, "max_batch": cores}
    adapter = SleepAdapter(cfg)
    rows = []
    with ProcessBackend(adapter, "bench.bench_scale.SleepAdapter", cfg, ranks, num_cores=cores, timeout_s=600,
                        shared_memory=shm, receive_after_forward=None if receive is None else receive == "after") as backend:
        for sleep_s in sleeps:
            enc = SleepAdapter({**cfg, "sleep_s": sleep_s}).encode("", 0)
            backend.set_condition(enc.cond)
            backend.velocity(torch.stack([enc.x0] * cores), torch.zeros(cores, dtype=torch.long))  # warm-up
            for name, algo in algorithms(cores, steps).items():
                if name not in algos:
                    continue
                before = backend.bytes_total
                calls: list[tuple[float, float]] = []

                def timed(xs: Tensor, steps: Tensor) -> Tensor:
                    enter = time.perf_counter()
                    v = backend.velocity(xs, steps)
                    calls.append((enter, time.perf_counter()))
                    return v

                timed.stage = backend.stage  # sample() stacks into the backend's shared memory, as unwrapped
                adapter.sleeps.clear()
                t0 = time.perf_counter()
                res = sample(algo, timed, enc.x0, enc.step, enc.num_steps)
                wall = time.perf_counter() - t0
                ideal = res.rounds * sleep_s
                rows.append({"latent": latent, "T_ms": int(sleep_s * 1e3), "algo": name, "config": f"K={cores} on {ranks}", "transport": "shm" if shm else "socket", "receive": receive or "default",
                             "rounds": res.rounds, "eff": ideal / wall, "lost_ms": 1e3 * (wall - ideal) / res.rounds,
                             "MB/round": (backend.bytes_total - before) / res.rounds / 1e6,
                             **phases(calls, adapter.sleeps, sleep_s)})
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sleep-ms", type=int, nargs="+", default=[50, 500])
    ap.add_argument("--latents", nargs="+", default=list(LATENTS), choices=list(LATENTS))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--algos", nargs="+", default=["CHORDS", "ParaDIGMS", "SRDS"])
    ap.add_argument("--transport", nargs="+", default=["shm", "socket"], choices=["shm", "socket"],
                    help="shared memory (the default on CPU ranks) and/or gloo sockets, side by side")
    ap.add_argument("--receive", nargs="+", default=[None], choices=["before", "after"],
                    help="rank 0 posts its receives before or after its own forward, side by side (default: the backend's choice)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    rows = []
    for latent in args.latents:
        for name in args.configs:
            cores, ranks = CONFIGS[name]
            for transport in args.transport:
                for receive in args.receive:
                    rows += measure(latent, cores, ranks, [ms / 1e3 for ms in args.sleep_ms], args.steps, args.algos,
                                    transport == "shm", receive)
    df = pd.DataFrame(rows)
    for col in ("eff", "lost_ms", "MB/round", "send_ms", "over_ms", "wait_ms", "algo_ms"):
        index = ["latent", "T_ms", "algo", "transport"] + (["receive"] if args.receive != [None] else [])
        table = df.pivot_table(index=index, columns="config", values=col, sort=False)
        print(f"\n{col}\n{table.round(3 if col == 'eff' else 1).to_markdown()}")


if __name__ == "__main__":
    main()
