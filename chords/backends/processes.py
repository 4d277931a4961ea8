"""A round spread over processes: rank 0's side of a ``torch.distributed`` rank protocol.

Rank 0 is the calling process: it holds the full adapter (encode / decode), runs the runner
and the algorithm, and evaluates the first share of every round itself. Ranks 1..W-1 hold only
the denoiser (``role="denoiser"``): spawned here on one host, or started by ``torchrun`` on
any number of nodes (:func:`serve_torchrun`; rank r's device is ``cuda:LOCAL_RANK``).

K cores on W ranks, any K >= 1: a round of ``b`` states is cut into W consecutive shares as
even as possible, the larger first (:func:`shares`: 8 states on 3 ranks are 3-3-2; rank 0
takes states 0..2). Each rank evaluates its share in one batched forward, split into
micro-batches of ``max_batch`` states when that is set (``max_batch=1``: one state per forward,
bitwise what ``hardware=local`` computes for every model).

The pieces, one concern each (docs/backend.md tells the whole protocol):

* :mod:`chords.backends.wire`: the commands and the typed header, objects on the wire;
* :mod:`chords.backends.shm`: the shared-memory files of CPU ranks on one host;
* :mod:`chords.backends.liveness`: deadlines on progress, heartbeats, bounded teardown;
* :mod:`chords.backends.launch`: spawning, start-up waits, stop signals, torchrun's environment;
* :mod:`chords.backends.worker`: a worker's loop, its references, torchrun's ranks;
* here: :class:`ProcessBackend`, rank 0's side.

Every wait of rank 0 has a deadline (``timeout_s``) on *progress* and ends at once when a
spawned worker dies (its rank and how it ended are named) or on Ctrl-C; a reference job's
deadline moves with the worker's progress; no rank outlives rank 0 by more than ~10 s.
"""
from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta
from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from chords.backends.launch import (StopOnSignal, WorkerError, await_loaded, free_port, join_group, nccl_error_handling,
                                    node_of, spawn_workers, torchrun_env)
from chords.backends.liveness import Beacon, Waiter, Watchdog, bounded, store_client, store_keys
from chords.backends.local import forward
from chords.backends.rank0 import Rank0Link, release_torchrun_ranks
from chords.backends.shm import SHM_ITEM, SharedSlots
from chords.backends.shm import reserve as _reserve
from chords.backends.wire import WIRE_DTYPES, Cmd, Header, share_cap, unpack, wire_steps
from chords.backends.worker import run_sequential, serve, serve_torchrun, worker_entry
from chords.buffers import RoundBuffers
from chords.models.base import Adapter

__all__ = ["ProcessBackend", "WorkerError", "serve_torchrun", "release_torchrun_ranks", "torchrun_env", "share_cap",
           "shares", "node_of", "serve", "run_sequential", "SharedSlots", "WIRE_DTYPES"]

Tensor = torch.Tensor
log = logging.getLogger(__name__)


def shares(b: int, world_size: int) -> list[tuple[int, int]]:
    """Each rank's slice ``[start, end)`` of a round of ``b`` states: consecutive, as even as
    possible, the larger shares first (rank 0 included, so it is never empty). Deterministic:
    the same ``b`` and world size always give the same assignment."""
    base, extra = divmod(b, world_size)
    out, start = [], 0
    for r in range(world_size):
        n = base + (1 if r < extra else 0)
        out.append((start, start + n))
        start += n
    return out


class ProcessBackend(Rank0Link):
    """Rank 0 (this process) plus ``world_size - 1`` worker ranks: spawned here
    (``launcher="spawn"``), or started by ``torchrun`` on any number of nodes
    (``launcher="torchrun"``: world size and rendezvous from the environment; the other ranks
    run :func:`serve_torchrun`).

    A round of ``b`` states is cut by :func:`shares` into one consecutive slice per rank (rank 0
    takes the first); each rank evaluates its slice in one batched forward, in micro-batches of
    ``max_batch`` states when that is set. ``num_cores`` (K, default the world size) sizes the
    EVAL header; any K >= 1 runs on any number of ranks. Workers run with
    ``threads_per_process`` intra-op threads; run rank 0 with the same setting (the runner
    does, :func:`chords.backends.thread_setting`) and every rank computes the same bits.

    ``shared_memory`` (CPU ranks spawned here, gloo): states and velocities through shared
    memory, only headers over the sockets. ``bytes_per_round`` (the last round) and
    ``bytes_total`` count the state and velocity bytes moved between ranks, either way
    (headers aside); each round's figure is logged at DEBUG.

    :meth:`velocity` follows the buffer rule of :mod:`chords.buffers`: the velocities it returns
    are valid until its next call (they may lie in memory it reuses), and it keeps nothing of
    its input beyond the call. ``receive_after_forward`` (default True): rank 0 posts its
    receives after its own forward (on a GPU, pending NCCL receive kernels would otherwise share
    rank 0's device with its forward; on the CPU it costs nothing, bench/bench_scale.py
    ``--receive before after``), or before it.
    """

    def __init__(
        self,
        adapter: Adapter,
        adapter_path: str,
        model_cfg: Mapping[str, Any],
        world_size: int,
        *,
        device_type: str = "cpu",
        dist_backend: str = "gloo",
        timeout_s: float = 120.0,
        load_timeout_s: float = 600.0,
        threads_per_process: int = 1,
        num_cores: int | None = None,
        max_batch: int | None = None,
        launcher: str = "spawn",
        shared_memory: bool = True,
        receive_after_forward: bool | None = None,
    ):
        if launcher not in ("spawn", "torchrun"):
            raise ValueError(f"launcher {launcher!r} is invalid: use 'spawn' or 'torchrun'")
        self.env = torchrun_env() if launcher == "torchrun" else None
        if launcher == "torchrun":
            if self.env is None or self.env["rank"] != 0:
                raise ValueError("launcher='torchrun' needs torchrun's environment, and this process must be global rank 0")
            world_size = self.env["world_size"]
        if world_size < 1:
            raise ValueError(f"world_size {world_size} is invalid: it must be >= 1")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch {max_batch} is invalid: it must be >= 1 or None")
        self.adapter = adapter
        self.world_size = world_size
        self.cap = share_cap(num_cores or world_size, world_size)
        self.max_batch = max_batch
        # one host, CPU ranks (rank 0 included): states and velocities through shared memory, only headers over gloo
        self.shared_memory = bool(shared_memory) and launcher == "spawn" and dist_backend == "gloo" and device_type == "cpu" \
            and adapter.device.type == "cpu"
        self.receive_after_forward = True if receive_after_forward is None else bool(receive_after_forward)
        self._slots: SharedSlots | None = None
        self._replies = RoundBuffers(keep=2)  # each round's gathered velocities (chords.buffers)
        self.bytes_per_round = 0
        self.bytes_total = 0
        self.timeout = timedelta(seconds=timeout_s)
        self.dist_backend = dist_backend
        self.device = adapter.device
        self.comm = torch.device("cpu") if dist_backend == "gloo" else self.device
        self.cond: Mapping[str, Tensor] = {}
        self.procs: list[mp.Process] = []
        self._shape: tuple[int, ...] | None = None
        # the velocity's dtype per state dtype, as rank 0's adapter returned it (checked every round)
        self._reply_dtype: dict[torch.dtype, torch.dtype] = {}
        self._last_reply: torch.dtype | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._stop_watch: StopOnSignal | None = None
        self._waiter = Waiter(nccl=dist_backend == "nccl")
        self._event: threading.Event | None = None  # the wait in progress (the watchdog wakes it)
        self._watchdog: Watchdog | None = None
        self._beacon: Beacon | None = None
        self._store: dist.Store | None = None  # read: the workers' progress on references
        self._keys = store_keys()
        if world_size == 1:
            return
        nccl_error_handling(dist_backend)
        # our own deadlines (timeout_s) name a silent rank; the transport's must not fire first
        group_timeout = timedelta(seconds=max(load_timeout_s, timeout_s) + 60)
        try:
            if self.env is not None:
                host, port = self.env["master"].rsplit(":", 1)
                self._join_torchrun(load_timeout_s, group_timeout)
            else:
                host, port = "127.0.0.1", free_port()
                self._stop_watch = StopOnSignal(self.procs)
                readers = spawn_workers(world_size, worker_entry, lambda rank, ready, main: (
                    rank, world_size, host, port, str(adapter_path), dict(model_cfg), device_type, dist_backend,
                    threads_per_process, ready, os.getpid(), main, self.cap, max_batch), self.procs)
                await_loaded(self.procs, readers, load_timeout_s, model_cfg.get("model_name"))
                join_group(self.procs, dist_backend, f"tcp://{host}:{port}", world_size, load_timeout_s, group_timeout,
                           lambda: self._closed)
                self._watchdog = Watchdog(self.procs, self._describe, self._wake)
                self._stop_watch.before_end = self._watchdog.disarm
            self._beacon = Beacon(store_client(host, int(port)), self._keys + "rank0")
            self._store = store_client(host, int(port))
        except BaseException:
            self.close(error=True)
            raise
        if self.env is not None:
            log.info("joined %d torchrun rank(s) at %s", world_size - 1, self.env["master"])
        else:
            log.info("started %d worker process(es)", world_size - 1)

    def _join_torchrun(self, timeout_s: float, group_timeout: timedelta) -> None:
        """Global rank 0 under torchrun: join the ``env://`` group; the others load, then join."""
        try:
            dist.init_process_group(self.dist_backend, init_method="env://", rank=0, world_size=self.world_size,
                                    timeout=group_timeout)
        except Exception as e:
            raise WorkerError(f"the torchrun ranks did not join the process group at {self.env['master']} within "
                              f"{timeout_s:g}s (hardware.load_timeout_s): {str(e).splitlines()[0]}") from None

    # ---------------------------------------------------------------- waits
    def set_condition(self, cond: Mapping[str, Tensor]) -> None:
        """The prompt's conditioning, sent to every worker now (before the runner starts its
        clock), within ``timeout_s``: a stopped or dead worker is named, never waited on forever."""
        self.cond = cond
        if self.world_size == 1:
            return
        cond_cpu = {k: v.detach().cpu() for k, v in cond.items()}
        self._await(self._send_command(range(1, self.world_size), Cmd.COND, cond_cpu), "take the conditioning")

    def _announce_shape(self, shape: tuple[int, ...]) -> None:
        """A new state shape: the shared-memory files for it (CPU ranks), named to every worker;
        unlinked as soon as every worker has mapped them (or has failed to)."""
        self._slots = None
        if self.shared_memory:
            try:
                self._slots = SharedSlots(self.world_size, self.cap, shape, reserve=lambda p, s: _reserve(p, s))
            except OSError as e:
                log.warning("no room in shared memory for the rounds of a %s latent (%s): this prompt's states and "
                            "velocities cross the sockets", "x".join(map(str, shape)), e)
        paths = list(self._slots.paths) if self._slots is not None else None
        try:
            self._await(self._send_command(range(1, self.world_size), Cmd.SHAPE, (list(shape), paths), ack=True),
                        "map the shared memory" if paths else "take the state shape")
        finally:
            if self._slots is not None:
                self._slots.unlink()
        self._shape = shape

    def stage(self, b: int, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor | None:
        """Where :func:`chords.core.sample` may stack a round of ``b`` states: rows ``0 .. b-1``
        of the shared state file, so that :meth:`velocity` copies nothing (its workers read their
        rows there). None when that would not help: no shared memory (yet) for this shape, a
        dtype wider than a slot, or a round rank 0 evaluates alone. (The rows are overwritten by
        the next round: the buffer rule of :mod:`chords.buffers`.)"""
        slots = self._slots
        if slots is None or self._shape != tuple(shape) or dtype.itemsize > SHM_ITEM or not 1 <= b <= self.world_size * self.cap:
            return None
        if all(hi == lo for lo, hi in shares(b, self.world_size)[1:]):
            return None
        return slots.rows(0, 0, b, dtype)

    @torch.no_grad()
    def velocity(self, xs: Tensor, steps: Tensor) -> Tensor:
        b = xs.shape[0]
        if b > self.world_size * self.cap:
            raise ValueError(f"{b} evaluations in one round but at most {self.world_size * self.cap} "
                             f"({self.cap} on each of {self.world_size} process(es))")
        parts = shares(b, self.world_size)
        busy = [r for r in range(1, self.world_size) if parts[r][1] > parts[r][0]]
        if busy and self._shape != tuple(xs.shape[1:]):
            self._announce_shape(tuple(xs.shape[1:]))
        # the reply dtype: what rank 0's adapter returned for this state dtype; for a new state
        # dtype, a guess (the last velocity's dtype), checked against rank 0's own share below
        reply = self._reply_dtype.get(xs.dtype, self._last_reply or xs.dtype)
        slots = self._slots if busy and xs.dtype.itemsize <= SHM_ITEM and reply.itemsize <= SHM_ITEM else None
        # sample() stacked the round straight into the shared file (stage()): nothing to copy
        staged = slots is not None and xs.is_contiguous() and xs.data_ptr() == slots.bufs[0].data_ptr()
        area = slots.next_area() if slots is not None else 0
        cmd = Cmd.EVAL_SHM if slots is not None else Cmd.EVAL
        codes = WIRE_DTYPES.index(xs.dtype), WIRE_DTYPES.index(reply)
        grid, positions = wire_steps(steps)
        rows = [Header(cmd, hi - lo, *codes, lo, area, positions).row(grid[lo:hi], self.cap) for lo, hi in parts]
        headers = torch.tensor(rows, dtype=torch.long).to(self.comm)
        works, replies, moved = [], [], 0
        for r in busy:  # each worker is signalled as soon as its share is in place, before rank 0's forward
            lo, hi = parts[r]
            if slots is not None:  # the states in rows lo..hi of the shared file; a header; an empty "done" back
                if not staged:
                    slots.rows(0, lo, hi - lo, xs.dtype).copy_(xs[lo:hi])
                works.append(self._post(dist.isend, headers[r], r))
                replies.append((r, torch.empty(1, dtype=torch.long, device=self.comm)))
                moved += (hi - lo) * slots.numel * (xs.dtype.itemsize + reply.itemsize)
                continue
            state = xs[lo:hi].to(self.comm).contiguous()
            works += [self._post(dist.isend, headers[r], r), self._post(dist.isend, state, r)]
            replies.append((r, torch.empty((hi - lo, *xs.shape[1:]), dtype=reply, device=self.comm)))
            moved += state.numel() * state.element_size() + replies[-1][1].numel() * replies[-1][1].element_size()
        if not self.receive_after_forward:
            works += [self._post(dist.irecv, out, r) for r, out in replies]
        lo, hi = parts[0]
        v0 = forward(self.adapter, xs[lo:hi], steps[lo:hi], self.cond, self.max_batch)
        if self.receive_after_forward:
            works += [self._post(dist.irecv, out, r) for r, out in replies]
        self._await(works)
        self._reply_dtype[xs.dtype] = self._last_reply = v0.dtype
        if not busy:
            return v0
        if v0.dtype != reply:  # a wrong guess: the workers cast their velocities; ask again, now known
            return self.velocity(xs, steps)
        self.bytes_per_round = moved
        self.bytes_total += moved
        log.debug("round of %d state(s) on %d rank(s): %d bytes moved (%s)", b, len(busy) + 1, moved,
                  "shared memory" if slots is not None else "sockets")
        if slots is not None:
            # every rank's rows side by side in the velocity area: rank 0's copied in, returned as they lie
            slots.rows(area, 0, len(v0), reply).copy_(v0)
            return slots.rows(area, 0, b, reply)
        parts_v = [v0, *(out.to(v0.device) for _, out in replies)]
        if any(o.dtype != v0.dtype for o in parts_v):
            return torch.cat(parts_v)
        out = self._replies.get(b, tuple(v0.shape[1:]), v0.dtype, v0.device, self.world_size * self.cap)
        return torch.cat(parts_v, out=out)

    # ---------------------------------------------------------------- references on every rank
    def start_sequential(self, rank: int, x0: Tensor, cond: Mapping[str, Tensor], step: Any, num_steps: int) -> None:
        """Have worker ``rank`` (>= 1) sample a sequential reference by itself; collect it with
        :meth:`finish_sequential`. Meanwhile rank 0 is free (to sample its own reference)."""
        job = (x0.detach().cpu(), {k: v.detach().cpu() for k, v in cond.items()}, step, int(num_steps))
        self._await(self._send_command([rank], Cmd.REF, job), "take a reference job")

    def finish_sequential(self, rank: int, num_steps: int) -> dict[str, Any]:
        """The reference started on ``rank``: hits, rounds, nfe, stamps and sample_s (see
        :func:`run_sequential`). The deadline is on progress: ``timeout_s`` without a step done."""
        size = torch.zeros(1, dtype=torch.long, device=self.comm)
        self._await([self._post(dist.irecv, size, rank)], "make progress on its reference", progress=rank)
        data = torch.empty(int(size.item()), dtype=torch.uint8, device=self.comm)
        self._await([self._post(dist.irecv, data, rank)], "return its reference")
        return unpack(data)

    # ---------------------------------------------------------------- teardown
    def close(self, error: bool = False) -> None:
        """STOP every worker (acknowledged), or end them after an error; then leave the group,
        bounded: nothing here waits more than seconds, whatever state the workers are in."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._watchdog is not None:
            self._watchdog.disarm()
            error = error or self._watchdog.failure is not None
        if self._slots is not None:
            self._slots.unlink()
        try:
            self._stop_workers(error)
        finally:
            for part in (self._stop_watch, self._beacon, self._waiter):
                if part is not None:
                    part.close()
            if dist.is_initialized() and not bounded(dist.destroy_process_group, 10.0, "destroy_process_group"):
                try:  # NCCL: pending receives of a dead peer keep the group from going; abort it
                    dist.distributed_c10d._abort_process_group()
                except Exception:  # noqa: BLE001 - nothing more to release
                    pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(error=exc_type is not None)
