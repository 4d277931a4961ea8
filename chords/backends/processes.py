"""One core per process: a ``torch.distributed`` rank protocol.

Rank 0 is the calling process: it holds the full adapter (encode / decode), runs the runner
and the algorithm, and evaluates item 0 of every round itself. Ranks 1..W-1 are spawned
workers that hold only the denoiser (``role="denoiser"``).

Protocol (point-to-point, rank 0 <-> rank r; messages between a pair arrive in order):

* start-up: worker r loads its adapter and sends ``[r]`` (``[-1]`` if loading failed).
* ``COND`` (once per prompt): header ``[COND, 0, 0, 0]`` then ``send_object_list([cond, shape,
  dtype])``; ``cond`` travels on the CPU and each worker moves it to its device.
* ``EVAL`` (per round, only to ranks 1..B-1): header ``[EVAL, grid index, state dtype, reply
  dtype]`` (dtypes as indices into ``WIRE_DTYPES``), then the state; the worker answers with the
  velocity in the reply dtype. Nothing else crosses per round. The state dtype travels every
  round because it can change within a prompt (with ``step_precision: model`` HunyuanVideo and
  Wan start from float32 noise and step to bf16, and a round mixing both is stacked in float32,
  which is exact). The reply dtype is what rank 0's own adapter returns for such a state, so
  every rank's velocity crosses back unchanged, dtype included (CogVideoX returns float32
  velocities for bf16 states). Rank 0 learns it from its own item 0 of every round; for a
  state dtype it has not evaluated yet it guesses (the last velocity's dtype) and, if item 0
  shows the guess wrong, asks the workers again: never a changed number, at most one extra
  round, and no extra wait otherwise.
* ``STOP``: header ``[STOP, 0, 0, 0]``; the worker leaves its loop and exits.

Rank 0 waits on every reply with a timeout; a worker that died or stopped answering raises
:class:`WorkerError` naming its rank, and :meth:`close` leaves no process behind. The same
protocol runs on GPUs with ``dist_backend="nccl"`` and ``device_type="cuda"`` (rank r on
``cuda:r``), or across nodes with an external launcher providing the rendezvous.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import traceback
from datetime import timedelta
from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from chords.models.base import Adapter, load_adapter_class

Tensor = torch.Tensor
log = logging.getLogger(__name__)

STOP, EVAL, COND = 0, 1, 2
#: dtypes a state or a velocity may have on the wire; an EVAL header names them by index
WIRE_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_IDLE_TIMEOUT = timedelta(days=7)  # workers wait this long for rank 0 between prompts


class WorkerError(RuntimeError):
    """A worker rank died, failed to load, or did not answer in time."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device(device_type: str, rank: int) -> torch.device:
    return torch.device(f"cuda:{rank}") if device_type == "cuda" else torch.device("cpu")


def _worker_main(
    rank: int,
    world_size: int,
    init_method: str,
    adapter_path: str,
    model_cfg: dict[str, Any],
    device_type: str,
    dist_backend: str,
    threads: int,
) -> None:
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(message)s", stream=sys.stderr)
    if threads > 0:
        torch.set_num_threads(threads)
    device = _device(device_type, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(dist_backend, init_method=init_method, rank=rank, world_size=world_size, timeout=_IDLE_TIMEOUT)
    comm = torch.device("cpu") if dist_backend == "gloo" else device
    try:
        adapter = load_adapter_class(adapter_path)(model_cfg, device, "denoiser")
        ok = True
    except Exception:  # reported to rank 0, which names this rank
        traceback.print_exc()
        ok = False
    dist.send(torch.tensor([rank if ok else -1], dtype=torch.long, device=comm), 0)
    if not ok:
        sys.exit(1)

    header = torch.zeros(4, dtype=torch.long, device=comm)
    cond: Mapping[str, Tensor] = {}
    shape: tuple[int, ...] | None = None
    buffers: dict[torch.dtype, Tensor] = {}  # one receive buffer per state dtype
    with torch.no_grad():
        while True:
            dist.recv(header, 0)
            cmd, idx = int(header[0]), int(header[1])
            if cmd == STOP:
                break
            if cmd == COND:
                msg: list[Any] = [None, None, None]
                dist.recv_object_list(msg, 0, device=comm)
                cond = {k: v.to(device) for k, v in msg[0].items()}
                shape, buffers = tuple(msg[1]), {}
                continue
            assert shape is not None, "EVAL before COND"
            state_dtype, reply_dtype = WIRE_DTYPES[int(header[2])], WIRE_DTYPES[int(header[3])]
            x = buffers.get(state_dtype)
            if x is None:
                x = buffers[state_dtype] = torch.empty(shape, dtype=state_dtype, device=comm)
            dist.recv(x, 0)
            v = adapter.velocity(x[None].to(device), torch.tensor([idx], device=device), cond)[0]
            dist.send(v.to(comm, reply_dtype).contiguous(), 0)
    dist.destroy_process_group()


class ProcessBackend:
    """Rank 0 (this process) plus ``world_size - 1`` spawned worker ranks.

    Workers run with ``threads_per_process`` intra-op threads; run rank 0 with the same setting
    (the runner does, :func:`chords.backends.thread_setting`) and every rank computes the same bits.
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
    ):
        if world_size < 1:
            raise ValueError(f"world_size {world_size} is invalid: it must be >= 1")
        self.adapter = adapter
        self.world_size = world_size
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
        if world_size == 1:
            return
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        ctx = mp.get_context("spawn")
        for rank in range(1, world_size):
            p = ctx.Process(
                target=_worker_main,
                args=(rank, world_size, init_method, adapter_path, dict(model_cfg), device_type, dist_backend, threads_per_process),
                daemon=True,
                name=f"chords-rank{rank}",
            )
            p.start()
            self.procs.append(p)
        try:
            dist.init_process_group(dist_backend, init_method=init_method, rank=0, world_size=world_size, timeout=timedelta(seconds=load_timeout_s))
            for rank in range(1, world_size):
                status = torch.zeros(1, dtype=torch.long, device=self.comm)
                self._wait(dist.irecv(status, rank), rank, timedelta(seconds=load_timeout_s), "load its model")
                if int(status) != rank:
                    raise WorkerError(f"worker rank {rank} failed to load model {model_cfg.get('model_name')!r} (its traceback is above)")
        except BaseException:
            self.close(error=True)
            raise
        log.info("started %d worker process(es)", world_size - 1)

    # ---------------------------------------------------------------- helpers
    def _describe(self, rank: int) -> str:
        p = self.procs[rank - 1]
        code = p.exitcode
        return f"exited with code {code}" if code is not None else "is alive but not answering"

    def _wait(self, work, rank: int, timeout: timedelta | None = None, what: str = "answer") -> None:
        try:
            ok = work.wait(timeout or self.timeout)
        except Exception as e:  # gloo raises when the peer's socket closes or the wait times out
            raise WorkerError(f"worker rank {rank} did not {what} ({self._describe(rank)}): {str(e).splitlines()[0]}") from None
        if ok is False:
            raise WorkerError(f"worker rank {rank} did not {what} within {(timeout or self.timeout).total_seconds():g}s ({self._describe(rank)})")

    def _send_header(self, rank: int, cmd: int, idx: int = 0, state_code: int = 0, reply_code: int = 0):
        return dist.isend(torch.tensor([cmd, idx, state_code, reply_code], dtype=torch.long, device=self.comm), rank)

    # ---------------------------------------------------------------- protocol
    def set_condition(self, cond: Mapping[str, Tensor]) -> None:
        self.cond = cond
        self._shape = None
        if self.world_size == 1:
            return
        self._cond_cpu = {k: v.detach().cpu() for k, v in cond.items()}

    def _broadcast_condition(self, x: Tensor) -> None:
        shape, dtype = tuple(x.shape), str(x.dtype).removeprefix("torch.")
        for rank in range(1, self.world_size):
            self._wait(self._send_header(rank, COND), rank)
            try:
                dist.send_object_list([self._cond_cpu, shape, dtype], rank, device=self.comm)
            except Exception as e:
                raise WorkerError(f"worker rank {rank} did not take the conditioning ({self._describe(rank)}): {e}") from None
        self._shape = shape

    @torch.no_grad()
    def velocity(self, xs: Tensor, steps: Tensor) -> Tensor:
        b = xs.shape[0]
        if b > self.world_size:
            raise ValueError(f"{b} evaluations in one round but only {self.world_size} process(es)")
        if b > 1 and self._shape != tuple(xs.shape[1:]):
            self._broadcast_condition(xs[0])
        # the reply dtype: what rank 0's adapter returned for this state dtype; for a new state
        # dtype, a guess (the last velocity's dtype), checked against item 0 below
        reply = self._reply_dtype.get(xs.dtype, self._last_reply or xs.dtype)
        sends, recvs, outs = [], [], []
        for i in range(1, b):
            codes = WIRE_DTYPES.index(xs.dtype), WIRE_DTYPES.index(reply)
            sends.append((i, self._send_header(i, EVAL, int(steps[i]), *codes)))
            sends.append((i, dist.isend(xs[i].to(self.comm).contiguous(), i)))
            out = torch.empty(xs.shape[1:], dtype=reply, device=self.comm)
            recvs.append((i, dist.irecv(out, i)))
            outs.append(out)
        v0 = self.adapter.velocity(xs[:1], steps[:1], self.cond)
        for rank, work in sends + recvs:
            self._wait(work, rank)
        self._reply_dtype[xs.dtype] = self._last_reply = v0.dtype
        if not outs:
            return v0
        if v0.dtype != reply:  # a wrong guess: the workers cast their velocities; ask again, now known
            return self.velocity(xs, steps)
        return torch.cat([v0, torch.stack(outs).to(v0.device)])

    def close(self, error: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.procs:
            return
        if not error:
            try:
                for rank, p in enumerate(self.procs, start=1):
                    if p.is_alive():
                        self._wait(self._send_header(rank, STOP), rank, timedelta(seconds=10), "stop")
            except WorkerError:
                error = True
        for p in self.procs:
            p.join(timeout=0 if error else 10)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # a peer already gone; nothing left to release
                pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(error=exc_type is not None)
