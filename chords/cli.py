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
        print(summary_table(outcomes), flush=True)
    if cfg.get("grid", True):
        from chords.grid import write_job_grids

        for path in write_job_grids(outcomes):
            print(f"grid: {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    previous = install_signal_handlers()
    try:
        try:
            _, flags = split_argv(argv)
            if not any(f.partition("=")[0] in INFORMATIONAL for f in flags):
                precheck_argv(argv)
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
