"""``python -m eval``: run folders in, the paper's tables and figures out.

    python -m eval runs=[outputs_flux,multirun/2026-11-02] out=eval_out clip.enabled=true
    python -m eval outputs_flux outputs_hunyuan out=eval_out vbench.enabled=true vbench.python=.venv-vbench/bin/python

Arguments are Hydra overrides of ``configs/eval.yaml`` (composed with Hydra's compose API, so
eval creates no Hydra output folder and does not change directory); a bare argument without
``=`` is taken as one more run folder. Bad input (no runs, an unwritable ``out``, an unknown
table / figure / format name, missing CLIP or VBench weights) is one line on stderr and exit
status 2, with nothing written.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("eval")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_NAME = "eval"


class UsageError(Exception):
    """Bad command-line input; the message is the one line printed before exit status 2."""


# --------------------------------------------------------------------------- config


def compose_config(argv: Sequence[str]) -> dict[str, Any]:
    """Compose configs/eval.yaml with Hydra overrides; bare arguments are extra run folders."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if not (CONFIG_DIR / f"{CONFIG_NAME}.yaml").is_file():
        raise UsageError(f"config {CONFIG_DIR / (CONFIG_NAME + '.yaml')} not found (run from a checkout of the project)")
    overrides = [a for a in argv if "=" in a or a.startswith(("+", "~"))]
    extra_runs = [a for a in argv if a not in overrides]
    bad = [a for a in extra_runs if a.startswith("-")]
    if bad:
        raise UsageError(f"unknown option {bad[0]!r}; accepted: Hydra overrides key=value (see --help) and run folders")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name=CONFIG_NAME, overrides=overrides)
        data = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # hydra / omegaconf: one line
        msg = " ".join(str(e).split())
        raise UsageError(f"bad override: {msg[:300]} (see python -m eval --help)") from None
    finally:
        GlobalHydra.instance().clear()
    runs = data.get("runs")
    if runs is None:
        runs = []
    if isinstance(runs, str):
        runs = [runs]
    data["runs"] = [str(r) for r in runs] + extra_runs
    return data


def _names(cfg: dict, key: str, accepted: Sequence[str]) -> list[str]:
    value = cfg.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    out = []
    for v in value:
        if str(v) not in accepted:
            raise UsageError(f"{key}: unknown {str(v)!r}; accepted: {', '.join(accepted)}")
        out.append(str(v))
    return out


def _check_writable(out: Path) -> None:
    p = out
    if p.exists():
        if not p.is_dir():
            raise UsageError(f"out={out} exists and is not a folder; give a folder to write the tables and figures to")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UsageError(f"out={out} is not writable; give a folder you can write to")
        return
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"out={out} cannot be created ({parent} is not a writable folder); give a folder you can write to")


def validate(cfg: dict) -> dict:
    """Check every value before anything runs; raises UsageError."""
    from .figures import FIGURE_FORMATS, FIGURES
    from .metrics import DISTANCES
    from .tables import FORMATS, TABLES

    if not cfg["runs"]:
        raise UsageError("runs=[] : give one or more run folders or output roots, e.g. runs=[outputs] (or python -m eval outputs)")
    for r in cfg["runs"]:
        if not Path(r).exists():
            raise UsageError(f"runs: {r!r} does not exist; give run folders, output roots or Hydra multirun folders")
    cfg["tables"] = _names(cfg, "tables", TABLES)
    cfg["figures"] = _names(cfg, "figures", FIGURES)
    cfg["formats"] = _names(cfg, "formats", FORMATS)
    cfg["figure_formats"] = _names(cfg, "figure_formats", FIGURE_FORMATS)
    if cfg["tables"] and not cfg["formats"]:
        raise UsageError(f"formats=[] : tables need at least one format; accepted: {', '.join(FORMATS)}")
    if cfg["figures"] and not cfg["figure_formats"]:
        raise UsageError(f"figure_formats=[] : figures need at least one format; accepted: {', '.join(FIGURE_FORMATS)}")
    if cfg.get("time") not in ("sample", "total"):
        raise UsageError(f"time={cfg.get('time')!r}: accepted: sample, total")
    conv = cfg.get("convergence") or {}
    if conv.get("distance") not in DISTANCES:
        raise UsageError(f"convergence.distance={conv.get('distance')!r}: accepted: {', '.join(DISTANCES)}")
    if conv.get("reference") not in ("last_hit", "sequential"):
        raise UsageError(f"convergence.reference={conv.get('reference')!r}: accepted: last_hit, sequential")
    dec = cfg.get("decimals") or {}
    for k, v in dec.items():
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 10:
            raise UsageError(f"decimals.{k}={v!r}: accepted: an integer 0..10")
    flt = cfg.get("filter") or {}
    for key in ("models", "methods", "num_cores"):
        v = flt.get(key)
        if v is not None and not isinstance(v, list):
            flt[key] = [v]
    if flt.get("num_cores") is not None and not all(isinstance(k, int) and k >= 1 for k in flt["num_cores"]):
        raise UsageError(f"filter.num_cores={flt['num_cores']!r}: accepted: null or a list of integers >= 1")
    ns = flt.get("num_steps")
    if ns is not None and (not isinstance(ns, int) or isinstance(ns, bool) or ns < 1):
        raise UsageError(f"filter.num_steps={ns!r}: accepted: null or an integer >= 1")
    clip = cfg.get("clip") or {}
    if clip.get("precision") not in ("fp32", "fp16", "bf16"):
        raise UsageError(f"clip.precision={clip.get('precision')!r}: accepted: fp32, fp16, bf16")
    bs = clip.get("batch_size")
    if not isinstance(bs, int) or bs < 1:
        raise UsageError(f"clip.batch_size={bs!r}: accepted: an integer >= 1")
    level = str(cfg.get("log_level", "INFO")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise UsageError(f"log_level={cfg.get('log_level')!r}: accepted: DEBUG, INFO, WARNING, ERROR")
    cfg["log_level"] = level
    cfg["out"] = str(cfg.get("out") or "")
    if not cfg["out"]:
        raise UsageError("out= is empty; give the folder to write tables and figures to, e.g. out=eval_out")
    _check_writable(Path(cfg["out"]))
    return cfg


# --------------------------------------------------------------------------- result cache


class ResultCache:
    """JSON cache of CLIP / VBench results under {out}/cache, keyed by run folder and settings.

    An entry is valid while the run's stats.json and media keep their modification times.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.dirty = False
        self.data: dict[str, Any] = {}
        if path is not None and path.is_file():
            try:
                self.data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                self.data = {}

    @staticmethod
    def stamp(run) -> str:
        parts = []
        for p in (run.path / "stats.json", run.media_path()):
            try:
                parts.append(f"{p.stat().st_mtime_ns}:{p.stat().st_size}" if p is not None else "-")
            except OSError:
                parts.append("-")
        return "|".join(parts)

    def get(self, key: str, stamp: str):
        e = self.data.get(key)
        if isinstance(e, dict) and e.get("stamp") == stamp:
            return e.get("value")
        return None

    def put(self, key: str, stamp: str, value) -> None:
        self.data[key] = {"stamp": stamp, "value": value}
        self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=0, sort_keys=True), encoding="utf-8")
        tmp.replace(self.path)


# --------------------------------------------------------------------------- pipeline


@dataclass
class EvalResult:
    runs: Any  # pandas DataFrame, one row per run
    summary: Any  # pandas DataFrame, one row per cell
    tables: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _filter_runs(runs, flt: dict):
    models = flt.get("models")
    if models:
        runs = [r for r in runs if r.model in set(map(str, models))]
    return runs


def _shown(run, flt: dict) -> bool:
    """Whether a run's cell is displayed (Sequential always is)."""
    if run.is_sequential:
        return True
    methods = flt.get("methods")
    if methods and run.method not in set(map(str, methods)):
        return False
    cores = flt.get("num_cores")
    if cores and run.num_cores not in set(cores):
        return False
    return True


def _clip_scores(runs, cfg: dict, cache: ResultCache, problems) -> dict[Path, float]:
    from .clip_score import ClipScorer, score_files

    c = cfg["clip"]
    images = [r for r in runs if r.media == "image"]
    if not images:
        return {}
    tag = f"clip|{c['model']}|{c['pretrained']}"
    use_cache = c.get("pretrained") not in (None, "", "null", "none", "random")
    scores: dict[Path, float] = {}
    todo = []
    for r in images:
        stamp = cache.stamp(r)
        hit = cache.get(f"{tag}|{r.path.resolve()}", stamp) if use_cache else None
        if hit is not None:
            scores[r.path] = float(hit)
            continue
        media = r.media_path()
        if media is None:
            problems.report(f"{r.name}: no image file; left out of CLIP score")
            continue
        todo.append((r, media, stamp))
    if todo:
        log.info("CLIP score: %d image(s) with %s / %s", len(todo), c["model"], c["pretrained"])
        scorer = ClipScorer(c["model"], c["pretrained"], c.get("cache_dir"), c.get("device"), c.get("precision", "fp32"))
        got = score_files(scorer, [(str(r.path), m, r.prompt) for r, m, _ in todo], batch_size=int(c["batch_size"]))
        for r, _m, stamp in todo:
            v = got.get(str(r.path), math.nan)
            scores[r.path] = v
            if math.isnan(v):
                problems.report(f"{r.name}: image unreadable; left out of CLIP score")
            if use_cache and not math.isnan(v):
                cache.put(f"{tag}|{r.path.resolve()}", stamp, v)
    return scores


def _vbench_values(runs, cfg: dict, cache: ResultCache, out: Path, problems) -> dict[Path, dict[str, float]]:
    from .vbench_quality import evaluate_videos

    v = cfg["vbench"]
    dims = list(v["dimensions"])
    videos = [r for r in runs if r.media == "video"]
    values: dict[Path, dict[str, float]] = {}
    todo: dict[str, tuple[Path, str]] = {}
    stamps: dict[str, tuple[Any, str]] = {}
    for r in videos:
        stamp = cache.stamp(r)
        key = f"vbench|{r.path.resolve()}"
        hit = cache.get(key, stamp) or {}
        values[r.path] = {d: float(hit[d]) for d in dims if d in hit}
        if all(d in hit for d in dims):
            continue
        media = r.media_path()
        if media is None:
            problems.report(f"{r.name}: no video file; left out of VBench")
            continue
        todo[str(r.path)] = (media, r.prompt)
        stamps[str(r.path)] = (r, stamp)
    if todo:
        log.info("VBench: %d video(s), dimensions %s", len(todo), ", ".join(dims))
        got = evaluate_videos(todo, dims, out / "vbench", v.get("python"), v.get("cache_dir"), v.get("device") or "auto",
                              v.get("timeout_s"))
        for key, (r, stamp) in stamps.items():
            res = got.get(key, {})
            lost = [d for d in dims if d not in res]
            if lost:
                problems.report(f"{r.name}: VBench gave no {', '.join(lost)} (unreadable video?)")
            values[r.path].update(res)
            old = cache.get(f"vbench|{r.path.resolve()}", stamp) or {}
            cache.put(f"vbench|{r.path.resolve()}", stamp, {**old, **res})
    return values


def run_eval(cfg: dict) -> EvalResult:
    """The whole stage on a validated config (see :func:`validate`). Raises UsageError."""
    from . import figures as F
    from . import tables as T
    from .clip_score import ClipConfigError, ClipWeightsMissing, locate_weights
    from .embedded_quality import add_frechet
    from .embedded_quality import score_runs as score_embedded
    from .metrics import run_rows, summarize
    from .runs import Problems, assign_labels, load_runs, pair_references
    from .vbench_quality import QUALITY_DIMENSIONS, VBenchUnavailable, column, preflight, quality_score

    problems = Problems()
    runs = load_runs(cfg["runs"], problems)
    if not runs:
        raise UsageError(f"no run folders (with stats.json) found under runs={cfg['runs']}")
    flt = cfg.get("filter") or {}
    found_models = sorted({r.model for r in runs})
    for m in flt.get("models") or []:
        if str(m) not in found_models:
            raise UsageError(f"filter.models: no runs of model {str(m)!r}; found: {', '.join(found_models)}")
    runs = _filter_runs(runs, flt)
    assign_labels(runs, problems)
    found_methods = sorted({r.method for r in runs})
    for m in flt.get("methods") or []:
        if str(m) not in found_methods:
            raise UsageError(f"filter.methods: no runs labelled {str(m)!r}; found: {', '.join(found_methods)}")
    found_cores = sorted({r.num_cores for r in runs if not r.is_sequential})
    for k in flt.get("num_cores") or []:
        if k not in found_cores:
            raise UsageError(f"filter.num_cores: no runs with {k} cores; found: {', '.join(map(str, found_cores)) or 'none'}")
    refs = pair_references(runs, problems)
    shown = [r for r in runs if _shown(r, flt)]
    needed = {r.path: r for r in shown}
    for r in shown:  # references of shown runs are needed for their numbers
        if r.path in refs:
            needed.setdefault(refs[r.path].path, refs[r.path])
    runs_needed = list(needed.values())

    # Everything that can fail on weights is checked before anything is written.
    clip_on = bool(cfg["clip"].get("enabled")) and any(r.media == "image" for r in runs_needed)
    vb_on = bool(cfg["vbench"].get("enabled")) and any(r.media == "video" for r in runs_needed)
    if clip_on:
        try:
            locate_weights(cfg["clip"]["model"], cfg["clip"].get("pretrained"), cfg["clip"].get("cache_dir"))
        except (ClipWeightsMissing, ClipConfigError) as e:
            raise UsageError(str(e)) from None
    if vb_on:
        try:
            info = preflight(cfg["vbench"].get("python"), list(cfg["vbench"]["dimensions"]), cfg["vbench"].get("cache_dir"))
            log.info("VBench %s at %s (weights in %s)", info.get("vbench"), info.get("python"), info.get("cache_dir"))
        except VBenchUnavailable as e:
            raise UsageError(str(e)) from None

    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "eval.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("eval").addHandler(handler)
    try:
        for line in problems:  # the problems found so far, into the log file too
            handler.emit(logging.LogRecord("eval", logging.WARNING, __file__, 0, line, None, None))
        cache = ResultCache(out / "cache" / "results.json" if cfg.get("cache", True) else None)

        df = run_rows(runs_needed, refs, problems)
        quality_cols: list[str] = []
        if clip_on:
            scores = _clip_scores(runs_needed, cfg, cache, problems)
            df["clip_score"] = [scores.get(Path(p), math.nan) for p in df["run"]]
            quality_cols.append("clip_score")
        if vb_on:
            dims = list(cfg["vbench"]["dimensions"])
            try:
                values = _vbench_values(runs_needed, cfg, cache, out, problems)
            except VBenchUnavailable as e:
                problems.report(f"VBench failed, quality left out: {e}")
                values = {}
            for d in dims:
                df[column(d)] = [values.get(Path(p), {}).get(d, math.nan) for p in df["run"]]
            partial = bool(cfg["vbench"].get("allow_partial"))
            df["vbench_quality"] = [
                quality_score({d: values.get(Path(p), {}).get(d, math.nan) for d in QUALITY_DIMENSIONS}, partial)
                if m == "video" else math.nan
                for p, m in zip(df["run"], df["media"])
            ]
            quality_cols += [column(d) for d in dims]
        cache.save()
        emb = score_embedded(runs_needed, problems)  # model=digits / moving-digits: the digit classifier
        for c in emb.columns:
            df[c] = [emb.values.get(Path(p), {}).get(c, math.nan) for p in df["run"]]
        quality_cols += emb.columns

        summary = summarize(df, quality_cols)
        summary = add_frechet(summary, df, emb)
        if vb_on and not summary.empty:
            partial = bool(cfg["vbench"].get("allow_partial"))
            summary["vbench_quality"] = [
                quality_score({d: row.get(column(d), math.nan) for d in QUALITY_DIMENSIONS}, partial)
                if row["media"] == "video" else math.nan
                for _, row in summary.iterrows()
            ]
        if not summary.empty:
            shown_keys = {(r.model, r.method, r.num_cores, r.num_steps) for r in shown}
            summary = summary[[
                (m, me, int(k), int(n)) in shown_keys
                for m, me, k, n in zip(summary["model"], summary["method"], summary["num_cores"], summary["num_steps"])
            ]].reset_index(drop=True)
        for _, row in summary.iterrows():
            if "," in str(row.get("hardware", "")):
                problems.report(
                    f"{row['model']} / {row['method']} / K={row['num_cores']} / N={row['num_steps']}: runs on different "
                    f"hardware ({row['hardware']}) share this cell; its times average over them"
                )
        files: list[Path] = []
        df.to_csv(out / "runs.csv", index=False)
        summary.to_csv(out / "summary.csv", index=False)
        files += [out / "runs.csv", out / "summary.csv"]
        if not summary.empty:
            (out / "summary.md").write_text(summary.to_markdown(index=False) + "\n", encoding="utf-8")
            files.append(out / "summary.md")

        steps = T.choose_steps(summary, flt.get("num_steps"), problems) if not summary.empty else {}
        tables = {}
        if not summary.empty:
            tables = T.build_tables(summary, cfg["tables"], steps, cfg["time"], cfg.get("decimals") or {},
                                    (cfg.get("table4") or {}).get("algorithms"))
            for t in tables.values():
                files += T.write_table(t, out, cfg["formats"])
        if "figure4" in cfg["figures"] and not summary.empty:
            files += F.figure4(summary, steps, out, cfg["figure_formats"])
        if "figure5" in cfg["figures"]:
            conv = cfg["convergence"]
            data = F.convergence_data([r for r in shown if not r.is_sequential], refs, steps, conv["distance"],
                                      conv["reference"], problems)
            if not data.empty:
                data.to_csv(out / "figure5_data.csv", index=False)
                files.append(out / "figure5_data.csv")
            files += F.figure5(data, conv["distance"], conv["reference"], out, cfg["figure_formats"])
        (out / "problems.txt").write_text("".join(f"{p}\n" for p in problems), encoding="utf-8")
        files.append(out / "problems.txt")
        log.info("%d run(s), %d cell(s), %d problem(s); wrote %d file(s) to %s",
                 len(runs_needed), len(summary), len(problems), len(files), out)
        return EvalResult(runs=df, summary=summary, tables=tables, files=files, problems=list(problems))
    finally:
        logging.getLogger("eval").removeHandler(handler)
        handler.close()


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (pytest swaps it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


USAGE = """usage: python -m eval runs=[FOLDER,...] [out=eval_out] [key=value ...] [FOLDER ...]

Reads run folders (docs/run_folders.md) and writes the paper's tables (md/csv/tex), figures
(png/pdf), runs.csv, summary.csv and problems.txt to `out`. Keys (configs/eval.yaml):
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        sys.stdout.write(USAGE + "\n" + (CONFIG_DIR / f"{CONFIG_NAME}.yaml").read_text(encoding="utf-8"))
        return 0
    logger = logging.getLogger("eval")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        h = _Stderr()
        h.setFormatter(logging.Formatter("[eval] %(levelname)s %(message)s"))
        logger.addHandler(h)
        logger.propagate = False
    try:
        cfg = validate(compose_config(argv))
        logger.setLevel(cfg["log_level"])
        run_eval(cfg)
    except UsageError as e:
        sys.stderr.write(f"eval: {e}\n")
        return 2
    return 0
