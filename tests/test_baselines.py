"""ParaDIGMS and SRDS against sequential sampling on ODEs with known structure (CPU, float64)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import baselines
from baselines import SRDS, ParaDIGMS, Sequential
from baselines.srds import block_bounds
from chords.core import CoreIndex, SampleResult, sample
from chords.steps import DDIMStep, EulerStep

Tensor = torch.Tensor
F64 = torch.float64


# --------------------------------------------------------------------------- ODE fixtures


@dataclass
class Oracle:
    """A batched velocity ``f(x, grid value)`` that checks every call against ``num_cores``."""

    f: Callable[[Tensor, Tensor], Tensor]
    grid: Tensor  # one value per grid index 0..N (sigma, or alpha-bar for DDIM)
    num_cores: int = 10**9
    batches: list[int] = field(default_factory=list)
    per_state: bool = False  # evaluate each state alone: values independent of the batch, bitwise

    def __call__(self, xs: Tensor, steps: Tensor) -> Tensor:
        assert steps.dtype == torch.long and steps.shape == (xs.shape[0],)
        assert 1 <= xs.shape[0] <= self.num_cores, f"batch {xs.shape[0]} > num_cores {self.num_cores}"
        assert int(steps.min()) >= 0 and int(steps.max()) < len(self.grid) - 1
        self.batches.append(xs.shape[0])
        g = self.grid[steps].to(xs.dtype).reshape(-1, *([1] * (xs.ndim - 1)))
        if self.per_state:
            return torch.cat([self.f(x[None], gi[None]) for x, gi in zip(xs, g)])
        return self.f(xs, g)


@dataclass
class Problem:
    f: Callable[[Tensor, Tensor], Tensor]
    grid: Tensor
    step: Callable
    x0: Tensor

    @property
    def num_steps(self) -> int:
        return len(self.grid) - 1

    def oracle(self, num_cores: int = 10**9, per_state: bool = False) -> Oracle:
        return Oracle(self.f, self.grid, num_cores, per_state=per_state)

    def run(self, algorithm, per_state: bool = False, **kw) -> tuple[SampleResult, Oracle]:
        oracle = self.oracle(algorithm.num_cores, per_state)
        return sample(algorithm, oracle, self.x0, self.step, self.num_steps, **kw), oracle

    def sequential(self) -> Tensor:
        return sample(Sequential(), self.oracle(1), self.x0, self.step, self.num_steps).output


def _x0(shape: tuple[int, ...], seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def linear_ode(num_steps: int = 40, seed: int = 0) -> Problem:
    """dx/dsigma = lam(sigma) x with lam(s) = 1 + s, integrated from sigma = 1 down to 0."""
    sig = torch.linspace(1, 0, num_steps + 1, dtype=F64)
    return Problem(lambda x, s: (1 + s) * x, sig, EulerStep(sig), _x0((3, 5), seed))


def nonlinear_ode(num_steps: int = 40, seed: int = 0) -> Problem:
    """dx/dsigma = x^3 + sin(3 sigma) from sigma = 1 to 0, i.e. dx/dt = -x^3 - sin(3(1 - t))."""
    sig = torch.linspace(1, 0, num_steps + 1, dtype=F64)
    return Problem(lambda x, s: x**3 + torch.sin(3 * s), sig, EulerStep(sig), _x0((16,), seed))


def gaussian_flow(num_steps: int = 50, seed: int = 0) -> Problem:
    """Flow matching for data N(mu, s^2): exact velocity on an Euler sigma grid from 1 to 0."""
    gen = torch.Generator().manual_seed(1000 + seed)
    mu = torch.randn((4, 8), generator=gen, dtype=F64)
    s = 0.1 + 0.5 * torch.rand((4, 8), generator=gen, dtype=F64)

    def v(x: Tensor, sigma: Tensor) -> Tensor:
        a = 1 - sigma
        return (sigma - a * s**2) * (x - a * mu) / (a**2 * s**2 + sigma**2) - mu

    sig = torch.linspace(1, 0, num_steps + 1, dtype=F64)
    return Problem(v, sig, EulerStep(sig), _x0((4, 8), seed))


def gaussian_ddim(num_steps: int = 25, seed: int = 0) -> Problem:
    """Epsilon prediction for Gaussian data on a DDIM grid (linear betas, timesteps from 999)."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    timesteps = torch.linspace(999, 0, num_steps).round().long()
    step = DDIMStep(alphas_cumprod, timesteps, "epsilon")
    gen = torch.Generator().manual_seed(2000 + seed)
    mu = torch.randn((2, 6), generator=gen, dtype=F64)
    s = 0.2 + 0.5 * torch.rand((2, 6), generator=gen, dtype=F64)

    def eps(x: Tensor, a: Tensor) -> Tensor:
        # x = sqrt(a) d + sqrt(1 - a) e with d ~ N(mu, s^2): E[e | x] in closed form
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)

    grid = step._alpha_grid  # alpha-bar at every grid index
    return Problem(eps, grid, step, _x0((2, 6), seed))


PROBLEMS = {"linear": linear_ode, "nonlinear": nonlinear_ode, "gaussian": gaussian_flow}


def rmse(a: Tensor, b: Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


def max_err(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


def srds_eval_bound(n: int, blocks: int, last: int) -> int:
    """Evaluations SRDS can spend at most: iteration p < last solves the blocks m >= p fully,
    the last iteration only takes one coarse evaluation per block m >= last."""
    t = block_bounds(n, blocks)
    sizes = [t[m + 1] - t[m] for m in range(blocks)]
    return sum(sum(sizes[p:]) for p in range(last)) + (blocks - last)


# --------------------------------------------------------------------------- package surface


def test_exports():
    import chords.core

    assert baselines.Sequential is chords.core.Sequential
    assert set(baselines.__all__) == {"Sequential", "ParaDIGMS", "SRDS"}


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("k", [1, 3, 8, 64])
def test_paradigms_tolerance_zero_is_sequential(name, k):
    prob = PROBLEMS[name]()
    res, oracle = prob.run(ParaDIGMS(k, tolerance=0.0))
    assert max_err(res.output, prob.sequential()) <= 1e-12
    assert [h.core for h in res.hits] == [1]
    assert res.rounds <= prob.num_steps
    assert res.nfe == sum(oracle.batches) and res.rounds == len(oracle.batches)
    assert max(oracle.batches) <= k


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("k,blocks", [(1, None), (2, 5), (4, None), (8, 7), (8, 1), (3, 40), (16, 13)])
def test_srds_all_iterations_is_sequential(name, k, blocks):
    prob = PROBLEMS[name]()
    alg = SRDS(k, num_blocks=blocks, tolerance=0.0, max_iters=blocks)
    res, oracle = prob.run(alg)
    nb = alg.blocks(prob.num_steps)
    assert [h.core for h in res.hits] == list(range(nb + 1))
    assert max_err(res.output, prob.sequential()) <= 1e-12
    assert res.nfe == sum(oracle.batches) and max(oracle.batches) <= k
    # the exact chain F(x0), F(x^1_1), ... is N sequential evaluations
    assert res.rounds >= prob.num_steps


def test_srds_default_blocks_and_iterations():
    alg = SRDS(4, tolerance=0.0)
    assert alg.blocks(50) == 7 and alg.blocks(1) == 1 and alg.blocks(2) == 1 and alg.blocks(3) == 2
    assert alg.max_hits(50) == 8
    assert SRDS(4, max_iters=3).max_hits(50) == 4
    assert SRDS(4, num_blocks=5, max_iters=99).max_hits(50) == 6  # capped at B
    assert block_bounds(10, 4) == [0, 3, 6, 8, 10]
    assert block_bounds(7, 7) == list(range(8))


def test_ddim_grid_paradigms():
    prob = gaussian_ddim()
    ref = prob.sequential()
    exact, oracle = prob.run(ParaDIGMS(6, tolerance=0.0))
    assert max_err(exact.output, ref) <= 1e-12
    assert max(oracle.batches) <= 6
    loose, _ = prob.run(ParaDIGMS(6, tolerance=0.1))
    assert torch.isfinite(loose.output).all()
    assert loose.rounds <= exact.rounds and rmse(loose.output, ref) < 0.05


def test_paradigms_judges_every_sample():
    # a state of two samples, one of which never moves: the window must slide exactly as for
    # the moving sample alone (the worst sample decides; a mean would halve its error)
    prob = nonlinear_ode(50)
    x0 = prob.x0[None]  # one sample of 16 values
    moving = Problem(prob.f, prob.grid, prob.step, x0)
    pair_f = lambda x, s: torch.cat([prob.f(x[:, :1], s), torch.zeros_like(x[:, 1:])], dim=1)  # noqa: E731
    pair = Problem(pair_f, prob.grid, prob.step, torch.cat([x0, torch.zeros_like(x0)]))
    for tol in (1e-3, 1e-2, 5e-2, 0.2):
        alone, _ = moving.run(ParaDIGMS(6, tol))
        both, _ = pair.run(ParaDIGMS(6, tol))
        assert (both.rounds, both.nfe) == (alone.rounds, alone.nfe), tol
        assert torch.equal(both.output[:1], alone.output) and not both.output[1:].any()


def test_paradigms_zero_variance_means_no_change():
    # noise_variance 0 is an infinite scale (diffusers multiplies by 1 / 0): such positions are
    # accepted only unchanged, so a zero table behaves as tolerance 0
    prob = gaussian_flow(30)

    class Exact:
        noise_variance = torch.zeros(31, dtype=F64)

        def __call__(self, x, v, i, j):
            return prob.step(x, v, i, j)

    strict = sample(ParaDIGMS(5, 0.3), prob.oracle(5), prob.x0, Exact(), 30)
    exact, _ = prob.run(ParaDIGMS(5, 0.0))
    assert (strict.rounds, strict.nfe) == (exact.rounds, exact.nfe) and torch.equal(strict.output, exact.output)
    Exact.noise_variance = -Exact.noise_variance - 1
    with pytest.raises(ValueError, match=">= 0"):
        sample(ParaDIGMS(5, 0.3), prob.oracle(5), prob.x0, Exact(), 30)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("n", [10, 25, 50])
def test_ddim_noise_variance_is_the_variance_of_the_step_out_of_each_index(n, set_alpha_to_one):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMParallelScheduler(set_alpha_to_one=set_alpha_to_one, steps_offset=1, beta_schedule="scaled_linear",
                                            beta_start=0.00085, beta_end=0.012)
    sched.set_timesteps(n)
    step = DDIMStep(sched.alphas_cumprod, sched.timesteps, final_alpha_cumprod=float(sched.final_alpha_cumprod))
    ours = step.noise_variance
    ref = torch.stack([sched._get_variance(int(t)) for t in sched.timesteps]).double()
    assert ours.shape == (n + 1,) and ours[n] == 0  # data: the pipeline appends 0
    # diffusers computes it in float32 from the same float32 alpha-bars: (1 - a_j / a_{j+1}) loses
    # up to ~2 float32 ulps of 1 to cancellation, times (1 - a_{j+1}) / (1 - a_j) <= 1
    torch.testing.assert_close(ours[:n], ref, rtol=1e-5, atol=4 * torch.finfo(torch.float32).eps)
    assert (ours[n - 1] == 0) == set_alpha_to_one  # onto alpha-bar 1: no posterior variance


# --------------------------------------------------------------------------- against diffusers' pipeline


@pytest.fixture
def one_thread():
    # the tiny UNet is fast on one thread and crawls when threads oversubscribe the CPU
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "n,k,tol,pred",
    [(25, 4, 0.1, "epsilon"), (25, 8, 0.3, "epsilon"), (20, 3, 0.0, "epsilon"), (30, 6, 0.1, "v_prediction"),
     (12, 16, 1.0, "epsilon")],
)
def test_paradigms_equals_diffusers_pipeline(n, k, tol, pred, one_thread):
    """Same rounds, evaluations and output as StableDiffusionParadigmsPipeline(DDIMParallelScheduler)
    on a tiny random UNet with classifier-free guidance and two latents."""
    pytest.importorskip("diffusers")
    from tests.sd_paradigms import side_by_side

    run = side_by_side(n, k, tol, pred)
    assert (run.ours.rounds, run.ours.nfe) == (run.ref_rounds, run.ref_nfe)
    # Same windows, same UNet batches, same float32 step and cumulative-sum arithmetic: the
    # outputs are equal bitwise here. The bound leaves room for float32 rounding of a
    # differently ordered step (a few ulps of the output's magnitude per step).
    scale = run.ref.abs().max().item()
    assert run.max_diff <= n * 8 * torch.finfo(torch.float32).eps * scale, run.max_diff


@pytest.mark.parametrize("n,k,tol", [(25, 4, 0.1), (20, 8, 0.3), (12, 16, 1.0)])
def test_paradigms_equals_diffusers_pipeline_without_alpha_to_one(n, k, tol, one_thread):
    """set_alpha_to_one=False (SD 1.x's scheduler): the pipeline steps onto alpha-bar 1 after the
    last timestep but scales that position's error with final_alpha_cumprod; same rounds,
    evaluations and output (one value for both took one round more)."""
    pytest.importorskip("diffusers")
    from tests.sd_paradigms import side_by_side

    run = side_by_side(n, k, tol, set_alpha_to_one=False)
    assert (run.ours.rounds, run.ours.nfe) == (run.ref_rounds, run.ref_nfe)
    scale = run.ref.abs().max().item()
    assert run.max_diff <= n * 8 * torch.finfo(torch.float32).eps * scale, run.max_diff


# --------------------------------------------------------------------------- speed and accuracy


@pytest.mark.parametrize("tol", [1e-2, 5e-2, 1e-1])
def test_paradigms_fewer_rounds_close_to_sequential(tol):
    prob = gaussian_flow(50)
    res, oracle = prob.run(ParaDIGMS(8, tolerance=tol))
    assert res.rounds < prob.num_steps
    assert max(oracle.batches) <= 8 and res.nfe == sum(oracle.batches)
    # the error scale is sigma^2: the accepted per-position RMS change is <= tol * sigma
    assert rmse(res.output, prob.sequential()) < 0.05


def test_paradigms_looser_tolerance_is_not_slower():
    prob = gaussian_flow(50)
    rounds = [prob.run(ParaDIGMS(8, tolerance=tol))[0].rounds for tol in (0.0, 1e-3, 1e-2, 1e-1)]
    assert rounds == sorted(rounds, reverse=True)
    assert rounds[-1] < rounds[0]


def test_srds_fewer_rounds_close_to_sequential():
    prob = gaussian_flow(50)
    res, oracle = prob.run(SRDS(8, tolerance=1e-3))
    assert res.rounds < prob.num_steps
    assert max(oracle.batches) <= 8 and res.nfe == sum(oracle.batches)
    assert len(res.hits) < SRDS(8).max_hits(50)  # stopped early on the tolerance
    assert rmse(res.output, prob.sequential()) < 1e-3
    # the stop rule: the last two iterates are within tolerance, no earlier pair was
    diffs = [rmse(a.x, b.x) for a, b in zip(res.hits[1:], res.hits[:-1])]
    assert diffs[-1] < 1e-3 and all(d >= 1e-3 for d in diffs[:-1])


def test_srds_single_core():
    prob = gaussian_flow(30)
    res, oracle = prob.run(SRDS(1, tolerance=0.0))
    assert set(oracle.batches) == {1}
    assert res.rounds == res.nfe == srds_eval_bound(30, 5, 5)  # one core: nothing is wasted
    assert max_err(res.output, prob.sequential()) <= 1e-12
    res, oracle = prob.run(SRDS(1, tolerance=1e-3))
    assert set(oracle.batches) == {1} and rmse(res.output, prob.sequential()) < 1e-3


def test_srds_coarse_sweep_first():
    prob = gaussian_flow(49)
    res, _ = prob.run(SRDS(8, tolerance=0.0))
    # with K >= B the coarse sweep is never starved: one round per block
    assert res.hits[0].core == 0 and res.hits[0].round == 7
    # the coarse sweep itself: x^0_{m+1} = G(x^0_m)
    t = block_bounds(49, 7)
    x = prob.x0
    for m in range(7):
        v = prob.f(x[None], prob.grid[t[m]].reshape(1, 1, 1))[0]
        x = prob.step(x, v, t[m], t[m + 1])
    assert max_err(res.hits[0].x, x) <= 1e-12
    # iteration p makes blocks < p exact; the first coarse block is replaced by F(x0) at p = 1
    rounds = [h.round for h in res.hits]
    assert rounds == sorted(rounds)


def parareal_reference(prob: Problem, blocks: int, iters: int) -> list[Tensor]:
    """Plain (unpipelined) Parareal, written out directly: the final state of each iteration.

    Slow and obviously right; it evaluates one state per call, as ``Oracle(per_state=True)``
    does, so SRDS (whatever its schedule) must equal it bitwise."""
    n = prob.num_steps
    t = block_bounds(n, blocks)

    def v(x: Tensor, i: int) -> Tensor:
        return prob.oracle(per_state=True)(x[None], torch.tensor([i]))[0]

    def coarse(x: Tensor, m: int) -> Tensor:
        return prob.step(x, v(x, t[m]), t[m], t[m + 1])

    def fine(x: Tensor, m: int) -> Tensor:
        for i in range(t[m], t[m + 1]):
            x = prob.step(x, v(x, i), i, i + 1)
        return x

    xs = [prob.x0]
    for m in range(blocks):
        xs.append(coarse(xs[-1], m))
    finals = [xs[-1]]
    for p in range(1, iters + 1):
        new = xs[:p] + [fine(xs[p - 1], p - 1)]
        for m in range(p, blocks):
            new.append(fine(xs[m], m) + (coarse(new[m], m) - coarse(xs[m], m)))
        xs = new
        finals.append(xs[-1])
    return finals


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("k,n,blocks", [(1, 20, 4), (3, 23, 5), (8, 50, None), (64, 31, 6)])
def test_srds_iterates_match_plain_parareal(name, k, n, blocks):
    # the schedule decides when iterates appear, never their values: bitwise equal
    prob = PROBLEMS[name](n)
    alg = SRDS(k, num_blocks=blocks, tolerance=0.0)
    res, _ = prob.run(alg, per_state=True)
    ref = parareal_reference(prob, alg.blocks(n), alg.iterations(n))
    assert len(res.hits) == len(ref)
    for hit, x in zip(res.hits, ref):
        assert torch.equal(hit.x, x), hit.core


# Rounds at which iteration 2's output arrives on N = 50 (B = 7), i.e. the rounds of a run whose
# tolerance stops after iteration 2. Before the critical-path-first schedule: 121, 59, 39, 30, 22, 20.
SRDS_N50_ITER2_MAX_ROUNDS = {1: 97, 2: 49, 3: 35, 4: 28, 6: 21, 8: 20}


@pytest.mark.parametrize("k", sorted(SRDS_N50_ITER2_MAX_ROUNDS))
def test_srds_critical_path_first(k):
    prob = nonlinear_ode(50)
    ref = parareal_reference(prob, 7, 2)
    d1, d2 = rmse(ref[1], ref[0]), rmse(ref[2], ref[1])
    assert d2 < d1
    res, oracle = prob.run(SRDS(k, tolerance=math.sqrt(d1 * d2)), per_state=True)  # stops after iteration 2
    assert [h.core for h in res.hits] == [0, 1, 2]
    assert res.rounds == res.hits[-1].round <= SRDS_N50_ITER2_MAX_ROUNDS[k]
    assert max(oracle.batches) <= k
    for hit, x in zip(res.hits, ref):
        assert torch.equal(hit.x, x), hit.core


@pytest.mark.parametrize("n,blocks", [(50, None), (23, 5), (16, 16)])
def test_srds_later_iterations_never_delay_earlier_ones(n, blocks):
    # work serving iteration p + 1 only fills cores that iteration p leaves idle: iteration p's
    # output arrives at the same round whatever iterations follow it, and with one core no
    # evaluation is spent on a later iteration before it (rounds = the work it needs)
    prob = gaussian_flow(n)
    nb = SRDS(1, num_blocks=blocks).blocks(n)
    for k in range(1, 9):
        full, _ = prob.run(SRDS(k, num_blocks=blocks, tolerance=0.0))
        for p in range(nb + 1):
            capped, _ = prob.run(SRDS(k, num_blocks=blocks, tolerance=0.0, max_iters=max(p, 1)))
            assert capped.hits[p].round == full.hits[p].round, (k, p)
            if k == 1:
                assert full.hits[p].round == srds_eval_bound(n, nb, p), p


@pytest.mark.parametrize("k", [3, 50, 200])
def test_paradigms_infinite_tolerance_is_one_picard_sweep_per_window(k):
    # every position accepted: the window jumps by its full length each round, and each window
    # is a single Picard sweep from its start state held constant
    prob = nonlinear_ode(50)
    res, oracle = prob.run(ParaDIGMS(k, tolerance=math.inf))
    assert res.rounds == math.ceil(50 / k)
    x = prob.x0
    for b in range(0, 50, k):
        e = min(b + k, 50)
        drift = sum(prob.step(x, prob.f(x[None], prob.grid[i].reshape(1, 1))[0], i, i + 1) - x for i in range(b, e))
        x = x + drift
    assert max_err(res.output, x) <= 1e-12


def test_srds_max_iters_and_stop_rule():
    prob = gaussian_flow(36)
    res, _ = prob.run(SRDS(6, tolerance=0.0, max_iters=2))
    assert [h.core for h in res.hits] == [0, 1, 2]
    full, _ = prob.run(SRDS(6, tolerance=0.0))
    assert all(torch.equal(a.x, b.x) for a, b in zip(res.hits, full.hits))
    assert res.rounds <= full.rounds
    stopped, _ = prob.run(SRDS(6, tolerance=0.0), stop=CoreIndex(1))
    assert len(stopped.hits) == 2 and torch.equal(stopped.output, full.hits[1].x)


def test_sequential_reexport_matches():
    prob = linear_ode(12)
    res, oracle = prob.run(Sequential())
    assert res.rounds == res.nfe == 12 and oracle.batches == [1] * 12


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "alg,bad",
    [
        (ParaDIGMS(0), "0"),
        (ParaDIGMS(2.5), "2.5"),
        (ParaDIGMS(True), "True"),
        (ParaDIGMS(4, tolerance=-0.1), "-0.1"),
        (ParaDIGMS(4, tolerance=float("nan")), "nan"),
        (SRDS(0), "0"),
        (SRDS(-3), "-3"),
        (SRDS(4, num_blocks=0), "0"),
        (SRDS(4, num_blocks=11), "11"),
        (SRDS(4, num_blocks=2.0), "2.0"),
        (SRDS(4, tolerance=-1.0), "-1.0"),
        (SRDS(4, max_iters=0), "0"),
        (SRDS(4, max_iters=1.5), "1.5"),
    ],
)
def test_bad_arguments(alg, bad):
    prob = linear_ode(10)
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")) as info:
        sample(alg, prob.oracle(), prob.x0, prob.step, 10)
    assert "must" in str(info.value)


def test_bad_noise_variance_length():
    prob = linear_ode(10)
    short = EulerStep(torch.linspace(1, 0, 6, dtype=F64))
    with pytest.raises(ValueError, match="11"):
        sample(ParaDIGMS(2), prob.oracle(), prob.x0, short, 10)


def test_step_without_noise_variance():
    prob = nonlinear_ode(30)

    def plain(x, v, i, j):  # no noise_variance attribute: unit scale
        return prob.step(x, v, i, j)

    res = sample(ParaDIGMS(5, 0.0), prob.oracle(5), prob.x0, plain, 30)
    assert max_err(res.output, prob.sequential()) <= 1e-12


# --------------------------------------------------------------------------- properties


def _check_common(res: SampleResult, oracle: Oracle, k: int, max_hits: int) -> None:
    assert all(1 <= b <= k for b in oracle.batches)
    assert res.nfe == sum(oracle.batches) and res.rounds == len(oracle.batches)
    assert res.rounds <= res.nfe <= k * res.rounds
    rounds = [h.round for h in res.hits]
    assert rounds == sorted(rounds) and rounds[-1] <= res.rounds
    assert 1 <= len(res.hits) <= max_hits
    assert any(h.x is res.output for h in res.hits)
    assert torch.isfinite(res.output).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    k=st.integers(1, 16),
    n=st.integers(1, 60),
    tol=st.one_of(st.just(0.0), st.floats(1e-4, 0.5)),
    name=st.sampled_from(sorted(PROBLEMS)),
)
def test_paradigms_properties(k, n, tol, name):
    prob = PROBLEMS[name](n)
    alg = ParaDIGMS(k, tolerance=tol)
    res, oracle = prob.run(alg)
    _check_common(res, oracle, k, alg.max_hits(n))
    assert [h.core for h in res.hits] == [1]
    # the window start advances at least one index per round
    assert res.rounds <= n
    # ... and at most k (the window length), so at least ceil(n / k) rounds
    assert res.rounds >= math.ceil(n / k)
    if tol == 0.0:
        assert max_err(res.output, prob.sequential()) <= 1e-12


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    k=st.integers(1, 16),
    n=st.integers(1, 60),
    data=st.data(),
    tol=st.one_of(st.just(0.0), st.floats(1e-4, 0.5)),
    name=st.sampled_from(sorted(PROBLEMS)),
)
def test_srds_properties(k, n, data, tol, name):
    blocks = data.draw(st.one_of(st.none(), st.integers(1, n)), label="num_blocks")
    max_iters = data.draw(st.one_of(st.none(), st.integers(1, 70)), label="max_iters")
    prob = PROBLEMS[name](n)
    alg = SRDS(k, num_blocks=blocks, tolerance=tol, max_iters=max_iters)
    res, oracle = prob.run(alg)
    nb, last = alg.blocks(n), alg.iterations(n)
    _check_common(res, oracle, k, alg.max_hits(n))
    # one hit per iteration, in order, starting with the coarse sweep
    assert [h.core for h in res.hits] == list(range(len(res.hits)))
    # every evaluation belongs to a distinct solve step: bounded by the full Parareal work
    assert res.nfe <= srds_eval_bound(n, nb, last)
    # the coarse sweep alone is B dependent evaluations
    assert res.hits[0].round >= nb
    if tol == 0.0:
        assert len(res.hits) == last + 1
        if last == nb:
            assert max_err(res.output, prob.sequential()) <= 1e-12
            assert res.rounds >= n


@pytest.mark.parametrize("tol", [0.5, 0.1])
def test_paradigms_never_accepts_a_nan_error(tol):
    """x' = x^3 blows up from a sloppy Picard iterate; the NaN it leaves must not be accepted
    (hypothesis found k=10, n=21, tol=0.5 returning a NaN latent)."""
    prob = nonlinear_ode(21)
    res = sample(ParaDIGMS(10, tol), prob.oracle(10), prob.x0, prob.step, 21)
    assert torch.isfinite(res.output).all()
    assert max_err(res.output, prob.sequential()) < 0.2


def test_paradigms_error_of_large_latents_is_summed_in_chunks_to_the_same_value():
    """Latents above the chunk size (HunyuanVideo-size) sum the float64 error in cached chunks:
    the same value as one float64 mean up to float64 rounding, the inputs untouched; small
    latents take the one-pass path (exactly torch.mean)."""
    from baselines import paradigms

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        new = torch.randn(3, 5, paradigms._CHUNK // 2 + 7, generator=g).to(dtype)
        old = (new.double() + 0.01 * torch.randn(new.shape, generator=g, dtype=torch.float64)).to(dtype)
        keep = new.clone(), old.clone()
        want = (new.double() - old.double()).pow(2).flatten(1).mean(1).max().item()
        got = ParaDIGMS._worst_change(new, old)
        assert got == pytest.approx(want, rel=1e-13) and got > 0
        assert torch.equal(new, keep[0]) and torch.equal(old, keep[1])
        small_new, small_old = new[:, :1, :100], old[:, :1, :100]
        assert ParaDIGMS._worst_change(small_new, small_old) == (small_new.double() - small_old.double()).pow(2).flatten(1).mean(1).max().item()
    vec = torch.randn(paradigms._CHUNK + 3, generator=g, dtype=torch.float64)
    assert ParaDIGMS._worst_change(vec, vec * 0.5) == pytest.approx((vec * 0.5).pow(2).mean().item(), rel=1e-13)
