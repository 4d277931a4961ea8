"""VBench Quality Score of video runs.

VBench 0.1.5 pins transformers 4.33 and numpy < 2, so it lives in its own environment
(``scripts/setup_vbench_env.sh``); eval runs ``eval/vbench_worker.py`` with that environment's
python (``vbench.python``, or the ``VBENCH_PYTHON`` environment variable) and exchanges JSON
files with it. The worker runs VBench's custom-input mode on the runs' videos (symlinked into
a work folder) for the seven quality dimensions and returns per-video results.

Quality Score (VBench's normalisation, from its repository's ``cal_final_score``; the wheel
does not ship it): each dimension is normalised ``(x - min) / (max - min)``, weighted, summed
and divided by the sum of the weights; tables show it as a percentage.

Per-video values are read on VBench's aggregate scale: VBench 0.1.5 writes imaging quality per
video as the raw MUSIQ score on 0-100 and divides only its aggregate by 100
(``imaging_quality.py``), so :func:`per_video_value` divides those per-video values by 100
(:data:`PER_VIDEO_SCALE`); every other dimension is already on 0-1. Without this a realistic
video scores a Quality Score near 10 instead of near 0.8.

A cell's dimension value is the mean of its videos' per-video values (VBench's own aggregate
weights some dimensions by frame count, which is the same when a model's videos have equal
length, as they do in one run set); the cell's Quality Score is computed from those means.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

log = logging.getLogger("eval")

# name: (min, max, weight) — VBench's normalisation constants for the Quality Score.
QUALITY_DIMENSIONS: dict[str, tuple[float, float, float]] = {
    "subject_consistency": (0.1462, 1.0, 1.0),
    "background_consistency": (0.2615, 1.0, 1.0),
    "temporal_flickering": (0.6293, 1.0, 1.0),
    "motion_smoothness": (0.706, 0.9975, 1.0),
    "dynamic_degree": (0.0, 1.0, 0.5),
    "aesthetic_quality": (0.0, 1.0, 1.0),
    "imaging_quality": (0.0, 1.0, 1.0),
}

#: Divisors that bring VBench's per-video values to the scale of its aggregates (and of the
#: normalisation constants above): imaging quality per video is MUSIQ on 0-100.
PER_VIDEO_SCALE: dict[str, float] = {"imaging_quality": 100.0}

WORKER = Path(__file__).with_name("vbench_worker.py")


def per_video_value(dimension: str, value: float) -> float:
    """A per-video value as VBench writes it, on the scale of VBench's aggregate for that dimension."""
    return float(value) / PER_VIDEO_SCALE.get(dimension, 1.0)


class VBenchUnavailable(Exception):
    """VBench cannot run (no environment, missing weights); the message is one line."""


def normalized(dimension: str, value: float) -> float:
    lo, hi, _ = QUALITY_DIMENSIONS[dimension]
    return (float(value) - lo) / (hi - lo)


def quality_score(values: Mapping[str, float], allow_partial: bool = False) -> float:
    """VBench Quality Score in [0, 1] from raw dimension values.

    NaN when a quality dimension is missing (or NaN), unless ``allow_partial``: then the
    weighted mean runs over the dimensions present (NaN if none).
    """
    num = den = 0.0
    for dim, (_lo, _hi, w) in QUALITY_DIMENSIONS.items():
        v = values.get(dim)
        if v is None or not isinstance(v, (int, float)) or math.isnan(float(v)):
            if allow_partial:
                continue
            return math.nan
        num += w * normalized(dim, v)
        den += w
    return num / den if den > 0 else math.nan


def column(dimension: str) -> str:
    return f"vbench_{dimension}"


def quality_interval(columns: Mapping[str, Sequence[float] | None], allow_partial: bool = False, level: float = 0.95,
                     resamples: int = 2000, seed: int = 0):
    """A cell's Quality Score from its dimension means, with a percentile bootstrap over its runs
    (eval/stats.py): runs are resampled, each dimension's mean over the resample (NaN-aware: in
    standard mode a video has only its prompt's dimensions) renormalised and weighted."""
    import numpy as np

    from .stats import NAN_INTERVAL, bootstrap

    present = {d: np.asarray(c, dtype=np.float64) for d, c in columns.items() if c is not None and d in QUALITY_DIMENSIONS}
    if not present:
        return NAN_INTERVAL
    names = list(present)

    def stat(*cols):
        num = 0.0
        den = 0.0
        with np.errstate(invalid="ignore"):
            for d, c in zip(names, cols):
                lo, hi, w = QUALITY_DIMENSIONS[d]
                m = np.nanmean(np.where(np.isfinite(c), c, np.nan), axis=-1) if c.shape[-1] else np.full(c.shape[:-1], np.nan)
                ok = np.isfinite(m)
                if not allow_partial:
                    num = num + w * (m - lo) / (hi - lo)  # NaN propagates: a missing dimension, no score
                    den = den + w
                else:
                    num = num + np.where(ok, w * (m - lo) / (hi - lo), 0.0)
                    den = den + np.where(ok, w, 0.0)
        if not allow_partial and len(names) < len(QUALITY_DIMENSIONS):
            return np.full(np.shape(num), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(np.asarray(den) > 0, num / np.where(np.asarray(den) > 0, den, 1), np.nan)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN resample: NaN
        return bootstrap([present[d] for d in names], stat, level, resamples, seed)


def normalize_prompt(prompt: str) -> str:
    """Prompts compared as VBench lists them: whitespace runs collapsed to one space."""
    return " ".join(str(prompt).split())


def prompts_by_dimension(full_info: str | os.PathLike | None) -> dict[str, list[str]]:
    """``{dimension: prompts}`` from VBench's VBench_full_info.json, each list in order of first
    appearance, whitespace collapsed (VBench's standard protocol: each dimension is scored only on
    its own prompts). Raises VBenchUnavailable (one line). scripts/vbench_prompts.py uses it too."""
    if not full_info:
        raise VBenchUnavailable("VBench_full_info.json not found in the VBench environment: set vbench.full_info=PATH "
                                "(or vbench.mode=custom to score every video on every dimension)")
    try:
        data = json.loads(Path(full_info).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VBenchUnavailable(f"{str(full_info)!r} is not readable JSON ({type(e).__name__})") from None
    if not isinstance(data, list):
        raise VBenchUnavailable(f"{str(full_info)!r} is not VBench's full-info list")
    out: dict[str, dict[str, None]] = {}
    for entry in data:
        if isinstance(entry, dict) and isinstance(entry.get("prompt_en"), str):
            for dim in entry.get("dimension") or []:
                out.setdefault(str(dim), {})[normalize_prompt(entry["prompt_en"])] = None
    return {d: list(ps) for d, ps in out.items()}


def resolve_python(python: str | None) -> str:
    """The vbench environment's python, or VBenchUnavailable with the one-line fix."""
    python = python or os.environ.get("VBENCH_PYTHON")
    hint = "create it with `bash scripts/setup_vbench_env.sh .venv-vbench` and pass vbench.python=.venv-vbench/bin/python (or export VBENCH_PYTHON)"
    if not python:
        raise VBenchUnavailable(f"vbench.python is not set; {hint}")
    p = shutil.which(python) if os.sep not in python else python
    if not p or not os.path.isfile(p) or not os.access(p, os.X_OK):
        raise VBenchUnavailable(f"vbench.python={python!r} is not an executable python; {hint}")
    return p


def _env(cache_dir: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the worker must not see this environment's packages
    if cache_dir:
        env["VBENCH_CACHE_DIR"] = os.path.expanduser(str(cache_dir))
    return env


def _call(python: str, args: Sequence[str], cache_dir: str | None, timeout: float | None) -> dict:
    try:
        proc = subprocess.run(
            [python, str(WORKER), *args],
            capture_output=True,
            text=True,
            env=_env(cache_dir),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise VBenchUnavailable(f"the VBench worker ran past vbench.timeout_s={timeout}") from None
    except OSError as e:
        raise VBenchUnavailable(f"cannot start the VBench worker with {python} ({e})") from None
    # The worker's last stdout line is its JSON answer; everything else is VBench's chatter.
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    answer = None
    if lines:
        try:
            answer = json.loads(lines[-1])
        except json.JSONDecodeError:
            answer = None
    if answer is None:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise VBenchUnavailable(f"the VBench worker ({python}) failed with exit status {proc.returncode}: {tail[:400]}")
    if not answer.get("ok"):
        raise VBenchUnavailable(str(answer.get("error", "the VBench worker failed")))
    return answer


def preflight(python: str | None, dimensions: Sequence[str], cache_dir: str | None = None, timeout: float | None = 600) -> dict:
    """Check that the environment imports vbench and that every dimension's weights are cached."""
    unknown = [d for d in dimensions if d not in QUALITY_DIMENSIONS]
    if unknown:
        raise VBenchUnavailable(
            f"vbench.dimensions: unknown {unknown[0]!r}; accepted: {', '.join(QUALITY_DIMENSIONS)}"
        )
    py = resolve_python(python)
    return _call(py, ["check", "--dimensions", ",".join(dimensions)], cache_dir, timeout)


def evaluate_videos(
    videos: Mapping[str, tuple[Path, str]],
    dimensions: Sequence[str],
    workdir: Path,
    python: str | None,
    cache_dir: str | None = None,
    device: str = "auto",
    timeout: float | None = None,
) -> dict[str, dict[str, float]]:
    """Run VBench on ``{key: (video_path, prompt)}``; returns ``{key: {dimension: value}}``.

    Videos VBench could not read are absent from the result (or lack a dimension).
    """
    py = resolve_python(python)
    workdir = Path(workdir)
    vids = workdir / "videos"
    if vids.exists():
        shutil.rmtree(vids)
    vids.mkdir(parents=True)
    names: dict[str, str] = {}
    prompts: dict[str, str] = {}
    for i, (key, (path, prompt)) in enumerate(sorted(videos.items())):
        name = f"{i:06d}{Path(path).suffix.lower() or '.mp4'}"
        os.symlink(os.path.abspath(path), vids / name)
        names[name] = key
        prompts[name] = prompt
    job = {
        "videos_dir": str(vids.resolve()),
        "prompts": prompts,
        "dimensions": list(dimensions),
        "output_dir": str((workdir / "results").resolve()),
        "device": device,
    }
    job_path = workdir / "job.json"
    job_path.write_text(json.dumps(job, indent=1), encoding="utf-8")
    answer = _call(py, ["run", str(job_path)], cache_dir, timeout)
    out: dict[str, dict[str, float]] = {}
    for name, dims in answer.get("per_video", {}).items():
        if name in names:
            out[names[name]] = {d: per_video_value(d, v) for d, v in dims.items() if isinstance(v, (int, float))}
    return out

