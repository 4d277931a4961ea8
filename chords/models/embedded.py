"""The embedded trained models: small diffusion transformers that run on any laptop.

``model=digits`` (:class:`DigitsDiT`): a class-conditional flow-matching DiT
(:mod:`chords.models.nets`) trained on augmented 32x32 handwritten digits; the prompt picks the
class ("a handwritten digit 7", "seven").

``model=moving-digits`` (:class:`MovingDigitsDiT`): the same kind of DiT with 2x8x8
spatio-temporal patches, trained on 8-frame 32x32 clips of a digit moving left, right, up or
down, slow (1 px/frame) or fast (2 px/frame); the prompt names them ("a 7 moving left fast").
Output: ``video.mp4`` (the clip upscaled 4x, nearest, for viewing).

Both work in the 16x16 latent space of a fixed autoencoder (chords/digitnet.py: 2x2 mean
pooling of 32x32 pixels, bicubic decoding), as Flux and Wan work in a VAE's latent space:
``height``/``width`` are pixels (32), the latent is ``[1, 1, 16, 16]`` (video
``[1, 1, 8, 16, 16]``), latent RMSE is measured on it and ``decode`` writes the decoded pixels.

Both are used as diffusers' flow-matching pipelines are: Euler on the sigma grid
``linspace(1, 0, N + 1)`` with SD3's time ``shift``; the network predicts ``v = noise - x0``;
classifier-free guidance ``v = v_null + guidance_scale * (v_cond - v_null)``, with the null
entry of every label as the unconditional branch, cond and null in one batched forward
(``guidance_scale: 1`` evaluates the conditional branch only).

Prompts. A prompt naming no digit (a digit character or number word) samples every class: its
class label is the null entry, which the model was trained on (label dropout). For
moving-digits a prompt naming no direction (left/right/up/down, leftward, ...) or no speed
(slow/slowly, fast/quickly) likewise leaves that label null: any direction / any speed. Stats
record what the prompt named (``encode_meta``: ``digit`` -1 = any, ``direction`` / ``speed``
null = any).

Weights: ``chords/models/weights/{digits,moving_digits}.safetensors`` (``model_path`` may name
another file), made by ``python scripts/train_embedded.py``; a missing or unreadable file is
reported before anything loads (:meth:`missing_weights`).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from chords.digitnet import DIRECTIONS, LATENT_SCALE, SIZE, SPEEDS, decode_latents
from chords.models.base import Adapter, Encoded
from chords.models.digits import flow_sigmas, prompt_digit, save_png
from chords.models.nets import DiT, load_dit, param_count
from chords.positions import at_positions
from chords.steps import EulerStep
from chords.weights import WEIGHTS_DIR, WeightsError, problem, read_checkpoint

Tensor = torch.Tensor
log = logging.getLogger(__name__)

_DIRECTION_WORDS = {
    "left": 0, "leftward": 0, "leftwards": 0, "west": 0,
    "right": 1, "rightward": 1, "rightwards": 1, "east": 1,
    "up": 2, "upward": 2, "upwards": 2, "north": 2, "rising": 2,
    "down": 3, "downward": 3, "downwards": 3, "south": 3, "falling": 3,
}
_SPEED_WORDS = {"slow": 0, "slowly": 0, "fast": 1, "quick": 1, "quickly": 1, "rapidly": 1}
ACCEPTED = (
    "a digit (0-9 or zero..nine), a direction (left, right, up, down) and optionally a speed (slow, fast), "
    "e.g. 'a 7 moving left fast'"
)


def prompt_motion(prompt: str) -> tuple[int, int]:
    """(direction index into DIRECTIONS, speed index into SPEEDS) a prompt names; -1 for none."""
    words = re.findall(r"[a-z]+", prompt.lower())
    direction = next((_DIRECTION_WORDS[w] for w in words if w in _DIRECTION_WORDS), -1)
    speed = next((_SPEED_WORDS[w] for w in words if w in _SPEED_WORDS), -1)
    return direction, speed


_NETS: dict[tuple[str, int, int], DiT] = {}


def _load(path: Path) -> DiT:
    """One network per weights file per process (reloaded when the file changes)."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _NETS:
        _NETS[key] = load_dit(path)
    return _NETS[key]


class _EmbeddedDiT(Adapter):
    """Shared by the image and video models; subclasses set the file, media and label parsing."""

    weights_file: str = ""
    n_labels: int = 1

    # ---- checks before anything loads
    @classmethod
    def weights_path(cls, cfg: Mapping[str, Any]) -> Path:
        p = cfg.get("model_path")
        return Path(str(p)).expanduser() if p else WEIGHTS_DIR / cls.weights_file

    @classmethod
    def _shape_keys(cls) -> tuple[str, ...]:
        return ("height", "width")

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> list[str]:
        errs = []
        for key in ("num_inference_steps", *cls._shape_keys()):
            v = cfg.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                errs.append(f"model.{key} {v!r} is invalid: it must be an integer >= 1")
        shift = cfg.get("shift", 1.0)
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or shift <= 0:
            errs.append(f"model.shift {shift!r} is invalid: it must be a number > 0")
        g = cfg.get("guidance_scale", 1.0)
        if isinstance(g, bool) or not isinstance(g, (int, float)) or g < 0:
            errs.append(f"model.guidance_scale {g!r} is invalid: it must be a number >= 0 (1 = no guidance)")
        if cfg.get("dtype", "float32") not in ("float32", "float64"):
            errs.append(f"model.dtype {cfg.get('dtype')!r} is not supported by {cfg.get('model_name')}: use float32 or float64")
        if errs:
            return errs
        try:  # the trained size is fixed: say so before loading (a missing file is missing_weights' job)
            meta = read_checkpoint(cls.weights_path(cfg)).meta
            trained = json.loads(meta["dit_config"])
        except (WeightsError, KeyError, ValueError):
            return []
        for key, tkey, scale in (("height", "height", LATENT_SCALE), ("width", "width", LATENT_SCALE), ("num_frames", "frames", 1)):
            if key in cls._shape_keys() and cfg.get(key) != trained[tkey] * scale:
                errs.append(f"model.{key} {cfg.get(key)!r} is invalid: {cfg.get('model_name')} was trained at {key}={trained[tkey] * scale}")
        return errs

    @classmethod
    def missing_weights(cls, cfg: Mapping[str, Any]) -> str | None:
        return problem(cls.weights_path(cfg))

    # ---- model
    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str = "cpu", role: str = "full"):
        super().__init__(cfg, device, role)
        self.dtype = torch.float64 if cfg.get("dtype", "float32") == "float64" else torch.float32
        self.net = _load(self.weights_path(cfg)).to(self.device, self.dtype)
        self.guidance = float(cfg.get("guidance_scale", 1.0))
        self.null = torch.tensor(self.net.cfg.labels, dtype=torch.long, device=self.device)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        c = self.net.cfg
        return (1, c.channels, c.frames, c.height, c.width)

    def parse(self, prompt: str) -> tuple[list[int], dict[str, Any]]:
        raise NotImplementedError

    def encode(self, prompt: str, seed: int) -> Encoded:
        labels, meta = self.parse(prompt)
        sig = flow_sigmas(int(self.cfg["num_inference_steps"]), float(self.cfg.get("shift", 1.0)))
        step = EulerStep(sig.to(self.dtype), precision=str(self.cfg.get("step_precision", "model")))
        g = torch.Generator("cpu").manual_seed(int(seed))
        x0 = torch.randn(self.latent_shape, generator=g, dtype=torch.float32).to(self.device, self.dtype)
        # a null label means "any": the label table's size
        lab = torch.tensor([[v if v >= 0 else int(n) for v, n in zip(labels, self.net.cfg.labels)]], dtype=torch.long)
        meta = {"embedded": self.cfg.get("model_name"), "guidance_scale": self.guidance, **meta}
        # whether guidance applies is decided here, on the host, once per prompt: a 0-d flag stays on
        # the host on every rank (chords.models.base.cond_to), so a forward never waits for the GPU
        guided = self.guidance != 1.0 and any(v >= 0 for v in labels)  # a label other than the null one
        return Encoded(x0, {"labels": lab, "sigmas": sig, "guided": torch.tensor(guided)}, step, step.num_steps, meta)

    @torch.no_grad()
    def velocity(self, xs: Tensor, steps: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        b = xs.shape[0]
        c = self.net.cfg
        x = xs.reshape(b, c.channels, c.frames, c.height, c.width).to(self.device, self.dtype)
        sigma = at_positions(cond["sigmas"].to(self.device, self.dtype), steps)
        lab = cond["labels"].to(self.device).reshape(1, -1).expand(b, -1)
        if not bool(cond["guided"]):  # a host flag (see encode)
            v = self.net(x, sigma, lab)
        else:
            out = self.net(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([lab, self.null.expand(b, -1)]))
            vc, vu = out[:b], out[b:]
            v = vu + self.guidance * (vc - vu)
        return v.reshape(xs.shape).to(xs.dtype)

    def param_counts(self) -> dict[str, int]:
        n = param_count(self.net)
        return {"denoiser": n, "total": n}


class DigitsDiT(_EmbeddedDiT):
    """model=digits: class-conditional 32x32 handwritten digits."""

    media = "image"
    weights_file = "digits.safetensors"

    def parse(self, prompt: str) -> tuple[list[int], dict[str, Any]]:
        digit = prompt_digit(prompt)
        if digit < 0:
            log.warning("prompt %r names no digit: sampling every class (the null class)", prompt[:60])
        return [digit], {"digit": digit}

    @property
    def latent_shape(self) -> tuple[int, ...]:
        c = self.net.cfg
        return (1, c.channels, c.height, c.width)

    def decode(self, x: Tensor, out_dir: Path, stem: str) -> list[str]:
        name = f"{stem}.png"
        save_png(decode_latents(x), Path(out_dir) / name)
        return [name]


class MovingDigitsDiT(_EmbeddedDiT):
    """model=moving-digits: 8-frame clips of a digit moving in the prompted direction and speed."""

    media = "video"
    weights_file = "moving_digits.safetensors"
    upscale = 4

    @classmethod
    def _shape_keys(cls) -> tuple[str, ...]:
        return ("height", "width", "num_frames")

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> list[str]:
        errs = super().validate(cfg)
        fps = cfg.get("fps", 4)
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0:
            errs.append(f"model.fps {fps!r} is invalid: it must be a number > 0")
        return errs

    def parse(self, prompt: str) -> tuple[list[int], dict[str, Any]]:
        digit = prompt_digit(prompt)
        direction, speed = prompt_motion(prompt)
        if digit < 0 or direction < 0:
            log.warning("prompt %r does not name %s: sampling any (null label); a prompt names %s", prompt[:60],
                        " and ".join(n for n, v in (("a digit", digit), ("a direction", direction)) if v < 0), ACCEPTED)
        meta = {
            "digit": digit,
            "direction": DIRECTIONS[direction] if direction >= 0 else None,
            "speed": SPEEDS[speed] if speed >= 0 else None,
            "fps": float(self.cfg.get("fps", 4)),
        }
        return [digit, direction, speed], meta

    def decode(self, x: Tensor, out_dir: Path, stem: str) -> list[str]:
        import imageio.v2 as imageio

        frames = decode_latents(x.detach().cpu()).reshape(-1, SIZE, SIZE)  # [F, 32, 32] pixels
        arr = ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        arr = np.repeat(np.repeat(arr, self.upscale, axis=1), self.upscale, axis=2)
        name = f"{stem}.mp4"
        writer = imageio.get_writer(str(Path(out_dir) / name), fps=float(self.cfg.get("fps", 4)), codec="libx264",
                                    quality=9, macro_block_size=16, pixelformat="yuv420p")
        try:
            for f in arr:
                writer.append_data(np.stack([f, f, f], axis=-1))
        finally:
            writer.close()
        return [name]
