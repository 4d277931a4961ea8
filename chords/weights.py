"""Committed weights of the embedded models: where they live and how they are read and written.

safetensors only (no pickle); string metadata carries what is needed to rebuild a network
(e.g. ``dit_config``) and how it was trained. Pure (torch + safetensors): the eval stage
imports it too, to read the digit classifier.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

Tensor = torch.Tensor

WEIGHTS_DIR = Path(__file__).resolve().parent / "models" / "weights"
#: the command that rebuilds every committed weights file
REBUILD = "python scripts/train_embedded.py"


class WeightsError(ValueError):
    """A weights file that is missing or cannot be loaded; the message is one line."""


@dataclass
class Checkpoint:
    tensors: dict[str, Tensor]
    meta: dict[str, str] = field(default_factory=dict)


def save_checkpoint(path: str | Path, state: dict[str, Tensor], meta: dict[str, str]) -> None:
    """Tensors + string metadata to safetensors, written to a temporary name and renamed."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Tensors and metadata of a safetensors file; raises WeightsError (one line) if unusable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # truncated, not safetensors, ...
        raise WeightsError(f"{path} is corrupt ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    return Checkpoint(tensors, meta)


def problem(path: str | Path) -> str | None:
    """One line naming the file and the script that rebuilds it, or None when it is readable."""
    try:
        read_checkpoint(path)
    except WeightsError as e:
        return f"{e}; rebuild the embedded weights with `{REBUILD}`"
    return None
