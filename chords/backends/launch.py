"""Starting and stopping worker processes: torchrun's environment, spawning with no orphan and
no noise, the start-up waits, and stop signals that reach workers blocked anywhere.

Spawned workers die with rank 0 (``PR_SET_PDEATHSIG`` on Linux, a thread polling
``os.getppid`` everywhere, and rank 0's heartbeat), ignore SIGINT (a terminal's Ctrl-C reaches
the whole process group; rank 0 alone decides), and while the backend is open a stop signal to
rank 0 (SIGINT, SIGTERM, SIGHUP) ends the workers at once through ``signal.set_wakeup_fd``, even
while rank 0's main thread is blocked, and even a worker that is stopped (SIGSTOP).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often rank 0 looks at the workers while they start
_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


class WorkerError(RuntimeError):
    """A worker rank died, failed to load, or did not answer in time."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_of(device_type: str, local_rank: int) -> torch.device:
    """A rank's device: ``cuda:LOCAL_RANK``, wrapping around when there are more ranks than GPUs
    (several ranks may share a GPU over gloo; NCCL refuses two ranks on one GPU)."""
    if device_type != "cuda":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return torch.device(f"cuda:{local_rank % count if count else local_rank}")


def nccl_error_handling(dist_backend: str) -> None:
    """NCCL: a failed or timed-out operation tears its process down instead of hanging
    (``TORCH_NCCL_ASYNC_ERROR_HANDLING=3``), unless the user chose otherwise. Set before the group
    starts (spawned workers inherit it)."""
    if dist_backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")


def describe_exit(code: int | None) -> str:
    """How a process ended, for an error message ("exited with code 3", "was killed by SIGKILL")."""
    if code is None:
        return "is alive but not answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name} (exited with code {code})"
        except ValueError:
            pass
    return f"exited with code {code}"


def torchrun_env() -> dict[str, Any] | None:
    """Rank, world size, local rank and rendezvous as ``torchrun`` sets them; None outside torchrun.

    ``node`` is the rank's node index (``torchrun`` gives every node the same number of local
    ranks, ``LOCAL_WORLD_SIZE``), used to name a rank in error messages.
    """
    env = os.environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")):
        return None
    rank, local = int(env["RANK"]), int(env["LOCAL_RANK"])
    per_node = int(env.get("LOCAL_WORLD_SIZE", "0") or 0)
    return {"rank": rank, "world_size": int(env["WORLD_SIZE"]), "local_rank": local, "local_world_size": per_node,
            "master": f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
            "node": int(env["GROUP_RANK"]) if "GROUP_RANK" in env else (rank // per_node if per_node else None)}


def node_of(rank: int, env: Mapping[str, Any] | None) -> str:
    """`` on node N`` under torchrun (homogeneous nodes), else nothing."""
    per_node = (env or {}).get("local_world_size") or 0
    return f" on node {rank // per_node}" if per_node else ""




@contextmanager
def _starting_child() -> Iterator[None]:
    """Around ``Process.start()`` and the record of the new process: no stop signal lands in between.

    A signal raised between the fork and that record would leave a child nobody terminates.
    SIGINT is blocked: it stays pending, and the child inherits the mask, so a terminal's
    Ctrl-C does not become a traceback in each worker while it imports torch (it then ignores
    SIGINT for good). SIGTERM and SIGHUP are recorded and raised again afterwards instead (a
    blocked SIGTERM would be inherited too, and would keep the child from being terminated
    while it imports). Outside the main thread there is nothing to do: signals go to the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    deferred = (signal.SIGTERM, signal.SIGHUP)
    handlers = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in deferred}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending SIGINT is raised here
        for sig in caught:
            signal.raise_signal(sig)



class StopOnSignal:
    """While open, a stop signal to this process terminates ``procs`` at once.

    Python runs signal handlers only when the main thread executes bytecode; while it is
    blocked inside a gloo/NCCL wait, a Ctrl-C would wait for that call's timeout. The C-level
    handler still writes the signal number to ``signal.set_wakeup_fd``: this thread reads it
    and terminates the workers (a stopped one too), the blocked wait fails at once, and the main
    thread's handler (KeyboardInterrupt, or the CLI's ``Interrupted``) unwinds as usual. Bytes are passed on to
    a wakeup fd installed before. A no-op outside the main thread. ``before_end`` (if set) runs
    first: the backend disarms its watchdog there, so the workers' ends are not reported as failures.
    """

    def __init__(self, procs: list[mp.Process]):
        self.procs = procs
        self.before_end: Callable[[], None] | None = None
        self._fds: tuple[int, int] | None = None
        self._previous = -1
        if threading.current_thread() is not threading.main_thread():
            return
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._fds = (r, w)
        threading.Thread(target=self._run, args=(r,), name="chords-stop-on-signal", daemon=True).start()

    def _run(self, r: int) -> None:
        try:
            while data := os.read(r, 64):
                self._forward(data)
        except OSError:
            pass
        finally:
            os.close(r)

    def _forward(self, data: bytes) -> None:
        if self._previous >= 0:
            try:
                os.write(self._previous, data)
            except OSError:
                pass
        if any(b in _STOP_SIGNALS for b in data):
            if self.before_end is not None:
                self.before_end()
            end(self.procs)

    def close(self) -> None:
        if self._fds is None:
            return
        w = self._fds[1]
        self._fds = None
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(self._previous)
        os.close(w)  # the reader sees end-of-file, closes its end and returns



def end(procs: Sequence[mp.Process], kill: bool = False) -> None:
    """SIGTERM (or SIGKILL) each live process, then SIGCONT: a stopped process (SIGSTOP) acts on a
    SIGTERM only once it runs again."""
    for p in procs:
        if p.pid is None or p.exitcode is not None:
            continue
        try:
            os.kill(p.pid, signal.SIGKILL if kill else signal.SIGTERM)
            os.kill(p.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def spawn_workers(world_size: int, target: Callable[..., None], args_of: Callable[[int, Connection, bool], tuple],
                  procs: list[mp.Process]) -> dict[Connection, int]:
    """Start ranks 1..W-1 (``target(*args_of(rank, ready_writer, main_thread))``), each appended to
    ``procs`` as soon as it exists; returns the read end of each one's ready pipe."""
    ctx = mp.get_context("spawn")
    main_thread = threading.current_thread() is threading.main_thread()
    # start multiprocessing's resource tracker now: starting it unblocks SIGINT in this thread
    # (multiprocessing.resource_tracker.ensure_running), which would undo _starting_child below
    resource_tracker.ensure_running()
    readers: dict[Connection, int] = {}
    for rank in range(1, world_size):
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=target, args=args_of(rank, writer, main_thread), daemon=True, name=f"chords-rank{rank}")
        with _starting_child():
            p.start()
            procs.append(p)
        writer.close()
        readers[reader] = rank
    return readers


def await_loaded(procs: Sequence[mp.Process], readers: dict[Connection, int], load_timeout_s: float, name: Any) -> None:
    """Wait for every worker's "ok", watching the processes: a death or an error is reported at once."""
    deadline = time.monotonic() + load_timeout_s
    pending = dict(readers)
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            rank = min(pending.values())
            raise WorkerError(f"worker rank {rank} did not load model {name!r} within {load_timeout_s:g}s "
                              f"(hardware.load_timeout_s; it {describe_exit(procs[rank - 1].exitcode)})")
        sentinels = {procs[r - 1].sentinel: conn for conn, r in pending.items()}
        for obj in wait([*pending, *sentinels], timeout=min(left, POLL_S)):
            conn = sentinels.get(obj, obj)
            if conn not in pending:
                continue
            rank = pending.pop(conn)
            msg = None
            try:
                msg = conn.recv() if conn.poll() else None
            except (EOFError, OSError):
                pass
            conn.close()
            if isinstance(msg, tuple) and msg[0] == "ok":
                log.info("worker rank %d loaded model %r: peak host memory %.1f GB", rank, name, msg[1])
                continue
            if not msg:  # its end of the pipe closed: it is exiting; let it finish so that its code is known
                procs[rank - 1].join(timeout=2)
            why = f"failed to load model {name!r}: {msg} (its traceback is above)" if msg else \
                f"died while loading model {name!r} (it {describe_exit(procs[rank - 1].exitcode)})"
            raise WorkerError(f"worker rank {rank} {why}")


def join_group(procs: Sequence[mp.Process], dist_backend: str, init_method: str, world_size: int, join_timeout_s: float,
               group_timeout: timedelta, closed: Callable[[], bool]) -> None:
    """Rank 0 joins the process group from a helper thread; this thread keeps watching the workers.
    ``closed()`` true once the join returns: given up on meanwhile, leave nothing initialised."""
    outcome: list[BaseException | None] = []

    def join() -> None:
        try:
            dist.init_process_group(dist_backend, init_method=init_method, rank=0, world_size=world_size, timeout=group_timeout)
        except BaseException as e:  # handed to the main thread
            outcome.append(e)
            return
        if closed():
            dist.destroy_process_group()
        outcome.append(None)

    thread = threading.Thread(target=join, name="chords-rendezvous", daemon=True)
    thread.start()
    deadline = time.monotonic() + join_timeout_s
    while thread.is_alive():
        thread.join(POLL_S)
        for rank, p in enumerate(procs, start=1):
            if p.exitcode is not None:
                raise WorkerError(f"worker rank {rank} died while joining the process group (it {describe_exit(p.exitcode)})")
        if thread.is_alive() and time.monotonic() > deadline:
            raise WorkerError(f"the workers did not join the process group within {join_timeout_s:g}s (hardware.timeout_s)")
    if outcome and outcome[0] is not None:
        raise WorkerError(f"the process group did not start: {str(outcome[0]).splitlines()[0]}")
