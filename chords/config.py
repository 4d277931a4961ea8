"""Turn a composed Hydra config into validated run objects, before anything loads.

:func:`validate` raises :class:`ConfigError` (one line: the bad value and what is accepted);
the CLI prints it and exits with status 2. :func:`precheck_argv` composes every job a command
line would run (multirun sweeps expanded) and validates each, so a bad value never reaches a
model load, a process spawn or Hydra's own output folders.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from baselines import SRDS, ParaDIGMS
from chords.chords import CHORDS, parse_init_t
from chords.core import CoreIndex, Residual, Sequential, StopRule
from chords.models.base import Adapter, load_adapter_class

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ALGORITHMS = ("sequential", "chords", "paradigms", "srds")
CRITERIA = ("core_index", "residual", "none")
BACKENDS = ("processes", "local")


class ConfigError(ValueError):
    """A configuration that cannot run; its message is one line for the user."""


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
    return prompts


def check_writable(path: str | os.PathLike, what: str = "output_base_path") -> None:
    """The folder exists and is writable, or can be created (its nearest existing parent is)."""
    p = Path(path).absolute()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(path)!r} is not writable ({probe} is not a writable folder): choose a folder you can write to")


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
        else:
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

    ``hardware=auto`` (``name: auto``) becomes ``gpu`` (one process per GPU, NCCL) when CUDA is
    visible, else ``batched``: one process evaluating all cores of a round in one batched forward.
    On a CPU that is the configuration with a real wall-clock speedup (bench/bench_embedded.py:
    CHORDS K=4 beats sequential on the trained digits model when batched, while one process
    per core splits the same cores and adds inter-process traffic to every round).
    """
    if hw.get("device") != "auto":
        return
    import torch

    gpu = torch.cuda.is_available()
    hw.device = "cuda" if gpu else "cpu"
    if hw.get("name") == "auto" and not gpu:
        hw.name, hw.backend, hw.mode = "batched", "local", "batched"
        return
    if hw.get("dist_backend") == "auto":
        hw.dist_backend = "nccl" if gpu else "gloo"
    if hw.get("name") == "auto":
        hw.name = "gpu" if gpu else "cpu"


def world_size(cfg: DictConfig, num_cores: int) -> int:
    hw = cfg.hardware
    if hw.backend == "local":
        return 1
    ngpu = cfg.get("ngpu", 1)
    if isinstance(ngpu, bool) or not isinstance(ngpu, int) or ngpu < 1:
        raise ConfigError(f"ngpu {ngpu!r} is invalid: it must be an integer >= 1")
    if num_cores > ngpu:
        raise ConfigError(
            f"algo.num_cores {num_cores} is more than hardware={hw.name} can provide with ngpu={ngpu} "
            f"(one core per process): set ngpu >= {num_cores} or use hardware=local"
        )
    if hw.get("device", "cpu") == "cuda":
        import torch

        have = torch.cuda.device_count()
        if num_cores > have:
            raise ConfigError(f"algo.num_cores {num_cores} needs {num_cores} GPUs but {have} are visible")
    return num_cores


def validate(cfg: DictConfig, check_output: bool = True, check_weights: bool = True) -> RunSpec:
    """Check the whole config; raise ConfigError naming the first bad value."""
    try:
        OmegaConf.resolve(cfg)
    except Exception as e:  # interpolation errors
        raise ConfigError(f"config cannot be resolved: {str(e).splitlines()[0]}") from None
    for group in ("model", "algo", "hardware"):
        if not isinstance(cfg.get(group), DictConfig):
            raise ConfigError(f"config group {group!r} is missing: choose one of {', '.join(_group_options(group))}")
    hw = cfg.hardware
    resolve_hardware(hw)
    if hw.get("backend") not in BACKENDS:
        raise ConfigError(f"hardware.backend {hw.get('backend')!r} is unknown: use one of {', '.join(BACKENDS)}")
    if hw.get("backend") == "local" and hw.get("mode", "loop") not in ("loop", "batched"):
        raise ConfigError(f"hardware.mode {hw.get('mode')!r} is invalid: use loop or batched")
    for key in ("timeout_s", "load_timeout_s"):
        if key in hw and not (isinstance(hw[key], (int, float)) and hw[key] > 0):
            raise ConfigError(f"hardware.{key} {hw[key]!r} is invalid: it must be a number of seconds > 0")

    model = cfg.model
    try:
        adapter_cls = load_adapter_class(model.get("adapter"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    problems = adapter_cls.validate(model)
    if problems:
        raise ConfigError(problems[0])
    n = model.get("num_inference_steps")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"model.num_inference_steps {n!r} is invalid: it must be an integer >= 1")
    seed = model.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"model.seed {seed!r} is invalid: it must be an integer >= 0")

    algorithm, stop = build_algorithm(cfg.algo)
    try:
        algorithm.check(n)
        if stop is not None:
            stop.check(algorithm, n)
    except ValueError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(("stop", "residual")) else f"algo.{msg}") from None

    ws = world_size(cfg, algorithm.num_cores)
    prompts = read_prompts(cfg.prompt_file)
    if check_output:
        check_writable(cfg.output_base_path)
    missing = adapter_cls.missing_weights(model) if check_weights else None
    if missing:
        raise ConfigError(missing)
    return RunSpec(algorithm, stop, adapter_cls, prompts, n, ws, algo_tag(cfg.algo, algorithm, stop, n))


# --------------------------------------------------------------------------- command line


def expand_overrides(overrides: list[str]) -> list[list[str]]:
    """Every job's override list, with multirun sweeps (a,b / range(...) / choice) expanded."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(combo) for combo in itertools.product(*choices)]


def precheck_argv(argv: list[str], config_name: str = "base") -> None:
    """Validate what ``run_*_mp.py argv`` would run; raise ConfigError on the first problem."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [a for a in argv if not a.startswith("-") and not a.startswith(("hydra.", "hydra/", "+hydra"))]
    try:
        jobs = expand_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"bad override: {str(e).splitlines()[0]}") from None
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        for job in jobs:
            try:
                cfg = compose(config_name=config_name, overrides=job)
            except (HydraException, OmegaConfBaseException) as e:
                raise ConfigError(_explain_compose_error(e, job)) from None
            validate(cfg)


def _explain_compose_error(e: Exception, job: list[str]) -> str:
    text = str(e).splitlines()[0]
    for o in job:
        key, _, value = o.lstrip("+~").partition("=")
        if key in ("model", "algo", "hardware", "experiment") and not (CONFIG_DIR / key / f"{value}.yaml").exists():
            return f"{key}={value!r} is unknown: choose one of {', '.join(_group_options(key))}"
    return f"config cannot be composed: {text}"
