"""EPD table files: reading, writing and matching them to a run (the I/O half of :mod:`baselines.epd`).

A table is a small JSON file (no pickle; readable, diffable, a few KB)::

    {
      "format": "chords-epd-table/1",
      "key": {"model": "digits", "num_steps": 4, "shift": 1.0, "guidance_scale": 2.0,
              "num_directions": 2, "predictor": "euler"},
      "r": [[...K values...], ... M rows ...],          # intermediate positions, fractions of a step
      "weights": [[...]], "scale": [[...]], "time_scale": [[...]],
      "training": {...}                                 # how it was made (free-form, for people)
    }

The ``key`` says what the numbers were distilled for: a table only fits the model (its
``model_name``), the coarse grid (``num_steps`` and the time ``shift``), the guidance scale and
its own settings (``num_directions`` = K, ``predictor``) it was fitted on. ``algo=epd`` checks
the key against the run's config before any model loads (:func:`key_problem`); a missing file or
a mismatch is one line and exit status 2. The table's content digest (:func:`table_digest`)
goes into the run identity, so a refitted table at the same path never shares a run folder
with the old one.

Relative paths are looked up from the current directory, then from the repository root (where
the committed tables are: ``chords/models/weights/epd/``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from baselines.epd import EPDTable

FORMAT = "chords-epd-table/1"
ROOT = Path(__file__).resolve().parent.parent
TABLE_DIR = ROOT / "chords" / "models" / "weights" / "epd"
KEY_FIELDS = ("model", "num_steps", "shift", "guidance_scale", "num_directions", "predictor")


def resolve_path(value: str | os.PathLike) -> Path:
    """The table file a config names: as given if it exists (absolute or from the current
    directory), else from the repository root; the path as given when neither exists."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    rooted = ROOT / p
    return rooted if rooted.exists() else p


def table_key(model: Mapping[str, Any], num_directions: int, predictor: str) -> dict[str, Any]:
    """The key a table for this model config and these EPD settings must carry."""
    shift = model.get("shift", model.get("flow_shift"))
    guidance = model.get("guidance_scale")
    return {
        "model": str(model.get("model_name")),
        "num_steps": int(model.get("num_inference_steps")),
        "shift": None if shift is None else float(shift),
        "guidance_scale": None if guidance is None else float(guidance),
        "num_directions": int(num_directions),
        "predictor": str(predictor),
    }


def table_digest(path: str | os.PathLike) -> str:
    """sha1 of the file's bytes (hex): the table's identity in the run key."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def read_table(value: str | os.PathLike) -> tuple[EPDTable, dict[str, Any], Path]:
    """(table, key, resolved path); ValueError with a one-line message for any problem."""
    path = resolve_path(value)
    if not path.is_file():
        raise ValueError(
            f"algo.table {str(value)!r} is not a file: name an EPD table (JSON, made by scripts/train_epd.py; "
            f"committed ones are in {TABLE_DIR.relative_to(ROOT)}/) or null for the untrained rule"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"algo.table {str(value)!r} cannot be read as JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"algo.table {str(value)!r} is not an EPD table: its \"format\" must be {FORMAT!r}")
    key = data.get("key")
    if not isinstance(key, dict) or any(f not in key for f in KEY_FIELDS):
        raise ValueError(f"algo.table {str(value)!r} has no complete \"key\": it needs {', '.join(KEY_FIELDS)}")
    try:
        table = EPDTable.build(data.get("r") or [], data.get("weights") or [], data.get("scale"), data.get("time_scale"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"algo.table {str(value)!r} is invalid: {e}") from None
    if table.num_steps != key["num_steps"] or table.num_directions != key["num_directions"]:
        raise ValueError(
            f"algo.table {str(value)!r} is invalid: its key says {key['num_steps']} steps x {key['num_directions']} "
            f"directions but it holds {table.num_steps} x {table.num_directions}"
        )
    return table, key, path


def key_problem(key: Mapping[str, Any], expected: Mapping[str, Any], name: str) -> str | None:
    """One line naming the first field where a table's key differs from the run's, else None."""
    for f in KEY_FIELDS:
        a, b = key.get(f), expected.get(f)
        same = a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b))
        if not same:
            return (
                f"algo.table {name!r} does not fit this run: it was fitted for {f}={a!r}, the run has {f}={b!r} "
                f"(fit one with scripts/train_epd.py, or use algo.table=null for the untrained rule)"
            )
    return None


def write_table(path: str | os.PathLike, table: EPDTable, key: Mapping[str, Any], training: Mapping[str, Any]) -> Path:
    """Write a table file (JSON, sorted keys, written to a temporary name and renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "key": dict(key), **table.as_dict(), "training": dict(training)}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
