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
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("eval")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_NAME = "eval"
TABLE_NAMES = ("table1", "table2", "table3", "table4")


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
    unknown = _unknown_keys(data, _defaults())
    if unknown:
        raise UsageError(f"unknown key {unknown!r}: see python -m eval --help for the keys of configs/eval.yaml")
    runs = data.get("runs")
    if runs is None:
        runs = []
    if isinstance(runs, str):
        runs = [runs]
    data["runs"] = [str(r) for r in runs] + extra_runs
    return data


def _defaults() -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{CONFIG_NAME}.yaml"), resolve=False)


#: maps whose keys are names, not settings (checked by validate)
_OPEN_MAPS = ("decimals",)


def _unknown_keys(data: Any, defaults: Any, prefix: str = "") -> str | None:
    """The first key of ``data`` that configs/eval.yaml does not have (``+foo=1`` adds any key)."""
    if not isinstance(data, dict) or not isinstance(defaults, dict):
        return None
    for k, v in data.items():
        name = f"{prefix}{k}"
        if k not in defaults:
            return name
        if name not in _OPEN_MAPS:
            bad = _unknown_keys(v, defaults[k], f"{name}.")
            if bad:
                return bad
    return None


def _device_problem(key: str, value: Any) -> str | None:
    """``auto`` or a device torch can name (cpu, cuda, cuda:1, mps, ...)."""
    if value in (None, "auto"):
        return None
    import torch

    try:
        torch.device(str(value))
    except (RuntimeError, ValueError):
        return f"{key}={value!r}: accepted: auto, cpu, cuda, cuda:N (a device torch can name)"
    return None


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
    """A probe file can be created and removed there (``os.access`` says yes to root even in /proc)."""
    from chords.paths import writable_problem

    if out.exists() and not out.is_dir():
        raise UsageError(f"out={out} exists and is not a folder; give a folder to write the tables and figures to")
    problem = writable_problem(out)
    if problem:
        state = "is not writable" if out.exists() else "cannot be created"
        raise UsageError(f"out={out} {state} ({problem}); give a folder you can write to")


def validate(cfg: dict) -> dict:
    """Check every value before anything runs; raises UsageError."""
    from .figures import FIGURE_FORMATS, FIGURES
    from .metrics import DISTANCES
    from .tables import FORMATS, TABLES

    if not cfg["runs"]:
        raise UsageError("runs=[] : give one or more run folders, output roots or Hydra sweep folders, e.g. "
                         "runs=[output_samples] (or python -m eval output_samples)")
    tag = cfg.get("tag")
    if tag is not None and (not isinstance(tag, str) or not tag.strip()):
        raise UsageError(f"tag={tag!r}: accepted: null or the non-empty tag a run or sweep was given (tag=NAME)")
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
    from .tables import LABELS

    for k, v in dec.items():
        if k not in LABELS:
            raise UsageError(f"decimals.{k}: unknown column; accepted: {', '.join(k for k in LABELS if k != 'n')}")
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 10:
            raise UsageError(f"decimals.{k}={v!r}: accepted: an integer 0..10")
    t4 = cfg.get("table4") or {}
    known_algs = ("sequential", "chords", "paradigms", "srds")
    algs = t4.get("algorithms")
    algs = [algs] if isinstance(algs, str) else list(algs or [])
    for a in algs:
        if str(a).lower() not in known_algs:
            raise UsageError(f"table4.algorithms: unknown {str(a)!r}; accepted: {', '.join(known_algs)}")
    if not isinstance(cfg.get("cache", True), bool):
        raise UsageError(f"cache={cfg.get('cache')!r}: accepted: true, false")
    for key in ("clip", "vbench"):
        for flag in ("enabled", "allow_partial"):
            v = (cfg.get(key) or {}).get(flag, False)
            if not isinstance(v, bool):
                raise UsageError(f"{key}.{flag}={v!r}: accepted: true, false")
        problem = _device_problem(f"{key}.device", (cfg.get(key) or {}).get("device"))
        if problem:
            raise UsageError(problem)
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
    _validate_stop(cfg)
    _validate_ci(cfg)
    vb = cfg.get("vbench") or {}
    if vb.get("mode", "standard") not in ("standard", "custom"):
        raise UsageError(f"vbench.mode={vb.get('mode')!r}: accepted: standard, custom")
    vb.setdefault("mode", "standard")
    fi = vb.get("full_info")
    if fi is not None and not Path(str(fi)).is_file():
        raise UsageError(f"vbench.full_info={fi!r} does not exist: give VBench's VBench_full_info.json or null (found in the VBench environment)")
    g = cfg.setdefault("grids", {})
    for key in ("max_prompts", "frames"):
        v = g.get(key, 4)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UsageError(f"grids.{key}={v!r}: accepted: an integer >= 1")
    level = str(cfg.get("log_level", "INFO")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise UsageError(f"log_level={cfg.get('log_level')!r}: accepted: DEBUG, INFO, WARNING, ERROR")
    cfg["log_level"] = level
    cfg["out"] = str(cfg.get("out") or "")
    if not cfg["out"]:
        raise UsageError("out= is empty; give the folder to write tables and figures to, e.g. out=eval_out")
    _check_writable(Path(cfg["out"]))
    return cfg


def _validate_stop(cfg: dict) -> None:
    """``stop``: the what-if stop rules (eval/whatif.py); parsed into ``stop["rules"]``."""
    from .whatif import parse_rule

    stop = cfg.setdefault("stop", {})
    rules = {}
    for name in ("default", *TABLE_NAMES):
        text = stop.get(name, stop.get("default", "core_index=1"))
        try:
            rules[name] = parse_rule(text)
        except ValueError as e:
            raise UsageError(f"stop.{name}: {e}") from None
    stop["rules"] = rules
    algs = stop.get("algorithms") or []
    algs = [algs] if isinstance(algs, str) else list(algs)
    known = ("chords", "paradigms", "srds")
    for a in algs:
        if str(a).lower() not in known:
            raise UsageError(f"stop.algorithms: unknown {str(a)!r}; accepted: {', '.join(known)}")
    stop["algorithms"] = [str(a).lower() for a in algs]
    idx = stop.get("indices", "all")
    if idx != "all" and not (isinstance(idx, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in idx)):
        raise UsageError(f"stop.indices={idx!r}: accepted: all or a list of integers >= 0")
    stop["indices"] = idx
    th = stop.get("thresholds") or []
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0 for t in th):
        raise UsageError(f"stop.thresholds={th!r}: accepted: a list of numbers >= 0")
    stop["thresholds"] = [float(t) for t in th]
    bud = stop.get("budgets") or []
    for b in bud:
        try:
            parse_rule(f"rmse={b}")
        except ValueError:
            raise UsageError(f"stop.budgets={bud!r}: accepted: a list of numbers >= 0 or auto") from None
    stop["budgets"] = list(bud)


def _validate_ci(cfg: dict) -> None:
    ci = cfg.setdefault("ci", {})
    ci.setdefault("level", 0.95)
    ci.setdefault("resamples", 2000)
    ci.setdefault("seed", 0)
    ci.setdefault("show", True)
    lv = ci["level"]
    if isinstance(lv, bool) or not isinstance(lv, (int, float)) or not 0 < lv < 1:
        raise UsageError(f"ci.level={lv!r}: accepted: a number between 0 and 1 (e.g. 0.95)")
    for key in ("resamples", "seed"):
        v = ci[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "resamples" else 0):
            raise UsageError(f"ci.{key}={v!r}: accepted: an integer >= {1 if key == 'resamples' else 0}")
    if not isinstance(ci["show"], bool):
        raise UsageError(f"ci.show={ci['show']!r}: accepted: true, false")


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
    summaries: dict = field(default_factory=dict)  # per stop rule label: the cells under that rule
    whatif: Any = None  # whatif.csv: per cell and what-if stop rule


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


def clip_pretrained(clip_cfg: dict) -> bool:
    """Whether the CLIP weights are pretrained ones (``clip.pretrained`` names a tag or a file)."""
    return clip_cfg.get("pretrained") not in (None, "", "null", "none", "random")


def _clip_scores(runs, cfg: dict, cache: ResultCache, problems) -> dict[Path, float]:
    from .clip_score import ClipScorer, score_files

    c = cfg["clip"]
    images = [r for r in runs if r.media == "image"]
    if not images:
        return {}
    tag = f"clip|{c['model']}|{c['pretrained']}"
    use_cache = clip_pretrained(c)
    scores: dict[Path, float] = {}
    todo = []
    for r in images:
        stamp = cache.stamp(r)
        hit = cache.get(_cache_key(tag, r), stamp) if use_cache else None
        if hit is not None:
            scores[r.key] = float(hit)
            continue
        media = r.media_path()
        if media is None:
            problems.report(_no_media(r, "image", "CLIP score"))
            continue
        todo.append((r, media, stamp))
    if todo:
        log.info("CLIP score: %d image(s) with %s / %s", len(todo), c["model"], c["pretrained"])
        scorer = ClipScorer(c["model"], c["pretrained"], c.get("cache_dir"), c.get("device"), c.get("precision", "fp32"))
        got = score_files(scorer, [(str(r.key), m, r.prompt) for r, m, _ in todo], batch_size=int(c["batch_size"]))
        for r, _m, stamp in todo:
            v = got.get(str(r.key), math.nan)
            scores[r.key] = v
            if math.isnan(v):
                problems.report(f"{r.name}: image unreadable; left out of CLIP score")
            if use_cache and not math.isnan(v):
                cache.put(_cache_key(tag, r), stamp, v)
    return scores


def _cache_key(tag: str, run) -> str:
    """A quality-cache key: the folder, plus the hit's media file for a what-if view."""
    key = f"{tag}|{run.path.resolve()}"
    return key if run.whatif is None else f"{key}|{run.hits[run.output_index].media}"


def _no_media(run, kind: str, what: str) -> str:
    if run.whatif is not None:
        return (f"{run.name}: hit {run.output_index} (stop rule {run.whatif}) has no saved {kind}; left out of {what} "
                f"(run with algo.full_return=true to keep every hit's media)")
    return f"{run.name}: no {kind} file; left out of {what}"


def _vbench_values(runs, cfg: dict, cache: ResultCache, out: Path, problems,
                   by_dimension: dict[str, set[str]] | None = None) -> dict[Path, dict[str, float]]:
    """Per-video VBench values, keyed by ``run.key``.

    ``by_dimension`` (standard mode): a video is scored on a dimension only when its prompt is one
    of that dimension's prompts in VBench_full_info.json (VBench's standard protocol); None
    (custom mode): every video on every dimension. Dimensions that need the same videos share one
    worker call.
    """
    from .vbench_quality import evaluate_videos, normalize_prompt

    v = cfg["vbench"]
    dims = list(v["dimensions"])
    videos = [r for r in runs if r.media == "video"]
    values: dict[Path, dict[str, float]] = {}
    todo: dict[str, dict[str, tuple[Path, str]]] = {d: {} for d in dims}
    stamps: dict[str, tuple[Any, str]] = {}
    outside = []
    for r in videos:
        mine = dims if by_dimension is None else [d for d in dims if normalize_prompt(r.prompt) in by_dimension.get(d, ())]
        if not mine:
            outside.append(r)
            continue
        stamp = cache.stamp(r)
        hit = cache.get(_cache_key("vbench-v2", r), stamp) or {}  # v2: per-video values on VBench's aggregate scale
        values[r.key] = {d: float(hit[d]) for d in mine if d in hit}
        missing = [d for d in mine if d not in hit]
        if not missing:
            continue
        media = r.media_path()
        if media is None:
            problems.report(_no_media(r, "video", "VBench"))
            continue
        for d in missing:
            todo[d][str(r.key)] = (media, r.prompt)
        stamps[str(r.key)] = (r, stamp)
    if outside:
        problems.report(
            f"VBench standard mode: {len(outside)} video(s) have prompts that are not in VBench_full_info.json for any of "
            f"{', '.join(dims)} (e.g. {outside[0].prompt[:50]!r}); they get no VBench score (vbench.mode=custom scores "
            f"every video on every dimension)"
        )
    groups: dict[tuple[str, ...], list[str]] = {}
    for d in dims:
        if todo[d]:
            groups.setdefault(tuple(sorted(todo[d])), []).append(d)
    got_all: dict[str, dict[str, float]] = {}
    for i, (keys, group_dims) in enumerate(groups.items()):
        log.info("VBench: %d video(s), dimensions %s", len(keys), ", ".join(group_dims))
        batch = todo[group_dims[0]]
        work = out / "vbench" / (f"set{i}" if len(groups) > 1 else "all")
        got = evaluate_videos(batch, group_dims, work, v.get("python"), v.get("cache_dir"), v.get("device") or "auto",
                              v.get("timeout_s"))
        for key in keys:
            res = {d: x for d, x in got.get(key, {}).items() if d in group_dims}
            lost = [d for d in group_dims if d not in res]
            if lost:
                problems.report(f"{stamps[key][0].name}: VBench gave no {', '.join(lost)} (unreadable video?)")
            got_all.setdefault(key, {}).update(res)
    for key, res in got_all.items():
        r, stamp = stamps[key]
        values[r.key].update(res)
        old = cache.get(_cache_key("vbench-v2", r), stamp) or {}
        cache.put(_cache_key("vbench-v2", r), stamp, {**old, **res})
    return values


def run_eval(cfg: dict) -> EvalResult:
    """The whole stage on a validated config (see :func:`validate`). Raises UsageError."""
    from . import figures as F
    from . import tables as T
    from . import whatif as W
    from .clip_score import ClipConfigError, ClipWeightsMissing, locate_weights
    from .embedded_quality import add_frechet, report_small_frechet
    from .embedded_quality import score_runs as score_embedded
    from .metrics import paired_comparisons, run_rows, summarize
    from .runs import ManifestError, Problems, assign_labels, load_runs, pair_references
    from .vbench_quality import (QUALITY_DIMENSIONS, VBenchUnavailable, column, preflight, prompts_by_dimension,
                                 quality_score)

    problems = Problems()
    try:
        runs = load_runs(cfg["runs"], problems, cfg.get("tag"))
    except ManifestError as e:
        raise UsageError(str(e)) from None
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
    by_dimension = None
    if clip_on:
        try:
            locate_weights(cfg["clip"]["model"], cfg["clip"].get("pretrained"), cfg["clip"].get("cache_dir"))
        except (ClipWeightsMissing, ClipConfigError) as e:
            raise UsageError(str(e)) from None
    if vb_on:
        try:
            info = preflight(cfg["vbench"].get("python"), list(cfg["vbench"]["dimensions"]), cfg["vbench"].get("cache_dir"))
            log.info("VBench %s at %s (weights in %s)", info.get("vbench"), info.get("python"), info.get("cache_dir"))
            if cfg["vbench"]["mode"] == "standard":
                by_dimension = {d: set(ps) for d, ps in
                                prompts_by_dimension(cfg["vbench"].get("full_info") or info.get("full_info")).items()}
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

        # What-if stop rules (eval/whatif.py): runs that kept every hit are viewed as if each table's
        # rule had stopped them; every view's runs are scored once (quality of a hit: its own media).
        stop, ci = cfg["stop"], cfg["ci"]
        trs = W.traces(runs_needed, refs, stop["algorithms"], problems)
        budgets = W.auto_budgets(trs)
        rule_of = {name: stop["rules"][name] for name in ("default", *TABLE_NAMES)}
        views = {rule.label: W.view(runs_needed, rule, trs, budgets, problems) for rule in rule_of.values()}
        scored = {r.key: r for view in views.values() for r in view}
        runs_scored = list(scored.values())

        df = run_rows(runs_scored, refs, problems)
        quality_cols: list[str] = []
        if clip_on:
            scores = _clip_scores(runs_scored, cfg, cache, problems)
            df["clip_score"] = [scores.get(Path(p), math.nan) for p in df["run"]]
            quality_cols.append("clip_score")
        if vb_on:
            dims = list(cfg["vbench"]["dimensions"])
            try:
                values = _vbench_values(runs_scored, cfg, cache, out, problems, by_dimension)
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
            if by_dimension is not None:
                _report_samples_per_prompt(df, problems)
        cache.save()
        emb = score_embedded(runs_scored, problems)  # model=digits / moving-digits: the digit classifier, per chosen hit
        for c in emb.columns:
            df[c] = [emb.values.get(Path(p), {}).get(c, math.nan) for p in df["run"]]
        quality_cols += emb.columns

        shown_keys = {(r.model_label or r.model, r.method, r.num_cores, r.num_steps) for r in shown}

        # a hit chosen by several rules is one row of runs.csv; stop_rule lists the rules that chose it
        chose: dict[str, set[str]] = {}
        for view in views.values():
            for r in view:
                chose.setdefault(str(r.key), set()).add(r.whatif or "as_run")
        if not df.empty:
            df["stop_rule"] = [",".join(sorted(chose.get(k, {"as_run"}))) for k in df["run"]]

        def cell_summary(label: str):
            labels = {str(r.key): (r.whatif or "as_run") for r in views[label]}
            sub = df[df["run"].isin(set(labels))].copy() if not df.empty else df
            if not sub.empty:
                sub["stop_rule"] = sub["run"].map(labels)
            summ = summarize(sub, quality_cols, ci["level"], ci["resamples"], ci["seed"])
            summ = add_frechet(summ, sub, emb)
            if vb_on and not summ.empty:
                _vbench_cells(summ, sub, cfg, ci)
            if not summ.empty:
                summ = summ[[
                    (m, me, int(k), int(n)) in shown_keys
                    for m, me, k, n in zip(summ["model"], summ["method"], summ["num_cores"], summ["num_steps"])
                ]].reset_index(drop=True)
            return summ

        summaries = {label: cell_summary(label) for label in views}
        summary = summaries[rule_of["default"].label]
        report_small_frechet(summary, problems, T.FRECHET_MIN_N)
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
        default_rows = df[df["run"].isin({str(r.key) for r in views[rule_of["default"].label]})] if not df.empty else df
        comparisons = paired_comparisons(default_rows, quality_cols, ci["level"], ci["resamples"], ci["seed"])
        if not comparisons.empty:
            comparisons.to_csv(out / "comparisons.csv", index=False)
            files.append(out / "comparisons.csv")
        if not summary.empty:
            (out / "summary.md").write_text(
                T.summary_markdown(summary, quality_cols, cfg.get("decimals") or {}, ci["level"], comparisons),
                encoding="utf-8")
            files.append(out / "summary.md")
        if trs:
            listed = W.expand_rules(stop["indices"], stop["thresholds"], stop["budgets"],
                                    max(len(t.rounds) for t in trs.values()), list(rule_of.values()))
            per_run, per_cell = W.whatif_table(trs, refs, listed, budgets, ci["level"], ci["resamples"], ci["seed"])
            per_run.to_csv(out / "whatif_runs.csv", index=False)
            per_cell.to_csv(out / "whatif.csv", index=False)
            files += [out / "whatif_runs.csv", out / "whatif.csv"]
        else:
            per_cell = None

        steps = T.choose_steps(summary, flt.get("num_steps"), problems) if not summary.empty else {}
        tables = {}
        for name in cfg["tables"]:
            rule = rule_of[name]
            summ = summaries[rule.label]
            if summ.empty:
                continue
            built = T.build_tables(summ, [name], steps, cfg["time"], cfg.get("decimals") or {},
                                   (cfg.get("table4") or {}).get("algorithms"), ci["show"])
            for t in built.values():
                if (summ["stop_rule"] == rule.label).any():
                    cells = set(zip(summ["model"], summ["num_cores"].astype(int), summ["num_steps"].astype(int)))
                    used = {k: b for k, b in budgets.items() if k in cells} if rule.auto else None
                    t.caption += (f" Stop rule for {', '.join(A.upper() if len(A) <= 6 else A for A in stop['algorithms'])} "
                                  f"runs that kept every hit: {rule.describe(used)} (what-if, eval/whatif.py).")
                t.caption += f" Cells: mean [{100 * ci['level']:g}% CI] over prompts x seeds (n runs; {T.CI_NOTE})."
            tables.update(built)
        if clip_on and not clip_pretrained(cfg["clip"]):
            problems.report("CLIP scores use random (non-pretrained) CLIP weights (clip.pretrained is null): "
                            "they are not comparable to published CLIP scores; the tables say so")
            for t in tables.values():
                if any("clip_score" in str(c) for c in t.numeric.columns):
                    t.caption += " CLIP Score from random (non-pretrained) CLIP weights: not a quality measure."
        for t in tables.values():
            files += T.write_table(t, out, cfg["formats"])
        if vb_on and not summary.empty:
            dim_table = T.vbench_dimension_table(summaries[rule_of["table1"].label], steps, list(cfg["vbench"]["dimensions"]),
                                                 cfg.get("decimals") or {}, ci["show"])
            if dim_table is not None:
                files += T.write_table(dim_table, out, cfg["formats"])
        if "figure4" in cfg["figures"] and not summary.empty:
            files += F.figure4(summary, steps, out, cfg["figure_formats"])
        if "tradeoff" in cfg["figures"] and not summary.empty:
            files += F.tradeoff(summary, per_cell, steps, out, cfg["figure_formats"])
        if "wallclock" in cfg["figures"] and not summary.empty:
            files += F.wallclock(summary, steps, out, cfg["figure_formats"])
        if "figure5" in cfg["figures"]:
            conv = cfg["convergence"]
            data = F.convergence_data([r for r in shown if not r.is_sequential], refs, steps, conv["distance"],
                                      conv["reference"], problems)
            if not data.empty:
                data.to_csv(out / "figure5_data.csv", index=False)
                files.append(out / "figure5_data.csv")
            files += F.figure5(data, conv["distance"], conv["reference"], out, cfg["figure_formats"])
        if "grids" in cfg["figures"]:
            from .grids import grids

            files += grids(views[rule_of["default"].label], refs, steps, out, cfg["grids"], problems)
        (out / "problems.txt").write_text("".join(f"{p}\n" for p in problems), encoding="utf-8")
        files.append(out / "problems.txt")
        log.info("%d run(s), %d cell(s), %d problem(s); wrote %d file(s) to %s",
                 len(runs_needed), len(summary), len(problems), len(files), out)
        return EvalResult(runs=df, summary=summary, tables=tables, files=files, problems=list(problems),
                          summaries=summaries, whatif=per_cell)
    finally:
        logging.getLogger("eval").removeHandler(handler)
        handler.close()


def _report_samples_per_prompt(df, problems) -> None:
    """VBench's standard protocol samples every prompt 5 times; say where a cell has fewer."""
    vids = df[df["media"] == "video"]
    for key, g in vids.groupby(["model", "method", "num_cores", "num_steps"]):
        per_prompt = g.groupby("prompt")["seed"].nunique()
        if len(per_prompt) and int(per_prompt.min()) < 5:
            lo, hi = int(per_prompt.min()), int(per_prompt.max())
            problems.report(
                f"{key[0]} / {key[1]} / K={key[2]} / N={key[3]}: {lo if lo == hi else f'{lo} to {hi}'} "
                f"sample(s) per prompt; VBench's standard protocol uses 5 (sweep model.seed=0,1,2,3,4)"
            )


def _vbench_cells(summ, sub, cfg: dict, ci: dict) -> None:
    """The cells' Quality Score from their dimension means, with a bootstrap interval over runs."""
    from .vbench_quality import QUALITY_DIMENSIONS, column, quality_interval

    partial = bool(cfg["vbench"].get("allow_partial"))
    keys = ["model", "media", "method", "num_cores", "num_steps"]
    groups = {k: g for k, g in sub.groupby(keys, sort=False)}
    vals, los, his = [], [], []
    for _, row in summ.iterrows():
        g = groups.get(tuple(row[k] for k in keys))
        if row["media"] != "video" or g is None:
            vals.append(math.nan), los.append(math.nan), his.append(math.nan)
            continue
        cols = {d: g[column(d)].to_numpy(dtype=float) if column(d) in g else None for d in QUALITY_DIMENSIONS}
        iv = quality_interval(cols, partial, ci["level"], ci["resamples"], ci["seed"])
        vals.append(iv.value), los.append(iv.lo), his.append(iv.hi)
    summ["vbench_quality"], summ["vbench_quality_lo"], summ["vbench_quality_hi"] = vals, los, his


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
