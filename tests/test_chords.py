"""CHORDS and the sampling core, checked on ODEs with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chords import CHORDS, CoreIndex, Residual, Sequential, init_sequence, parse_init_t, preset_init_sequence, sample
from chords.chords import PAPER_PRESETS, continuous_init_sequence
from chords.steps import DDIMStep, EulerStep
from tests.odes import GaussianFlow, linear, nonlinear

PRESETS = [list(v) for v in PAPER_PRESETS.values()]


def seq_output(problem):
    return sample(Sequential(), problem.velocity, problem.x0, problem.step, problem.num_steps).output


# --------------------------------------------------------------------------- sequential / steps


def test_sequential_equals_hand_written_euler_loop_bitwise():
    p = nonlinear(num_steps=37)
    x = p.x0.clone()
    t = p.times
    for i in range(p.num_steps):
        v = -(-(x**3) + torch.sin(3 * t[i]))
        x = x + ((1 - t[i + 1]) - (1 - t[i])) * v
    res = sample(Sequential(), p.velocity, p.x0, p.step, p.num_steps)
    assert torch.equal(res.output, x)
    assert (res.rounds, res.nfe, len(res.hits), res.hits[0].round) == (37, 37, 1, 37)


def test_sequential_converges_to_exact_solution_first_order():
    errs = []
    for n in (25, 50, 100, 200):
        p = linear(num_steps=n)
        errs.append((seq_output(p) - p.exact(p.x0, 1.0)).abs().max().item())
    order = -np.polyfit(np.log([25, 50, 100, 200]), np.log(errs), 1)[0]
    assert 0.9 < order < 1.1


def test_euler_step_float32_compute_and_cast_back():
    st_ = EulerStep(torch.linspace(1, 0, 11), precision="float32")  # the default, "model": test_step_parity.py
    x = torch.randn(4, dtype=torch.bfloat16)
    v = torch.randn(4, dtype=torch.bfloat16)
    out = st_(x, v, 2, 7)
    assert out.dtype == torch.bfloat16
    ref = (x.float() + (st_.sigmas[7] - st_.sigmas[2]).item() * v.float()).bfloat16()
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="grid index 7 to 2"):
        st_(x, v, 7, 2)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_ddim_jump_recovers_x0_exactly_on_clean_model(pred):
    """If the model output is the true eps (or v) of x = sqrt(a) x0 + sqrt(1-a) eps, any jump lands on the truth."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    ts = torch.linspace(999, 0, 20).round().long()
    st_ = DDIMStep(ac, ts, prediction_type=pred)
    x0, eps = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    a = ac[ts[3]]
    x = a.sqrt() * x0 + (1 - a).sqrt() * eps
    out = eps if pred == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
    a_j = ac[ts[11]]
    torch.testing.assert_close(st_(x, out, 3, 11), a_j.sqrt() * x0 + (1 - a_j).sqrt() * eps, atol=1e-12, rtol=0)
    torch.testing.assert_close(st_(x, out, 3, 20), x0, atol=1e-12, rtol=0)  # grid end = data (alpha 1)


# --------------------------------------------------------------------------- CHORDS exactness and rounds


@pytest.mark.parametrize(
    "init_t",
    PRESETS + [[0], [0, 1], [0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7], [0, 6, 12, 18, 24, 30, 36, 42], [0, 25, 49], [0, 49]],
)
@pytest.mark.parametrize("make", [linear, nonlinear, lambda num_steps: GaussianFlow(num_steps=num_steps)])
def test_chords_last_hit_equals_sequential(init_t, make):
    p = make(num_steps=50)
    k = len(init_t)
    calls = []

    def velocity(xs, steps):
        assert xs.shape[0] <= k
        calls.append(xs.shape[0])
        return p.velocity(xs, steps)

    res = sample(CHORDS(k, init_t), velocity, p.x0, p.step, 50)
    ref = seq_output(p)
    assert (res.hits[-1].x - ref).abs().max().item() <= 1e-12
    assert res.hits[-1].core == 1 and res.hits[-1].round == 50 and res.rounds == 50
    assert res.nfe == sum(calls) and max(calls) <= k
    assert [h.round for h in res.hits] == CHORDS(k, init_t).hit_rounds(50)
    assert [h.core for h in res.hits] == [0] + list(range(k, 0, -1))


@pytest.mark.parametrize("init_t,first_fine", [([0, 8, 16, 32], 21), ([0, 3, 6, 12, 24, 36], 19), ([0, 2, 4, 8, 16, 24, 32, 40], 17)])
def test_paper_presets_hit_rounds(init_t, first_fine):
    p = GaussianFlow(num_steps=50)
    res = sample(CHORDS(len(init_t), init_t), p.velocity, p.x0, p.step, 50)
    assert res.hits[0].round == len(init_t)  # the coarse shot
    assert res.hits[1].round == first_fine
    assert res.hits[1].core == len(init_t)


def test_chords_k1_and_tiny_grids():
    for n in (1, 2, 3):
        p = linear(num_steps=n)
        res = sample(CHORDS(1, [0]), p.velocity, p.x0, p.step, n)
        assert torch.equal(res.output, seq_output(p))
        assert [h.round for h in res.hits] == [1, n]


def test_chords_accuracy_improves_along_the_stream():
    """Slower cores are more accurate: RMSE to sequential does not grow along the hits."""
    p = GaussianFlow(num_steps=50, shift=3.0)
    res = sample(CHORDS(8, PRESETS[2]), p.velocity, p.x0, p.step, 50)
    ref = seq_output(p)
    errs = [(h.x - ref).pow(2).mean().sqrt().item() for h in res.hits]
    assert errs[-1] <= 1e-12 and errs[1] < errs[0]
    assert errs[1] < 0.05 * (p.x0 - ref).pow(2).mean().sqrt().item()


def test_rectification_matters():
    """Without rectification the fastest core is just Euler from a coarse start; with it, far better."""
    p = GaussianFlow(num_steps=50, shift=3.0)
    init = PRESETS[0]
    res = sample(CHORDS(4, init), p.velocity, p.x0, p.step, 50)
    ref = seq_output(p)
    # the fastest core without rectification: coarse jumps to 32 then plain Euler
    x, t = p.x0, 0
    for t_next in init[1:]:
        x = p.step(x, p.velocity(x[None], torch.tensor([t]))[0], t, t_next)
        t = t_next
    for i in range(t, 50):
        x = p.step(x, p.velocity(x[None], torch.tensor([i]))[0], i, i + 1)
    err_plain = (x - ref).pow(2).mean().sqrt()
    err_chords = (res.hits[1].x - ref).pow(2).mean().sqrt()
    assert err_chords < 0.5 * err_plain


# --------------------------------------------------------------------------- Proposition 2.1


def test_proposition_2_1_rectified_error_is_higher_order():
    """||x~_t' + r(x_t, x~_t, t, t'-t) - x_t'|| = o(||x~_t' - x_t'||) as t' - t -> 0."""
    f = lambda x, t: -(x**3) + torch.sin(3 * t)  # noqa: E731
    from tests.odes import rk4

    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(8, generator=g, dtype=torch.float64)
    x_tilde = x_t + 0.05 * torch.randn(8, generator=g, dtype=torch.float64)
    t = 0.3
    gaps = np.array([0.2, 0.1, 0.05, 0.025, 0.0125])
    plain, rect = [], []
    for h in gaps:
        sig = torch.tensor([1 - t, 1 - t - h], dtype=torch.float64)  # one Euler jump t -> t + h
        jump = EulerStep(sig)
        x_tp = rk4(f, x_t, t, t + h, 200)
        xt_tp = rk4(f, x_tilde, t, t + h, 200)
        tt = torch.tensor(t, dtype=torch.float64)
        r = jump(x_t, -f(x_t, tt), 0, 1) - jump(x_tilde, -f(x_tilde, tt), 0, 1)  # Eq. 4 as two jumps
        plain.append((xt_tp - x_tp).norm().item())
        rect.append((xt_tp + r - x_tp).norm().item())
    order_plain = np.polyfit(np.log(gaps), np.log(plain), 1)[0]
    order_rect = np.polyfit(np.log(gaps), np.log(rect), 1)[0]
    assert order_rect >= order_plain + 1, (order_plain, order_rect)


# --------------------------------------------------------------------------- init sequences


def test_theorem_2_5_example():
    assert continuous_init_sequence(4, 10 / 3) == pytest.approx([0, 0.2, 0.4, 0.7])
    assert continuous_init_sequence(3, 2.5) == pytest.approx([0, 0.3, 0.6])  # s <= 3: t2 = t3 / 2
    assert continuous_init_sequence(3, 4.0) == pytest.approx([0, 0.5, 0.75])  # s > 3: t2 = 2 t3 - 1


def test_init_sequence_discretised():
    assert init_sequence(4, 10 / 3, 50) == [0, 10, 20, 35]
    assert init_sequence(4, 1 / (1 - 0.64), 50) == [0, 8, 16, 32]  # reproduces the K=4 preset
    for k in range(1, 65):
        for n in (k, k + 1, max(k, 50), 100):
            seq = init_sequence(k, None, n)
            assert len(seq) == k and seq[0] == 0 and seq[-1] < n
            assert all(b > a for a, b in zip(seq, seq[1:]))


def test_presets_and_scaling_rule():
    assert preset_init_sequence(8, 50) == [0, 2, 4, 8, 16, 24, 32, 40]
    assert preset_init_sequence(6, 50) == [0, 3, 6, 12, 24, 36]
    assert preset_init_sequence(4, 100) == [0, 16, 32, 64]
    assert preset_init_sequence(8, 10) == [0, 1, 2, 3, 4, 5, 6, 8]
    assert preset_init_sequence(3, 50) == init_sequence(3, None, 50)


def test_parse_init_t_at_the_config_boundary():
    assert parse_init_t("0-2-4-8-16-24-32-40") == [0, 2, 4, 8, 16, 24, 32, 40]
    assert parse_init_t([0, 8, 16, 32]) == [0, 8, 16, 32]
    assert parse_init_t("auto") == "auto" and parse_init_t(None) is None
    assert CHORDS(8, "uniform").resolve_init_t(50) == [0, 6, 12, 18, 24, 30, 36, 42]  # Table 3's uniform
    with pytest.raises(ValueError, match="0-a-2"):
        parse_init_t("0-a-2")


# --------------------------------------------------------------------------- stop rules


def test_core_index_stops_at_that_hit():
    p = GaussianFlow(num_steps=50)
    full = sample(CHORDS(8, PRESETS[2]), p.velocity, p.x0, p.step, 50)
    for i in range(9):
        seen = []
        res = sample(CHORDS(8, PRESETS[2]), p.velocity, p.x0, p.step, 50, stop=CoreIndex(i), callback=seen.append)
        assert len(res.hits) == i + 1 and seen == res.hits
        assert res.rounds == full.hits[i].round and torch.equal(res.output, full.hits[i].x)


def test_residual_stop_rule_is_the_official_one():
    p = GaussianFlow(num_steps=50, shift=3.0)
    full = sample(CHORDS(8, PRESETS[2]), p.velocity, p.x0, p.step, 50)
    diffs = [torch.linalg.norm(b.x - a.x).item() / a.x.numel() for a, b in zip(full.hits, full.hits[1:])]
    thr = sorted(diffs)[len(diffs) // 2] * 1.0001
    first = next(i for i, d in enumerate(diffs) if d < thr) + 1
    res = sample(CHORDS(8, PRESETS[2]), p.velocity, p.x0, p.step, 50, stop=Residual(thr))
    assert len(res.hits) == first + 1 and torch.equal(res.output, full.hits[first].x)
    assert res.rounds == full.hits[first].round


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "algo,n,match",
    [
        (CHORDS(4, [1, 8, 16, 32]), 50, "start at 0"),
        (CHORDS(4, [0, 8, 8, 32]), 50, "strictly increasing"),
        (CHORDS(4, [0, 8, 16, 50]), 50, "below num_steps=50"),
        (CHORDS(3, [0, 8, 16, 32]), 50, "one per core"),
        (CHORDS(0, [0]), 50, "num_cores 0"),
        (CHORDS(4, "auto", speedup=0.5), 50, "speedup 0.5"),
        (CHORDS(9, None), 8, "num_cores 9"),
        (Sequential(), 0, "num_steps 0"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(algo, n, match):
    p = linear(num_steps=max(n, 1))
    with pytest.raises(ValueError, match=match):
        sample(algo, p.velocity, p.x0, p.step, n)


def test_bad_stop_rules():
    p = linear()
    with pytest.raises(ValueError, match="stop index 5"):
        sample(CHORDS(4, [0, 8, 16, 32]), p.velocity, p.x0, p.step, 50, stop=CoreIndex(5))
    with pytest.raises(ValueError, match="threshold -1"):
        sample(CHORDS(4, [0, 8, 16, 32]), p.velocity, p.x0, p.step, 50, stop=Residual(-1))


# --------------------------------------------------------------------------- properties


@st.composite
def chords_setups(draw):
    n = draw(st.integers(1, 70))
    k = draw(st.integers(1, min(n, 64)))
    init = sorted(draw(st.sets(st.integers(1, n - 1), min_size=k - 1, max_size=k - 1))) if k > 1 else []
    stop = draw(st.one_of(st.none(), st.integers(0, k).map(CoreIndex), st.floats(0, 1e-2).map(Residual)))
    return n, k, [0] + init, stop


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chords_setups())
def test_chords_properties(setup):
    n, k, init, stop = setup
    p = nonlinear(num_steps=n, dim=4)
    p.max_batch = k
    res = sample(CHORDS(k, init), p.velocity, p.x0, p.step, n, stop=stop)
    rounds = [h.round for h in res.hits]
    assert rounds == sorted(rounds)
    assert rounds == CHORDS(k, init).hit_rounds(n)[: len(rounds)]
    assert any(h.x is res.output for h in res.hits)
    assert res.rounds == res.hits[-1].round <= n
    assert res.nfe == sum(p.calls) and max(p.calls) <= k
    gaps_ok = all(b - a >= 2 for a, b in zip(init, init[1:])) and init[-1] < n - 1
    if gaps_ok:  # with gaps >= 2 every core arrives in its own round
        assert len(set(rounds)) == len(rounds)
    if stop is None:
        assert len(res.hits) == k + 1
        assert (res.output - seq_output(nonlinear(num_steps=n, dim=4))).abs().max().item() <= 1e-12
