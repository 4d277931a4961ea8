"""Backends: the batched velocity oracle, and all the parallelism there is.

* :class:`LocalBackend` evaluates a round in this process: ``mode="loop"`` calls the adapter
  once per state, ``mode="batched"`` once for the whole round (all cores in one forward).
* :class:`ProcessBackend` spreads a round over processes, an even share of the round's states
  per rank (``torch.distributed``; gloo on CPU, with states in shared memory on one host; NCCL
  on GPUs; spawned here or started by ``torchrun``). Rank 0 is this process: it runs the runner
  and the algorithm and evaluates the first share itself.

Both expose the same three calls, so the runner never knows which it has:
``set_condition(cond)`` once per prompt, ``velocity(xs, steps)`` once per round, ``close()``.
Neither changes a number: on CPU every rank runs with the same thread setting
(:func:`thread_setting`), and worker ranks return their velocities in the dtype rank 0's adapter
returns.
"""
from chords.backends.local import LocalBackend
from chords.backends.processes import ProcessBackend, WorkerError
from chords.backends.threads import thread_setting

__all__ = ["LocalBackend", "ProcessBackend", "WorkerError", "thread_setting"]
