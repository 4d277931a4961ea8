"""scripts/search_init.py in a reduced form: a valid sequence and its report, on held-out seeds."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys


from tests.conftest import ROOT, cli_env


def _module():
    spec = importlib.util.spec_from_file_location("search_init", ROOT / "scripts" / "search_init.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["search_init"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_reduced_search_returns_a_valid_sequence_and_its_report(tmp_path):
    S = _module()
    problem = S.Problem("gaussian", 16)
    report = S.search(problem, 4, ["one"], [0, 1], [2, 3], theorem_count=8, local_evals=8, starts=1)
    best = report.best
    assert len(best) == 4 and best[0] == 0 and all(b > a for a, b in zip(best, best[1:])) and best[-1] < 16
    assert report.preset == [0, 3, 5, 10]  # the K=4 preset scaled to N=16
    assert report.rows[0].init == "-".join(map(str, best))
    assert any(r.family == "paper preset" for r in report.rows)
    assert any(r.family.startswith("theorem") for r in report.rows) and any(r.family.startswith("uniform") for r in report.rows)
    preset_row = next(r for r in report.rows if r.family == "paper preset")
    assert preset_row.gain_vs_preset == 0.0 and report.select_samples == 2 and report.report_samples == 2
    # every reported speedup is N / mean round of a hit within the budget: between 1 and N / K
    for r in report.rows:
        assert 1.0 <= r.report_speedup <= 16 / 4 + 1e-9
    assert report.verdict and "# Init-sequence search: gaussian, K=4, N=16" in report.markdown()
    # the score of a sequence is computed from its streamed hits: hit rounds as the scheduler says
    from chords import CHORDS

    score = S.Evaluator(problem, [("one", 0)])(tuple(best))
    assert score.rounds == CHORDS(4, best).hit_rounds(16)


def test_cli_writes_markdown_and_json_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "search.md"
    args = ["--model", "gaussian", "--cores", "3", "--steps", "12", "--prompts", str(ROOT / "prompts" / "digits_demo.txt"),
            "--max-prompts", "1", "--select-seeds", "0", "--report-seeds", "1", "--theorem-count", "4",
            "--local-evals", "4", "--objective", "index", "--out", str(out)]
    proc = subprocess.run([sys.executable, "scripts/search_init.py", *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["objective"] == "index" and len(data["best"]) == 3 and "Best found" in out.read_text()
    # bad input: the script's main() in this process (the entry point above already ran as a process)
    import torch

    main, threads = _module().main, torch.get_num_threads()
    try:
        for bad, msg in ((["--cores", "1"], "--cores 1 is invalid"), (["--select-seeds", "0", "--report-seeds", "0"], "overlap"),
                         (["--model", "nope"], "--model 'nope' is unknown"), (["--budget", "-1"], "--budget '-1' is invalid")):
            code = main(["--model", "gaussian", "--steps", "12", *bad])
            err = capsys.readouterr().err
            assert code == 2 and err.count("\n") == 1 and msg in err, err
    finally:
        torch.set_num_threads(threads)
