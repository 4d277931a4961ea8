#!/usr/bin/env python
"""Search CHORDS initialization sequences for a model, K, N and a quality budget.

    python scripts/search_init.py --model digits --cores 8 --steps 50
    python scripts/search_init.py --model digits --cores 4 --budget 0.05 --objective index --out search/digits_k4.md
    python scripts/search_init.py --model gaussian --cores 4 --steps 20 --select-seeds 0-3 --report-seeds 4-7

Candidates: Theorem 2.5's family (``chords.chords.init_sequence`` for a grid of speedups), uniform
starts (``k * g`` for every gap g), the paper's presets, then a local search (hill climbing over
integer sequences: one start moved by ±1, ±2, ±4, ... from the best candidates so far).

Scoring from streamed hits: each candidate runs once per sample without a stop rule, so one run
gives every hit (its round and its latent RMSE against the sequential reference, float64) and
every stop rule is scored from it without rerunning:

* ``--objective budget`` (default): per sample the earliest hit whose latent RMSE is within the
  budget (eval's ``rmse=B`` rule); speedup = N / mean round over the samples (the paper's
  counting), so a sequence is only faster when it is at least as accurate.
* ``--objective index``: the hit at ``--index`` (default 1, the official default): speedup =
  N / its round, feasible when its mean latent RMSE is within the budget.

``--budget auto`` (default) is the paper preset's mean RMSE at ``--index`` on the selection
samples: "equal or lower RMSE than the presets". Candidates are chosen on the selection seeds and
reported on held-out seeds (95% intervals: bootstrap for speedups and RMSE, eval/stats.py),
next to the presets and the best Theorem 2.5 and uniform sequences.

Why a script and not Hydra's Optuna sweeper: an Optuna trial is one Hydra job (a process, a model
load, run folders) returning one number, and its samplers know boxes of numbers, not strictly
increasing integer sequences starting at 0 (most draws would be rejected). Here sampling is
in-process (the adapter behind ``chords.sample`` with a local backend), the sequential
references are computed once and shared by every candidate, one streamed run scores every stop
rule, and held-out seeds are a second pass over the best few — a few seconds per candidate on a
laptop for the embedded models.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chords import CHORDS, Sequential, sample  # noqa: E402
from chords.chords import PAPER_PRESETS, check_init_t, init_sequence, preset_init_sequence  # noqa: E402
from eval.metrics import latent_rmse  # noqa: E402

Init = tuple[int, ...]


class Fail(Exception):
    """Bad input: one line, exit status 2."""


# --------------------------------------------------------------------------- the model, in-process


@dataclass
class Sample:
    prompt: str
    seed: int
    x0: torch.Tensor
    cond: dict
    step: Callable
    reference: torch.Tensor  # the sequential output


class Problem:
    """A model loaded once; encodings and sequential references computed once per sample."""

    def __init__(self, model: str, steps: int, overrides: Sequence[str] = (), device: str = "cpu"):
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        from chords.backends import LocalBackend
        from chords.config import CONFIG_DIR, ConfigError, validate

        if not (CONFIG_DIR / "model" / f"{model}.yaml").is_file():
            names = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
            raise Fail(f"--model {model!r} is unknown: choose one of {', '.join(names)}")
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name="base", overrides=[f"model={model}", f"model.num_inference_steps={steps}",
                                                          "algo=sequential", "hardware=local", *overrides])
        try:
            spec = validate(cfg, check_output=False)
        except ConfigError as e:
            raise Fail(str(e)) from None
        self.name = model
        self.cfg = cfg
        self.steps = steps
        self.adapter = spec.adapter_cls(cfg.model, torch.device(device), "full")
        self.backend = LocalBackend(self.adapter, "batched")
        self._samples: dict[tuple[str, int], Sample] = {}

    def velocity(self, xs: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return self.backend.velocity(xs, steps)

    def sample_of(self, prompt: str, seed: int) -> Sample:
        key = (prompt, seed)
        if key not in self._samples:
            with torch.no_grad():
                enc = self.adapter.encode(prompt, seed)
                self.backend.set_condition(enc.cond)
                ref = sample(Sequential(), self.velocity, enc.x0, enc.step, enc.num_steps).output
            self._samples[key] = Sample(prompt, seed, enc.x0, enc.cond, enc.step, ref)
        return self._samples[key]

    def hits(self, init: Init, s: Sample) -> tuple[list[int], list[float]]:
        """Every hit of CHORDS(init) on one sample: rounds, latent RMSE vs sequential (float64)."""
        self.backend.set_condition(s.cond)
        with torch.no_grad():
            res = sample(CHORDS(len(init), list(init)), self.velocity, s.x0, s.step, self.steps)
        ref = s.reference.double()
        rmse = [latent_rmse(h.x, ref) for h in res.hits]  # eval's definition, in float64
        return [h.round for h in res.hits], rmse


# --------------------------------------------------------------------------- scores


@dataclass
class Score:
    """One candidate on a set of samples: hit rounds (the same for every sample) and RMSEs."""

    init: Init
    rounds: list[int]
    rmse: np.ndarray  # [samples, hits]

    def at_budget(self, budget: float) -> tuple[np.ndarray, np.ndarray]:
        """Per sample: round and RMSE of the earliest hit within the budget (else the last hit)."""
        ok = self.rmse <= budget
        first = np.where(ok.any(1), ok.argmax(1), self.rmse.shape[1] - 1)
        rows = np.arange(len(first))
        return np.asarray(self.rounds)[first].astype(float), self.rmse[rows, first]

    def at_index(self, index: int) -> tuple[float, np.ndarray]:
        return float(self.rounds[index]), self.rmse[:, index]


def objective(score: Score, kind: str, budget: float, index: int, n: int) -> tuple[float, float]:
    """(value to maximise, tie-break to maximise): speedup at the budget (or at the index when it is
    within the budget; infeasible sequences rank below every feasible one by their RMSE)."""
    if kind == "budget":
        rounds, rmse = score.at_budget(budget)
        return n / float(rounds.mean()), -float(rmse.mean())
    r, rmse = score.at_index(index)
    mean = float(rmse.mean())
    return (n / r if mean <= budget else -mean), -mean


class Evaluator:
    def __init__(self, problem: Problem, samples: list[tuple[str, int]]):
        self.problem = problem
        self.samples = samples
        self.cache: dict[Init, Score] = {}

    def __call__(self, init: Init) -> Score:
        if init not in self.cache:
            rounds: list[int] = []
            rows = []
            for prompt, seed in self.samples:
                r, e = self.problem.hits(init, self.problem.sample_of(prompt, seed))
                rounds = r
                rows.append(e)
            self.cache[init] = Score(init, rounds, np.asarray(rows, dtype=np.float64))
        return self.cache[init]


# --------------------------------------------------------------------------- candidates


def valid(init: Sequence[int], k: int, n: int) -> bool:
    try:
        check_init_t(list(init), k, n)
    except ValueError:
        return False
    return True


def theorem_family(k: int, n: int, count: int = 40) -> dict[Init, str]:
    """Theorem 2.5's sequences for speedups whose last start covers (K-1)/N .. (N-1)/N."""
    out: dict[Init, str] = {}
    for t_last in np.linspace((k - 1) / n, (n - 1) / n, count):
        s = 1.0 / (1.0 - float(t_last))
        seq = tuple(init_sequence(k, s, n))
        if valid(seq, k, n):
            out.setdefault(seq, f"theorem s={s:.2f}")
    return out


def uniform_family(k: int, n: int) -> dict[Init, str]:
    out: dict[Init, str] = {}
    for g in range(1, (n - 1) // max(k - 1, 1) + 1):
        seq = tuple(i * g for i in range(k))
        if valid(seq, k, n):
            out[seq] = f"uniform gap {g}"
    return out


def neighbours(init: Init, n: int, steps: Sequence[int] = (1, 2, 4, 8)) -> list[Init]:
    k = len(init)
    out = []
    for p in range(1, k):
        for d in steps:
            for sign in (-1, 1):
                new = list(init)
                new[p] += sign * d
                if valid(new, k, n):
                    out.append(tuple(new))
    return out


# --------------------------------------------------------------------------- the search


@dataclass
class Row:
    init: str
    family: str
    index_speedup: float  # N / round of hit --index
    select_speedup: float
    select_rmse: float
    report_speedup: float = math.nan
    report_speedup_lo: float = math.nan
    report_speedup_hi: float = math.nan
    report_rmse: float = math.nan
    report_rmse_lo: float = math.nan
    report_rmse_hi: float = math.nan
    report_index_rmse: float = math.nan
    gain_vs_preset: float = math.nan  # held-out speedup / the preset's - 1


@dataclass
class SearchReport:
    model: str
    cores: int
    steps: int
    objective: str
    index: int
    budget: float
    budget_source: str
    select_samples: int
    report_samples: int
    evaluated: int
    seconds: float
    best: list[int]
    preset: list[int]
    rows: list[Row] = field(default_factory=list)
    verdict: str = ""

    def markdown(self) -> str:
        lines = [
            f"# Init-sequence search: {self.model}, K={self.cores}, N={self.steps}",
            "",
            f"Objective: `{self.objective}`"
            + (f" (earliest hit with latent RMSE <= {self.budget:.4g} per sample; speedup = N / mean round)"
               if self.objective == "budget" else
               f" (hit {self.index}; speedup = N / its round, feasible when its mean latent RMSE <= {self.budget:.4g})"),
            f"Budget: {self.budget:.4g} ({self.budget_source}). Selected on {self.select_samples} samples, reported on "
            f"{self.report_samples} held-out samples (other seeds); {self.evaluated} sequences evaluated in {self.seconds:.0f} s.",
            "",
            "| sequence | family | speedup at hit %d | select: speedup | select: RMSE | held-out: speedup [95%% CI] | "
            "held-out: RMSE [95%% CI] | held-out: RMSE at hit %d | vs preset |" % (self.index, self.index),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.init} | {r.family} | {r.index_speedup:.2f} | {r.select_speedup:.3f} | {r.select_rmse:.3g} | "
                f"{r.report_speedup:.3f} [{r.report_speedup_lo:.3f}, {r.report_speedup_hi:.3f}] | "
                f"{r.report_rmse:.3g} [{r.report_rmse_lo:.3g}, {r.report_rmse_hi:.3g}] | {r.report_index_rmse:.3g} | "
                f"{'' if math.isnan(r.gain_vs_preset) else f'{100 * r.gain_vs_preset:+.1f}%'} |"
            )
        lines += ["", f"Best found: `{'-'.join(map(str, self.best))}` (preset `{'-'.join(map(str, self.preset))}`).",
                  "", self.verdict, ""]
        return "\n".join(lines)


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-")
                out += list(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise Fail(f"seeds {text!r} are invalid: use a range 0-4 or a list 0,1,2") from None
    if not out or min(out) < 0:
        raise Fail(f"seeds {text!r} are invalid: use a range 0-4 or a list 0,1,2 of integers >= 0")
    return out


def search(
    problem: Problem,
    cores: int,
    prompts: Sequence[str],
    select_seeds: Sequence[int],
    report_seeds: Sequence[int],
    objective_kind: str = "budget",
    budget: float | None = None,
    index: int = 1,
    theorem_count: int = 40,
    local_evals: int = 60,
    starts: int = 3,
    report_top: int = 5,
    log: Callable[[str], None] = lambda s: None,
) -> SearchReport:
    n = problem.steps
    if cores < 2 or cores > n:
        raise Fail(f"--cores {cores} is invalid: it must be from 2 to --steps ({n})")
    if not 0 <= index <= cores:
        raise Fail(f"--index {index} is invalid: CHORDS with {cores} cores has hits 0 to {cores}")
    if set(select_seeds) & set(report_seeds):
        raise Fail("--select-seeds and --report-seeds overlap: the report must be on held-out seeds")
    t0 = time.perf_counter()
    sel = Evaluator(problem, [(p, s) for p in prompts for s in select_seeds])
    rep = Evaluator(problem, [(p, s) for p in prompts for s in report_seeds])
    preset = tuple(preset_init_sequence(cores, n))
    families: dict[Init, str] = {preset: "paper preset" if cores in PAPER_PRESETS else "theorem default (no preset)"}
    for fam in (theorem_family(cores, n, theorem_count), uniform_family(cores, n)):
        for seq, name in fam.items():
            families.setdefault(seq, name)
    if budget is None:
        budget = float(sel(preset).at_index(index)[1].mean())
        source = f"auto: the preset's mean latent RMSE at hit {index} on the selection samples"
    else:
        source = "given"
    log(f"budget {budget:.4g} ({source}); {len(families)} family candidates")

    def value(seq: Init) -> tuple[float, float]:
        return objective(sel(seq), objective_kind, budget, index, n)

    for i, seq in enumerate(families):
        value(seq)
        if (i + 1) % 10 == 0:
            log(f"  {i + 1}/{len(families)} family candidates scored")
    # local search: hill climbing from the best few
    ranked = sorted(families, key=value, reverse=True)
    spent = 0
    for start in ranked[:starts]:
        cur = start
        while spent < local_evals:
            nbrs = [x for x in neighbours(cur, n) if x not in sel.cache]
            if not nbrs:
                break
            nbrs = nbrs[: max(1, local_evals - spent)]
            for x in nbrs:
                value(x)
                families.setdefault(x, f"local search from {'-'.join(map(str, start))}")
            spent += len(nbrs)
            best_nbr = max(neighbours(cur, n), key=lambda x: value(x) if x in sel.cache else (-math.inf, 0))
            if value(best_nbr) <= value(cur):
                break
            cur = best_nbr
        log(f"  local search from {'-'.join(map(str, start))}: {'-'.join(map(str, cur))}, {spent} evaluations so far")
    ranked = sorted(sel.cache, key=value, reverse=True)
    best = ranked[0]
    # held-out report: the best few, the preset, the best of each family
    chosen = list(dict.fromkeys([*ranked[:report_top], preset,
                                 next((x for x in ranked if families.get(x, "").startswith("theorem")), preset),
                                 next((x for x in ranked if families.get(x, "").startswith("uniform")), preset)]))
    from eval.stats import mean_interval, ratio_interval

    rows = []
    for seq in chosen:
        s_sel, s_rep = sel(seq), rep(seq)
        if objective_kind == "budget":
            sel_sp = n / float(s_sel.at_budget(budget)[0].mean())
        else:
            sel_sp = n / s_sel.rounds[index]
        if objective_kind == "budget":
            rounds, rmse = s_rep.at_budget(budget)
            sp = ratio_interval([n] * len(rounds), rounds)
            sel_rmse = float(s_sel.at_budget(budget)[1].mean())
        else:
            r, rmse = s_rep.at_index(index)
            sp = ratio_interval([n] * len(rmse), [r] * len(rmse))
            sel_rmse = float(s_sel.at_index(index)[1].mean())
        rm = mean_interval(rmse)
        rows.append(Row("-".join(map(str, seq)), families.get(seq, "?"), n / s_sel.rounds[index], sel_sp, sel_rmse,
                        sp.value, sp.lo, sp.hi, rm.value, rm.lo, rm.hi, float(s_rep.at_index(index)[1].mean())))
    base = next(r for r in rows if r.init == "-".join(map(str, preset)))
    for r in rows:
        r.gain_vs_preset = r.report_speedup / base.report_speedup - 1
    top = rows[0]
    ok_rmse = top.report_rmse <= max(base.report_rmse, budget) * (1 + 1e-9)
    if top.init == base.init:
        verdict = ("The preset itself is the best sequence found on the selection seeds: no candidate beat it "
                   "at this budget.")
    elif top.gain_vs_preset >= 0.10 and ok_rmse:
        verdict = (f"Goal met on held-out seeds: {100 * top.gain_vs_preset:+.1f}% speedup over the preset at "
                   f"RMSE {top.report_rmse:.3g} (preset {base.report_rmse:.3g}, budget {budget:.3g}).")
    else:
        why = []
        if top.gain_vs_preset < 0.10:
            why.append(f"the held-out gain is {100 * top.gain_vs_preset:+.1f}% (< +10%)")
        if not ok_rmse:
            why.append(f"its held-out RMSE {top.report_rmse:.3g} is above the preset's {base.report_rmse:.3g} "
                       f"and the budget {budget:.3g}")
        verdict = "Goal (>= 10% more speedup than the preset at equal or lower RMSE) not met: " + "; ".join(why) + "."
    return SearchReport(problem.name, cores, n, objective_kind, index, budget, source, len(sel.samples),
                        len(rep.samples), len(sel.cache), time.perf_counter() - t0, list(best), list(preset), rows, verdict)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--model", default="digits", help="a configs/model name (default digits)")
    ap.add_argument("--cores", type=int, default=8, help="K (default 8)")
    ap.add_argument("--steps", type=int, default=50, help="N (default 50)")
    ap.add_argument("--prompts", default="prompts/digits_classes.txt", help="prompt file (default: one per digit class)")
    ap.add_argument("--max-prompts", type=int, default=0, help="use the first P prompts only (0 = all)")
    ap.add_argument("--select-seeds", default="0-4", help="seeds the search selects on (default 0-4)")
    ap.add_argument("--report-seeds", default="5-9", help="held-out seeds of the report (default 5-9)")
    ap.add_argument("--objective", choices=("budget", "index"), default="budget")
    ap.add_argument("--index", type=int, default=1, help="hit index of --objective index and of the auto budget (default 1)")
    ap.add_argument("--budget", default="auto", help="latent-RMSE budget, or auto (the preset's RMSE at --index)")
    ap.add_argument("--theorem-count", type=int, default=40, help="speedups tried in Theorem 2.5's family")
    ap.add_argument("--local-evals", type=int, default=60, help="evaluations the local search may spend")
    ap.add_argument("--starts", type=int, default=3, help="local searches from the best N candidates")
    ap.add_argument("--out", type=Path, help="write the report as markdown here (and JSON next to it)")
    ap.add_argument("--override", action="append", default=[], help="extra Hydra override for the model, e.g. model.shift=3")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the embedded models' small batches run fastest on one thread, "
                         "and much slower when threads compete for a busy CPU)")
    a = ap.parse_args(argv)
    try:
        if a.threads < 1:
            raise Fail(f"--threads {a.threads} is invalid: it must be >= 1")
        torch.set_num_threads(a.threads)
        from chords.config import ConfigError, read_prompts

        try:
            prompts = read_prompts(a.prompts)
        except ConfigError as e:
            raise Fail(f"--prompts: {e}") from None
        if a.max_prompts > 0:
            prompts = prompts[: a.max_prompts]
        budget = None
        if a.budget != "auto":
            try:
                budget = float(a.budget)
            except ValueError:
                budget = -1.0
            if not budget >= 0:
                raise Fail(f"--budget {a.budget!r} is invalid: use a latent RMSE >= 0 or auto")
        for name in ("theorem_count", "local_evals", "starts"):
            if getattr(a, name) < 0:
                raise Fail(f"--{name.replace('_', '-')} {getattr(a, name)} is invalid: it must be >= 0")
        if a.steps < 2:
            raise Fail(f"--steps {a.steps} is invalid: it must be >= 2")
        sel, rep = parse_seeds(a.select_seeds), parse_seeds(a.report_seeds)
        if a.cores < 2 or a.cores > a.steps:
            raise Fail(f"--cores {a.cores} is invalid: it must be from 2 to --steps ({a.steps})")
        problem = Problem(a.model, a.steps, a.override)
        report = search(problem, a.cores, prompts, sel, rep, a.objective, budget, a.index, a.theorem_count,
                        a.local_evals, a.starts, log=lambda s: print(s, file=sys.stderr, flush=True))
    except Fail as e:
        print(f"search_init.py: {e}", file=sys.stderr)
        return 2
    text = report.markdown()
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text, encoding="utf-8")
        a.out.with_suffix(".json").write_text(json.dumps(asdict(report), indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
