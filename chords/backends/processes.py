"""A round spread over processes: a ``torch.distributed`` rank protocol.

Rank 0 is the calling process: it holds the full adapter (encode / decode), runs the runner
and the algorithm, and evaluates the first share of every round itself. Ranks 1..W-1 hold only
the denoiser (``role="denoiser"``): spawned here on one host, or started by ``torchrun`` on
any number of nodes (:func:`serve_torchrun`; rank r's device is ``cuda:LOCAL_RANK``).

K cores on W ranks, any K >= 1: a round of ``b`` states is cut into W consecutive shares as
even as possible, the larger first (:func:`shares`: 8 states on 3 ranks are 3-3-2; rank 0
takes states 0..2). Each rank evaluates its share in one batched forward, split into
micro-batches of ``max_batch`` states when that is set (``max_batch=1``: one state per forward,
bitwise what ``hardware=local`` computes for every model).

Protocol (point-to-point, rank 0 <-> rank r; messages between a pair arrive in order):

* start-up (spawned workers): worker r loads its adapter and reports ``"ok"`` (or its error)
  on a pipe; rank 0 polls those pipes and the process handles, so a worker that dies or fails
  while loading is reported at once by rank, one that hangs after ``load_timeout_s``. Only
  then do the ranks join the process group (rank 0 joins from a helper thread, still polling).
  Under torchrun every rank loads, then joins ``env://`` within ``load_timeout_s``.
* ``COND`` (once per prompt): header ``[COND, 0, 0, 0, ...]`` then ``send_object_list([cond,
  shape, dtype])``; ``cond`` travels on the CPU and each worker moves it to its device.
* ``EVAL`` (per round, only to ranks with a non-empty share): header ``[EVAL, n, state dtype,
  reply dtype, first row, area, step_0 .. step_{cap-1}]`` (dtypes as indices into ``WIRE_DTYPES``;
  the first row is the share's index in the round; the area is 0 here, see ``EVAL_SHM``;
  ``cap`` = ceil(K / W), the largest share),
  then the ``[n, *S]`` states; the worker answers with their
  velocities in the reply dtype. Nothing else crosses per round. The state dtype travels every
  round because it can change within a prompt (with ``step_precision: model`` HunyuanVideo and
  Wan start from float32 noise and step to bf16, and a round mixing both is stacked in float32,
  which is exact). The reply dtype is what rank 0's own adapter returns for such a state, so
  every rank's velocity crosses back unchanged, dtype included (CogVideoX returns float32
  velocities for bf16 states). Rank 0 learns it from its own share of every round; for a
  state dtype it has not evaluated yet it guesses (the last velocity's dtype) and, if its
  share shows the guess wrong, asks the workers again: never a changed number, at most one
  extra round, and no extra wait otherwise.
* ``EVAL_SHM`` (CPU ranks spawned on one host, gloo; the default there): the same header, but
  the round's states lie in a shared-memory file as one ``[b, *S]`` array (:class:`SharedSlots`,
  named in the COND message, which every worker then acknowledges; unlinked after the first
  round): :func:`chords.core.sample` stacks the round straight into it
  (:meth:`ProcessBackend.stage`), or rank 0 copies each share there; the worker reads its rows,
  writes its velocities into the same rows of the velocity area the header names (1 or 2: the
  two velocity files take turns, so the velocities rank 0 returns, where they lie, are never
  overwritten while in use) and answers with one 8-byte "done": no tensor crosses a socket.
  Every worker is signalled before rank 0 runs its own share's forward. float64 states or velocities (wider than 4 bytes) take the ``EVAL`` path,
  and so does a round while a tensor from an earlier round still uses the state file, or both
  velocity areas.
* ``REF``: header, then a pickled ``(x0, cond, step, num_steps)``; the worker samples that
  sequential reference alone and answers with its hits, rounds and wall times
  (:meth:`ProcessBackend.start_sequential`).
* ``STOP``: header ``[STOP, 0, 0, 0, ...]``; the worker leaves its loop and exits.

Rank 0 waits on every reply with a timeout; a worker that died or stopped answering raises
:class:`WorkerError` naming its rank (and its node under torchrun), and :meth:`close` leaves
no spawned process behind.

No orphans, no noise: spawned workers die with rank 0 (``PR_SET_PDEATHSIG`` on Linux, and a
thread polling ``os.getppid`` everywhere), ignore SIGINT (a terminal's Ctrl-C reaches the
whole process group; rank 0 alone decides), and while the backend is open a stop signal to
rank 0 (SIGINT, SIGTERM, SIGHUP) terminates the workers at once through
``signal.set_wakeup_fd``, even while rank 0's main thread is blocked inside a collective. The
same protocol runs on GPUs with ``dist_backend="nccl"`` and ``device_type="cuda"``.
"""
from __future__ import annotations

import ctypes
import io
import logging
import os
import signal
import socket
import tempfile
import uuid
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from datetime import timedelta
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from chords.backends.local import forward
from chords.buffers import RoundBuffers, unshared
from chords.models.base import Adapter, load_adapter_class

Tensor = torch.Tensor
log = logging.getLogger(__name__)

STOP, EVAL, COND, REF, EVAL_SHM = 0, 1, 2, 3, 4
#: bytes per element of a shared-memory slot: float32, bfloat16 and float16 states and velocities
#: travel through it; float64 ones over the socket
_SHM_ITEM = 4
#: EVAL header fields before the grid indices: command, share size, state dtype, reply dtype, first
#: row, velocity area (EVAL_SHM: which of the two shared velocity files takes the replies)
_HEAD = 6
#: dtypes a state or a velocity may have on the wire; an EVAL header names them by index
WIRE_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_IDLE_TIMEOUT = timedelta(days=7)  # workers wait this long for rank 0 between prompts
_POLL_S = 0.2  # how often rank 0 looks at the workers while they start
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


class WorkerError(RuntimeError):
    """A worker rank died, failed to load, or did not answer in time."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device(device_type: str, local_rank: int) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if device_type == "cuda" else torch.device("cpu")


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


def share_cap(num_cores: int, world_size: int) -> int:
    """The most states one rank evaluates in a round of ``num_cores``."""
    return max(1, -(-int(num_cores) // int(world_size)))


class SharedSlots:
    """A round's states and velocities in shared memory (three files under /dev/shm: the states,
    and two velocity areas used in turn), each one contiguous ``[b, *shape]`` array from the
    start of its file (rank r's share: its rows).

    The velocities of a round are returned to the algorithm as they lie in their area, rank 0's
    share copied in beside the workers' (no gather): the next round takes the other area, or
    this one again once nothing refers to it (:func:`chords.buffers.unshared`), so a velocity an
    algorithm keeps never changes.

    Rank 0 creates them when it sends a prompt's conditioning and names them in that message;
    each worker maps them and acknowledges; only then does rank 0 write into them, and it
    unlinks the files after the first round that used them, so nothing is left on disk even if
    a process is killed later (only a rank 0 killed with SIGKILL between creating them and the
    end of that round leaves the files behind). Each file holds ``world_size * cap`` states of
    ``shape`` at up to ``_SHM_ITEM`` bytes each. Rank 0 reserves the files' pages when it creates
    them (``posix_fallocate``), so a /dev/shm too small for them (Docker's default is 64 MB) is an
    ``OSError`` there, and the prompt's rounds cross the sockets instead, not a SIGBUS later.
    """

    FILES = ("states", "velocities-a", "velocities-b")

    def __init__(self, world_size: int, cap: int, shape: tuple[int, ...], paths: tuple[str, ...] | None = None):
        self.shape = tuple(shape)
        self.numel = 1
        for d in self.shape:
            self.numel *= int(d)
        self.slot = int(cap) * self.numel * _SHM_ITEM
        if paths is None:
            root = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
            tag = f"chords-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            paths = tuple(os.path.join(root, f"{tag}-{name}") for name in self.FILES)
            _reserve(paths, world_size * self.slot)
        else:  # a worker maps rank 0's files; it never creates one (that would be a file nobody unlinks)
            for path in paths:
                if not os.path.exists(path):
                    raise FileNotFoundError(f"shared-memory file {path} is gone")
        self.paths = tuple(paths)
        self.bufs = [torch.from_file(path, shared=True, size=world_size * self.slot, dtype=torch.uint8) for path in paths]
        self.linked = True

    def free_area(self) -> int | None:
        """A velocity area (1 or 2) that nothing refers to any more, or None."""
        for which in (1, 2):
            if unshared(self.bufs[which]):
                return which
        return None

    def rows(self, which: int, lo: int, n: int, dtype: torch.dtype) -> Tensor:
        """Rows ``lo .. lo + n - 1`` of the round's ``[b, *shape]`` states (0) or velocities (1, 2),
        stored as one contiguous ``dtype`` array from the start of the file: rank r's share is
        rows ``shares(b, W)[r]``, so rank 0 can stack a whole round straight into the file."""
        start = lo * self.numel * dtype.itemsize
        return self.bufs[which][start : start + n * self.numel * dtype.itemsize].view(dtype).view(n, *self.shape)

    def unlink(self) -> None:
        if not self.linked:
            return
        self.linked = False
        for path in self.paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _reserve(paths: tuple[str, ...], size: int) -> None:
    """Create the files of ``size`` bytes with their pages allocated (``posix_fallocate``), or
    remove what was made and raise ``OSError`` (no space: a small /dev/shm)."""
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


def _worker_main(
    rank: int,
    world_size: int,
    init_method: str,
    adapter_path: str,
    model_cfg: dict[str, Any],
    device_type: str,
    dist_backend: str,
    threads: int,
    ready: Connection,
    parent_pid: int,
    use_pdeathsig: bool,
    cap: int = 1,
    max_batch: int | None = None,
) -> None:
    # SIGINT was blocked when rank 0 spawned us (so a Ctrl-C during our imports is no traceback);
    # ignore it for good: rank 0 alone handles Ctrl-C and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    die_with_parent(parent_pid, use_pdeathsig)
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(message)s", stream=sys.stderr)
    if threads > 0:
        torch.set_num_threads(threads)
    device = _device(device_type, rank)
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        adapter = load_adapter_class(adapter_path)(model_cfg, device, "denoiser")
    except Exception as e:  # reported to rank 0, which names this rank
        traceback.print_exc()
        ready.send(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": "))
        sys.exit(1)
    ready.send("ok")
    ready.close()
    dist.init_process_group(dist_backend, init_method=init_method, rank=rank, world_size=world_size, timeout=_IDLE_TIMEOUT)
    serve(adapter, torch.device("cpu") if dist_backend == "gloo" else device, cap, max_batch)
    dist.destroy_process_group()


def serve(adapter: Adapter, comm: torch.device, cap: int, max_batch: int | None) -> None:
    """A worker rank's loop (process group joined): COND, EVAL and STOP from rank 0, until STOP.

    EVAL header: ``[EVAL, n, state dtype, reply dtype, first row, area, step_0 .. step_{cap-1}]`` (the
    grid indices of this rank's ``n`` states), then the ``[n, *S]`` states; the reply is their
    ``[n, *S]`` velocities from one batched forward (micro-batches of ``max_batch``).
    """
    device = adapter.device
    header = torch.zeros(_HEAD + cap, dtype=torch.long, device=comm)
    cond: Mapping[str, Tensor] = {}
    shape: tuple[int, ...] | None = None
    buffers: dict[tuple[torch.dtype, int], Tensor] = {}  # one receive buffer per (state dtype, share)
    slots: SharedSlots | None = None
    done = torch.ones(1, dtype=torch.long, device=comm)
    with torch.no_grad():
        while True:
            dist.recv(header, 0)
            cmd, n = int(header[0]), int(header[1])
            if cmd == STOP:
                break
            if cmd == COND:
                msg: list[Any] = [None, None, None, None]
                dist.recv_object_list(msg, 0, device=comm)
                cond = {k: v.to(device) for k, v in msg[0].items()}
                shape, buffers = tuple(msg[1]), {}
                slots = SharedSlots(dist.get_world_size(), cap, shape, tuple(msg[3])) if msg[3] else None
                if slots is not None:  # mapped: rank 0 may write into the slots (and unlink the files) from now on
                    dist.send(done, 0)
                continue
            if cmd == REF:
                job = _recv_object(0, comm)
                _send_object(run_sequential(adapter, *job, max_batch=max_batch), 0, comm)
                continue
            assert shape is not None, "EVAL before COND"
            state_dtype, reply_dtype = WIRE_DTYPES[int(header[2])], WIRE_DTYPES[int(header[3])]
            if cmd == EVAL_SHM:  # states and velocities in this rank's shared slots; only a signal on the socket
                assert slots is not None, "EVAL_SHM without shared slots"
                lo = int(header[4])
                v = forward(adapter, slots.rows(0, lo, n, state_dtype).to(device), header[_HEAD : _HEAD + n].to(device), cond, max_batch)
                slots.rows(int(header[5]), lo, n, reply_dtype).copy_(v)
                dist.send(done, 0)
                continue
            x = buffers.get((state_dtype, n))
            if x is None:
                x = buffers[(state_dtype, n)] = torch.empty((n, *shape), dtype=state_dtype, device=comm)
            dist.recv(x, 0)
            v = forward(adapter, x.to(device), header[_HEAD : _HEAD + n].to(device), cond, max_batch)
            dist.send(v.to(comm, reply_dtype).contiguous(), 0)


def _send_object(obj: Any, rank: int, comm: torch.device) -> None:
    """Pickle ``obj`` (tensors on the CPU) and send its size, then its bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    dist.send(torch.tensor([data.numel()], dtype=torch.long, device=comm), rank)
    dist.send(data.to(comm), rank)


def _recv_object(rank: int, comm: torch.device, timeout: timedelta | None = None) -> Any:
    """The counterpart of :func:`_send_object`; with ``timeout``, the size is awaited that long."""
    size = torch.zeros(1, dtype=torch.long, device=comm)
    work = dist.irecv(size, rank)
    ok = work.wait(timeout) if timeout is not None else work.wait()
    if ok is False:
        raise TimeoutError(f"no answer within {timeout}")
    data = torch.empty(int(size[0]), dtype=torch.uint8, device=comm)
    dist.recv(data, rank)
    return torch.load(io.BytesIO(data.cpu().numpy().tobytes()), weights_only=False)


def run_sequential(adapter: Adapter, x0: Tensor, cond: Mapping[str, Tensor], step: Any, num_steps: int,
                   max_batch: int | None = None) -> dict[str, Any]:
    """A sequential reference on this rank's device: its hits (on the CPU), rounds, nfe and
    wall times from this rank's clock (CUDA synchronised before each reading)."""
    from chords.core import Sequential, sample

    device = adapter.device
    cond = {k: v.to(device) for k, v in cond.items()}

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    stamps: list[float] = []
    t0 = now()
    result = sample(Sequential(), lambda xs, steps: forward(adapter, xs, steps, cond, max_batch), x0.to(device), step,
                    num_steps, callback=lambda hit: stamps.append(now() - t0))
    sample_s = now() - t0
    return {"hits": [(h.core, h.round, h.x.cpu()) for h in result.hits], "rounds": result.rounds, "nfe": result.nfe,
            "stopped_at": result.stopped_at, "stamps": stamps, "sample_s": sample_s}


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
    join the group (``env://``) and serve rank 0 until it sends STOP. Writes nothing."""
    env = torchrun_env()
    if env is None:
        raise RuntimeError("serve_torchrun needs torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)")
    rank = env["rank"]
    if threads_per_process > 0 and device_type != "cuda":
        torch.set_num_threads(threads_per_process)
    device = _device(device_type, env["local_rank"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    adapter = load_adapter_class(adapter_path)(dict(model_cfg), device, "denoiser")
    # as spawned workers: wait for rank 0 as long as it takes between prompts (it encodes, decodes,
    # samples references); rank 0 bounds every round itself, and a rank 0 that dies closes our sockets
    dist.init_process_group(dist_backend, init_method="env://", rank=rank, world_size=env["world_size"], timeout=_IDLE_TIMEOUT)
    try:
        serve(adapter, torch.device("cpu") if dist_backend == "gloo" else device, share_cap(num_cores, env["world_size"]), max_batch)
    except RuntimeError as e:
        if any(phrase in str(e) for phrase in _PEER_GONE):  # rank 0 has gone; it reports the cause
            log.error("rank %d%s: rank 0 went away (%s)", rank, node_of(rank, env), str(e).splitlines()[0])
            raise SystemExit(1) from None
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def release_torchrun_ranks(dist_backend: str, num_cores: int, timeout_s: float) -> None:
    """Global rank 0 with nothing to sample: join the group and send every other rank STOP."""
    env = torchrun_env()
    assert env is not None and env["rank"] == 0
    dist.init_process_group(dist_backend, init_method="env://", rank=0, world_size=env["world_size"],
                            timeout=timedelta(seconds=timeout_s))
    try:
        device = torch.device("cpu") if dist_backend == "gloo" else torch.device(f"cuda:{env['local_rank']}")
        header = torch.zeros(_HEAD + share_cap(num_cores, env["world_size"]), dtype=torch.long, device=device)
        for rank in range(1, env["world_size"]):
            dist.send(header, rank)  # STOP == 0
    finally:
        dist.destroy_process_group()


_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused")


def _worker_entry(*args: Any) -> None:
    """The worker process's target: :func:`_worker_main`, quiet when rank 0 has gone away.

    A worker talks only to rank 0. When rank 0 gives up (a hung peer, a signal, a crash) it
    drops its connections before every worker has been terminated; the resulting "connection
    closed" in a worker is a consequence, not news, and rank 0 reports the cause by rank. Any
    other exception keeps its traceback.
    """
    try:
        _worker_main(*args)
    except RuntimeError as e:
        if any(phrase in str(e) for phrase in _PEER_GONE):
            sys.stderr.flush()
            os._exit(1)
        raise


class _StopOnSignal:
    """While open, a stop signal to this process terminates ``procs`` at once.

    Python runs signal handlers only when the main thread executes bytecode; while it is
    blocked inside a gloo/NCCL wait, a Ctrl-C would wait for that call's timeout. The C-level
    handler still writes the signal number to ``signal.set_wakeup_fd``: this thread reads it
    and terminates the workers, the blocked wait fails at once, and the main thread's handler
    (KeyboardInterrupt, or the CLI's ``Interrupted``) unwinds as usual. Bytes are passed on to
    a wakeup fd installed before. A no-op outside the main thread.
    """

    def __init__(self, procs: list[mp.Process]):
        self.procs = procs
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
            for p in self.procs:
                p.terminate()

    def close(self) -> None:
        if self._fds is None:
            return
        w = self._fds[1]
        self._fds = None
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(self._previous)
        os.close(w)  # the reader sees end-of-file, closes its end and returns


class ProcessBackend:
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
        self._stop_watch: _StopOnSignal | None = None
        if world_size == 1:
            return
        name = model_cfg.get("model_name")
        if self.env is not None:
            try:
                self._join_torchrun(load_timeout_s)
            except BaseException:
                self.close(error=True)
                raise
            log.info("joined %d torchrun rank(s) at %s", world_size - 1, self.env["master"])
            return
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        try:
            self._stop_watch = _StopOnSignal(self.procs)
            readers = self._spawn(init_method, adapter_path, model_cfg, device_type, threads_per_process)
            self._await_loaded(readers, load_timeout_s, name)
            self._join_group(init_method, load_timeout_s)
        except BaseException:
            self.close(error=True)
            raise
        log.info("started %d worker process(es)", world_size - 1)

    # ---------------------------------------------------------------- start-up
    def _spawn(self, init_method: str, adapter_path: str, model_cfg: Mapping[str, Any], device_type: str, threads: int) -> dict[Connection, int]:
        """Start ranks 1..W-1; returns the read end of each one's ready pipe."""
        ctx = mp.get_context("spawn")
        main_thread = threading.current_thread() is threading.main_thread()
        # start multiprocessing's resource tracker now: starting it unblocks SIGINT in this thread
        # (multiprocessing.resource_tracker.ensure_running), which would undo _starting_child below
        resource_tracker.ensure_running()
        readers: dict[Connection, int] = {}
        for rank in range(1, self.world_size):
            reader, writer = ctx.Pipe(duplex=False)
            p = ctx.Process(
                target=_worker_entry,
                args=(rank, self.world_size, init_method, str(adapter_path), dict(model_cfg), device_type, self.dist_backend,
                      threads, writer, os.getpid(), main_thread, self.cap, self.max_batch),
                daemon=True,
                name=f"chords-rank{rank}",
            )
            with _starting_child():
                p.start()
                self.procs.append(p)
            writer.close()
            readers[reader] = rank
        return readers

    def _await_loaded(self, readers: dict[Connection, int], load_timeout_s: float, name: Any) -> None:
        """Wait for every worker's "ok", watching the processes: a death or an error is reported at once."""
        deadline = time.monotonic() + load_timeout_s
        pending = dict(readers)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                rank = min(pending.values())
                raise WorkerError(f"worker rank {rank} did not load model {name!r} within {load_timeout_s:g}s "
                                  f"(hardware.load_timeout_s; it {self._describe(rank)})")
            sentinels = {self.procs[r - 1].sentinel: conn for conn, r in pending.items()}
            for obj in wait([*pending, *sentinels], timeout=min(left, _POLL_S)):
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
                if msg == "ok":
                    continue
                if not msg:  # its end of the pipe closed: it is exiting; let it finish so that its code is known
                    self.procs[rank - 1].join(timeout=2)
                why = f"failed to load model {name!r}: {msg} (its traceback is above)" if msg else \
                    f"died while loading model {name!r} (it {self._describe(rank)})"
                raise WorkerError(f"worker rank {rank} {why}")

    def _join_group(self, init_method: str, timeout_s: float) -> None:
        """Rank 0 joins the process group from a helper thread; this thread keeps watching the workers."""
        outcome: list[BaseException | None] = []

        def join() -> None:
            try:
                dist.init_process_group(self.dist_backend, init_method=init_method, rank=0, world_size=self.world_size,
                                        timeout=timedelta(seconds=timeout_s))
            except BaseException as e:  # handed to the main thread
                outcome.append(e)
                return
            with self._lock:
                if self._closed:  # given up on while joining: leave nothing initialised
                    dist.destroy_process_group()
            outcome.append(None)

        thread = threading.Thread(target=join, name="chords-rendezvous", daemon=True)
        thread.start()
        deadline = time.monotonic() + self.timeout.total_seconds()
        while thread.is_alive():
            thread.join(_POLL_S)
            for rank, p in enumerate(self.procs, start=1):
                if p.exitcode is not None:
                    raise WorkerError(f"worker rank {rank} died while joining the process group (it {self._describe(rank)})")
            if thread.is_alive() and time.monotonic() > deadline:
                raise WorkerError(f"the workers did not join the process group within {self.timeout.total_seconds():g}s (hardware.timeout_s)")
        if outcome and outcome[0] is not None:
            raise WorkerError(f"the process group did not start: {str(outcome[0]).splitlines()[0]}")

    def _join_torchrun(self, timeout_s: float) -> None:
        """Global rank 0 under torchrun: join the ``env://`` group; the others load, then join."""
        try:
            dist.init_process_group(self.dist_backend, init_method="env://", rank=0, world_size=self.world_size,
                                    timeout=timedelta(seconds=timeout_s))
        except Exception as e:
            raise WorkerError(f"the torchrun ranks did not join the process group at {self.env['master']} within "
                              f"{timeout_s:g}s (hardware.load_timeout_s): {str(e).splitlines()[0]}") from None

    # ---------------------------------------------------------------- helpers
    def _name(self, rank: int) -> str:
        return f"worker rank {rank}{node_of(rank, self.env)}"

    def _describe(self, rank: int) -> str:
        if rank - 1 >= len(self.procs):  # a torchrun rank: no process handle here
            return "is not answering"
        p = self.procs[rank - 1]
        code = p.exitcode
        return f"exited with code {code}" if code is not None else "is alive but not answering"

    def _wait(self, work, rank: int, timeout: timedelta | None = None, what: str = "answer") -> None:
        try:
            ok = work.wait(timeout or self.timeout)
        except Exception as e:  # gloo raises when the peer's socket closes or the wait times out
            raise WorkerError(f"{self._name(rank)} did not {what} ({self._describe(rank)}): {str(e).splitlines()[0]}") from None
        if ok is False:
            raise WorkerError(f"{self._name(rank)} did not {what} within {(timeout or self.timeout).total_seconds():g}s ({self._describe(rank)})")

    def _send_header(self, rank: int, cmd: int):
        """A command without a round (COND, REF, STOP): the header with every other field 0
        (rounds' EVAL headers come from :meth:`_round_headers`)."""
        header = torch.zeros(_HEAD + self.cap, dtype=torch.long)
        header[0] = cmd
        return self._isend(header.to(self.comm), rank)

    def _isend(self, tensor: Tensor, rank: int):
        """``dist.isend``; a peer whose connection is gone (it died, or an earlier wait on it timed
        out and gloo closed the pair) is a :class:`WorkerError` naming it, not a bare RuntimeError."""
        try:
            return dist.isend(tensor, rank)
        except Exception as e:
            raise WorkerError(f"{self._name(rank)} cannot be reached ({self._describe(rank)}): {str(e).splitlines()[0]}") from None

    def _round_headers(self, parts: list[tuple[int, int]], cmd: int, codes: tuple[int, int], area: int, steps: Tensor) -> Tensor:
        """Every rank's EVAL header for this round, one row each, built in one tensor call."""
        grid = [int(i) for i in steps.tolist()]
        width = _HEAD + self.cap
        rows = []
        for lo, hi in parts:
            row = [cmd, hi - lo, codes[0], codes[1], lo, area, *grid[lo:hi]]
            rows.append(row + [0] * (width - len(row)))
        return torch.tensor(rows, dtype=torch.long).to(self.comm)

    # ---------------------------------------------------------------- protocol
    def set_condition(self, cond: Mapping[str, Tensor]) -> None:
        self.cond = cond
        self._shape = None
        if self.world_size == 1:
            return
        self._cond_cpu = {k: v.detach().cpu() for k, v in cond.items()}

    def _broadcast_condition(self, x: Tensor) -> None:
        shape, dtype = tuple(x.shape), str(x.dtype).removeprefix("torch.")
        if self._slots is not None:
            self._slots.unlink()
            self._slots = None
        if self.shared_memory:
            try:
                self._slots = SharedSlots(self.world_size, self.cap, shape)
            except OSError as e:
                log.warning("no room in shared memory for the rounds of a %s latent (%s): this prompt's states and "
                            "velocities cross the sockets", "x".join(map(str, shape)), e)
        paths = list(self._slots.paths) if self._slots is not None else None
        for rank in range(1, self.world_size):
            self._wait(self._send_header(rank, COND), rank)
            try:
                dist.send_object_list([self._cond_cpu, shape, dtype, paths], rank, device=self.comm)
            except Exception as e:
                raise WorkerError(f"{self._name(rank)} did not take the conditioning ({self._describe(rank)}): {e}") from None
        if paths is not None:  # every worker has mapped the slots before anything is written into them or unlinked
            acks = []
            for rank in range(1, self.world_size):
                ack = torch.empty(1, dtype=torch.long, device=self.comm)
                acks.append((rank, dist.irecv(ack, rank)))
            for rank, work in acks:
                self._wait(work, rank, what="map the shared memory")
        self._shape = shape

    def stage(self, b: int, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor | None:
        """Where :func:`chords.core.sample` may stack a round of ``b`` states: rows ``0 .. b-1``
        of the shared state file, so that :meth:`velocity` copies nothing (its workers read their
        rows there). None when that would not help or not be safe: no shared memory (yet) for this
        shape, a dtype wider than a slot, a round rank 0 evaluates alone, or a tensor still using
        the file (the previous round's states, kept by someone: they must not change)."""
        slots = self._slots
        if slots is None or self._shape != tuple(shape) or dtype.itemsize > _SHM_ITEM or not 1 <= b <= self.world_size * self.cap:
            return None
        if all(hi == lo for lo, hi in shares(b, self.world_size)[1:]) or not unshared(slots.bufs[0]):
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
            self._broadcast_condition(xs[0])
        # the reply dtype: what rank 0's adapter returned for this state dtype; for a new state
        # dtype, a guess (the last velocity's dtype), checked against rank 0's own share below
        reply = self._reply_dtype.get(xs.dtype, self._last_reply or xs.dtype)
        codes = WIRE_DTYPES.index(xs.dtype), WIRE_DTYPES.index(reply)
        sends, recvs, outs = [], [], []
        moved = 0
        slots = self._slots if xs.dtype.itemsize <= _SHM_ITEM and reply.itemsize <= _SHM_ITEM else None
        # sample() stacked the round straight into the shared file (stage()): nothing to copy
        staged = slots is not None and xs.is_contiguous() and xs.data_ptr() == slots.bufs[0].data_ptr()
        if slots is not None and not staged and not unshared(slots.bufs[0]):
            slots = None  # an earlier round's states, staged there, are still in use: not a byte of them may change
        area = slots.free_area() if slots is not None else None
        if area is None:
            slots = None  # both velocity areas still hold velocities someone keeps: they must not change either
        headers = self._round_headers(parts, EVAL_SHM if slots is not None else EVAL, codes, area or 0, steps)
        for r in busy:  # each worker is signalled as soon as its share is in place, before rank 0's forward
            lo, hi = parts[r]
            if slots is not None:  # the states in rows lo..hi of the shared file; a header; an empty "done" back
                if not staged:
                    slots.rows(0, lo, hi - lo, xs.dtype).copy_(xs[lo:hi])
                sends.append((r, self._isend(headers[r], r)))
                done = torch.empty(1, dtype=torch.long, device=self.comm)
                recvs.append((r, dist.irecv(done, r)))
                moved += (hi - lo) * slots.numel * (xs.dtype.itemsize + reply.itemsize)
                continue
            sends.append((r, self._isend(headers[r], r)))
            state = xs[lo:hi].to(self.comm).contiguous()
            sends.append((r, self._isend(state, r)))
            out = torch.empty((hi - lo, *xs.shape[1:]), dtype=reply, device=self.comm)
            recvs.append((r, dist.irecv(out, r)))
            outs.append(out)
            moved += state.numel() * state.element_size() + out.numel() * out.element_size()
        lo, hi = parts[0]
        v0 = forward(self.adapter, xs[lo:hi], steps[lo:hi], self.cond, self.max_batch)
        for rank, work in sends + recvs:
            self._wait(work, rank)
        self._reply_dtype[xs.dtype] = self._last_reply = v0.dtype
        if not busy:
            return v0
        if v0.dtype != reply:  # a wrong guess: the workers cast their velocities; ask again, now known
            return self.velocity(xs, steps)
        if slots is not None:
            slots.unlink()  # every worker has mapped the files: nothing stays on disk
        self.bytes_per_round = moved
        self.bytes_total += moved
        log.debug("round of %d state(s) on %d rank(s): %d bytes moved (%s)", b, len(busy) + 1, moved,
                  "shared memory" if slots is not None else "sockets")
        if slots is not None:
            # every rank's rows side by side in the velocity area: rank 0's copied in, returned as they lie
            slots.rows(area, 0, len(v0), reply).copy_(v0)
            return slots.rows(area, 0, b, reply)
        parts_v = [v0, *(o.to(v0.device) for o in outs)]
        if any(o.dtype != v0.dtype for o in parts_v):
            return torch.cat(parts_v)
        # into a buffer reused from an earlier round when nothing refers to it any more
        out = self._replies.get(b, tuple(v0.shape[1:]), v0.dtype, v0.device, self.world_size * self.cap)
        return torch.cat(parts_v, out=out)

    # ---------------------------------------------------------------- references on every rank
    def start_sequential(self, rank: int, x0: Tensor, cond: Mapping[str, Tensor], step: Any, num_steps: int) -> None:
        """Have worker ``rank`` (>= 1) sample a sequential reference by itself; collect it with
        :meth:`finish_sequential`. Meanwhile rank 0 is free (to sample its own reference)."""
        try:
            self._wait(self._send_header(rank, REF), rank)
            job = (x0.detach().cpu(), {k: v.detach().cpu() for k, v in cond.items()}, step, int(num_steps))
            _send_object(job, rank, self.comm)
        except WorkerError:
            raise
        except Exception as e:
            raise WorkerError(f"{self._name(rank)} did not take a reference job ({self._describe(rank)}): {str(e).splitlines()[0]}") from None

    def finish_sequential(self, rank: int, num_steps: int) -> dict[str, Any]:
        """The reference started on ``rank``: hits, rounds, nfe, stamps and sample_s (see
        :func:`run_sequential`). It may take ``num_steps`` rounds of ``timeout_s`` each."""
        timeout = self.timeout * max(1, int(num_steps))
        try:
            return _recv_object(rank, self.comm, timeout)
        except Exception as e:
            raise WorkerError(f"{self._name(rank)} did not return its reference within {timeout.total_seconds():g}s "
                              f"({self._describe(rank)}): {str(e).splitlines()[0]}") from None

    def close(self, error: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._slots is not None:
            self._slots.unlink()
        try:
            self._stop_workers(error)
        finally:
            if self._stop_watch is not None:
                self._stop_watch.close()
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # a peer already gone; nothing left to release
                pass

    def _stop_workers(self, error: bool) -> None:
        """STOP each worker (after a clean run), else terminate; then SIGKILL whatever is left.

        Torchrun ranks have no handle here: each is sent STOP (a rank that does not take it
        within seconds is left to torchrun, which ends a node's ranks when one of them exits
        with an error; ranks on other nodes see rank 0's connections close and exit)."""
        if self.env is not None:
            if dist.is_initialized():
                for rank in range(1, self.world_size):
                    try:
                        self._wait(self._send_header(rank, STOP), rank, timedelta(seconds=5 if error else 30), "stop")
                    except WorkerError:
                        if not error:
                            raise
            return
        if not self.procs:
            return
        if not error:
            try:
                for rank, p in enumerate(self.procs, start=1):
                    if p.is_alive():
                        self._wait(self._send_header(rank, STOP), rank, timedelta(seconds=10), "stop")
            except WorkerError:
                error = True
        if error:
            for p in self.procs:
                p.terminate()
        deadline = time.monotonic() + (5 if error else 10)
        for p in self.procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(error=exc_type is not None)
