"""Evaluate every core of a round in this process."""
from __future__ import annotations

from typing import Mapping

import torch

from chords.models.base import Adapter

Tensor = torch.Tensor


def forward(adapter: Adapter, xs: Tensor, steps: Tensor, cond: Mapping[str, Tensor], max_batch: int | None = None) -> Tensor:
    """The velocities of ``xs`` in forwards of at most ``max_batch`` states (None = one forward).

    Micro-batches are consecutive slices, so the same ``max_batch`` gives the same forward
    shapes, and so the same bits, whichever backend or rank calls this; ``max_batch=1`` is the
    per-state loop, bitwise equal to ``hardware=local`` for every model.
    """
    b = xs.shape[0]
    if max_batch is None or b <= max_batch:
        return adapter.velocity(xs, steps, cond)
    return torch.cat([adapter.velocity(xs[i : i + max_batch], steps[i : i + max_batch], cond) for i in range(0, b, max_batch)])


class LocalBackend:
    """``mode="loop"``: one adapter call per state; ``"batched"``: one call per round, or per
    ``max_batch`` states when that is set (micro-batches, for memory)."""

    def __init__(self, adapter: Adapter, mode: str = "loop", max_batch: int | None = None):
        if mode not in ("loop", "batched"):
            raise ValueError(f"local backend mode {mode!r} is invalid: use 'loop' or 'batched'")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch {max_batch} is invalid: it must be >= 1 or None")
        self.adapter = adapter
        self.mode = mode
        self.max_batch = 1 if mode == "loop" else max_batch
        self.world_size = 1
        self.cond: Mapping[str, Tensor] = {}

    def set_condition(self, cond: Mapping[str, Tensor]) -> None:
        self.cond = cond

    @torch.no_grad()
    def velocity(self, xs: Tensor, steps: Tensor) -> Tensor:
        return forward(self.adapter, xs, steps, self.cond, self.max_batch)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
