"""Evaluate every core of a round in this process."""
from __future__ import annotations

from typing import Mapping

import torch

from chords.models.base import Adapter

Tensor = torch.Tensor


class LocalBackend:
    """``mode="loop"``: one adapter call per state; ``"batched"``: one call per round."""

    def __init__(self, adapter: Adapter, mode: str = "loop"):
        if mode not in ("loop", "batched"):
            raise ValueError(f"local backend mode {mode!r} is invalid: use 'loop' or 'batched'")
        self.adapter = adapter
        self.mode = mode
        self.world_size = 1
        self.cond: Mapping[str, Tensor] = {}

    def set_condition(self, cond: Mapping[str, Tensor]) -> None:
        self.cond = cond

    @torch.no_grad()
    def velocity(self, xs: Tensor, steps: Tensor) -> Tensor:
        if self.mode == "batched" or xs.shape[0] == 1:
            return self.adapter.velocity(xs, steps, self.cond)
        return torch.cat([self.adapter.velocity(xs[i : i + 1], steps[i : i + 1], self.cond) for i in range(xs.shape[0])])

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
