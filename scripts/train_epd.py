"""Distil an EPD table (``algo=epd``) for a model against its own fine solve.

    python scripts/train_epd.py --model digits --steps 4 --directions 2
    python scripts/train_epd.py --model moving-digits --steps 4 --directions 2 --teacher-steps 1000
    python scripts/train_epd.py --model flux --prompt-file prompts/image_demo.txt --device cuda \
        --steps 8 --directions 2 --teacher-steps 200 --samples 2      # a real model, on a GPU

Any model config works (the fit uses only the adapter's encode / velocity and its step function);
the embedded models have built-in class prompts, others need ``--prompt-file``.

What it does (forward only, no gradients):

1. Training samples: one prompt per class (digits: "a handwritten digit d"; moving-digits: a digit,
   a direction and a speed, cycling), ``--samples`` noises per prompt drawn from seeds starting at
   ``--seed-base`` (default 1,000,000: every evaluation seed in this project is below 10,000 -
   the experiments use 0-4, the model configs 42, the studies 0..seeds-1), so no evaluation sample
   is ever a training sample.
2. Teacher: Euler with ``--teacher-steps`` steps in all (1000 by default; 50 is the other teacher
   the issue names), ``ceil(T / M)`` equal steps in the grid position inside each of the student's
   ``M`` coarse steps (fractional positions, sigma linear between the coarse grid's entries, as
   the adapter reads it). Its states at the coarse times ``x*_1 .. x*_M`` are the targets.
3. Fit, step by step along the student's own trajectory (greedy, as the student will run): at
   step ``n`` from the student's states ``x_n``, evaluate ``d_n`` once and the direction ``g(r)``
   at every ``r`` of a grid (``--r-grid`` values in (0, 1]); for every set of ``K`` distinct grid
   values, solve the non-negative least squares ``min_beta || x_n + h sum_k beta_k g(r_k) -
   x*_{n+1} ||^2`` over all training samples (``h``: the step's slope in the velocity, the sigma
   step for Euler; every step function here is affine in the velocity; scipy.optimize.nnls); keep the
   best set. ``beta`` becomes the table's weights ``w = beta / sum(beta)`` (non-negative, sum 1)
   and one scale factor ``c = sum(beta)`` clipped to its bounds; time scales stay 1 (fitting them
   would need a search over evaluation labels too). Then the student advances with the fitted step.

Deterministic: one intra-op thread, fixed seeds, exhaustive search in a fixed order, so the same
command writes the same file bit for bit (``tests/test_train_epd.py`` checks it). It prints the
training RMSE per step against the teacher, beside the untrained rule and plain Euler, and writes
the table (``chords/models/weights/epd/{model}-n{M}-k{K}.json`` by default) with its training log
in the file's ``training`` field (no wall time or paths in the file, so that it is reproducible).
"""
from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from scipy.optimize import nnls

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from baselines.epd import EPD, SCALE_BOUNDS, EPDTable  # noqa: E402
from chords.core import sample  # noqa: E402
from chords.digitnet import DIRECTIONS, SPEEDS  # noqa: E402
from chords.epd_tables import TABLE_DIR, table_key, write_table  # noqa: E402
from chords.models.base import load_adapter_class  # noqa: E402

log = logging.getLogger("train_epd")
EMBEDDED = ("digits", "moving-digits")
#: every evaluation seed in the project is far below this
SEED_BASE = 1_000_000


def prompts_for(model: str, classes: int = 10, prompt_file: Path | None = None) -> list[str]:
    if prompt_file is not None:
        return [ln.strip() for ln in prompt_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if model == "digits":
        return [f"a handwritten digit {d}" for d in range(classes)]
    return [f"a {d} moving {DIRECTIONS[d % len(DIRECTIONS)]} {SPEEDS[d % len(SPEEDS)]}" for d in range(classes)]


class Batch:
    """Training samples grouped by prompt (one conditioning each), evaluated group by group."""

    def __init__(self, adapter, prompts: list[str], samples: int, seed_base: int):
        self.adapter = adapter
        self.groups = []  # (cond, x0 [samples, *S])
        for p_i, prompt in enumerate(prompts):
            encs = [adapter.encode(prompt, seed_base + p_i * samples + s) for s in range(samples)]
            self.groups.append((encs[0].cond, torch.stack([e.x0 for e in encs])))
        self.step = encs[0].step
        self.num_steps = encs[0].num_steps

    def x0(self) -> list[torch.Tensor]:
        return [x for _, x in self.groups]

    def velocity(self, xs: list[torch.Tensor], position: float | int) -> list[torch.Tensor]:
        out = []
        for (cond, _), x in zip(self.groups, xs):
            pos = torch.full((x.shape[0],), position, dtype=torch.float64 if isinstance(position, float) else torch.long)
            out.append(self.adapter.velocity(x, pos, cond))
        return out


def teacher_states(batch: Batch, teacher_steps: int) -> list[list[torch.Tensor]]:
    """Euler with ceil(T / M) equal sub-steps per coarse step: states at positions 1..M."""
    m = batch.num_steps
    sub = max(1, math.ceil(teacher_steps / m))
    xs = batch.x0()
    out = []
    for n in range(m):
        for s in range(sub):
            a = n if s == 0 else n + s / sub
            b = n + 1 if s == sub - 1 else n + (s + 1) / sub
            v = batch.velocity(xs, a)
            xs = [batch.step(x, vi, a, b) for x, vi in zip(xs, v)]
        out.append(xs)
    return out


def _flat(ts: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([t.reshape(-1).double().cpu() for t in ts]).numpy()


def affine_step(batch: Batch, xs: list[torch.Tensor], n: int) -> tuple[np.ndarray, float]:
    """(step(x, 0), b) with step(x, v) = step(x, 0) + b v: every step function here is affine in v
    with a scalar slope (Euler: the sigma step; DDIM: its x0 coefficient), computed in float64."""
    base = [batch.step(x.double(), torch.zeros_like(x, dtype=torch.float64), n, n + 1) for x in xs]
    one = [batch.step(x.double(), torch.ones_like(x, dtype=torch.float64), n, n + 1) for x in xs]
    slope = float((one[0] - base[0]).reshape(-1)[0])
    return _flat(base), slope


def rmse(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(np.sqrt(np.mean((_flat(a) - _flat(b)) ** 2)))


def fit(batch: Batch, targets: list[list[torch.Tensor]], k: int, r_grid: Sequence[float]) -> tuple[EPDTable, list[dict]]:
    """The greedy forward-only fit (module docstring); returns the table and a per-step log."""
    m = batch.num_steps
    lo, hi = SCALE_BOUNDS
    xs = batch.x0()
    rows_r, rows_w, rows_c, steps_log = [], [], [], []
    for n in range(m):
        base, h = affine_step(batch, xs, n)
        d = batch.velocity(xs, n)
        g = {}
        for r in r_grid:
            pred = [batch.step(x, di, n, n + r) for x, di in zip(xs, d)]
            g[r] = _flat(batch.velocity(pred, float(n + r)))
        want = (_flat(targets[n]) - base) / h  # the velocity that would hit the teacher exactly
        best = None
        for combo in itertools.combinations(r_grid, k):
            a = np.stack([g[r] for r in combo], axis=1)
            beta, _ = nnls(a, want)
            if beta.sum() <= 0:
                continue
            total = float(np.clip(beta.sum(), lo, hi))
            w = beta / beta.sum()
            resid = float(np.sqrt(np.mean((a @ (w * total) - want) ** 2)) * abs(h))
            if best is None or resid < best[0]:
                best = (resid, combo, w, total)
        _, combo, w, total = best
        rows_r.append([float(r) for r in combo])
        rows_w.append([float(v) for v in w])
        rows_c.append([total] * k)
        # advance the student with the fitted step
        combo_v = [sum(float(wk) * total * gk for wk, gk in zip(w, gs)) for gs in zip(*[
            batch.velocity([batch.step(x, di, n, n + r) for x, di in zip(xs, d)], float(n + r)) for r in combo])]
        xs = [batch.step(x, v.to(x.dtype), n, n + 1) for x, v in zip(xs, combo_v)]
        steps_log.append({"step": n, "r": rows_r[-1], "weights": rows_w[-1], "scale": total,
                          "train_rmse_vs_teacher": rmse(xs, targets[n])})
        log.info("step %d: r=%s w=%s c=%.4f, training RMSE vs teacher %.5f", n, [f"{r:.3f}" for r in combo],
                 [f"{v:.3f}" for v in w], total, steps_log[-1]["train_rmse_vs_teacher"])
    # the weights' rounding to sum exactly 1 (the table's check is 1e-9)
    rows_w = [[v / sum(row) for v in row] for row in rows_w]
    return EPDTable.build(rows_r, rows_w, rows_c), steps_log


def refine(batch: Batch, targets: list[list[torch.Tensor]], table: EPDTable, iters: int, lr: float) -> tuple[EPDTable, list[float]]:
    """Gradient training from ``table`` (Euler grids only): Adam on all four numbers per step and
    direction (``r = sigmoid``, ``w = softmax``, ``c, a = 1 + 0.2 tanh``), the loss the mean squared
    distance of the unrolled student's states to the teacher's at every coarse time, through the
    model. Returns the table and the loss per iteration."""
    import torch.nn.functional as F

    from chords.positions import at_positions

    if not hasattr(batch.step, "sigmas"):
        raise ValueError("--refine needs a flow-matching (Euler) grid")
    velocity = type(batch.adapter).velocity.__wrapped__  # the adapter's velocity without its no_grad
    sig = batch.step.sigmas.to(torch.float64)
    m, k = table.num_steps, table.num_directions
    t = lambda rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731
    rho = torch.logit(t(table.r).clamp(1e-4, 1 - 1e-4)).requires_grad_()
    lam = torch.log(t(table.weights).clamp_min(1e-6)).requires_grad_()
    gam = torch.atanh(((t(table.scale) - 1) / 0.2).clamp(-0.99, 0.99)).requires_grad_()
    alp = torch.atanh(((t(table.time_scale) - 1) / 0.2).clamp(-0.99, 0.99)).requires_grad_()
    opt = torch.optim.Adam([rho, lam, gam, alp], lr=lr)
    losses = []

    def numbers():
        return torch.sigmoid(rho), F.softmax(lam, -1), 1 + 0.2 * torch.tanh(gam), 1 + 0.2 * torch.tanh(alp)

    for _ in range(iters):
        r, w, c, a = numbers()
        loss = 0.0
        for g_i, (cond, x0) in enumerate(batch.groups):
            x = x0.to(torch.float64)
            for n in range(m):
                n_t = torch.full((x.shape[0],), n, dtype=torch.long)
                d = velocity(batch.adapter, x.float(), n_t, cond).to(torch.float64)
                preds, labels = [], []
                for j in range(k):
                    s_pos = at_positions(sig, (n + r[n, j]).reshape(1))[0]
                    preds.append(x + (s_pos - sig[n]) * d)
                    labels.append(torch.clamp(n + a[n, j] * r[n, j], max=float(m)).expand(x.shape[0]))
                g = velocity(batch.adapter, torch.cat(preds).float(), torch.cat(labels), cond).to(torch.float64)
                g = g.reshape(k, *x.shape)
                combo = sum(w[n, j] * c[n, j] * g[j] for j in range(k))
                x = x + (sig[n + 1] - sig[n]) * combo
                loss = loss + (x - targets[n][g_i].to(torch.float64)).pow(2).mean()
        loss = loss / (m * len(batch.groups))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        log.info("refine %d: loss %.3e", len(losses), losses[-1])
    r, w, c, a = (v.detach() for v in numbers())
    w = w / w.sum(-1, keepdim=True)
    return EPDTable.build(r.tolist(), w.tolist(), c.tolist(), a.tolist()), losses


def solve_rule(batch: Batch, table: EPDTable) -> list[torch.Tensor]:
    """The student with ``table`` on every training sample (the same arithmetic as algo=epd)."""
    xs = batch.x0()
    algo = EPD(table.num_directions, table)
    for n in range(batch.num_steps):
        d = batch.velocity(xs, n)
        r, labels, beta = algo.coefficients(table, n)
        gs = [batch.velocity([batch.step(x, di, n, n + f) for x, di in zip(xs, d)], float(n + lab)) for f, lab in zip(r, labels)]
        combo = [sum(b * g[i] for b, g in zip(beta, gs)) for i in range(len(xs))]
        xs = [batch.step(x, v.to(x.dtype), n, n + 1) for x, v in zip(xs, combo)]
    return xs


def euler(batch: Batch) -> list[torch.Tensor]:
    xs = batch.x0()
    for n in range(batch.num_steps):
        v = batch.velocity(xs, n)
        xs = [batch.step(x, vi, n, n + 1) for x, vi in zip(xs, v)]
    return xs


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="digits", help="a configs/model/ name (digits, moving-digits, tiny-flux, flux, ...)")
    ap.add_argument("--prompt-file", type=Path, default=None,
                    help="training prompts, one a line (default for digits / moving-digits: one per class)")
    ap.add_argument("--device", default="cpu", help="where the model runs (cuda for a real model)")
    ap.add_argument("--steps", type=int, default=4, help="M, the coarse steps (model.num_inference_steps)")
    ap.add_argument("--directions", type=int, default=2, help="K, the parallel directions per step (algo.num_cores)")
    ap.add_argument("--guidance", type=float, default=None, help="model.guidance_scale (default: the model config's)")
    ap.add_argument("--shift", type=float, default=None, help="model.shift (default: the model config's)")
    ap.add_argument("--teacher-steps", type=int, default=1000, help="the teacher's Euler steps in all (1000 or 50)")
    ap.add_argument("--samples", type=int, default=4, help="noises per class prompt")
    ap.add_argument("--classes", type=int, default=10, help="class prompts (0-9)")
    ap.add_argument("--seed-base", type=int, default=SEED_BASE, help="first training seed (evaluation seeds are < 10000)")
    ap.add_argument("--r-grid", type=int, default=10, help="grid values of r: 1/G, 2/G, ..., 1")
    ap.add_argument("--out", type=Path, default=None, help="table file (default chords/models/weights/epd/{model}-n{M}-k{K}.json)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: deterministic everywhere)")
    ap.add_argument("--refine", type=int, default=0, help="iterations of gradient training after the forward fit (0: none)")
    ap.add_argument("--lr", type=float, default=0.05, help="Adam's learning rate for --refine")
    ap.add_argument("--holdout-samples", type=int, default=0,
                    help="also score on this many held-out noises per prompt (seeds seed-base + 500000 ...)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("steps", "directions", "teacher_steps", "samples", "classes", "r_grid", "threads"):
        if getattr(a, name) < 1:
            print(f"error: --{name.replace('_', '-')} {getattr(a, name)} is invalid: it must be an integer >= 1", file=sys.stderr)
            return 2
    if a.directions > a.r_grid:
        print(f"error: --directions {a.directions} is invalid: at most --r-grid ({a.r_grid}) distinct r values", file=sys.stderr)
        return 2
    if a.seed_base < 10_000:
        print(f"error: --seed-base {a.seed_base} is invalid: training seeds must stay >= 10000, above every evaluation seed", file=sys.stderr)
        return 2
    models = sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml"))
    if a.model not in models:
        print(f"error: --model {a.model!r} is unknown: use one of {', '.join(models)}", file=sys.stderr)
        return 2
    if a.prompt_file is None and a.model not in EMBEDDED:
        print(f"error: --prompt-file is required for --model {a.model} (prompts are built in only for {', '.join(EMBEDDED)})",
              file=sys.stderr)
        return 2
    if a.prompt_file is not None and not a.prompt_file.is_file():
        print(f"error: --prompt-file {str(a.prompt_file)!r} is not a file", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / f"{a.model}.yaml"), resolve=True)
    cfg["num_inference_steps"] = a.steps
    if a.guidance is not None:
        cfg["guidance_scale"] = a.guidance
    if a.shift is not None:
        cfg["shift"] = a.shift
    cls = load_adapter_class(cfg["adapter"])
    problems = cls.validate(cfg)
    if problems:
        print(f"error: {problems[0]}", file=sys.stderr)
        return 2
    adapter = cls(cfg, a.device, "full")
    prompts = prompts_for(a.model, a.classes, a.prompt_file)
    batch = Batch(adapter, prompts, a.samples, a.seed_base)
    with torch.no_grad():
        targets = teacher_states(batch, a.teacher_steps)
        r_grid = [i / a.r_grid for i in range(1, a.r_grid + 1)]
        table, steps_log = fit(batch, targets, a.directions, r_grid)
    losses = []
    forward_table = table
    if a.refine:
        table, losses = refine(batch, targets, table, a.refine, a.lr)
    with torch.no_grad():
        sets = [("", batch, targets)]
        if a.holdout_samples:
            held = Batch(adapter, prompts, a.holdout_samples, a.seed_base + 500_000)
            sets.append(("holdout_", held, teacher_states(held, a.teacher_steps)))
        scores = {}
        for prefix, b, tg in sets:
            final = tg[-1]
            scores[prefix + "euler_same_steps"] = rmse(euler(b), final)
            scores[prefix + "untrained"] = rmse(solve_rule(b, EPDTable.untrained(a.steps, a.directions)), final)
            scores[prefix + "fitted"] = rmse(solve_rule(b, forward_table), final)
            if a.refine:
                scores[prefix + "refined"] = rmse(solve_rule(b, table), final)
    seconds = time.perf_counter() - t0
    for name, v in scores.items():
        log.info("training RMSE at data vs the teacher: %-17s %.5f", name, v)
    log.info("%.1f s", seconds)
    out = a.out or TABLE_DIR / f"{a.model}-n{a.steps}-k{a.directions}.json"
    training = {
        "script": "scripts/train_epd.py", "method": "forward-only: grid search over r, NNLS for the weights"
        + (f", then {a.refine} Adam iterations (lr {a.lr}) through the model" if a.refine else ""),
        "teacher": f"Euler-{a.teacher_steps}",
        "prompts": prompts, "samples_per_prompt": a.samples,
        "seeds": [a.seed_base, a.seed_base + len(prompts) * a.samples - 1], "r_grid": r_grid,
        "steps": steps_log, "rmse_at_data_vs_teacher": scores, "torch": torch.__version__, "threads": a.threads,
    }
    if a.refine:
        training["refine_losses"] = losses
    write_table(out, table, table_key(cfg, a.directions, "euler"), training)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
