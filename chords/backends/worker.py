"""A worker rank: its process entry (spawned), its loop, its references, and torchrun's ranks.

A worker talks only to rank 0, and only answers: it receives a header (:mod:`chords.backends.wire`)
and does what it says until STOP. It watches rank 0's heartbeat (:class:`~chords.backends.liveness.Rank0Watch`)
and exits when rank 0 has gone, even from inside a blocked receive; a spawned worker also dies
with its parent process (:func:`die_with_parent`).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist

from chords.backends.launch import device_of, nccl_error_handling, node_of, torchrun_env
from chords.backends.liveness import Progress, Rank0Watch, bounded, store_client, store_keys
from chords.backends.local import forward
from chords.backends.shm import SharedSlots
from chords.backends.wire import Cmd, Header, empty_header, peer_gone, recv_object, send_object, share_cap
from chords.models.base import Adapter, cond_to, load_adapter_class
from chords.sysinfo import peak_rss_gb

Tensor = torch.Tensor
log = logging.getLogger(__name__)

#: a worker waits this long for rank 0 between prompts (rank 0 encodes, decodes, samples its
#: references); that it is still there is what :class:`Rank0Watch` checks
IDLE_TIMEOUT = timedelta(days=7)
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, use_pdeathsig: bool = True) -> None:
    """End this process when ``parent_pid`` (rank 0) dies, whatever way it dies.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; it fires when the parent *thread* that
    spawned us exits, so the caller passes ``use_pdeathsig`` only when that was the main
    thread. Everywhere: a daemon thread polls ``os.getppid()`` once a second (a dead parent
    re-parents us), which also covers a parent that died before the ``prctl``.
    """
    if use_pdeathsig and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watchdog below still works
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="chords-parent-watch", daemon=True).start()


def serve(adapter: Adapter, comm: torch.device, cap: int, max_batch: int | None, progress: Callable[[], None] | None = None) -> None:
    """A worker rank's loop (process group joined): rank 0's commands until STOP.

    EVAL: the header's ``n`` grid indices, then the ``[n, *S]`` states; the reply is their
    velocities from one batched forward (micro-batches of ``max_batch``) in the reply dtype.
    EVAL_SHM: the states lie in rows ``first ..`` of the shared state file; the velocities go
    into the same rows of the header's velocity area, and one "done" crosses back.
    """
    device = adapter.device
    header = empty_header(cap, comm)
    cond: Mapping[str, Tensor] = {}
    shape: tuple[int, ...] | None = None
    buffers: dict[tuple[torch.dtype, int], Tensor] = {}  # one receive buffer per (state dtype, share)
    slots: SharedSlots | None = None
    done = torch.ones(1, dtype=torch.long, device=comm)
    with torch.no_grad():
        while True:
            dist.recv(header, 0)
            h = Header.read(header)
            if h.cmd == Cmd.STOP:
                dist.send(done, 0)  # acknowledged: rank 0 may take the group down
                return
            if h.cmd == Cmd.COND:
                cond = cond_to(recv_object(0, comm), device)  # 0-d scalars stay on the host
                continue
            if h.cmd == Cmd.SHAPE:
                new_shape, paths = recv_object(0, comm)
                shape, buffers = tuple(new_shape), {}
                slots = SharedSlots(dist.get_world_size(), cap, shape, tuple(paths)) if paths else None
                dist.send(done, 0)  # mapped: rank 0 unlinks the files and writes into them from now on
                continue
            if h.cmd == Cmd.REF:
                job = recv_object(0, comm)
                send_object(run_sequential(adapter, *job, max_batch=max_batch, progress=progress), 0, comm)
                continue
            assert shape is not None, "EVAL before SHAPE"
            steps = h.steps(header).to(device)
            if h.cmd == Cmd.EVAL_SHM:
                assert slots is not None, "EVAL_SHM without shared slots"
                v = forward(adapter, slots.rows(0, h.first, h.n, h.state_dtype).to(device), steps, cond, max_batch)
                slots.rows(h.area, h.first, h.n, h.reply_dtype).copy_(v)
                dist.send(done, 0)
                continue
            x = buffers.get((h.state_dtype, h.n))
            if x is None:
                x = buffers[(h.state_dtype, h.n)] = torch.empty((h.n, *shape), dtype=h.state_dtype, device=comm)
            dist.recv(x, 0)
            v = forward(adapter, x.to(device), steps, cond, max_batch)
            dist.send(v.to(comm, h.reply_dtype).contiguous(), 0)


def run_sequential(adapter: Adapter, x0: Tensor, cond: Mapping[str, Tensor], step: Any, num_steps: int,
                   max_batch: int | None = None, progress: Callable[[], None] | None = None) -> dict[str, Any]:
    """A sequential reference on this rank's device: its hits (on the CPU), rounds, nfe and
    wall times from this rank's clock (CUDA synchronised before each reading). ``progress`` is
    called after every step (rank 0's deadline on this job moves with it)."""
    from chords.core import Sequential, sample

    device = adapter.device
    cond = cond_to(cond, device)

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def velocity(xs: Tensor, steps: Tensor) -> Tensor:
        v = forward(adapter, xs, steps, cond, max_batch)
        if progress is not None:
            progress()
        return v

    stamps: list[float] = []
    t0 = now()
    result = sample(Sequential(), velocity, x0.to(device), step, num_steps, callback=lambda hit: stamps.append(now() - t0))
    sample_s = now() - t0
    return {"hits": [(h.core, h.round, h.x.cpu()) for h in result.hits], "rounds": result.rounds, "nfe": result.nfe,
            "stopped_at": result.stopped_at, "stamps": stamps, "sample_s": sample_s}


def _join_and_serve(adapter: Adapter, rank: int, world_size: int, init_method: str, host: str, port: int,
                    dist_backend: str, device: torch.device, cap: int, max_batch: int | None, what: str) -> None:
    """Join the group (its store at ``host:port``), watch rank 0, serve until STOP, leave (the
    teardown bounded). Rank 0 having gone is one line of log and exit status 1, not a traceback."""
    nccl_error_handling(dist_backend)
    dist.init_process_group(dist_backend, init_method=init_method, rank=rank, world_size=world_size, timeout=IDLE_TIMEOUT)
    keys = store_keys()
    watch = Rank0Watch(store_client(host, port), keys + "rank0", what)
    progress = Progress(store_client(host, port), f"{keys}progress/{rank}")
    try:
        serve(adapter, torch.device("cpu") if dist_backend == "gloo" else device, cap, max_batch, progress)
        watch.close()
    except Exception as e:
        if peer_gone(e) or watch.gone:  # rank 0 has gone; it reports the cause, if it still can
            log.error("%s: rank 0 went away (%s)", what, str(e).splitlines()[0] if str(e) else type(e).__name__)
            sys.stderr.flush()
            os._exit(1)
        raise
    bounded(dist.destroy_process_group, 10.0, "destroy_process_group")


def _worker_main(rank: int, world_size: int, host: str, port: int, adapter_path: str, model_cfg: dict[str, Any],
                 device_type: str, dist_backend: str, threads: int, ready: Connection, parent_pid: int,
                 use_pdeathsig: bool, cap: int = 1, max_batch: int | None = None) -> None:
    """A spawned worker: load the denoiser, report "ok" (or the error) on ``ready``, join, serve."""
    # SIGINT was blocked when rank 0 spawned us (so a Ctrl-C during our imports is no traceback);
    # ignore it for good: rank 0 alone handles Ctrl-C and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    die_with_parent(parent_pid, use_pdeathsig)
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(message)s", stream=sys.stderr)
    if threads > 0:
        torch.set_num_threads(threads)
    device = device_of(device_type, rank)
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        adapter = load_adapter_class(adapter_path)(model_cfg, device, "denoiser")
    except Exception as e:  # reported to rank 0, which names this rank
        traceback.print_exc()
        ready.send(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": "))
        sys.exit(1)
    ready.send(("ok", peak_rss_gb()))  # rank 0 logs each rank's peak host memory after loading
    ready.close()
    _join_and_serve(adapter, rank, world_size, f"tcp://{host}:{port}", host, port, dist_backend, device, cap, max_batch,
                    f"worker rank {rank}")


def worker_entry(*args: Any) -> None:
    """The spawned worker's target: :func:`_worker_main`, quiet when rank 0 has gone away.

    When rank 0 gives up (a hung peer, a signal, a crash) it drops its connections before every
    worker has been terminated; the resulting "connection closed" in a worker is a consequence,
    not news, and rank 0 reports the cause by rank. Any other exception keeps its traceback.
    """
    try:
        _worker_main(*args)
    except Exception as e:
        if peer_gone(e):
            sys.stderr.flush()
            os._exit(1)
        raise


def serve_torchrun(
    adapter_path: str,
    model_cfg: Mapping[str, Any],
    *,
    device_type: str,
    dist_backend: str,
    num_cores: int,
    max_batch: int | None = None,
    threads_per_process: int = 1,
) -> None:
    """A non-zero rank under ``torchrun``: load the denoiser on ``cuda:LOCAL_RANK`` (or the CPU),
    join the group (``env://``) and serve rank 0 until it sends
    STOP, or exit within seconds of rank 0 going away. Writes nothing."""
    env = torchrun_env()
    if env is None:
        raise RuntimeError("serve_torchrun needs torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)")
    rank = env["rank"]
    if threads_per_process > 0 and device_type != "cuda":
        torch.set_num_threads(threads_per_process)
    device = device_of(device_type, env["local_rank"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    adapter = load_adapter_class(adapter_path)(dict(model_cfg), device, "denoiser")
    log.info("rank %d loaded model %r: peak host memory %.1f GB", rank, model_cfg.get("model_name"), peak_rss_gb())
    host, port = env["master"].rsplit(":", 1)
    _join_and_serve(adapter, rank, env["world_size"], "env://", host, int(port), dist_backend, device,
                    share_cap(num_cores, env["world_size"]), max_batch, f"rank {rank}{node_of(rank, env)}")
