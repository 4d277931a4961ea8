"""The paper's figures with matplotlib (Agg), as PNG and PDF.

* tradeoff (per model): quality against speedup, one marker per method and K (95% intervals as
  error bars), CHORDS' stream (every hit index, from whatif.csv) as a line per K; latent RMSE
  when no quality metric was computed.
* wallclock (per model): time per sample against K per method, Sequential as a dashed line.
* grids: the methods side by side on the same prompt and seed (eval/grids.py).

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
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .metrics import DISTANCES  # noqa: E402
from .runs import Problems, Run, RunError, method_sort_key  # noqa: E402
from .embedded_quality import PERCENT as PERCENT_METRICS  # noqa: E402
from .embedded_quality import quality_metrics  # noqa: E402
from .tables import QUALITY  # noqa: E402

log = logging.getLogger("eval")

FIGURES = ("figure4", "figure5", "tradeoff", "wallclock", "grids")
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
        if r.is_sequential or len(r.hits) < 2 or steps.get(r.model_label or r.model) != r.num_steps:
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
                        "model": r.model_label or r.model,
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



def _err(frame: pd.DataFrame, col: str, scale: float = 1.0, positive: bool = False):
    """Asymmetric error bars from ``{col}_lo`` / ``{col}_hi`` (None when absent); ``positive``
    keeps the lower end above 0 (a t-interval of a few RMSEs can reach below 0, a log axis cannot)."""
    if f"{col}_lo" not in frame or f"{col}_hi" not in frame:
        return None
    v = frame[col].to_numpy(dtype=float) * scale
    lo = v - frame[f"{col}_lo"].to_numpy(dtype=float) * scale
    hi = frame[f"{col}_hi"].to_numpy(dtype=float) * scale - v
    lo[~pd.notna(lo)] = 0
    hi[~pd.notna(hi)] = 0
    if positive:
        lo = np.minimum(lo, 0.9 * np.abs(v))
    return [lo, hi]


def tradeoff(summary: pd.DataFrame, whatif: pd.DataFrame | None, steps: dict[str, int], out: Path,
             formats: Sequence[str]) -> list[Path]:
    """Quality (or latent RMSE) against speedup per method and K; CHORDS' streamed hits as lines."""
    written: list[Path] = []
    markers = "osD^vP*X<>"
    for model in sorted(steps):
        s = summary[(summary["model"] == model) & (summary["num_steps"] == steps[model])]
        par = s[s["algorithm"] != "sequential"]
        if par.empty:
            continue
        qcol = QUALITY[s["media"].iloc[0]]
        panels = [("latent_rmse", "Latent RMSE vs sequential", 1.0)]
        if qcol in par and par[qcol].notna().any():
            panels.insert(0, (qcol, QUALITY_LABEL[qcol], 100.0 if qcol == "vbench_quality" else 1.0))
        fig, axes = plt.subplots(1, len(panels), figsize=(5.8 * len(panels), 4.2), squeeze=False)
        ks = sorted(int(k) for k in par["num_cores"].unique())
        colors = {k: plt.cm.viridis(i / max(len(ks) - 1, 1)) for i, k in enumerate(ks)}
        for ax, (col, label, scale) in zip(axes[0], panels):
            for mi, method in enumerate(sorted(par["method"].unique(), key=method_sort_key)):
                m = par[par["method"] == method]
                for k in ks:
                    c = m[m["num_cores"] == k]
                    if c.empty or not c[col].notna().any():
                        continue
                    ax.errorbar(c["speedup"], c[col] * scale, xerr=_err(c, "speedup"),
                                yerr=_err(c, col, scale, positive=col == "latent_rmse"),
                                fmt=markers[mi % len(markers)], color=colors[k], ms=7, capsize=2,
                                label=f"{method} K={k}")
            if col == "latent_rmse" and whatif is not None and not whatif.empty:
                w = whatif[(whatif["model"] == model) & (whatif["num_steps"] == steps[model])
                           & whatif["rule"].str.startswith("core_index=")]
                styles = ["--", ":", "-.", (0, (5, 1))]
                for (method, k), g in w.groupby(["method", "num_cores"]):
                    g = g.sort_values("speedup")
                    ls = styles[sorted(w["method"].unique(), key=method_sort_key).index(method) % len(styles)]
                    if int(k) in colors:
                        ax.plot(g["speedup"], g["latent_rmse"], ls=ls, lw=1, color=colors[int(k)], alpha=0.7)
            seq = s[s["algorithm"] == "sequential"]
            if col != "latent_rmse" and len(seq) and pd.notna(seq[col].iloc[0]):
                ax.axhline(float(seq[col].iloc[0]) * scale, color="gray", ls="--", lw=1, label="Sequential")
            if col == "latent_rmse":
                ys = [y for ln in ax.get_lines() for y in ln.get_ydata() if y == y]
                if ys and min(ys) > 0:
                    ax.set_yscale("log")
                else:
                    pos = [y for y in ys if y > 0]
                    ax.set_yscale("symlog", linthresh=min(pos) if pos else 1e-6)
            ax.set_xlabel("Speedup (sequential rounds / rounds)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7, ncol=2)
        fig.suptitle(f"Quality against speedup: {model} (N={steps[model]}; lines: every streamed hit, one style per method)")
        fig.tight_layout()
        written += _save(fig, out, f"tradeoff_{_safe(model)}", formats)
    return written


def wallclock(summary: pd.DataFrame, steps: dict[str, int], out: Path, formats: Sequence[str]) -> list[Path]:
    """Time per sample (sampling seconds, 95% interval) against the number of cores per method."""
    written: list[Path] = []
    for model in sorted(steps):
        s = summary[(summary["model"] == model) & (summary["num_steps"] == steps[model])]
        par = s[s["algorithm"] != "sequential"]
        if par.empty:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for method in sorted(par["method"].unique(), key=method_sort_key):
            m = par[par["method"] == method].sort_values("num_cores")
            axes[0].errorbar(m["num_cores"], m["time_sample_s"], yerr=_err(m, "time_sample_s"), marker="o", capsize=2,
                             label=method)
            axes[1].errorbar(m["num_cores"], m["wall_speedup"], yerr=_err(m, "wall_speedup"), marker="o", capsize=2,
                             label=method)
        seq = s[s["algorithm"] == "sequential"]
        if len(seq):
            axes[0].axhline(float(seq["time_sample_s"].iloc[0]), color="gray", ls="--", lw=1, label="Sequential")
        axes[1].axhline(1.0, color="gray", ls=":", lw=1)
        for ax, ylabel in zip(axes, ["Time per sample (s)", "Wall-clock speedup"]):
            ax.set_xlabel("Number of cores K")
            ax.set_ylabel(ylabel)
            ax.set_xticks(sorted(int(k) for k in par["num_cores"].unique()))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        hw = ", ".join(sorted(set(",".join(par["hardware"].astype(str)).split(","))))
        fig.suptitle(f"Wall-clock against K: {model} (N={steps[model]}; hardware: {hw})")
        fig.tight_layout()
        written += _save(fig, out, f"wallclock_{_safe(model)}", formats)
    return written
