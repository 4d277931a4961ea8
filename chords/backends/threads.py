"""One thread setting for every rank: CPU numbers must not depend on who computed them.

PyTorch's CPU kernels split their work by the number of intra-op threads, and some of them
(reductions, attention, some matrix products) then add in a different order: measured on the
tiny models in float32, one state's velocity differs by ~2e-6 between 1 and 2 threads
(tiny-sd3-5, tiny-wan2-1). Making every kernel thread-independent is not in our hands, so the
harness runs every rank with the same setting instead: on CPU, rank 0 (the runner, its
sequential reference, the ``local`` and ``batched`` backends) and every worker rank use
``hardware.threads_per_process`` intra-op threads (default 1; 0 leaves torch's default, which
then depends on the machine). With the same setting, ``hardware=cpu`` (processes),
``hardware=local`` and the in-process sequential reference give bit-identical velocities.
Batching several states into one forward (``hardware=batched``) changes the matrix shapes and so
may still change the last bits (see the README); GPUs are not affected by this setting.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def thread_setting(threads: int, device_type: str = "cpu") -> Iterator[None]:
    """Run a block with ``threads`` intra-op threads (CPU only; 0 = unchanged), restoring the old value after."""
    if device_type == "cuda" or threads <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
