"""Find run folders, load and validate their ``stats.json``, label them and pair them.

Everything here follows ``docs/run_folders.md`` (the runner/eval contract) and nothing else:
eval never imports the runner, an adapter or a backend.

* :func:`find_run_dirs` walks the given roots (single run folders, output roots, Hydra multirun
  folders) for ``stats.json``; folders with a ``.tmp-`` name, and folders that hold run files
  but no ``stats.json``, are partial and reported.
* :func:`load_run` validates one folder and returns a :class:`Run` (or raises
  :class:`RunError` with a one-line reason).
* :func:`assign_labels` gives every run its method label ("Sequential", "CHORDS",
  "CHORDS (uniform)", "ParaDIGMS", "SRDS", or ``config.experiment_label`` when the run sets it)
  and disambiguates settings that would otherwise share a label.
* :func:`pair_references` finds each run's sequential reference: the same model settings (the
  whole ``identity.model`` of stats.json: model, seed, N, sizes, dtype, scheduler, step
  arithmetic, ...), the same ``prompt`` and ``latent_shape``.
* Runs whose settings differ never share a table cell: model settings that differ between runs
  of one model name go into the row's model label (``flux [guidance_scale=5]``), algorithm,
  hardware and other settings into its method label (``CHORDS (hw.name=cpu)``).

Problems (partial or corrupt folders, runs without a reference, ambiguous references) go to a
:class:`Problems` collector: one ``logging`` warning line each, and the run is left out of the
cells it would have spoiled.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger("eval")

STATS = "stats.json"
LATENTS = "latents.safetensors"
# Files whose presence without stats.json marks a partial run folder.
_RUN_FILES = {LATENTS, "image.png", "video.mp4"}

BASE_LABELS = {"sequential": "Sequential", "chords": "CHORDS", "paradigms": "ParaDIGMS", "srds": "SRDS"}
METHOD_ORDER = ["Sequential", "ParaDIGMS", "SRDS", "CHORDS"]

# The paper's initialization sequences for N = 50 (Section 4.1).
PAPER_INIT_T = {
    50: {
        (0, 8, 16, 32),
        (0, 3, 6, 12, 24, 36),
        (0, 2, 4, 8, 16, 24, 32, 40),
    }
}


class RunError(Exception):
    """A run folder that cannot be used; the message is one line."""


class Problems:
    """Collects one-line problem reports and logs each as a warning (deduplicated)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._seen: set[str] = set()

    def report(self, line: str) -> None:
        if line in self._seen:
            return
        self._seen.add(line)
        self.lines.append(line)
        log.warning("%s", line)

    def __iter__(self):
        return iter(self.lines)

    def __len__(self) -> int:
        return len(self.lines)


@dataclass(frozen=True)
class HitInfo:
    index: int
    core: int
    round: int
    wall_s: float
    latent: str
    media: str | None
    #: velocity evaluations made when this hit arrived (stats.json ``hits[i].nfe``; None in
    #: folders written before it was recorded)
    nfe: int | None = None


@dataclass
class Run:
    """One validated run folder. ``stats`` is the raw stats.json."""

    path: Path
    stats: dict[str, Any]
    prompt: str
    seed: int
    model: str
    media: str
    algorithm: str
    algo_tag: str
    algo: dict[str, Any]
    num_cores: int
    num_steps: int
    hits: list[HitInfo]
    rounds: int
    nfe: int
    output_index: int
    output_round: int
    timing: dict[str, float]
    latent_shape: tuple[int, ...] | None
    media_files: list[str]
    hardware: str
    init_t: tuple[int, ...] | None
    experiment_label: str | None
    #: what the run is (docs/run_folders.md "identity"); format-1 folders get one rebuilt from
    #: their stored config (``legacy``)
    identity: dict[str, Any] = field(default_factory=dict)
    legacy: bool = False
    #: one line per malformed optional field (reported by load_runs, the run is still used)
    warnings: list[str] = field(default_factory=list)
    #: the tensor of latents.safetensors this run's numbers use: "output", or a hit's tensor when
    #: a what-if stop rule chose that hit (eval/whatif.py)
    output_latent: str = "output"
    #: the what-if stop rule that chose ``output_index`` (None: the run's own output)
    whatif: str | None = None
    #: that hit's latent RMSE against the reference, when already computed (eval/whatif.py)
    whatif_rmse: float | None = None
    # Filled by assign_labels().
    base_label: str = ""
    facets: dict[str, str] = field(default_factory=dict)
    method: str = ""
    model_label: str = ""

    # ----------------------------------------------------------------- derived
    @property
    def name(self) -> str:
        """A short readable id: the last three path parts (model/algo_tag/prompt-key)."""
        return "/".join(self.path.parts[-3:])

    @property
    def key(self) -> Path:
        """What identifies this view of the run in runs.csv and the quality caches: the folder,
        with ``#hitNN`` appended when a what-if stop rule chose hit NN instead of the output."""
        return self.path if self.whatif is None else Path(f"{self.path}#hit{self.output_index:02d}")

    @property
    def is_sequential(self) -> bool:
        return self.algorithm == "sequential"

    @property
    def model_settings(self) -> dict[str, Any]:
        """The whole model group the run sampled with (seed and N included)."""
        m = self.identity.get("model")
        return m if isinstance(m, dict) else {"model_name": self.model, "seed": self.seed, "num_inference_steps": self.num_steps}

    @property
    def pair_key(self) -> tuple:
        """Runs with the same key are the same sample up to the algorithm: same model settings,
        prompt and N. A run's reference is the sequential run with its key."""
        return (self.model, _digest(self.model_settings), self.prompt, self.seed, self.num_steps)

    @property
    def output_core(self) -> int:
        return self.hits[self.output_index].core

    @property
    def init_label(self) -> str:
        return "-".join(str(i) for i in self.init_t) if self.init_t else ""

    @property
    def init_kind(self) -> str | None:
        """``"ours"`` (the paper's sequence: a preset, or chosen by ``init_t: preset|auto``),
        ``"uniform"`` (equal gaps, K >= 3), ``"custom"``, or None (no init sequence)."""
        kind = init_kind(self.init_t, self.num_steps)
        if kind == "custom":
            algo_cfg = (self.stats.get("config") or {}).get("algo") if isinstance(self.stats.get("config"), dict) else None
            spec = algo_cfg.get("init_t") if isinstance(algo_cfg, dict) else None
            if isinstance(spec, str) and spec.strip().lower() in ("preset", "auto"):
                return "ours"
        return kind

    @property
    def latents_path(self) -> Path:
        return self.path / LATENTS

    def media_path(self) -> Path | None:
        """The chosen output's media file (image.png / video.mp4), or None if absent; for a
        what-if choice the chosen hit's file (saved with ``algo.full_return=true``) or None."""
        if self.whatif is not None:
            name = self.hits[self.output_index].media
            p = self.path / name if name else None
            return p if p is not None and p.is_file() else None
        for name in self.media_files or []:
            p = self.path / name
            if p.is_file():
                return p
        default = self.path / ("image.png" if self.media == "image" else "video.mp4")
        return default if default.is_file() else None

    def load_latent(self, name: str = "output"):
        """One tensor from latents.safetensors (lazy, no pickle). Raises RunError."""
        from safetensors import safe_open

        if not self.latents_path.is_file():
            raise RunError(f"{self.name}: {LATENTS} is missing")
        try:
            with safe_open(str(self.latents_path), framework="pt") as f:
                if name not in f.keys():
                    raise RunError(f"{self.name}: {LATENTS} has no tensor {name!r}")
                t = f.get_tensor(name)
        except RunError:
            raise
        except Exception as e:  # corrupt header, truncated file, ...
            raise RunError(f"{self.name}: {LATENTS} is unreadable ({type(e).__name__}: {_one_line(e)})") from e
        if self.latent_shape is not None and tuple(t.shape) != self.latent_shape:
            raise RunError(
                f"{self.name}: latent {name!r} has shape {list(t.shape)} but stats.json says {list(self.latent_shape)}"
            )
        return t


def init_kind(init_t: Sequence[int] | None, num_steps: int) -> str | None:
    if not init_t:
        return None
    t = tuple(int(i) for i in init_t)
    if t in PAPER_INIT_T.get(num_steps, set()):
        return "ours"
    gaps = {b - a for a, b in zip(t, t[1:])}
    if len(t) >= 3 and len(gaps) == 1:
        return "uniform"
    return "custom"


def _digest(data: Any) -> str:
    """The run digest, as the runner computes it (one implementation: :func:`chords.rundir.digest`)."""
    from chords.rundir import digest

    return digest(data)


def _one_line(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return s[:200]


# --------------------------------------------------------------------------- discovery


class ManifestError(ValueError):
    """A tag no manifest carries; the message is one line."""


def manifest_runs(roots: Iterable[str | os.PathLike], problems: Problems, tag: str | None = None
                  ) -> tuple[list[Path], list[Path]]:
    """(run folders listed by the manifests, roots left to search for run folders).

    A root that is a Hydra job or sweep folder (it holds runs.json manifests, chords/manifest.py,
    and no run folder of its own) stands for exactly the runs its manifests list. With ``tag``,
    every root stands for the runs of the manifests under it that carry that tag. A listed folder
    that is gone is reported.
    """
    from chords.manifest import find_manifests, read_manifest

    listed: list[Path] = []
    walk: list[Path] = []
    tags: set[str] = set()
    for root in map(Path, roots):
        manifests = find_manifests(root)
        records = []
        for m in manifests:
            try:
                records.append((m, read_manifest(m)))
            except ValueError as e:
                problems.report(str(e))
        tags |= {str(r["tag"]) for _, r in records if r.get("tag")}
        if tag is not None:
            records = [(m, r) for m, r in records if r.get("tag") == tag]
        elif not records or _holds_run_folder(root):
            walk.append(root)
            continue
        for m, r in records:
            for entry in r["runs"]:
                folder = Path(str(entry.get("folder", "")))
                if not (folder / STATS).is_file():
                    problems.report(f"{m}: listed run folder {folder} is gone or incomplete; left out")
                    continue
                listed.append(folder)
    if tag is not None and not listed:
        raise ManifestError(f"tag={tag!r}: no run manifest under {', '.join(map(str, roots))} carries it; "
                            f"tags found: {', '.join(sorted(tags)) or 'none'}")
    return listed, walk


def _holds_run_folder(root: Path) -> bool:
    """Whether a run folder (stats.json) lies under ``root`` outside its hidden and log folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        if STATS in filenames:
            return True
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "logs"]
    return False


def find_run_dirs(roots: Iterable[str | os.PathLike], problems: Problems, tag: str | None = None) -> list[Path]:
    """Every folder under ``roots`` holding a stats.json (a run folder), sorted, deduplicated.

    A Hydra job or sweep folder (or, with ``tag``, any root) gives exactly the runs its
    manifests list (:func:`manifest_runs`). Hidden folders (``.hydra``) are skipped; a folder
    with a ``.tmp-`` name, or with run files but no stats.json, is reported as partial and skipped.
    """
    listed, roots = manifest_runs(roots, problems, tag)
    found: dict[str, Path] = {os.path.realpath(p): p for p in listed}
    for root in roots:
        root = Path(root)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            if ".tmp-" in here.name:
                problems.report(f"partial run folder (temporary name, still being written or aborted): {here}")
                dirnames[:] = []
                continue
            if STATS in filenames:
                found.setdefault(os.path.realpath(here), here)
                dirnames[:] = []  # a run folder holds no run folders
                continue
            if _RUN_FILES & set(filenames):
                problems.report(f"partial run folder (no {STATS}): {here}")
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found.values())


# --------------------------------------------------------------------------- loading

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "prompt": str,
    "seed": int,
    "model": str,
    "media": str,
    "algorithm": str,
    "num_cores": int,
    "num_steps": int,
    "hits": list,
    "rounds": int,
    "nfe": int,
    "output_index": int,
    "output_round": int,
    "timing": dict,
}


def _is(value: Any, typ) -> bool:
    """isinstance, except that a bool is never a number."""
    if isinstance(value, bool) and typ is not bool:
        return False
    return isinstance(value, typ)


def _num(x: Any) -> float:
    if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x)):
        return float(x)
    return math.nan


def load_run(path: str | os.PathLike) -> Run:
    """Load and validate one run folder; raises RunError with a one-line reason."""
    path = Path(path)
    short = "/".join(path.parts[-3:])
    warnings: list[str] = []
    try:
        with open(path / STATS, encoding="utf-8") as f:
            s = json.load(f)
    except FileNotFoundError:
        raise RunError(f"{short}: no {STATS}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{short}: {STATS} is not valid JSON ({_one_line(e)})") from None
    if not isinstance(s, dict):
        raise RunError(f"{short}: {STATS} is not a JSON object")
    fmt = s.get("format", 1)
    if fmt not in (1, 2):
        raise RunError(f"{short}: {STATS} format {fmt!r} is not supported (eval reads formats 1 and 2)")
    for key, typ in _REQUIRED.items():
        if key not in s:
            raise RunError(f"{short}: {STATS} lacks {key!r}")
        if not _is(s[key], typ):
            raise RunError(f"{short}: {STATS} field {key!r} has type {type(s[key]).__name__}")
    if s["media"] not in ("image", "video"):
        raise RunError(f"{short}: media {s['media']!r} is neither 'image' nor 'video'")
    if s["num_cores"] < 1 or s["num_steps"] < 1:
        raise RunError(f"{short}: num_cores and num_steps must be >= 1")
    hits = []
    for i, h in enumerate(s["hits"]):
        if not isinstance(h, dict):
            raise RunError(f"{short}: hits[{i}] is not an object")
        for key, default in (("round", None), ("index", i), ("core", 0)):
            value = h.get(key, default)
            if not _is(value, int) or value < 0:
                raise RunError(f"{short}: hits[{i}].{key} is {value!r}, not an integer >= 0")
        if h.get("index", i) != i:
            raise RunError(f"{short}: hits[{i}].index is {h['index']!r}; hits must be listed in order (index {i})")
        latent = h.get("latent", f"hit_{i:02d}")
        if not isinstance(latent, str) or not latent:
            raise RunError(f"{short}: hits[{i}].latent is {latent!r}, not a tensor name")
        hnfe = h.get("nfe")
        if hnfe is not None and not (_is(hnfe, int) and 1 <= hnfe <= s["nfe"]):
            warnings.append(f"{short}: hits[{i}].nfe is {hnfe!r} (not an integer from 1 to nfe={s['nfe']}); left out")
            hnfe = None
        wall = h.get("wall_s")
        if wall is not None and not (_is(wall, (int, float)) and math.isfinite(float(wall)) and float(wall) >= 0):
            warnings.append(f"{short}: hits[{i}].wall_s is {wall!r} (not a finite number >= 0); left out")
        hits.append(
            HitInfo(
                index=i,
                core=int(h.get("core", 0)),
                round=int(h["round"]),
                wall_s=_num(wall) if wall is None or (_is(wall, (int, float)) and float(wall) >= 0) else math.nan,
                latent=latent,
                media=h.get("media") if isinstance(h.get("media"), str) else None,
                nfe=hnfe,
            )
        )
    if not hits:
        raise RunError(f"{short}: {STATS} has no hits")
    oi = s["output_index"]
    if not 0 <= oi < len(hits):
        raise RunError(f"{short}: output_index {oi} is outside hits[0..{len(hits) - 1}]")
    if hits[oi].round != s["output_round"]:
        raise RunError(
            f"{short}: output_round {s['output_round']} != hits[{oi}].round {hits[oi].round}"
        )
    if s["output_round"] < 1 or s["rounds"] < 1:
        raise RunError(f"{short}: rounds and output_round must be >= 1")
    if s["output_round"] > s["rounds"]:
        raise RunError(f"{short}: output_round {s['output_round']} is after the last round ({s['rounds']})")
    if s["nfe"] < s["rounds"]:
        raise RunError(f"{short}: nfe {s['nfe']} is below rounds {s['rounds']} (every round evaluates at least once)")
    timing = {}
    for k in ("encode_s", "sample_s", "decode_s", "total_s"):
        raw = s["timing"].get(k)
        timing[k] = _num(raw)
        if raw is not None and (math.isnan(timing[k]) or timing[k] < 0):
            warnings.append(f"{short}: timing.{k} is {raw!r} (not a finite number >= 0); left out of the time columns")
            timing[k] = math.nan
    if math.isnan(timing["sample_s"]):
        raise RunError(f"{short}: timing.sample_s is missing, negative or not a number")
    shape = s.get("latent_shape")
    latent_shape = tuple(int(d) for d in shape) if isinstance(shape, list) and all(_is(d, int) for d in shape) else None
    algo = s.get("algo") if isinstance(s.get("algo"), dict) else {}
    init_t = algo.get("init_t")
    init = tuple(int(i) for i in init_t) if isinstance(init_t, list) and all(_is(i, int) for i in init_t) else None
    config = s.get("config") if isinstance(s.get("config"), dict) else {}
    exp_label = config.get("experiment_label")
    identity = s.get("identity")
    legacy = fmt == 1
    if fmt == 2 and not (isinstance(identity, dict) and isinstance(identity.get("model"), dict)):
        raise RunError(f"{short}: {STATS} (format 2) lacks an 'identity' object with a 'model' group")
    if legacy:  # written before run identities: rebuild one from what the folder stored
        model_cfg = config.get("model") if isinstance(config.get("model"), dict) else {"model_name": s["model"], "seed": s["seed"]}
        identity = {
            "prompt": s["prompt"], "model": model_cfg, "algo": algo,
            "hardware": {"name": str(s.get("hardware") or ""), "world_size": s.get("world_size")}, "run": {},
        }
    return Run(
        path=path,
        stats=s,
        prompt=s["prompt"],
        seed=s["seed"],
        model=s["model"],
        media=s["media"],
        algorithm=s["algorithm"].lower(),
        algo_tag=str(s.get("algo_tag") or s["algorithm"]),
        algo=algo,
        num_cores=s["num_cores"],
        num_steps=s["num_steps"],
        hits=hits,
        rounds=s["rounds"],
        nfe=s["nfe"],
        output_index=oi,
        output_round=s["output_round"],
        timing=timing,
        latent_shape=latent_shape,
        media_files=[m for m in s.get("media_files") or [] if isinstance(m, str)],
        hardware=str(s.get("hardware") or ""),
        init_t=init,
        experiment_label=str(exp_label) if isinstance(exp_label, str) and exp_label.strip() else None,
        identity=identity,
        legacy=legacy,
        warnings=warnings,
    )


def load_runs(roots: Iterable[str | os.PathLike], problems: Problems, tag: str | None = None) -> list[Run]:
    runs = []
    for d in find_run_dirs(roots, problems, tag):
        try:
            run = load_run(d)
        except RunError as e:
            problems.report(f"corrupt run folder skipped: {e}")
            continue
        for w in run.warnings:
            problems.report(w)
        runs.append(run)
    return runs


# --------------------------------------------------------------------------- labels


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "-".join(_fmt(i) for i in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def _flat(d: Any, prefix: str) -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": "1"}`` (lists stay one value)."""
    out: dict[str, str] = {}
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flat(v, name))
        else:
            out[name] = _fmt(v)
    return out


#: Model settings that are not a row's setting: they vary inside a cell by design (seeds are
#: averaged over; N is its own column) or name the row already.
_CELL_MODEL_KEYS = {"seed", "num_inference_steps", "model_name"}
#: Algorithm keys shown by their short facets (init, stop, tol, blocks) or by the cell itself.
_SHORT_ALGO_KEYS = {"algo.algo_name", "algo.num_cores", "algo.init_t", "algo.tolerance", "algo.tol",
                    "algo.num_blocks", "algo.blocks"}


def _facets(run: Run) -> dict[str, str]:
    """Every setting of a run that a row label may need to tell rows apart: short facets for the
    usual ones (init sequence, stop rule, tolerance, blocks), then every other resolved
    algorithm, hardware and top-level setting of its identity (``algo.*``, ``hw.*``, ``run.*``)."""
    a = run.algo
    f: dict[str, str] = {}
    if run.init_t:
        f["init"] = run.init_label
    sk = a.get("stopping_kwargs")
    if isinstance(sk, dict) and sk.get("criterion"):
        crit = str(sk["criterion"])
        val = sk.get("index") if crit == "core_index" else sk.get("threshold") if crit == "residual" else None
        f["stop"] = f"{crit}={_fmt(val)}" if val is not None else crit
    for key, name in (("tolerance", "tol"), ("tol", "tol"), ("num_blocks", "blocks"), ("blocks", "blocks")):
        if key in a and a[key] is not None and name not in f:
            f[name] = _fmt(a[key])
    ident = run.identity
    for name, value in _flat(ident.get("algo") if isinstance(ident.get("algo"), dict) else a, "algo").items():
        if name not in _SHORT_ALGO_KEYS and not name.startswith("algo.stopping_kwargs"):
            f[name] = value
    f.update(_flat(ident.get("hardware"), "hw"))
    run_extra = {k: v for k, v in (ident.get("run") or {}).items() if k != "experiment_label"} if isinstance(ident.get("run"), dict) else {}
    f.update(_flat(run_extra, "run"))
    return f


def _varying(dicts: list[dict[str, str]]) -> list[str]:
    names = sorted({n for d in dicts for n in d})
    return [n for n in names if len({d.get(n, "-") for d in dicts}) > 1]


_SHORT_ORDER = ("init", "stop", "tol", "blocks")


def assign_labels(runs: list[Run], problems: Problems) -> None:
    """Set ``model_label``, ``base_label``, ``facets`` and ``method`` on every run.

    * Model label: the model name, plus the model settings that differ between runs of that
      name (``flux [guidance_scale=5]``), so runs with different model settings never share a
      row (the Sequential row included).
    * Base label: ``config.experiment_label`` when a non-sequential run sets it (it never
      renames the Sequential row); otherwise the algorithm's name, with " (uniform)" for CHORDS
      runs whose init sequence has equal gaps.
    * Method: when one (model label, base label, K, N) cell would hold several settings, the
      settings that differ inside it (init sequence, stop rule, tolerance, blocks, then any
      ``algo.*``, ``hw.*`` or ``run.*`` setting) are appended, e.g. "CHORDS (stop=core_index=2)",
      so every table row is exactly one setting. Each such split is reported in one line.
    """
    by_model: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_model[r.model].append(r)
    for model, lst in sorted(by_model.items()):
        settings = [_flat({k: v for k, v in r.model_settings.items() if k not in _CELL_MODEL_KEYS}, "") for r in lst]
        names = _varying(settings)
        for r, st in zip(lst, settings):
            r.model_label = f"{model} [{', '.join(f'{n}={st.get(n, chr(45))}' for n in names)}]" if names else model
        if names:
            problems.report(
                f"model {model}: runs differ in model settings ({', '.join(names)}); they are shown as separate "
                f"rows labelled '{model} [...]' and each run pairs only with a reference of its own settings"
            )
    legacy = [r for r in runs if r.legacy]
    if legacy:
        problems.report(
            f"{len(legacy)} run folder(s) were written before run identities (stats.json format 1, e.g. {legacy[0].name}): "
            f"their settings are read from their stored config; recompute them (overwrite=true) to pair them exactly"
        )
    for r in runs:
        if r.experiment_label and not r.is_sequential:
            r.base_label = r.experiment_label
        else:
            base = BASE_LABELS.get(r.algorithm, r.algorithm.upper() if len(r.algorithm) <= 5 else r.algorithm.title())
            if r.algorithm == "chords" and r.init_kind == "uniform":
                base += " (uniform)"
            r.base_label = base
        r.facets = _facets(r)

    cells: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        cells[(r.model_label, r.base_label, r.num_cores, r.num_steps)].append(r)
    # Facet names that vary inside some cell, per (model label, base label).
    varying: dict[tuple, list[str]] = defaultdict(list)
    for (model, base, _k, _n), members in cells.items():
        for n in _varying([m.facets for m in members]):
            if n not in varying[(model, base)]:
                varying[(model, base)].append(n)
    for key, names in varying.items():
        names.sort(key=lambda n: (_SHORT_ORDER.index(n) if n in _SHORT_ORDER else len(_SHORT_ORDER), n))
    for r in runs:
        names = varying.get((r.model_label, r.base_label))
        if names:
            extra = ", ".join(f"{n}={r.facets.get(n, '-')}" for n in names)
            r.method = f"{r.base_label} ({extra})" if "(" not in r.base_label else f"{r.base_label[:-1]}, {extra})"
        else:
            r.method = r.base_label
    for (model, base), names in sorted(varying.items()):
        problems.report(
            f"model {model}: several '{base}' settings would share a cell; they are shown as separate rows told apart "
            f"by {', '.join(names)} (set experiment_label in the runs to name them)"
        )


def method_sort_key(label: str) -> tuple:
    for i, base in enumerate(METHOD_ORDER):
        if label == base:
            return (i, 0, label)
        if label.startswith(base):
            return (i, 1, label)
    return (len(METHOD_ORDER), 0, label)


# --------------------------------------------------------------------------- pairing


def pair_references(runs: list[Run], problems: Problems) -> dict[Path, Run]:
    """Map each run's path to its sequential reference run (a sequential run maps to the chosen one).

    A reference has the run's :attr:`Run.pair_key`: the same whole model group (seed, N,
    sizes, dtype, scheduler, step arithmetic, ...) and prompt. Runs without a reference are
    reported, one line per (model, method, K, N) cell, and get no entry. When several
    sequential runs share a key, the first by path is the reference.
    """
    seqs: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        if r.is_sequential:
            seqs[r.pair_key].append(r)
    for key, lst in seqs.items():
        lst.sort(key=lambda r: str(r.path))
        if len(lst) > 1:
            problems.report(
                f"{len(lst)} sequential runs for model {key[0]}, seed {key[3]}, N={key[4]}, prompt {key[2][:40]!r}: "
                f"using {lst[0].name} as the reference"
            )
    refs: dict[Path, Run] = {}
    missing: dict[tuple, list[Run]] = defaultdict(list)
    shape_mismatch: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        cands = seqs.get(r.pair_key, [])
        if not cands:
            missing[(r.model_label or r.model, r.method, r.num_cores, r.num_steps)].append(r)
            continue
        same = [c for c in cands if c.latent_shape == r.latent_shape or c.latent_shape is None or r.latent_shape is None]
        if not same:
            shape_mismatch[(r.model_label or r.model, r.method, r.num_cores, r.num_steps)].append(r)
            continue
        refs[r.path] = same[0]
    seq_seeds: dict[tuple, set[int]] = defaultdict(set)
    for r in runs:
        if r.is_sequential:
            seq_seeds[(r.model_label or r.model, r.num_steps)].add(r.seed)
    for (model, method, k, n), lst in sorted(missing.items(), key=lambda kv: tuple(map(str, kv[0]))):
        seeds = sorted({r.seed for r in lst})
        have = sorted(seq_seeds.get((model, n), set()))
        why = (
            f"no sequential run of model {model} with N={n} at all"
            if not have
            else f"their seeds {seeds[:5]}{'...' if len(seeds) > 5 else ''}, sequential seeds at N={n}: "
            f"{have[:5]}{'...' if len(have) > 5 else ''}, or the prompt or another model setting differs"
        )
        problems.report(
            f"{model} / {method} / K={k} / N={n}: {len(lst)} run(s) have no sequential reference "
            f"(same model settings, prompt, seed, num_steps) — {why}; left out of this cell"
        )
    for (model, method, k, n), lst in sorted(shape_mismatch.items(), key=lambda kv: tuple(map(str, kv[0]))):
        problems.report(
            f"{model} / {method} / K={k} / N={n}: {len(lst)} run(s) differ in latent_shape from their sequential "
            f"reference (e.g. {list(lst[0].latent_shape or [])}); left out of this cell"
        )
    return refs
