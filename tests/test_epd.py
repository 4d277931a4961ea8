"""EPD (issue 18): fractional grid positions in the core, and the EPD solver.

* Continuous time: a float position equal to an integer gives exactly the integer result in
  the step functions (Euler, DDIM, both arithmetics, every dtype mix) and in the embedded
  models' velocities; fractional positions read sigma / timesteps / alpha-bar as documented
  (linear in the grid index; DDIM: linear in the timestep); the core sends float64 ``steps``
  only when an algorithm asks for a fractional position.
* EPD: one direction at r = 1/2 with weight 1 is the midpoint rule on the ``gaussian`` model's
  exact ODE and converges at second order; rounds alternate 1 and K states; tables are checked
  against the run (missing or mismatched: one line, before any model loads) and their content
  is part of the run key.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler
from omegaconf import OmegaConf

from baselines.epd import EPD, EPDTable, ipndm_direction
from chords.config import ConfigError, validate
from chords.core import Sequential, sample
from chords.epd_tables import read_table, table_key, write_table
from chords.models.digits import GaussianModel
from chords.positions import as_positions, at_positions
from chords.steps import DDIMStep, EulerStep
from tests.conftest import ROOT, cli_env, compose

BF16, F16, F32, F64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
MIXES = [(BF16, BF16), (F32, BF16), (F32, F32), (F16, F16), (BF16, F32), (F64, F64)]


def randn(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# --------------------------------------------------------------------------- continuous time


def test_as_positions_keeps_integers_long_and_makes_floats_float64():
    assert as_positions([0, 3, 7]).dtype == torch.long
    assert as_positions([torch.tensor(2), 3]).dtype == torch.long
    p = as_positions([3, 3.25])
    assert p.dtype == torch.float64 and p.tolist() == [3.0, 3.25]


def test_at_positions_integer_path_is_indexing_and_floats_interpolate():
    table = torch.tensor([1.0, 0.75, 0.25, 0.0], dtype=F32)
    idx = torch.tensor([0, 2, 3])
    assert torch.equal(at_positions(table, idx), table[idx])
    got = at_positions(table, torch.tensor([0.0, 1.5, 2.0, 2.25, 3.0], dtype=F64))
    assert got.dtype == F32 and got.tolist() == [1.0, 0.5, 0.25, 0.1875, 0.0]
    # a table that stops before data, with its value at data given
    ts = torch.tensor([999, 499], dtype=torch.long)
    assert at_positions(ts, torch.tensor([0.5, 1.5, 2.0], dtype=F64), end=-1.0).tolist() == [749.0, 249.0, -1.0]
    with pytest.raises(ValueError, match="out of range"):
        at_positions(table, torch.tensor([3.5], dtype=F64))


@pytest.mark.parametrize("precision", ["model", "float32"])
@pytest.mark.parametrize("state,vel", MIXES, ids=lambda d: str(d).removeprefix("torch."))
def test_euler_integer_valued_float_positions_are_the_integer_step(state, vel, precision):
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(12)
    step = EulerStep(sched.sigmas.clone(), precision=precision)
    x, v = randn((2, 4, 8, 8), state, 0), randn((2, 4, 8, 8), vel, 1)
    for i, j in [(0, 5), (3, 4), (11, 12)]:
        a, b = step(x, v, i, j), step(x, v, float(i), float(j))
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_euler_fractional_position_is_linear_in_the_grid_index():
    sig = torch.tensor([1.0, 0.8, 0.5, 0.0], dtype=F64)
    step = EulerStep(sig)
    x, v = randn((3,), F64, 0), randn((3,), F64, 1)
    assert step.sigma(1.25, F64).item() == 0.8 + 0.25 * (0.5 - 0.8)
    assert torch.allclose(step(x, v, 0.5, 2.75), x + ((0.5 + 0.75 * -0.5) - 0.9) * v, rtol=0, atol=1e-15)


def cogvideo_ddim(prediction_type):
    return CogVideoXDDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        prediction_type=prediction_type, rescale_betas_zero_snr=prediction_type == "v_prediction",
        set_alpha_to_one=True, snr_shift_scale=1.0, timestep_spacing="trailing",
    )


@pytest.mark.parametrize("precision", ["model", "float32"])
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("state", [BF16, F32], ids=["bf16", "fp32"])
def test_ddim_integer_valued_float_positions_are_the_integer_step(state, prediction_type, precision):
    sched = cogvideo_ddim(prediction_type)
    sched.set_timesteps(10)
    step = DDIMStep(sched.alphas_cumprod, sched.timesteps, prediction_type, float(sched.final_alpha_cumprod), precision)
    x, v = randn((2, 3, 4, 4), state, 0), randn((2, 3, 4, 4), F32, 1)
    for i, j in [(0, 4), (3, 4), (9, 10)]:
        a, b = step(x, v, i, j), step(x, v, float(i), float(j))
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_ddim_fractional_position_interpolates_the_timestep_then_alpha_bar():
    sched = cogvideo_ddim("v_prediction")
    sched.set_timesteps(10)
    step = DDIMStep(sched.alphas_cumprod, sched.timesteps, "v_prediction", float(sched.final_alpha_cumprod))
    ts = [int(t) for t in sched.timesteps]
    ac = sched.alphas_cumprod.double()
    assert step.timestep(2.5) == (ts[2] + ts[3]) / 2 and step.timestep(10) == -1.0
    t = step.timestep(2.3)  # between two integer timesteps
    lo = math.floor(t)
    want = ac[lo] + (t - lo) * (ac[lo + 1] - ac[lo])
    assert abs(step.alpha_bar(2.3, F64).item() - want.item()) < 1e-15
    # the last interval ends at the final alpha-bar (1 here), at timestep -1
    assert step.alpha_bar(10.0, F64).item() == 1.0
    assert ac[ts[9]].item() < step.alpha_bar(9.5, F64).item() < 1.0


def gaussian(n: int, dtype: str = "float64") -> tuple[GaussianModel, object]:
    m = GaussianModel(OmegaConf.create(dict(height=8, width=8, num_inference_steps=n, shift=3.0, dtype=dtype)))
    return m, m.encode("any", 0)


def test_embedded_velocities_take_integer_valued_floats_exactly():
    m, enc = gaussian(8, "float32")
    xs = torch.cat([enc.x0, enc.x0 * 0.5])
    a = m.velocity(xs, torch.tensor([3, 0]), enc.cond)
    b = m.velocity(xs, torch.tensor([3.0, 0.0], dtype=F64), enc.cond)
    assert torch.equal(a, b)
    from chords.models.embedded import DigitsDiT

    cfg = OmegaConf.load(ROOT / "configs" / "model" / "digits.yaml")
    cfg.num_inference_steps = 6
    d = DigitsDiT(cfg)
    e = d.encode("a handwritten digit 3", 0)
    xs = torch.cat([e.x0, e.x0])
    a = d.velocity(xs, torch.tensor([3, 5]), e.cond)
    assert torch.equal(a, d.velocity(xs, torch.tensor([3.0, 5.0], dtype=F64), e.cond))
    # a fractional position is a different, finite velocity between its neighbours' sigmas
    c = d.velocity(xs, torch.tensor([3.5, 6.0], dtype=F64), e.cond)
    assert torch.isfinite(c).all() and not torch.equal(c[0], a[0])


# --------------------------------------------------------------------------- the EPD solver


def midpoint(m, enc, n):
    """The explicit midpoint rule in sigma, written out by hand."""
    sig = enc.cond["sigmas"]
    x = enc.x0
    for i in range(n):
        h = sig[i + 1] - sig[i]
        d = m.velocity(x, torch.tensor([i]), enc.cond)
        half = x + 0.5 * h * d
        g = m.velocity(half, torch.tensor([i + 0.5], dtype=F64), enc.cond)
        x = x + h * g
    return x


def test_one_direction_at_half_is_the_midpoint_rule_of_second_order():
    errors = {}
    for n in (16, 32, 64):
        m, enc = gaussian(n)
        table = EPDTable.build([[0.5]] * n, [[1.0]] * n)
        res = sample(EPD(1, table), lambda xs, s: m.velocity(xs, s, enc.cond), enc.x0, enc.step, n)
        assert torch.allclose(res.output, midpoint(m, enc, n), rtol=0, atol=1e-12)
        # the untrained rule with one direction is the same
        res0 = sample(EPD(1), lambda xs, s: m.velocity(xs, s, enc.cond), enc.x0, enc.step, n)
        assert torch.equal(res0.output, res.output)
        errors[n] = (res.output - m.exact(enc.x0)).abs().max().item()
        if n == 64:
            euler = sample(Sequential(), lambda xs, s: m.velocity(xs, s, enc.cond), enc.x0, enc.step, n).output
            assert errors[n] < (euler - m.exact(enc.x0)).abs().max().item() / 50
    # second order: halving the step divides the error by about 4 (Euler: 2)
    assert errors[16] / errors[32] > 3.2 and errors[32] / errors[64] > 3.2, errors


@pytest.mark.parametrize("k", [1, 2, 4])
def test_rounds_alternate_one_and_k_states(k):
    n = 5
    m, enc = gaussian(n)
    calls = []

    def velocity(xs, steps):
        calls.append((xs.shape[0], steps.dtype, steps.tolist()))
        return m.velocity(xs, steps, enc.cond)

    res = sample(EPD(k), velocity, enc.x0, enc.step, n)
    assert res.rounds == 2 * n and res.nfe == n * (k + 1)
    assert len(res.hits) == 1 and res.hits[0].round == 2 * n and res.hits[0].core == 1
    for i in range(n):
        assert calls[2 * i] == (1, torch.long, [i])
        size, dtype, pos = calls[2 * i + 1]
        assert size == k and dtype == F64 and all(i < p <= i + 1 for p in pos)


def test_weights_scales_and_time_scales_enter_as_documented():
    n, k = 3, 2
    m, enc = gaussian(n)
    r = [[0.3, 0.9]] * n
    w = [[0.25, 0.75]] * n
    c = [[1.1, 0.9]] * n
    a = [[1.0, 1.1]] * n
    table = EPDTable.build(r, w, c, a)
    vel = lambda xs, s: m.velocity(xs, s, enc.cond)  # noqa: E731
    out = sample(EPD(k, table), vel, enc.x0, enc.step, n).output
    x = enc.x0
    for i in range(n):
        d = vel(x, torch.tensor([i]))[0:1]
        g = [vel(enc.step(x, d, i, i + r[i][j]), torch.tensor([min(i + a[i][j] * r[i][j], n)], dtype=F64)) for j in range(k)]
        x = enc.step(x, sum(w[i][j] * c[i][j] * g[j] for j in range(k)), i, i + 1)
    assert torch.allclose(out, x, rtol=0, atol=1e-12)
    plain = sample(EPD(k, table, perturb=False), vel, enc.x0, enc.step, n).output
    assert not torch.equal(plain, out)


def test_ipndm_predictor_uses_the_history():
    h = [torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([4.0])]
    assert ipndm_direction(h[:1]).item() == 1.0
    assert ipndm_direction(h[:2]).item() == 1.5 * 2 - 0.5 * 1
    assert ipndm_direction(h).item() == pytest.approx((23 * 4 - 16 * 2 + 5 * 1) / 12)
    m, enc = gaussian(6)
    vel = lambda xs, s: m.velocity(xs, s, enc.cond)  # noqa: E731
    a = sample(EPD(2, predictor="ipndm"), vel, enc.x0, enc.step, 6).output
    b = sample(EPD(2), vel, enc.x0, enc.step, 6).output
    assert not torch.equal(a, b) and (a - m.exact(enc.x0)).abs().max() < 0.1


def test_table_checks():
    with pytest.raises(ValueError, match="weights at step 0"):
        EPDTable.build([[0.5, 0.5]], [[0.5, 0.6]])
    with pytest.raises(ValueError, match=r"r at step 0"):
        EPDTable.build([[0.0]], [[1.0]])
    with pytest.raises(ValueError, match="scale at step 0"):
        EPDTable.build([[0.5]], [[1.0]], [[2.0]])
    with pytest.raises(ValueError, match="3 steps x 1 directions"):
        EPD(1, EPDTable.untrained(3, 1)).check(4)


# --------------------------------------------------------------------------- table files and config


def digits_cfg(tmp_path, *extra):
    return compose([
        "model=digits", "model.num_inference_steps=3", "algo=epd", "ngpu=2", "hardware=local",
        f"output_base_path={tmp_path / 'out'}", *extra,
    ])


def write_digits_table(path, **key_changes):
    cfg = OmegaConf.load(ROOT / "configs" / "model" / "digits.yaml")
    cfg.num_inference_steps = 3
    key = {**table_key(cfg, 2, "euler"), **key_changes}
    n = key["num_steps"]
    table = EPDTable.from_logits([[0.4, 0.8]] * n, [[0.1, -0.2]] * n)
    return write_table(path, table, key, {"note": "test"})


def test_table_file_round_trip_and_config_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = write_digits_table(tmp_path / "t.json")
    table, key, _ = read_table(path)
    assert table == EPDTable.from_logits([[0.4, 0.8]] * 3, [[0.1, -0.2]] * 3) and key["num_steps"] == 3
    spec = validate(digits_cfg(tmp_path, f"algo.table={path}"), check_weights=False)
    assert spec.algorithm.table == table and spec.algo_tag == "epd-k2-t"
    assert validate(digits_cfg(tmp_path), check_weights=False).algo_tag == "epd-k2-untrained"
    for changes, word in [({"num_steps": 4}, "num_steps"), ({"shift": 3.0}, "shift"),
                          ({"guidance_scale": 1.0}, "guidance_scale"), ({"model": "moving-digits"}, "model")]:
        bad = write_digits_table(tmp_path / "bad.json", **changes)
        with pytest.raises(ConfigError, match=f"does not fit this run: it was fitted for {word}="):
            validate(digits_cfg(tmp_path, f"algo.table={bad}"), check_weights=False)
    with pytest.raises(ConfigError, match="does not fit this run: it was fitted for num_directions=2"):
        validate(digits_cfg(tmp_path, f"algo.table={path}", "ngpu=3"), check_weights=False)
    with pytest.raises(ConfigError, match="predictor=.euler"):
        validate(digits_cfg(tmp_path, f"algo.table={path}", "algo.predictor=ipndm"), check_weights=False)
    with pytest.raises(ConfigError, match="^algo.table '.*nope.json' is not a file"):
        validate(digits_cfg(tmp_path, f"algo.table={tmp_path / 'nope.json'}"), check_weights=False)
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot be read as JSON"):
        validate(digits_cfg(tmp_path, f"algo.table={tmp_path / 'junk.json'}"), check_weights=False)
    with pytest.raises(ConfigError, match="^algo.predictor 'rk4' is invalid"):
        validate(digits_cfg(tmp_path, "algo.predictor=rk4"), check_weights=False)


def test_a_bad_table_is_one_line_and_exit_2_before_any_model_loads(tmp_path):
    bad = write_digits_table(tmp_path / "bad.json", guidance_scale=7.5)
    out = subprocess.run(
        [sys.executable, str(ROOT / "run_image_mp.py"), "model=digits", "model.num_inference_steps=3", "algo=epd",
         "ngpu=2", "hardware=local", f"algo.table={bad}", f"output_base_path={tmp_path / 'out'}"],
        capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "guidance_scale=7.5" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_the_tables_content_is_in_the_run_key(tmp_path, monkeypatch):
    from chords.rundir import digest, run_identity
    from chords.runner import _resolved_algo

    monkeypatch.chdir(ROOT)
    path = tmp_path / "t.json"

    def key():
        cfg = digits_cfg(tmp_path, f"algo.table={path}")
        spec = validate(cfg, check_weights=False)
        algo = _resolved_algo(cfg, spec)
        return digest(run_identity(OmegaConf.to_container(cfg, resolve=True), "p", algo, {"name": "local"}, 1)), algo

    write_digits_table(path)
    first, algo = key()
    assert len(algo["table_sha1"]) == 40
    assert key()[0] == first
    data = json.loads(path.read_text())
    data["r"][0][0] = 0.41  # the same file name, refitted numbers
    path.write_text(json.dumps(data))
    assert key()[0] != first


# --------------------------------------------------------------------------- the diffusers adapters (tiny models)


@pytest.mark.parametrize("family", ["flux", "sd3-5", "hunyuan", "wan2-1", "cogvideo"])
def test_adapters_take_fractional_positions(family):
    """Integer-valued floats give the integer velocity bit for bit; EPD runs end to end."""
    from tests.test_adapters import Family

    f = Family(family)
    enc = f.encoded()
    n = enc.num_steps
    xs = torch.stack([enc.x0, enc.x0])
    ints = torch.tensor([2, n - 1])
    a = f.full.velocity(xs, ints, enc.cond)
    b = f.full.velocity(xs, ints.to(F64), enc.cond)
    assert a.dtype == b.dtype and torch.equal(a, b)
    # a denoiser-only worker reads a fractional position from cond alone, as the full adapter does
    frac = torch.tensor([1.5, n - 0.25], dtype=F64)
    c = f.full.velocity(xs, frac, enc.cond)
    assert torch.isfinite(c).all() and not torch.equal(c, a)
    assert torch.equal(c, f.denoiser.velocity(xs, frac, enc.cond))
    res = sample(EPD(2), lambda x, s: f.full.velocity(x, s, enc.cond), enc.x0, enc.step, n)
    assert res.rounds == 2 * n and res.output.dtype == enc.x0.dtype and torch.isfinite(res.output).all()


def test_cogvideo_dynamic_guidance_at_a_fractional_position_is_the_pipelines_rule():
    from chords.models.cogvideo import dynamic_guidance
    from tests.test_adapters import Family

    f = Family("cogvideo")
    enc = f.encoded()
    ts = enc.cond["timesteps"]
    table = enc.cond["guidance_per_step"]
    n = len(ts)
    got = f.full.guidance_at(table, ts, torch.tensor([1.5, 2.0], dtype=F64), 1)
    t = (float(ts[1]) + float(ts[2])) / 2
    want = dynamic_guidance(f.cfg["guidance_scale"], [t, float(ts[2])], n)
    assert got.tolist() == torch.tensor(want, dtype=torch.float32).tolist()
    assert got[1] == f.full.guidance_at(table, ts, torch.tensor([2]), 1)[0]


def test_fractional_positions_cross_the_process_backend_exactly(tmp_path, monkeypatch):
    """EPD over two worker processes (shared memory and sockets) equals the local loop bit for bit:
    the fractional positions travel as the bits of their float64 values (chords.backends.wire)."""
    from omegaconf import OmegaConf

    from chords.backends import LocalBackend, ProcessBackend, thread_setting
    from chords.backends.wire import Cmd, Header, wire_steps
    from chords.models.base import load_adapter_class

    pos = torch.tensor([0.5, 2.0 / 3.0, 1e-300, 2.75], dtype=F64)
    grid, flag = wire_steps(pos)
    t = torch.tensor(Header(Cmd.EVAL, 4, positions=flag).row(grid, 4))
    back = Header.read(t).steps(t)
    assert flag == 1 and back.dtype == F64 and torch.equal(back, pos)
    idx = torch.tensor([3, 0, 7])
    grid, flag = wire_steps(idx)
    t = torch.tensor(Header(Cmd.EVAL, 3, positions=flag).row(grid, 3))
    assert flag == 0 and torch.equal(Header.read(t).steps(t), idx)

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / "digits.yaml"), resolve=True)
    cfg["num_inference_steps"] = 4
    adapter = load_adapter_class(cfg["adapter"])(cfg, "cpu", "full")
    enc = adapter.encode("a 3", 0)
    outs = []
    with thread_setting(1, "cpu"):
        local = LocalBackend(adapter, "loop")
        local.set_condition(enc.cond)
        outs.append(sample(EPD(2), local.velocity, enc.x0, enc.step, enc.num_steps).output)
        for shm in (True, False):
            with ProcessBackend(adapter, cfg["adapter"], cfg, 2, num_cores=2, max_batch=1, shared_memory=shm) as pb:
                pb.set_condition(enc.cond)
                outs.append(sample(EPD(2), pb.velocity, enc.x0, enc.step, enc.num_steps).output)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    monkeypatch.chdir(ROOT)
    validate(digits_cfg(tmp_path, "hardware=cpu"), check_weights=False)  # no longer refused
