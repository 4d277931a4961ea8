"""Numbers from run folders: latent RMSE, speedups, times; per run and per table cell.

Definitions (the paper's, Section 4.1, and docs/run_folders.md):

* latent RMSE of a run = ``sqrt(mean((a - b)^2))`` over the whole ``output`` latent against its
  sequential reference's ``output``, in float64; a cell's RMSE is the mean over its runs
  (i.e. averaged over prompts and seeds).
* speedup (the paper's counting) = sequential ``rounds`` / the run's ``output_round``: network
  passes of sequential sampling over the parallel depth at which the chosen output arrived.
  A cell's speedup is the ratio of the means over its paired runs,
  ``mean(reference rounds) / mean(output_round)`` (equal to the mean of ratios when every run
  stops at the same round, as CHORDS with ``core_index`` does).
* wall-clock speedup = reference ``timing.sample_s`` / the run's ``timing.sample_s``; a cell's is
  ``mean(reference sample_s) / mean(sample_s)``. Reported next to, never instead of, speedup.
* time per sample: ``timing.sample_s`` (sampling only) and ``timing.total_s`` (end to end:
  encode + sample + decode), each a mean over the cell's runs.

A non-sequential run without a sequential reference is left out of its cell entirely (every
number of a non-sequential row is over paired samples); a run whose latents are unreadable
loses only its RMSE.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch

from chords.latents import l1_distance, latent_rmse  # noqa: F401  (one implementation, shared with the runner)

from .runs import Problems, Run, RunError

GROUP_KEYS = ["model", "media", "method", "num_cores", "num_steps"]
#: the interval each per-run quality column gets in a cell (eval/stats.py): "binary" = Wilson
#: (a 0/1 verdict per run), "nonneg" = bootstrap of the mean (a fraction per run); others Student-t
INTERVAL_KIND = {"class_accuracy": "binary", "direction_accuracy": "binary", "frame_consistency": "nonneg"}


DISTANCES = {"l1": l1_distance, "rmse": latent_rmse}


def speedup(reference_rounds: float, output_round: float) -> float:
    """The paper's speedup: sequential network passes over the rounds at the chosen output."""
    return float(reference_rounds) / float(output_round)


def run_rows(runs: Iterable[Run], refs: dict[Path, Run], problems: Problems, with_rmse: bool = True) -> pd.DataFrame:
    """One row per run with everything eval knows about it (runs.csv)."""
    rows = []
    cache: dict[Path, torch.Tensor | None] = {}

    def output_of(run: Run):
        if run.key not in cache:
            try:
                cache[run.key] = run.load_latent(run.output_latent)
            except RunError as e:
                problems.report(f"latents unusable, left out of latent RMSE: {e}")
                cache[run.key] = None
        return cache[run.key]

    for r in runs:
        ref = refs.get(r.path)
        row = {
            "run": str(r.key),
            "model": r.model_label or r.model,
            "media": r.media,
            "method": r.method,
            "algorithm": r.algorithm,
            "algo_tag": r.algo_tag,
            "init_t": r.init_label,
            "init_kind": r.init_kind or "",
            "num_cores": r.num_cores,
            "num_steps": r.num_steps,
            "prompt": r.prompt,
            "seed": r.seed,
            "hardware": r.hardware,
            "rounds": r.rounds,
            "nfe": r.nfe,
            "num_hits": len(r.hits),
            "output_index": r.output_index,
            "output_core": r.output_core,
            "output_round": r.output_round,
            "stop_rule": r.whatif or "as_run",
            "encode_s": r.timing["encode_s"],
            "sample_s": r.timing["sample_s"],
            "decode_s": r.timing["decode_s"],
            "total_s": r.timing["total_s"],
            "reference": str(ref.path) if ref is not None else "",
            "ref_rounds": float(ref.rounds) if ref is not None else math.nan,
            "ref_sample_s": ref.timing["sample_s"] if ref is not None else math.nan,
            "ref_total_s": ref.timing["total_s"] if ref is not None else math.nan,
        }
        row["speedup"] = speedup(row["ref_rounds"], r.output_round) if ref is not None else math.nan
        row["wall_speedup"] = row["ref_sample_s"] / row["sample_s"] if ref is not None and row["sample_s"] > 0 else math.nan
        rmse = math.nan
        if with_rmse and ref is not None:
            if ref.path == r.path:
                rmse = 0.0
            elif r.whatif_rmse is not None:  # computed with the what-if trace (eval/whatif.py)
                rmse = r.whatif_rmse
            else:
                a, b = output_of(r), output_of(ref)
                if a is not None and b is not None:
                    try:
                        rmse = latent_rmse(a, b)
                    except ValueError as e:
                        problems.report(f"{r.name}: latent RMSE impossible against {ref.name} ({e})")
                    if a.shape == b.shape and not math.isfinite(rmse):
                        bad = r.name if not torch.isfinite(a).all() else ref.name
                        problems.report(f"{r.name}: latent RMSE is not finite ({bad} holds NaN or inf values); "
                                        f"left out of the cell mean")
                        rmse = math.nan
        row["latent_rmse"] = rmse
        rows.append(row)
        # The reference is needed again for other runs; runs' own latents are not.
        if ref is not None and ref.path != r.path:
            cache.pop(r.key, None)
    cols = None if rows else ["run", *GROUP_KEYS, "prompt", "seed", "speedup", "latent_rmse"]
    return pd.DataFrame(rows, columns=cols)


def cell_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The runs that count in their cells: sequential runs, and non-sequential runs with a reference."""
    if df.empty:
        return df
    keep = (df["algorithm"] == "sequential") | (df["reference"] != "")
    return df[keep]


def _mean(s: pd.Series) -> float:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.mean()) if len(s) else math.nan


def _interval_cols(row: dict, name: str, iv) -> None:
    row[f"{name}_lo"], row[f"{name}_hi"] = iv.lo, iv.hi


def summarize(df: pd.DataFrame, quality_cols: Iterable[str] = (), level: float = 0.95, resamples: int = 2000,
              seed: int = 0) -> pd.DataFrame:
    """One row per cell (model, media, method, num_cores, num_steps); see the module docstring.

    Every mean has its ``{name}_lo`` / ``{name}_hi`` at ``level`` (eval/stats.py: bootstrap for
    times, NFE, rounds, latent RMSE and the speedups, Wilson for 0/1 accuracies, Student-t for
    CLIP / VBench scores); ``speedup_fixed`` says every paired run stopped at the same round (no
    sampling variation: the schedule sets it); ``n_*`` count the values.
    """
    from .stats import interval, is_fixed, ratio_interval

    quality_cols = [c for c in quality_cols if c in df.columns]
    df = cell_rows(df)
    out = []
    for key, g in df.groupby(GROUP_KEYS, sort=True, dropna=False):
        paired = g[g["reference"] != ""]
        row = dict(zip(GROUP_KEYS, key))
        row.update(
            algorithm=g["algorithm"].iloc[0],
            init_t=",".join(sorted(set(g["init_t"]))),
            init_kind=",".join(sorted(set(g["init_kind"]))),
            hardware=",".join(sorted(set(g["hardware"]))),
            n_runs=len(g),
            n_paired=len(paired),
            n_prompts=g["prompt"].nunique(),
            seeds=",".join(str(s) for s in sorted(set(g["seed"]))),
            time_sample_s=_mean(g["sample_s"]),
            time_total_s=_mean(g["total_s"]),
            encode_s=_mean(g["encode_s"]),
            decode_s=_mean(g["decode_s"]),
            rounds=_mean(g["rounds"]),
            output_round=_mean(g["output_round"]),
            nfe=_mean(g["nfe"]),
            speedup=(_mean(paired["ref_rounds"]) / _mean(paired["output_round"])) if len(paired) else math.nan,
            speedup_fixed=bool(len(paired)) and is_fixed(paired["ref_rounds"], paired["output_round"]),
            wall_speedup=(_mean(paired["ref_sample_s"]) / _mean(paired["sample_s"])) if len(paired) else math.nan,
            latent_rmse=_mean(paired["latent_rmse"]) if len(paired) else math.nan,
            n_rmse=int(pd.to_numeric(paired["latent_rmse"], errors="coerce").notna().sum()) if len(paired) else 0,
        )
        row["stop_rule"] = ",".join(sorted(set(g["stop_rule"]))) if "stop_rule" in g else "as_run"
        for name, col in (("time_sample_s", "sample_s"), ("time_total_s", "total_s"), ("nfe", "nfe"),
                          ("output_round", "output_round")):
            _interval_cols(row, name, interval(pd.to_numeric(g[col], errors="coerce"), "nonneg", level, resamples, seed))
        if len(paired):
            _interval_cols(row, "latent_rmse", interval(pd.to_numeric(paired["latent_rmse"], errors="coerce"), "nonneg",
                                                        level, resamples, seed))
            _interval_cols(row, "speedup", ratio_interval(paired["ref_rounds"], paired["output_round"], level, resamples, seed))
            _interval_cols(row, "wall_speedup", ratio_interval(paired["ref_sample_s"], paired["sample_s"], level, resamples, seed))
        for c in quality_cols:
            iv = interval(pd.to_numeric(g[c], errors="coerce"), INTERVAL_KIND.get(c, "t"), level, resamples, seed)
            row[c] = _mean(g[c])
            row[f"n_{c}"] = iv.n
            _interval_cols(row, c, iv)
        out.append(row)
    return pd.DataFrame(out)


COMPARED = ("speedup", "latent_rmse", "sample_s")


def paired_comparisons(df: pd.DataFrame, quality_cols: Iterable[str] = (), level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> pd.DataFrame:
    """Method against method within each (model, K, N), over runs matched on (prompt, seed).

    For every pair of non-sequential methods of a cell group (A before B in the tables' order),
    the runs of A and B with the same prompt and seed are paired; each compared column gets the
    mean of the per-pair differences A - B and its paired bootstrap interval (eval/stats.py).
    The per-run speedup is reference rounds / output round. Runs without a partner are counted in
    ``unmatched`` and left out, so a difference never mixes prompts.
    """
    from .runs import method_sort_key
    from .stats import paired_difference

    cols = [*COMPARED, *[c for c in quality_cols if c in df.columns]]
    d = cell_rows(df)
    if d.empty:
        return pd.DataFrame()
    d = d[(d["algorithm"] != "sequential") & (d["reference"] != "")]
    rows = []
    for (model, k, n), g in d.groupby(["model", "num_cores", "num_steps"], sort=True):
        methods = sorted(g["method"].unique(), key=method_sort_key)
        per = {m: g[g["method"] == m].drop_duplicates(["prompt", "seed"]).set_index(["prompt", "seed"]) for m in methods}
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                both = per[a].index.intersection(per[b].index)
                row = {"model": model, "num_cores": int(k), "num_steps": int(n), "method_a": a, "method_b": b,
                       "n_pairs": len(both), "unmatched": len(per[a]) + len(per[b]) - 2 * len(both)}
                for c in cols:
                    va = pd.to_numeric(per[a].loc[both, c], errors="coerce").to_numpy(dtype=float)
                    vb = pd.to_numeric(per[b].loc[both, c], errors="coerce").to_numpy(dtype=float)
                    iv = paired_difference(va, vb, level, resamples, seed)
                    row.update({f"diff_{c}": iv.value, f"diff_{c}_lo": iv.lo, f"diff_{c}_hi": iv.hi})
                rows.append(row)
    return pd.DataFrame(rows)
