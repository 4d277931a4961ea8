"""docs/results.md holds the current output of scripts/paper_stop_rules.py, and its claims hold."""
from __future__ import annotations

import importlib.util
import sys

from tests.conftest import ROOT


def _module():
    spec = importlib.util.spec_from_file_location("paper_stop_rules", ROOT / "scripts" / "paper_stop_rules.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["paper_stop_rules"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_results_doc_holds_the_scripts_table():
    text = (ROOT / "docs" / "results.md").read_text()
    assert _module().markdown() in text


def test_which_fixed_index_reproduces_which_number():
    rows = _module().rows()
    hy4 = next(r for r in rows if r["table"] == "Table 1" and r["model"] == "HunyuanVideo" and r["k"] == 4)
    assert round(hy4["s1"], 2) == 2.38 and hy4["published"] == 2.1 and not hy4["match"]
    exact = {(r["table"], r["model"], r["k"], r["n"], r["kind"]) for r in rows if r["match"] == [1]}
    assert exact == {("Table 1", "HunyuanVideo", 8, 50, "preset"), ("Table 3", "HunyuanVideo", 8, 50, "preset"),
                     ("Table 4", "HunyuanVideo", 8, 50, "preset"), ("Table 4", "HunyuanVideo", 8, 75, "preset")}
    assert {(r["model"], r["k"]) for r in rows if r["match"] == [2]} == {("HunyuanVideo", 4), ("Flux", 4)}
