"""The command line behind run_image_mp.py / run_video_mp.py.

Every job the command line describes (multirun sweeps expanded) is composed and validated
first; a bad value prints one line and exits with status 2 before Hydra creates any folder or
anything loads. Then Hydra runs the jobs (logging, sweeps) and each calls :func:`chords.runner.run`.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from chords.backends import WorkerError
from chords.config import CONFIG_DIR, ConfigError, precheck_argv, validate

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
    if cfg.get("summary", True):
        print(summary_table(outcomes), flush=True)
    if cfg.get("grid", True):
        from chords.grid import write_job_grids

        for path in write_job_grids(outcomes):
            print(f"grid: {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    informational = any(a in ("-h", "--help", "--hydra-help", "-c", "--cfg", "--info", "--shell-completion", "-sc") or a.startswith("--info") for a in argv)
    if not informational:
        try:
            precheck_argv(argv)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    sys.argv = [sys.argv[0], *argv]
    hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="base")(_job)()
