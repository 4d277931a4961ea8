"""The sampling core: ``sample()``, hits, stop rules and the sequential reference.

Everything here is pure: no devices, no files, no printing. An *algorithm* is an object with
``num_cores`` and a ``solve`` generator (see :class:`Algorithm`); :func:`sample` drives it
round by round against a batched velocity oracle, applies the stop rule and streams hits to
the callback.

Conventions (DESIGN.md, "Core API"):

* ``velocity(xs, steps)``: ``xs`` is a stack ``[B, *S]`` of states, ``steps`` a LongTensor
  ``[B]`` of grid indices in ``[0, num_steps)``; returns ``[B, *S]``. One call is one parallel
  round and ``B <= algorithm.num_cores``. An algorithm that asks for a fractional grid position
  (a Python float, e.g. EPD's intermediate times) makes ``steps`` a float64 tensor instead
  (:mod:`chords.positions`); integer requests give the LongTensor as before.
* ``step(x, v, i, j)`` advances ``x`` from grid position ``i`` to ``j > i`` with the velocity ``v``
  evaluated at ``(x, i)``. Index 0 is pure noise, ``num_steps`` is data; ``i`` and ``j`` may be
  fractional (floats) for the step functions of :mod:`chords.steps`.
* The buffer rule (:mod:`chords.buffers`): the stacked ``xs`` a velocity receives is valid for
  that call only (:func:`sample` stacks the next round into the same memory), and the velocities
  it returns are valid until its next call; whatever an oracle or an algorithm keeps beyond that,
  it copies. An oracle may offer ``stage(b, shape, dtype)``
  (an attribute of the callable, or of the object whose bound method it is) returning a
  ``[b, *shape]`` tensor of its own to stack the round into, or None: the process backend's
  shared memory, so rank 0 copies no state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generator, Protocol, Sequence

import torch

from chords.buffers import RoundBuffers, checking_enabled, poison
from chords.positions import as_positions

Tensor = torch.Tensor
Velocity = Callable[[Tensor, Tensor], Tensor]
Step = Callable[[Tensor, Tensor, int, int], Tensor]
# What an algorithm yields each round: the states to evaluate and their grid indices.
Request = tuple[Sequence[Tensor], Sequence[int]]
# How an algorithm reports an output: emit(core, x).
Emit = Callable[[int, Tensor], None]


@dataclass(frozen=True)
class Hit:
    """One output of an algorithm.

    ``core``: which solver produced it. CHORDS numbers its cores as the paper does, 1 (slowest,
    starts from noise) to K (fastest), and 0 is the coarse shot of the last-initialised core.
    Sequential and ParaDIGMS report core 1; SRDS reports the Parareal iteration (0 = coarse
    sweep). ``round``: velocity calls completed when the output became available.
    """

    core: int
    round: int
    x: Tensor


@dataclass
class SampleResult:
    hits: list[Hit]
    output: Tensor
    rounds: int
    nfe: int
    stopped_at: int = field(default=-1)  # index into hits of the chosen output

    @property
    def output_hit(self) -> Hit:
        return self.hits[self.stopped_at]


class Algorithm(Protocol):
    """What :func:`sample` needs from an algorithm.

    ``solve`` is a generator: each ``yield (xs, steps)`` asks for one round of velocity
    evaluations and receives the velocities ``[B, *S]`` back through ``send``; outputs are
    reported with ``emit(core, x)`` as soon as they exist. ``check`` raises ``ValueError`` for a
    configuration that cannot run on ``num_steps``; ``max_hits`` bounds the number of outputs.
    """

    num_cores: int

    def check(self, num_steps: int) -> None: ...

    def max_hits(self, num_steps: int) -> int: ...

    def solve(self, x0: Tensor, step: Step, num_steps: int, emit: Emit) -> Generator[Request, Tensor, None]: ...


# --------------------------------------------------------------------------- stop rules


class StopRule(Protocol):
    def check(self, algorithm: Algorithm, num_steps: int) -> None: ...

    def should_stop(self, hits: list[Hit]) -> bool: ...


@dataclass(frozen=True)
class CoreIndex:
    """Stop when ``hits[index]`` arrives (the official ``stopping_kwargs.index``)."""

    index: int

    def check(self, algorithm: Algorithm, num_steps: int) -> None:
        limit = algorithm.max_hits(num_steps)
        if not isinstance(self.index, int) or not 0 <= self.index < limit:
            raise ValueError(
                f"stop index {self.index!r} is out of range: {type(algorithm).__name__} produces "
                f"{limit} hit(s) here, so the index must be an integer in [0, {limit - 1}]"
            )

    def should_stop(self, hits: list[Hit]) -> bool:
        return len(hits) > self.index


def residual(a: Tensor, b: Tensor, precise: bool = False) -> float:
    """The official CHORDS residual ``||a - b||_2 / numel``, computed as the official code does:
    ``torch.linalg.norm(a - b)`` in the hits' dtype (a bf16 norm is rounded to bf16), then
    ``.double()``. ``precise=True`` takes the norm of the difference in float64 instead (a more
    accurate variant; in bf16 it can stop at another hit than the official code)."""
    d = a - b
    norm = torch.linalg.vector_norm(d.double()) if precise else torch.linalg.norm(d).double()
    return norm.item() / a.numel()


@dataclass(frozen=True)
class Residual:
    """Stop when two consecutive hits differ by less than ``threshold`` (official rule)."""

    threshold: float = 4e-4
    precise: bool = False  # True: the norm in float64 (see residual); the default is the official arithmetic

    def check(self, algorithm: Algorithm, num_steps: int) -> None:
        if not self.threshold >= 0:
            raise ValueError(f"residual threshold {self.threshold!r} is invalid: it must be a number >= 0")

    def should_stop(self, hits: list[Hit]) -> bool:
        return len(hits) >= 2 and residual(hits[-1].x, hits[-2].x, self.precise) < self.threshold


def check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} {value!r} is invalid: it must be an integer >= 1")


def check_tolerance(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value >= 0):
        raise ValueError(f"{name} {value!r} is invalid: it must be a number >= 0")


# --------------------------------------------------------------------------- the driver


class _Stopped(Exception):
    pass


def sample(
    algorithm: Algorithm,
    velocity: Velocity,
    x0: Tensor,
    step: Step,
    num_steps: int,
    stop: StopRule | None = None,
    callback: Callable[[Hit], None] | None = None,
) -> SampleResult:
    """Run ``algorithm`` from ``x0`` over a grid of ``num_steps`` steps.

    Returns every hit in arrival order, the output chosen by ``stop`` (the last hit when
    ``stop`` is None), the number of rounds (velocity calls) and of evaluations.
    """
    check_positive_int("num_steps", num_steps)
    algorithm.check(num_steps)
    if stop is not None:
        stop.check(algorithm, num_steps)

    hits: list[Hit] = []
    rounds = 0
    nfe = 0

    def emit(core: int, x: Tensor) -> None:
        hits.append(Hit(core, rounds, x))
        if callback is not None:
            callback(hits[-1])
        if stop is not None and stop.should_stop(hits):
            raise _Stopped

    gen = algorithm.solve(x0, step, num_steps, emit)
    stacks = RoundBuffers(keep=1)
    stage = _stager(velocity)
    check = checking_enabled()
    try:
        request = next(gen)
        while True:
            xs, steps = request
            batch = len(xs)
            if not 1 <= batch <= algorithm.num_cores:
                raise RuntimeError(
                    f"{type(algorithm).__name__} asked for {batch} evaluations in one round; "
                    f"it has {algorithm.num_cores} core(s)"
                )
            stacked = _stack(list(xs), stacks, algorithm.num_cores, stage)
            v = velocity(stacked, as_positions(steps))
            del xs, request
            rounds += 1
            nfe += batch
            if check:  # the algorithm gets a copy that goes invalid (NaN) once it has taken its step
                v = v.clone()
            try:
                request = gen.send(v)
            finally:
                if check:  # what the rule says is no longer valid: a later round may overwrite it
                    poison(v)
                    poison(stacked)
            del v, stacked
    except StopIteration:
        pass
    except _Stopped:
        gen.close()
    if not hits:
        raise RuntimeError(f"{type(algorithm).__name__} finished without producing an output")
    return SampleResult(hits=hits, output=hits[-1].x, rounds=rounds, nfe=nfe, stopped_at=len(hits) - 1)


def _stager(velocity: Velocity) -> Callable[[int, tuple[int, ...], torch.dtype], Tensor | None] | None:
    """The oracle's ``stage(b, shape, dtype)``, if it offers one (an attribute of the callable,
    or of the object whose bound method it is): a ``[b, *shape]`` buffer of its own to stack
    the round's states into, or None for this round (the process backend's shared memory)."""
    stage = getattr(velocity, "stage", None)
    if stage is None:
        stage = getattr(getattr(velocity, "__self__", None), "stage", None)
    return stage if callable(stage) else None


def _stack(xs: list[Tensor], buffers: RoundBuffers, rows: int, stage=None) -> Tensor:
    """``torch.stack(xs)``: into the oracle's staging buffer when it offers one, else into last
    round's buffer (on the CPU a fresh multi-MB tensor costs page faults every round; the buffer
    rule of :mod:`chords.buffers` lets a round reuse it). The values are those of ``torch.stack``."""
    first = xs[0]
    if torch.is_grad_enabled() and any(x.requires_grad for x in xs) or any(x.shape != first.shape for x in xs):
        return torch.stack(xs)  # autograd, or an error with torch's own message
    dtype = first.dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    shape = tuple(first.shape)
    out = stage(len(xs), shape, dtype) if stage is not None and first.device.type == "cpu" else None
    if out is None or out.device != first.device:
        out = buffers.get(len(xs), shape, dtype, first.device, rows)
    return torch.stack(xs, out=out)


# --------------------------------------------------------------------------- sequential


@dataclass(frozen=True)
class Sequential:
    """The reference: one evaluation per round, ``num_steps`` rounds, one hit (core 1)."""

    num_cores: int = 1

    def check(self, num_steps: int) -> None:
        check_positive_int("num_cores", self.num_cores)
        check_positive_int("num_steps", num_steps)

    def max_hits(self, num_steps: int) -> int:
        return 1

    def solve(self, x0: Tensor, step: Step, num_steps: int, emit: Emit):
        x = x0
        for i in range(num_steps):
            v = yield (x,), (i,)
            x = step(x, v[0], i, i + 1)
        emit(1, x)
