"""Step functions that jump between any two grid indices ``i < j``.

They take the grid as data (arrays read once from a scheduler), never a scheduler object.
Arithmetic is float32, or float64 when the state is float64, and the result is cast back to
the state's dtype. Each also exposes ``noise_variance`` (one value per grid index
``0..num_steps``), which ParaDIGMS uses to scale its error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_indices(i: int, j: int, num_steps: int) -> None:
    if not 0 <= i < j <= num_steps:
        raise ValueError(f"step from grid index {i} to {j} is invalid: need 0 <= i < j <= {num_steps}")


@dataclass(frozen=True)
class EulerStep:
    """Euler on a flow-matching sigma grid: ``x + (sigma_j - sigma_i) * v``.

    ``sigmas`` has ``num_steps + 1`` entries, from ``sigmas[0]`` (noise, usually 1) to
    ``sigmas[num_steps]`` (data, usually 0), as ``FlowMatchEulerDiscreteScheduler.sigmas``.
    The difference is taken in the compute dtype, as diffusers does.
    """

    sigmas: Tensor
    noise_floor: float = 0.0
    _by_dtype: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        s = torch.as_tensor(self.sigmas).detach().cpu()
        object.__setattr__(self, "sigmas", s.to(torch.float64) if s.dtype == torch.float64 else s.to(torch.float32))
        if s.ndim != 1 or len(s) < 2:
            raise ValueError(f"sigmas must be a 1-D grid of num_steps + 1 >= 2 values, got shape {tuple(s.shape)}")

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def _grid(self, dtype: torch.dtype) -> Tensor:
        g = self._by_dtype.get(dtype)
        if g is None:
            g = self._by_dtype[dtype] = self.sigmas.to(dtype)
        return g

    def delta(self, i: int, j: int, dtype: torch.dtype = torch.float32) -> float:
        g = self._grid(dtype)
        return (g[j] - g[i]).item()

    def __call__(self, x: Tensor, v: Tensor, i: int, j: int) -> Tensor:
        _check_indices(i, j, self.num_steps)
        cd = _compute_dtype(x)
        dt = self.delta(i, j, cd)
        if x.dtype == cd and v.dtype == cd:
            return x + dt * v
        return (x.to(cd) + dt * v.to(cd)).to(x.dtype)

    @property
    def noise_variance(self) -> Tensor:
        """ParaDIGMS' scale at grid index ``j`` on a flow-matching grid (which has no posterior
        variance): ``sigma_j^2``, the noise variance of the state at ``j``, floored (default floor:
        the smallest non-zero sigma^2, so data at sigma = 0 is not judged on an infinite scale)."""
        var = self.sigmas.double() ** 2
        floor = self.noise_floor
        if not floor:
            positive = var[var > 0]
            floor = float(positive.min()) if len(positive) else 1.0
        return var.clamp_min(floor)


@dataclass(frozen=True)
class DDIMStep:
    """Deterministic DDIM (eta = 0) on an ``alphas_cumprod`` / ``timesteps`` grid.

    ``timesteps[i]`` is the training timestep at grid index ``i`` (``num_steps`` values, as the
    scheduler lists them, e.g. CogVideoX's trailing spacing); the state at grid index
    ``num_steps`` is data, with ``final_alpha_cumprod`` (1.0 when the scheduler sets alpha to
    one, else ``alphas_cumprod[0]``). ``prediction_type`` is ``"epsilon"`` or ``"v_prediction"``.
    """

    alphas_cumprod: Tensor
    timesteps: Tensor
    prediction_type: str = "epsilon"
    final_alpha_cumprod: float = 1.0
    _by_dtype: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"prediction_type {self.prediction_type!r} is not supported: use 'epsilon' or 'v_prediction'"
            )
        ac = torch.as_tensor(self.alphas_cumprod).detach().cpu().to(torch.float64)
        ts = torch.as_tensor(self.timesteps).detach().cpu().long()
        object.__setattr__(self, "alphas_cumprod", ac)
        object.__setattr__(self, "timesteps", ts)
        # alpha-bar at every grid index 0..num_steps
        grid = torch.cat([ac[ts], torch.tensor([float(self.final_alpha_cumprod)], dtype=torch.float64)])
        object.__setattr__(self, "_alpha_grid", grid)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def _grid(self, dtype: torch.dtype) -> Tensor:
        g = self._by_dtype.get(dtype)
        if g is None:
            g = self._by_dtype[dtype] = self._alpha_grid.to(dtype)
        return g

    def __call__(self, x: Tensor, v: Tensor, i: int, j: int) -> Tensor:
        _check_indices(i, j, self.num_steps)
        cd = _compute_dtype(x)
        g = self._grid(cd)
        a_i, a_j = g[i], g[j]
        xs, out = x.to(cd), v.to(cd)
        sa_i, sb_i = a_i.sqrt(), (1 - a_i).sqrt()
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (xs - sb_i * eps) / sa_i
        else:  # v-prediction: v = sqrt(a) eps - sqrt(1-a) x0
            x0 = sa_i * xs - sb_i * out
            eps = sa_i * out + sb_i * xs
        return (a_j.sqrt() * x0 + (1 - a_j).sqrt() * eps).to(x.dtype)

    @property
    def noise_variance(self) -> Tensor:
        """ParaDIGMS' scale at grid index ``j``: the DDPM posterior variance of the step *out of*
        ``j`` (to ``j + 1``), as diffusers' ``DDIMParallelScheduler._get_variance(timesteps[j])``;
        0 at ``num_steps`` (data), and 0 at ``num_steps - 1`` when the final alpha-bar is 1.
        ParaDIGMS reads 0 as an infinite scale (the position must not change)."""
        a = self._alpha_grid  # increases from noise (index 0) to data (index num_steps)
        var = torch.zeros_like(a)
        # leaving index j for j + 1: (1 - a_{j+1}) / (1 - a_j) * (1 - a_j / a_{j+1})
        var[:-1] = (1 - a[1:]) / (1 - a[:-1]) * (1 - a[:-1] / a[1:])
        return var
