"""The paper's tables from the per-cell summary, as markdown, CSV and LaTeX.

* Table 1 (video models) / Table 2 (image models): rows model x method; a column group per
  core count K with Time per sample, Speedup, quality (VBench Quality / CLIP Score) and Latent
  RMSE. The Sequential row repeats in every group with "-" for speedup and RMSE, as the paper
  prints it.
* Table 3 (init-sequence ablation): CHORDS rows per (K, initialization sequence: "Ours" for
  the paper's presets, "Uniform" for equal gaps, else the sequence itself); a column group per
  model with Speedup and quality.
* Table 4: CHORDS (``table4.algorithms``) per model, method, K and step count N: Time per
  sample, Speedup, quality, Latent RMSE.

Cells: "-" not applicable (Sequential's speedup and RMSE), "n/a" not measured (e.g. CLIP not
enabled, latents unreadable), blank when no run exists for the cell. The CSV holds the same
cells at full precision (blank for all three).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from .embedded_quality import LABELS as EMBEDDED_LABELS
from .embedded_quality import MEDIA as QUALITY_MEDIA
from .embedded_quality import PERCENT as PERCENT_METRICS
from .embedded_quality import quality_metrics
from .runs import method_sort_key

log = logging.getLogger("eval")

TABLES = ("table1", "table2", "table3", "table4")
FORMATS = ("md", "csv", "tex")

QUALITY = {"image": "clip_score", "video": "vbench_quality"}
LABELS = {
    "time": ("Time per sample (s)", "down"),
    "speedup": ("Speedup", "up"),
    "nfe": ("NFE", "down"),
    "n": ("n", ""),
    "clip_score": ("CLIP Score", "up"),
    "vbench_quality": ("VBench Quality", "up"),
    "latent_rmse": ("Latent RMSE", "down"),
    **EMBEDDED_LABELS,  # embedded models' quality columns (eval/embedded_quality.py)
}
NA = "n/a"  # measured quantity without a value
DASH = "-"  # not applicable
#: how the intervals in the cells are made (eval/stats.py)
CI_NOTE = ("speedups, times, NFE, latent RMSE and VBench Quality: percentile bootstrap over runs (speedups "
           "paired with their references); accuracies: Wilson binomial interval; CLIP score: t-interval of the mean; "
           "'fixed': every run stopped at the same round (set by the schedule), so the speedup has no interval")
#: below this many samples a Fréchet distance is biased upwards by more than the differences it
#: should show (README, "Embedded models"): the cell is flagged and problems.txt says so
FRECHET_MIN_N = 200
FIXED = "fixed"


@dataclass
class Table:
    name: str
    caption: str
    numeric: pd.DataFrame  # full precision, NaN where no value (CSV)
    display: pd.DataFrame  # formatted strings; columns are metric keys or (group, metric key)


def _label(metric: str, fmt: str) -> str:
    text, arrow = LABELS[metric]
    if not arrow:
        return text
    if fmt == "tex":
        return f"{text} $\\{arrow}arrow$"
    return f"{text} {'↑' if arrow == 'up' else '↓'}"


def format_value(metric: str, value: float, decimals: dict) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if metric == "vbench_quality" or metric in PERCENT_METRICS:
        return f"{100.0 * value:.{int(decimals.get(metric, 1))}f}%"
    if metric == "n":
        return f"{int(value)}"
    key = "time" if metric == "time" else metric
    return f"{value:.{int(decimals.get(key, 3))}f}"


def choose_steps(summary: pd.DataFrame, wanted: int | None, problems) -> dict[str, int]:
    """The step count N that tables 1-3 and the figures use, per model (see configs/eval.yaml)."""
    chosen: dict[str, int] = {}
    for model, g in summary.groupby("model", sort=True):
        counts = g.groupby("num_steps")["n_runs"].sum()
        if wanted is not None:
            n = int(wanted)
            if n not in counts.index:
                problems.report(
                    f"model {model}: no runs with num_steps={n} (found {', '.join(map(str, counts.index))}); "
                    f"left out of tables 1-3 and the figures"
                )
                continue
        elif 50 in counts.index:
            n = 50
        else:
            n = int(sorted(counts.index, key=lambda s: (-counts[s], s))[0])
        chosen[model] = n
        others = [int(s) for s in counts.index if s != n]
        if others:
            problems.report(
                f"model {model}: mixed step counts; tables 1-3 and the figures use N={n}, runs with "
                f"num_steps {', '.join(map(str, others))} are left out of them (table4 shows every N; "
                f"filter.num_steps chooses)"
            )
    return chosen


def _at_steps(summary: pd.DataFrame, steps: dict[str, int]) -> pd.DataFrame:
    if summary.empty:
        return summary
    mask = summary.apply(lambda r: steps.get(r["model"]) == r["num_steps"], axis=1)
    return summary[mask.astype(bool)]


def _time_col(time: str) -> str:
    return "time_total_s" if time == "total" else "time_sample_s"


def _value(cell: pd.Series | None, metric: str, time: str, suffix: str = "") -> float:
    if cell is None:
        return math.nan
    if metric == "n":
        col = "n_runs"
    else:
        col = (_time_col(time) if metric == "time" else metric) + suffix
    v = cell.get(col, math.nan)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _cell(metric: str, cell: pd.Series | None, time: str, decimals: dict, show_ci: bool, dash: bool = False
          ) -> tuple[dict[str, float], str]:
    """A table cell: its numbers (value, lo, hi) and its text ``mean [lo, hi]`` (interval with ``show_ci``)."""
    name = "time_s" if metric == "time" else metric
    if dash or cell is None:
        nums = {name: math.nan} if metric == "n" else {name: math.nan, f"{name}_lo": math.nan, f"{name}_hi": math.nan}
        return nums, DASH if dash else ""
    v = _value(cell, metric, time)
    text = format_value(metric, v, decimals)
    if metric == "n":
        return {name: v}, text
    lo, hi = _value(cell, metric, time, "_lo"), _value(cell, metric, time, "_hi")
    if metric == "speedup" and text != NA and bool(cell.get("speedup_fixed", False)):
        text += f" ({FIXED})"  # no sampling variation: the schedule sets the round (eval/stats.py)
    elif show_ci and text != NA and math.isfinite(lo) and math.isfinite(hi):
        text += f" [{format_value(metric, lo, decimals).rstrip('%')}, {format_value(metric, hi, decimals).rstrip('%')}]"
    if metric == "frechet_distance" and text != NA:
        n = _value(cell, "n_frechet_distance", time)
        if not (math.isfinite(n) and n >= FRECHET_MIN_N):
            text += f" (n={int(n) if math.isfinite(n) else 0} < {FRECHET_MIN_N})"
    return {name: v, f"{name}_lo": lo, f"{name}_hi": hi}, text


def main_table(
    summary: pd.DataFrame, media: str, steps: dict[str, int], time: str, decimals: dict, name: str,
    show_ci: bool = True,
) -> Table | None:
    """Table 1 (media='video') or Table 2 (media='image')."""
    s = _at_steps(summary[summary["media"] == media], steps)
    if s.empty:
        return None
    metrics = ["time", "speedup", "nfe", *quality_metrics(s, media, QUALITY[media]), "latent_rmse", "n"]
    ks = sorted(int(k) for k in s.loc[s["algorithm"] != "sequential", "num_cores"].unique())
    if not ks:
        ks = [1]
    rows_num, rows_disp, index = [], [], []
    for model in sorted(s["model"].unique()):
        m = s[s["model"] == model]
        for method in sorted(m["method"].unique(), key=method_sort_key):
            mm = m[m["method"] == method]
            is_seq = bool((mm["algorithm"] == "sequential").all())
            num: dict[str, float] = {}
            disp = []
            for k in ks:
                if is_seq:
                    cell = mm.iloc[0]  # num_cores 1: the same cell in every K group
                else:
                    hit = mm[mm["num_cores"] == k]
                    cell = hit.iloc[0] if len(hit) else None
                for metric in metrics:
                    nums, text = _cell(metric, cell, time, decimals, show_ci, is_seq and metric in ("speedup", "latent_rmse"))
                    num.update({f"K{k}_{c}": v for c, v in nums.items()})
                    disp.append(text)
            index.append((model, method))
            rows_num.append(num)
            rows_disp.append(disp)
    idx = pd.MultiIndex.from_tuples(index, names=["Model", "Method"])
    numeric = pd.DataFrame(rows_num, index=idx)
    disp_cols = pd.MultiIndex.from_tuples([(f"Num Core = {k}", mt) for k in ks for mt in metrics])
    display = pd.DataFrame(rows_disp, index=idx, columns=disp_cols)
    quality = [LABELS.get(m, (m,))[0] for m in metrics if m not in ("time", "speedup", "nfe", "latent_rmse", "n")]
    what = f"{media} diffusion models ({', '.join(quality) or 'no quality metric'})"
    caption = f"Parallel diffusion solvers on {what}; N per model: " + ", ".join(
        f"{m}={n}" for m, n in sorted(steps.items()) if m in set(s["model"])
    )
    return Table(name, caption, numeric, display)


def sequence_label(init_kind: str, init_t: str) -> str:
    if init_kind == "ours":
        return "Ours"
    if init_kind == "uniform":
        return "Uniform"
    return init_t or "?"


def table3(summary: pd.DataFrame, steps: dict[str, int], decimals: dict, show_ci: bool = True) -> Table | None:
    s = _at_steps(summary[summary["algorithm"] == "chords"], steps)
    if s.empty:
        return None
    s = s.copy()
    s["sequence"] = [sequence_label(k, t) for k, t in zip(s["init_kind"], s["init_t"])]
    models = sorted(s["model"].unique())
    # A third index level only when one (K, sequence) holds several CHORDS settings.
    need_method = bool((s.groupby(["model", "num_cores", "sequence"])["method"].nunique() > 1).any())
    keys = sorted(
        {(int(r.num_cores), r.sequence, r.method if need_method else "") for r in s.itertuples()},
        key=lambda t: (-t[0], t[1] != "Ours", t[1] != "Uniform", t[1], t[2]),
    )
    rows_num, rows_disp = [], []
    cols_disp = []

    def metrics_of(model: str) -> list[str]:
        media = s.loc[s["model"] == model, "media"].iloc[0]
        return ["speedup", "nfe", *quality_metrics(s[s["model"] == model], media, QUALITY[media]), "latent_rmse", "n"]

    for model in models:
        for metric in metrics_of(model):
            cols_disp.append((model, metric))
    for k, seqlab, method in keys:
        num: dict[str, float] = {}
        disp = []
        for model in models:
            sel = s[(s["model"] == model) & (s["num_cores"] == k) & (s["sequence"] == seqlab)]
            if need_method:
                sel = sel[sel["method"] == method]
            cell = sel.iloc[0] if len(sel) else None
            for metric in metrics_of(model):
                nums, text = _cell(metric, cell, "sample", decimals, show_ci)
                num.update({f"{model}_{c}": v for c, v in nums.items()})
                disp.append(text)
        rows_num.append(num)
        rows_disp.append(disp)
    names = ["Num Core", "Initialization Sequence"] + (["Method"] if need_method else [])
    idx = pd.MultiIndex.from_tuples([k if need_method else k[:2] for k in keys], names=names)
    numeric = pd.DataFrame(rows_num, index=idx)
    display = pd.DataFrame(rows_disp, index=idx, columns=pd.MultiIndex.from_tuples(cols_disp))
    caption = "Ablation of the CHORDS initialization sequence; N per model: " + ", ".join(
        f"{m}={steps[m]}" for m in models
    )
    return Table("table3", caption, numeric, display)


def table4(
    summary: pd.DataFrame, algorithms: Sequence[str], time: str, decimals: dict, show_ci: bool = True
) -> Table | None:
    algs = {a.lower() for a in algorithms} if algorithms else None
    s = summary[summary["algorithm"] != "sequential"]
    if algs is not None:
        s = s[s["algorithm"].isin(algs)]
    if s.empty:
        return None
    medias = [m for m in ("video", "image") if m in set(s["media"])]
    quality = [q for m in medias for q in quality_metrics(s[s["media"] == m], m, QUALITY[m])]
    metrics = ["time", "speedup", "nfe", *dict.fromkeys(quality), "latent_rmse", "n"]
    s = s.sort_values(
        ["model", "method", "num_cores", "num_steps"],
        key=lambda c: c.map(method_sort_key) if c.name == "method" else c,
    )
    rows_num, rows_disp, index = [], [], []
    for r in s.itertuples(index=False):
        cell = pd.Series(r._asdict())
        num: dict[str, float] = {}
        disp = []
        for metric in metrics:
            other = QUALITY_MEDIA.get(metric, cell["media"]) not in (None, cell["media"])
            nums, text = _cell(metric, None if other else cell, time, decimals, show_ci)
            num.update(nums)
            disp.append(text)
        index.append((cell["model"], cell["method"], int(cell["num_cores"]), int(cell["num_steps"])))
        rows_num.append(num)
        rows_disp.append(disp)
    idx = pd.MultiIndex.from_tuples(index, names=["Model", "Method", "Num Core", "Total Steps"])
    numeric = pd.DataFrame(rows_num, index=idx)
    display = pd.DataFrame(rows_disp, index=idx, columns=list(metrics))
    return Table("table4", "Parallel sampling with different numbers of diffusion steps N", numeric, display)


# --------------------------------------------------------------------------- writing


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\^{}", "$": r"\$"}


def _tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def _header(col, fmt: str) -> str | tuple:
    """Column label for a format: metric keys become 'Speedup ↑' (md) or 'Speedup $\\uparrow$' (tex)."""
    if isinstance(col, tuple):
        return tuple(_header(c, fmt) for c in col)
    if col in LABELS:
        return _label(col, fmt)
    return _tex_escape(col) if fmt == "tex" else str(col)


def to_markdown(t: Table) -> str:
    d = t.display.copy()
    cols = [_header(c, "md") for c in d.columns]
    d.columns = [" ".join(c).replace("Num Core = ", "K=") if isinstance(c, tuple) else c for c in cols]
    d = d.reset_index()
    return f"{t.caption}\n\n" + d.to_markdown(index=False, stralign="right", disable_numparse=True) + "\n"


def to_csv(t: Table) -> str:
    return t.numeric.reset_index().to_csv(index=False)


def to_latex(t: Table) -> str:
    d = t.display.map(_tex_escape)
    cols = [_header(c, "tex") for c in d.columns]
    d.columns = pd.MultiIndex.from_tuples(cols) if isinstance(cols[0], tuple) else cols
    d.index = pd.MultiIndex.from_tuples(
        [tuple(_tex_escape(p) for p in (i if isinstance(i, tuple) else (i,))) for i in d.index],
        names=[_tex_escape(n) for n in d.index.names],
    )
    return d.to_latex(
        multicolumn=True,
        multicolumn_format="c",
        multirow=True,
        escape=False,
        caption=_tex_escape(t.caption),
        label=f"tab:{t.name}",
    )


def write_table(t: Table, out: Path, formats: Iterable[str]) -> list[Path]:
    written = []
    for fmt in formats:
        path = Path(out) / f"{t.name}.{fmt}"
        if fmt == "md":
            text = to_markdown(t)
        elif fmt == "csv":
            text = to_csv(t)
        elif fmt == "tex":
            text = to_latex(t)
        else:  # validated by the CLI
            raise ValueError(fmt)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def build_tables(
    summary: pd.DataFrame,
    names: Sequence[str],
    steps: dict[str, int],
    time: str,
    decimals: dict,
    table4_algorithms: Sequence[str] | None,
    show_ci: bool = True,
) -> dict[str, Table]:
    """The requested tables that have data (a table without data is logged and skipped)."""
    built: dict[str, Table] = {}
    for name in names:
        if name == "table1":
            t = main_table(summary, "video", steps, time, decimals, "table1", show_ci)
        elif name == "table2":
            t = main_table(summary, "image", steps, time, decimals, "table2", show_ci)
        elif name == "table3":
            t = table3(summary, steps, decimals, show_ci)
        elif name == "table4":
            t = table4(summary, table4_algorithms or [], time, decimals, show_ci)
        else:
            raise ValueError(name)
        if t is None:
            what = {"table1": "video runs", "table2": "image runs", "table3": "CHORDS runs", "table4": "runs of the table4 algorithms"}[name]
            log.info("%s: no %s found; not written", name, what)
        else:
            built[name] = t
    return built


def vbench_dimension_table(summary: pd.DataFrame, steps: dict[str, int], dimensions: Sequence[str], decimals: dict,
                           show_ci: bool = True) -> Table | None:
    """VBench per dimension next to the Quality Score, per video cell (model, method, K) at the
    tables' N: each dimension's mean over the videos scored on it (standard mode: the videos of
    that dimension's own prompts) and its n."""
    from .vbench_quality import column

    s = _at_steps(summary[summary["media"] == "video"], steps)
    if s.empty:
        return None
    s = s.sort_values(["model", "method", "num_cores"], key=lambda c: c.map(method_sort_key) if c.name == "method" else c)
    rows_num, rows_disp, index = [], [], []
    dec = dict(decimals)
    for r in s.itertuples(index=False):
        cell = pd.Series(r._asdict())
        num: dict[str, float] = {}
        disp = []
        for d in dimensions:
            col = column(d)
            v = _value(cell, col, "sample")
            text = NA if math.isnan(v) else f"{100 * v:.{int(dec.get('vbench_quality', 1))}f}%"
            lo, hi = _value(cell, col, "sample", "_lo"), _value(cell, col, "sample", "_hi")
            if show_ci and not math.isnan(v) and math.isfinite(lo) and math.isfinite(hi):
                text += f" [{100 * lo:.{int(dec.get('vbench_quality', 1))}f}, {100 * hi:.{int(dec.get('vbench_quality', 1))}f}]"
            n = cell.get(f"n_{col}", math.nan)
            text += f" (n={int(n)})" if isinstance(n, (int, float)) and math.isfinite(n) else ""
            num.update({d: v, f"{d}_lo": lo, f"{d}_hi": hi, f"n_{d}": n})
            disp.append(text)
        nums, text = _cell("vbench_quality", cell, "sample", decimals, show_ci)
        num.update(nums)
        disp.append(text)
        index.append((cell["model"], cell["method"], int(cell["num_cores"])))
        rows_num.append(num)
        rows_disp.append(disp)
    idx = pd.MultiIndex.from_tuples(index, names=["Model", "Method", "Num Core"])
    display = pd.DataFrame(rows_disp, index=idx, columns=[*dimensions, "vbench_quality"])
    caption = ("VBench per dimension (mean over the videos scored on it, n) and the Quality Score; N per model: "
               + ", ".join(f"{m}={n}" for m, n in sorted(steps.items()) if m in set(s["model"])))
    return Table("vbench_dimensions", caption, pd.DataFrame(rows_num, index=idx), display)


# --------------------------------------------------------------------------- summary.md

#: summary.md: one narrow table per question, each keyed by the cell (model, method, K, N)
SUMMARY_SECTIONS = {
    "Cells: what was run": ["stop_rule", "init_t", "hardware", "n_runs", "n_paired", "n_prompts", "seeds"],
    "Speed": ["speedup", "wall_speedup", "output_round", "nfe", "time_sample_s", "time_total_s"],
    "Quality": ["latent_rmse", "n_rmse"],
}
_SUMMARY_KEYS = ["model", "method", "num_cores", "num_steps"]
_SUMMARY_HEAD = {"num_cores": "K", "num_steps": "N", "time_sample_s": "sample s", "time_total_s": "total s",
                 "wall_speedup": "wall speedup", "output_round": "output round", "latent_rmse": "latent RMSE",
                 "n_rmse": "n RMSE", "n_runs": "runs", "n_paired": "paired", "n_prompts": "prompts"}


def _summary_text(row: pd.Series, col: str, decimals: dict) -> str:
    v = row.get(col, math.nan)
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return NA
    if col.startswith("n_") or col in ("n_runs",):
        return f"{int(v)}"
    metric = {"time_sample_s": "time", "time_total_s": "time", "wall_speedup": "speedup",
              "output_round": "nfe"}.get(col, col)
    dec = {**{"time": 2, "speedup": 2, "nfe": 1, "latent_rmse": 4, "frechet_distance": 2}, **decimals}
    text = format_value(metric if metric in LABELS or metric in PERCENT_METRICS else "x", float(v), dec)
    lo, hi = row.get(f"{col}_lo", math.nan), row.get(f"{col}_hi", math.nan)
    if col == "speedup" and bool(row.get("speedup_fixed", False)):
        return f"{text} ({FIXED})"
    if isinstance(lo, float) and isinstance(hi, float) and math.isfinite(lo) and math.isfinite(hi):
        f = lambda x: format_value(metric if metric in LABELS or metric in PERCENT_METRICS else "x", x, dec).rstrip("%")
        text += f" [{f(lo)}, {f(hi)}]"
    if col == "frechet_distance":
        n = row.get("n_frechet_distance", 0)
        if not (isinstance(n, (int, float)) and n >= FRECHET_MIN_N):
            text += f" (n={int(n) if isinstance(n, (int, float)) and math.isfinite(n) else 0} < {FRECHET_MIN_N})"
    return text


def summary_markdown(summary: pd.DataFrame, quality_cols: Sequence[str] = (), decimals: dict | None = None,
                     level: float = 0.95, comparisons: pd.DataFrame | None = None) -> str:
    """summary.md: the cells of summary.csv as a few narrow tables (cells, speed, quality, and the
    paired method comparisons), each value ``mean [lo, hi]`` at ``level``; summary.csv keeps every column."""
    decimals = dict(decimals or {})
    sections = dict(SUMMARY_SECTIONS)
    extra = [c for c in [*quality_cols, "frechet_distance"] if c in summary.columns and summary[c].notna().any()]
    sections["Quality"] = [*sections["Quality"], *dict.fromkeys(extra)]
    parts = [f"# Summary: one row per cell (model, method, K, N); mean [{100 * level:g}% CI] over prompts x seeds\n\n"
             f"Intervals: {CI_NOTE}. Every column at full precision: summary.csv.\n"]
    for title, cols in sections.items():
        cols = [c for c in cols if c in summary.columns]
        if not cols:
            continue
        rows = [[*(str(r[k]) for k in _SUMMARY_KEYS), *(_summary_text(r, c, decimals) for c in cols)]
                for _, r in summary.iterrows()]
        head = [_SUMMARY_HEAD.get(c, LABELS.get(c, (c,))[0]) for c in [*_SUMMARY_KEYS, *cols]]
        parts.append(f"\n## {title}\n\n" + pd.DataFrame(rows, columns=head).to_markdown(
            index=False, stralign="right", disable_numparse=True) + "\n")
    if comparisons is not None and not comparisons.empty:
        diff = [c[len("diff_"):] for c in comparisons.columns
                if c.startswith("diff_") and not c.endswith(("_lo", "_hi")) and comparisons[c].notna().any()]
        rows = []
        for _, r in comparisons.iterrows():
            cells = [str(r["model"]), str(r["num_cores"]), str(r["num_steps"]), f"{r['method_a']} - {r['method_b']}",
                     str(int(r["n_pairs"]))]
            for c in diff:
                v, lo, hi = r[f"diff_{c}"], r[f"diff_{c}_lo"], r[f"diff_{c}_hi"]
                cells.append(NA if not math.isfinite(v) else f"{v:+.4g}" + (f" [{lo:+.4g}, {hi:+.4g}]" if math.isfinite(lo) else ""))
            rows.append(cells)
        head = ["model", "K", "N", "A - B", "pairs", *(_SUMMARY_HEAD.get(c, LABELS.get(c, (c,))[0]) for c in diff)]
        parts.append("\n## Method against method, paired on (prompt, seed)\n\nMean of the per-pair differences "
                     "A - B (same prompts and seeds) with a paired bootstrap interval; comparisons.csv has them at "
                     "full precision.\n\n" + pd.DataFrame(rows, columns=head).to_markdown(
                         index=False, stralign="right", disable_numparse=True) + "\n")
    return "".join(parts)
