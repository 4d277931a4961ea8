"""Round buffers that are reused only when nothing refers to them any more.

On the CPU a fresh tensor of a few MB and more is fresh memory from the kernel (glibc serves
allocations above its mmap threshold, at most 32 MB, with new pages), and touching it costs page
faults: stacking 8 HunyuanVideo-size bf16 latents (69 MB) into a new tensor took 46 ms on a
2-core VM, into one used before 6.5 ms (README, Benchmarks). The sampling loop and
the process backend produce such a tensor every round (the stacked states, the gathered
velocities); :class:`RoundBuffers` hands out the previous round's buffer instead, but only when
no tensor (view, unbound row, numpy array) still uses its memory: an algorithm may keep a
velocity for later rounds, a velocity oracle may keep or return its input. Whether anything
does is read from the storage's reference count (``torch._C._storage_Use_Count``), calibrated
once at import; if that private API is missing or counts differently, nothing is ever reused
(every request is a fresh tensor, as before). CUDA tensors are never reused (the caching
allocator already makes them cheap, and kernels may still be reading them asynchronously).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def _use_count(t: Tensor) -> int:
    storage = t.untyped_storage()
    return torch._C._storage_Use_Count(storage._cdata)


def _calibrate() -> int | None:
    """The count of a storage that exactly one tensor uses, if views are counted; else None."""
    try:
        probe = torch.empty(4)
        alone = _use_count(probe)
        view = probe[1:3]
        rows = probe.view(2, 2).unbind(0)
        with_views = _use_count(probe)
        del view, rows
        if with_views != alone + 3 or _use_count(probe) != alone:
            return None
        return alone
    except Exception:  # no such API in this torch: never reuse
        return None


_ALONE = _calibrate()


def unshared(t: Tensor) -> bool:
    """True when ``t`` is the only tensor using its memory (so writing into it is invisible)."""
    return _ALONE is not None and _use_count(t) == _ALONE


class RoundBuffers:
    """Up to ``keep`` buffers of ``[rows, *shape]``; :meth:`get` returns ``[n, *shape]`` rows of
    one that nothing else uses, or of a new one (which then replaces the oldest kept)."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self.pool: list[Tensor] = []

    def get(self, n: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, rows: int = 0) -> Tensor:
        if device.type != "cpu" or _ALONE is None:
            return torch.empty((n, *shape), dtype=dtype, device=device)
        shape = tuple(shape)
        for buf in self.pool:
            if buf.dtype == dtype and buf.device == device and tuple(buf.shape[1:]) == shape and buf.shape[0] >= n \
                    and unshared(buf):
                return buf[:n]
        buf = torch.empty((max(n, rows), *shape), dtype=dtype, device=device)
        self.pool.append(buf)
        if len(self.pool) > self.keep:
            self.pool.pop(0)
        return buf[:n]

    def clear(self) -> None:
        self.pool.clear()
