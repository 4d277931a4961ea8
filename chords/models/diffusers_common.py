"""Pieces shared by the diffusers adapters (Flux, SD3.5, HunyuanVideo, Wan2.1, CogVideoX1.5).

What lives here:

* :class:`DiffusersAdapter`: the common half of every family adapter: config checks, loading
  (the whole pipeline for ``role="full"``, only the transformer for ``role="denoiser"``), the
  tiny random-initialised models used by the tests and the ``tiny-*`` configs, parameter
  counts, batching helpers for ``velocity`` and the PNG / MP4 writers used by ``decode``.
* weight discovery: :func:`weights_problem` tells whether a hub id is in the local Hugging Face
  cache (``local_files_only``) or a local folder is a complete diffusers pipeline; the adapters'
  ``missing_weights`` and ``download.py`` both use it.
* tiny offline text stacks: CLIP / T5 / UMT5 / Llama tokenizers rebuilt from in-memory
  vocabularies (the CLIP BPE comes from open_clip's bundled vocabulary file) and tiny text
  encoders, so that a full pipeline runs with no download.

Conventions every family follows (see each module's docstring for its specifics):

* ``encode`` calls the pipeline's own sub-steps (``encode_prompt``, ``prepare_latents``,
  ``retrieve_timesteps`` / ``set_timesteps``, ``calculate_shift``, ...), reads the grid from the
  scheduler once, and returns ``cond``: a flat dict of tensors with everything ``velocity``
  needs (the per-grid-index ``timesteps`` table included), so a worker that holds only the
  transformer can evaluate the velocity from ``cond`` alone.
* The scheduler's ``step`` is never called: flow-matching families use
  :class:`chords.steps.EulerStep` on the scheduler's sigmas (trailing 0 included), CogVideoX
  uses :class:`chords.steps.DDIMStep` on its trailing timesteps. ``model.step_precision``
  (``model``, the default, or ``float32``) is handed to them as ``precision``: ``model``
  rounds as the scheduler does, so sequential sampling equals the pipeline bit for bit in
  every dtype (see :mod:`chords.steps`).
* ``velocity`` accepts integer grid indices (a LongTensor: table lookups, unchanged) and
  fractional grid positions (float64, EPD's intermediate times): per-step tables (timesteps,
  guidance) are then read linearly in the grid index, reaching :attr:`DiffusersAdapter.timestep_at_data`
  at data (:mod:`chords.positions`), so the timestep stays consistent with the step's
  interpolated sigma.
* The noise comes from ``torch.Generator("cpu").manual_seed(seed)`` handed to
  ``prepare_latents``, as the official release does, so it is the same on every device.
"""
from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

import numpy as np
import torch

from chords.models.base import Adapter, cond_to
from chords.positions import at_positions
from chords.steps import step_precision_problem

log = logging.getLogger(__name__)
Tensor = torch.Tensor

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def _dtype_kwarg() -> str:
    """diffusers 0.42 renamed ``torch_dtype`` to ``dtype`` (the old name still works, with a warning)."""
    try:
        from diffusers.utils import deprecation_utils
    except ImportError:  # pragma: no cover - older diffusers
        return "torch_dtype"
    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


DTYPE_KWARG = _dtype_kwarg()


def torch_dtype(name: Any) -> torch.dtype:
    """Map a config dtype name ("bfloat16", "float16", "float32", ...) to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise ValueError(f"model.dtype {name!r} is invalid: use one of bfloat16, float16, float32") from None


def cfg_get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``cfg.get`` that also works on OmegaConf nodes and treats a missing key as ``default``."""
    try:
        value = cfg.get(key, default)
    except Exception:  # pragma: no cover - exotic mappings
        value = getattr(cfg, key, default)
    return default if value is None and default is not None else value


def frames_problem(cfg: Mapping[str, Any], family: str, examples: str) -> str | None:
    """The video VAEs compress time by 4: ``num_frames`` must be 4k + 1."""
    f = cfg_get(cfg, "num_frames")
    if isinstance(f, bool) or not isinstance(f, int) or f < 1 or (f - 1) % 4:
        return f"model.num_frames {f!r} is invalid: {family} needs 4k + 1 frames (e.g. {examples})"
    return None


def is_tiny(cfg: Mapping[str, Any]) -> bool:
    return str(cfg_get(cfg, "build", "") or "").lower() == "tiny"


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the global torch RNG seeded, restoring the caller's RNG state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def count_params(*modules: Any) -> int:
    seen: set[int] = set()
    n = 0
    for m in modules:
        if m is None or not isinstance(m, torch.nn.Module):
            continue
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
    return n


# --------------------------------------------------------------------------- weights on disk


def _is_local_path(model_path: str) -> bool:
    p = str(model_path)
    return p.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(p))


def repo_id_of(cfg: Mapping[str, Any]) -> str | None:
    """The hub repository a config's weights come from: a hub-id ``model_path`` (what
    ``from_pretrained`` loads), else ``repo_id`` (where a local ``model_path`` folder comes from)."""
    path = cfg_get(cfg, "model_path")
    if path and not _is_local_path(str(path)):
        return str(path)
    repo = cfg_get(cfg, "repo_id")
    return str(repo) if repo else None


def pipeline_folder_problem(folder: Path, components: list[str] | None = None) -> str | None:
    """Why ``folder`` is not a complete diffusers pipeline folder (None when it looks complete).

    Checks ``model_index.json``, then that every component it names has a folder holding a
    file, and that every shard listed by a ``*.index.json`` exists.
    """
    import json

    index = folder / "model_index.json"
    if not index.is_file():
        return f"{folder} has no model_index.json"
    if components is None:
        try:
            spec = json.loads(index.read_text())
        except (OSError, ValueError) as e:
            return f"{index} cannot be read ({e})"
        components = [k for k, v in spec.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]]
    for comp in components:
        sub = folder / comp
        if not sub.is_dir() or not any(sub.iterdir()):
            return f"{folder} lacks the {comp!r} component"
        for idx in sub.glob("*.index.json"):
            try:
                shards = set(json.loads(idx.read_text()).get("weight_map", {}).values())
            except (OSError, ValueError) as e:
                return f"{idx} cannot be read ({e})"
            missing = [s for s in shards if not (sub / s).is_file()]
            if missing:
                return f"{sub} lacks {len(missing)} weight shard(s), e.g. {missing[0]}"
    return None


def cached_snapshot(repo_id: str, cache_dir: str | None = None) -> Path | None:
    """The local snapshot folder of ``repo_id`` in the Hugging Face cache, or None (never downloads)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, IncompleteSnapshotError, invalid ids, ...
        return None


def weights_problem(model_path: str, cache_dir: str | None = None) -> str | None:
    """Why the weights at ``model_path`` (hub id or local folder) cannot be loaded offline; None if they can."""
    if _is_local_path(model_path):
        folder = Path(os.path.expanduser(str(model_path)))
        if not folder.is_dir():
            return f"model_path {model_path} does not exist"
        return pipeline_folder_problem(folder)
    snap = cached_snapshot(str(model_path), cache_dir)
    if snap is None:
        where = cache_dir or "the Hugging Face cache"
        return f"{model_path} is not in {where}"
    problem = pipeline_folder_problem(snap)
    return None if problem is None else f"{model_path} is incomplete in the cache ({problem})"


MODEL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"


def download_command(cfg: Mapping[str, Any]) -> str:
    """The ``python download.py ...`` line that fetches what ``cfg`` needs.

    ``--model`` is the config name (``model_name``, as ``configs/model/NAME.yaml``) when that
    config fetches the same repository; otherwise the hub id itself (e.g. ``model_path`` was
    overridden on the command line). A local ``model_path`` gets ``--local-dir``; a
    ``cache_dir`` gets ``--cache-dir``.
    """
    name = cfg_get(cfg, "model_name")
    path = cfg_get(cfg, "model_path")
    repo = repo_id_of(cfg)
    target = name
    if name and (MODEL_CONFIG_DIR / f"{name}.yaml").is_file():
        try:
            from omegaconf import OmegaConf

            own = OmegaConf.to_container(OmegaConf.load(MODEL_CONFIG_DIR / f"{name}.yaml"), resolve=True)
            if repo and repo_id_of(own) != repo:
                target = repo
        except Exception:  # an unreadable config: fall back to the hub id
            target = repo or name
    elif repo:
        target = repo
    cmd = f"python download.py --model {target or 'NAME'}"
    if path and _is_local_path(str(path)):
        cmd += f" --local-dir {path}"
    elif cfg_get(cfg, "cache_dir"):
        cmd += f" --cache-dir {cfg_get(cfg, 'cache_dir')}"
    return cmd


# --------------------------------------------------------------------------- tiny text stacks
# Tokenizers are built once per process and shared by every tiny pipeline (they are only read).


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """open_clip's bundled BPE (the same 49408-token vocabulary as OpenAI CLIP)."""
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    from open_clip.tokenizer import bytes_to_unicode

    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {v: i for i, v in enumerate(vocab)}, merges


@lru_cache(maxsize=4)
def tiny_clip_tokenizer(model_max_length: int = 77):
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


_WORDS = (
    "a an the of and in on with at to from by for is are was cat dog man woman city park sun "
    "sunlight lawn grey red blue green yellow white black happy small big old young tree sky sea "
    "beach street car house mountain river forest snow rain night day light water fire flower "
    "bird fish horse robot astronaut photo painting video cinematic portrait landscape close up "
    "walking running flying sitting playing enjoying maine coon"
).split()


def _unigram_vocab() -> list[tuple[str, float]]:
    pieces = ["\u2581" + w for w in _WORDS] + ["\u2581"] + [chr(c) for c in range(97, 123)]
    pieces += [chr(c) for c in range(65, 91)] + list("0123456789.,!?'-")
    return [(p, -float(i + 1)) for i, p in enumerate(dict.fromkeys(pieces))]


@lru_cache(maxsize=4)
def tiny_t5_tokenizer(model_max_length: int = 512):
    """A T5 tokenizer over a small word/character vocabulary (ids: pad 0, eos 1, unk 2)."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + _unigram_vocab()
    return T5Tokenizer(vocab=vocab, extra_ids=100, model_max_length=model_max_length)


@lru_cache(maxsize=4)
def tiny_llama_tokenizer(model_max_length: int = 256):
    from transformers import LlamaTokenizer

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    pieces = specials + [p for p, _ in _unigram_vocab()]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    return LlamaTokenizer(vocab=vocab, merges=[], pad_token="<pad>", model_max_length=model_max_length)


def tiny_clip_text(hidden: int = 32, projection: int | None = None, seed: int = 1):
    """A tiny CLIP text encoder (``CLIPTextModelWithProjection`` when ``projection`` is set)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=hidden,
        intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=49408, hidden_act="gelu", projection_dim=projection or hidden,
    )
    with seeded(seed):
        model = CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)
    return model.eval()


def tiny_t5_encoder(vocab_size: int, d_model: int = 32, seed: int = 2, umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kwargs = dict(
        vocab_size=vocab_size, d_model=d_model, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    with seeded(seed):
        model = UMT5EncoderModel(UMT5Config(**kwargs)) if umt5 else T5EncoderModel(T5Config(**kwargs))
    return model.eval()


def tiny_llama_encoder(vocab_size: int, hidden: int = 16, seed: int = 3):
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, pad_token_id=3,
        bos_token_id=1, eos_token_id=2,
    )
    with seeded(seed):
        model = LlamaModel(cfg)
    return model.eval()


# --------------------------------------------------------------------------- media writers


def save_images(images: list, out_dir: Path, stem: str) -> list[str]:
    """Save PIL images as ``{stem}.png`` (one) or ``{stem}_{k}.png`` (several); return the names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{stem}.png"] if len(images) == 1 else [f"{stem}_{k}.png" for k in range(len(images))]
    for img, name in zip(images, names):
        img.save(out_dir / name)
    return names


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """Write ``frames`` ([F, H, W, 3], float in [0, 1] or uint8) to an H.264 MP4 with imageio-ffmpeg.

    Frames are padded to even sizes (yuv420p needs them) by edge replication, never resized.
    """
    import imageio_ffmpeg

    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"video frames must be [F, H, W, 3], got {arr.shape}")
    f, h, w, _ = arr.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        arr = np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    writer = imageio_ffmpeg.write_frames(
        str(path), (w + pw, h + ph), fps=float(fps), codec="libx264", pix_fmt_out="yuv420p",
        macro_block_size=1, quality=8, ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in arr:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def save_videos(videos: list[np.ndarray], out_dir: Path, stem: str, fps: int) -> list[str]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{stem}.mp4"] if len(videos) == 1 else [f"{stem}_{k}.mp4" for k in range(len(videos))]
    for video, name in zip(videos, names):
        write_mp4(video, out_dir / name, fps)
    return names


# --------------------------------------------------------------------------- the shared adapter


class DiffusersAdapter(Adapter):
    """Common loading / checking / batching for the diffusers families.

    Subclasses set ``pipeline_class`` / ``transformer_class`` (names in ``diffusers``) and
    implement ``build_tiny_transformer`` and ``build_tiny_pipeline`` (tiny models built in code,
    with fixed seeds, so a worker's transformer equals rank 0's), ``encode``, ``velocity`` and
    ``decode``. Real weights: ``role="full"`` loads ``pipeline_class.from_pretrained(model_path)``;
    ``role="denoiser"`` loads only ``transformer_class.from_pretrained(model_path,
    subfolder="transformer")``.
    """

    pipeline_class: ClassVar[str] = ""
    transformer_class: ClassVar[str] = ""
    #: keys every config of the family must have
    required_keys: ClassVar[tuple[str, ...]] = ("model_name", "num_inference_steps", "guidance_scale", "height", "width", "seed", "dtype")
    #: height/width must be multiples of this (real checkpoints; tiny ones set ``tiny_multiple``)
    spatial_multiple: ClassVar[int] = 16
    tiny_multiple: ClassVar[int] = 2

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str = "cpu", role: str = "full"):
        super().__init__(cfg, device, role)
        problems = self.validate(cfg)
        if problems:
            raise ValueError(problems[0])
        self.dtype = torch_dtype(cfg_get(cfg, "dtype", "float32"))
        #: the step arithmetic ("model" or "float32"), handed to the step functions
        self.step_precision: str = str(cfg_get(cfg, "step_precision", "model"))
        self.pipe = None
        if is_tiny(cfg):
            if role == "full":
                self.pipe = self.build_tiny_pipeline(cfg)
                self.transformer = self.pipe.transformer
            else:
                self.transformer = self.build_tiny_transformer(cfg)
            if self.dtype != torch.float32:
                self.cast_tiny(self.pipe if self.pipe is not None else self.transformer)
        else:
            self._load_real(cfg)
        self.transformer.to(self.device)
        self.transformer.eval().requires_grad_(False)
        if self.pipe is not None:
            self.pipe.to(self.device)
            self.configure_pipeline(self.pipe)
            self.pipe.set_progress_bar_config(disable=True)

    # ---- loading
    @classmethod
    def _diffusers(cls, name: str):
        import diffusers

        return getattr(diffusers, name)

    def _load_real(self, cfg: Mapping[str, Any]) -> None:
        """The transformer is read from its safetensors straight onto this rank's device (diffusers'
        ``device_map``, low-CPU-memory loading): no rank holds a host copy of it, so W ranks need
        about one model's worth of host memory, not W. Rank 0 hands it to its pipeline, whose
        other components (text encoders, VAE) pass through host memory once."""
        path = str(cfg_get(cfg, "model_path"))
        common: dict[str, Any] = {}
        if cfg_get(cfg, "cache_dir"):
            common["cache_dir"] = str(cfg_get(cfg, "cache_dir"))
        kwargs = {**common, DTYPE_KWARG: self.dtype}
        self.transformer = self._diffusers(self.transformer_class).from_pretrained(
            path, subfolder="transformer", device_map={"": self.device}, low_cpu_mem_usage=True, **kwargs)
        if self.role == "denoiser":
            return
        kwargs.update(self.pipeline_overrides(cfg, common))
        self.pipe = self._diffusers(self.pipeline_class).from_pretrained(path, transformer=self.transformer, **kwargs)

    def pipeline_overrides(self, cfg: Mapping[str, Any], common: dict[str, Any]) -> dict[str, Any]:
        """Components to load differently from the checkpoint's defaults (e.g. Wan's float32 VAE).

        ``common``: the keyword arguments every ``from_pretrained`` call gets (``cache_dir``).
        """
        return {}

    def configure_pipeline(self, pipe) -> None:
        """After loading, on rank 0: VAE slicing and tiling on (as the official release does)."""
        vae = getattr(pipe, "vae", None)
        if vae is not None and bool(cfg_get(self.cfg, "vae_tiling", True)):
            for name in ("enable_slicing", "enable_tiling"):
                fn = getattr(vae, name, None)
                if fn is not None:
                    fn()

    def cast_tiny(self, module) -> None:
        """Cast a tiny pipeline (or lone transformer) to ``model.dtype`` (tiny models are built in float32)."""
        module.to(dtype=self.dtype)

    def build_tiny_transformer(self, cfg: Mapping[str, Any]):  # pragma: no cover - abstract
        raise NotImplementedError

    def build_tiny_pipeline(self, cfg: Mapping[str, Any]):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def tiny_seed(cfg: Mapping[str, Any]) -> int:
        return int(cfg_get(cfg, "tiny_seed", 0))

    # ---- checks (no weights loaded)
    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        for key in cls.required_keys:
            if cfg_get(cfg, key) is None:
                problems.append(f"model.{key} is missing")
        if problems:
            return problems
        try:
            torch_dtype(cfg_get(cfg, "dtype"))
        except ValueError as e:
            problems.append(str(e))
        precision = step_precision_problem(cfg_get(cfg, "step_precision", "model"))
        if precision:
            problems.append(precision)
        for key in ("num_inference_steps", "height", "width"):
            v = cfg_get(cfg, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.append(f"model.{key} {v!r} is invalid: it must be an integer >= 1")
        g = cfg_get(cfg, "guidance_scale")
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
            problems.append(f"model.guidance_scale {g!r} is invalid: it must be a number >= 0")
        if problems:
            return problems
        mult = cls.tiny_multiple if is_tiny(cfg) else cls.spatial_multiple
        for key in ("height", "width"):
            if cfg_get(cfg, key) % mult:
                problems.append(f"model.{key} {cfg_get(cfg, key)} is invalid: it must be a multiple of {mult}")
        if not is_tiny(cfg) and not cfg_get(cfg, "model_path"):
            problems.append("model.model_path is missing: give a hub id or a local diffusers folder (or build: tiny)")
        n = cfg_get(cfg, "num_images_per_prompt", cfg_get(cfg, "num_videos_per_prompt", 1))
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            problems.append(f"model.num_*_per_prompt {n!r} is invalid: it must be an integer >= 1")
        return problems + cls.validate_family(cfg)

    @classmethod
    def validate_family(cls, cfg: Mapping[str, Any]) -> list[str]:
        return []

    @classmethod
    def wants_gpu(cls, cfg: Mapping[str, Any]) -> bool:
        return not is_tiny(cfg)  # a real checkpoint (billions of parameters); tiny builds run anywhere

    @classmethod
    def missing_weights(cls, cfg: Mapping[str, Any]) -> str | None:
        if is_tiny(cfg):
            return None
        path = cfg_get(cfg, "model_path")
        if not path:
            return f"model.model_path is not set: run `{download_command(cfg)}` and set it to the hub id"
        problem = weights_problem(str(path), cfg_get(cfg, "cache_dir"))
        if problem is None:
            return None
        return f"weights missing: {problem}; run `{download_command(cfg)}`"

    # ---- sizes
    def param_counts(self) -> dict[str, int]:
        denoiser = count_params(self.transformer)
        if self.pipe is None:
            return {"denoiser": denoiser, "total": denoiser}
        modules = [getattr(self.pipe, name, None) for name in self.pipe.components]
        return {"denoiser": denoiser, "total": count_params(*modules)}

    # ---- helpers for subclasses
    @property
    def per_prompt(self) -> int:
        return int(cfg_get(self.cfg, "num_images_per_prompt", cfg_get(self.cfg, "num_videos_per_prompt", 1)))

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator("cpu").manual_seed(int(seed))

    def to_device(self, cond: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return cond_to(cond, self.device)  # scalars stay on the host: no GPU sync to read them

    @staticmethod
    def flatten_states(xs: Tensor) -> tuple[Tensor, int, int]:
        """``[B, n, *rest]`` -> ``[B * n, *rest]``; returns (flat, B, n)."""
        b, n = xs.shape[0], xs.shape[1]
        return xs.reshape(b * n, *xs.shape[2:]), b, n

    #: the model's timestep at grid position ``num_steps`` (data), where a per-step table stops:
    #: 0 on the flow-matching grids (timestep = sigma * num_train_timesteps, and the last sigma is 0)
    timestep_at_data: ClassVar[float] = 0.0

    @classmethod
    def per_state(cls, values: Tensor, steps: Tensor, n: int, end: float | None = None) -> Tensor:
        """The table entry of each state's grid position, repeated for the latent batch ``n``.

        Integer ``steps``: ``values[steps]``. Fractional (float64) ``steps``: the table read
        linearly in the grid index (:func:`chords.positions.at_positions`), with ``end`` (default
        :attr:`timestep_at_data`) as its value at data, past the last listed position."""
        end = cls.timestep_at_data if end is None else end
        return at_positions(values, steps, end=end).repeat_interleave(n)

    @staticmethod
    def repeat(t: Tensor | None, b: int) -> Tensor | None:
        """Conditioning ``[n, ...]`` repeated for ``b`` states -> ``[b * n, ...]`` (state-major)."""
        if t is None:
            return None
        return t.repeat(b, *([1] * (t.ndim - 1)))

    def ensure_full(self, what: str) -> None:
        if self.pipe is None:
            raise RuntimeError(f"{type(self).__name__}.{what} needs role='full' (this instance holds only the denoiser)")
