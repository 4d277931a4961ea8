"""Which run folders one job made or reused: ``runs.json`` in the job's Hydra output folder.

Every job of ``run_image_mp.py`` / ``run_video_mp.py`` writes, next to its Hydra log, a small
manifest of the run folders it produced or found complete (its sequential references
included), and the ``tag`` it was given (``tag=NAME`` on the command line; it never changes a
run's identity). A single run's Hydra folder is ``{output_base_path}/logs/<time>/``; a sweep's
is ``{output_base_path}/logs/multirun-<time>/``, with one numbered folder per job. Eval reads
exactly the runs listed there when given such a folder (``python -m eval runs=[<that folder>]``)
or a tag (``python -m eval runs=[output_samples] tag=NAME``), so earlier runs in the same output
tree never mix into a sweep's cells. The manifest is JSON (format 1)::

    {"format": 1, "tag": "my-sweep" | null, "job": "<overrides of this job>",
     "runs": [{"folder": "/abs/path", "role": "run" | "reference", "reused": false}, ...]}
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

MANIFEST = "runs.json"
FORMAT = 1


def hydra_output_dir() -> Path | None:
    """The running Hydra job's output folder, or None outside a Hydra job."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return None


def manifest_record(outcomes: Iterable[tuple[Any, Any]], tag: str | None, job: str = "") -> dict[str, Any]:
    """The manifest of a job's outcomes: (outcome, reference outcome or None) pairs, each with
    ``folder`` and ``skipped`` (a complete folder that was reused)."""
    runs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for main, ref in outcomes:
        for role, o in (("run", main), ("reference", ref)):
            if o is None:
                continue
            folder = str(Path(o.folder).resolve())
            if folder in seen:
                continue
            seen.add(folder)
            runs.append({"folder": folder, "role": role, "reused": bool(getattr(o, "skipped", False))})
    return {"format": FORMAT, "tag": tag, "job": job, "runs": runs}


def write_manifest(folder: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``folder/runs.json`` (a temporary name renamed: complete or absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    """A manifest's record; ValueError (one line) when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable run manifest ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path}: not a run manifest of format {FORMAT}")
    return data


def find_manifests(root: Path) -> list[Path]:
    """Every runs.json at or under ``root`` (hidden folders skipped; run folders hold none)."""
    root = Path(root)
    if root.is_file():
        return [root] if root.name == MANIFEST else []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if MANIFEST in filenames:
            found.append(Path(dirpath) / MANIFEST)
        if "stats.json" in filenames:
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)
