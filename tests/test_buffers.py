"""The buffer rule (chords/buffers.py): a round's stacked states are valid for that call, its
velocities until the next call; what is kept longer is copied. Round buffers rely on it, and
the checking mode catches whoever breaks it."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from baselines import SRDS, ParaDIGMS
from baselines.epd import EPD
from chords import CHORDS, Sequential, sample
from chords.buffers import RoundBuffers, checking
from chords.steps import EulerStep

CPU = torch.device("cpu")


def test_round_buffers_are_handed_out_in_turn():
    one = RoundBuffers(keep=1)
    a = one.get(3, (4,), torch.float32, CPU, rows=4)
    b = one.get(2, (4,), torch.float32, CPU)
    assert b.data_ptr() == a.data_ptr() and b.shape == (2, 4)  # fewer rows fit the same buffer
    two = RoundBuffers(keep=2)
    ptrs = [two.get(2, (4,), torch.float32, CPU).data_ptr() for _ in range(6)]
    assert len(set(ptrs)) == 2 and all(p != q for p, q in zip(ptrs, ptrs[1:]))  # never the previous round's
    # another dtype or shape is another buffer
    assert two.get(2, (4,), torch.bfloat16, CPU).dtype == torch.bfloat16
    assert two.get(2, (5,), torch.float32, CPU).shape == (2, 5)


def _ode(n: int):
    sig = torch.linspace(1, 0, n + 1, dtype=torch.float32)
    x0 = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    return x0, EulerStep(sig)


def _reusing(fn):
    """An oracle that returns its velocities in one buffer it overwrites every call (as the process
    backend may): legal under the rule."""
    pool = RoundBuffers(keep=1)

    def velocity(xs, steps):
        v = fn(xs)
        return pool.get(len(v), tuple(v.shape[1:]), v.dtype, v.device).copy_(v)

    return velocity


ALGOS = [Sequential(), CHORDS(4, "preset"), ParaDIGMS(4, 0.1), SRDS(4), EPD(2), EPD(2, predictor="ipndm")]


@pytest.mark.parametrize("algo", ALGOS, ids=lambda a: type(a).__name__ + getattr(a, "predictor", "").replace("euler", ""))
def test_every_algorithm_follows_the_rule(algo):
    """Checked (kept velocities and stacked states turn NaN after their round), with an oracle
    that reuses its output buffer and with one that returns its input: every hit is bitwise
    what a fresh-tensor oracle gives unchecked."""
    n = 12
    x0, step = _ode(n)
    ref = sample(algo, lambda xs, steps: -0.5 * xs, x0, step, n)
    for oracle in (_reusing(lambda xs: -0.5 * xs), lambda xs, steps: xs.mul_(-0.5)):
        with checking():
            out = sample(algo, oracle, x0, step, n)
        assert [(h.core, h.round) for h in out.hits] == [(h.core, h.round) for h in ref.hits]
        assert all(torch.equal(a.x, b.x) for a, b in zip(out.hits, ref.hits))


@dataclass(frozen=True)
class TwoStep:
    """A two-step Adams-Bashforth toy that keeps last round's velocity for the next step:
    ``copy=False`` keeps a view of the oracle's output, breaking the rule."""

    copy: bool
    num_cores: int = 1

    def check(self, num_steps):
        pass

    def solve(self, x0, step, num_steps, emit):
        x, prev = x0, None
        for i in range(num_steps):
            v = yield (x,), (i,)
            vi = v[0]
            slope = vi if prev is None else 1.5 * vi - 0.5 * prev
            x = step(x, slope, i, i + 1)
            prev = vi.clone() if self.copy else vi
        emit(1, x)


def test_an_algorithm_that_keeps_a_velocity_without_copying_is_caught():
    n = 8
    x0, step = _ode(n)
    fresh = lambda xs, steps: -0.5 * xs  # noqa: E731
    ref = sample(TwoStep(copy=True), fresh, x0, step, n).output
    assert torch.equal(sample(TwoStep(copy=False), fresh, x0, step, n).output, ref)  # harmless by luck here
    # an oracle that reuses its buffer (legal) silently changes the rule-breaker's kept velocity
    assert not torch.equal(sample(TwoStep(copy=False), _reusing(lambda xs: -0.5 * xs), x0, step, n).output, ref)
    with checking():  # the checking mode makes it loud, whatever the oracle
        assert torch.isnan(sample(TwoStep(copy=False), fresh, x0, step, n).output).all()
        assert torch.equal(sample(TwoStep(copy=True), fresh, x0, step, n).output, ref)


def test_an_oracle_that_keeps_its_input_without_copying_is_caught():
    n = 6
    x0, step = _ode(n)
    kept, copies = [], []

    def keeping(xs, steps):
        kept.append(xs)
        copies.append(xs.clone())
        return -0.5 * xs

    with checking():
        sample(CHORDS(2, [0, 2]), keeping, x0, step, n)
    assert all(torch.isnan(a).all() for a in kept) and not any(torch.isnan(c).any() for c in copies)
