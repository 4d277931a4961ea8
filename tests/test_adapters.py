"""The diffusers adapters on tiny random-initialised pipelines (CPU, offline, float32).

Per family (Flux, SD3.5, HunyuanVideo, Wan2.1, CogVideoX1.5):
* parity: ``sample(Sequential(), adapter ...)`` equals the pipeline's own ``__call__(...,
  output_type="latent")`` with the same seed, guidance and steps bit for bit, in the default
  setting and in a second guidance setting (true CFG, no CFG or static CFG);
* batched velocity: B states at B different grid indices in one call equal B single calls up
  to summation order (a few ulps);
* workers: a ``role="denoiser"`` adapter holds only the transformer (identical weights) and
  gives the same velocity from ``cond`` alone, bit for bit;
* CHORDS without a stop rule: the last hit equals the sequential latent bit for bit.
Plus decoding (PNG, MP4 read back), the configs, ``missing_weights`` and ``download.py``.
bf16, the process backend and the step arithmetic are in ``test_step_parity.py``.

Tolerances. Where the same kernels run on the same data in the same process, results are
compared bit for bit (``torch.equal``): that does not depend on the CPU. Where the summation
order legitimately changes (a batch of states in one forward, weights reloaded from disk at
another memory alignment, whose SIMD path may differ between CPUs), the bound is written in
units of the dtype's rounding at the tensors' own scale (:func:`within_ulps`), never as a
number seen on one machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch
from omegaconf import OmegaConf

from chords.core import Sequential, sample
from chords.models.base import load_adapter_class

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "model"
PROMPT = "a happy grey cat sitting in a city park"
FAMILIES = ["flux", "sd3-5", "hunyuan", "wan2-1", "cogvideo"]
#: batched vs single forwards: only the summation order differs, a few eps of the largest |v| per
#: reduction through the tiny models' 1-2 blocks (worst seen: 20, tiny-wan2-1 float32); a wrong
#: batch layout (states or conditions mixed up) would be O(1e-1), ~1e6 float32 ulps
BATCH_ULPS = 64
#: weights reloaded from a folder (other alignment, so possibly another SIMD summation order on
#: some CPUs) and a conditioning from reloaded text encoders: each of the ~10 matrix products and
#: normalisations between the prompt and the velocity may round differently by a few eps; 256
#: ulps of the largest |v| covers that (2.7e-6 = ~13 ulps was seen on one machine) while a
#: missing or wrong tensor moves the velocity by O(1e-2) or more
RELOAD_ULPS = 256


def within_ulps(a: torch.Tensor, b: torch.Tensor, ulps: float) -> bool:
    """``max |a - b| <= ulps * eps(dtype) * max |b|``: a tolerance in the dtype's rounding at ``b``'s scale."""
    assert a.dtype == b.dtype and a.shape == b.shape
    scale = b.double().abs().max().item()
    return (a.double() - b.double()).abs().max().item() <= ulps * torch.finfo(b.dtype).eps * scale


def load_cfg(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"), resolve=True)


# --------------------------------------------------------------------------- the pipelines' own loops


def reference_latents(family: str, pipe, cfg: dict, prompt: str = PROMPT) -> torch.Tensor:
    """``pipe.__call__(..., output_type="latent")`` with the config's settings, in our latent layout."""
    common = dict(
        prompt=prompt, height=cfg["height"], width=cfg["width"], num_inference_steps=cfg["num_inference_steps"],
        guidance_scale=cfg["guidance_scale"], generator=torch.Generator("cpu").manual_seed(cfg["seed"]),
        output_type="latent", max_sequence_length=cfg["max_sequence_length"],
    )
    if family == "flux":  # packed latents [n, seq, C]
        return pipe(**common, num_images_per_prompt=cfg["num_images_per_prompt"],
                    true_cfg_scale=cfg["true_cfg_scale"], negative_prompt=cfg["negative_prompt"]).images
    if family == "sd3-5":
        return pipe(**common, num_images_per_prompt=cfg["num_images_per_prompt"],
                    negative_prompt=cfg["negative_prompt"]).images
    video = dict(num_frames=cfg["num_frames"], num_videos_per_prompt=cfg["num_videos_per_prompt"])
    if family == "hunyuan":
        return pipe(**common, **video, prompt_template=cfg["prompt_template"], true_cfg_scale=cfg["true_cfg_scale"],
                    negative_prompt=cfg["negative_prompt"]).frames
    if family == "wan2-1":
        return pipe(**common, **video, negative_prompt=cfg["negative_prompt"]).frames
    if family == "cogvideo":  # [n, f, C, h, w], padding frames included
        return pipe(**common, **video, use_dynamic_cfg=cfg["use_dynamic_cfg"],
                    negative_prompt=cfg["negative_prompt"]).frames
    raise KeyError(family)


#: a second guidance setting per family, exercising the other branch of its velocity
VARIANTS = {
    "flux": {"true_cfg_scale": 2.5, "negative_prompt": "blurry, low quality"},
    "sd3-5": {"guidance_scale": 1.0},  # no CFG
    "hunyuan": {"true_cfg_scale": 2.5, "negative_prompt": "blurry, low quality"},
    "wan2-1": {"guidance_scale": 1.0},  # no CFG
    "cogvideo": {"use_dynamic_cfg": False},  # static CFG
}


# --------------------------------------------------------------------------- fixtures (one build per family)


class Family:
    def __init__(self, family: str):
        self.family = family
        self.cfg = load_cfg(f"tiny-{family}")
        self.cls = load_adapter_class(self.cfg["adapter"])
        self.full = self.cls(self.cfg, "cpu", "full")
        self._denoiser = None
        self._enc = {}
        self._seq = {}

    @property
    def denoiser(self):
        if self._denoiser is None:
            self._denoiser = self.cls(dict(self.cfg), "cpu", "denoiser")
        return self._denoiser

    def with_cfg(self, **overrides):
        """The full adapter reads its config at encode time; switch it (restored by ``reset``)."""
        self.full.cfg = {**self.cfg, **overrides}
        return self.full.cfg

    def reset(self):
        self.full.cfg = self.cfg

    def encoded(self):
        if "default" not in self._enc:
            self.reset()
            self._enc["default"] = self.full.encode(PROMPT, self.cfg["seed"])
        return self._enc["default"]

    def sequential(self):
        if "default" not in self._seq:
            enc = self.encoded()
            self._seq["default"] = sample(
                Sequential(), lambda xs, s: self.full.velocity(xs, s, enc.cond), enc.x0, enc.step, enc.num_steps
            )
        return self._seq["default"]


_FAMILIES: dict[str, Family] = {}


@pytest.fixture(scope="module")
def families():
    yield _FAMILIES
    _FAMILIES.clear()


@pytest.fixture(params=FAMILIES)
def fam(request, families) -> Family:
    name = request.param
    if name not in families:
        families[name] = Family(name)
    f = families[name]
    f.reset()
    yield f
    f.reset()


# --------------------------------------------------------------------------- parity and batching


def test_parity_with_pipeline(fam: Family):
    res = fam.sequential()
    ref = reference_latents(fam.family, fam.full.pipe, fam.cfg)
    assert res.output.shape == ref.shape and res.output.dtype == ref.dtype
    assert res.rounds == fam.cfg["num_inference_steps"] and len(res.hits) == 1
    moved = (res.output - fam.encoded().x0).abs().mean().item()
    assert moved > 0.05, "the sampler should move the latent away from the noise"
    assert torch.equal(res.output, ref)


def test_parity_other_guidance(fam: Family):
    cfg = fam.with_cfg(**VARIANTS[fam.family])
    enc = fam.full.encode(PROMPT, cfg["seed"])
    res = sample(Sequential(), lambda xs, s: fam.full.velocity(xs, s, enc.cond), enc.x0, enc.step, enc.num_steps)
    ref = reference_latents(fam.family, fam.full.pipe, cfg)
    assert res.output.dtype == ref.dtype and torch.equal(res.output, ref)
    # the setting really changed the result
    assert (res.output - fam.sequential().output).abs().max().item() > 1e-3


@pytest.mark.parametrize("family", ["flux", "hunyuan"])
def test_parity_several_per_prompt(families, family):
    """num_images/videos_per_prompt = 2: the latent's own batch dimension is carried through."""
    if family not in families:
        families[family] = Family(family)
    f = families[family]
    key = "num_videos_per_prompt" if f.full.media == "video" else "num_images_per_prompt"
    cfg = f.with_cfg(**{key: 2})
    try:
        enc = f.full.encode(PROMPT, cfg["seed"])
        assert enc.x0.shape[0] == 2
        res = sample(Sequential(), lambda xs, s: f.full.velocity(xs, s, enc.cond), enc.x0, enc.step, enc.num_steps)
        assert torch.equal(res.output, reference_latents(family, f.full.pipe, cfg))
    finally:
        f.reset()


def test_flux_schnell_like_without_guidance_embedding():
    """A FLUX.1-schnell-like tiny model (no guidance embedding, static shift): same adapter, by config."""
    cfg = {**load_cfg("tiny-flux"), "tiny_guidance_embeds": False, "guidance_scale": 0.0, "num_inference_steps": 4}
    a = load_adapter_class(cfg["adapter"])(cfg, "cpu", "full")
    assert not a.transformer.config.guidance_embeds
    enc = a.encode(PROMPT, cfg["seed"])
    assert "guidance" not in enc.cond
    res = sample(Sequential(), lambda xs, s: a.velocity(xs, s, enc.cond), enc.x0, enc.step, enc.num_steps)
    assert torch.equal(res.output, reference_latents("flux", a.pipe, cfg))


def test_batched_velocity_matches_single_calls(fam: Family):
    enc = fam.encoded()
    n = enc.num_steps
    g = torch.Generator().manual_seed(1)
    xs = torch.stack([enc.x0, torch.randn(enc.x0.shape, generator=g).to(enc.x0.dtype), 0.5 * enc.x0])
    steps = torch.tensor([0, n // 2, n - 1])
    batched = fam.full.velocity(xs, steps, enc.cond)
    assert batched.shape == xs.shape
    single = torch.stack([fam.full.velocity(xs[i : i + 1], steps[i : i + 1], enc.cond)[0] for i in range(3)])
    assert within_ulps(batched, single, BATCH_ULPS)
    # the grid index matters: the same state at two indices gives two velocities
    same = fam.full.velocity(torch.stack([enc.x0, enc.x0]), torch.tensor([0, n - 1]), enc.cond)
    assert (same[0] - same[1]).abs().max().item() > 1e-3


def test_denoiser_role_holds_only_the_transformer(fam: Family):
    enc = fam.encoded()
    worker = fam.denoiser
    assert worker.pipe is None
    full_params = dict(fam.full.transformer.named_parameters())
    for name, p in worker.transformer.named_parameters():
        assert torch.equal(p, full_params[name]), name
    counts, wcounts = fam.full.param_counts(), worker.param_counts()
    assert wcounts["denoiser"] == wcounts["total"] == counts["denoiser"] < counts["total"]
    # cond is all a worker gets: flat, tensors only
    assert all(isinstance(v, torch.Tensor) for v in enc.cond.values())
    cond = {k: v.clone() for k, v in enc.cond.items()}
    xs = torch.stack([enc.x0, 0.3 * enc.x0])
    steps = torch.tensor([1, enc.num_steps - 2])
    assert torch.equal(worker.velocity(xs, steps, cond), fam.full.velocity(xs, steps, enc.cond))
    with pytest.raises(RuntimeError, match="role='full'"):
        worker.encode(PROMPT, 0)


def test_chords_last_hit_equals_sequential(fam: Family):
    try:
        from chords.chords import CHORDS
    except ImportError:  # pragma: no cover - written concurrently
        pytest.skip("chords.chords.CHORDS is not available yet")
    from chords.backends import LocalBackend

    enc = fam.encoded()
    n = enc.num_steps
    algo = CHORDS(num_cores=4, init_t=[0, 1, 3, 5])
    backend = LocalBackend(fam.full, "loop")  # one forward per state, as sequential (and every rank) computes
    backend.set_condition(enc.cond)
    res = sample(algo, backend.velocity, enc.x0, enc.step, n)
    assert len(res.hits) >= 2 and res.hits[-1].round == n
    assert res.hits[0].round < n
    assert torch.equal(res.output, fam.sequential().output)  # core 1 is never rectified


# --------------------------------------------------------------------------- decoding


def test_image_decode_writes_png(families, tmp_path):
    from PIL import Image

    if "flux" not in families:
        families["flux"] = Family("flux")
    f = families["flux"]
    names = f.full.decode(f.sequential().output, tmp_path, "image")
    assert names == ["image.png"]
    with Image.open(tmp_path / "image.png") as img:
        assert img.size == (f.cfg["width"], f.cfg["height"])


@pytest.mark.parametrize("family", ["wan2-1", "cogvideo", "hunyuan"])
def test_video_decode_writes_mp4(families, family, tmp_path):
    import imageio.v2 as imageio

    if family not in families:
        families[family] = Family(family)
    f = families[family]
    names = f.full.decode(f.sequential().output, tmp_path, "video")
    assert names == ["video.mp4"]
    reader = imageio.get_reader(tmp_path / "video.mp4", "ffmpeg")
    try:
        frames = [fr for fr in reader]
        meta = reader.get_meta_data()
    finally:
        reader.close()
    assert len(frames) == f.cfg["num_frames"]
    assert frames[0].shape == (f.cfg["height"], f.cfg["width"], 3)
    assert round(meta["fps"]) == f.cfg["fps"]


def test_cogvideo_dynamic_cfg_is_per_timestep(families):
    from chords.models.cogvideo import dynamic_guidance

    if "cogvideo" not in families:
        families["cogvideo"] = Family("cogvideo")
    f = families["cogvideo"]
    enc = f.encoded()
    ts = [int(t) for t in enc.cond["timesteps"]]
    expect = dynamic_guidance(f.cfg["guidance_scale"], ts, enc.num_steps)
    assert enc.cond["guidance_per_step"].tolist() == expect
    assert len(set(expect)) > 1
    # DDIM on the listed trailing timesteps, final alpha as the scheduler sets it
    sched = f.full.pipe.scheduler
    assert enc.step.timesteps.tolist() == sched.timesteps.tolist()
    assert enc.step.prediction_type == sched.config.prediction_type
    assert float(enc.step._alpha_grid[-1]) == float(sched.final_alpha_cumprod)


# --------------------------------------------------------------------------- configs


OFFICIAL = {
    "flux": dict(model_path="black-forest-labs/FLUX.1-dev", guidance_scale=3.5, height=768, width=1360, dtype="bfloat16"),
    "sd3-5": dict(model_path="stabilityai/stable-diffusion-3.5-large", guidance_scale=7.0, height=1024, width=1024,
                  dtype="float16"),
    "hunyuan": dict(model_path="hunyuanvideo-community/HunyuanVideo", guidance_scale=6.0, num_frames=129, width=960,
                    height=544, fps=24, dtype="bfloat16"),
    "wan2-1": dict(model_path="Wan-AI/Wan2.1-T2V-14B-Diffusers", guidance_scale=5.0, num_frames=81, width=832,
                   height=480, fps=15, dtype="bfloat16"),
    "cogvideo": dict(model_path="THUDM/CogVideoX1.5-5B", guidance_scale=6.0, num_frames=81, width=1360, height=768,
                     fps=16, dtype="bfloat16", use_dynamic_cfg=True, timestep_spacing="trailing"),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_configs(name):
    cfg = load_cfg(name)
    assert cfg["model_name"] == name
    for key, value in OFFICIAL[name].items():
        assert cfg[key] == value, key
    assert cfg["num_inference_steps"] == 50 and cfg["seed"] == 42
    per = "num_videos_per_prompt" if cfg["media"] == "video" else "num_images_per_prompt"
    assert cfg[per] == 1
    assert load_adapter_class(cfg["adapter"]).validate(cfg) == []


@pytest.mark.parametrize("name", ["flux-schnell", "sd3-5-medium", "wan2-1-1.3b"] + [f"tiny-{f}" for f in FAMILIES])
def test_other_configs_validate(name):
    cfg = load_cfg(name)
    assert cfg["model_name"] == name
    assert load_adapter_class(cfg["adapter"]).validate(cfg) == []


def test_validate_reports_bad_values():
    cls = load_adapter_class(load_cfg("wan2-1")["adapter"])
    assert any("height" in p for p in cls.validate({**load_cfg("wan2-1"), "height": 481}))
    assert any("num_frames" in p for p in cls.validate({**load_cfg("wan2-1"), "num_frames": 80}))
    assert any("dtype" in p for p in cls.validate({**load_cfg("wan2-1"), "dtype": "int8"}))
    assert any("guidance_scale" in p for p in cls.validate({**load_cfg("wan2-1"), "guidance_scale": None}))
    cog = load_cfg("cogvideo")
    assert any("one video per prompt" in p for p in load_adapter_class(cog["adapter"]).validate({**cog, "num_videos_per_prompt": 2}))


# --------------------------------------------------------------------------- weights: missing_weights and download.py


def _fake_snapshot(root: Path) -> None:
    (root / "transformer").mkdir(parents=True)
    (root / "transformer" / "config.json").write_text("{}")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text("{}")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "image_encoder": [None, None],
    }))


def _fake_cache(cache: Path, repo: str) -> None:
    """A Hugging Face cache entry for ``repo`` (refs/main -> a snapshot) as huggingface_hub lays it out."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    _fake_snapshot(folder / "snapshots" / commit)


def _one_line(msg: str | None) -> str:
    assert msg and "\n" not in msg.strip()
    return msg


def test_missing_weights_names_the_download_command(tmp_path):
    cfg = load_cfg("flux")
    cls = load_adapter_class(cfg["adapter"])
    cache = tmp_path / "hf"
    msg = _one_line(cls.missing_weights({**cfg, "cache_dir": str(cache)}))
    assert f"`python download.py --model flux --cache-dir {cache}`" in msg
    # a local folder without model_index.json
    empty = tmp_path / "flux-local"
    empty.mkdir()
    msg = _one_line(cls.missing_weights({**cfg, "model_path": str(empty)}))
    assert "model_index.json" in msg and f"`python download.py --model flux --local-dir {empty}`" in msg
    # present: a complete local folder, and a hub id found in the cache
    _fake_snapshot(tmp_path / "complete")
    assert cls.missing_weights({**cfg, "model_path": str(tmp_path / "complete")}) is None
    _fake_cache(cache, cfg["model_path"])
    assert cls.missing_weights({**cfg, "cache_dir": str(cache)}) is None
    # the tiny configs never need weights
    assert cls.missing_weights(load_cfg("tiny-flux")) is None
    # the wording with the default cache, and with model_path overridden to another hub id
    wan = load_cfg("wan2-1")
    wcls = load_adapter_class(wan["adapter"])
    assert wcls.missing_weights(wan).endswith("run `python download.py --model wan2-1`")
    assert "`python download.py --model nobody/not-a-model`" in _one_line(
        wcls.missing_weights({**wan, "model_path": "nobody/not-a-model"})
    )


def _download(args: list[str], **env_over) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), **env_over)
    return subprocess.run([sys.executable, str(ROOT / "download.py"), *args], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["offline", "unreachable"])
def test_download_without_network_exits_2_with_one_line(tmp_path, env):
    r = _download(["--model", "flux", "--clip", "--cache-dir", str(tmp_path)], **env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "FLUX.1-dev" in lines[0], r.stderr


def test_download_is_idempotent_and_checks_names(tmp_path):
    _fake_cache(tmp_path, "black-forest-labs/FLUX.1-dev")
    r = _download(["--model", "flux", "--cache-dir", str(tmp_path)], HF_HUB_OFFLINE="1")
    assert r.returncode == 0 and "skipped" in r.stdout, r.stderr
    r = _download(["--model", "no-such-model"], HF_HUB_OFFLINE="1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_t5_tokenizer_folder_with_only_spiece_model_loads(tmp_path):
    """CogVideoX's ``tokenizer/`` holds only ``spiece.model``: transformers converts it through protobuf.

    Without protobuf (requirements.txt pins it) loading fails, with a message about tiktoken.
    """
    import sentencepiece as spm
    from transformers import T5Tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([PROMPT, "a dog running on the beach at night"] * 50))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=30,
                                   model_type="unigram", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   minloglevel=2)
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (tmp_path / "spiece.model").rename(folder / "spiece.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 226, "extra_ids": 0}))
    ids = T5Tokenizer.from_pretrained(str(folder))(PROMPT).input_ids
    assert len(ids) > 2 and ids[-1] == 1  # pieces, then </s>


# --------------------------------------------------------------------------- the real loading code, on saved tiny pipelines


@pytest.fixture(scope="module")
def saved(families, tmp_path_factory):
    """Each tiny pipeline written with ``save_pretrained`` (a local diffusers folder, as download.py leaves them)."""
    folders = {}

    def get(family: str) -> Path:
        if family not in folders:
            if family not in families:
                families[family] = Family(family)
            folder = tmp_path_factory.mktemp(f"saved-{family}")
            families[family].full.pipe.save_pretrained(folder)
            folders[family] = folder
        return folders[family]

    return get


def test_loads_real_weights_from_a_folder(fam: Family, saved):
    folder = saved(fam.family)
    cfg = {**fam.cfg, "build": None, "model_path": str(folder)}
    assert fam.cls.missing_weights(cfg) is None
    full = fam.cls(cfg, "cpu", "full")
    worker = fam.cls(cfg, "cpu", "denoiser")  # from_pretrained(model_path, subfolder="transformer") only
    assert worker.pipe is None and worker.param_counts()["total"] == fam.full.param_counts()["denoiser"]
    assert full.param_counts() == fam.full.param_counts()
    enc, ref = full.encode(PROMPT, fam.cfg["seed"]), fam.encoded()
    assert torch.equal(enc.x0, ref.x0)
    xs, steps = torch.stack([enc.x0, 0.5 * enc.x0]), torch.tensor([0, enc.num_steps - 1])
    assert within_ulps(worker.velocity(xs, steps, enc.cond), fam.full.velocity(xs, steps, ref.cond), RELOAD_ULPS)
    # scripts/param_counts.py: counts computed from the folder's configs (meta device) match
    sys.path.insert(0, str(ROOT / "scripts"))
    import param_counts

    row = param_counts.real_counts(fam.family, cfg)
    assert row["source"] == "computed from local configs"
    assert (row["worker"], row["total"]) == (fam.full.param_counts()["denoiser"], fam.full.param_counts()["total"])


def test_wan_vae_stays_float32(saved, families):
    folder = saved("wan2-1")
    cfg = {**families["wan2-1"].cfg, "build": None, "model_path": str(folder), "dtype": "bfloat16"}
    a = load_adapter_class(cfg["adapter"])(cfg, "cpu", "full")
    assert a.transformer.dtype == torch.bfloat16 and a.pipe.text_encoder.dtype == torch.bfloat16
    assert a.pipe.vae.dtype == torch.float32


def test_bfloat16_runs_close_to_float32(fam: Family):
    """bf16 on CPU (numerics only; no GPU here): the sequential latent stays within ~5% of float32."""
    a = fam.cls({**fam.cfg, "dtype": "bfloat16"}, "cpu", "full")
    enc = a.encode(PROMPT, fam.cfg["seed"])
    res = sample(Sequential(), lambda xs, s: a.velocity(xs, s, enc.cond), enc.x0, enc.step, enc.num_steps)
    ref = fam.sequential().output
    # HunyuanVideo and Wan start from float32 noise (as their pipelines) and, stepping as the
    # scheduler does, hold the transformer's bf16 after the first step; the others are bf16 throughout
    assert enc.x0.dtype == (torch.float32 if fam.family in ("hunyuan", "wan2-1") else torch.bfloat16)
    assert res.output.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits (eps 7.8e-3) in every weight and activation: over 8 steps of
    # a 1-2 block network the latent drifts by a few eps relative; 5e-2 bounds that loosely
    rel = ((res.output.float() - ref).norm() / ref.norm()).item()
    assert rel < 5e-2


# --------------------------------------------------------------------------- the command line, end to end


@pytest.mark.slow
@pytest.mark.parametrize("model,entry", [("tiny-flux", "run_image_mp.py"), ("tiny-cogvideo", "run_video_mp.py")])
def test_cli_end_to_end_with_worker_processes(model, entry, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat wearing sunglasses at a pool\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    r = subprocess.run(
        [sys.executable, entry, f"model={model}", "ngpu=2", "hardware=cpu", "algo=chords", "algo.num_cores=2",
         "algo.init_t=0-4", "algo.stopping_kwargs.criterion=none", f"prompt_file={prompts}", f"output_base_path={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    paths = sorted(out.rglob("stats.json"))
    stats = [json.loads(p.read_text()) for p in paths]
    by_algo = {s["algorithm"]: s for s in stats}
    assert set(by_algo) == {"chords", "sequential"}
    assert by_algo["chords"]["world_size"] == 2
    media = "video.mp4" if entry == "run_video_mp.py" else "image.png"
    assert all(media in s["media_files"] for s in stats)
    from safetensors.torch import load_file

    folders = {s["algorithm"]: p.parent for s, p in zip(stats, paths)}
    a = load_file(folders["chords"] / "latents.safetensors")["output"]
    b = load_file(folders["sequential"] / "latents.safetensors")["output"]
    # the slowest core is the sequential trajectory; worker ranks and rank 0 run with the same
    # thread setting and one forward per state, so the two agree bit for bit
    assert torch.equal(a, b)
