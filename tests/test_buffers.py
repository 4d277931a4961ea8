"""Round buffers (chords/buffers.py): reused only when nothing refers to them, never visibly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines import SRDS, ParaDIGMS
from chords import CHORDS, Sequential, sample
from chords.buffers import RoundBuffers, unshared
from chords.steps import EulerStep

pytestmark = pytest.mark.skipif(not unshared(torch.empty(1)), reason="this torch does not count storage users")


def test_a_buffer_is_reused_only_when_nothing_refers_to_it():
    pool = RoundBuffers(keep=1)
    a = pool.get(3, (4,), torch.float32, torch.device("cpu"), rows=4)
    ptr = a.data_ptr()
    del a
    b = pool.get(2, (4,), torch.float32, torch.device("cpu"))
    assert b.data_ptr() == ptr and b.shape == (2, 4)  # fewer rows fit the same buffer
    for keep in (lambda t: t[1], lambda t: t.unbind(0), lambda t: t.numpy(), lambda t: t.view(-1)[2:]):
        held = keep(b)
        del b
        b = pool.get(2, (4,), torch.float32, torch.device("cpu"))
        assert b.data_ptr() != ptr, "reused while something still refers to it"
        ptr = b.data_ptr()
        del held
    # another dtype or shape is another buffer
    assert pool.get(2, (4,), torch.bfloat16, torch.device("cpu")).dtype == torch.bfloat16
    assert pool.get(2, (5,), torch.float32, torch.device("cpu")).shape == (2, 5)


def _ode(n: int):
    sig = torch.linspace(1, 0, n + 1, dtype=torch.float32)
    x0 = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    return x0, EulerStep(sig)


@pytest.mark.parametrize("algo", [Sequential(), CHORDS(4, "preset"), ParaDIGMS(4, 0.1), SRDS(4)], ids=lambda a: type(a).__name__)
def test_sample_never_changes_what_the_velocity_kept_or_returned(algo):
    """A velocity that keeps its inputs, and one that returns (a view of) its input: every kept
    tensor keeps its value, and the outputs equal those of a velocity that copies."""
    n = 12
    x0, step = _ode(n)
    kept, copies = [], []

    def recording(xs, steps):
        kept.append(xs)
        copies.append(xs.clone())
        return -0.5 * xs

    def aliasing(xs, steps):  # returns its input (a stand-in for any velocity that aliases it)
        return xs

    ref = sample(algo, lambda xs, steps: -0.5 * xs.clone(), x0, step, n)
    out = sample(algo, recording, x0, step, n)
    assert all(torch.equal(a, b) for a, b in zip(kept, copies))
    assert [(h.core, h.round) for h in out.hits] == [(h.core, h.round) for h in ref.hits]
    assert all(torch.equal(a.x, b.x) for a, b in zip(out.hits, ref.hits))
    ref = sample(algo, lambda xs, steps: xs.clone(), x0, step, n)
    out = sample(algo, aliasing, x0, step, n)
    assert all(torch.equal(a.x, b.x) for a, b in zip(out.hits, ref.hits))


def test_numpy_views_count_as_users():
    t = torch.zeros(3)
    assert unshared(t)
    arr = t.numpy()
    assert not unshared(t)
    del arr
    assert unshared(t)
