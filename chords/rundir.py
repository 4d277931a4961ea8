"""Run folders (the contract with eval, see docs/run_folders.md): naming and atomic writes."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import save_file

log = logging.getLogger(__name__)

SLUG_LEN = 48
KEY_LEN = 10

#: Top-level config keys that are the harness's own bookkeeping: where prompts come from and
#: where folders go, whether to print or recompute, how many processes to start (``ngpu``; the
#: world size actually used is part of the hardware identity). Every other top-level key, and
#: every key of the model, algo and hardware groups, is part of a run's identity.
BOOKKEEPING_KEYS = frozenset({"prompt_file", "output_base_path", "reference", "overwrite", "summary", "grid", "ngpu", "hydra",
                              "tag", "prompt"})
#: Groups that get their own entry in the identity.
IDENTITY_GROUPS = ("model", "algo", "hardware")


def prompt_slug(prompt: str) -> str:
    """Lower-case ASCII letters, digits and '_' from the prompt, at most SLUG_LEN chars."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "_", text).strip("_")[:SLUG_LEN].rstrip("_")
    return slug or "prompt"


def hardware_identity(hardware: Mapping[str, Any], world_size: int) -> dict[str, Any]:
    """The resolved hardware group plus the world size actually used.

    Keys that end in ``timeout_s`` are left out: a timeout only decides when a run is aborted,
    it never changes a finished run (its sample or its timing). ``max_batch: null`` (no
    micro-batches) is left out too: it is how every run computed before the key existed, so
    those runs keep their folders.
    """
    hw = {k: v for k, v in hardware.items() if not str(k).endswith("timeout_s") and not (k == "max_batch" and v is None)}
    hw["world_size"] = int(world_size)
    return hw


def run_identity(
    config: Mapping[str, Any],
    prompt: str,
    algo: Mapping[str, Any],
    hardware: Mapping[str, Any],
    world_size: int,
) -> dict[str, Any]:
    """Everything that can change a run's sample or its timing, from the resolved config.

    ``config``: the whole resolved config (a plain dict); ``algo``: the resolved algorithm group
    of the run (``init_t`` as the list of grid indices it resolved to); ``hardware``: the
    resolved hardware group the run used (for an in-process reference: the local backend it
    ran on). The identity is

    * ``prompt``;
    * ``model``: the whole resolved model group (seed, steps, sizes, dtype, scheduler settings,
      ``step_precision``, ``model_path``, ... - every key, present and future);
    * ``algo``: the whole resolved algorithm group (stop rule included);
    * ``hardware``: see :func:`hardware_identity`;
    * ``run``: every other top-level key except :data:`BOOKKEEPING_KEYS` (e.g. an
      experiment's ``experiment_label``); a sequential run leaves out ``experiment_label``,
      which never names the sequential row.
    """
    sequential = algo.get("algo_name") == "sequential"
    extra = {
        k: v for k, v in config.items()
        if k not in BOOKKEEPING_KEYS and k not in IDENTITY_GROUPS and not (sequential and k == "experiment_label")
    }
    return {
        "prompt": prompt,
        "model": dict(config["model"]),
        "algo": dict(algo),
        "hardware": hardware_identity(hardware, world_size),
        "run": extra,
    }


def digest(data: Any) -> str:
    """sha1 of the canonical JSON of ``data`` (sorted keys), hex."""
    blob = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def run_key(identity: Mapping[str, Any]) -> str:
    """The short key in a run folder's name: the first KEY_LEN hex chars of :func:`digest`."""
    return digest(identity)[:KEY_LEN]


def run_folder(base: str | os.PathLike, model_name: str, tag: str, identity: Mapping[str, Any]) -> Path:
    return Path(base) / str(model_name) / tag / f"{prompt_slug(identity['prompt'])}-{run_key(identity)}"


def is_complete(folder: Path) -> bool:
    stats = folder / "stats.json"
    if not stats.is_file() or not (folder / "latents.safetensors").is_file():
        return False
    try:
        json.loads(stats.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def clean_partial(folder: Path) -> None:
    """Remove temporary folders an interrupted run left next to ``folder``.

    Call it only while holding ``folder``'s :class:`FolderLock`: a live run writing ``folder``
    holds that lock, so every temporary sibling found then belongs to a run that died.
    """
    if folder.parent.is_dir():
        for tmp in folder.parent.glob(f"{folder.name}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


class FolderLock:
    """An advisory lock (``flock``) on one run folder, shared by every run writing into a tree.

    The lock file is ``{root}/.locks/{folder relative to root}.lock`` (``root``: the output
    tree, default the folder's parent; hidden: eval and globs over run folders never see it).
    The kernel drops the lock when its process dies, so a folder left incomplete by a dead run
    is free to be recomputed, while a folder another live run is writing is not touched.
    """

    def __init__(self, folder: Path, root: Path | None = None):
        self.folder = Path(folder)
        root = Path(root) if root is not None else self.folder.parent
        try:
            rel = self.folder.relative_to(root)
        except ValueError:
            rel = Path(self.folder.name)
        self.path = root / ".locks" / rel.with_name(f"{rel.name}.lock")
        self._fd: int | None = None

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock; with ``blocking=False`` return False at once if another process holds it."""
        import fcntl

        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


_STOP_SIGNALS = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold back stop signals (delivered right after the block) where the platform allows it."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def atomic_folder(folder: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``folder`` in one rename.

    An existing ``folder`` is replaced when ``overwrite`` is set or when it is incomplete (a
    partial copy, a deleted stats.json); a complete one that another writer finished first is
    kept and this run's copy is discarded (both are the same identity).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            if not overwrite and is_complete(folder):
                log.warning("%s was completed by another run meanwhile; keeping that one", folder)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = folder.with_name(f"{folder.name}.tmp-old-{os.getpid()}")
            with _signals_held():  # a stop signal between the two renames would lose both copies
                os.replace(folder, old)
                os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str), encoding="utf-8")


def save_latents(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    # clone: safetensors refuses tensors that share memory (the output is also one of the hits)
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(path))
