"""ParaDIGMS: parallel sampling of diffusion models by sliding-window Picard iteration.

Shih, Belkhale, Ermon, Sadigh, Anari, "Parallel Sampling of Diffusion Models", NeurIPS 2023.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generator

import torch

from chords.core import Emit, Request, Step, check_positive_int, check_tolerance

Tensor = torch.Tensor


#: values per sample above which ParaDIGMS's error is summed in chunks of this many (in cache)
_CHUNK = 1 << 18


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype ``torch.cumsum`` accumulates in on CPU: float64 for float32/float64 states,
    float32 for 16-bit ones (each prefix sum is rounded once to the state's dtype)."""
    if dtype in (torch.float32, torch.float64):
        return torch.float64
    return torch.float32 if dtype.is_floating_point else dtype


class _Scratch:
    """Two accumulation buffers a ParaDIGMS solve reuses every round: on a CPU a fresh tensor of
    a HunyuanVideo-size latent in float32 (17 MB) is fresh pages from the kernel, and the page
    faults of eight of them per round cost more than the arithmetic."""

    def __init__(self) -> None:
        self.bufs: list[Tensor | None] = [None, None]

    def difference(self, which: int, a: Tensor, b: Tensor, acc: torch.dtype) -> Tensor:
        """``(a - b).to(acc)``, into buffer ``which`` when ``a`` and ``b`` share a dtype (the
        difference is then computed in that dtype and widened, the same values)."""
        if a.dtype != b.dtype:
            return (a - b).to(acc)
        out = self.bufs[which]
        if out is None or out.shape != a.shape or out.dtype != acc or out.device != a.device:
            out = self.bufs[which] = torch.empty(a.shape, dtype=acc, device=a.device)
        return torch.sub(a, b, out=out)


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
    ``e = min(b + num_cores, N)``. Each round (one velocity call of ``e - b`` states):

    1. evaluate the velocities of ``X[b..e-1]`` in one call;
    2. ``X'[j+1] = X[b] + sum_{i=b..j} (step(X[i], v_i, i, i+1) - X[i])`` for ``j = b..e-1``;
    3. the error of position ``j`` (``b < j <= e``), for every sample ``s`` of the state, is the
       mean squared change ``mean((X'[j][s] - X[j][s])^2)`` divided by ``noise_variance[j]``,
       the variance of the step *out of* grid index ``j``;
    4. a position is within tolerance when the error of *every* sample is at most
       ``tolerance**2``; with ``a`` leading positions ``b+1, ..., b+a`` within tolerance the new
       start is ``min(b + 1 + a, e)``. Position ``b+1`` is one true step from the exact ``X[b]``,
       so the window advances at least one index per round and the method is exact after at
       most ``N`` rounds; position ``b+a+1`` is as accurate as the accepted prefix it was
       integrated from;
    5. ``X`` takes the new window states, and positions that newly enter the window (beyond the
       old ``e``) start from ``X[e]``, the best available guess.

    When the start reaches ``N`` the final state ``X[N]`` is the single output (core 1).
    With ``tolerance = 0`` a position is accepted only when it did not change at all, and the
    result equals sequential sampling up to floating-point rounding of the cumulative sum.

    Equal to diffusers' ``StableDiffusionParadigmsPipeline`` with ``DDIMParallelScheduler``
    (eta = 0, deterministic) on the same grid, velocity and ``x0``: the same windows, hence the
    same rounds (its loop iterations, one UNet call each) and evaluations, and the same output
    (``tests/test_baselines.py`` runs that pipeline side by side). Its details, kept here:

    * the scale of position ``j`` is the DDPM posterior variance of the step from ``j`` to
      ``j + 1`` (diffusers' ``scheduler._get_variance(timesteps[j])``), and 0 at ``j = N``;
    * a variance of 0 is an infinite scale (diffusers multiplies by ``1 / 0``): such a position
      is within tolerance only when it did not change at all. This is the last grid index, and
      on DDIM grids whose final alpha-bar is 1 also ``N - 1`` (the posterior variance of the
      step onto clean data is 0). The last position never moves the window (reaching it means
      every earlier position was accepted, and the start becomes ``N`` either way);
    * an error that is NaN (an iterate that blew up, ``inf - inf``) is never within tolerance;
      diffusers' ``error > tolerance`` test lets it through and returns NaN latents. The two
      agree whenever the errors are finite;
    * "samples" are the entries of the state's first dimension (the model's batch, one per
      latent of a prompt, as ``S`` includes it); a state of at most one dimension is one sample.

    * the cumulative drift of step 2 is summed in float64 (float32 for 16-bit states) and
      rounded once per position to the state's dtype, as the pipeline's ``torch.cumsum`` does
      on CPU (on CUDA, torch.cumsum sums float32 in float32, in a parallel order).

    The one remaining difference: diffusers computes the error in the latents' dtype
    (float32 for SD) and multiplies by a float32 inverse variance, while this class computes it
    in float64, so a position whose error is within float32 rounding (about 1e-7 relative) of
    ``tolerance**2`` may be decided differently. Diffusers' stochastic variant
    (``DDPMParallelScheduler``, pre-sampled noise added to the cumulative drift) is not
    implemented: this is the ODE form.

    Error scale: read from the step function's ``noise_variance`` (one value ``>= 0`` per grid
    index ``0..N``). :class:`chords.steps.DDIMStep` gives the posterior variance above (the
    original scale). Flow-matching grids have no posterior variance; :class:`chords.steps.EulerStep`
    gives ``sigma_j^2`` (the noise variance of the state at ``j``) floored at the smallest
    non-zero ``sigma^2``, so the accepted RMS change per sample is ``tolerance * sigma_j``.
    A step function without ``noise_variance`` uses ``1.0`` everywhere (an absolute
    mean-squared tolerance).

    ``num_cores`` is the window size (evaluations per round, diffusers' ``parallel``);
    ``tolerance`` is diffusers' ``tolerance`` (default 0.1), compared squared with the error.
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
        if not bool((var >= 0).all()):
            raise ValueError("step.noise_variance must be >= 0 at every grid index (0 means: must not change)")
        return var.tolist()

    @staticmethod
    def _worst_change(new: Tensor, old: Tensor) -> float:
        """The largest per-sample mean squared change (samples along the first dimension),
        ``max_s mean((new[s] - old[s])^2)`` computed in float64.

        Latents of up to ``_CHUNK`` values per sample take one float64 pass (``torch.mean``).
        Larger ones (a HunyuanVideo latent has 4.3M) are summed ``_CHUNK`` columns at a time,
        each chunk widened, squared and summed while it is in cache, then divided by the count:
        the float64 temporaries of a whole latent cost hundreds of ms per ParaDIGMS round on a
        CPU. The chunked float64 sum can differ from ``torch.mean``'s in its last bits, which
        decides a position differently only when its error is within ~1e-15 (relative) of
        ``tolerance**2``.
        """
        rows = new.reshape(1, -1) if new.ndim <= 1 else new.flatten(1)
        before = old.reshape(1, -1) if old.ndim <= 1 else old.flatten(1)
        cols = rows.shape[1]
        if cols <= _CHUNK:
            return rows.to(torch.float64, copy=True).sub_(before).pow_(2).mean(1).max().item()
        total = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
        for lo in range(0, cols, _CHUNK):
            part = rows[:, lo : lo + _CHUNK].to(torch.float64, copy=True).sub_(before[:, lo : lo + _CHUNK])
            total += part.pow_(2).sum(1)
        return (total / cols).max().item()

    def solve(self, x0: Tensor, step: Step, num_steps: int, emit: Emit) -> Generator[Request, Tensor, None]:
        n, k = num_steps, self.num_cores
        variance = self._variance(step, n)
        tol2 = float(self.tolerance) ** 2
        buf: list[Tensor] = [x0] * (n + 1)
        scratch = _Scratch()
        b = 0
        while b < n:
            e = min(b + k, n)
            v = yield buf[b:e], list(range(b, e))
            anchor = buf[b]
            acc = _accumulation_dtype(anchor.dtype)
            new: list[Tensor] = []
            for offset, i in enumerate(range(b, e)):
                nxt = step(buf[i], v[offset], i, i + 1)
                if offset == 0:
                    drift = scratch.difference(0, nxt, buf[i], acc)
                else:
                    drift.add_(scratch.difference(1, nxt, buf[i], acc))
                new.append(anchor + drift.to(anchor.dtype))
            # leading positions b+1, b+2, ... whose every sample is within tolerance
            accepted = 0
            for offset, j in enumerate(range(b + 1, e + 1)):
                change = self._worst_change(new[offset], buf[j])
                if variance[j] > 0:
                    error = change / variance[j]
                else:  # infinite scale: only "no change" is within tolerance
                    error = 0.0 if change == 0 else math.inf
                if not error <= tol2:  # a NaN error is never within tolerance (diffusers' `error > tol` lets it through)
                    break
                accepted += 1
            buf[b + 1 : e + 1] = new
            b = min(b + 1 + accepted, e)
            new_end = min(b + k, n)
            for j in range(e + 1, new_end + 1):
                buf[j] = buf[e]
        emit(1, buf[n])
