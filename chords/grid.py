"""A picture of a job: each prompt's sequential output next to every streamed hit.

After a job the CLI writes, next to the run folders of the algorithm setting
(``{output_base_path}/{model}/{algo_tag}/``):

* ``grid.png``: one row per prompt of the job; the first column is the sequential reference,
  then every hit the run streamed, in arrival order, headed with its core and round (for CHORDS
  the coarse shot, then the fastest core, ...). Videos show each clip as a film strip.
* ``grid.mp4`` (videos): the same layout, played frame by frame.

It reads only the run folders' media (``image.png`` / ``video.mp4`` and the per-hit
``*_hitNN`` files that ``full_return`` writes; without them a row shows the chosen output
only), so it works for every model. Small images are enlarged by an integer factor (nearest)
to ``CELL`` pixels, large ones reduced to fit ``MAX_CELL``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

CELL = 96  # small images are enlarged (nearest) to about this size
MAX_CELL = 256  # large images are reduced to fit this
VIDEO_FRAME = 64  # frame height of the film strips in grid.png
LABEL_W = 210
HEAD_H = 16
PAD = 4


@dataclass
class Cell:
    title: str
    frames: list[np.ndarray]  # [H, W, 3] uint8, one per frame (images: one)


def _read_media(path: Path) -> list[np.ndarray]:
    if path.suffix == ".mp4":
        import imageio.v2 as imageio

        frames = [np.asarray(f)[..., :3] for f in imageio.mimread(str(path), memtest=False)]
    else:
        frames = [np.asarray(Image.open(path).convert("RGB"))]
    return frames


def _fit(frame: np.ndarray, target: int, limit: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if max(h, w) <= target:
        k = max(1, target // max(h, w))
        return np.repeat(np.repeat(frame, k, axis=0), k, axis=1)
    if max(h, w) > limit:
        s = limit / max(h, w)
        return np.asarray(Image.fromarray(frame).resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS))
    return frame


def _row(main_folder: Path, ref_folder: Path | None) -> tuple[list[Cell], str, float]:
    stats = json.loads((main_folder / "stats.json").read_text(encoding="utf-8"))
    cells: list[Cell] = []
    if ref_folder is not None:
        ref = json.loads((ref_folder / "stats.json").read_text(encoding="utf-8"))
        media = (ref.get("media_files") or [None])[0]
        if media and (ref_folder / media).is_file():
            cells.append(Cell(f"sequential r{ref['rounds']}", _read_media(ref_folder / media)))
    hits = stats.get("hits") or []
    if all(h.get("media") for h in hits):
        for i, h in enumerate(hits):
            mark = "*" if i == stats.get("output_index") else ""
            cells.append(Cell(f"hit{i} c{h.get('core')} r{h['round']}{mark}", _read_media(main_folder / h["media"])))
    else:
        media = (stats.get("media_files") or [None])[0]
        if media and (main_folder / media).is_file():
            cells.append(Cell(f"output r{stats['output_round']}", _read_media(main_folder / media)))
    fps = stats.get("fps")
    return cells, str(stats.get("prompt", "")), float(fps) if isinstance(fps, (int, float)) and fps > 0 else 8.0


def _strip(frames: Sequence[np.ndarray], height: int) -> np.ndarray:
    """Frames side by side, each scaled to ``height`` (nearest when enlarging)."""
    out = []
    for f in frames:
        h, w = f.shape[:2]
        nw = max(1, round(w * height / h))
        resample = Image.NEAREST if height >= h else Image.LANCZOS
        out.append(np.asarray(Image.fromarray(f).resize((nw, height), resample)))
    return np.concatenate(out, axis=1)


def _compose(rows: list[tuple[list[Cell], str]], frame: int | None, label: str | None = None) -> Image.Image:
    """frame=None: film strips (PNG of a video) or single images; else that frame of every clip.
    ``label``: a line on top (a sweep job's settings)."""
    def pic(c: Cell) -> np.ndarray:
        if frame is None and len(c.frames) > 1:
            return _strip(c.frames, VIDEO_FRAME)
        f = c.frames[min(frame or 0, len(c.frames) - 1)]
        return _fit(f, CELL, MAX_CELL)

    pics = [[pic(c) for c in cells] for cells, _ in rows]
    ncol = max(len(p) for p in pics)
    col_w = [max((p[j].shape[1] for p in pics if j < len(p)), default=0) for j in range(ncol)]
    row_h = [max(x.shape[0] for x in p) if p else 0 for p in pics]
    width = LABEL_W + sum(w + PAD for w in col_w) + PAD
    top = HEAD_H + PAD if label else 0
    height = top + HEAD_H + sum(h + HEAD_H + PAD for h in row_h) + PAD
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if label:
        draw.text((PAD, PAD), label, fill=(0, 0, 0))
    y = PAD + top
    for (cells, prompt), p, h in zip(rows, pics, row_h):
        x = LABEL_W
        for j, (c, img) in enumerate(zip(cells, p)):
            draw.text((x, y), c.title, fill=(0, 0, 0))
            canvas.paste(Image.fromarray(img), (x, y + HEAD_H))
            x += col_w[j] + PAD
        text = prompt if len(prompt) <= 32 else prompt[:31] + "…"
        draw.text((PAD, y + HEAD_H + h // 2 - 6), text, fill=(0, 0, 0))
        y += h + HEAD_H + PAD
    return canvas


def write_grid(pairs: Iterable[tuple[Path, Path | None]], out_dir: Path, name: str = "grid",
               label: str | None = None) -> list[Path]:
    """``{name}.png`` (and ``{name}.mp4`` for videos) in ``out_dir`` from (run folder, reference
    folder) pairs, with ``label`` on top when given."""
    rows, fps = [], 8.0
    for main, ref in pairs:
        try:
            cells, prompt, fps = _row(Path(main), Path(ref) if ref else None)
        except (OSError, ValueError, KeyError) as e:
            log.warning("grid: %s left out (%s)", main, e)
            continue
        if cells:
            rows.append((cells, prompt))
    if not rows:
        return []
    out_dir = Path(out_dir)
    written = [out_dir / f"{name}.png"]
    _compose(rows, None, label).save(written[0])
    frames = max(len(c.frames) for cells, _ in rows for c in cells)
    if frames > 1:
        import imageio.v2 as imageio

        path = out_dir / f"{name}.mp4"
        with imageio.get_writer(str(path), fps=fps, codec="libx264", quality=8, macro_block_size=16) as w:
            for f in range(frames):
                w.append_data(np.asarray(_compose(rows, f, label)))
        written.append(path)
    return written


def write_job_grids(outcomes: Iterable[tuple[Any, Any]], name: str = "grid", label: str | None = None) -> list[Path]:
    """The grids of a job's outcomes (runner.Outcome pairs), one per algorithm-setting folder.
    Each job of a sweep writes its own (``name`` = ``grid-job{N}``, ``label`` = its overrides),
    so a seed sweep's jobs no longer overwrite one ``grid.png``."""
    groups: dict[Path, list[tuple[Path, Path | None]]] = {}
    for main, ref in outcomes:
        if ref is None:
            continue
        groups.setdefault(Path(main.folder).parent, []).append((Path(main.folder), Path(ref.folder)))
    written: list[Path] = []
    for folder, pairs in groups.items():
        written += write_grid(pairs, folder, name, label)
    return written
