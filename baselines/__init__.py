"""Peer methods for parallel diffusion sampling, on the same interface as CHORDS.

Every algorithm here is pure (no devices, files or printing) and is driven by
:func:`chords.core.sample`: it yields batches of ``(states, grid indices)`` for one parallel
round, receives the velocities back, and reports outputs with ``emit(core, x)``.

* :class:`Sequential` -- the one-step-per-round reference (defined in :mod:`chords.core`).
* :class:`ParaDIGMS` -- sliding-window Picard iteration (Shih et al., NeurIPS 2023).
* :class:`SRDS` -- pipelined Parareal over blocks of steps (Selvam, Merchant, Ermon, NeurIPS 2024).
"""
from chords.core import Sequential

from baselines.paradigms import ParaDIGMS
from baselines.srds import SRDS

__all__ = ["Sequential", "ParaDIGMS", "SRDS"]
