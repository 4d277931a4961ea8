"""The command line behind run_image_mp.py / run_video_mp.py.

Every job the command line describes (multirun sweeps expanded) is composed and validated
first; a bad value prints one line and exits with status 2 before Hydra creates any folder or
anything loads. Then Hydra runs the jobs (logging, sweeps) and each calls :func:`chords.runner.run`.

SIGINT, SIGTERM and SIGHUP, at any moment (validation, start-up, sampling, writing), raise
:class:`Interrupted` in the main thread: the stack unwinds through every ``finally`` (workers
are stopped, the run folder being written is removed, complete ones stay), one line is printed
and the exit status is 128 + the signal number. Further signals during that unwinding are
ignored; it is bounded by the backend's ``close`` (seconds).
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import hydra
from omegaconf import DictConfig

from chords.backends import WorkerError
from chords.config import CONFIG_DIR, INFORMATIONAL, ConfigError, precheck_argv, split_argv, validate

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; a KeyboardInterrupt, so Hydra and ``except Exception`` let it through."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def install_signal_handlers() -> dict[int, Any]:
    """The first stop signal raises :class:`Interrupted`; later ones are ignored while it unwinds.

    Returns the previous handlers (for :func:`restore_signal_handlers`); nothing is installed
    outside the main thread, where Python cannot handle signals.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if fired:
            return
        fired.append(signum)
        raise Interrupted(signum)

    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)

log = logging.getLogger("chords")


def _grid_name() -> tuple[str, str | None]:
    """(file stem, label) of this job's grids: ``grid`` alone; in a sweep ``grid-job{N}`` labelled
    with the overrides that vary between its jobs (the job's overrides when they cannot be told)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return "grid", None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return "grid", None
    varying = set(VARYING)
    task = [o for o in hc.overrides.task if o.lstrip("+~").partition("=")[0] in varying] or list(hc.overrides.task)
    return f"grid-job{hc.job.num}", f"job {hc.job.num}: " + " ".join(task)


def _wants_job_config(flags: list[str]) -> bool:
    """``--cfg job`` / ``-c job`` (Hydra prints the job's config and exits)."""
    for i, f in enumerate(flags):
        name, _, value = f.partition("=")
        if name in ("--cfg", "-c") and (value or (flags[i + 1] if i + 1 < len(flags) else "")) == "job":
            return True
    return False


def resolved_job_config(argv: list[str]) -> str:
    """The job's config as ``--cfg job`` prints it, with ``algo.init_t`` replaced by the grid indices
    it resolves to (``preset`` / ``auto`` / ``uniform`` name a rule, not a sequence) and a comment
    saying how; ``auto`` without ``algo.speedup`` is the presets' trend, which the comment says."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from chords.config import CONFIG_DIR, validate
    from chords.runner import _resolved_algo

    overrides, _ = split_argv(argv)
    overrides = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="base", overrides=overrides)
    spec = validate(cfg, check_output=False, check_weights=False)
    note = ""
    if cfg.algo.get("algo_name") == "chords":
        asked = cfg.algo.get("init_t")
        seq = _resolved_algo(cfg, spec)["init_t"]
        if str(asked) == "auto" and cfg.algo.get("speedup") is None:
            from chords.chords import PAPER_PRESETS, preset_init_sequence

            k, n = spec.algorithm.num_cores, spec.num_steps
            preset = "-".join(map(str, preset_init_sequence(k, n))) if k in PAPER_PRESETS else "none for this K"
            same = " (the same as init_t=preset)" if preset == "-".join(map(str, seq)) else f" (init_t=preset: {preset})"
            why = f"auto without algo.speedup: Theorem 2.5 at the presets' trend for K={k}{same}; set algo.speedup to choose"
        else:
            why = f"{asked}"
        note = (f"# algo.init_t: {why} -> {'-'.join(map(str, seq))} "
                f"(K={spec.algorithm.num_cores}, N={spec.num_steps})\n")
        OmegaConf.update(cfg, "algo.init_t", "-".join(map(str, seq)), force_add=True)
    return note + OmegaConf.to_yaml(cfg)


def stop_rule_line(cfg: DictConfig) -> str:
    """The header line of the summary table: which output the table shows and the stop rule that chose it."""
    algo = cfg.algo
    name = str(algo.get("algo_name"))
    if name == "sequential":
        return "output: the sequential solution (N rounds)"
    if name in ("paradigms", "srds"):
        return f"output: {name.upper() if name == 'srds' else 'ParaDIGMS'}'s final state (its own tolerance {algo.get('tolerance')})"
    sk = algo.get("stopping_kwargs") or {}
    crit = str(sk.get("criterion", "core_index"))
    if crit == "none":
        return ("output: the last hit (stop rule: none, algo.stopping_kwargs.criterion=none): every hit is kept and the "
                "last one is the sequential solution, so rounds = N and speedup 1.00x by construction; "
                "python -m eval applies stop rules to the kept hits (stop.* in configs/eval.yaml)")
    if crit == "residual":
        return (f"output: the first hit whose residual to the previous one is below {sk.get('threshold')} "
                f"(stop rule: residual)")
    return f"output: hit {sk.get('index')} (stop rule: core_index={sk.get('index')}; 0 = coarse shot, 1 = fastest core)"


#: keys swept on this command line or by its experiment (set by :func:`main` from the expanded jobs)
VARYING: list[str] = []


def _job(cfg: DictConfig) -> None:
    from chords.runner import run, summary_table

    try:
        spec = validate(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        outcomes = run(cfg, spec)
    except WorkerError as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if outcomes:  # which run folders this job made or reused, for `python -m eval runs=[<its Hydra folder>]`
        from chords.manifest import hydra_output_dir, manifest_record, write_manifest

        where = hydra_output_dir()
        if where is not None:
            from hydra.core.hydra_config import HydraConfig

            job = " ".join(HydraConfig.get().overrides.task)
            write_manifest(where, manifest_record(outcomes, cfg.get("tag"), job))
    if cfg.get("summary", True) and outcomes:  # a torchrun worker rank has no outcomes and prints nothing
        print(stop_rule_line(cfg), flush=True)
        print(summary_table(outcomes), flush=True)
    if cfg.get("grid", True):
        from chords.grid import write_job_grids

        name, label = _grid_name()
        for path in write_job_grids(outcomes, name, label):
            print(f"grid: {path}", flush=True)


DRY_RUN = ("--dry-run", "dry_run=true", "dry_run=True")


def _varying_keys(argv: list[str]) -> list[str]:
    """The override keys whose value differs between the jobs of this command line."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return []
    from hydra import initialize_config_dir

    from chords.config import CONFIG_DIR, expand_overrides

    overrides, _ = split_argv(argv)
    overrides = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        jobs = expand_overrides(overrides, "base", True)
    values: dict[str, set[str]] = {}
    for job in jobs:
        for o in job:
            key, _, value = o.lstrip("+~").partition("=")
            values.setdefault(key, set()).add(value)
    return [k for k, v in values.items() if len(v) > 1 or sum(1 for j in jobs if any(
        o.lstrip("+~").partition("=")[0] == k for o in j)) < len(jobs)]


def dry_run(argv: list[str], config_name: str = "base") -> str:
    """What ``argv`` would run, without loading a model: one line per job (its overrides, run
    folders to make and to reuse), the totals, and a time estimate from the finished runs of the
    same model and step count in the output tree (sampling seconds per round, measured)."""
    import json
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from chords.config import CONFIG_DIR, expand_overrides, validate
    from chords.rundir import is_complete
    from chords.runner import plan_jobs

    overrides, _ = split_argv(argv)
    overrides = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    multirun = any(a in ("-m", "--multirun") for a in argv)
    lines, make, reuse, rounds_to_make = [], 0, 0, {}
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        jobs = expand_overrides(overrides, config_name, multirun)
        seen: set[Path] = set()
        for i, job in enumerate(jobs):
            cfg = compose(config_name=config_name, overrides=job)
            spec = validate(cfg, check_output=False, check_weights=False)
            new = old = 0
            for j in plan_jobs(cfg, spec):
                for folder, rounds in ((j.folder, spec.num_steps), (j.ref, spec.num_steps)):
                    if folder is None or folder in seen:
                        continue
                    seen.add(folder)
                    if is_complete(folder) and not cfg.overwrite:
                        old += 1
                    else:
                        new += 1
                        key = (Path(cfg.output_base_path), str(cfg.model.model_name), spec.num_steps)
                        rounds_to_make[key] = rounds_to_make.get(key, 0) + rounds
            make, reuse = make + new, reuse + old
            lines.append(f"job {i}: {' '.join(job) or '(defaults)'}: {new} run(s) to make, {old} to reuse")
    seconds, unknown = 0.0, []
    for (base, model, n), rounds in sorted(rounds_to_make.items()):
        per_round = []
        for stats in list((base / model).glob("*/*/stats.json"))[:200]:
            try:
                st = json.loads(stats.read_text(encoding="utf-8"))
                if st.get("num_steps") == n and st.get("rounds"):
                    per_round.append(float(st["timing"]["sample_s"]) / float(st["rounds"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        if per_round:
            per_round.sort()
            seconds += rounds * per_round[len(per_round) // 2]
        else:
            unknown.append(f"{model} N={n}")
    lines.append(f"{len(jobs)} job(s): {make} run folder(s) to make, {reuse} to reuse (nothing sampled: dry run)")
    took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
    est = f"about {took} of sampling (at most: every run counted at N rounds), from the median " \
          f"seconds per round of the finished runs of the same model and N" if seconds else ""
    if unknown:
        est += ("; " if est else "") + f"no estimate for {', '.join(unknown)} (no finished runs of it in the output tree yet)"
    if make:
        lines.append(est)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    previous = install_signal_handlers()
    try:
        try:
            dry = [a for a in argv if a in DRY_RUN or a in ("dry_run=false", "dry_run=False")]
            argv = [a for a in argv if a not in dry]
            _, flags = split_argv(argv)
            if not any(f.partition("=")[0] in INFORMATIONAL for f in flags):
                precheck_argv(argv)
            if any(a in DRY_RUN for a in dry):
                print(dry_run(argv), flush=True)
                sys.exit(0)
            VARYING[:] = _varying_keys(argv)
            if _wants_job_config(flags) and not any(a in ("-m", "--multirun") for a in argv):
                print(resolved_job_config(argv), flush=True)  # Hydra's --cfg job, with init_t resolved
                sys.exit(0)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        sys.argv = [sys.argv[0], *argv]
        hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="base")(_job)()
    except Interrupted as e:
        name = signal.Signals(e.signum).name
        print(f"interrupted by {name}: every process stopped; complete run folders kept, partial ones removed (rerun to resume)",
              file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    finally:
        restore_signal_handlers(previous)
