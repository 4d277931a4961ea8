"""Step arithmetic and backends change no number (issue 8, item 2).

* The step functions equal diffusers' own ``FlowMatchEulerDiscreteScheduler.step`` and
  ``CogVideoXDDIMScheduler.step`` bit for bit on random inputs, in every dtype mix the
  pipelines produce, jumps ``i -> j`` included.
* Sequential sampling through each adapter equals ``pipe(..., output_type="latent")`` bit for
  bit, dtype included, in bf16 and float32, for the five tiny families.
* The process backend (2 ranks) equals the local backend bit for bit, dtype included, on rounds
  that mix the float32 noise with bf16 states; CHORDS through the processes ends on the
  pipeline's own latents. The batched backend (one forward for the whole round) changes the
  matrix shapes and so the summation order: it is held to a few ulps instead.
* ``model.step_precision: float32`` keeps the float32 arithmetic, and bad values are one line.

The whole module runs with one intra-op thread in this process and in the worker, as the
harness runs every rank (``chords.backends.threads``).
"""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler

from chords.backends import LocalBackend, ProcessBackend, thread_setting
from chords.chords import CHORDS
from chords.config import ConfigError, validate
from chords.core import Sequential, sample
from chords.models.base import load_adapter_class
from chords.steps import STEP_PRECISIONS, DDIMStep, EulerStep
from tests.conftest import ROOT, compose
from tests.multi_adapter import MultiAdapter
from tests.test_adapters import PROMPT, load_cfg, reference_latents, within_ulps

FAMILIES = ["flux", "sd3-5", "hunyuan", "wan2-1", "cogvideo"]
DTYPES = ["bfloat16", "float32"]
MEMBERS = [(f, d) for d in DTYPES for f in FAMILIES]
IDS = [f"{f}-{'bf16' if d == 'bfloat16' else 'fp32'}" for f, d in MEMBERS]
BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
#: a batched forward differs from single forwards only by summation order: a few eps of the
#: largest |v| per reduction, through the tiny models' 1-2 blocks. Measured worst case 20 ulps
#: (tiny-wan2-1, float32); 64 leaves margin for other CPUs while a wrong batch layout (states or
#: conditions mixed up) moves velocities by O(1e-1), i.e. ~1e6 float32 ulps.
BATCH_ULPS = 64


def randn(shape, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# --------------------------------------------------------------------------- step functions vs diffusers


def tiny_ddim(prediction_type: str, **kw) -> CogVideoXDDIMScheduler:
    """CogVideoX1.5's scheduler configuration (zero-terminal-SNR rescale, trailing spacing); for
    epsilon prediction, CogVideoX 1.0's (no rescale: x0 from epsilon needs alpha > 0 at t = 999)."""
    return CogVideoXDDIMScheduler(**{
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
        "prediction_type": prediction_type, "rescale_betas_zero_snr": prediction_type == "v_prediction",
        "set_alpha_to_one": True, "snr_shift_scale": 1.0, "timestep_spacing": "trailing", **kw,
    })


# (state dtype, velocity dtype) as the pipelines produce them: Flux/SD3 bf16 states and
# velocities, HunyuanVideo/Wan float32 noise with bf16 velocities, float32 and float16 models
EULER_MIXES = [(BF16, BF16), (F32, BF16), (F32, F32), (F16, F16), (BF16, F32)]
JUMPS = [(0, 5), (3, 12), (7, 9), (11, 12)]


@pytest.mark.parametrize("state,vel", EULER_MIXES, ids=lambda d: str(d).removeprefix("torch."))
def test_euler_step_equals_flow_match_scheduler(state, vel):
    n = 12
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(n)
    step = EulerStep(sched.sigmas.clone())
    x = randn((2, 4, 8, 8), state, 0)
    for i, t in enumerate(sched.timesteps):  # the sampling loop: one scheduler step per grid index
        v = randn(x.shape, vel, 100 + i)
        ref = sched.step(v, t, x, return_dict=False)[0]
        out = step(x, v, i, i + 1)
        assert out.dtype == ref.dtype == vel and torch.equal(out, ref), i
        x = ref
    # a jump i -> j is the scheduler's step on a grid whose next entry is sigma_j (the official
    # release's custom_step_Euler: sigmas[j] - sigmas[i])
    x = randn((2, 4, 8, 8), state, 1)
    for i, j in JUMPS:
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        sched.set_timesteps(n)
        sigmas = sched.sigmas.clone()
        sched.sigmas[i + 1] = sigmas[j]
        sched.set_begin_index(i)
        v = randn(x.shape, vel, 200 + i)
        ref = sched.step(v, sched.timesteps[i], x, return_dict=False)[0]
        assert torch.equal(step(x, v, i, j), ref), (i, j)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
def test_euler_step_in_place_equals_the_upcast_sum_for_every_value(dtype):
    """EulerStep computes a same-dtype bf16 / float16 step as ``(dt * v).add_(x)`` (no float32
    copy of x): bit for bit the scheduler's ``(x.float() + dt * v).to(v.dtype)`` for every
    value of x (all 65536 bit patterns), as state and as velocity, at several dt and partners."""
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    if dtype == F16:
        every = every.nan_to_num(nan=0.0)
    step = EulerStep(torch.tensor([1.0, 0.98, 0.6137, 0.0]))
    for partner in (1.0, -3.14159, 1e-3, 6e4, -2.5e-7, 0.0):
        other = torch.full_like(every, partner)
        for x, v in ((every, other), (other, every)):
            for i, j in ((0, 1), (1, 2), (0, 3)):
                dt = step.sigmas[j] - step.sigmas[i]
                ref = (x.float() + dt * v).to(v.dtype)
                out = step(x, v, i, j)
                assert out.dtype == dtype
                same = out.view(torch.int16) == ref.view(torch.int16)
                assert bool((same | (out.isnan() & ref.isnan())).all()), (partner, i, j)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("state", [BF16, F32, F16], ids=lambda d: str(d).removeprefix("torch."))
def test_ddim_step_equals_cogvideox_scheduler(state, prediction_type):
    n = 10  # divides 1000: the scheduler's t - 1000 // N is the next listed timestep
    sched = tiny_ddim(prediction_type)
    sched.set_timesteps(n)
    step = DDIMStep(sched.alphas_cumprod, sched.timesteps, prediction_type, float(sched.final_alpha_cumprod))
    x = randn((2, 3, 4, 4), state, 0)
    for i, t in enumerate(sched.timesteps):
        v = randn(x.shape, F32, 100 + i)  # the pipeline upcasts the transformer output to float32
        ref = sched.step(v, t, x, return_dict=False)[0].to(state)  # ... and casts latents back
        out = step(x, v, i, i + 1)
        assert out.dtype == state and torch.equal(out, ref), i
        x = ref
    # a jump i -> j: the scheduler's step with its "previous" alpha set to grid index j's
    ts = [int(t) for t in sched.timesteps]
    x = randn((2, 3, 4, 4), state, 1)
    for i, j in [(0, 4), (2, 10), (5, 6), (8, 10)]:
        s = tiny_ddim(prediction_type)
        s.set_timesteps(n)
        prev = ts[i] - 1000 // n
        if prev >= 0:
            s.alphas_cumprod = s.alphas_cumprod.clone()
            s.alphas_cumprod[prev] = s.alphas_cumprod[ts[j]] if j < n else s.final_alpha_cumprod
        for vd in (F32, state):
            v = randn(x.shape, vd, 300 + i)
            ref = s.step(v, sched.timesteps[i], x, return_dict=False)[0].to(state)
            assert torch.equal(step(x, v, i, j), ref), (i, j, vd)


def test_float32_option_computes_in_float32_and_keeps_the_state_dtype():
    lin = torch.linspace(1, 0, 11)
    sigmas = 3 * lin / (1 + 2 * lin)  # SD3's shift 3: grid differences that bf16 cannot hold exactly
    model, f32 = EulerStep(sigmas), EulerStep(sigmas, precision="float32")
    assert model.precision == STEP_PRECISIONS[0] == "model"
    x, v = randn((4, 64), BF16, 0), randn((4, 64), BF16, 1)
    dt = (sigmas[7] - sigmas[2]).item()
    assert torch.equal(f32(x, v, 2, 7), (x.float() + dt * v.float()).bfloat16())
    assert f32(x.float(), v, 2, 7).dtype == F32  # the state's dtype, not the velocity's
    assert model(x.float(), v, 2, 7).dtype == BF16  # the scheduler casts to the model output's dtype
    # one rounding per step instead of one per operation: the two differ in bf16 ...
    assert not torch.equal(model(x, v, 2, 7), f32(x, v, 2, 7))
    # ... and agree exactly in float32 and float64
    for dt_ in (F32, torch.float64):
        a, b = x.to(dt_), v.to(dt_)
        assert torch.equal(model(a, b, 2, 7), f32(a, b, 2, 7))
    # DDIM: float32 arithmetic, cast back to the state's dtype; within bf16 rounding of the scheduler's form
    sched = tiny_ddim("v_prediction")
    sched.set_timesteps(10)
    args = (sched.alphas_cumprod, sched.timesteps, "v_prediction", float(sched.final_alpha_cumprod))
    dm, df = DDIMStep(*args), DDIMStep(*args, precision="float32")
    xv = randn((4, 64), F32, 2)
    out = df(x, xv, 3, 6)
    assert out.dtype == BF16
    # bf16 keeps 8 significant bits: two roundings of the same value differ by at most 2 ulps
    assert within_ulps(out, dm(x, xv, 3, 6), 2)
    with pytest.raises(ValueError, match="'fp8' is invalid: use one of model, float32"):
        EulerStep(sigmas, precision="fp8")
    with pytest.raises(ValueError, match="'fp8' is invalid"):
        DDIMStep(*args, precision="fp8")


# --------------------------------------------------------------------------- the tiny pipelines


def member_cfg(family: str, dtype: str) -> dict:
    return {**load_cfg(f"tiny-{family}"), "dtype": dtype}


@pytest.fixture(scope="module")
def one_thread():
    with thread_setting(1):
        yield


class Members:
    """One MultiAdapter holding every (family, dtype); encodes and pipeline outputs are cached."""

    def __init__(self):
        self.cfg = {"model_name": "tiny-multi", "members": [member_cfg(f, d) for f, d in MEMBERS]}
        self.multi = MultiAdapter(self.cfg, "cpu", "full")
        self._enc: dict[int, object] = {}
        self._ref: dict[int, torch.Tensor] = {}

    def index(self, family: str, dtype: str) -> int:
        return MEMBERS.index((family, dtype))

    def adapter(self, k: int):
        return self.multi.members[k]

    def encoded(self, k: int):
        if k not in self._enc:
            self._enc[k] = self.multi.encode(PROMPT, self.cfg["members"][k]["seed"], member=k)
        return self._enc[k]

    def reference(self, k: int) -> torch.Tensor:
        if k not in self._ref:
            family = MEMBERS[k][0]
            self._ref[k] = reference_latents(family, self.adapter(k).pipe, self.cfg["members"][k])
        return self._ref[k]


@pytest.fixture(scope="module")
def members(one_thread) -> Members:
    return Members()


@pytest.fixture(scope="module")
def procs(members):
    with ProcessBackend(members.multi, "tests.multi_adapter.MultiAdapter", members.cfg, 2,
                        timeout_s=120, load_timeout_s=600, threads_per_process=1) as backend:
        yield backend


@pytest.mark.parametrize("family,dtype", MEMBERS, ids=IDS)
def test_sequential_equals_pipeline(members, family, dtype):
    k = members.index(family, dtype)
    enc = members.encoded(k)
    assert enc.step.precision == "model"
    res = sample(Sequential(), lambda xs, s: members.multi.velocity(xs, s, enc.cond), enc.x0, enc.step, enc.num_steps)
    ref = members.reference(k)
    assert res.output.dtype == ref.dtype
    assert torch.equal(res.output, ref), (res.output.double() - ref.double()).abs().max().item()


@pytest.mark.parametrize("family,dtype", MEMBERS, ids=IDS)
def test_backends_change_no_number(members, procs, family, dtype):
    k = members.index(family, dtype)
    enc, multi = members.encoded(k), members.multi
    cond = enc.cond

    def own(x: torch.Tensor, i: int) -> torch.Tensor:  # one state, in its own dtype
        return multi.velocity(x[None], torch.tensor([i]), cond)[0]

    # the states of two CHORDS-like rounds: the noise (float32 for HunyuanVideo / Wan) next to a
    # stepped state (bf16 in a bf16 model; grid index 3, whose timestep bf16 cannot hold exactly),
    # then two stepped states
    x1 = enc.step(enc.x0, own(enc.x0, 0), 0, 1)
    x3 = enc.step(x1, own(x1, 1), 1, 3)
    loop, batched = LocalBackend(multi, "loop"), LocalBackend(multi, "batched")
    for backend in (procs, loop, batched):
        backend.set_condition(cond)
    for states, idx in (([enc.x0, x3], [0, 3]), ([x1, x3], [1, 3])):
        xs, steps = torch.stack(states), torch.tensor(idx)
        single = torch.stack([own(x, i) for x, i in zip(states, idx)])
        lv, pv, bv = loop.velocity(xs, steps), procs.velocity(xs, steps), batched.velocity(xs, steps)
        assert lv.dtype == pv.dtype == bv.dtype == single.dtype
        assert torch.equal(lv, single)  # stacking float32 noise with bf16 states changes nothing
        assert torch.equal(pv, lv), (pv.double() - lv.double()).abs().max().item()
        assert within_ulps(bv, lv, BATCH_ULPS)
    # CHORDS through the processes: its slowest core is never rectified, so its hit is the
    # sequential trajectory, which is the pipeline's own latents; every hit equals the local run
    algo = CHORDS(num_cores=2, init_t=[0, 3])
    res = sample(algo, procs.velocity, enc.x0, enc.step, enc.num_steps)
    ref = sample(algo, loop.velocity, enc.x0, enc.step, enc.num_steps)
    assert [(h.core, h.round) for h in res.hits] == [(h.core, h.round) for h in ref.hits]
    assert all(torch.equal(a.x, b.x) and a.x.dtype == b.x.dtype for a, b in zip(res.hits, ref.hits))
    assert torch.equal(res.hits[-1].x, members.reference(k))


def test_process_backend_corrects_a_wrong_reply_dtype_guess(members, procs):
    """A backend that has seen only bf16 velocities guesses bf16 for CogVideoX's float32 ones:
    rank 0's own item shows the guess wrong, and the round is asked again in float32."""
    k = members.index("cogvideo", "bfloat16")
    enc = members.encoded(k)
    procs.set_condition(enc.cond)
    procs._reply_dtype.clear()
    procs._last_reply = BF16  # as after a prompt of a bf16 model
    xs, steps = torch.stack([enc.x0, 0.5 * enc.x0]), torch.tensor([0, 4])
    v = procs.velocity(xs, steps)
    loop = LocalBackend(members.multi, "loop")
    loop.set_condition(enc.cond)
    expect = loop.velocity(xs, steps)
    assert v.dtype == expect.dtype == F32 and torch.equal(v, expect)
    assert procs._reply_dtype[BF16] == F32


@pytest.mark.parametrize("family", FAMILIES)
def test_step_precision_float32_option(members, family):
    """``step_precision: float32`` in a bf16 model: the former arithmetic, states keep the noise's dtype."""
    k = members.index(family, "bfloat16")
    adapter = members.adapter(k)
    adapter.step_precision = "float32"  # what model.step_precision=float32 sets at construction
    try:
        enc = adapter.encode(PROMPT, members.cfg["members"][k]["seed"])
        res = sample(Sequential(), lambda xs, s: adapter.velocity(xs, s, enc.cond), enc.x0, enc.step, enc.num_steps)
    finally:
        adapter.step_precision = "model"
    assert enc.step.precision == "float32"
    assert res.output.dtype == enc.x0.dtype == (F32 if family in ("hunyuan", "wan2-1") else BF16)
    ref = members.reference(k).double()
    # bf16 keeps 8 significant bits (eps 7.8e-3): the two arithmetics round differently at each
    # of the 8 steps and the network carries those differences along; 5e-2 relative bounds that
    assert ((res.output.double() - ref).norm() / ref.norm()).item() < 5e-2


def test_step_precision_is_validated_in_one_line(monkeypatch):
    for name in sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")):
        assert load_cfg(name).get("step_precision") == "model", name
    cfg = member_cfg("sd3-5", "bfloat16")
    cls = load_adapter_class(cfg["adapter"])
    assert cls.validate({**cfg, "step_precision": "float32"}) == []
    assert cls.validate({**cfg, "step_precision": "fp8"}) == ["model.step_precision 'fp8' is invalid: use one of model, float32"]
    monkeypatch.chdir(ROOT)
    for model in ("digits", "tiny-flux"):  # the embedded models and the diffusers adapters alike
        with pytest.raises(ConfigError, match=r"^model.step_precision 'fp8' is invalid: use one of model, float32$"):
            validate(compose([f"model={model}", "hardware=local", "model.step_precision=fp8"]), check_output=False, check_weights=False)
    with pytest.raises(ConfigError, match=r"^hardware.threads_per_process -1 is invalid"):
        validate(compose(["hardware=local", "hardware.threads_per_process=-1"]), check_output=False, check_weights=False)
