"""Embedded analytic models with known answers (for tests), and helpers the embedded models share.

The trained embedded models (``model=digits``, ``model=moving-digits``) are in
:mod:`chords.models.embedded`.

``digits-exact``: the exact flow-matching velocity of the empirical distribution of scikit-learn's
handwritten digits (1797 labelled 8x8 images, shipped inside the sklearn wheel), upscaled to
``height x width``. For ``x = (1 - sigma) d + sigma eps`` the optimal velocity (the one a perfect
network would learn, in diffusers' ``eps - d`` convention) is

    v(x, sigma) = (x - E[d | x, sigma]) / sigma,
    E[d | x, sigma] = sum_n w_n d_n,  w = softmax_n(-||x - (1 - sigma) d_n||^2 / (2 sigma^2)).

Prompts select the class ("a handwritten digit 7", "seven"); a prompt naming no digit uses
every class.

``gaussian``: Gaussian data ``N(mu, diag s^2)`` whose exact velocity is linear and whose ODE
solution is known in closed form: ``x(sigma) = (1 - sigma) mu + sqrt((1 - sigma)^2 s^2 + sigma^2) eps``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from chords.models.base import Adapter, Encoded
from chords.positions import at_positions
from chords.steps import EulerStep

Tensor = torch.Tensor

_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def prompt_digit(prompt: str) -> int:
    """The digit a prompt names (first digit character or number word), or -1 for none."""
    m = re.search(r"\d", prompt)
    if m:
        return int(m.group())
    words = re.findall(r"[a-z]+", prompt.lower())
    for w in words:
        if w in _WORDS:
            return _WORDS.index(w)
    return -1


def flow_sigmas(num_steps: int, shift: float = 1.0) -> Tensor:
    """linspace(1, 0, N + 1) with SD3's time shift ``s * sigma / (1 + (s - 1) * sigma)``."""
    sig = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift * sig / (1 + (shift - 1) * sig)


def save_png(x: Tensor, path: Path) -> None:
    """A [1, C, H, W] or [C, H, W] latent in [-1, 1] to an 8-bit PNG."""
    from PIL import Image

    img = x.detach().float().cpu().reshape(-1, *x.shape[-2:])
    arr = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    mode_arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr[:3], 0, -1)
    Image.fromarray(mode_arr).save(path)


class _EmbeddedImageModel(Adapter):
    media = "image"

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> list[str]:
        errs = []
        for key in ("height", "width", "num_inference_steps"):
            v = cfg.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                errs.append(f"model.{key} {v!r} is invalid: it must be an integer >= 1")
        shift = cfg.get("shift", 1.0)
        if not isinstance(shift, (int, float)) or shift <= 0:
            errs.append(f"model.shift {shift!r} is invalid: it must be a number > 0")
        if cfg.get("dtype", "float32") not in ("float32", "float64"):
            errs.append(f"model.dtype {cfg.get('dtype')!r} is not supported by {cfg.get('model_name')}: use float32 or float64")
        return errs

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.cfg.get("dtype", "float32") == "float64" else torch.float32

    def _noise(self, seed: int) -> Tensor:
        g = torch.Generator("cpu").manual_seed(int(seed))
        shape = (1, 1, int(self.cfg["height"]), int(self.cfg["width"]))
        return torch.randn(shape, generator=g, dtype=self.dtype).to(self.device)

    def _grid(self) -> tuple[EulerStep, Tensor]:
        sig = flow_sigmas(int(self.cfg["num_inference_steps"]), float(self.cfg.get("shift", 1.0)))
        return EulerStep(sig.to(self.dtype)), sig

    def decode(self, x: Tensor, out_dir: Path, stem: str) -> list[str]:
        name = f"{stem}.png"
        save_png(x, Path(out_dir) / name)
        return [name]


class DigitsExactModel(_EmbeddedImageModel):
    """model=digits-exact: scikit-learn's handwritten digits, exact flow-matching velocity.

    Every sample is a copy of a training image (the exact posterior mean commits to one), which
    makes it a test model with a known answer, not a generative model.
    """

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str = "cpu", role: str = "full"):
        super().__init__(cfg, device, role)
        from sklearn.datasets import load_digits  # reads the csv shipped in the wheel

        digits = load_digits()
        imgs = torch.as_tensor(digits.images, dtype=torch.float64)[:, None] / 8.0 - 1.0  # [n, 1, 8, 8] in [-1, 1]
        h, w = int(cfg["height"]), int(cfg["width"])
        if (h, w) != (8, 8):
            imgs = F.interpolate(imgs, size=(h, w), mode="bilinear", align_corners=False)
        self.data = imgs.reshape(len(imgs), -1).to(self.device)  # [n, h*w], float64
        self.labels = torch.as_tensor(digits.target, dtype=torch.long).to(self.device)
        self._subsets: dict[int, tuple[Tensor, Tensor]] = {}

    def _subset(self, label: int) -> tuple[Tensor, Tensor]:
        if label not in self._subsets:
            d = self.data if label < 0 else self.data[self.labels == label]
            self._subsets[label] = (d, (d * d).sum(1))
        return self._subsets[label]

    def encode(self, prompt: str, seed: int) -> Encoded:
        step, sig = self._grid()
        label = prompt_digit(prompt)
        cond = {"label": torch.tensor([label]), "sigmas": sig}
        return Encoded(self._noise(seed), cond, step, step.num_steps, {"digit": label})

    def velocity(self, xs: Tensor, steps: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        d, d2 = self._subset(int(cond["label"][0]))
        b = xs.shape[0]
        x = xs.reshape(b, -1).to(torch.float64)
        sig = at_positions(cond["sigmas"].to(x.device, torch.float64), steps)[:, None]  # [B, 1]
        a = 1.0 - sig
        # -||x - a d||^2 / (2 sig^2) up to a per-row constant
        logits = (2 * a * (x @ d.T) - a * a * d2[None]) / (2 * sig * sig)
        mean = torch.softmax(logits, dim=1) @ d
        v = (x - mean) / sig
        return v.to(xs.dtype).reshape(xs.shape)

    def param_counts(self) -> dict[str, int]:
        n = self.data.numel()
        return {"denoiser": n, "total": n}


#: the former name of DigitsExactModel (before model=digits became the trained DiT)
DigitsModel = DigitsExactModel


class GaussianModel(_EmbeddedImageModel):
    """Gaussian data N(mu, s^2) per pixel (mu a smooth pattern): exact, linear velocity."""

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str = "cpu", role: str = "full"):
        super().__init__(cfg, device, role)
        h, w = int(cfg["height"]), int(cfg["width"])
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64), torch.linspace(-1, 1, w, dtype=torch.float64), indexing="ij")
        self.mu = (0.8 * torch.sin(3 * xx) * torch.cos(2 * yy)).reshape(1, 1, h, w).to(self.device)
        self.s = (0.1 + 0.2 * (xx**2 + yy**2) / 2).reshape(1, 1, h, w).to(self.device)

    def encode(self, prompt: str, seed: int) -> Encoded:
        step, sig = self._grid()
        return Encoded(self._noise(seed), {"sigmas": sig}, step, step.num_steps)

    def velocity(self, xs: Tensor, steps: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        sig = at_positions(cond["sigmas"].to(xs.device, torch.float64), steps).reshape(-1, *([1] * (xs.ndim - 1)))
        a = 1 - sig
        x = xs.to(torch.float64)
        v = (sig - a * self.s**2) * (x - a * self.mu) / (a**2 * self.s**2 + sig**2) - self.mu
        return v.to(xs.dtype)

    def exact(self, x0: Tensor) -> Tensor:
        """The exact ODE solution at data (sigma = 0) from the noise x0."""
        return (self.mu + self.s * x0.to(torch.float64)).to(x0.dtype)

    def param_counts(self) -> dict[str, int]:
        n = self.mu.numel() + self.s.numel()
        return {"denoiser": n, "total": n}
