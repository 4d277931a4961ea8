"""Several tiny adapters behind one, so that one pool of worker processes serves them all (tests).

``cfg["members"]`` is a list of model configs; each member is built with the same role as the
whole. ``cond["member"]`` (a 0-d tensor) says which member a prompt belongs to; the rest of
``cond`` is that member's own. Spawning one ProcessBackend per family and dtype would cost a
process start-up each (seconds on a loaded 2-core machine); this costs one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from chords.models.base import Adapter, Encoded, load_adapter_class

Tensor = torch.Tensor


class MultiAdapter(Adapter):
    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str = "cpu", role: str = "full"):
        super().__init__(cfg, device, role)
        self.members = [load_adapter_class(m["adapter"])(m, device, role) for m in cfg["members"]]

    def encode(self, prompt: str, seed: int, member: int = 0) -> Encoded:
        enc = self.members[member].encode(prompt, seed)
        enc.cond = {**enc.cond, "member": torch.tensor(member)}
        return enc

    def velocity(self, xs: Tensor, steps: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        own = {k: v for k, v in cond.items() if k != "member"}
        return self.members[int(cond["member"])].velocity(xs, steps, own)

    def decode(self, x: Tensor, out_dir: Path, stem: str) -> list[str]:
        raise NotImplementedError("decode the member's output with the member itself")
