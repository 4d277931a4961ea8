"""Sampling-core benchmark (a script, not a test): run `python bench/bench_core.py`.

1. Algorithm overhead per round (everything except velocity calls: scheduling, stacking,
   step functions, rectification) for K=8, N=50 on a 1x16x128x128 float32 latent, measured
   side by side with a velocity that sleeps 100 ms (a stand-in for a GPU forward).
2. A table on a nonlinear ODE for K = 2, 4, 6, 8: rounds, nfe, speedup (N / rounds at the
   output) and RMSE against sequential, for CHORDS (paper presets and auto), ParaDIGMS and SRDS.
3. SRDS, N = 50 (B = 7 blocks), K = 1 .. 8: the round at which each Parareal iteration's output
   arrives (a run whose tolerance stops after iteration p takes the rounds of column p).
   The schedule does not depend on the velocity, only on N, B and K.
4. ParaDIGMS side by side with diffusers' StableDiffusionParadigmsPipeline
   (DDIMParallelScheduler) on a tiny random UNet: rounds, nfe, max |diff| of the output.

`--section` runs one of them; `--threads 1` keeps the tiny UNet fast on a busy CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from baselines import SRDS, ParaDIGMS  # noqa: E402
from chords import CHORDS, CoreIndex, Sequential, sample  # noqa: E402
from chords.chords import preset_init_sequence  # noqa: E402
from chords.steps import EulerStep  # noqa: E402


def overhead(k: int = 8, n: int = 50, shape=(1, 16, 128, 128), forward_s: float = 0.1, repeats: int = 3) -> dict:
    torch.manual_seed(0)
    x0 = torch.randn(shape)
    step = EulerStep(torch.linspace(1, 0, n + 1))
    ready = torch.randn(k, *shape) * 0.01

    def free(xs, steps):  # returns at once: what remains is the algorithm's own work
        return ready[: xs.shape[0]]

    def sleeping(xs, steps):
        time.sleep(forward_s)
        return ready[: xs.shape[0]]

    algo = CHORDS(k, preset_init_sequence(k, n))
    rows = {}
    best = float("inf")
    in_steps = [0.0, 0]

    def timed_step(x, v, i, j):
        t0 = time.perf_counter()
        out = step(x, v, i, j)
        in_steps[0] += time.perf_counter() - t0
        in_steps[1] += 1
        return out

    for _ in range(repeats):
        t0 = time.perf_counter()
        res = sample(algo, free, x0, step, n)
        best = min(best, time.perf_counter() - t0)
    per_round = best / res.rounds
    best_steps = float("inf")
    for _ in range(repeats):  # the same run again, timing the step calls inside it
        in_steps[:] = [0.0, 0]
        t0 = time.perf_counter()
        sample(algo, free, x0, timed_step, n)
        if time.perf_counter() - t0 < best_steps:
            best_steps, steps_s, calls = time.perf_counter() - t0, in_steps[0], in_steps[1]
    # side by side: the same number of sleeping calls with no algorithm around them, then CHORDS
    t0 = time.perf_counter()
    for _ in range(res.rounds):
        sleeping(x0[None], None)
    bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    res_s = sample(algo, sleeping, x0, step, n)
    wall = time.perf_counter() - t0
    side = (wall - bare) / res_s.rounds
    rows["bare sleeping calls (s)"] = bare
    rows["CHORDS with sleeping calls (s)"] = wall
    rows["rounds"] = res.rounds
    rows["overhead_ms_per_round (free velocity)"] = per_round * 1e3
    rows["  of which step calls (ms per round)"] = steps_s / res.rounds * 1e3
    rows["  step calls per round"] = calls / res.rounds
    rows["  the rest: stacking, rectification, bookkeeping (ms per round)"] = (best_steps - steps_s) / res.rounds * 1e3
    rows["overhead_ms_per_round (100 ms velocity)"] = side * 1e3
    rows["overhead_% of a 100 ms call (free)"] = 100 * per_round / forward_s
    rows["overhead_% of a 100 ms call (sleeping)"] = 100 * side / forward_s
    return rows


def nonlinear_table(n: int = 50, dim: int = 256) -> pd.DataFrame:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(dim, generator=g, dtype=torch.float64)
    w = torch.randn(dim, generator=g, dtype=torch.float64)
    t = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    step = EulerStep(1 - t)

    def velocity(xs, steps):  # dx/dt = -x^3 + sin(3t + w)  (v = -dx/dt on the decreasing grid)
        tt = t[steps].reshape(-1, 1)
        return -(-(xs**3) + torch.sin(3 * tt + w))

    ref = sample(Sequential(), velocity, x0, step, n).output
    rows = []
    for k in (2, 4, 6, 8):
        setups = [
            (f"CHORDS preset {'-'.join(map(str, preset_init_sequence(k, n)))}", CHORDS(k, "preset"), CoreIndex(1)),
            (f"CHORDS preset, 2nd-fastest", CHORDS(k, "preset"), CoreIndex(2)),
            ("CHORDS auto", CHORDS(k, "auto"), CoreIndex(1)),
            ("ParaDIGMS tol 0.1", ParaDIGMS(k, 0.1), None),
            ("SRDS tol 0.05", SRDS(k, tolerance=0.05), None),
        ]
        for name, algo, stop in setups:
            res = sample(algo, velocity, x0, step, n, stop=stop)
            out_round = res.hits[res.stopped_at].round
            rmse = (res.output - ref).pow(2).mean().sqrt().item()
            rows.append({"K": k, "method": name, "rounds": out_round, "nfe": res.nfe, "speedup": n / out_round, "rmse_vs_seq": rmse})
    return pd.DataFrame(rows)


def srds_rounds_table(n: int = 50, cores: range = range(1, 9)) -> pd.DataFrame:
    sig = torch.linspace(1, 0, n + 1, dtype=torch.float64)
    x0 = torch.randn(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def velocity(xs, steps):  # the schedule is independent of the values; any velocity will do
        return xs**3 + torch.sin(3 * sig[steps]).reshape(-1, 1)

    rows = []
    for k in cores:
        res = sample(SRDS(k, tolerance=0.0), velocity, x0, EulerStep(sig), n)
        row = {"K": k}
        row.update({f"iter {h.core}": h.round for h in res.hits})
        row["nfe (all iterations)"] = res.nfe
        rows.append(row)
    return pd.DataFrame(rows)


def paradigms_vs_diffusers() -> pd.DataFrame:
    from tests.sd_paradigms import side_by_side

    rows = []
    for n, k, tol, pred in [(25, 4, 0.1, "epsilon"), (25, 8, 0.1, "epsilon"), (25, 8, 0.3, "epsilon"),
                            (50, 4, 0.5, "epsilon"), (50, 6, 0.05, "epsilon"), (50, 8, 0.1, "epsilon"),
                            (50, 16, 1.0, "epsilon"), (30, 6, 0.1, "v_prediction"), (20, 3, 0.0, "epsilon")]:
        run = side_by_side(n, k, tol, pred)
        rows.append({"N": n, "K": k, "tolerance": tol, "prediction": pred,
                     "diffusers rounds": run.ref_rounds, "ours rounds": run.ours.rounds,
                     "diffusers nfe": run.ref_nfe, "ours nfe": run.ours.nfe,
                     "max |diff|": run.max_diff, "max |output|": run.ref.abs().max().item()})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--section", choices=["all", "overhead", "ode", "srds", "paradigms"], default="all")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    if args.section in ("all", "overhead"):
        print("\n## Algorithm overhead, CHORDS K=8, N=50, latent 1x16x128x128 float32\n")
        for key, val in overhead().items():
            print(f"- {key}: {val:.3f}" if isinstance(val, float) else f"- {key}: {val}")
    if args.section in ("all", "ode"):
        print("\n## Nonlinear ODE dx/dt = -x^3 + sin(3t + w), dim 256, N=50 (float64)\n")
        print(nonlinear_table().to_markdown(index=False, floatfmt=".3g"))
    if args.section in ("all", "srds"):
        print("\n## SRDS, N=50, B=7: round at which each iteration's output arrives\n")
        print(srds_rounds_table().to_markdown(index=False))
    if args.section in ("all", "paradigms"):
        print("\n## ParaDIGMS vs diffusers' StableDiffusionParadigmsPipeline (DDIMParallelScheduler, eta=0),")
        print("## tiny random UNet, 2 latents, guidance 3, float32\n")
        print(paradigms_vs_diffusers().to_markdown(index=False, floatfmt=".3g"))
