"""Device mix-ups a first GPU run would hit, caught on the CPU (tests/foreign_device.py)."""
from __future__ import annotations

import pytest
import torch

from chords.runner import run, summary_table
from tests.conftest import ROOT, compose, stand_in_gpus
from tests.foreign_device import OnDevice, on_device


def test_the_stand_in_refuses_what_cuda_refuses():
    x, host = on_device(torch.ones(3)), torch.ones(3)
    with pytest.raises(RuntimeError, match="same device"):
        x - host
    with pytest.raises(RuntimeError, match="same device"):
        torch.stack([x, host])
    with pytest.raises(TypeError):
        x.numpy()
    assert isinstance(x * torch.tensor(2.0), OnDevice)  # a 0-d CPU scalar mixes, as with CUDA
    back = x.cpu()
    assert type(back) is torch.Tensor and torch.equal(back - host, torch.zeros(3))
    assert type(x.to("cpu")) is torch.Tensor and type(x.to(torch.float64)) is OnDevice


@pytest.mark.parametrize("model", ["digits", "moving-digits"])
def test_outputs_on_the_device_reach_the_summary_quality_and_grid(tmp_path, monkeypatch, model):
    """Two settings in one output tree: the second reuses the sequential reference, read back
    from disk (CPU) while its own output is on the device; the summary compares the two and
    scores both with the CPU classifier; the grid reads the folders."""
    monkeypatch.chdir(ROOT)
    adapter = {"digits": "DigitsOnDevice", "moving-digits": "MovingDigitsOnDevice"}[model]
    prompts = {"digits": "prompts/digits_demo.txt", "moving-digits": "prompts/moving_digits_demo.txt"}[model]
    base = [f"model={model}", f"model.adapter=tests.foreign_device.{adapter}", f"output_base_path={tmp_path}",
            "hardware=batched", "model.num_inference_steps=8", f"prompt_file={prompts}", "algo=chords"]
    from chords.grid import write_job_grids

    tables = []
    for k, init in ((2, "0-4"), (3, "0-2-4")):
        outcomes = run(compose(base + [f"algo.num_cores={k}", f"algo.init_t={init}"]))
        assert isinstance(outcomes[0][0].output, OnDevice) or outcomes[0][0].skipped
        tables.append(summary_table(outcomes))
        assert write_job_grids(outcomes)
    assert outcomes[0][1].skipped and not outcomes[0][0].skipped  # the reference came from disk
    assert "accuracy" in tables[-1] and "e-" in tables[-1]


# --------------------------------------------------------------------------- what hardware=auto picks


@pytest.mark.parametrize("gpus, name, world", [(1, "batched", 1), (2, "gpu", 2), (3, "gpu", 3), (8, "gpu", 4)])
def test_auto_spreads_the_default_cores_over_the_gpus_present(monkeypatch, gpus, name, world):
    """The default command (ngpu=4, K=4, hardware=auto) on 1-3 GPUs used to be a config error."""
    from chords.config import validate

    monkeypatch.chdir(ROOT)
    stand_in_gpus(monkeypatch, gpus)
    cfg = compose([])
    spec = validate(cfg, check_output=False)
    assert (cfg.hardware.name, cfg.hardware.device, spec.world_size, spec.algorithm.num_cores) == (name, "cuda", world, 4)
    assert spec.hardware_note.startswith("hardware=auto: ") and f"hardware={name}" in spec.hardware_note
    if gpus > 1:
        assert cfg.hardware.dist_backend == "nccl" and f"over {world} GPU(s)" in spec.hardware_note


def test_an_explicit_gpu_choice_still_refuses_too_many_gpus(monkeypatch):
    from chords.config import ConfigError, validate

    monkeypatch.chdir(ROOT)
    stand_in_gpus(monkeypatch, 2)
    with pytest.raises(ConfigError, match="ngpu 4 needs 4 GPUs"):
        validate(compose(["hardware=gpu"]), check_output=False)


def test_auto_refuses_a_real_model_without_a_gpu_but_an_explicit_choice_runs_it(monkeypatch):
    from chords.config import ConfigError, validate

    monkeypatch.chdir(ROOT)
    stand_in_gpus(monkeypatch, 0)
    with pytest.raises(ConfigError, match=r"model=flux needs a GPU but none is usable \(torch .*\): .*hardware=cpu"):
        validate(compose(["model=flux"]), check_output=False, check_weights=False)
    for hw in ("hardware=cpu", "hardware=local"):
        validate(compose(["model=flux", hw]), check_output=False, check_weights=False)
    spec = validate(compose(["model=tiny-flux"]), check_output=False)  # tiny builds run anywhere
    assert "no GPU: the CPU" in spec.hardware_note


def test_the_cli_refuses_a_real_model_on_the_cpu_in_one_line(python, tmp_path):
    import subprocess

    from tests.conftest import cli_env

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    r = subprocess.run([python, "run_image_mp.py", "model=flux", f"output_base_path={tmp_path}"], cwd=ROOT, env=cli_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "needs a GPU" in r.stderr and "torch 2." in r.stderr
    assert not any(tmp_path.iterdir())


def test_stats_and_log_name_the_torch_build_and_driver(tmp_path, monkeypatch, caplog):
    import json
    import logging

    monkeypatch.chdir(ROOT)
    cfg = compose([f"output_base_path={tmp_path}", "hardware=local", "model.num_inference_steps=4", "algo=sequential",
                   "prompt_file=prompts/digits_demo.txt", "reference=false"])
    with caplog.at_level(logging.INFO, logger="chords"):
        outcomes = run(cfg)
    plat = json.loads((outcomes[0][0].folder / "stats.json").read_text())["platform"]
    assert plat["torch"] == torch.__version__ and plat["torch_cuda"] == torch.version.cuda
    assert set(plat) >= {"driver", "cuda_available", "gpus"}
    assert any(r.getMessage().startswith(f"torch {torch.__version__}, ") for r in caplog.records)


# --------------------------------------------------------------------------- no GPU sync in a forward


def _as_on_a_worker(cond):
    """The conditioning as a GPU rank holds it (chords.models.base.cond_to): tensors with dimensions
    on the device (tracked here), 0-d scalars on the host."""
    from tests.foreign_device import tracked

    return {k: tracked(v) if v.dim() > 0 else v for k, v in cond.items()}


def _forward_reads(adapter, enc) -> list[str]:
    from tests.foreign_device import HostReads, tracked

    HostReads.log = []
    xs = tracked(torch.stack([enc.x0, enc.x0]))
    steps = tracked(torch.tensor([0, enc.num_steps - 1]))
    with torch.no_grad():
        adapter.velocity(xs, steps, _as_on_a_worker(enc.cond))
    return list(HostReads.log)


@pytest.mark.parametrize("name", ["digits", "moving-digits", "tiny-flux", "tiny-sd3-5", "tiny-wan2-1", "tiny-hunyuan",
                                  "tiny-cogvideo"])
def test_a_forward_reads_nothing_back_from_the_device(name):
    """float()/bool()/.item() of a tensor on the GPU waits for every queued kernel: the adapters'
    forwards make none (the guidance scales and flags they read are 0-d host tensors)."""
    from omegaconf import OmegaConf

    from chords.models.base import load_adapter_class

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml"), resolve=True)
    variants = [cfg]
    if name in ("tiny-flux", "tiny-hunyuan"):  # the true-CFG branch reads its scale too
        variants.append({**cfg, "true_cfg_scale": 2.0, "negative_prompt": "blurry"})
    if name == "tiny-sd3-5":
        variants.append({**cfg, "guidance_scale": 5.0})
    for c in variants:
        adapter = load_adapter_class(c["adapter"])(c, "cpu", "full")
        enc = adapter.encode("a 7 moving up" if "digits" in name else "a cat", 0)
        assert _forward_reads(adapter, enc) == []


def test_the_sync_detector_sees_a_read_in_the_adapter(monkeypatch):
    """With every conditioning tensor on the device (the old rule), the true-CFG scale's float()
    in the flux adapter is a GPU read, and it is caught."""
    from omegaconf import OmegaConf

    from chords.models import diffusers_common
    from chords.models.base import load_adapter_class
    from tests.foreign_device import tracked

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / "tiny-flux.yaml"), resolve=True)
    cfg.update(true_cfg_scale=2.0, negative_prompt="blurry")
    adapter = load_adapter_class(cfg["adapter"])(cfg, "cpu", "full")
    enc = adapter.encode("a cat", 0)
    monkeypatch.setattr(diffusers_common, "cond_to", lambda cond, device: {k: tracked(v) for k, v in cond.items()})
    reads = _forward_reads(adapter, enc)
    assert reads and all("flux.py" in r for r in reads)


# --------------------------------------------------------------------------- fair timing


def test_warm_up_covers_every_batch_size_and_stats_say_what_was_timed_first(tmp_path, monkeypatch):
    import json

    from chords.backends import LocalBackend

    monkeypatch.chdir(ROOT)
    sizes = []  # the batch size of every round of the run's (batched) backend
    real = LocalBackend.velocity

    def recording(self, xs, steps):
        if self.mode == "batched":
            sizes.append(int(xs.shape[0]))
        return real(self, xs, steps)

    monkeypatch.setattr(LocalBackend, "velocity", recording)
    cfg = compose([f"output_base_path={tmp_path}", "hardware=batched", "model.num_inference_steps=8", "algo=chords",
                   "algo.num_cores=3", "algo.init_t=0-2-4", "prompt_file=prompts/digits_demo.txt"])
    outcomes = run(cfg)
    assert sizes[:3] == [1, 2, 3]  # warm-up: every round size CHORDS K=3 can use, before any clock
    assert set(sizes[3:]) == {1, 2, 3}
    main = json.loads((outcomes[0][0].folder / "stats.json").read_text())
    ref = json.loads((outcomes[0][1].folder / "stats.json").read_text())
    assert main["warmup"]["batch_sizes"] == [1, 2, 3] and main["warmup"]["states"] == 3
    assert main["timed_after"] == "warm-up" and ref["timed_after"] == main["algo_tag"]
    second = json.loads((outcomes[1][0].folder / "stats.json").read_text())
    assert second["timed_after"] == "sequential"


# --------------------------------------------------------------------------- host memory at start-up


def test_real_weights_load_straight_onto_the_rank_device(tmp_path, monkeypatch):
    """Every rank (rank 0 included) reads the transformer with device_map={"": its device}; rank 0's
    pipeline gets that same transformer instead of loading a second (host) copy."""
    import diffusers
    from omegaconf import OmegaConf

    from chords.models.flux import FluxAdapter

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / "tiny-flux.yaml"), resolve=True)
    FluxAdapter(cfg, "cpu", "full").pipe.save_pretrained(tmp_path)
    real_cfg = {**cfg, "build": None, "model_path": str(tmp_path)}
    calls = []
    cls = diffusers.FluxTransformer2DModel
    original = cls.from_pretrained.__func__

    def spy(klass, *args, **kwargs):
        calls.append(kwargs)
        return original(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    worker = FluxAdapter(real_cfg, "cpu", "denoiser")
    full = FluxAdapter(real_cfg, "cpu", "full")
    assert [c.get("device_map") for c in calls] == [{"": torch.device("cpu")}] * 2
    assert full.pipe.transformer is full.transformer
    for a, b in zip(worker.transformer.state_dict().values(), full.transformer.state_dict().values()):
        assert torch.equal(a, b)


def test_peak_host_memory_is_measured():
    from chords.sysinfo import peak_rss_gb

    before = peak_rss_gb()
    block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB touched
    assert peak_rss_gb() >= before and peak_rss_gb() > 0.06
    del block


# --------------------------------------------------------------------------- the one-shot GPU check


def test_gpu_check_runs_its_steps_on_the_cpu(python):
    """scripts/gpu_check.py --cpu-smoke: every step that needs no GPU runs and prints one line."""
    import subprocess

    from tests.conftest import cli_env

    r = subprocess.run([python, "scripts/gpu_check.py", "--cpu-smoke"], cwd=ROOT, env=cli_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.split(" ", 1)[0] in ("PASS", "FAIL", "SKIP")]
    steps = [line.split(" ", 2)[1].rstrip(":") for line in lines]
    assert steps == ["environment", "nccl", "bf16-matmul", "defaults", "cuda-tests", "flux-mid", "gpu_check"]
    assert "hardware=auto: " in r.stdout and "per sample" in r.stdout and "ms per round" in r.stdout


def test_every_rank_reports_its_peak_host_memory(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.chdir(ROOT)
    cfg = compose([f"output_base_path={tmp_path}", "hardware=cpu", "ngpu=2", "algo.num_cores=2", "algo.init_t=0-4",
                   "model.num_inference_steps=6", "prompt_file=prompts/digits_demo.txt", "reference=false"])
    with caplog.at_level(logging.INFO):
        run(cfg)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "worker rank 1 loaded model 'digits': peak host memory" in text
    assert "peak host memory of rank 0:" in text
