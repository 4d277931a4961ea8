"""Shared-memory files for the rounds of CPU ranks on one host (the process backend's EVAL_SHM).

Three files under /dev/shm: the round's states, and two velocity areas used in turn, each one
contiguous ``[b, *shape]`` array from the start of its file (rank r's share: its rows
``shares(b, W)[r]``, so rank 0 can stack a whole round straight into the state file).

Lifetime: rank 0 creates the files when a round first needs them (its state shape changed),
names them to every worker (SHAPE), and unlinks them as soon as every worker has acknowledged
mapping them, before any round uses them: from then on only the mappings exist, and nothing is
left on disk whatever way any process ends later. Only a rank 0 killed in the milliseconds
between creating the files and the last acknowledgement leaves them behind.

Buffer rule (:mod:`chords.buffers`): the states of a round are valid for that round, the
velocities returned from an area until the next round; the two areas take turns, so a round
never writes into the velocities the previous round returned.
"""
from __future__ import annotations

import os
import tempfile
import uuid

import torch

Tensor = torch.Tensor

#: bytes per element of a slot: float32, bfloat16 and float16 states and velocities travel
#: through shared memory, float64 ones over the socket
SHM_ITEM = 4


def reserve(paths: tuple[str, ...], size: int) -> None:
    """Create the files of ``size`` bytes with their pages allocated (``posix_fallocate``), or
    remove what was made and raise ``OSError`` (no space: a small /dev/shm, Docker's is 64 MB)."""
    made = []
    try:
        for path in paths:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            made.append(path)
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, size)
                else:
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)
    except OSError:
        for path in made:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        raise


class SharedSlots:
    """A round's states and velocities in shared memory (see the module's docstring). Each file
    holds ``world_size * cap`` states of ``shape`` at up to :data:`SHM_ITEM` bytes each.

    Rank 0 passes ``reserve`` (it creates the files, pages reserved, so a /dev/shm too small is
    an ``OSError`` at once, not a SIGBUS later); a worker passes rank 0's ``paths`` and maps them."""

    FILES = ("states", "velocities-a", "velocities-b")

    def __init__(self, world_size: int, cap: int, shape: tuple[int, ...], paths: tuple[str, ...] | None = None,
                 reserve=reserve):
        self.shape = tuple(shape)
        self.numel = 1
        for d in self.shape:
            self.numel *= int(d)
        self.slot = int(cap) * self.numel * SHM_ITEM
        created = paths is None
        if created:
            root = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
            tag = f"chords-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            paths = tuple(os.path.join(root, f"{tag}-{name}") for name in self.FILES)
            reserve(paths, world_size * self.slot)
        else:  # a worker maps rank 0's files; it never creates one (that would be a file nobody unlinks)
            for path in paths:
                if not os.path.exists(path):
                    raise FileNotFoundError(f"shared-memory file {path} is gone")
        self.paths = tuple(paths)
        try:
            self.bufs = [torch.from_file(path, shared=True, size=world_size * self.slot, dtype=torch.uint8) for path in paths]
        except BaseException:
            self.linked = created  # rank 0's files go with the failure; a worker's are rank 0's to remove
            self.unlink()
            raise
        self.linked = created
        self._last_area = 2

    def next_area(self) -> int:
        """The velocity area (1 or 2) for the next round: not the one the previous round returned."""
        self._last_area = 3 - self._last_area
        return self._last_area

    def rows(self, which: int, lo: int, n: int, dtype: torch.dtype) -> Tensor:
        """Rows ``lo .. lo + n - 1`` of the round's ``[b, *shape]`` states (0) or velocities (1, 2),
        one contiguous ``dtype`` array from the start of the file."""
        start = lo * self.numel * dtype.itemsize
        return self.bufs[which][start : start + n * self.numel * dtype.itemsize].view(dtype).view(n, *self.shape)

    def unlink(self) -> None:
        """Remove the files (the mappings stay valid in every process that has them)."""
        if not self.linked:
            return
        self.linked = False
        for path in self.paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
