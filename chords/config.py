"""Turn a composed Hydra config into validated run objects, before anything loads.

:func:`validate` raises :class:`ConfigError` (one line: the key, the bad value and what is
accepted); the CLI prints it and exits with status 2. :func:`precheck_argv` composes every job
a command line would run (multirun sweeps expanded) and validates each, so a bad value never
reaches a model load, a process spawn or Hydra's own output folders.

Every setting has a type and a documented range (:data:`SETTINGS`, rendered as the table in
``docs/config_ranges.md``): booleans are ``true``/``false`` only (Hydra parses nothing else as
a boolean, so ``overwrite=no`` is the *string* ``'no'`` and is refused), numbers are finite and
bounded, integers are integers (``1e20`` is a float). Adapters add their family's own rules
(multiples of 16, 4k + 1 frames, dtypes) on top.
"""
from __future__ import annotations

import difflib
import itertools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator

from omegaconf import DictConfig, OmegaConf

from baselines import SRDS, ParaDIGMS
from baselines.epd import EPD, PREDICTORS
from chords.chords import CHORDS, parse_init_t
from chords.core import CoreIndex, Residual, Sequential, StopRule
from chords.models.base import Adapter, load_adapter_class
from chords.steps import step_precision_problem
from chords.paths import writable_problem

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ALGORITHMS = ("sequential", "chords", "paradigms", "srds", "epd")
CRITERIA = ("core_index", "residual", "none")
BACKENDS = ("processes", "local")
GROUPS = ("model", "algo", "hardware", "experiment")
MAX_STEPS = 10_000
MAX_SIDE = 8192
MAX_PIXELS = 2**28  # height x width x num_frames of one sample
MAX_CORES = 1024
MAX_SEED = 2**63 - 1
MAX_TIMEOUT_S = 7 * 24 * 3600
#: CPU worker processes at most: each imports torch and holds a denoiser
MAX_CPU_PROCESSES = max(64, os.cpu_count() or 1)


class ConfigError(ValueError):
    """A configuration that cannot run; its message is one line for the user."""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Setting:
    """One setting's type and range; :meth:`problem` checks a value, :meth:`accepted` says what passes."""

    key: str
    kind: str  # "bool" | "int" | "number" | "text" | "texts" (a string or a list of strings)
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is refused
    null: bool = False  # null is accepted (it means the documented default)
    note: str = ""
    required: bool = False  # group keys are checked only when the chosen option has them, unless required

    def accepted(self) -> str:
        if self.kind == "bool":
            text = "true or false"
        elif self.kind == "text":
            text = "a non-empty string"
        elif self.kind == "texts":
            text = "a non-empty string or a list of them"
        else:
            noun = "an integer" if self.kind == "int" else "a finite number"
            if self.lo is not None and self.hi is not None and not self.lo_open:
                text = f"{noun} from {_num(self.lo)} to {_num(self.hi)}"
            else:
                bounds = []
                if self.lo is not None:
                    bounds.append(f"{'>' if self.lo_open else '>='} {_num(self.lo)}")
                if self.hi is not None:
                    bounds.append(f"<= {_num(self.hi)}")
                text = f"{noun} {' and '.join(bounds)}".rstrip()
        return f"null or {text}" if self.null else text

    def problem(self, value: Any, name: str | None = None) -> str | None:
        if value is None and self.null:
            return None
        ok: bool
        if self.kind == "bool":
            ok = isinstance(value, bool)
        elif self.kind == "text":
            ok = isinstance(value, str) and value.strip() != ""
        elif self.kind == "texts":
            items = [value] if isinstance(value, str) else list(value) if OmegaConf.is_list(value) or isinstance(value, list) else [None]
            ok = bool(items) and all(isinstance(v, str) and v.strip() != "" for v in items)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            ok = False
        elif self.kind == "int" and not isinstance(value, int):
            ok = False
        else:
            ok = math.isfinite(value)
            ok = ok and (self.lo is None or (value > self.lo if self.lo_open else value >= self.lo))
            ok = ok and (self.hi is None or value <= self.hi)
        if ok:
            return None
        return f"{name or self.key} {value!r} is invalid: it must be {self.accepted()}{f' ({self.note})' if self.note else ''}"


#: Every typed setting. Model keys are checked when the chosen model has them.
SETTINGS: tuple[Setting, ...] = (
    Setting("prompt_file", "text", note="a UTF-8 file, one prompt per line"),
    Setting("prompt", "texts", null=True, note='inline prompts, sampled instead of prompt_file: prompt="a 7" or prompt=["a 3","a 7"]'),
    Setting("output_base_path", "text", note="a folder this process can create files in"),
    Setting("ngpu", "int", 1, MAX_CORES, note="processes or GPUs; algo.num_cores follows it"),
    Setting("reference", "bool"),
    Setting("overwrite", "bool"),
    Setting("summary", "bool"),
    Setting("grid", "bool"),
    Setting("tag", "text", null=True, note="names the job's runs for python -m eval tag=NAME"),
    Setting("model.model_name", "text"),
    Setting("model.adapter", "text", required=True, note="dotted path of an Adapter class"),
    Setting("model.num_inference_steps", "int", 1, MAX_STEPS, required=True, note="N; algo=chords needs N >= its cores"),
    Setting("model.height", "int", 1, MAX_SIDE, note="pixels; families add multiples"),
    Setting("model.width", "int", 1, MAX_SIDE, note="pixels; families add multiples"),
    Setting("model.num_frames", "int", 1, 1025, note="videos; families add 4k + 1"),
    Setting("model.fps", "int", 1, 240),
    Setting("model.guidance_scale", "number", 0, 100),
    Setting("model.true_cfg_scale", "number", 0, 100),
    Setting("model.shift", "number", 0, 100, lo_open=True, note="time shift of the sigma grid"),
    Setting("model.flow_shift", "number", 0, 100, lo_open=True, null=True),
    Setting("model.seed", "int", 0, MAX_SEED, required=True),
    Setting("model.tiny_seed", "int", 0, MAX_SEED),
    Setting("model.max_sequence_length", "int", 1, 4096),
    Setting("model.num_images_per_prompt", "int", 1, 64),
    Setting("model.num_videos_per_prompt", "int", 1, 64),
    Setting("model.vae_tiling", "bool"),
    Setting("model.use_dynamic_cfg", "bool"),
    Setting("algo.num_cores", "int", 1, MAX_CORES, note="K; defaults to ngpu"),
    Setting("algo.speedup", "number", 1, 1e6, null=True, note="init_t=auto's target; null = the presets' trend"),
    Setting("algo.stopping_kwargs.index", "int", 0, MAX_CORES, note="below the number of hits"),
    Setting("algo.stopping_kwargs.threshold", "number", 0, note="residual criterion"),
    Setting("algo.tolerance", "number", 0),
    Setting("algo.num_blocks", "int", 1, MAX_STEPS, null=True, note="srds; at most N; null = round(sqrt N)"),
    Setting("algo.max_iters", "int", 1, MAX_STEPS, null=True, note="srds; null = num_blocks"),
    Setting("algo.table", "text", null=True, note="epd; a table file (scripts/train_epd.py); null = the untrained rule"),
    Setting("algo.perturb", "bool"),
    Setting("algo.verbose", "bool"),
    Setting("algo.full_return", "bool"),
    Setting("hardware.threads_per_process", "int", 0, 1024, note="0 = torch's default"),
    Setting("hardware.timeout_s", "number", 0, MAX_TIMEOUT_S, lo_open=True, note="seconds"),
    Setting("hardware.load_timeout_s", "number", 0, MAX_TIMEOUT_S, lo_open=True, note="seconds"),
    Setting("hardware.max_batch", "int", 1, MAX_CORES, null=True, note="states per forward on a rank; null = no limit"),
)
#: Settings with a fixed set of words (checked in :func:`validate`; listed in the docs).
CHOICES: dict[str, str] = {
    "algo.algo_name": ", ".join(ALGORITHMS) + " (chosen by algo=)",
    "algo.init_t": "0-2-4-8-16-24-32-40 (increasing grid indices from 0, one per core, below N), preset, auto, uniform",
    "algo.stopping_kwargs.criterion": ", ".join(CRITERIA),
    "algo.predictor": ", ".join(PREDICTORS) + " (epd)",
    "hardware.backend": ", ".join(BACKENDS),
    "hardware.mode": "loop, batched (backend local)",
    "hardware.device": "auto, cpu, cuda (processes: rank r on cuda:r); local also cuda:N, mps - each must exist",
    "hardware.dist_backend": "auto, gloo, nccl (nccl needs cuda)",
    "hardware.launcher": "spawn (processes started here), torchrun (hardware=multinode: ranks from torchrun's environment)",
    "model.dtype": "bfloat16, float16, float32 (digits/gaussian: float32, float64)",
}


def ranges_markdown() -> str:
    """The table of every setting's accepted values (docs/config_ranges.md holds it verbatim)."""
    rows = ["| key | accepted | note |", "|---|---|---|"]
    rows += [f"| `{s.key}` | {s.accepted()} | {s.note} |" for s in SETTINGS]
    rows += [f"| `{k}` | one of: {v} | |" for k, v in CHOICES.items()]
    return "\n".join(rows) + "\n"


_MISSING = object()


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in node.items():
        key = f"{prefix}{k}"
        yield key, v
        if isinstance(v, dict):
            yield from _leaves(v, key + ".")


def check_settings(cfg: DictConfig, core_key: str = "algo.num_cores") -> None:
    """Type and range of every setting in :data:`SETTINGS` that the config has."""
    for s in SETTINGS:
        value = OmegaConf.select(cfg, s.key, default=_MISSING)
        if value is _MISSING:
            if s.key.startswith(("model.", "algo.", "hardware.")) and not s.required:
                continue  # this model / algorithm / hardware has no such setting
            raise ConfigError(f"{s.key} is missing: it must be {s.accepted()}")
        problem = s.problem(value, core_key if s.key == "algo.num_cores" else None)
        if problem:
            raise ConfigError(problem)


@dataclass
class RunSpec:
    """Everything the runner needs, resolved and checked."""

    algorithm: Any
    stop: StopRule | None
    adapter_cls: type[Adapter]
    prompts: list[str]
    num_steps: int
    world_size: int
    algo_tag: str
    hardware_note: str = ""  # hardware=auto: what it chose, in one line (logged by the runner)


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def read_prompts(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompt_file {str(path)!r} does not exist: give a text file with one prompt per line")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"prompt_file {str(path)!r} cannot be read as UTF-8 text ({e})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"prompt_file {str(path)!r} is empty: it needs at least one non-blank line (one prompt per line)")
    distinct = list(dict.fromkeys(prompts))
    if len(distinct) < len(prompts):
        _report_duplicates(p, prompts, distinct)
    return distinct


def inline_prompts(value: Any) -> list[str] | None:
    """``prompt=``: None (read prompt_file), or the prompts given (a string or a list), stripped and
    deduplicated in order (the type was checked by :data:`SETTINGS`)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else [str(v) for v in value]
    return list(dict.fromkeys(v.strip() for v in items))


def _per_prompt_check(model: DictConfig, adapter_cls: type) -> None:
    """``model.num_images_per_prompt`` / ``num_videos_per_prompt`` above 1 only where the adapter
    samples several per prompt (a diffusers pipeline's batch: ``per_prompt``); elsewhere it would
    change the run folder and still make one sample."""
    for key in ("num_images_per_prompt", "num_videos_per_prompt"):
        n = model.get(key, 1)
        if n != 1 and not hasattr(adapter_cls, "per_prompt"):
            raise ConfigError(
                f"model.{key} {n!r} is not supported by model {model.get('model_name')!r}: it samples one "
                f"{'video' if 'videos' in key else 'image'} per prompt and seed (sweep model.seed=0,1,... for more); use 1")


_DUPLICATES_REPORTED: set[tuple[str, int]] = set()


def _report_duplicates(path: Path, prompts: list[str], distinct: list[str]) -> None:
    """One log line per prompt file (and process): how many lines repeat a prompt, which ones."""
    key = (str(path.resolve()), hash(tuple(prompts)))
    if key in _DUPLICATES_REPORTED:
        return
    _DUPLICATES_REPORTED.add(key)
    counts = {p: prompts.count(p) for p in distinct}
    repeated = [(p, c) for p, c in counts.items() if c > 1]
    shown = "; ".join(f"{p[:40]!r} x{c}" for p, c in repeated[:3]) + ("; ..." if len(repeated) > 3 else "")
    logging.getLogger("chords").warning(
        "prompt_file %s: %d lines, %d distinct prompts (%d repeated: %s); each distinct prompt is sampled once per seed",
        path, len(prompts), len(distinct), len(repeated), shown)


def check_writable(path: str | os.PathLike, what: str = "output_base_path") -> None:
    """A probe file can be created (and removed) in the folder or its nearest existing parent."""
    if not str(path).strip():
        raise ConfigError(f"{what} {str(path)!r} is empty: give a folder to write into, e.g. {what}=output_samples")
    problem = writable_problem(path)
    if problem:
        raise ConfigError(f"{what} {str(path)!r} is not writable ({problem}): choose a folder you can write to")


def build_algorithm(algo: DictConfig | dict) -> tuple[Any, StopRule | None]:
    """The algorithm object and stop rule an ``algo`` config group describes (not yet checked)."""
    name = algo.get("algo_name")
    if name not in ALGORITHMS:
        raise ConfigError(f"algo.algo_name {name!r} is unknown: use one of {', '.join(ALGORITHMS)}")
    k = algo.get("num_cores", 1)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"algo.num_cores {k!r} is invalid: it must be an integer >= 1")
    try:
        if name == "sequential":
            algorithm: Any = Sequential(num_cores=k)
        elif name == "chords":
            init_t = parse_init_t(algo.get("init_t"))
            algorithm = CHORDS(num_cores=k, init_t=init_t if isinstance(init_t, (str, type(None))) else tuple(init_t), speedup=algo.get("speedup"))
        elif name == "paradigms":
            algorithm = ParaDIGMS(num_cores=k, tolerance=algo.get("tolerance", 0.1))
        elif name == "epd":
            algorithm = build_epd(algo, k)
        elif name == "srds":
            algorithm = SRDS(num_cores=k, num_blocks=algo.get("num_blocks"), tolerance=algo.get("tolerance", 0.05), max_iters=algo.get("max_iters"))
    except ValueError as e:
        raise ConfigError(f"algo.{e}") from None
    sk = algo.get("stopping_kwargs") or {}
    crit = sk.get("criterion", "none")
    crit = "none" if crit is None else str(crit)
    if crit not in CRITERIA:
        raise ConfigError(f"algo.stopping_kwargs.criterion {crit!r} is unknown: use one of {', '.join(CRITERIA)}")
    stop: StopRule | None = None
    if crit == "core_index":
        idx = sk.get("index")
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise ConfigError(f"algo.stopping_kwargs.index {idx!r} is invalid: it must be an integer >= 0")
        stop = CoreIndex(idx)
    elif crit == "residual":
        thr = sk.get("threshold")
        if isinstance(thr, bool) or not isinstance(thr, (int, float)):
            raise ConfigError(f"algo.stopping_kwargs.threshold {thr!r} is invalid: it must be a number >= 0")
        stop = Residual(float(thr))
    return algorithm, stop


def build_epd(algo: DictConfig | dict, k: int) -> EPD:
    """algo=epd: reads the table file it names (ConfigError, one line, when it cannot)."""
    from chords.epd_tables import read_table

    # ValueErrors here get build_algorithm's "algo." prefix
    predictor = algo.get("predictor", "euler")
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor {predictor!r} is invalid: use one of {', '.join(PREDICTORS)}")
    table = None
    if algo.get("table") is not None:
        try:
            table, _, _ = read_table(algo.get("table"))
        except ValueError as e:
            raise ValueError(str(e).removeprefix("algo.")) from None
    return EPD(num_cores=k, table=table, predictor=predictor, perturb=bool(algo.get("perturb", True)))


def epd_table_problem(algo: DictConfig | dict, model: DictConfig | dict) -> str | None:
    """A one-line message when algo=epd's table was fitted for another model, grid or setting."""
    from chords.epd_tables import key_problem, read_table, table_key

    name = algo.get("table")
    if name is None:
        return None
    _, key, _ = read_table(name)
    return key_problem(key, table_key(model, algo.get("num_cores", 1), algo.get("predictor", "euler")), str(name))


def algo_tag(algo: DictConfig | dict, algorithm: Any, stop: StopRule | None, num_steps: int) -> str:
    """A readable folder name for an algorithm setting (eval never parses it)."""
    name = algo["algo_name"]
    if name == "sequential":
        return "sequential"
    parts = [name, f"k{algorithm.num_cores}"]
    if name == "chords":
        parts.append("-".join(str(i) for i in algorithm.resolve_init_t(num_steps)))
    elif name == "paradigms":
        parts.append(f"tol{algorithm.tolerance:g}")
    elif name == "epd":
        table = algo.get("table")
        parts.append("untrained" if table is None else Path(str(table)).stem)
        if algorithm.predictor != "euler":
            parts.append(algorithm.predictor)
        if not algorithm.perturb:
            parts.append("noperturb")
    else:
        parts += [f"b{algorithm.blocks(num_steps)}", f"tol{algorithm.tolerance:g}"]
        if algorithm.max_iters is not None:
            parts.append(f"it{algorithm.max_iters}")
    if isinstance(stop, CoreIndex):
        parts.append(f"core_index{stop.index}")
    elif isinstance(stop, Residual):
        parts.append(f"residual{stop.threshold:g}")
    return "-".join(parts)


def resolve_hardware(hw: DictConfig) -> None:
    """``device: auto`` becomes cuda when a GPU is visible, else cpu.

    ``hardware=auto`` (``name: auto``) becomes ``gpu`` (one process per GPU, NCCL) when two or
    more GPUs are visible (:func:`world_size` then spreads the K cores over the GPUs present);
    with one GPU it becomes ``batched`` on ``cuda``: one process evaluating every core of a
    round in one batched forward on that GPU; without GPUs, ``batched`` on the CPU. On a CPU
    that is the configuration with a real wall-clock speedup (bench/bench_embedded.py: CHORDS
    K=4 beats sequential on the trained digits model when batched, while one process per core
    splits the same cores and adds inter-process traffic to every round).
    """
    if hw.get("device") != "auto":
        return
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    hw.device = "cuda" if gpus else "cpu"
    if hw.get("name") == "auto" and gpus < 2:
        hw.name, hw.backend, hw.mode = "batched", "local", "batched"
        return
    if hw.get("dist_backend") == "auto":
        hw.dist_backend = "nccl" if gpus else "gloo"
    if hw.get("name") == "auto":
        hw.name = "gpu" if gpus else "cpu"


def auto_choice(hw: DictConfig, num_cores: int, world: int) -> str:
    """The one line that says what ``hardware=auto`` chose, after :func:`resolve_hardware`."""
    if hw.backend == "local":
        where = "one GPU (cuda:0)" if hw.device == "cuda" else "no GPU: the CPU"
        return (f"hardware=auto: {where} -> hardware={hw.name}, one process evaluating the {num_cores} core(s) "
                f"of a round in one batched forward")
    per = -(-num_cores // max(world, 1))
    return (f"hardware=auto: {world} GPU process(es) -> hardware={hw.name} ({hw.dist_backend}), {num_cores} core(s) "
            f"over {world} GPU(s), up to {per} state(s) per GPU per round")


def check_device(hw: DictConfig) -> None:
    """``hardware.device`` (after :func:`resolve_hardware`) names a device that exists here.

    With an explicit device under ``hardware=auto``, the remaining ``auto`` values (process
    group backend, hardware name) follow that device.
    """
    import torch

    dev, name = hw.get("device"), hw.get("name")
    words = "auto, cpu or cuda (rank r runs on cuda:r)" if hw.backend == "processes" else "auto, cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(dev) if isinstance(dev, str) else None
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps") or (hw.backend == "processes" and dev not in ("cpu", "cuda")):
        raise ConfigError(f"hardware.device {dev!r} is unknown for hardware={name}: use {words}")
    if device.type == "cuda":
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have == 0:
            raise ConfigError(f"hardware.device {dev!r} (hardware={name}) needs a CUDA GPU but none is visible: use hardware=cpu or hardware=local")
        if device.index is not None and device.index >= have:
            raise ConfigError(f"hardware.device {dev!r} does not exist: {have} GPU(s) are visible (cuda:0 to cuda:{have - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"hardware.device {dev!r} is not available on this machine: use cpu")
    if hw.backend == "processes":
        if hw.get("dist_backend") == "auto":  # an explicit device under hardware=auto
            hw.dist_backend = "nccl" if device.type == "cuda" else "gloo"
        if hw.get("name") == "auto":
            hw.name = "gpu" if device.type == "cuda" else "cpu"
        db = hw.get("dist_backend")
        if db not in ("gloo", "nccl"):
            raise ConfigError(f"hardware.dist_backend {db!r} is unknown: use gloo, nccl or auto")
        if db == "nccl" and device.type != "cuda":
            raise ConfigError(f"hardware.dist_backend 'nccl' needs hardware.device=cuda (it is {dev!r}): use gloo on CPUs")


def world_size(cfg: DictConfig, num_cores: int, core_key: str = "algo.num_cores", fit_gpus: bool = False) -> int:
    """Processes the backend runs: min(ngpu, num_cores) (each takes a share of every round), or
    torchrun's ``WORLD_SIZE`` under ``hardware.launcher=torchrun``; ``core_key`` is what the user set.
    ``fit_gpus`` (``hardware=auto``): at most one process per visible GPU, each taking a larger
    share, instead of refusing an ``ngpu`` above the GPUs present."""
    hw = cfg.hardware
    if hw.backend == "local":
        return 1
    if hw.get("launcher", "spawn") == "torchrun":
        from chords.backends.processes import torchrun_env

        env = torchrun_env()
        if env is None:
            raise ConfigError(f"hardware={hw.name} runs under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT "
                              f"are not all set): launch with torchrun, or use hardware=cpu or hardware=gpu on one host")
        if hw.get("device", "cpu") == "cuda":
            import torch

            have = torch.cuda.device_count()
            if env["local_rank"] >= have:
                raise ConfigError(f"hardware={hw.name}: LOCAL_RANK {env['local_rank']} has no GPU ({have} visible on this node): "
                                  f"use --nproc-per-node <= {have}")
        return int(env["world_size"])
    if hw.get("launcher", "spawn") != "spawn":
        raise ConfigError(f"hardware.launcher {hw.get('launcher')!r} is unknown: use spawn or torchrun")
    ngpu = int(cfg.get("ngpu", 1))
    procs = min(ngpu, int(num_cores))
    if hw.get("device", "cpu") == "cuda":
        import torch

        have = torch.cuda.device_count()
        if fit_gpus:
            procs = min(procs, have)
        if procs > have:
            key = "ngpu" if ngpu <= num_cores else core_key
            raise ConfigError(f"{key} {procs} needs {procs} GPUs (one process per GPU) but {have} are visible: use {key} <= {have}")
    elif procs > MAX_CPU_PROCESSES:
        raise ConfigError(
            f"ngpu {procs} is too many CPU processes for hardware={hw.name}: it accepts 1 to {MAX_CPU_PROCESSES}; "
            f"a process evaluates several cores when ngpu < {core_key}"
        )
    return procs


def _cores_vs_steps(core_key: str, k: int, n: int, typed: Collection[str]) -> str:
    """CHORDS needs one grid index per core (K <= N); name whichever of the two the user typed."""
    if "model.num_inference_steps" in typed and not typed & {core_key, "algo.num_cores", "ngpu"}:
        return (f"model.num_inference_steps {n} is too small for {k} cores ({core_key}={k}): algo=chords accepts "
                f"{k} to {MAX_STEPS} steps (one grid index per core); raise it or lower {core_key}")
    return (f"{core_key} {k} is too many cores for model.num_inference_steps={n}: algo=chords accepts "
            f"{core_key} from 1 to {n} (one grid index per core); lower it or raise model.num_inference_steps")


def _follows_ngpu(cfg: DictConfig) -> bool:
    algo = cfg.get("algo")
    if not isinstance(algo, DictConfig) or "num_cores" not in algo:
        return False
    return OmegaConf.to_container(algo, resolve=False).get("num_cores") == "${ngpu}"


def validate(cfg: DictConfig, check_output: bool = True, check_weights: bool = True, typed: Collection[str] = ()) -> RunSpec:
    """Check the whole config; raise ConfigError naming the first bad value.

    ``typed``: the keys the user set on the command line; where two settings conflict, the
    message leads with the one the user typed.
    """
    typed = set(typed)
    core_key = "ngpu" if _follows_ngpu(cfg) else "algo.num_cores"
    try:
        OmegaConf.resolve(cfg)
    except Exception as e:  # interpolation errors
        raise ConfigError(f"config cannot be resolved: {str(e).splitlines()[0]}") from None
    for group in ("model", "algo", "hardware"):
        if not isinstance(cfg.get(group), DictConfig):
            raise ConfigError(f"config group {group!r} is missing: choose one of {', '.join(_group_options(group))}")
    check_settings(cfg, core_key)
    if check_output:
        check_writable(cfg.output_base_path)
    hw = cfg.hardware
    chosen_by_auto = hw.get("name") == "auto" and hw.get("device") == "auto"
    resolve_hardware(hw)
    if hw.get("backend") not in BACKENDS:
        raise ConfigError(f"hardware.backend {hw.get('backend')!r} is unknown: use one of {', '.join(BACKENDS)}")
    if hw.get("backend") == "local" and hw.get("mode", "loop") not in ("loop", "batched"):
        raise ConfigError(f"hardware.mode {hw.get('mode')!r} is invalid: use loop or batched")
    check_device(hw)

    model = cfg.model
    pixels = model.get("height", 1) * model.get("width", 1) * model.get("num_frames", 1)
    if pixels > MAX_PIXELS:
        raise ConfigError(
            f"model.height x model.width x model.num_frames = {pixels} pixels per sample is too large: "
            f"at most {MAX_PIXELS} (2^28) are accepted"
        )
    try:
        adapter_cls = load_adapter_class(model.get("adapter"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    problems = adapter_cls.validate(model)
    if problems:
        raise ConfigError(problems[0])
    if chosen_by_auto and hw.device == "cpu" and adapter_cls.wants_gpu(model):
        from chords.sysinfo import cuda_summary

        raise ConfigError(
            f"model={model.get('model_name')} needs a GPU but none is usable ({cuda_summary()}): hardware=auto will not "
            f"sample it on the CPU; install the torch build for your driver (README, 'GPUs'), or choose hardware=cpu "
            f"or hardware=local to run it on the CPU anyway")
    precision = step_precision_problem(model.get("step_precision", "model"))
    if precision:
        raise ConfigError(precision)
    n = int(model.num_inference_steps)
    algorithm, stop = build_algorithm(cfg.algo)
    if cfg.algo.algo_name == "chords" and algorithm.num_cores > n:
        raise ConfigError(_cores_vs_steps(core_key, algorithm.num_cores, n, typed))
    if cfg.algo.algo_name == "epd":
        problem = epd_table_problem(cfg.algo, model)
        if problem:
            raise ConfigError(problem)
    try:
        algorithm.check(n)
        if stop is not None:
            stop.check(algorithm, n)
    except ValueError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(("stop", "residual")) else f"algo.{msg}") from None

    ws = world_size(cfg, algorithm.num_cores, core_key, fit_gpus=chosen_by_auto)
    prompts = inline_prompts(cfg.get("prompt")) or read_prompts(cfg.prompt_file)
    _per_prompt_check(model, adapter_cls)
    missing = adapter_cls.missing_weights(model) if check_weights else None
    if missing:
        raise ConfigError(missing)
    note = auto_choice(hw, algorithm.num_cores, ws) if chosen_by_auto else ""
    return RunSpec(algorithm, stop, adapter_cls, prompts, n, ws, algo_tag(cfg.algo, algorithm, stop, n), note)


# --------------------------------------------------------------------------- command line

#: Hydra's own flags (``python run_image_mp.py --help``); the value is how many arguments follow
_HYDRA_FLAGS: dict[str, int] = {
    "-h": 0, "--help": 0, "--hydra-help": 0, "--version": 0, "--resolve": 0, "-r": 0, "--run": 0,
    "-m": 0, "--multirun": 0, "-sc": 0, "--shell-completion": 0, "-c": 1, "--cfg": 1, "-p": 1, "--package": 1,
    "-cp": 1, "--config-path": 1, "-cn": 1, "--config-name": 1, "-cd": 1, "--config-dir": 1,
    "--experimental-rerun": 1, "-i": -1, "--info": -1,
}
_INFO_WORDS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
INFORMATIONAL = ("-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion")


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(overrides, Hydra flags) of a command line; an unknown flag is a ConfigError."""
    overrides: list[str] = []
    flags: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            overrides.append(arg)
            continue
        name, eq, _ = arg.partition("=")
        takes = _HYDRA_FLAGS.get(name)
        if takes is None:
            accepted = "-m/--multirun, -c/--cfg, --info, -h/--help, --hydra-help, -cn/-cp/-cd"
            raise ConfigError(f"unknown option {arg!r}: accepted options are {accepted}; settings are key=value overrides (see --help)")
        flags.append(arg)
        optional = takes == -1 and i < len(argv) and argv[i] in _INFO_WORDS
        if not eq and (takes == 1 or optional) and i < len(argv):
            flags.append(argv[i])
            i += 1
    return overrides, flags


def _typed_keys(job: list[str]) -> set[str]:
    return {o.lstrip("+~").partition("=")[0] for o in job}


def _group_choice_problem(job: list[str]) -> str | None:
    """``model=nope``, ``+experiment=nosuchexp``: a config group option that has no file."""
    for o in job:
        key, eq, value = o.lstrip("+~").partition("=")
        group = key.partition("@")[0]
        if group not in GROUPS or not eq or (group == "experiment" and value == "null"):
            continue
        if not (CONFIG_DIR / group / f"{value}.yaml").is_file():
            options = _group_options(group) if (CONFIG_DIR / group).is_dir() else []
            accepted = f"choose one of {', '.join(options)}" if options else f"there are no {group} configs in configs/{group}/"
            return f"{group}={value!r} is unknown: {accepted}"
    return None


def nearest_key(key: str, keys: Collection[str]) -> str | None:
    """The valid key closest to a mistyped one: same last part, else difflib's best match."""
    leaf = key.rpartition(".")[2]
    same_leaf = sorted((k for k in keys if k.rpartition(".")[2] == leaf), key=len)
    if same_leaf:
        return same_leaf[0]
    close = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.6)
    if close:
        return close[0]
    by_leaf = {k.rpartition(".")[2]: k for k in sorted(keys, key=len, reverse=True)}
    close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.7)
    return by_leaf[close[0]] if close else None


#: Optional model keys that the harness's adapters read when present (``cfg_get(cfg, KEY)``) but
#: that a model yaml may leave out; ``+model.KEY=...`` adds them. An adapter of your own declares
#: its own in a ``config_keys`` class attribute.
OPTIONAL_MODEL_KEYS = frozenset({
    "scheduler", "timestep_spacing", "flow_shift", "prompt_template", "max_sequence_length", "negative_prompt",
    "negative_prompt_2", "prompt_2", "step_precision", "true_cfg_scale", "use_dynamic_cfg", "vae_tiling",
    "tiny_seed", "tiny_guidance_embeds", "cache_dir", "repo_id", "build", "shift",
})


def _adapter_keys(job: list[str], base: Any) -> frozenset[str]:
    """The optional model keys the job's adapter accepts: its ``config_keys`` (if it declares
    them) and :data:`OPTIONAL_MODEL_KEYS`."""
    path = next((o.partition("=")[2] for o in job if o.lstrip("+").startswith("model.adapter=")),
                OmegaConf.select(base, "model.adapter", default=None))
    declared: tuple[str, ...] = ()
    try:
        declared = tuple(getattr(load_adapter_class(path), "config_keys", ()) or ()) if path else ()
    except (ValueError, ImportError):
        pass
    return OPTIONAL_MODEL_KEYS | frozenset(declared)


def _unknown_key_problem(job: list[str], config_name: str, added: bool = False) -> str | None:
    """The first override that sets a key the composed config does not have, with the nearest valid key.

    ``added``: also the ``+key=value`` / ``++key=value`` overrides (config groups such as
    ``+experiment=`` aside): Hydra adds any key that way, and a key no code reads would silently
    change nothing but the run folder's name."""
    from hydra import compose

    choices = [o for o in job if o.lstrip("+~").partition("=")[0].partition("@")[0] in GROUPS]
    try:
        base = compose(config_name=config_name, overrides=choices)
    except Exception:  # the choices themselves are the problem; the caller reports Hydra's words
        return None
    keys = {k for k, _ in _leaves(OmegaConf.to_container(base, resolve=False))}
    for o in job:
        if (o.startswith("+") and not added) or o in choices:
            continue
        key = o.lstrip("~+").partition("=")[0]
        if o.startswith("+") and key.startswith("model.") and key[len("model."):] in _adapter_keys(job, base):
            continue  # an optional key the chosen adapter reads (not in its yaml)
        if key in keys:
            if o.startswith("+") and not o.startswith("++"):
                return f"{key!r} is a setting already: write {o.lstrip('+')!r} (a '+' adds a new key)"
            continue
        near = nearest_key(key, keys)
        hint = f"did you mean {near}?" if near else "see docs/config_ranges.md for the settings"
        return f"unknown key {key!r} in {o!r}: {hint}"
    return None


def expand_overrides(overrides: list[str], config_name: str | None = None, multirun: bool = True) -> list[list[str]]:
    """Every job's override list, as Hydra's basic sweeper launches them.

    Command-line sweeps (``a,b`` / ``range(...)`` / ``choice``) are expanded. With ``config_name``
    the sweep an experiment holds is expanded too, as Hydra does it in a multirun: the config is
    composed from the command line's non-sweep overrides (Hydra's master config, so
    ``+experiment=table1`` is in and ``+experiment=a,b`` is not), its ``hydra.sweeper.params``
    come first and a command-line override of the same key replaces that parameter
    (``+experiment=table2 model=digits``); the product is taken by Hydra's own
    ``BasicSweeper.split_arguments``. Without ``multirun`` (no ``-m``) Hydra runs one job and
    ignores the experiment's sweep, which is refused here: it would silently run the defaults.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    params: list[str] = []
    if config_name is not None:
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        sweep = _sweeper_params(fixed, config_name)
        if sweep and not multirun:
            exp = next((o for o in fixed if o.lstrip("+~").startswith("experiment=")), "the config")
            raise ConfigError(f"{exp} holds a sweep (hydra.sweeper.params: {', '.join(sweep)}): run it with -m (multirun)")
        params = [f"{k}={v}" for k, v in sweep.items()]
    if not params:
        choices = []
        for o in parsed:
            if o.is_sweep_override():
                key = o.get_key_element()
                choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            else:
                choices.append([o.input_line])
        return [list(combo) for combo in itertools.product(*choices)]
    (jobs,) = BasicSweeper.split_arguments(parser.parse_overrides(params + list(overrides)), None)
    return [list(job) for job in jobs]


def _sweeper_params(overrides: list[str], config_name: str) -> dict[str, str]:
    """``hydra.sweeper.params`` of the config these (non-sweep) overrides compose, as strings."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def params() -> dict[str, str]:
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        node = OmegaConf.select(cfg, "hydra.sweeper.params")
        if not node:
            return {}
        return {str(k): str(v) for k, v in OmegaConf.to_container(node, resolve=False).items()}

    if GlobalHydra.instance().is_initialized():
        return params()
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        return params()


def precheck_argv(argv: list[str], config_name: str = "base") -> None:
    """Validate what ``run_*_mp.py argv`` would run; raise ConfigError on the first problem."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    overrides, _ = split_argv(argv)
    overrides = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    multirun = any(a in ("-m", "--multirun") for a in argv)
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        try:
            jobs = expand_overrides(overrides, config_name, multirun)
        except OverrideParseException as e:
            raise ConfigError(f"bad override: {str(e).splitlines()[0]}") from None
        except (HydraException, OmegaConfBaseException) as e:
            problem = _group_choice_problem(overrides) or _unknown_key_problem(overrides, config_name, added=True)
            raise ConfigError(problem or _explain_compose_error(e, overrides)) from None
        for job in jobs:
            problem = _group_choice_problem(job)
            if problem:
                raise ConfigError(problem)
            try:
                cfg = compose(config_name=config_name, overrides=job)
            except (HydraException, OmegaConfBaseException) as e:
                problem = _unknown_key_problem(job, config_name, added=True)
                raise ConfigError(problem or _explain_compose_error(e, job)) from None
            if any(o.startswith("+") for o in job):  # "+key=..." adds keys Hydra never checks: nothing reads them
                problem = _unknown_key_problem(job, config_name, added=True)
                if problem:
                    raise ConfigError(problem)
            validate(cfg, typed=_typed_keys(job))


def _explain_compose_error(e: Exception, job: list[str]) -> str:
    text = str(e).splitlines()[0]
    for o in job:
        key, _, value = o.lstrip("+~").partition("=")
        if key in ("model", "algo", "hardware", "experiment") and not (CONFIG_DIR / key / f"{value}.yaml").exists():
            return f"{key}={value!r} is unknown: choose one of {', '.join(_group_options(key))}"
        if key == "experiment" and not o.startswith("+"):
            return f"{o!r}: experiments are added to the config, write +experiment={value}"
    return f"config cannot be composed: {text}"
