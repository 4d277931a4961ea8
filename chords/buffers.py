"""The buffer rule of a round, the buffers it lets us reuse, and a mode that checks it.

**The rule.** One call of a velocity oracle is one round (:func:`chords.core.sample`).

1. The stacked states ``xs`` an oracle receives are valid during that call only: an oracle that
   keeps states for later copies them.
2. The velocities an oracle returns are valid until its next call: an algorithm that keeps a
   velocity (or a view or row of it) beyond the round it was returned in copies it
   (CHORDS copies its anchor velocity; ParaDIGMS, SRDS and sequential keep only step results,
   which are new tensors).

What the rule buys: on the CPU a fresh tensor of a few MB and more is fresh memory from the
kernel (glibc serves allocations above its mmap threshold, at most 32 MB, with new pages), and
touching it costs page faults: stacking 8 HunyuanVideo-size bf16 latents (69 MB) into a new
tensor took 46 ms on a 2-core VM, into one used before 6.5 ms (README, Benchmarks). So
:func:`~chords.core.sample` stacks every round into the same buffer, and the process backend
returns its velocities where they lie (its shared-memory files, or buffers of its own) and
writes the next round's elsewhere. Nothing asks the runtime whether a tensor is still referred
to; the rule decides.

**Checking it.** With :func:`checking` (or ``CHORDS_CHECK_BUFFERS=1`` in the environment),
:func:`~chords.core.sample` hands the algorithm a copy of each round's velocities and, once the
algorithm has taken its next step, fills that copy and the round's stacked states with NaN: an
algorithm or an oracle that keeps either without copying then computes with NaN, which a test
sees at once (tests/test_buffers.py). Outputs are bitwise the same as without checking when
the rule holds.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

Tensor = torch.Tensor

_checking = os.environ.get("CHORDS_CHECK_BUFFERS", "") not in ("", "0")


def checking_enabled() -> bool:
    return _checking


@contextmanager
def checking(on: bool = True) -> Iterator[None]:
    """Within this block, :func:`~chords.core.sample` checks the buffer rule (see the module)."""
    global _checking
    before, _checking = _checking, on
    try:
        yield
    finally:
        _checking = before


def poison(t: Tensor) -> None:
    """Overwrite ``t`` with NaN (floating dtypes): what a later round may do to memory that the
    rule says is no longer valid."""
    if t.is_floating_point() or t.is_complex():
        t.fill_(float("nan"))


class RoundBuffers:
    """``keep`` buffers of ``[rows, *shape]``, handed out in turn: :meth:`get` returns ``[n, *shape]``
    rows of the one that fits and was handed out longest ago, once ``keep`` of them exist (until
    then a new one, which replaces the least recently used).

    With ``keep=1`` a buffer is handed out again at the next round (rule 1: the stacked states);
    with ``keep=2``, only every other round, so a round never writes into the previous round's
    output (rule 2 holds with a round to spare). CUDA tensors are never reused (the caching
    allocator already makes them cheap, and kernels may still be reading them asynchronously)."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self.pool: list[Tensor] = []  # least recently handed out first

    def get(self, n: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, rows: int = 0) -> Tensor:
        if device.type != "cpu":
            return torch.empty((n, *shape), dtype=dtype, device=device)
        shape = tuple(shape)
        fits = [buf for buf in self.pool if buf.dtype == dtype and buf.device == device
                and tuple(buf.shape[1:]) == shape and buf.shape[0] >= n]
        if len(fits) >= self.keep:
            buf = fits[0]
            self.pool = [b for b in self.pool if b is not buf]
        else:
            buf = torch.empty((max(n, rows), *shape), dtype=dtype, device=device)
            if len(self.pool) >= self.keep:
                self.pool.pop(0)
        self.pool.append(buf)
        return buf[:n]

    def clear(self) -> None:
        self.pool.clear()
