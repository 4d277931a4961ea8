"""scripts/study_embedded.py in its reduced form produces every table, figure and grid, and the
analysis next to the paper's numbers."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, cli_env


def test_reduced_study_produces_tables_figures_grids_and_analysis(tmp_path):
    out, runs = tmp_path / "results", tmp_path / "runs"
    proc = subprocess.run([sys.executable, "scripts/study_embedded.py", "--reduced", "--models", "digits,moving-digits-missing",
                           "--out", str(out), "--runs", str(runs)], cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model 'moving-digits-missing' is not installed" in proc.stderr
    for name in ("tables/table2.md", "tables/table2.csv", "tables/table3.md", "tables/table4.md", "tables/whatif.csv",
                 "tables/figure5_digits.png", "tables/grid_digits_K4.png", "figures/figure4_digits.png",
                 "figures/tradeoff_digits.png", "figures/wallclock_digits.png", "search/digits_k4.md", "README.md",
                 "study.json"):
        assert (out / name).is_file(), name
    readme = (out / "README.md").read_text()
    for text in ("## digits (image)", "paper speedup (SD3.5-Large, Flux)", "**Which method wins at which K.**",
                 "**Calibrated against uniform sequences**", "**Speedup against N**", "**Init-sequence search, K=4**",
                 "Not run: moving-digits-missing"):
        assert text in readme, text
    t2 = (out / "tables" / "table2.md").read_text()
    assert "Stop rule for CHORDS runs that kept every hit: hit 1" in t2 and "95% CI" in t2
    assert "rmse" in (out / "tables" / "table3.md").read_text().lower()


def test_bad_input_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/study_embedded.py", "--cores", "4,x", "--out", str(tmp_path / "o")],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--cores '4,x' is invalid" in proc.stderr
    assert not (tmp_path / "o").exists()
