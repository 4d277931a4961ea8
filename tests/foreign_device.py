"""Stand-ins for a GPU on a machine that has none, so CI sees device mistakes.

Two ``torch.Tensor`` subclasses, both plain CPU tensors underneath:

* :class:`OnDevice` is a tensor that lives on "another device" (a GPU's output, say). Arithmetic
  that mixes it with an ordinary CPU tensor of one or more dimensions raises, as CUDA does
  ("Expected all tensors to be on the same device"); 0-d CPU tensors mix freely, as they do with
  CUDA tensors. ``.cpu()`` / ``.to("cpu")`` / ``.to(<cpu tensor>)`` bring it back as an ordinary
  tensor; ``.numpy()`` refuses, as it does for CUDA. So code that subtracts a reference read back
  from disk from a fresh output, or feeds an output to a network held on the CPU, fails here as
  it would on the first GPU run.
* :class:`HostReads` counts the reads that force a device to synchronise with the host
  (``float()``, ``int()``, ``bool()``, ``.item()``, ``.tolist()``, ``.numpy()``) made from the
  project's own code (``chords/``, ``baselines/``), wherever the tensor flows: a forward on a GPU
  must not make any.

Tests wrap the states (and conditioning) an adapter produces; the adapter's own weights stay
ordinary CPU tensors.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.utils._pytree import tree_flatten, tree_map

Tensor = torch.Tensor
ROOT = Path(__file__).resolve().parent.parent
_OURS = tuple(str(ROOT / d) + "/" for d in ("chords", "baselines", "eval"))

_READS = {Tensor.item, Tensor.__float__, Tensor.__int__, Tensor.__bool__, Tensor.tolist, Tensor.numpy, Tensor.__index__}
_MOVES = {Tensor.to, Tensor.cpu}
_INDEXING = {Tensor.__getitem__, Tensor.__setitem__, Tensor.index_select, Tensor.gather}


def _moves_to_host(func: Any, args: tuple, kwargs: dict) -> bool:
    if func is Tensor.cpu:
        return True
    if func is not Tensor.to:
        return False
    rest = args[1:]
    if any(isinstance(a, OnDevice) for a in rest) or isinstance(kwargs.get("other"), OnDevice):
        return False  # .to(another tensor on the device): stays there
    device, _, _, _ = torch._C._nn._parse_to(*rest, **kwargs)
    return device is not None and device.type == "cpu"


class OnDevice(Tensor):
    """A tensor on a device other than the CPU (see the module docstring)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _MOVES and isinstance(args[0], OnDevice) and _moves_to_host(func, args, kwargs):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(Tensor)
        if func is Tensor.numpy:
            raise TypeError("can't convert a tensor on another device to numpy: use .cpu() first (OnDevice stand-in)")
        if func not in _INDEXING and func is not Tensor.__repr__ and func is not Tensor.__format__:
            flat, _ = tree_flatten((args, {k: v for k, v in kwargs.items() if k != "out"}))
            tensors = [t for t in flat if isinstance(t, Tensor)]
            if any(isinstance(t, OnDevice) for t in tensors):
                host = [t for t in tensors if not isinstance(t, OnDevice) and t.dim() > 0]
                if host:
                    raise RuntimeError(
                        f"Expected all tensors to be on the same device, but {getattr(func, '__name__', func)} got a "
                        f"tensor on the device (OnDevice stand-in) and a CPU tensor of shape {list(host[0].shape)}")
        return super().__torch_function__(func, types, args, kwargs)


def on_device(x: Any) -> Any:
    """``x`` (a tensor or a structure of tensors) placed "on the device"."""
    return tree_map(lambda t: t.as_subclass(OnDevice) if isinstance(t, Tensor) and not isinstance(t, OnDevice) else t, x)


def plain(x: Any) -> Any:
    """The ordinary tensors underneath (no copy, no move)."""
    return tree_map(lambda t: t.as_subclass(Tensor) if isinstance(t, Tensor) else t, x)


class HostReads(Tensor):
    """A tensor whose host reads from the project's code are recorded in :attr:`log`."""

    log: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in _READS:
            frame = sys._getframe(1)
            while frame is not None and "/torch/" in frame.f_code.co_filename:
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(_OURS):
                cls.log.append(f"{func.__name__} at {Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
        return super().__torch_function__(func, types, args, kwargs)


def tracked(x: Any) -> Any:
    return tree_map(lambda t: t.as_subclass(HostReads) if isinstance(t, Tensor) else t, x)


def on_device_cond(cond: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: on_device(v) for k, v in cond.items()}


# --------------------------------------------------------------------------- a model on "the device"

from chords.models.base import Encoded  # noqa: E402
from chords.models.embedded import DigitsDiT, MovingDigitsDiT  # noqa: E402


class _OnDeviceModel:
    """An embedded model whose states, conditioning and velocities live "on the device", as a
    real model's do on a GPU; its network is the ordinary CPU one (standing in for weights on
    that device), so only the adapter's own forward sees plain tensors."""

    def encode(self, prompt: str, seed: int) -> Encoded:
        enc = super().encode(prompt, seed)
        return Encoded(on_device(enc.x0), on_device_cond(enc.cond), enc.step, enc.num_steps, enc.meta)

    def velocity(self, xs: Tensor, steps: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        return on_device(super().velocity(plain(xs), plain(steps), plain(dict(cond))))


class DigitsOnDevice(_OnDeviceModel, DigitsDiT):
    pass


class MovingDigitsOnDevice(_OnDeviceModel, MovingDigitsDiT):
    pass
