"""Output folders: can this process really write there? (Standard library only; eval uses it too.)

``os.access`` is not the answer: it says yes to root everywhere, including ``/proc``, and it
cannot see read-only mounts or full disks. :func:`writable_problem` instead creates and removes
a probe file in the folder, or in its nearest existing parent when the folder does not exist
yet (which is where ``mkdir(parents=True)`` would start writing). Nothing is left behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def writable_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be used as an output folder (one phrase), or None when it can."""
    target = Path(path).absolute()
    base = nearest_existing(target)
    if not base.is_dir():
        return f"{base} is not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=base)
    except OSError as e:
        return f"cannot create a file in {base}: {e.strerror or e}"
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError as e:  # created but not removable: still not a folder to write runs into
        return f"cannot remove a file in {base}: {e.strerror or e}"
    return None
