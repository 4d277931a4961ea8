"""Grid positions between the grid's entries: continuous time on a discrete grid.

A round's ``steps`` are grid positions. They come in two kinds, told apart by the tensor's dtype:

* a LongTensor (int64): integer grid indices, the only kind there was before EPD. Every table
  lookup stays ``table[steps]``, so the integer path computes exactly what it always did.
* a float64 tensor: fractional positions ``p`` in ``[0, num_steps]`` (EPD's intermediate times).
  A table that lists one value per grid index is read at ``p`` by linear interpolation in the
  grid index, ``table[k] + (p - k) * (table[k + 1] - table[k])`` with ``k = floor(p)``, computed
  in float64 and rounded once to the table's dtype. A position that happens to be an integer
  (``3.0``) reads ``table[3]`` itself, bit for bit: the fraction is 0 and no subtraction touches
  the value.

Why linear in the grid index: the flow-matching schedulers build their sigmas by evaluating a
smooth map (the time shift) at evenly spaced grid times, and their timesteps are
``sigma * num_train_timesteps``; between two entries the grid index is the scheduler's own time
variable. Interpolating sigma (and the timestep) linearly in it is exact at the entries,
needs nothing but the table (a worker holding only ``cond`` can do it), and is monotone, so a
position between ``i`` and ``j`` always has a noise level between theirs. For DDIM grids see :class:`chords.steps.DDIMStep`.

:func:`as_positions` is what the core uses to turn an algorithm's request into the ``steps``
tensor: Python (or NumPy / torch) integers give a LongTensor as before, any float gives float64.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

Tensor = torch.Tensor


def is_fractional(position: object) -> bool:
    """Whether a single grid position is of the fractional kind (a float, not an integer type)."""
    if isinstance(position, Tensor):
        return position.is_floating_point()
    return not isinstance(position, numbers.Integral)


def as_positions(steps: Sequence[object]) -> Tensor:
    """An algorithm's grid positions as the ``steps`` tensor of a round.

    All integers: a LongTensor, exactly as before fractional positions existed. Any float among
    them: a float64 tensor (integers in it are represented exactly)."""
    steps = list(steps)
    if any(is_fractional(s) for s in steps):
        return torch.as_tensor([float(s) for s in steps], dtype=torch.float64)
    return torch.as_tensor(steps, dtype=torch.long)


def at_positions(table: Tensor, steps: Tensor, end: float | None = None) -> Tensor:
    """``table`` read at grid positions ``steps``.

    ``steps`` integer: ``table[steps]``, untouched. ``steps`` floating: linear interpolation in the
    grid index (module docstring), in float64, returned in ``table``'s dtype on its device (float64
    for an integer table).
    ``end`` is the value at the position ``len(table)`` for tables that list only the ``num_steps``
    positions a model is evaluated at (e.g. a pipeline's timesteps, which stop before data): it is
    used only for positions past the table's last entry.
    """
    idx = steps.to(table.device)
    if not idx.is_floating_point():
        return table[idx]
    t = table.to(torch.float64)
    if end is not None:
        t = torch.cat([t, torch.tensor([float(end)], dtype=torch.float64, device=t.device)])
    n = len(t) - 1
    pos = idx.to(torch.float64)
    if bool(((pos < 0) | (pos > n)).any()):
        raise ValueError(f"grid positions {pos.tolist()} are out of range: need 0 <= position <= {n}")
    lo = pos.floor().long().clamp(max=n)
    hi = (lo + 1).clamp(max=n)
    frac = pos - lo.to(torch.float64)
    lower = t[lo]
    # frac == 0 keeps the entry itself: lower + 0 * (...) is lower exactly (all values are finite)
    value = lower + frac * (t[hi] - lower)
    # an integer table (e.g. a scheduler's int64 timesteps) is read as float64: rounding would lose the position
    return value.to(table.dtype) if table.is_floating_point() else value


def scalar_at(table: Tensor, position: float | int) -> Tensor:
    """``table`` at one position as a 0-d tensor in ``table``'s dtype (integer: ``table[position]``)."""
    if not is_fractional(position):
        return table[int(position)]
    return at_positions(table, torch.tensor([float(position)], dtype=torch.float64))[0]
