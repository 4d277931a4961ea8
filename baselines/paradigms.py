"""ParaDIGMS: parallel sampling of diffusion models by sliding-window Picard iteration.

Shih, Belkhale, Ermon, Sadigh, Anari, "Parallel Sampling of Diffusion Models", NeurIPS 2023.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Generator

import torch

from chords.core import Emit, Request, Step, check_positive_int, check_tolerance

Tensor = torch.Tensor


@dataclass(frozen=True)
class ParaDIGMS:
    """Sliding-window Picard iteration over the sampling trajectory (ODE form).

    A sequential sampler computes ``x_{j+1} = step(x_j, v(x_j, j), j, j + 1)`` one index at a
    time. ParaDIGMS instead treats the whole trajectory ``X[0..N]`` as the unknown of a
    fixed-point problem: writing each step as a drift ``d_i = step(X[i], v_i, i, i+1) - X[i]``,
    the trajectory satisfies ``X[j+1] = X[b] + sum_{i=b..j} d_i`` for any anchor ``b <= j``.
    Picard iteration guesses the trajectory, evaluates every drift of a window at once (one
    parallel round) and recomputes all the window's states from the cumulative sum of drifts.
    Information travels at least one index per sweep, and for smooth dynamics far more.

    The buffer ``X[0..N]`` starts as ``x0`` everywhere and the window is ``[b, e)`` with
    ``e = min(b + num_cores, N)``. Each round:

    1. evaluate the velocities of ``X[b..e-1]`` in one call;
    2. ``X'[j+1] = X[b] + sum_{i=b..j} (step(X[i], v_i, i, i+1) - X[i])`` for ``j = b..e-1``;
    3. the error at position ``j+1`` is the mean squared change ``mean((X'[j+1] - X[j+1])^2)``
       divided by the noise variance at grid index ``j+1``;
    4. the window slides past the longest prefix of positions ``b+1, b+2, ...`` whose error is
       at most ``tolerance**2``: with ``s`` such positions the new start is
       ``min(b + 1 + s, e)``. Position ``b+1`` is always exact (one true step from the exact
       ``X[b]``), so the window advances at least one index per round and the method is exact
       after at most ``N`` rounds; position ``b+s+1`` is as accurate as the accepted prefix it
       was integrated from;
    5. positions that newly enter the window (beyond the old ``e``) start from the window's
       last new state ``X[e]``, the best available guess.

    When the start reaches ``N`` the final state ``X[N]`` is the single output (core 1).
    With ``tolerance = 0`` a position is accepted only when it did not change at all, and the
    result equals sequential sampling up to floating-point rounding of the cumulative sum.

    Error scale: the paper divides the squared change by the DDPM posterior variance of each
    step, so the tolerance is relative to the noise the stochastic sampler would inject there.
    Here the variance is read from the step function's ``noise_variance`` attribute (one value
    per grid index ``0..N``): :class:`chords.steps.DDIMStep` gives the DDPM posterior variance
    (the original scale), and for flow-matching grids :class:`chords.steps.EulerStep` gives
    ``sigma^2`` floored at the smallest non-zero ``sigma^2``, so the final, noise-free state is
    not judged on an infinitely strict scale. A step function without ``noise_variance`` uses
    ``1.0`` everywhere (an absolute mean-squared tolerance).

    ``num_cores`` is the window size (evaluations per round); ``tolerance`` is compared, squared,
    with the scaled error (the paper's default is 0.1).
    """

    num_cores: int
    tolerance: float = 0.1

    def check(self, num_steps: int) -> None:
        check_positive_int("num_cores", self.num_cores)
        check_positive_int("num_steps", num_steps)
        check_tolerance("tolerance", self.tolerance)

    def max_hits(self, num_steps: int) -> int:
        return 1

    @staticmethod
    def _variance(step: Step, num_steps: int) -> list[float]:
        var = getattr(step, "noise_variance", None)
        if var is None:
            return [1.0] * (num_steps + 1)
        var = torch.as_tensor(var, dtype=torch.float64).flatten()
        if len(var) != num_steps + 1:
            raise ValueError(
                f"step.noise_variance has {len(var)} values; ParaDIGMS needs one per grid index, "
                f"num_steps + 1 = {num_steps + 1}"
            )
        if not bool((var > 0).all()):
            raise ValueError("step.noise_variance must be positive at every grid index")
        return var.tolist()

    def solve(self, x0: Tensor, step: Step, num_steps: int, emit: Emit) -> Generator[Request, Tensor, None]:
        n, k = num_steps, self.num_cores
        variance = self._variance(step, n)
        tol2 = float(self.tolerance) ** 2
        buf: list[Tensor] = [x0] * (n + 1)
        b = 0
        while b < n:
            e = min(b + k, n)
            v = yield buf[b:e], list(range(b, e))
            anchor = buf[b]
            drift: Tensor | None = None
            new: list[Tensor] = []
            for offset, i in enumerate(range(b, e)):
                d = step(buf[i], v[offset], i, i + 1) - buf[i]
                drift = d if drift is None else drift + d
                new.append(anchor + drift)
            # leading positions b+1, b+2, ... whose scaled squared change is within tolerance
            accepted = 0
            for offset, j in enumerate(range(b + 1, e + 1)):
                change = (new[offset].double() - buf[j].double()).pow(2).mean().item()
                if change / variance[j] <= tol2:
                    accepted += 1
                else:
                    break
            buf[b + 1 : e + 1] = new
            b = min(b + 1 + accepted, e)
            new_end = min(b + k, n)
            for j in range(e + 1, new_end + 1):
                buf[j] = buf[e]
        emit(1, buf[n])
