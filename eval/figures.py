"""The paper's figures with matplotlib (Agg), as PNG and PDF.

* Figure 4 (per model): speedup, quality and latent RMSE against the number of cores K, one
  line per method; Sequential's quality is the dashed line.
* Figure 5 (per model): convergence of the streamed outputs — distance between each hit and
  the run's final output (``convergence.reference=last_hit``; or its sequential reference)
  against the round at which the hit arrived, averaged over the cell's runs per hit index; one
  panel per K, one line per method / init sequence. Hits come from latents.safetensors, rounds
  from stats.json. Its numbers are also written to ``figure5_data.csv``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .metrics import DISTANCES  # noqa: E402
from .runs import Problems, Run, RunError, method_sort_key  # noqa: E402
from .embedded_quality import PERCENT as PERCENT_METRICS  # noqa: E402
from .embedded_quality import quality_metrics  # noqa: E402
from .tables import QUALITY  # noqa: E402

log = logging.getLogger("eval")

FIGURES = ("figure4", "figure5")
FIGURE_FORMATS = ("png", "pdf")
QUALITY_LABEL = {"clip_score": "CLIP Score", "vbench_quality": "VBench Quality (%)", "class_accuracy": "Class accuracy (%)",
                 "frechet_distance": "Fréchet distance", "frame_consistency": "Frame consistency (%)",
                 "direction_accuracy": "Direction accuracy (%)"}


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _save(fig, out: Path, stem: str, formats: Iterable[str]) -> list[Path]:
    paths = []
    for fmt in formats:
        p = Path(out) / f"{stem}.{fmt}"
        fig.savefig(p, dpi=150, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def figure4(summary: pd.DataFrame, steps: dict[str, int], out: Path, formats: Sequence[str]) -> list[Path]:
    written: list[Path] = []
    for model in sorted(steps):
        s = summary[(summary["model"] == model) & (summary["num_steps"] == steps[model])]
        par = s[s["algorithm"] != "sequential"]
        if par.empty:
            log.info("figure4: model %s has no parallel runs; skipped", model)
            continue
        media = s["media"].iloc[0]
        qcol = quality_metrics(s, media, QUALITY[media])[0]  # embedded models: class accuracy
        scale = 100.0 if qcol == "vbench_quality" or qcol in PERCENT_METRICS else 1.0
        seq = s[s["algorithm"] == "sequential"]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for method in sorted(par["method"].unique(), key=method_sort_key):
            m = par[par["method"] == method].sort_values("num_cores")
            axes[0].plot(m["num_cores"], m["speedup"], marker="o", label=method)
            if qcol in m and m[qcol].notna().any():
                axes[1].plot(m["num_cores"], m[qcol] * scale, marker="o", label=method)
            axes[2].plot(m["num_cores"], m["latent_rmse"], marker="o", label=method)
        axes[0].axhline(1.0, color="gray", ls=":", lw=1)
        if len(seq) and qcol in seq and pd.notna(seq[qcol].iloc[0]):
            axes[1].axhline(float(seq[qcol].iloc[0]) * scale, color="gray", ls="--", lw=1, label="Sequential")
        empty_quality = not axes[1].lines
        if empty_quality:
            axes[1].text(0.5, 0.5, f"{QUALITY_LABEL[qcol]}\nnot computed", ha="center", va="center",
                         transform=axes[1].transAxes, color="gray")
        for ax, ylabel in zip(axes, ["Speedup (rounds)", QUALITY_LABEL[qcol], "Latent RMSE"]):
            ax.set_xlabel("Number of cores K")
            ax.set_ylabel(ylabel)
            if ax is axes[1] and empty_quality:
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.set_xticks(sorted(int(k) for k in par["num_cores"].unique()))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Scaling with the number of cores: {model} (N={steps[model]})")
        fig.tight_layout()
        written += _save(fig, out, f"figure4_{_safe(model)}", formats)
    return written


def convergence_data(
    runs: Sequence[Run],
    refs: dict[Path, Run],
    steps: dict[str, int],
    distance: str,
    reference: str,
    problems: Problems,
) -> pd.DataFrame:
    """One row per (run, hit): round and distance to the final output (or sequential reference)."""
    dist = DISTANCES[distance]
    rows = []
    for r in runs:
        if r.is_sequential or len(r.hits) < 2 or steps.get(r.model) != r.num_steps:
            continue
        try:
            if reference == "sequential":
                ref = refs.get(r.path)
                if ref is None:
                    continue  # already reported as unpaired
                final = ref.load_latent("output")
            else:
                final = r.load_latent(r.hits[-1].latent)
            for h in r.hits:
                x = r.load_latent(h.latent)
                rows.append(
                    {
                        "model": r.model,
                        "method": r.method,
                        "init_t": r.init_label,
                        "num_cores": r.num_cores,
                        "num_steps": r.num_steps,
                        "run": str(r.path),
                        "hit": h.index,
                        "core": h.core,
                        "round": h.round,
                        "distance": dist(x, final),
                    }
                )
        except (RunError, ValueError) as e:
            problems.report(f"left out of figure5: {e}")
    return pd.DataFrame(rows)


def figure5(data: pd.DataFrame, distance: str, reference: str, out: Path, formats: Sequence[str]) -> list[Path]:
    written: list[Path] = []
    if data.empty:
        log.info("figure5: no runs with several hits; skipped")
        return written
    for model in sorted(data["model"].unique()):
        d = data[data["model"] == model]
        ks = sorted(int(k) for k in d["num_cores"].unique())
        fig, axes = plt.subplots(1, len(ks), figsize=(4.6 * len(ks), 3.8), squeeze=False)
        for ax, k in zip(axes[0], ks):
            dk = d[d["num_cores"] == k]
            for method in sorted(dk["method"].unique(), key=method_sort_key):
                dm = dk[dk["method"] == method]
                curve = dm.groupby("hit").agg(round=("round", "mean"), distance=("distance", "mean")).sort_values("round")
                inits = sorted(set(dm["init_t"]) - {""})
                label = f"{method} [{inits[0]}]" if len(inits) == 1 else method
                ax.plot(curve["round"], curve["distance"], marker="o", label=label)
            ax.set_title(f"K={k}")
            ax.set_xlabel("Round (sequential network passes)")
            ax.set_ylabel(f"{'L1' if distance == 'l1' else 'RMSE'} distance to {'final output' if reference == 'last_hit' else 'sequential'}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        n = int(d["num_steps"].iloc[0])
        fig.suptitle(f"Convergence of streamed outputs: {model} (N={n})")
        fig.tight_layout()
        written += _save(fig, out, f"figure5_{_safe(model)}", formats)
    return written

