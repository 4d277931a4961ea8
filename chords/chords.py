"""CHORDS: multi-core hierarchical ODE solvers (Han et al., 2025, arXiv 2507.15260).

The paper's Algorithm 1 with the Scheduler of its Equation (7) and the rectification of
Equations (3)-(4), on a grid of ``num_steps`` steps:

* Core 1 starts at grid index ``init_t[0] = 0`` from the noise ``x0`` and walks the grid one
  step per round. Core ``k`` starts at ``init_t[k-1]`` after ``k - 1`` coarse jumps
  (``init_t[0] -> init_t[1] -> ... -> init_t[k-1]``), so it is created at the end of round
  ``k - 1`` and first evaluated in round ``k``. The coarse jump from ``init_t[j]`` shares its
  evaluation with core ``j + 1``'s first fine step, so round ``r`` evaluates at most ``r`` states.
* Each core keeps an *anchor*: the grid index where it was last rectified (first: where it
  began), its state there and, once evaluated, its velocity there. When core ``k - 1`` evaluates
  at core ``k``'s anchor ``a``, core ``k`` (which has walked on to ``c``) takes as its next state

      x_{c+1} = F - G + G'
      F  = step(x^k_c,     v^k_c,     c, c + 1)   its own fine step
      G  = step(x^k_a,     v^k_a,     a, c + 1)   its anchor jumped forward
      G' = step(x^{k-1}_a, v^{k-1}_a, a, c + 1)   the slower core's point jumped forward

  which is Equation (3)'s ``x + r(x^{k-1}_a, x^k_a, a, c + 1 - a)`` for Euler steps; its anchor
  moves to ``c + 1``. Rectification therefore repeats every ``init_t[k-1] - init_t[k-2]`` rounds.
* Outputs stream (the paper's "diffusion streaming"): ``hits[0]`` is the coarse shot, one jump
  from the last init point to data (round K, core 0); then the real cores arrive from fastest
  (core K, round ``K - 1 + N - init_t[-1]``) to slowest (core 1, round N). Core 1 is never
  rectified, so the last hit is the sequential solution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from chords.core import Emit, Step, check_positive_int

Tensor = torch.Tensor

#: The paper's initialisation sequences for N = 50 steps (Section 4.1).
PAPER_PRESETS: dict[int, tuple[int, ...]] = {
    4: (0, 8, 16, 32),
    6: (0, 3, 6, 12, 24, 36),
    8: (0, 2, 4, 8, 16, 24, 32, 40),
}
PRESET_STEPS = 50


# --------------------------------------------------------------------------- init sequences


def continuous_init_sequence(num_cores: int, speedup: float) -> list[float]:
    """Theorem 2.5's fast-to-slow recursion on [0, 1).

    ``t(K) = (s - 1) / s``, ``t(1) = 0`` and, for ``k = K-1 .. 2`` with ``t(K+1) = 1``:
    ``t(k) = 2 t(k+1) - t(k+2)`` if ``t(k+1) > 2 t(k+2) / 3``, else ``t(k+1) / 2``.
    """
    check_positive_int("num_cores", num_cores)
    if num_cores == 1:
        return [0.0]
    if not speedup >= 1:
        raise ValueError(f"speedup {speedup!r} is invalid: it must be a number >= 1")
    t = [0.0] * (num_cores + 1)
    t[num_cores] = 1.0  # t(K+1): the end of the interval
    t[num_cores - 1] = (speedup - 1) / speedup
    for k in range(num_cores - 2, 0, -1):
        nxt, nxt2 = t[k + 1], t[k + 2]
        t[k] = 2 * nxt - nxt2 if nxt > 2 * nxt2 / 3 else nxt / 2
    t[0] = 0.0
    return t[:num_cores]


def discretize_init_sequence(times: Sequence[float], num_steps: int) -> list[int]:
    """Round times in [0, 1) to grid indices, then make them strictly increasing below N."""
    k = len(times)
    if k > num_steps:
        raise ValueError(f"num_cores {k} is too large for num_steps {num_steps}: need num_cores <= num_steps")
    idx = [min(max(int(math.floor(t * num_steps + 0.5)), 0), num_steps - 1) for t in times]
    idx[0] = 0
    for i in range(1, k):  # strictly increasing ...
        idx[i] = max(idx[i], idx[i - 1] + 1)
    for i in range(k - 1, 0, -1):  # ... and below num_steps
        idx[i] = min(idx[i], num_steps - k + i)
        if i < k - 1:
            idx[i] = min(idx[i], idx[i + 1] - 1)
    return idx


def default_speedup(num_cores: int) -> float:
    """The speedup ``auto`` aims for when none is given.

    The paper's presets put the fastest core at t = 0.64, 0.72, 0.80 for K = 4, 6, 8, i.e.
    ``t(K) = 0.48 + 0.04 K``; we extend that line (clipped to [0, 0.9]) to other K.
    """
    if num_cores == 1:
        return 1.0
    t_last = min(max(0.48 + 0.04 * num_cores, 0.0), 0.9)
    return 1.0 / (1.0 - t_last)


def init_sequence(num_cores: int, speedup: float | None, num_steps: int) -> list[int]:
    """Theorem 2.5's sequence for ``speedup`` (default :func:`default_speedup`), on the grid."""
    check_positive_int("num_cores", num_cores)
    check_positive_int("num_steps", num_steps)
    s = default_speedup(num_cores) if speedup is None else speedup
    return discretize_init_sequence(continuous_init_sequence(num_cores, s), num_steps)


def preset_init_sequence(num_cores: int, num_steps: int) -> list[int]:
    """The paper's preset for K = 4, 6, 8, scaled from N = 50 to ``num_steps``.

    Rule for other N: each index is scaled by ``num_steps / 50`` and rounded, then made
    strictly increasing below N. For other K there is no preset: Theorem 2.5 with
    :func:`default_speedup` is used.
    """
    if num_cores not in PAPER_PRESETS:
        return init_sequence(num_cores, None, num_steps)
    times = [i / PRESET_STEPS for i in PAPER_PRESETS[num_cores]]
    return discretize_init_sequence(times, num_steps)


def uniform_init_sequence(num_cores: int, num_steps: int) -> list[int]:
    """The ablation's uniform sequence: ``k * (N // K)`` (Table 3: 0-6-...-42 for K=8, N=50)."""
    if num_cores > num_steps:
        raise ValueError(f"num_cores {num_cores} is too large for num_steps {num_steps}: need num_cores <= num_steps")
    return [k * (num_steps // num_cores) for k in range(num_cores)]


def parse_init_t(value: object) -> list[int] | str | None:
    """Config boundary: "0-2-4-8" / [0, 2, 4, 8] / "auto" / "preset" / "uniform" / None.

    Returns a list of ints, or the keyword ("auto" / "preset"), or None (= preset).
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("auto", "preset", "uniform"):
            return text.lower()
        parts = text.replace(",", "-").split("-")
        try:
            return [int(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"init_t {value!r} is invalid: use grid indices joined by '-' (e.g. 0-2-4-8-16-24-32-40), "
                "'auto', 'preset' or 'uniform'"
            ) from None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    try:
        items = list(value)  # type: ignore[arg-type]
    except TypeError:
        items = None
    if items is None or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise ValueError(f"init_t {value!r} is invalid: use a list of integers, a '0-2-4-8' string, 'auto' or 'preset'")
    return items


def check_init_t(init_t: Sequence[int], num_cores: int, num_steps: int) -> None:
    check_positive_int("num_cores", num_cores)
    init_t = list(init_t)
    text = "-".join(str(i) for i in init_t)
    if len(init_t) != num_cores:
        raise ValueError(f"init_t {text} has {len(init_t)} entries; it needs one per core (num_cores={num_cores})")
    if init_t[0] != 0:
        raise ValueError(f"init_t {text} must start at 0 (the slowest core starts from noise)")
    for a, b in zip(init_t, init_t[1:]):
        if b <= a:
            raise ValueError(f"init_t {text} must be strictly increasing ({a} then {b})")
    if init_t[-1] >= num_steps:
        raise ValueError(f"init_t {text} reaches {init_t[-1]}; every entry must be below num_steps={num_steps}")


# --------------------------------------------------------------------------- the algorithm


class _Core:
    """One solver of the hierarchy (mutable bookkeeping; the algorithm stays a pure function)."""

    __slots__ = ("k", "t", "x", "anchor_t", "anchor_x", "anchor_v", "v")

    def __init__(self, k: int, t: int, x: Tensor):
        self.k, self.t, self.x = k, t, x
        self.anchor_t, self.anchor_x, self.anchor_v = t, x, None
        self.v: Tensor | None = None


@dataclass(frozen=True)
class CHORDS:
    """CHORDS with ``num_cores`` cores started at grid indices ``init_t``.

    ``init_t``: a strictly increasing sequence starting at 0, below ``num_steps``, one entry
    per core (gaps of 1 are fine); or ``"auto"`` (Theorem 2.5 for ``speedup``, default
    :func:`default_speedup`), ``"preset"`` / None (the paper's presets, scaled to N) or
    ``"uniform"`` (the ablation's evenly spaced starts).
    """

    num_cores: int
    init_t: Sequence[int] | str | None = None
    speedup: float | None = None

    def resolve_init_t(self, num_steps: int) -> list[int]:
        check_positive_int("num_cores", self.num_cores)
        spec = parse_init_t(self.init_t) if isinstance(self.init_t, str) or self.init_t is None else list(self.init_t)
        if spec == "auto":
            seq = init_sequence(self.num_cores, self.speedup, num_steps)
        elif spec == "uniform":
            seq = uniform_init_sequence(self.num_cores, num_steps)
        elif spec in (None, "preset"):
            if self.num_cores > num_steps:
                raise ValueError(f"num_cores {self.num_cores} is too large for num_steps {num_steps}")
            seq = preset_init_sequence(self.num_cores, num_steps)
        else:
            seq = list(spec)
        check_init_t(seq, self.num_cores, num_steps)
        return seq

    def check(self, num_steps: int) -> None:
        check_positive_int("num_steps", num_steps)
        if self.speedup is not None and not self.speedup >= 1:
            raise ValueError(f"speedup {self.speedup!r} is invalid: it must be a number >= 1")
        self.resolve_init_t(num_steps)

    def max_hits(self, num_steps: int) -> int:
        return self.num_cores + 1

    def hit_rounds(self, num_steps: int) -> list[int]:
        """When each hit arrives without a stop rule: coarse shot, then cores K .. 1."""
        init = self.resolve_init_t(num_steps)
        k = self.num_cores
        return [k] + [(c - 1) + num_steps - init[c - 1] for c in range(k, 0, -1)]

    def solve(self, x0: Tensor, step: Step, num_steps: int, emit: Emit):
        init = self.resolve_init_t(num_steps)
        n_cores = len(init)
        cores = [_Core(1, 0, x0)]  # active cores, slowest first
        while cores:
            v = yield [c.x for c in cores], [c.t for c in cores]
            for c, vc in zip(cores, v.unbind(0)):
                c.v = vc
                if c.anchor_v is None and c.anchor_t == c.t:
                    # kept for later rounds: a copy of this row, not a view that would keep the
                    # whole round's velocities alive (and the backend from reusing their buffer)
                    c.anchor_v = vc.clone()
            # The newest core has just been evaluated at its init point: its coarse jump spawns
            # the next core, or (last core) gives the coarse shot to data.
            newest = cores[-1]
            spawned = None
            if newest.t == init[newest.k - 1] and newest.anchor_t == newest.t:
                if newest.k < n_cores:
                    t_next = init[newest.k]
                    spawned = _Core(newest.k + 1, t_next, step(newest.x, newest.v, newest.t, t_next))
                elif newest.t < num_steps:
                    emit(0, step(newest.x, newest.v, newest.t, num_steps))
            # Every evaluated core takes one fine step, rectified when the slower core has just
            # been evaluated at its anchor. (All reads below use this round's states.)
            new_states = []
            for i, c in enumerate(cores):
                nxt = c.t + 1
                x_new = step(c.x, c.v, c.t, nxt)
                slower = cores[i - 1] if i > 0 else None
                if slower is not None and slower.t == c.anchor_t:
                    g_own = step(c.anchor_x, c.anchor_v, c.anchor_t, nxt)
                    g_slow = step(slower.x, slower.v, c.anchor_t, nxt)
                    x_new = x_new - g_own
                    if x_new.dtype == torch.promote_types(x_new.dtype, g_slow.dtype):
                        x_new += g_slow  # our own temporary: the same sum, in place
                    else:
                        x_new = x_new + g_slow
                    new_states.append((nxt, x_new, True))
                else:
                    new_states.append((nxt, x_new, False))
            for c, (nxt, x_new, rectified) in zip(cores, new_states):
                c.t, c.x, c.v = nxt, x_new, None
                if rectified:
                    c.anchor_t, c.anchor_x, c.anchor_v = nxt, x_new, None
            if spawned is not None:
                cores.append(spawned)
            # Cores that reached data stream out, fastest first.
            done = [c for c in cores if c.t == num_steps]
            if done:
                cores = [c for c in cores if c.t < num_steps]
                for c in sorted(done, key=lambda c: -c.k):
                    emit(c.k, c.x)
