"""The methods side by side on the same prompt and seed (the paper's Figures 3, 6 and 7).

Read from the run folders' media only (``image.png`` / ``video.mp4``, or a hit's own file when a
what-if stop rule chose that hit):

* images: ``grid_{model}_K{k}.png`` — one row per prompt (its first seed, at most
  ``grids.max_prompts``), one column per method (Sequential first), each tile titled with the
  method and its speedup;
* videos: ``strip_{model}_K{k}_{prompt}_s{seed}.png`` — one row per method, ``grids.frames``
  frames evenly spaced over the video.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .runs import Problems, Run, method_sort_key  # noqa: E402

log = logging.getLogger("eval")


def _slug(text: str, n: int = 32) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:n] or "prompt"


def read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_frames(path: Path, count: int) -> list[np.ndarray]:
    """``count`` frames evenly spaced over a video (all of them if it has fewer)."""
    import imageio.v3 as iio

    frames = [np.asarray(f) for f in iio.imiter(path)]
    if not frames:
        raise ValueError(f"{path}: no frames")
    idx = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return [frames[i] if frames[i].ndim == 3 else np.stack([frames[i]] * 3, -1) for i in idx]


def _label(run: Run, refs: dict[Path, Run]) -> str:
    ref = refs.get(run.path)
    if run.is_sequential or ref is None:
        return run.method
    return f"{run.method}\n{ref.rounds / run.output_round:.2f}x, {run.output_round} rounds"


def _columns(runs: Sequence[Run]) -> list[Run]:
    """One run per method (the first by path), Sequential first."""
    by: dict[str, Run] = {}
    for r in sorted(runs, key=lambda r: str(r.path)):
        by.setdefault(r.method, r)
    return [by[m] for m in sorted(by, key=method_sort_key)]


def grids(runs: Sequence[Run], refs: dict[Path, Run], steps: dict[str, int], out: Path, cfg: dict,
          problems: Problems) -> list[Path]:
    max_prompts = int(cfg.get("max_prompts", 4))
    n_frames = int(cfg.get("frames", 4))
    written: list[Path] = []
    # (model, N, K) -> (prompt, seed) -> runs of every method; Sequential joins every K
    cells: dict[tuple, dict[tuple, list[Run]]] = defaultdict(lambda: defaultdict(list))
    seq: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        model = r.model_label or r.model
        if steps.get(model) != r.num_steps:
            continue
        if r.is_sequential:
            seq[(model, r.num_steps, r.prompt, r.seed)].append(r)
        else:
            cells[(model, r.num_steps, r.num_cores)][(r.prompt, r.seed)].append(r)
    for (model, n, k), by_sample in sorted(cells.items(), key=lambda kv: tuple(map(str, kv[0]))):
        media = next(iter(by_sample.values()))[0].media
        samples = sorted(by_sample, key=lambda ps: (ps[1], ps[0]))
        first_seed: dict[str, tuple] = {}
        for p, sd in samples:
            first_seed.setdefault(p, (p, sd))
        chosen = list(first_seed.values())[:max_prompts]
        rows = [(p, sd, _columns(seq.get((model, n, p, sd), []) + by_sample[(p, sd)])) for p, sd in chosen]
        if media == "image":
            written += _image_grid(model, k, n, rows, refs, out, problems)
        else:
            for p, sd, cols in rows:
                written += _video_strip(model, k, n, p, sd, cols, refs, n_frames, out, problems)
    return written


def _tile(ax, img: np.ndarray | None, title: str) -> None:
    if img is not None:
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    else:
        ax.text(0.5, 0.5, "no media", ha="center", va="center", color="gray", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)


def _media(run: Run, kind: str, problems: Problems) -> Path | None:
    path = run.media_path()
    if path is None:
        if run.whatif:
            problems.report(f"grids: {run.name}: no {kind} file for hit {run.output_index} ({run.whatif}); its tile is "
                            f"left blank (run with algo.full_return=true to keep every hit's media)")
        else:
            problems.report(f"grids: {run.name}: no {kind} file; its tile is left blank")
    return path


def _image_grid(model: str, k: int, n: int, rows, refs, out: Path, problems: Problems) -> list[Path]:
    methods = sorted({r.method for _, _, cols in rows for r in cols}, key=method_sort_key)
    fig, axes = plt.subplots(len(rows), len(methods), figsize=(2.2 * len(methods), 2.6 * len(rows)), squeeze=False,
                             layout="constrained")
    for i, (prompt, seed, cols) in enumerate(rows):
        by = {r.method: r for r in cols}
        for j, method in enumerate(methods):
            r = by.get(method)
            img = None
            if r is not None:
                path = _media(r, "image", problems)
                if path is not None:
                    try:
                        img = read_image(path)
                    except (OSError, ValueError) as e:
                        problems.report(f"grids: {r.name}: unreadable image ({e}); tile left blank")
            _tile(axes[i][j], img, _label(r, refs) if r is not None else method)
        axes[i][0].set_ylabel(f"{prompt[:40]}\nseed {seed}", fontsize=7)
    fig.suptitle(f"{model}: methods side by side, K={k}, N={n}", fontsize=9)
    path = Path(out) / f"grid_{_slug(model)}_K{k}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return [path]


def _video_strip(model: str, k: int, n: int, prompt: str, seed: int, cols, refs, n_frames: int, out: Path,
                 problems: Problems) -> list[Path]:
    fig, axes = plt.subplots(len(cols), n_frames, figsize=(1.8 * n_frames, 2.1 * len(cols)), squeeze=False,
                             layout="constrained")
    for i, r in enumerate(cols):
        frames: list[np.ndarray] = []
        path = _media(r, "video", problems)
        if path is not None:
            try:
                frames = read_frames(path, n_frames)
            except (OSError, ValueError, RuntimeError) as e:
                problems.report(f"grids: {r.name}: unreadable video ({type(e).__name__}); row left blank")
        for j in range(n_frames):
            _tile(axes[i][j], frames[j] if j < len(frames) else None, _label(r, refs) if j == 0 else f"frame {j + 1}")
    fig.suptitle(f"{model}: {prompt[:60]!r}, seed {seed}, K={k}, N={n}", fontsize=9)
    path = Path(out) / f"strip_{_slug(model)}_K{k}_{_slug(prompt)}_s{seed}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return [path]
