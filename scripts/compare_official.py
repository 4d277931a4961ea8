"""Compare this project's CHORDS and stop rules with the official release, on the same inputs.

    python scripts/compare_official.py --official /path/to/CHORDS      # a checkout of hanjq17/CHORDS

The official code is imported from that checkout at run time (``algorithms/chords.py`` and
``snippets/scheduler.py``); nothing of it is part of this project. Both implementations get the
same noise, the same velocity (a nonlinear elementwise function of the state and the grid
index, so batching cannot change it), the same diffusers ``FlowMatchEulerDiscreteScheduler``
grid, and the same step arithmetic: the official solver is ``custom_step_Euler`` followed by
a cast to the state's dtype, as in the release's ``snippets/flux.py``; ours is
:class:`chords.steps.EulerStep` in its default precision. The official driver loop is written
here from the release's protocol (get_allocation, update_scores, update_states,
schedule_cores).

For every init sequence, dtype (float32, bfloat16) and stop rule (``core_index`` with every
index, ``residual`` with several thresholds, none) it prints the hit each returns (core,
round), whether the returned latents are bitwise equal, and a verdict:

* ``equal``: same core, round and value (required whenever no two cores finish together and
  the index is >= 1);
* ``index 0``: the official code never checks the coarse shot, so index 0 acts as 1; here 0 is
  the coarse shot (README, "Stop rules");
* ``tie``: several cores finish in the same round; the official code appends them slowest
  first and returns the last appended (it passes over indices inside the tie, and checks the
  residual only between the last two appended); here hits are ordered fastest first and index
  i is always the i-th fastest core;
* ``official crashed``: the official code raised (it does when the last cores finish together).

Exit status 1 if a case that must be equal is not.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chords import CHORDS, CoreIndex, Residual, sample  # noqa: E402
from chords.steps import EulerStep  # noqa: E402

SEQUENCES = {
    "0-8-16-32": 50,
    "0-3-6-12-24-36": 50,
    "0-2-4-8-16-24-32-40": 50,
    "0-1-2-10": 20,  # cores 1 and 2 tie, then 2 and 3
    "0-4-5-12": 20,  # cores 2 and 3 tie (not the last ones)
    "0-5-6": 12,  # the two fastest cores tie with the next: the last cores tie
}
THRESHOLDS = (1e-2, 3e-3, 1e-3, 4e-4, 1e-4, 0.0)


@dataclass
class Outcome:
    core: int | None
    round: int | None
    x: torch.Tensor | None
    error: str | None = None


def grid(num_steps: int):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(num_steps)
    return sched


def velocity_fn(num_steps: int):
    """v(x, i): nonlinear, elementwise, computed in the state's dtype (like a model output)."""
    a = torch.linspace(0.5, 1.5, num_steps + 1)
    c = torch.linspace(-0.3, 0.3, num_steps + 1)

    def v(x: torch.Tensor, i: int) -> torch.Tensor:
        return (torch.sin(x * a[i].to(x.dtype)) - 0.5 * x + c[i].to(x.dtype)).to(x.dtype)

    return v


def load_official(official: Path):
    sys.path.insert(0, str(official))
    from algorithms.chords import CHORDS as OfficialCHORDS  # type: ignore
    from snippets.scheduler import custom_step_Euler  # type: ignore

    return OfficialCHORDS, custom_step_Euler


def run_official(official, x0, num_steps, init_t, stopping) -> Outcome:
    OfficialCHORDS, custom_step_Euler = official
    sched = grid(num_steps)
    v = velocity_fn(num_steps)

    def solver(x_t, score_t, t_step, s_step):
        out = custom_step_Euler(sched, model_output=score_t, step_index=t_step, step_index_target=s_step,
                                sample=x_t, return_dict=False)[0]
        return out.to(x_t.dtype)

    init = [int(t) for t in init_t.split("-")]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            algo = OfficialCHORDS(num_steps, x0, len(init), solver=solver, init_t=init_t, stopping_kwargs=stopping)
            while True:
                allocation = algo.get_allocation()
                if allocation == []:
                    break
                algo.update_scores([(t, k, v(x, t)) for t, k, x in allocation])
                algo.update_states(len(allocation))
                delete_ids, stop = algo.schedule_cores()
                if stop:
                    break
                algo.cur_core_to_compute = algo.cur_core_to_compute[len(allocation):]
                if len(delete_ids):
                    algo.cur_core_to_compute = [c for c in algo.cur_core_to_compute if c not in delete_ids]
            steps_taken, xs, rounds = algo.get_last_x_and_hittime()
    except Exception as e:  # the official code's own failure, reported as such
        return Outcome(None, None, None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    k = steps_taken[-1]
    # a hit records how many fine steps its core took: core c took N - init[c-1]; the coarse shot 0
    core = 0 if k == 0 else init.index(num_steps - k) + 1
    return Outcome(core, int(rounds[-1]), xs[-1])


def run_ours(x0, num_steps, init_t, stop) -> Outcome:
    sched = grid(num_steps)
    v = velocity_fn(num_steps)
    step = EulerStep(sched.sigmas)

    def velocity(xs, steps):
        return torch.stack([v(x, int(i)) for x, i in zip(xs, steps)])

    init = [int(t) for t in init_t.split("-")]
    res = sample(CHORDS(len(init), init), velocity, x0, step, num_steps, stop=stop)
    hit = res.output_hit
    return Outcome(hit.core, hit.round, hit.x)


def has_tie(init: list[int], num_steps: int) -> bool:
    rounds = [(c - 1) + num_steps - init[c - 1] for c in range(1, len(init) + 1)]
    return len(set(rounds)) < len(rounds)


def cases():
    for (seq, n), dtype in itertools.product(SEQUENCES.items(), (torch.float32, torch.bfloat16)):
        k = len(seq.split("-"))
        for index in range(0, k + 1):
            yield seq, n, dtype, f"core_index={index}", {"criterion": "core_index", "index": index, "threshold": None}, CoreIndex(index)
        for thr in THRESHOLDS:
            yield seq, n, dtype, f"residual={thr:g}", {"criterion": "residual", "index": None, "threshold": thr}, Residual(thr)


def compare(official_dir: Path) -> list[dict]:
    official = load_official(official_dir)
    rows = []
    for seq, n, dtype, rule, kwargs, stop in cases():
        x0 = torch.randn(1, 64, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
        o = run_official(official, x0, n, seq, kwargs)
        ours = run_ours(x0, n, seq, stop)
        same_hit = o.x is not None and o.core == ours.core and o.round == ours.round
        init = [int(t) for t in seq.split("-")]
        if o.error is not None:
            verdict = "official crashed"
        elif same_hit and torch.equal(o.x, ours.x):
            verdict = "equal"
        elif same_hit:
            verdict = "DIFFERENT value"
        elif rule == "core_index=0":
            verdict = "index 0"
        elif has_tie(init, n):
            verdict = "tie"
        else:
            verdict = "DIFFERENT"
        rows.append({"init_t": seq, "N": n, "dtype": str(dtype).removeprefix("torch."), "rule": rule,
                     "official": o.error or f"core {o.core} @ {o.round}", "ours": f"core {ours.core} @ {ours.round}",
                     "verdict": verdict})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, type=Path, help="a checkout of github.com/hanjq17/CHORDS")
    args = ap.parse_args(argv)
    if not (args.official / "algorithms" / "chords.py").is_file():
        print(f"error: --official {args.official} is not a checkout of the official CHORDS release "
              f"(no algorithms/chords.py)", file=sys.stderr)
        return 2
    rows = compare(args.official)
    width = max(len(r["official"]) for r in rows)
    print(f"{'init_t':<22}{'N':>4} {'dtype':<9}{'rule':<18}{'official':<{width + 2}}{'ours':<16}verdict")
    for r in rows:
        print(f"{r['init_t']:<22}{r['N']:>4} {r['dtype']:<9}{r['rule']:<18}{r['official']:<{width + 2}}{r['ours']:<16}{r['verdict']}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    print("; ".join(f"{v}: {c}" for v, c in sorted(counts.items())))
    return 1 if any(v.startswith("DIFFERENT") for v in counts) else 0


if __name__ == "__main__":
    sys.exit(main())
