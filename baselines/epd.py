"""EPD: the Ensemble Parallel Direction solver (Zhu et al., ICCV 2025, arXiv 2507.14797), in our words.

A coarse grid of ``M`` steps (the model's ``num_inference_steps``). Step ``n`` goes from grid
position ``n`` to ``n + 1``:

1. one evaluation at ``(x_n, n)`` gives the direction ``d_n`` (a round of one state);
2. ``K`` predictor states ``y_k = step(x_n, p_n, n, n + r_k)`` at intermediate positions
   ``n + r_k`` (``0 < r_k <= 1``; on a flow-matching grid this is ``x_n + (sigma(n + r_k) -
   sigma_n) p_n``) are evaluated in one parallel round of ``K`` states, ``g_k = v(y_k, n + a_k r_k)``;
3. ``x_{n+1} = step(x_n, sum_k w_k c_k g_k, n, n + 1)``.

``p_n`` is the predictor direction: ``d_n`` (Euler, the paper's default) or, with
``predictor="ipndm"``, the iPNDM multistep combination of ``d_n`` and the previous steps' ``d``
(orders 1-4 as history allows: ``d``, ``(3d_n - d_{n-1})/2``, ``(23d_n - 16d_{n-1} + 5d_{n-2})/12``,
``(55d_n - 59d_{n-1} + 37d_{n-2} - 9d_{n-3})/24``). ``w`` are softmax weights (non-negative, sum 1),
``c_k`` scale factors near 1 (the paper's bounded direction scaling) and ``a_k`` time scales near
1 on each evaluation's label (the paper's time perturbation; the state stays at ``n + r_k``).
Because every step function here is affine in the velocity, the ensemble is a single
``step(x_n, sum_k beta_k g_k, n, n + 1)`` for Euler and DDIM alike. With ``K = 1``, ``r = 1/2``,
``w = c = a = 1`` the step is the explicit midpoint rule (second order in the grid's time).

Positions are grid positions: ``n + r`` is fractional, so the velocity receives float64
``steps`` in the second round (:mod:`chords.positions`; sigma and timesteps interpolated as each
adapter documents). Cost per step: two rounds, ``1 + K`` evaluations; ``num_cores = K``. One hit
(core 1) at round ``2M``.

The learned numbers (``4 x M x K``) live in an :class:`EPDTable`; without one the untrained rule
is used: ``r_k = (k - 1/2) / K``, equal weights, ``c = a = 1`` (for ``K = 1`` the midpoint rule;
for any ``K`` it satisfies the second-order conditions ``sum w = 1``, ``sum w r = 1/2``).
Reading and checking table files is :mod:`chords.epd_tables`' job (this module does no I/O).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Generator, Sequence

import torch

from chords.core import Emit, Request, Step, check_positive_int

Tensor = torch.Tensor

PREDICTORS: tuple[str, ...] = ("euler", "ipndm")
#: bounds of the scale factors c and time scales a: near 1, as the paper bounds its perturbations
SCALE_BOUNDS = (0.8, 1.25)
#: iPNDM's Adams-Bashforth coefficients by order (newest direction first)
IPNDM = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _matrix(name: str, rows: Sequence[Sequence[float]], m: int, k: int) -> tuple[tuple[float, ...], ...]:
    out = tuple(tuple(float(v) for v in row) for row in rows)
    if len(out) != m or any(len(row) != k for row in out):
        shape = f"{len(out)} x {sorted({len(r) for r in out}) or 0}"
        raise ValueError(f"EPD table {name} has shape {shape}: need num_steps x num_directions = {m} x {k}")
    if not all(math.isfinite(v) for row in out for v in row):
        raise ValueError(f"EPD table {name} has a value that is not a finite number")
    return out


@dataclass(frozen=True)
class EPDTable:
    """The learned numbers of EPD on ``M`` coarse steps with ``K`` directions (rows = steps).

    ``r``: intermediate positions as fractions of the step, in ``(0, 1]``; ``weights``: non-negative,
    each row summing to 1 (the softmax of the learned logits); ``scale`` (c) and ``time_scale``
    (a): in :data:`SCALE_BOUNDS`."""

    r: tuple[tuple[float, ...], ...]
    weights: tuple[tuple[float, ...], ...]
    scale: tuple[tuple[float, ...], ...]
    time_scale: tuple[tuple[float, ...], ...]

    @classmethod
    def build(cls, r, weights, scale=None, time_scale=None) -> "EPDTable":
        m = len(r)
        k = len(r[0]) if m else 0
        ones = [[1.0] * k for _ in range(m)]
        table = cls(
            _matrix("r", r, m, k), _matrix("weights", weights, m, k),
            _matrix("scale", ones if scale is None else scale, m, k),
            _matrix("time_scale", ones if time_scale is None else time_scale, m, k),
        )
        table.check()
        return table

    @classmethod
    def untrained(cls, num_steps: int, num_directions: int) -> "EPDTable":
        """``r_k = (k - 1/2) / K`` with equal weights: the midpoint rule for ``K = 1``."""
        k = num_directions
        return cls.build([[(i + 0.5) / k for i in range(k)]] * num_steps, [[1.0 / k] * k] * num_steps)

    @classmethod
    def from_logits(cls, r, logits, scale=None, time_scale=None) -> "EPDTable":
        """Weights as the softmax of ``logits`` (row by row), the paper's parametrisation."""
        w = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=-1).tolist()
        return cls.build(r, w, scale, time_scale)

    @property
    def num_steps(self) -> int:
        return len(self.r)

    @property
    def num_directions(self) -> int:
        return len(self.r[0]) if self.r else 0

    def check(self) -> None:
        m, k = self.num_steps, self.num_directions
        if m < 1 or k < 1:
            raise ValueError(f"EPD table is empty ({m} steps x {k} directions)")
        for name in ("r", "weights", "scale", "time_scale"):
            _matrix(name, getattr(self, name), m, k)
        lo, hi = SCALE_BOUNDS
        for n in range(m):
            if not all(0 < v <= 1 for v in self.r[n]):
                raise ValueError(f"EPD table r at step {n} is {list(self.r[n])}: each must be in (0, 1]")
            if any(w < 0 for w in self.weights[n]) or abs(sum(self.weights[n]) - 1) > 1e-9:
                raise ValueError(f"EPD table weights at step {n} are {list(self.weights[n])}: need >= 0, summing to 1")
            for name in ("scale", "time_scale"):
                row = getattr(self, name)[n]
                if not all(lo <= v <= hi for v in row):
                    raise ValueError(f"EPD table {name} at step {n} is {list(row)}: each must be in [{lo}, {hi}]")

    def as_dict(self) -> dict[str, list[list[float]]]:
        return {name: [list(row) for row in getattr(self, name)] for name in ("r", "weights", "scale", "time_scale")}


def ipndm_direction(history: Sequence[Tensor]) -> Tensor:
    """iPNDM's combination of the newest directions (``history[-1]`` newest), order <= 4."""
    order = min(len(history), 4)
    coeffs = IPNDM[order]
    out = coeffs[0] * history[-1]
    for i in range(1, order):
        out = out + coeffs[i] * history[-1 - i]
    return out


@dataclass(frozen=True)
class EPD:
    """Ensemble Parallel Direction solver over the velocity oracle (module docstring).

    ``num_cores``: K, the directions per step (one parallel round). ``table``: the learned
    numbers for exactly ``num_steps`` steps and K directions, or None for the untrained rule.
    ``predictor``: ``"euler"`` or ``"ipndm"``. ``perturb``: use the table's scale factors and
    time scales (False: ``c = a = 1`` whatever the table holds)."""

    num_cores: int
    table: EPDTable | None = None
    predictor: str = "euler"
    perturb: bool = True
    _untrained: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def check(self, num_steps: int) -> None:
        check_positive_int("num_cores", self.num_cores)
        check_positive_int("num_steps", num_steps)
        if self.predictor not in PREDICTORS:
            raise ValueError(f"predictor {self.predictor!r} is invalid: use one of {', '.join(PREDICTORS)}")
        if self.table is not None:
            t = self.table
            if (t.num_steps, t.num_directions) != (num_steps, self.num_cores):
                raise ValueError(
                    f"table is for {t.num_steps} steps x {t.num_directions} directions: this run has "
                    f"num_steps={num_steps} and num_cores={self.num_cores}"
                )
            t.check()

    def max_hits(self, num_steps: int) -> int:
        return 1

    def table_for(self, num_steps: int) -> EPDTable:
        if self.table is not None:
            return self.table
        key = (num_steps, self.num_cores)
        if key not in self._untrained:
            self._untrained[key] = EPDTable.untrained(num_steps, self.num_cores)
        return self._untrained[key]

    def coefficients(self, table: EPDTable, n: int) -> tuple[list[float], list[float], list[float]]:
        """(fractions r, evaluation-label fractions a*r, combination weights w*c) of step ``n``."""
        r = list(table.r[n])
        if not self.perturb:
            return r, r, list(table.weights[n])
        labels = [a * f for a, f in zip(table.time_scale[n], r)]
        beta = [w * c for w, c in zip(table.weights[n], table.scale[n])]
        return r, labels, beta

    def solve(self, x0: Tensor, step: Step, num_steps: int, emit: Emit) -> Generator[Request, Tensor, None]:
        table = self.table_for(num_steps)
        x = x0
        history: list[Tensor] = []
        for n in range(num_steps):
            d = (yield (x,), (n,))[0]
            if self.predictor == "ipndm":
                history = (history + [d.clone()])[-4:]  # kept beyond the round: copied (chords.buffers' rule)
                p = ipndm_direction(history)
            else:
                p = d
            r, labels, beta = self.coefficients(table, n)
            preds = [step(x, p, n, n + f) for f in r]
            positions = [min(n + lab, float(num_steps)) for lab in labels]
            g = yield preds, positions
            # the ensemble in float32 at least (bf16 velocities are summed without bf16 rounding), then
            # back to the velocity's dtype, which the step's arithmetic follows as for any velocity
            acc = g.to(torch.promote_types(g.dtype, torch.float32))
            combo = beta[0] * acc[0]
            for b, gk in zip(beta[1:], acc[1:]):
                combo = combo + b * gk
            x = step(x, combo.to(g.dtype), n, n + 1)
        emit(1, x)
