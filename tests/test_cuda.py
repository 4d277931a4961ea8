"""The CUDA tier: what only a GPU can show. Every test here is marked ``cuda`` and skipped where
``torch.cuda.is_available()`` is False (CI, laptops); on a GPU machine run them with

    python -m pytest -q -m cuda tests/test_cuda.py

(``scripts/gpu_check.py`` runs them as one of its steps). They need one GPU; the NCCL test asks
for two ranks on it and accepts a clean refusal where NCCL cannot host both.

``CHORDS_CUDA_TIER_DEVICE=cpu`` runs the same tests on the CPU (NCCL aside): a check of their own
logic on a machine without a GPU, not a GPU result.
"""
from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from tests.conftest import ROOT, cli_env

CUDA = torch.device(os.environ.get("CHORDS_CUDA_TIER_DEVICE", "cuda:0"))
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
BF16, F32 = torch.bfloat16, torch.float32


def randn(shape, dtype, seed: int, device=CUDA) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


# --------------------------------------------------------------------------- steps vs the schedulers, on the GPU


@pytest.mark.parametrize("state,vel", [(BF16, BF16), (F32, BF16), (F32, F32)], ids=["bf16", "f32-bf16", "f32"])
def test_euler_step_equals_the_scheduler_on_the_gpu(state, vel):
    """EulerStep on CUDA tensors rounds exactly as FlowMatchEulerDiscreteScheduler.step does with its
    sigmas on the GPU (the pipelines' setting), jumps included."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from chords.steps import EulerStep

    n = 12
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(n, device=CUDA)
    step = EulerStep(sched.sigmas.detach().cpu().clone())
    x = randn((2, 4, 8, 8), state, 0)
    for i, t in enumerate(sched.timesteps):
        v = randn(x.shape, vel, 100 + i)
        ref = sched.step(v, t, x, return_dict=False)[0]
        out = step(x, v, i, i + 1)
        assert out.device == ref.device == CUDA and out.dtype == ref.dtype and torch.equal(out, ref), i
        x = ref
    for i, j in [(0, 5), (3, 12), (11, 12)]:
        s = FlowMatchEulerDiscreteScheduler(shift=3.0)
        s.set_timesteps(n, device=CUDA)
        sig = s.sigmas.clone()
        s.sigmas[i + 1] = sig[j]
        s.set_begin_index(i)
        v = randn(x.shape, vel, 200 + i)
        assert torch.equal(step(x, v, i, j), s.step(v, s.timesteps[i], x, return_dict=False)[0]), (i, j)


@pytest.mark.parametrize("state", [BF16, F32], ids=["bf16", "f32"])
def test_ddim_step_equals_the_cogvideox_scheduler_on_the_gpu(state):
    from chords.steps import DDIMStep
    from tests.test_step_parity import tiny_ddim

    sched = tiny_ddim("v_prediction")
    sched.set_timesteps(10, device=CUDA)
    step = DDIMStep(sched.alphas_cumprod, sched.timesteps.cpu(), "v_prediction", float(sched.final_alpha_cumprod))
    x = randn((2, 3, 4, 4), state, 0)
    for i, t in enumerate(sched.timesteps):
        v = randn(x.shape, F32, 100 + i)
        ref = sched.step(v, t, x, return_dict=False)[0].to(state)
        out = step(x, v, i, i + 1)
        assert out.dtype == state and torch.equal(out, ref), i
        x = ref


# --------------------------------------------------------------------------- adapters and algorithms on the GPU


@pytest.mark.parametrize("family", ["flux", "hunyuan", "cogvideo"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_sequential_equals_the_pipeline_on_the_gpu(family, dtype):
    """The adapter's sequential sampling on cuda equals the diffusers pipeline's own latents, bit for bit."""
    from chords.core import Sequential, sample
    from chords.models.base import load_adapter_class
    from tests.test_adapters import PROMPT, load_cfg, reference_latents

    cfg = {**load_cfg(f"tiny-{family}"), "dtype": dtype}
    adapter = load_adapter_class(cfg["adapter"])(cfg, CUDA, "full")
    enc = adapter.encode(PROMPT, cfg["seed"])
    ours = sample(Sequential(), lambda xs, s: adapter.velocity(xs, s, enc.cond), enc.x0, enc.step, enc.num_steps).output
    ref = reference_latents(family, adapter.pipe, cfg)
    assert ours.device == CUDA and ours.dtype == ref.dtype and torch.equal(ours, ref.to(ours.device))


def test_chords_loop_equals_sequential_and_batched_is_close_on_the_gpu():
    """CHORDS without a stop rule ends on sequential's latent; one state per forward (loop) bit for
    bit, all cores in one forward (batched) up to summation order."""
    from chords import CHORDS
    from chords.backends import LocalBackend
    from chords.core import Sequential, sample
    from chords.models.base import load_adapter_class
    from tests.test_adapters import BATCH_ULPS, PROMPT, load_cfg, within_ulps

    cfg = load_cfg("tiny-flux")
    adapter = load_adapter_class(cfg["adapter"])(cfg, CUDA, "full")
    enc = adapter.encode(PROMPT, cfg["seed"])
    adapter_velocity = lambda xs, s: adapter.velocity(xs, s, enc.cond)  # noqa: E731
    seq = sample(Sequential(), adapter_velocity, enc.x0, enc.step, enc.num_steps).output
    algo = CHORDS(num_cores=4, init_t=[0, 2, 4, 6])
    for mode in ("loop", "batched"):
        backend = LocalBackend(adapter, mode)
        backend.set_condition(enc.cond)
        last = sample(algo, backend.velocity, enc.x0, enc.step, enc.num_steps).hits[-1].x
        if mode == "loop":
            assert torch.equal(last, seq)
        else:
            assert within_ulps(last.float().cpu(), seq.float().cpu(), BATCH_ULPS * 256)


def test_the_default_job_runs_on_the_gpu(tmp_path):
    """``python run_image_mp.py`` with the defaults (hardware=auto on this GPU machine)."""
    r = subprocess.run([sys.executable, "run_image_mp.py", f"output_base_path={tmp_path}", "model.num_inference_steps=20"],
                       cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "speedup" in r.stdout and "accuracy" in r.stdout
    import json

    stats = [json.loads(p.read_text()) for p in tmp_path.rglob("stats.json")]
    assert stats and all(s["platform"]["cuda_available"] == (CUDA.type == "cuda") for s in stats)


# --------------------------------------------------------------------------- the process backend on the GPU


def _digits_backend(world: int, dist_backend: str):
    from omegaconf import OmegaConf

    from chords.backends import ProcessBackend
    from chords.models.base import load_adapter_class

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / "digits.yaml"), resolve=True)
    adapter = load_adapter_class(cfg["adapter"])(cfg, CUDA, "full")
    backend = ProcessBackend(adapter, cfg["adapter"], cfg, world, device_type=CUDA.type, dist_backend=dist_backend,
                             timeout_s=60, load_timeout_s=300, num_cores=4, max_batch=1)  # one state per forward: bitwise local
    return adapter, backend


@pytest.mark.parametrize("dist_backend", ["nccl"])
def test_process_backend_with_two_ranks_on_one_gpu(dist_backend):
    """Two NCCL ranks on this machine's first GPU(s) (rank r on cuda:(r mod GPUs)): CHORDS equals the
    local backend bit for bit; where NCCL refuses two ranks on one device, the error is clean (a
    WorkerError or RuntimeError), never a hang. Several ranks over gloo: tests/test_cuda_backend.py."""
    from chords import CHORDS
    from chords.backends import LocalBackend, WorkerError
    from chords.core import sample

    if dist_backend == "nccl" and CUDA.type != "cuda":
        pytest.skip("NCCL needs CUDA")
    try:
        adapter, backend = _digits_backend(2, dist_backend)
    except (WorkerError, RuntimeError) as e:
        if dist_backend == "nccl" and torch.cuda.device_count() < 2:
            pytest.skip(f"NCCL refused two ranks on one GPU, cleanly: {str(e).splitlines()[0][:200]}")
        raise
    from chords.backends import thread_setting

    with backend, thread_setting(1, CUDA.type):  # on the CPU variant, every rank computes with one thread
        enc = adapter.encode("a handwritten digit 7", 0)
        local = LocalBackend(adapter, "loop")
        algo = CHORDS(num_cores=4, init_t=[0, 8, 16, 32])
        out = []
        for b in (backend, local):
            b.set_condition(enc.cond)
            out.append(sample(algo, b.velocity, enc.x0, enc.step, enc.num_steps).output)
    assert out[0].device == out[1].device and torch.equal(out[0], out[1])


# --------------------------------------------------------------------------- eval on the GPU


from tests.test_eval_clip import tiny_checkpoint, tiny_clip  # noqa: E402,F401  (fixtures: a tiny random open_clip model)


def test_clip_score_on_the_gpu_matches_the_cpu(tiny_clip, tiny_checkpoint):  # noqa: F811
    from PIL import Image

    from eval.clip_score import ClipScorer

    images = [Image.new("RGB", (32, 32), (i * 40, 255 - i * 40, 90)) for i in range(4)]
    texts = ["a red square", "a green field", "a cat", "a blue sky"]
    cpu = ClipScorer(tiny_clip, str(tiny_checkpoint), device="cpu").score(images, texts)
    gpu_scorer = ClipScorer(tiny_clip, str(tiny_checkpoint), device=str(CUDA))
    assert next(gpu_scorer.model.parameters()).device == CUDA
    assert gpu_scorer.score(images, texts) == pytest.approx(cpu, abs=1e-3)  # float32 on both; kernels differ
