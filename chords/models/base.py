"""The adapter interface: everything model-specific lives behind it.

An adapter turns a model into four operations:

* ``encode(prompt, seed) -> Encoded``: the initial noise ``x0`` (the model's own latent shape,
  batch dimension included), the conditioning ``cond`` (a flat dict of tensors: everything the
  denoiser needs besides the state and the grid index, the per-index timestep table included),
  the step function on the model's grid and the number of steps.
* ``velocity(xs, steps, cond) -> [B, *S]``: the denoiser output for ``B`` states at ``B``
  (possibly different) grid indices, in one forward, guidance applied as the pipeline does.
* ``step``: carried by ``Encoded`` (``chords.steps.EulerStep`` / ``DDIMStep``).
* ``decode(x, out_dir, stem) -> [file names]``: media (``{stem}.png`` / ``{stem}.mp4``).

Adapters are built with ``role="full"`` on the rank that encodes and decodes, and with
``role="denoiser"`` on worker ranks, which then hold only what ``velocity`` needs. ``cond`` is
what crosses from rank 0 to the workers, once per prompt; keep it tensors only.

Model configs (``configs/model/*.yaml``) name their adapter class by dotted path under the key
``adapter``; :func:`load_adapter_class` resolves it.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from chords.core import Step

Tensor = torch.Tensor


@dataclass
class Encoded:
    x0: Tensor
    cond: dict[str, Tensor]
    step: Step
    num_steps: int
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able facts for stats.json


class Adapter(ABC):
    #: "image" or "video"
    media: str = "image"

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str = "cpu", role: str = "full"):
        if role not in ("full", "denoiser"):
            raise ValueError(f"adapter role {role!r} is invalid: use 'full' or 'denoiser'")
        self.cfg = cfg
        self.device = torch.device(device)
        self.role = role

    # ---- checks that run before anything loads (class methods: no instance, no weights)
    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> list[str]:
        """Problems with the model config, one line each; empty when it can run."""
        return []

    @classmethod
    def wants_gpu(cls, cfg: Mapping[str, Any]) -> bool:
        """True for a model too large to sample on a CPU by accident: ``hardware=auto`` refuses it
        there (an explicit ``hardware=`` choice still runs it)."""
        return False

    @classmethod
    def missing_weights(cls, cfg: Mapping[str, Any]) -> str | None:
        """A one-line message naming the download.py command if weights are absent, else None."""
        return None

    # ---- the four operations
    @abstractmethod
    def encode(self, prompt: str, seed: int) -> Encoded: ...

    @abstractmethod
    def velocity(self, xs: Tensor, steps: Tensor, cond: Mapping[str, Tensor]) -> Tensor: ...

    @abstractmethod
    def decode(self, x: Tensor, out_dir: Path, stem: str) -> list[str]: ...

    def param_counts(self) -> dict[str, int]:
        """Parameters this instance holds: {"denoiser": n, "total": n}."""
        return {}


def cond_to(cond: Mapping[str, Tensor], device: torch.device | str) -> dict[str, Tensor]:
    """The conditioning as a rank holds it on ``device``: tensors with dimensions move there; 0-d
    tensors (guidance scales, flags) stay on the host, so that reading one in a forward
    (``float(cond["guidance_scale"])``) never waits for the GPU."""
    return {k: v.to(device) if isinstance(v, Tensor) and v.dim() > 0 else v for k, v in cond.items()}


def load_adapter_class(path: str) -> type[Adapter]:
    module, _, name = str(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"model.adapter {path!r} cannot be imported ({e}); it must name an Adapter class") from e
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise ValueError(f"model.adapter {path!r} is not an Adapter subclass")
    return cls
