"""Rank 0's link to its workers: waits with deadlines on progress, commands, stopping, and
releasing torchrun's ranks when there is nothing to sample.

:class:`Rank0Link` is the part of :class:`~chords.backends.processes.ProcessBackend` that talks
to workers without knowing what a round is: every wait goes through :meth:`Rank0Link._await`
(a helper thread completes the works, rank 0 waits on an event with its own deadline, which a
watchdog or a signal ends early: :mod:`chords.backends.liveness`).
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from chords.backends.launch import WorkerError, describe_exit, device_of, end, nccl_error_handling, node_of, torchrun_env
from chords.backends.liveness import Pending, Waiter, Watchdog, bounded
from chords.backends.wire import Cmd, command, pack, share_cap

Tensor = torch.Tensor
log = logging.getLogger(__name__)
_WAKE_S = 0.25  # how often a wait on a reference looks at the worker's progress counter


class Rank0Link:
    """Waits, commands and stopping, for a backend that sets ``world_size``, ``cap``, ``comm``,
    ``timeout``, ``env`` (torchrun's, or None), ``procs`` (spawned workers), ``_waiter``,
    ``_watchdog``, ``_event``, ``_store`` and ``_keys``."""

    world_size: int
    cap: int
    comm: torch.device
    timeout: timedelta
    env: Mapping[str, Any] | None
    procs: list[mp.Process]
    _waiter: Waiter
    _watchdog: Watchdog | None
    _event: threading.Event | None
    _store: Any
    _keys: str

    def _name(self, rank: int) -> str:
        return f"worker rank {rank}{node_of(rank, self.env)}"

    def _describe(self, rank: int) -> str:
        if rank - 1 >= len(self.procs):  # a torchrun rank: no process handle here
            return "is not answering"
        return describe_exit(self.procs[rank - 1].exitcode)

    def _wake(self) -> None:
        event = self._event
        if event is not None:
            event.set()

    def _check(self) -> None:
        """A worker the watchdog saw die is an error at rank 0's next step, named by rank."""
        failure = self._watchdog.failure if self._watchdog is not None else None
        if failure is not None:
            raise WorkerError(f"{self._name(failure[0])} {failure[1]}")

    def _progress(self, rank: int) -> int | None:
        try:
            return self._store.add(f"{self._keys}progress/{rank}", 0) if self._store is not None else None
        except Exception:  # noqa: BLE001 - the store is gone: no progress
            return None

    def _await(self, works: list[tuple[int, Any]], what: str = "answer", timeout: timedelta | None = None,
               progress: int | None = None, check: bool = True) -> None:
        """Wait for ``works`` (``(rank, work)`` pairs) with a deadline of ``timeout`` (default
        ``timeout_s``) on progress: with ``progress=rank``, the deadline moves whenever that rank's
        progress counter does. A worker's death ends the wait at once; so does a signal."""
        if check:
            self._check()
        if not works:
            return
        timeout_s = (timeout or self.timeout).total_seconds()
        pending = Pending([w for _, w in works])
        self._event = pending.event
        self._waiter.submit(pending)
        end_at, seen = time.monotonic() + timeout_s, self._progress(progress) if progress is not None else None
        try:
            while not pending.event.is_set():
                left = end_at - time.monotonic()
                if left <= 0:
                    if check:
                        self._check()
                    rank = works[pending.first_pending() or 0][0]
                    raise WorkerError(f"{self._name(rank)} did not {what} within {timeout_s:g}s ({self._describe(rank)})")
                if pending.event.wait(min(left, _WAKE_S) if progress is not None else left):
                    break
                if progress is not None and (now := self._progress(progress)) != seen:
                    seen, end_at = now, time.monotonic() + timeout_s
        finally:
            self._event = None
        if check:
            self._check()
        for (rank, work), error in zip(works, pending.errors):
            try:
                if error is not None:
                    raise error
                if self._waiter.nccl:
                    work.wait()  # orders this stream after the transfer; raises if the work failed
            except Exception as e:  # gloo: the peer's connection closed (it died)
                raise WorkerError(f"{self._name(rank)} did not {what} ({self._describe(rank)}): {str(e).splitlines()[0]}") from None

    def _post(self, op, tensor: Tensor, rank: int):
        """``dist.isend`` / ``dist.irecv``; a peer whose connection is gone (it died, or gloo closed
        the pair) is a :class:`WorkerError` naming it, not a bare RuntimeError."""
        try:
            return rank, op(tensor, rank)
        except Exception as e:
            raise WorkerError(f"{self._name(rank)} cannot be reached ({self._describe(rank)}): {str(e).splitlines()[0]}") from None

    def _send_command(self, ranks, cmd: Cmd, obj: Any = None, ack: bool = False) -> list[tuple[int, Any]]:
        """Post a command to ``ranks``: its header, then ``obj`` (size and bytes) if given, then a
        receive for a one-number answer if ``ack``. Returns the works to await."""
        header = command(cmd, self.cap, self.comm)
        packed = pack(obj, self.comm) if obj is not None else ()
        works = []
        for rank in ranks:
            works.append(self._post(dist.isend, header, rank))
            works += [self._post(dist.isend, t, rank) for t in packed]
            if ack:
                works.append(self._post(dist.irecv, torch.empty(1, dtype=torch.long, device=self.comm), rank))
        return works

    # ---------------------------------------------------------------- protocol
    def _stop(self, ranks, seconds: float, ack: bool = True) -> None:
        """STOP to ``ranks``, acknowledged within ``seconds`` (without ``ack``: the sends only)."""
        ranks = list(ranks)
        if ranks:
            self._await(self._send_command(ranks, Cmd.STOP, ack=ack), "stop", timedelta(seconds=seconds), check=False)

    def _stop_workers(self, error: bool) -> None:
        """STOP each worker (after a clean run), else end it; then SIGKILL whatever is left.

        Torchrun ranks have no handle here: each is sent STOP and acknowledges it (a rank that
        does not within seconds ends itself when rank 0's heartbeat stops)."""
        if self.env is not None:
            if dist.is_initialized():
                try:
                    # after an error a rank may be hung: it is not waited for (it ends itself once
                    # rank 0's heartbeat stops); the healthy ones take STOP and leave
                    self._stop(range(1, self.world_size), 1 if error else 30, ack=not error)
                except WorkerError:
                    if not error:
                        raise
            return
        if not self.procs:
            return
        if not error:
            try:
                self._stop([r for r, p in enumerate(self.procs, start=1) if p.is_alive()], 10)
            except WorkerError:
                error = True
        if error:
            end(self.procs)
        deadline = time.monotonic() + (5 if error else 10)
        for p in self.procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        end(self.procs, kill=True)
        for p in self.procs:
            p.join(timeout=5)


def release_torchrun_ranks(dist_backend: str, num_cores: int, timeout_s: float) -> None:
    """Global rank 0 with nothing to sample: join the group, send every other rank STOP and wait
    for each one's acknowledgement (an NCCL send may return before delivery), then leave."""
    env = torchrun_env()
    assert env is not None and env["rank"] == 0
    nccl_error_handling(dist_backend)
    dist.init_process_group(dist_backend, init_method="env://", rank=0, world_size=env["world_size"],
                            timeout=timedelta(seconds=timeout_s + 60))
    comm = torch.device("cpu") if dist_backend == "gloo" else device_of("cuda", env["local_rank"])
    waiter = Waiter(nccl=dist_backend == "nccl")
    try:
        header = command(Cmd.STOP, share_cap(num_cores, env["world_size"]), comm)
        works = []
        for rank in range(1, env["world_size"]):
            works += [dist.isend(header, rank), dist.irecv(torch.empty(1, dtype=torch.long, device=comm), rank)]
        pending = Pending(works)
        waiter.submit(pending)
        if not pending.event.wait(timeout_s) or any(e is not None for e in pending.errors):
            log.warning("not every torchrun rank acknowledged STOP within %gs (or one failed); they end when rank 0's heartbeat stops", timeout_s)
    finally:
        waiter.close()
        bounded(dist.destroy_process_group, 10.0, "destroy_process_group")
