"""Confidence intervals for table cells (over a cell's runs: prompts x seeds), from ``scipy.stats``.

Every interval stays inside what its metric can be:

* Accuracies (a 0/1 verdict per run: class accuracy, direction accuracy): the Wilson score
  interval of the binomial proportion (``scipy.stats.binomtest(k, n).proportion_ci(method=
  "wilson")``), always inside [0, 1]; 16/16 correct gives [80.6%, 100%], never [100, 100].
* Non-negative means (latent RMSE, time per sample, NFE, rounds, per-run fractions such as frame
  consistency): the percentile bootstrap of the mean (``scipy.stats.bootstrap``), which stays
  inside [min, max] of the values, so an RMSE interval never dips below 0.
* Ratios of means (speedup = mean(reference rounds) / mean(rounds at the output), wall-clock
  speedup) and derived scores (VBench's Quality Score from the cell's dimension means): the
  paired percentile bootstrap (a run and its reference stay together).
* Scores without a natural bound in the table's units (CLIP score, VBench dimensions): the
  Student-t interval of the mean, ``mean ± t_{(1+level)/2, n-1} · s / sqrt(n)``.
* Method-vs-method comparisons (:func:`paired_difference`): the runs of two methods are matched
  on (prompt, seed) and the mean of the per-pair differences gets a paired bootstrap interval.

A speedup that every run shares (CHORDS stopped at a fixed hit index: the round is set by the
schedule, not by the sample) has no sampling variation: its interval is its value, and the tables
label it "fixed" instead of printing a zero-width interval (:func:`is_fixed`).

With n = 1 an interval is undefined (NaN). Bootstrap generators are seeded (``seed``), so
intervals are reproducible. The runs of a cell are treated as independent draws (prompts x
seeds); with several seeds per prompt the interval is somewhat too narrow when prompts differ
more than seeds do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    value: float
    lo: float
    hi: float
    n: int


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan, 0)


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return a[np.isfinite(a)]


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and Student-t interval of the finite values."""
    a = _finite(values)
    n = int(a.size)
    if n == 0:
        return NAN_INTERVAL
    mean = float(a.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    from scipy.stats import t

    half = float(t.ppf((1 + level) / 2, n - 1) * a.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def is_binary(values: Sequence[float]) -> bool:
    """Whether every finite value is 0 or 1 (a per-run verdict)."""
    a = _finite(values)
    return bool(a.size) and bool(np.isin(a, (0.0, 1.0)).all())


def binomial_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Proportion of 1s among the finite 0/1 values and its Wilson score interval."""
    a = _finite(values)
    n = int(a.size)
    if n == 0:
        return NAN_INTERVAL
    if not np.isin(a, (0.0, 1.0)).all():
        raise ValueError("binomial_interval takes 0/1 values")
    from scipy.stats import binomtest

    k = int(a.sum())
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return Interval(k / n, float(ci.low), float(ci.high), n)


def bootstrap(
    columns: Sequence[Sequence[float]],
    statistic: Callable[..., np.ndarray],
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Paired percentile bootstrap of ``statistic`` over rows (runs), with ``scipy.stats.bootstrap``.

    ``columns``: equal-length per-run arrays (NaN allowed where a run has no value);
    ``statistic(*cols)`` gets arrays of shape ``[..., n]`` and reduces the last axis (NaN-aware
    statistics use ``np.nanmean``). Resamples whose statistic is not finite are left out.
    """
    from scipy.stats import bootstrap as scipy_bootstrap

    cols = [np.asarray(c, dtype=np.float64) for c in columns]
    n = int(cols[0].size) if cols else 0
    if n == 0:
        return NAN_INTERVAL
    value = float(np.asarray(statistic(*[c[None, :] for c in cols]))[0])
    if n == 1 or not math.isfinite(value):
        return Interval(value, math.nan, math.nan, n)
    def stat(*cs, axis=-1):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(statistic(*cs), dtype=np.float64)

    # scipy's own percentile bounds turn a NaN resample into a NaN bound; the quantiles are taken
    # over the finite statistics of its bootstrap distribution instead.
    res = scipy_bootstrap(tuple(cols), stat, n_resamples=int(resamples), paired=True, vectorized=True,
                          confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    stats = np.ravel(res.bootstrap_distribution)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return Interval(value, math.nan, math.nan, n)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return Interval(value, float(lo), float(hi), n)


def _mean(a: np.ndarray) -> np.ndarray:
    return a.mean(-1)


def mean_interval(values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean of the finite values and its percentile bootstrap interval (inside [min, max])."""
    a = _finite(values)
    if a.size == 0:
        return NAN_INTERVAL
    return bootstrap([a], _mean, level, resamples, seed)


def ratio_of_means(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``mean(num) / mean(den)`` along the last axis, over the rows where both are finite."""
    ok = np.isfinite(num) & np.isfinite(den)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, num, 0).sum(-1) / np.where(ok, den, 0).sum(-1)


def ratio_interval(num: Sequence[float], den: Sequence[float], level: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> Interval:
    """Bootstrap interval of a ratio of means (pairs kept together); n counts the finite pairs."""
    num_a, den_a = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    ok = np.isfinite(num_a) & np.isfinite(den_a)
    return bootstrap([num_a[ok], den_a[ok]], ratio_of_means, level, resamples, seed)


def is_fixed(num: Sequence[float], den: Sequence[float]) -> bool:
    """Whether a ratio of means has no sampling variation: every finite pair is the same pair
    (CHORDS at a fixed hit index: the round is set by the schedule) and there are at least two."""
    num_a, den_a = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    ok = np.isfinite(num_a) & np.isfinite(den_a)
    a, b = num_a[ok], den_a[ok]
    return a.size >= 2 and bool((a == a[0]).all() and (b == b[0]).all())


def interval(values: Sequence[float], kind: str, level: float = 0.95, resamples: int = 2000,
             seed: int = 0) -> Interval:
    """The interval a column gets: ``kind`` is ``binary`` (Wilson), ``nonneg`` (bootstrap of the
    mean) or ``t`` (Student-t); ``auto`` picks Wilson for 0/1 values and bootstrap otherwise."""
    if kind == "auto":
        kind = "binary" if is_binary(values) else "nonneg"
    if kind == "binary":
        return binomial_interval(values, level)
    if kind == "nonneg":
        return mean_interval(values, level, resamples, seed)
    if kind == "t":
        return t_interval(values, level)
    raise ValueError(f"unknown interval kind {kind!r}")


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> Interval:
    """Mean of ``a - b`` over pairs where both are finite (a and b matched on prompt and seed),
    with its paired bootstrap interval."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a_) & np.isfinite(b_)
    if not ok.any():
        return NAN_INTERVAL
    return mean_interval(a_[ok] - b_[ok], level, resamples, seed)
