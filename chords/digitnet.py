"""Real digits, their augmentation, the digit classifier and the embedded quality metrics.

Pure (torch, numpy, scikit-learn's bundled data): used by ``scripts/train_embedded.py`` (data
and classifier), by the runner's summary table and by the eval stage (metrics), which must not
import adapters. Nothing here knows about run folders or configs.

Data. scikit-learn's 1797 labelled 8x8 digits (``load_digits``, shipped in its wheel), split
once and for all by index: ``i % 5 == 0`` is *held out* (360 digits, never trained on by any
model), the rest (1437) is the training split. A digit is rendered at 32x32 by upsampling its
8x8 source (bicubic) and warping it with an affine map (``render``): in the canonical pose it
fills the central 24x24 box (``IMAGE_BOX``), as MNIST leaves a margin. Augmentation
(``augment_params``) jitters rotation (±12°), scale (0.85-1.1), aspect, shear, position (±2 px)
and adds a smooth elastic displacement field (a 4x4 grid of N(0, 0.6 px) offsets, bicubic) and
an intensity jitter; every draw comes from a ``numpy.random.Generator``, so a seed fixes it.
Clips (``render_clips``) render one digit in a ``CLIP_BOX`` (16 px) moving 1 (slow) or 2
(fast) px per frame left, right, up or down along a path centred on the 32x32 canvas.

Latent space. The diffusion models work, as Flux, SD3 and Wan do, in a latent space with a
fixed autoencoder instead of on pixels: ``encode_pixels`` averages 2x2 pixel blocks (32x32 ->
16x16, ``LATENT_SCALE``), ``decode_latents`` upsamples bicubically and clamps to [-1, 1]. Nothing
is learned (so nothing can drift); the classifier scores held-out digits sent through it at
about 99% (``python bench/bench_embedded.py --only fd`` prints it). Latent RMSE is measured on
the 16x16 latents, every quality metric on the decoded 32x32 pixels.

Classifier. A 4-stage CNN (``DigitClassifier``, ~60k parameters) trained on augmented images
*and* clip-sized digits anywhere on the canvas, so one network scores images and video frames.
Its 64-d penultimate activations are the features of the Fréchet distance.

Metrics (the embedded analogs of the paper's quality columns):

* class accuracy: the fraction of samples the classifier assigns to the prompted class (CLIP
  score analog; prompts naming no class are left out);
* Fréchet distance between classifier features of the samples and of held-out real digits
  (FID analog). The reference is class-matched: the Gaussian of a mixture of the held-out
  digits' per-class feature statistics, weighted as the samples' prompted classes are, so that a
  run that prompts only 7s is compared with real 7s (``reference_stats``);
* video: per-frame class consistency (the fraction of frames whose predicted class is the
  clip's majority class), clip class accuracy (majority class = prompted class) and
  motion-direction accuracy (the least-squares velocity of the digit's intensity centroid over
  the frames points in the prompted direction).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from chords.weights import WEIGHTS_DIR, WeightsError, read_checkpoint

Tensor = torch.Tensor

SIZE = 32
IMAGE_BOX = 0.75  # half-size of the canonical digit box, in normalised coordinates (24 px of 32)
CLIP_BOX = 0.5  # digits in clips (a 16 px box)
DIRECTIONS = ("left", "right", "up", "down")
DIRECTION_VECTORS = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])  # (x right, y down)
SPEEDS = ("slow", "fast")
SPEED_PX = (1.0, 2.0)  # pixels per frame
CLASSIFIER_FILE = WEIGHTS_DIR / "digit_classifier.safetensors"
LATENT_SCALE = 2  # pixels per latent pixel along each side
LATENT = SIZE // LATENT_SCALE


def encode_pixels(x: Tensor) -> Tensor:
    """Pixels [..., 32, 32] in [-1, 1] -> latents [..., 16, 16]: the mean of each 2x2 block."""
    lead = x.shape[:-2]
    z = F.avg_pool2d(x.reshape(-1, 1, SIZE, SIZE).float(), LATENT_SCALE)
    return z.reshape(*lead, LATENT, LATENT).to(x.dtype)


def decode_latents(z: Tensor) -> Tensor:
    """Latents [..., 16, 16] -> pixels [..., 32, 32]: bicubic upsampling, clamped to [-1, 1] (float32)."""
    lead = z.shape[:-2]
    x = F.interpolate(z.detach().reshape(-1, 1, LATENT, LATENT).float(), scale_factor=LATENT_SCALE, mode="bicubic", align_corners=False)
    return x.clamp(-1, 1).reshape(*lead, SIZE, SIZE)


def as_pixels(x: Tensor) -> Tensor:
    """A sample as the media shows it: latents are decoded, 32x32 pixels pass through."""
    side = tuple(x.shape[-2:])
    if side == (LATENT, LATENT):
        return decode_latents(x)
    if side == (SIZE, SIZE):
        return x.float().clamp(-1, 1)
    raise ValueError(f"a digits sample is {LATENT}x{LATENT} (latent) or {SIZE}x{SIZE} (pixels), got {side[0]}x{side[1]}")


# --------------------------------------------------------------------------- data


@lru_cache(maxsize=2)
def _sources() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = torch.as_tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # [N, 1, 8, 8] in [0, 1]
    up = F.interpolate(imgs, size=(SIZE, SIZE), mode="bicubic", align_corners=False).clamp(0, 1)
    return up, torch.as_tensor(d.target, dtype=torch.long)


def digit_split(split: str) -> tuple[Tensor, Tensor]:
    """(32x32 upsampled sources in [0, 1] [N, 1, 32, 32], labels [N]) of ``train`` or ``heldout``."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split {split!r} is unknown: use 'train' or 'heldout'")
    src, lab = _sources()
    idx = torch.arange(len(lab))
    keep = (idx % 5 == 0) if split == "heldout" else (idx % 5 != 0)
    return src[keep], lab[keep]


@dataclass
class Warp:
    """Per-sample affine maps (output -> source, normalised coords) and elastic fields."""

    theta: Tensor  # [N, 2, 3]
    elastic: Tensor | None = None  # [N, H, W, 2]
    gain: Tensor | None = None  # [N] intensity factor


def _affine(rot: np.ndarray, scale: np.ndarray, aspect: np.ndarray, shear: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> Tensor:
    """theta mapping output coords to source coords for a digit placed by A = R Sh S at (cx, cy)."""
    n = len(rot)
    c, s = np.cos(rot), np.sin(rot)
    a = np.zeros((n, 2, 2))
    sx, sy = scale * aspect, scale / aspect
    # A = R @ [[1, shear], [0, 1]] @ diag(sx, sy)
    a[:, 0, 0] = c * sx
    a[:, 0, 1] = (c * shear - s) * sy
    a[:, 1, 0] = s * sx
    a[:, 1, 1] = (s * shear + c) * sy
    inv = np.linalg.inv(a)
    t = -np.einsum("nij,nj->ni", inv, np.stack([cx, cy], 1))
    return torch.as_tensor(np.concatenate([inv, t[:, :, None]], 2), dtype=torch.float32)


def _elastic(rng: np.random.Generator, n: int, px: float) -> Tensor:
    coarse = torch.as_tensor(rng.normal(0.0, px * 2.0 / SIZE, size=(n, 2, 4, 4)), dtype=torch.float32)
    return F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


def augment_params(rng: np.random.Generator, n: int, box: float = IMAGE_BOX, anywhere: bool = False) -> Warp:
    """Random affine jitter + elastic field + intensity gain for ``n`` images."""
    rot = np.deg2rad(rng.uniform(-12, 12, n))
    scale = box * rng.uniform(0.85, 1.1, n)
    aspect = np.exp(rng.uniform(-0.1, 0.1, n))
    shear = rng.uniform(-0.15, 0.15, n)
    lim = (1.0 - box) if anywhere else 0.125
    cx, cy = rng.uniform(-lim, lim, n), rng.uniform(-lim, lim, n)
    gain = torch.as_tensor(rng.uniform(0.85, 1.15, n), dtype=torch.float32)
    return Warp(_affine(rot, scale, aspect, shear, cx, cy), _elastic(rng, n, 0.6), gain)


def canonical_params(n: int) -> Warp:
    z = np.zeros(n)
    return Warp(_affine(z, np.full(n, IMAGE_BOX), np.ones(n), z, z, z))


def render(src: Tensor, warp: Warp) -> Tensor:
    """Warp 32x32 sources [N, 1, 32, 32] in [0, 1] to images in [-1, 1] (background -1)."""
    grid = F.affine_grid(warp.theta, [len(src), 1, SIZE, SIZE], align_corners=False)
    if warp.elastic is not None:
        grid = grid + warp.elastic
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if warp.gain is not None:
        out = out * warp.gain[:, None, None, None]
    return out.clamp(0, 1) * 2 - 1


@dataclass
class ClipBatch:
    clips: Tensor  # [N, 1, F, 32, 32] in [-1, 1]
    labels: Tensor  # [N]
    direction: Tensor  # [N] index into DIRECTIONS
    speed: Tensor  # [N] index into SPEEDS


def render_clips(src: Tensor, labels: Tensor, rng: np.random.Generator, frames: int) -> ClipBatch:
    """One moving digit per clip: random shape jitter, direction and speed.

    The path is centred on the canvas (start and end mirror each other), jittered by up to 1 px
    along it and 1.5 px across it, so the whole clip stays inside the frame.
    """
    n = len(src)
    direction = rng.integers(0, len(DIRECTIONS), n)
    speed = rng.integers(0, len(SPEEDS), n)
    rot = np.deg2rad(rng.uniform(-12, 12, n))
    scale = CLIP_BOX * rng.uniform(0.9, 1.1, n)
    aspect = np.exp(rng.uniform(-0.1, 0.1, n))
    shear = rng.uniform(-0.15, 0.15, n)
    px = 2.0 / SIZE  # one pixel in normalised units
    step = np.asarray(SPEED_PX)[speed] * px  # per frame
    along = -step * (frames - 1) / 2 + rng.uniform(-1, 1, n) * px  # position at frame 0 along the motion
    across = rng.uniform(-1.5, 1.5, n) * px
    vec = DIRECTION_VECTORS.numpy()[direction]  # [n, 2]
    perp = np.abs(vec[:, ::-1])  # the other axis
    x0 = vec[:, 0] * along + perp[:, 0] * across
    y0 = vec[:, 1] * along + perp[:, 1] * across
    gain = torch.as_tensor(rng.uniform(0.85, 1.15, n), dtype=torch.float32)
    elastic = _elastic(rng, n, 0.4)
    out = []
    for f in range(frames):
        cx = x0 + vec[:, 0] * step * f
        cy = y0 + vec[:, 1] * step * f
        out.append(render(src, Warp(_affine(rot, scale, aspect, shear, cx, cy), elastic, gain)))
    clips = torch.stack(out, dim=2)  # [N, 1, F, H, W]
    return ClipBatch(clips, labels, torch.as_tensor(direction), torch.as_tensor(speed))


# --------------------------------------------------------------------------- classifier


class DigitClassifier(nn.Module):
    """32x32 grey digit in [-1, 1] -> 10 logits; ``features`` are the 64-d penultimate layer."""

    FEATURES = 64

    def __init__(self):
        super().__init__()
        chans = [1, 16, 32, 64, 64]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        self.conv = nn.Sequential(*layers)  # 32 -> 2
        self.fc = nn.Linear(64 * 2 * 2, self.FEATURES)
        self.head = nn.Linear(self.FEATURES, 10)

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def load_classifier(path: str | Path = CLASSIFIER_FILE) -> DigitClassifier:
    """The committed classifier in eval mode; raises WeightsError (one line) if unusable."""
    ck = read_checkpoint(path)
    net = DigitClassifier()
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck.tensors.items()}, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{path} is not a digit classifier checkpoint ({' '.join(str(e).split())[:120]})") from None
    return net.eval()


@lru_cache(maxsize=1)
def default_classifier() -> DigitClassifier:
    return load_classifier(CLASSIFIER_FILE)


def net_device(net: torch.nn.Module) -> torch.device:
    """Where the classifier's weights are: samples are scored there, wherever they were made."""
    return next(net.parameters()).device


@torch.no_grad()
def classify(net: DigitClassifier, images: Tensor, batch: int = 512) -> tuple[Tensor, Tensor]:
    """(softmax probabilities [N, 10], features [N, 64]) of images [N, 1, 32, 32] (or [N, 32, 32]),
    or of latents [N, 1, 16, 16] (decoded first, ``as_pixels``), on the classifier's device."""
    x = as_pixels(images.detach().to(net_device(net))).reshape(-1, 1, SIZE, SIZE)
    probs, feats = [], []
    for i in range(0, len(x), batch):
        f = net.features(x[i : i + batch])
        feats.append(f)
        probs.append(torch.softmax(net.head(f), dim=1))
    return torch.cat(probs), torch.cat(feats)


# --------------------------------------------------------------------------- Fréchet distance


@dataclass(frozen=True)
class GaussianStats:
    mean: np.ndarray  # [D]
    cov: np.ndarray  # [D, D]
    n: int


def gaussian_stats(feats: Tensor | np.ndarray) -> GaussianStats:
    f = np.asarray(feats, dtype=np.float64)
    if len(f) < 2:
        raise ValueError(f"Fréchet distance needs at least 2 samples, got {len(f)}")
    return GaussianStats(f.mean(0), np.cov(f, rowvar=False), len(f))


def mixture_stats(parts: list[GaussianStats], weights: list[float]) -> GaussianStats:
    """Mean and covariance of a mixture of Gaussians with the given weights (normalised)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mean = sum(wi * p.mean for wi, p in zip(w, parts))
    cov = sum(wi * (p.cov + np.outer(p.mean - mean, p.mean - mean)) for wi, p in zip(w, parts))
    return GaussianStats(mean, cov, int(sum(p.n for p in parts)))


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((a + a.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), in float64."""
    ra = _sqrtm_psd(a.cov)
    cross = _sqrtm_psd(ra @ b.cov @ ra)
    d = a.mean - b.mean
    return float(d @ d + np.trace(a.cov) + np.trace(b.cov) - 2 * np.trace(cross))


#: augmented draws per held-out digit in the Fréchet reference (360 digits -> 2880 images)
REFERENCE_DRAWS = 8
REFERENCE_SEED = 1234


@lru_cache(maxsize=4)
def _reference_class_stats(path: str, draws: int, seed: int) -> tuple[GaussianStats, ...]:
    net = load_classifier(path)
    src, lab = digit_split("heldout")
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for _ in range(draws):
        _, f = classify(net, render(src, augment_params(rng, len(src))))
        feats.append(f)
        labels.append(lab)
    feats_t, lab_t = torch.cat(feats), torch.cat(labels)
    return tuple(gaussian_stats(feats_t[lab_t == c]) for c in range(10))


def reference_stats(classes: list[int], path: str | Path = CLASSIFIER_FILE, draws: int = REFERENCE_DRAWS,
                    seed: int = REFERENCE_SEED) -> GaussianStats:
    """Held-out real digits (augmented as in training), class-matched to ``classes``.

    ``classes`` lists the prompted class of every sample (-1: any class, counted as every class
    equally). The result is the mixture of per-class statistics weighted by those counts.
    """
    per_class = _reference_class_stats(str(path), draws, seed)
    w = np.zeros(10)
    for c in classes:
        if 0 <= c < 10:
            w[c] += 1
        else:
            w += 0.1
    return mixture_stats(list(per_class), list(w))


# --------------------------------------------------------------------------- video


def centroid_track(clip: Tensor) -> Tensor:
    """Intensity centroid (x, y) in pixels of every frame of a clip [F, H, W] in [-1, 1] -> [F, 2]."""
    w = ((clip.float().clamp(-1, 1) + 1) / 2)
    w = torch.where(w > 0.2, w, torch.zeros_like(w))  # background and faint noise count for nothing
    f, h, wd = w.shape
    ys = torch.arange(h, dtype=torch.float32)[None, :, None]
    xs = torch.arange(wd, dtype=torch.float32)[None, None, :]
    mass = w.sum((1, 2)).clamp_min(1e-6)
    return torch.stack([(w * xs).sum((1, 2)) / mass, (w * ys).sum((1, 2)) / mass], dim=1)


def motion(clip: Tensor) -> tuple[int, float]:
    """(direction index into DIRECTIONS, speed in px/frame) of a clip [F, H, W] from its centroid track.

    The velocity is the least-squares slope of the centroid over the frame index; the direction
    is the one of DIRECTIONS with the largest projection on it.
    """
    track = centroid_track(clip).double()
    t = torch.arange(len(track), dtype=torch.float64)
    t = t - t.mean()
    vel = (t[:, None] * (track - track.mean(0))).sum(0) / (t * t).sum().clamp_min(1e-12)
    return int(torch.argmax(DIRECTION_VECTORS.double() @ vel)), float(vel.norm())


@dataclass
class ClipScore:
    majority: int  # most frequent per-frame class
    consistency: float  # fraction of frames predicted as the majority class
    direction: int
    speed_px: float


def score_clip(net: DigitClassifier, clip: Tensor) -> ClipScore:
    """A clip [F, H, W] (or [1, F, H, W]) of pixels in [-1, 1] or of latents (decoded first), scored
    on the classifier's device."""
    frames = as_pixels(clip.detach().to(net_device(net))).reshape(-1, SIZE, SIZE)
    probs, _ = classify(net, frames)
    pred = probs.argmax(1)
    majority = int(torch.bincount(pred, minlength=10).argmax())
    direction, speed = motion(frames)
    return ClipScore(majority, float((pred == majority).float().mean()), direction, speed)


def accuracy(pred: list[int], target: list[int]) -> float:
    """Fraction of pred == target over entries with a target (>= 0); NaN when none has one."""
    pairs = [(p, t) for p, t in zip(pred, target) if t >= 0]
    return sum(p == t for p, t in pairs) / len(pairs) if pairs else math.nan


# --------------------------------------------------------------------------- one sample


EMBEDDED_MODELS = ("digits", "moving-digits")


@dataclass
class SampleScore:
    """What the classifier says about one embedded-model sample against what its prompt named."""

    target: int  # prompted class, -1 = any
    pred: int  # predicted class (video: the majority over frames)
    prob_target: float  # classifier probability of the prompted class (image; NaN when no target or video)
    features: Tensor | None = None  # [64] (image)
    consistency: float = math.nan  # video: fraction of frames predicted as the majority class
    direction_target: int = -1  # video: prompted direction, -1 = any
    direction: int = -1  # video: measured direction
    speed_px: float = math.nan

    @property
    def correct(self) -> bool | None:
        return None if self.target < 0 else self.pred == self.target

    @property
    def direction_correct(self) -> bool | None:
        return None if self.direction_target < 0 else self.direction == self.direction_target


def score_sample(net: DigitClassifier, meta: dict, x: Tensor) -> SampleScore | None:
    """Score an output latent of model=digits / moving-digits given its stats.json ``encode_meta``.

    The latent is decoded first (``as_pixels``), so it is scored as the PNG / MP4 shows it.
    None for other models.
    """
    kind = meta.get("embedded") if isinstance(meta, dict) else None
    if kind not in EMBEDDED_MODELS:
        return None
    target = int(meta.get("digit", -1)) if isinstance(meta.get("digit", -1), int) else -1
    x = as_pixels(x.detach().to(net_device(net)))  # an output made on a GPU is scored where the classifier is
    if kind == "digits":
        probs, feats = classify(net, x.reshape(1, 1, SIZE, SIZE))
        p = float(probs[0, target]) if target >= 0 else math.nan
        return SampleScore(target, int(probs[0].argmax()), p, feats[0])
    clip = score_clip(net, x)
    d = meta.get("direction")
    dt = DIRECTIONS.index(d) if d in DIRECTIONS else -1
    return SampleScore(target, clip.majority, math.nan, None, clip.consistency, dt, clip.direction, clip.speed_px)
