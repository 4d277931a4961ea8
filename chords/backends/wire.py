"""The process backend's wire format: commands, the typed header, objects, "peer gone".

Every message from rank 0 to a worker starts with a header, one LongTensor of
``Header.FIELDS + cap`` integers (``cap``: the most states one rank evaluates in a round):
``[cmd, n, state dtype, reply dtype, first row, area, positions, step_0 .. step_{cap-1}]``. The
steps are grid indices (``positions`` 0), or fractional grid positions (``positions`` 1, e.g.
EPD's intermediate times) sent as the bits of their float64 values, so they arrive exactly. Only EVAL and
EVAL_SHM use the fields after ``cmd``; every other command leaves them 0. :class:`Header` names
them; nothing else reads a header by position.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Sequence

import torch
import torch.distributed as dist

Tensor = torch.Tensor

#: dtypes a state or a velocity may have on the wire; a header names them by index
WIRE_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class Cmd(IntEnum):
    """What rank 0 asks of a worker (the header's first field)."""

    STOP = 0  #: leave the loop (the worker answers one "done", then exits)
    EVAL = 1  #: evaluate ``n`` states that follow on the socket; answer their velocities
    COND = 2  #: a prompt's conditioning follows (an object); no answer
    REF = 3  #: a sequential reference job follows (an object); answer its result (an object)
    EVAL_SHM = 4  #: evaluate ``n`` states lying in shared memory; answer one "done"
    SHAPE = 5  #: the rounds' state shape and the shared-memory files follow (an object); answer "done"


@dataclass(frozen=True)
class Header:
    """A decoded header. ``state`` and ``reply`` index :data:`WIRE_DTYPES`; ``first`` is the
    share's first row in the round; ``area`` the velocity file (1 or 2) of an EVAL_SHM round;
    ``positions`` 1 when the steps are float64 grid positions (their bits), 0 for grid indices."""

    cmd: Cmd
    n: int = 0
    state: int = 0
    reply: int = 0
    first: int = 0
    area: int = 0
    positions: int = 0

    FIELDS = 7  # the fields above, before the steps

    @property
    def state_dtype(self) -> torch.dtype:
        return WIRE_DTYPES[self.state]

    @property
    def reply_dtype(self) -> torch.dtype:
        return WIRE_DTYPES[self.reply]

    @classmethod
    def read(cls, t: Tensor) -> "Header":
        """Decode a received header tensor (one host read for all fields)."""
        cmd, n, state, reply, first, area, positions = t[: cls.FIELDS].tolist()
        return cls(Cmd(cmd), n, state, reply, first, area, positions)

    def steps(self, t: Tensor) -> Tensor:
        """The round's ``n`` steps that follow the fields of the received header ``t``: a LongTensor of
        grid indices, or the float64 grid positions whose bits were sent."""
        steps = t[self.FIELDS : self.FIELDS + self.n]
        return steps.view(torch.float64) if self.positions else steps

    def row(self, steps: Sequence[int], cap: int) -> list[int]:
        """This header as integers, with ``steps`` after the fields, padded to ``FIELDS + cap``."""
        row = [int(self.cmd), self.n, self.state, self.reply, self.first, self.area, self.positions, *steps]
        return row + [0] * (self.FIELDS + cap - len(row))


def wire_steps(steps: Tensor) -> tuple[list[int], int]:
    """A round's steps as header integers and the ``positions`` flag: grid indices as they are,
    fractional positions (a float64 tensor) as the bits of their values, which arrive exactly."""
    if steps.is_floating_point():
        return steps.to(torch.float64).contiguous().view(torch.int64).tolist(), 1
    return [int(i) for i in steps.tolist()], 0


def share_cap(num_cores: int, world_size: int) -> int:
    """The most states one rank evaluates in a round of ``num_cores`` (the header's ``cap``)."""
    return max(1, -(-int(num_cores) // int(world_size)))


def empty_header(cap: int, device: torch.device) -> Tensor:
    return torch.zeros(Header.FIELDS + cap, dtype=torch.long, device=device)


def command(cmd: Cmd, cap: int, device: torch.device) -> Tensor:
    """The header of a command without a round (STOP, COND, REF, SHAPE)."""
    return torch.tensor(Header(cmd).row((), cap), dtype=torch.long, device=device)


def pack(obj: Any, device: torch.device) -> tuple[Tensor, Tensor]:
    """``obj`` (tensors on the CPU) pickled by ``torch.save``: its size and its bytes, on ``device``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    return torch.tensor([data.numel()], dtype=torch.long, device=device), data.to(device)


def unpack(data: Tensor) -> Any:
    return torch.load(io.BytesIO(data.cpu().numpy().tobytes()), weights_only=False)


def send_object(obj: Any, rank: int, comm: torch.device) -> None:
    """Pickle ``obj`` and send its size, then its bytes (blocking; a worker's side)."""
    size, data = pack(obj, comm)
    dist.send(size, rank)
    dist.send(data, rank)


def recv_object(rank: int, comm: torch.device) -> Any:
    """The counterpart of :func:`send_object` (blocking; a worker's side)."""
    size = torch.zeros(1, dtype=torch.long, device=comm)
    dist.recv(size, rank)
    data = torch.empty(int(size.item()), dtype=torch.uint8, device=comm)
    dist.recv(data, rank)
    return unpack(data)


#: how a worker learns that rank 0 has gone (its connections closed): gloo's and NCCL's messages
_PEER_GONE = (
    "Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused",  # gloo / TCP
    "ncclRemoteError", "remote process exited", "NCCL communicator was aborted", "communicator was aborted",  # NCCL
    "ncclSystemError", "Socket Timeout", "NCCL Error 6",
)


def peer_gone(e: BaseException) -> bool:
    """True when ``e`` says the other side of a connection went away (gloo or NCCL), not a bug here."""
    if isinstance(e, getattr(dist, "DistNetworkError", ())):
        return True
    text = str(e)
    return any(phrase in text for phrase in _PEER_GONE)
