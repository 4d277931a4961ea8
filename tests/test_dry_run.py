"""--dry-run / dry_run=true: the jobs of a sweep, the runs it makes and reuses, an estimate from
earlier runs, and nothing sampled or written (issue 19, item 5)."""
from __future__ import annotations

import pytest

from chords.cli import dry_run, main


def test_dry_run_counts_runs_to_make_and_reuse_and_samples_nothing(tmp_path, capsys):
    from chords.config import validate
    from chords.runner import run
    from tests.conftest import compose

    prompts = tmp_path / "p.txt"
    prompts.write_text("a handwritten digit 3\na handwritten digit 5\n")
    out = tmp_path / "out"
    base = ["model=gaussian", "hardware=local", "model.num_inference_steps=8", f"prompt_file={prompts}",
            f"output_base_path={out}", "summary=false", "grid=false"]
    text = dry_run(["-m", *base, "ngpu=2,4"])
    assert "job 0:" in text and "job 1:" in text
    assert "2 job(s): 6 run folder(s) to make, 0 to reuse" in text  # 2 x 2 CHORDS + 2 shared references
    assert "no estimate for gaussian N=8" in text and not out.exists()
    cfg = compose([*base, "ngpu=2"])
    run(cfg, validate(cfg))
    text = dry_run(["-m", *base, "ngpu=2,4"])
    assert "2 job(s): 2 run folder(s) to make, 4 to reuse" in text and "about " in text and "of sampling" in text
    with pytest.raises(SystemExit) as e:
        main([*base, "ngpu=4", "--dry-run"])
    assert e.value.code == 0 and "1 job(s): 2 run folder(s) to make, 2 to reuse" in capsys.readouterr().out
    assert len(list(out.glob("gaussian/*/*"))) == 4  # nothing new was written
