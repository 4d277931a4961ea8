"""ODE problems with known answers, shared by the algorithm tests (torchdiffeq style).

Each problem gives a batched velocity oracle ``velocity(xs, steps)`` over a grid, a step
function, and (where one exists) the exact solution at the end of the grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from chords.steps import EulerStep


@dataclass
class Problem:
    """dx/dt = f(x, t) on the grid t_0 = 0 < ... < t_N = 1 with Euler steps."""

    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    num_steps: int
    x0: torch.Tensor
    exact: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    max_batch: int | None = None
    calls: list[int] = field(default_factory=list)

    def __post_init__(self):
        # Euler on a "sigma" grid that decreases: step uses (s_j - s_i) * v, so v = -f.
        t = torch.linspace(0, 1, self.num_steps + 1, dtype=torch.float64)
        self.times = t
        self.step = EulerStep(1 - t)

    def velocity(self, xs: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        assert steps.dtype == torch.long and xs.shape[0] == steps.shape[0]
        assert int(steps.min()) >= 0 and int(steps.max()) < self.num_steps
        if self.max_batch is not None:
            assert xs.shape[0] <= self.max_batch, f"batch {xs.shape[0]} > {self.max_batch}"
        self.calls.append(xs.shape[0])
        t = self.times[steps].to(xs.dtype).reshape(-1, *([1] * (xs.ndim - 1)))
        return -self.f(xs, t)


def linear(num_steps: int = 50, dim: int = 16, lam: float = -1.3, seed: int = 0) -> Problem:
    """dx/dt = lam * x: x(t) = x0 * exp(lam * t)."""
    x0 = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return Problem(lambda x, t: lam * x, num_steps, x0, exact=lambda x0, t: x0 * math.exp(lam * t))


def nonlinear(num_steps: int = 50, dim: int = 16, seed: int = 0) -> Problem:
    """dx/dt = -x^3 + sin(3 t) (smooth, no closed form; reference: a fine RK4 solve)."""
    x0 = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    f = lambda x, t: -(x**3) + torch.sin(3 * t)  # noqa: E731
    return Problem(f, num_steps, x0, exact=lambda x0, t1: rk4(f, x0, 0.0, t1, 4000))


def rk4(f, x, t0: float, t1: float, n: int) -> torch.Tensor:
    h = (t1 - t0) / n
    t = torch.tensor(t0, dtype=x.dtype)
    for _ in range(n):
        k1 = f(x, t)
        k2 = f(x + h / 2 * k1, t + h / 2)
        k3 = f(x + h / 2 * k2, t + h / 2)
        k4 = f(x + h * k3, t + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        t = t + h
    return x


@dataclass
class GaussianFlow:
    """Flow matching of Gaussian data N(mu, s^2): x_sigma = (1 - sigma) d + sigma eps.

    Exact velocity (dx/dsigma): (sigma - a s^2)(x - a mu) / (a^2 s^2 + sigma^2) - mu, a = 1 - sigma.
    Exact flow: x(sigma) = a mu + sqrt(a^2 s^2 + sigma^2) * eps, so x(0) = mu + s * eps.
    """

    num_steps: int = 50
    dim: int = 32
    seed: int = 0
    shift: float = 1.0
    max_batch: int | None = None

    def __post_init__(self):
        g = torch.Generator().manual_seed(self.seed)
        self.mu = torch.randn(self.dim, generator=g, dtype=torch.float64)
        self.s = 0.2 + torch.rand(self.dim, generator=g, dtype=torch.float64)
        self.x0 = torch.randn(self.dim, generator=g, dtype=torch.float64)
        sig = torch.linspace(1, 0, self.num_steps + 1, dtype=torch.float64)
        sig = self.shift * sig / (1 + (self.shift - 1) * sig)
        self.sigmas = sig
        self.step = EulerStep(sig)

    def velocity(self, xs: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        if self.max_batch is not None:
            assert xs.shape[0] <= self.max_batch
        sig = self.sigmas[steps].to(xs.dtype).reshape(-1, *([1] * (xs.ndim - 1)))
        a = 1 - sig
        mu, s = self.mu.to(xs.dtype), self.s.to(xs.dtype)
        return (sig - a * s**2) * (xs - a * mu) / (a**2 * s**2 + sig**2) - mu

    def exact(self) -> torch.Tensor:
        return self.mu + self.s * self.x0
