"""Train the embedded models and write their committed weights (safetensors) and loss curves.

    python scripts/train_embedded.py                      # all three, into chords/models/weights/
    python scripts/train_embedded.py --only digits        # one of: classifier, digits, moving-digits
    python scripts/train_embedded.py --out /tmp/w --max-steps 5   # a smoke run (tests)

What it trains (deterministic from ``--seed`` on ``--threads`` CPU threads; data from
scikit-learn's bundled digits, training split only, see chords/digitnet.py):

* ``digit_classifier.safetensors``: the CNN that scores samples (class accuracy, Fréchet
  distance, per-frame class, see chords/digitnet.py), on augmented images and clip-sized digits;
  its held-out accuracy is printed and stored in the file's metadata.
* ``digits.safetensors``: a class-conditional flow-matching DiT on augmented digits in the
  16x16 latent space of the fixed autoencoder (chords/digitnet.py: 2x2 mean pooling of 32x32
  pixels, bicubic decoding), 4x4 latent patches (model=digits).
* ``moving_digits.safetensors``: the same kind of DiT with 2x4x4 spatio-temporal patches on
  8-frame clips (latents of 32x32 frames) of a digit moving left/right/up/down, slow or fast
  (model=moving-digits), initialised from ``digits.safetensors`` in ``--out`` (as video models
  start from image models), the file this run wrote or an earlier one.

The image model and then the video model train in one process, the classifier in a second one
at the same time (``--jobs 2``, the default); every part seeds its own generators, so
``--jobs 1`` writes the same files.

Flow matching in diffusers' convention: ``x = (1 - s) x0 + s eps`` with ``s ~ U(0, 1)``, the
network regresses ``v = eps - x0`` (MSE). Each label is replaced by its null entry with
probability 0.1, independently, for classifier-free guidance. AdamW, linear warm-up then
cosine decay, an exponential moving average of the weights (what is saved). Every batch is
freshly augmented from a numpy Generator seeded by ``--seed``, so a rerun with the same seed,
thread count and machine reproduces every tensor and metadata value bit for bit (the order of
the metadata keys in the safetensors header may differ between runs).

Also written: ``training_log.json`` (losses, times, settings, held-out accuracy) and
``training_loss.png`` (the loss curves).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chords.digitnet import (  # noqa: E402
    CLASSIFIER_FILE,
    CLIP_BOX,
    DigitClassifier,
    augment_params,
    canonical_params,
    digit_split,
    encode_pixels,
    render,
    render_clips,
)
from chords.models.embedded import DigitsDiT, MovingDigitsDiT  # noqa: E402
from chords.models.nets import DiT, DiTConfig, load_dit, param_count  # noqa: E402
from chords.weights import WEIGHTS_DIR, save_checkpoint  # noqa: E402

PARTS = ("classifier", "digits", "moving-digits")
#: the files each part writes: the names the classifier loader and the adapters read
FILES = {"classifier": CLASSIFIER_FILE.name, "digits": DigitsDiT.weights_file, "moving-digits": MovingDigitsDiT.weights_file}


@dataclass(frozen=True)
class Recipe:
    steps: int
    batch: int
    lr: float
    warmup: int
    ema: float = 0.999
    label_drop: float = 0.1


RECIPES = {
    "classifier": Recipe(steps=300, batch=128, lr=3e-3, warmup=20, ema=0.0),
    "digits": Recipe(steps=2400, batch=64, lr=2e-3, warmup=100),
    "moving-digits": Recipe(steps=1800, batch=24, lr=2e-3, warmup=100),
}
#: latent sizes (chords.digitnet.LATENT: 32x32 pixels -> 16x16)
NETS = {
    "digits": DiTConfig(channels=1, frames=1, height=16, width=16, patch_t=1, patch=4, dim=128, depth=8, heads=4, labels=(10,)),
    "moving-digits": DiTConfig(channels=1, frames=8, height=16, width=16, patch_t=2, patch=4, dim=128, depth=8, heads=4, labels=(10, 4, 2)),
}
#: parts trained in one process, one after the other (--jobs 2 runs the groups side by side);
#: the video model starts from the image model, so it follows it
GROUPS = (("digits", "moving-digits"), ("classifier",))


def lr_at(step: int, r: Recipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    p = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


class EMA:
    def __init__(self, net: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(net).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow.parameters(), net.parameters()):
            s.mul_(d).add_(p.detach(), alpha=1 - d)


def _optimizer(net: torch.nn.Module, r: Recipe) -> torch.optim.Optimizer:
    return torch.optim.AdamW(net.parameters(), lr=r.lr, weight_decay=0.0 if isinstance(net, DiT) else 1e-4)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def cpu_seconds() -> float:
    """CPU time of this process (user + system): the wall time it would take alone on idle cores."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _log_every(steps: int) -> int:
    return max(1, steps // 20)


# --------------------------------------------------------------------------- classifier


def classifier_batch(src: torch.Tensor, lab: torch.Tensor, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half image-like augmented digits, half clip-sized digits anywhere on the canvas."""
    idx = torch.as_tensor(rng.integers(0, len(src), n))
    half = n // 2
    a = render(src[idx[:half]], augment_params(rng, half))
    b = render(src[idx[half:]], augment_params(rng, n - half, box=CLIP_BOX, anywhere=True))
    return torch.cat([a, b]), lab[idx]


@torch.no_grad()
def heldout_accuracy(net: DigitClassifier, seed: int) -> dict[str, float]:
    src, lab = digit_split("heldout")
    rng = np.random.default_rng(seed + 999)
    net.eval()
    out = {}
    for name, warp in (("canonical", canonical_params(len(src))), ("augmented", augment_params(rng, len(src))),
                       ("clip_size", augment_params(rng, len(src), box=CLIP_BOX, anywhere=True))):
        out[name] = float((net(render(src, warp)).argmax(1) == lab).float().mean())
    return out


def train_classifier(r: Recipe, seed: int, log) -> tuple[DigitClassifier, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    src, lab = digit_split("train")
    net = DigitClassifier()
    opt = _optimizer(net, r)
    losses = []
    for step in range(r.steps):
        net.train()
        x, y = classifier_batch(src, lab, rng, r.batch)
        _set_lr(opt, lr_at(step, r))
        loss = F.cross_entropy(net(x), y, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % _log_every(r.steps) == 0 or step == r.steps - 1:
            log(f"classifier step {step + 1}/{r.steps} loss {np.mean(losses[-20:]):.4f}")
    acc = heldout_accuracy(net, seed)
    log(f"classifier held-out accuracy: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in acc.items()))
    return net.eval(), {"losses": losses, "heldout_accuracy": acc}


# --------------------------------------------------------------------------- diffusion transformers


def drop_labels(labels: torch.Tensor, sizes: tuple[int, ...], p: float, rng: np.random.Generator) -> torch.Tensor:
    """Replace each label by its null index (= its vocabulary size) with probability p."""
    drop = torch.as_tensor(rng.random(labels.shape) < p)
    null = torch.tensor(sizes)[None].expand_as(labels)
    return torch.where(drop, null, labels)


def dit_batch(part: str, src: torch.Tensor, lab: torch.Tensor, rng: np.random.Generator, n: int, cfg: DiTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.as_tensor(rng.integers(0, len(src), n))
    if part == "digits":
        x0 = render(src[idx], augment_params(rng, n))[:, :, None]  # [n, 1, 1, 32, 32]
        labels = lab[idx][:, None]
    else:
        cb = render_clips(src[idx], lab[idx], rng, cfg.frames)
        x0 = cb.clips
        labels = torch.stack([cb.labels, cb.direction, cb.speed], 1)
    return encode_pixels(x0), labels  # [n, 1, F, 16, 16]


def flow_matching_loss(net: DiT, x0: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    n = len(x0)
    sigma = torch.as_tensor(rng.random(n), dtype=torch.float32)
    eps = torch.as_tensor(rng.standard_normal(x0.shape), dtype=torch.float32)
    s = sigma.view(n, *([1] * (x0.ndim - 1)))
    xt = (1 - s) * x0 + s * eps
    return F.mse_loss(net(xt, sigma, labels), eps - x0)


@torch.no_grad()
def init_from_image(video: DiT, image: DiT) -> None:
    """Start the video DiT from the image DiT, as video models start from image models.

    Blocks, time MLP, class embedding and final layer are copied; a spatio-temporal patch
    embeds as the mean of its frames' image embeddings and unembeds to the same image patch in
    each frame; every temporal slot starts with the image's spatial position embedding.
    Direction and speed embeddings start fresh.
    """
    vc, ic = video.cfg, image.cfg
    if (vc.dim, vc.depth, vc.heads, vc.patch, vc.height, vc.width) != (ic.dim, ic.depth, ic.heads, ic.patch, ic.height, ic.width) or ic.frames != 1:
        raise ValueError("the video DiT must have the image DiT's width, depth, heads, spatial patch and size")
    vs, src = video.state_dict(), image.state_dict()
    for k, v in src.items():
        if k in vs and vs[k].shape == v.shape and k not in ("pos", "cond_pos"):
            vs[k].copy_(v)
    pt = vc.patch_t
    vs["embed.weight"].copy_(torch.cat([src["embed.weight"] / pt] * pt, dim=1))
    vs["out.weight"].copy_(torch.cat([src["out.weight"]] * pt, dim=0))
    vs["out.bias"].copy_(torch.cat([src["out.bias"]] * pt, dim=0))
    vs["pos"].copy_(src["pos"].repeat(1, vc.grid[0], 1) + 0.02 * torch.randn_like(vs["pos"]))
    vs["cond_pos"][:, : src["cond_pos"].shape[1]].copy_(src["cond_pos"])
    video.load_state_dict(vs)


def train_dit(part: str, r: Recipe, seed: int, log, init: DiT | None = None) -> tuple[DiT, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = NETS[part]
    src, lab = digit_split("train")
    net = DiT(cfg)
    if init is not None:
        init_from_image(net, init)
    log(f"{part}: {param_count(net) / 1e6:.2f}M parameters, {cfg.tokens} tokens of {cfg.patch_dim}"
        + (" (initialised from the image model)" if init is not None else ""))
    ema = EMA(net, r.ema)
    opt = _optimizer(net, r)
    losses = []
    for step in range(r.steps):
        net.train()
        x0, labels = dit_batch(part, src, lab, rng, r.batch, cfg)
        labels = drop_labels(labels, cfg.labels, r.label_drop, rng)
        _set_lr(opt, lr_at(step, r))
        loss = flow_matching_loss(net, x0, labels, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update(net, step)
        losses.append(loss.item())
        if step % _log_every(r.steps) == 0 or step == r.steps - 1:
            log(f"{part} step {step + 1}/{r.steps} loss {np.mean(losses[-50:]):.4f}")
    return ema.shadow, {"losses": losses, "params": param_count(net), "config": json.loads(cfg.to_json())}


# --------------------------------------------------------------------------- main


def plot(log_data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in PARTS if p in log_data["parts"]]
    fig, axes = plt.subplots(1, len(parts), figsize=(4.2 * len(parts), 3.2), squeeze=False)
    for ax, part in zip(axes[0], parts):
        losses = np.asarray(log_data["parts"][part]["losses"])
        k = max(1, len(losses) // 50)
        ax.plot(np.arange(len(losses)), losses, color="0.8", lw=0.6)
        if len(losses) >= k:
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(k - 1, len(losses)), smooth, lw=1.5)
        ax.set_title(f"{part} ({log_data['parts'][part]['seconds']:.0f} s)")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy" if part == "classifier" else "flow-matching MSE")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class Job:
    """What one training process does: its parts, in order, and the shared settings."""

    parts: tuple[str, ...]
    out: Path
    seed: int
    threads: int
    max_steps: int | None
    t0: float


def run_group(job: Job) -> dict[str, dict]:
    """Train ``job.parts`` one after the other in this process; write their weights; return their log entries."""
    torch.set_num_threads(job.threads)
    torch.use_deterministic_algorithms(True)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - job.t0:7.1f}s] {msg}", flush=True)

    infos: dict[str, dict] = {}
    for part in job.parts:
        r = RECIPES[part]
        if job.max_steps is not None:
            r = Recipe(**{**r.__dict__, "steps": min(r.steps, job.max_steps), "warmup": min(r.warmup, max(1, job.max_steps // 2))})
        t0, c0 = time.perf_counter(), cpu_seconds()
        meta = {"seed": str(job.seed), "threads": str(job.threads), "steps": str(r.steps), "batch": str(r.batch),
                "trained_by": "scripts/train_embedded.py"}
        if part == "classifier":
            net, info = train_classifier(r, job.seed, log)
            meta["heldout_accuracy"] = json.dumps(info["heldout_accuracy"])
        else:
            init = None
            if part == "moving-digits":  # starts from the image model as saved (float16), whichever run wrote it
                init = load_dit(job.out / FILES["digits"])
            net, info = train_dit(part, r, job.seed, log, init=init)
            meta["dit_config"] = NETS[part].to_json()
            if init is not None:
                meta["init"] = "digits"
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        # float16 on disk (half the size; the adapters compute in float32): the committed model is this rounding
        save_checkpoint(job.out / FILES[part], {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}, meta)
        info.update(seconds=seconds, cpu_seconds=cpu, steps=r.steps, batch=r.batch, lr=r.lr)
        infos[part] = info
        log(f"{part}: {r.steps} steps in {seconds:.1f}s wall, {cpu:.1f}s CPU -> {job.out / FILES[part]}")
    return infos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for the weights, log and loss curve")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads per process (results depend on it; keep 1 to reproduce the committed files)")
    ap.add_argument("--jobs", type=int, default=2, help="training processes (1: everything in this process; same files)")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--max-steps", type=int, default=None, help="cap every part's steps (smoke runs)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        print(f"error: --only {bad[0]!r} is unknown: use a comma list of {', '.join(PARTS)}", file=sys.stderr)
        return 2
    for name in ("threads", "jobs"):
        if getattr(args, name) < 1:
            print(f"error: --{name} {getattr(args, name)} is invalid: it must be >= 1", file=sys.stderr)
            return 2
    if args.max_steps is not None and args.max_steps < 1:
        print(f"error: --max-steps {args.max_steps} is invalid: it must be >= 1", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    groups = [tuple(p for p in g if p in parts) for g in GROUPS]
    jobs = [Job(g, args.out, args.seed, args.threads, args.max_steps, t_all) for g in groups if g]
    infos: dict[str, dict] = {}
    if args.jobs == 1 or len(jobs) == 1:
        for job in jobs:
            infos.update(run_group(job))
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
            for got in pool.map(run_group, jobs):
                infos.update(got)
    log_path = args.out / "training_log.json"
    data = json.loads(log_path.read_text()) if log_path.is_file() else {}
    data.setdefault("parts", {}).update({p: infos[p] for p in PARTS if p in infos})
    total = time.perf_counter() - t_all
    data.update(seed=args.seed, threads=args.threads, jobs=args.jobs, torch=torch.__version__,
                total_seconds_last_run=total, total_cpu_seconds_last_run=sum(i["cpu_seconds"] for i in infos.values()))
    log_path.write_text(json.dumps(data, indent=1))
    plot(data, args.out / "training_loss.png")
    print(f"[{total:7.1f}s] done in {total:.1f}s wall ({data['total_cpu_seconds_last_run']:.0f}s CPU in the training processes); "
          f"log {log_path}, curves {args.out / 'training_loss.png'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
