"""What-if stop rules: what a run that kept every hit would have returned under any stop rule.

A CHORDS run made without a stop rule (``algo.stopping_kwargs.criterion=none``) streams every
hit and the runner saves each one (latent ``hit_NN``, its round, evaluations and wall time).
A run stopped by a rule computes exactly the same hits up to the one the rule picks and stops
there, so everything that run would report follows from the kept hits, bitwise:

* ``core_index=I``: hit ``I`` (0 = the coarse shot, 1 = the fastest core, ...); a run with fewer
  hits has no such index (a real run refuses it) and is left out of that rule.
* ``residual=T``: the first hit ``i >= 1`` with ``residual(h_i, h_{i-1}) < T``, else the last
  hit; the residual is :func:`chords.core.residual` itself (``||a - b||_2 / numel`` computed as
  the official code does: the norm in the latent's dtype, then float64), on the saved latents,
  which are the tensors the run held (same dtype, same values).
* ``rmse=B``: the earliest hit whose latent RMSE against the sequential reference is ``<= B``,
  else the last hit (for CHORDS the last hit is the sequential solution). This is an *oracle*:
  it needs the sequential answer, so no deployed run can use it; it is the fair way to compare
  init sequences at a common quality budget (Table 3). ``rmse=auto`` fixes one budget per
  (model, K, N): the median over the paper's preset sequence at that K (``init_kind == "ours"``;
  all sequences at that K when none is a preset) of the latent RMSE of hit 1, the paper's default
  operating point. Runs of other K or other sequences never move a cell's budget, and the
  captions print every budget used; ``rmse=B`` gives one fixed budget for everything.
* ``as_run``: the run's own output.

The chosen hit gives the run's ``output_round`` (so speedup = reference rounds / it), its nfe
(``hits[i].nfe``), its time (``hits[i].wall_s``: seconds from the start of sampling to that hit,
which is what ``timing.sample_s`` of a run stopped there measures, up to the return from
``sample``) and its latent (RMSE against the reference, in float64). Its media (for CLIP /
VBench quality) is the hit's own file, saved with ``algo.full_return=true``; without it the
quality of a what-if choice is not available (reported, never replaced by the output's).
"""
from __future__ import annotations

import dataclasses
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import torch

from chords.core import residual

from .metrics import latent_rmse
from .runs import Problems, Run, RunError
from .stats import interval, is_fixed, ratio_interval

RULE_KINDS = ("as_run", "core_index", "residual", "rmse")
_RULE_HELP = "as_run, core_index=I (I >= 0), residual=T (T >= 0), rmse=B (B >= 0) or rmse=auto"


@dataclass(frozen=True)
class Rule:
    """A stop rule applied after the fact. ``value``: the index, threshold or RMSE budget."""

    kind: str
    value: float | None = None

    @property
    def auto(self) -> bool:
        return self.kind == "rmse" and self.value is None

    @property
    def label(self) -> str:
        if self.kind == "as_run":
            return "as_run"
        if self.auto:
            return "rmse=auto"
        if self.kind == "core_index":
            return f"core_index={int(self.value)}"
        return f"{self.kind}={self.value:g}"

    def describe(self, budgets: dict | None = None) -> str:
        """One phrase for a table caption."""
        if self.kind == "as_run":
            return "each run's own output (the stop rule it ran with)"
        if self.kind == "core_index":
            return f"hit {int(self.value)} (core_index={int(self.value)}; 0 = coarse shot, 1 = fastest core)"
        if self.kind == "residual":
            return f"the first hit whose residual to the previous one is below {self.value:g} (residual={self.value:g})"
        if budgets:
            text = ", ".join(f"{m} K={k} N={n}: {b:.3g}" for (m, k, n), b in sorted(budgets.items()))
            return f"the earliest hit with latent RMSE vs sequential <= a budget per (model, K, N) ({text})"
        return f"the earliest hit with latent RMSE vs sequential <= {self.value:g}"


def parse_rule(text: object) -> Rule:
    """``as_run`` | ``core_index=I`` | ``residual=T`` | ``rmse=B`` | ``rmse=auto``; ValueError otherwise."""
    s = str(text).strip().lower().replace(" ", "")
    if s in ("as_run", "asrun", "none"):
        return Rule("as_run")
    m = re.fullmatch(r"(core_index|index|residual|threshold|rmse)[=:](.+)", s)
    if m:
        kind = {"index": "core_index", "threshold": "residual"}.get(m.group(1), m.group(1))
        raw = m.group(2)
        if kind == "rmse" and raw == "auto":
            return Rule("rmse")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if kind == "core_index" and (not value.is_integer() if math.isfinite(value) else True):
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return Rule(kind, int(value) if kind == "core_index" else value)
    raise ValueError(f"stop rule {str(text)!r} is invalid: use {_RULE_HELP}")


def eligible(run: Run, algorithms: Iterable[str]) -> bool:
    """Whether a run kept every hit (criterion none) and is of an algorithm the rules apply to."""
    if run.is_sequential or run.algorithm not in set(algorithms) or len(run.hits) < 2:
        return False
    sk = run.algo.get("stopping_kwargs") if isinstance(run.algo, dict) else None
    crit = sk.get("criterion") if isinstance(sk, dict) else None
    return (crit is None or str(crit) == "none") and run.output_index == len(run.hits) - 1


@dataclass
class Trace:
    """Per-hit numbers of one run that kept every hit."""

    run: Run
    rounds: list[int]
    nfe: list[float]
    wall_s: list[float]
    residual: list[float]  # residual[i] = residual(h_i, h_{i-1}); NaN for i = 0
    rmse: list[float]  # latent RMSE of h_i vs the reference output; NaN without a reference


def traces(runs: Iterable[Run], refs: dict[Path, Run], algorithms: Iterable[str], problems: Problems) -> dict[Path, Trace]:
    """Load every hit of every eligible run once; residuals and RMSEs per hit."""
    out: dict[Path, Trace] = {}
    ref_cache: dict[Path, torch.Tensor | None] = {}
    for r in runs:
        if not eligible(r, algorithms):
            continue
        ref = refs.get(r.path)
        ref_out = None
        if ref is not None:
            if ref.path not in ref_cache:
                try:
                    ref_cache[ref.path] = ref.load_latent("output")
                except RunError as e:
                    problems.report(f"latents unusable, left out of latent RMSE: {e}")
                    ref_cache[ref.path] = None
            ref_out = ref_cache[ref.path]
        try:
            xs = [r.load_latent(h.latent) for h in r.hits]
        except RunError as e:
            problems.report(f"left out of the what-if stop rules: {e}")
            continue
        res = [math.nan] + [residual(b, a) for a, b in zip(xs, xs[1:])]
        rm = [math.nan] * len(xs)
        if ref_out is not None:
            try:
                rm = [latent_rmse(x, ref_out) for x in xs]
            except ValueError as e:
                problems.report(f"{r.name}: latent RMSE impossible against {ref.name} ({e})")
        nfe = [float(h.nfe) if h.nfe is not None else math.nan for h in r.hits]
        out[r.path] = Trace(r, [h.round for h in r.hits], nfe, [h.wall_s for h in r.hits], res, rm)
    return out


def choose(trace: Trace, rule: Rule, budget: float | None = None) -> int | None:
    """The hit index the rule returns, or None when it does not apply (an index past the last hit,
    a budget without a reference)."""
    n = len(trace.rounds)
    if rule.kind == "as_run":
        return trace.run.output_index
    if rule.kind == "core_index":
        i = int(rule.value)
        return i if i < n else None
    if rule.kind == "residual":
        for i in range(1, n):
            if trace.residual[i] < rule.value:
                return i
        return n - 1
    b = rule.value if budget is None else budget
    if b is None or all(math.isnan(x) for x in trace.rmse):
        return None
    for i, x in enumerate(trace.rmse):
        if x <= b:
            return i
    return n - 1


def budget_key(run: Run) -> tuple[str, int, int]:
    """The cell an ``rmse=auto`` budget belongs to: (model label, K, N)."""
    return (run.model_label or run.model, int(run.num_cores), int(run.num_steps))


def auto_budgets(trs: dict[Path, Trace]) -> dict[tuple[str, int, int], float]:
    """``rmse=auto``: per (model label, K, N), the median latent RMSE of hit 1 over the paper-preset
    runs at that K (all runs at that K when none is a preset)."""
    by: dict[tuple[str, int, int], dict[bool, list[float]]] = defaultdict(lambda: {True: [], False: []})
    for t in trs.values():
        r = t.run
        if len(t.rmse) > 1 and math.isfinite(t.rmse[1]):
            by[budget_key(r)][r.init_kind == "ours"].append(t.rmse[1])
    return {k: statistics.median(v[True] or v[False]) for k, v in by.items() if v[True] or v[False]}


def derive(run: Run, index: int, rule: Rule, trace: Trace | None = None) -> Run:
    """The run as if it had stopped at hit ``index``."""
    h = run.hits[index]
    timing = dict(run.timing)
    timing["sample_s"] = h.wall_s
    n_decoded = 1 + sum(1 for x in run.hits if x.media)
    one_decode = timing["decode_s"] / n_decoded if math.isfinite(timing.get("decode_s", math.nan)) else math.nan
    timing["decode_s"] = one_decode
    timing["total_s"] = timing.get("encode_s", math.nan) + h.wall_s + one_decode
    return dataclasses.replace(
        run,
        output_index=index,
        output_round=h.round,
        rounds=h.round,
        nfe=h.nfe if h.nfe is not None else math.nan,
        timing=timing,
        output_latent=h.latent,
        whatif=rule.label,
        whatif_rmse=trace.rmse[index] if trace is not None else None,
    )


def view(runs: Sequence[Run], rule: Rule, trs: dict[Path, Trace], budgets: dict[tuple[str, int, int], float],
         problems: Problems) -> list[Run]:
    """The runs as a table under ``rule``: eligible runs (those with a trace) become the hit the
    rule picks; every other run stays as it ran."""
    if rule.kind == "as_run":
        return list(runs)
    out = []
    skipped: dict[tuple, int] = defaultdict(int)
    for r in runs:
        t = trs.get(r.path)
        if t is None:
            out.append(r)
            continue
        budget = budgets.get(budget_key(r)) if rule.auto else None
        i = choose(t, rule, budget)
        if i is None:
            skipped[(r.model_label or r.model, r.method, r.num_cores, r.num_steps)] += 1
            continue
        out.append(derive(r, i, rule, t))
    for (model, method, k, n), count in sorted(skipped.items(), key=lambda kv: tuple(map(str, kv[0]))):
        why = "it has no reference or no budget" if rule.kind == "rmse" else "they have fewer hits"
        problems.report(f"{model} / {method} / K={k} / N={n}: stop rule {rule.label} does not apply to {count} run(s) "
                        f"({why}); left out of the tables that use it")
    return out


# --------------------------------------------------------------------------- whatif.csv


def whatif_table(
    trs: dict[Path, Trace],
    refs: dict[Path, Run],
    rules: Sequence[Rule],
    budgets: dict[tuple[str, int, int], float],
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per run and rule, per cell and rule): chosen hit, round, nfe, time, speedup, latent RMSE;
    cells with n and 95% intervals (eval/stats.py: bootstrap for the speedups and the means)."""
    rows = []
    for t in trs.values():
        r = t.run
        ref = refs.get(r.path)
        for rule in rules:
            budget = budgets.get(budget_key(r)) if rule.auto else None
            i = choose(t, rule, budget)
            if i is None:
                continue
            rows.append({
                "run": str(r.path), "model": r.model_label or r.model, "media": r.media, "method": r.method,
                "num_cores": r.num_cores, "num_steps": r.num_steps, "init_t": r.init_label, "init_kind": r.init_kind or "",
                "prompt": r.prompt, "seed": r.seed, "rule": rule.label,
                "budget": budget if rule.auto else (rule.value if rule.kind == "rmse" else math.nan),
                "hit": i, "core": r.hits[i].core, "round": t.rounds[i], "nfe": t.nfe[i], "wall_s": t.wall_s[i],
                "residual": t.residual[i], "latent_rmse": t.rmse[i],
                "ref_rounds": float(ref.rounds) if ref is not None else math.nan,
                "ref_sample_s": ref.timing["sample_s"] if ref is not None else math.nan,
            })
    per_run = pd.DataFrame(rows)
    cells = []
    if not per_run.empty:
        keys = ["model", "media", "method", "num_cores", "num_steps", "rule"]
        order = {r.label: i for i, r in enumerate(rules)}
        for key, g in per_run.groupby(keys, sort=False):
            sp = ratio_interval(g["ref_rounds"], g["round"], level, resamples, seed)
            ws = ratio_interval(g["ref_sample_s"], g["wall_s"], level, resamples, seed)
            rm, nf, tm = (interval(g[c], "nonneg", level, resamples, seed) for c in ("latent_rmse", "nfe", "wall_s"))
            cells.append({
                **dict(zip(keys, key)), "init_t": ",".join(sorted(set(g["init_t"]))),
                "init_kind": ",".join(sorted(set(g["init_kind"]))), "n": len(g),
                "budget": float(g["budget"].iloc[0]), "mean_hit": float(g["hit"].mean()),
                "mean_round": float(g["round"].mean()),
                "speedup": sp.value, "speedup_lo": sp.lo, "speedup_hi": sp.hi,
                "speedup_fixed": is_fixed(g["ref_rounds"], g["round"]),
                "nfe": nf.value, "nfe_lo": nf.lo, "nfe_hi": nf.hi,
                "time_sample_s": tm.value, "time_sample_s_lo": tm.lo, "time_sample_s_hi": tm.hi,
                "wall_speedup": ws.value, "wall_speedup_lo": ws.lo, "wall_speedup_hi": ws.hi,
                "latent_rmse": rm.value, "latent_rmse_lo": rm.lo, "latent_rmse_hi": rm.hi, "n_rmse": rm.n,
                "_order": order.get(key[-1], 0),
            })
    summary = pd.DataFrame(cells)
    if not summary.empty:
        summary = summary.sort_values(["model", "method", "num_cores", "num_steps", "_order"]).drop(columns="_order")
        summary = summary.reset_index(drop=True)
    return per_run, summary


def expand_rules(indices: object, thresholds: Sequence[float], budgets: Sequence[object], max_hits: int,
                 extra: Sequence[Rule] = ()) -> list[Rule]:
    """The rules whatif.csv lists: every index (``indices: all`` = 0 .. max hits - 1), each
    threshold and budget, and the tables' own rules."""
    rules: list[Rule] = []
    idx = range(max_hits) if indices in (None, "all") else [int(i) for i in indices]  # type: ignore[union-attr]
    rules += [Rule("core_index", int(i)) for i in idx]
    rules += [Rule("residual", float(t)) for t in thresholds]
    rules += [parse_rule(f"rmse={b}") for b in budgets]
    for r in extra:
        if r.kind != "as_run" and r not in rules:
            rules.append(r)
    return rules
