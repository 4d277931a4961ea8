"""Confidence intervals for table cells (over a cell's runs: prompts x seeds).

* Means (time per sample, latent RMSE, NFE, CLIP score, VBench dimensions, ...): the Student-t
  interval of the mean, ``mean ± t_{(1+level)/2, n-1} · s / sqrt(n)`` (s: the sample standard
  deviation). With n = 1 the interval is undefined (NaN); with s = 0 it is the mean itself.
* Ratios of means (speedup = mean(reference rounds) / mean(rounds at the output), wall-clock
  speedup) and derived scores (VBench's Quality Score from the cell's dimension means): the
  percentile bootstrap over runs — runs are resampled with replacement ``B`` times (paired: a run
  and its reference stay together), the statistic recomputed, and the (1-level)/2 and (1+level)/2
  quantiles taken. The generator is seeded (``seed``), so intervals are reproducible.

The runs of a cell are treated as independent draws (prompts x seeds); with several seeds per
prompt the interval is somewhat too narrow when prompts differ more than seeds do.
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


def bootstrap(
    columns: Sequence[Sequence[float]],
    statistic: Callable[..., np.ndarray],
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap of ``statistic`` over rows (runs).

    ``columns``: equal-length per-run arrays (NaN allowed where a run has no value);
    ``statistic(*cols)`` gets arrays of shape ``[B, n]`` (or ``[n]`` for the point estimate) and
    returns one value per row of resamples (NaN-aware statistics use ``np.nanmean``).
    """
    cols = [np.asarray(c, dtype=np.float64) for c in columns]
    n = int(cols[0].size) if cols else 0
    if n == 0:
        return NAN_INTERVAL
    value = float(statistic(*[c[None, :] for c in cols])[0])
    if n == 1 or not math.isfinite(value):
        return Interval(value, math.nan, math.nan, n)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(int(resamples), n))
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = np.asarray(statistic(*[c[idx] for c in cols]), dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return Interval(value, math.nan, math.nan, n)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return Interval(value, float(lo), float(hi), n)


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
    iv = bootstrap([num_a[ok], den_a[ok]], ratio_of_means, level, resamples, seed)
    return iv
