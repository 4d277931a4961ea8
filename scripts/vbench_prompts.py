#!/usr/bin/env python
"""Write VBench's prompt lists by dimension, from the vbench package's VBench_full_info.json.

    python scripts/vbench_prompts.py                      # quality dimensions -> prompts/vbench/
    python scripts/vbench_prompts.py --dimensions all --out-dir prompts/vbench_all
    python scripts/vbench_prompts.py --full-info /path/to/VBench_full_info.json

Writes one file per dimension (``{out_dir}/{dimension}.txt``) and their union in order of first
appearance (``--combined``, default ``prompts/vbench_quality.txt``), one prompt per line. The
default dimensions are the seven of the Quality Score. The json is found, in this order: at
``--full-info``; in an importable ``vbench``; through ``--vbench-python`` (or the
``VBENCH_PYTHON`` environment variable: the separate VBench environment made by
``scripts/setup_vbench_env.sh``). Not found: one line, exit status 2.

VBench's protocol samples every prompt 5 times (seeds 0-4) and names videos
``{prompt}-{i}.mp4``; eval reads run folders instead, so run the prompt file with five seeds.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUALITY = [
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
]


class Fail(Exception):
    """One line for stderr, exit status 2."""


def find_full_info(explicit: Path | None, vbench_python: str | None) -> Path:
    if explicit is not None:
        if not explicit.is_file():
            raise Fail(f"--full-info {explicit}: no such file")
        return explicit
    spec = importlib.util.find_spec("vbench")
    if spec is not None and spec.origin:
        p = Path(spec.origin).parent / "VBench_full_info.json"
        if p.is_file():
            return p
    py = vbench_python or os.environ.get("VBENCH_PYTHON")
    if py:
        code = "import os, importlib.util as u; s = u.find_spec('vbench'); print(os.path.dirname(s.origin) if s else '')"
        try:
            out = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip()
        except OSError as e:
            raise Fail(f"cannot run {py} ({e}); give --full-info PATH") from None
        p = Path(out) / "VBench_full_info.json" if out else None
        if p is not None and p.is_file():
            return p
        raise Fail(f"{py} has no vbench package with VBench_full_info.json; give --full-info PATH")
    raise Fail(
        "VBench_full_info.json not found: give --full-info PATH, or --vbench-python (VBENCH_PYTHON) pointing at the "
        "environment made by scripts/setup_vbench_env.sh"
    )


def prompts_by_dimension(path: Path) -> dict[str, list[str]]:
    """Eval's reading of the file (the same prompts eval's standard mode scores each dimension on)."""
    from eval.vbench_quality import VBenchUnavailable
    from eval.vbench_quality import prompts_by_dimension as read

    try:
        return read(path)
    except VBenchUnavailable as e:
        raise Fail(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full-info", type=Path, help="path to VBench_full_info.json")
    ap.add_argument("--vbench-python", help="python of the VBench environment (default: $VBENCH_PYTHON)")
    ap.add_argument("--dimensions", default=",".join(QUALITY),
                    help="comma-separated dimensions, or 'all' (default: the seven quality dimensions)")
    ap.add_argument("--out-dir", type=Path, default=Path("prompts/vbench"), help="one file per dimension")
    ap.add_argument("--combined", default="prompts/vbench_quality.txt",
                    help="union of the chosen dimensions' prompts ('' to skip)")
    a = ap.parse_args(argv)
    try:
        by_dim = prompts_by_dimension(find_full_info(a.full_info, a.vbench_python))
        dims = sorted(by_dim) if a.dimensions.strip() == "all" else [d for d in a.dimensions.split(",") if d.strip()]
        unknown = [d for d in dims if d not in by_dim]
        if unknown:
            raise Fail(f"--dimensions: unknown {unknown[0]!r}; accepted: all, {', '.join(sorted(by_dim))}")
        a.out_dir.mkdir(parents=True, exist_ok=True)
        union: list[str] = []
        for d in dims:
            (a.out_dir / f"{d}.txt").write_text("".join(p + "\n" for p in by_dim[d]), encoding="utf-8")
            union += [p for p in by_dim[d] if p not in union]
        if a.combined:
            combined = Path(a.combined)
            combined.parent.mkdir(parents=True, exist_ok=True)
            combined.write_text("".join(p + "\n" for p in union), encoding="utf-8")
    except Fail as e:
        print(f"vbench_prompts.py: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(dims)} dimension file(s) to {a.out_dir}" + (f" and {len(union)} prompts to {a.combined}" if a.combined else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
