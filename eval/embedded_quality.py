"""Quality of the embedded trained models' runs: the laptop analogs of CLIP score and VBench.

Runs of ``model=digits`` and ``model=moving-digits`` (recognised by ``encode_meta.embedded`` in
their stats.json) are scored with the committed digit classifier
(``chords/models/weights/digit_classifier.safetensors``, definitions in chords/digitnet.py, a
pure module: eval imports no adapter). The ``output`` tensor of latents.safetensors is decoded
with the models' fixed autoencoder (``chords.digitnet.as_pixels``) and scored as the PNG/MP4
shows it, without the MP4's compression.

Per run (means over a cell's runs in summary.csv and the tables):

* ``class_accuracy``: 1 when the classifier's class is the prompted one (video: the majority
  class over frames), else 0; runs whose prompt names no digit have none (the CLIP score analog);
* ``frame_consistency`` (video): fraction of frames predicted as the clip's majority class;
* ``direction_accuracy`` (video): 1 when the digit's centroid moves in the prompted direction.

Per cell: ``frechet_distance`` (images, the FID analog): Fréchet distance between the
classifier features of the cell's outputs and held-out real digits with the same class mix
(``chords.digitnet.reference_stats``), with ``n_frechet_distance`` samples. Like FID it is
biased upwards for few samples: ``bench/bench_embedded.py --only fd`` measures a perfect
sampler at several N (README, "Embedded models"); compare cells at equal N, 200 or more. Cells
with fewer samples are flagged in the tables and listed in problems.txt.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .metrics import GROUP_KEYS, cell_rows
from .runs import Problems, Run, RunError

log = logging.getLogger("eval")

RUN_COLUMNS = ("class_accuracy", "frame_consistency", "direction_accuracy")
CELL_COLUMNS = ("frechet_distance",)
COLUMNS = RUN_COLUMNS + CELL_COLUMNS
LABELS = {
    "class_accuracy": ("Class Acc.", "up"),
    "frechet_distance": ("Fréchet Dist.", "down"),
    "frame_consistency": ("Frame Consistency", "up"),
    "direction_accuracy": ("Direction Acc.", "up"),
}
PERCENT = {"class_accuracy", "frame_consistency", "direction_accuracy"}
#: which media a quality column belongs to (None: both)
MEDIA = {"clip_score": "image", "vbench_quality": "video", "class_accuracy": None, "frechet_distance": "image",
         "frame_consistency": "video", "direction_accuracy": "video"}


def is_embedded(run: Run) -> bool:
    from chords.digitnet import EMBEDDED_MODELS

    meta = run.stats.get("encode_meta")
    return isinstance(meta, dict) and meta.get("embedded") in EMBEDDED_MODELS


@dataclass
class EmbeddedScores:
    values: dict[Path, dict[str, float]] = field(default_factory=dict)
    features: dict[Path, tuple[np.ndarray, int]] = field(default_factory=dict)  # image runs: (features, class)

    @property
    def columns(self) -> list[str]:
        present = {k for v in self.values.values() for k, x in v.items() if not math.isnan(x)}
        return [c for c in RUN_COLUMNS if c in present]


def _flag(ok: bool | None) -> float:
    return math.nan if ok is None else float(ok)


def score_runs(runs: Iterable[Run], problems: Problems, classifier_file: str | Path | None = None) -> EmbeddedScores:
    """Per-run values and features of every embedded run (others are skipped), keyed by ``Run.key``:
    a what-if view (eval/whatif.py) is scored on the latent of the hit its stop rule chose."""
    from chords.digitnet import CLASSIFIER_FILE, load_classifier, score_sample
    from chords.weights import REBUILD, WeightsError

    out = EmbeddedScores()
    todo = [r for r in runs if is_embedded(r)]
    if not todo:
        return out
    try:
        net = load_classifier(classifier_file or CLASSIFIER_FILE)
    except WeightsError as e:
        problems.report(f"embedded quality left out: {e}; rebuild it with `{REBUILD} --only classifier`")
        return out
    for r in todo:
        try:
            x = r.load_latent(r.output_latent)  # a what-if view: the chosen hit's latent
        except RunError as e:
            problems.report(f"embedded quality left out: {e}")
            continue
        s = score_sample(net, r.stats["encode_meta"], x)
        if s is None:
            continue
        v = {"class_accuracy": _flag(s.correct)}
        if r.media == "video":
            v["frame_consistency"] = s.consistency
            v["direction_accuracy"] = _flag(s.direction_correct)
        out.values[r.key] = v
        if s.features is not None:
            out.features[r.key] = (s.features.double().numpy(), s.target)
    log.info("embedded quality: %d run(s) scored with the digit classifier", len(out.values))
    return out


def add_frechet(summary: pd.DataFrame, df: pd.DataFrame, scores: EmbeddedScores,
                classifier_file: str | Path | None = None) -> pd.DataFrame:
    """``frechet_distance`` and ``n_frechet_distance`` per cell, from the runs that count in it."""
    from chords.digitnet import CLASSIFIER_FILE, frechet_distance, gaussian_stats, reference_stats

    if summary.empty or not scores.features:
        return summary
    cells = {}
    for key, g in cell_rows(df).groupby(GROUP_KEYS, sort=True, dropna=False):
        feats = [scores.features[Path(p)] for p in g["run"] if Path(p) in scores.features]
        if len(feats) >= 2:
            ref = reference_stats([t for _, t in feats], classifier_file or CLASSIFIER_FILE)
            cells[key] = (frechet_distance(gaussian_stats(np.stack([f for f, _ in feats])), ref), len(feats))
    summary = summary.copy()
    keys = [tuple(row[k] for k in GROUP_KEYS) for _, row in summary.iterrows()]
    summary["frechet_distance"] = [cells.get(k, (math.nan, 0))[0] for k in keys]
    summary["n_frechet_distance"] = [cells.get(k, (math.nan, 0))[1] for k in keys]
    return summary


def report_small_frechet(summary: pd.DataFrame, problems: Problems, min_n: int) -> None:
    """problems.txt names every cell whose Fréchet distance rests on fewer than ``min_n`` samples
    (the tables flag those cells too: eval/tables.py)."""
    if summary.empty or "frechet_distance" not in summary:
        return
    for _, row in summary.iterrows():
        n = row.get("n_frechet_distance", 0)
        if math.isfinite(row["frechet_distance"]) and n < min_n:
            problems.report(
                f"{row['model']} / {row['method']} / K={row['num_cores']} / N={row['num_steps']}: Fréchet distance from "
                f"{int(n)} sample(s) (< {min_n}): biased upwards and too noisy to rank methods; flagged in the tables "
                f"(sweep more prompts x seeds for {min_n} or more)"
            )


def quality_metrics(rows: pd.DataFrame, media: str, default: str) -> list[str]:
    """The quality columns a table shows for ``rows`` of one media.

    The paper's column (``default``: CLIP Score / VBench Quality) unless every row is an embedded
    model's, then the embedded columns that have a value for this media.
    """
    from chords.digitnet import EMBEDDED_MODELS

    embedded = [c for c in COLUMNS if c in rows.columns and MEDIA[c] in (None, media) and rows[c].notna().any()]
    only_embedded = bool(embedded) and bool(rows["model"].isin(EMBEDDED_MODELS).all())
    return embedded if only_embedded else [default, *embedded]
