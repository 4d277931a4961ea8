"""Eval stage of the CHORDS harness: run folders in, the paper's tables and figures out.

It reads only what the runner writes (docs/run_folders.md) and never imports chords.models,
chords.backends or chords.runner. Entry point: ``python -m eval`` (eval/cli.py); usage in
docs/eval.md. Modules: runs (discovery, validation, labels, pairing), metrics (latent RMSE,
speedups, times), clip_score (open_clip CLIPScore), vbench_quality (+ vbench_worker, run in the
separate VBench environment), tables, figures.
"""
from .cli import EvalResult, main, run_eval
from .metrics import latent_rmse, speedup
from .vbench_quality import QUALITY_DIMENSIONS, quality_score

__all__ = ["EvalResult", "main", "run_eval", "latent_rmse", "speedup", "QUALITY_DIMENSIONS", "quality_score"]
