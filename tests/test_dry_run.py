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


def test_sweep_jobs_get_their_own_labelled_grid_and_the_table_names_its_stop_rule(tmp_path):
    from PIL import Image

    from chords.cli import _varying_keys, stop_rule_line
    from chords.config import validate
    from chords.grid import write_job_grids
    from chords.runner import run
    from tests.conftest import compose

    assert _varying_keys(["-m", "model=gaussian", "model.seed=0,1", "ngpu=2"]) == ["model.seed"]
    assert _varying_keys(["model=gaussian"]) == []
    cfg = compose(["model=gaussian", "hardware=local", "ngpu=2", "model.num_inference_steps=6", "prompt=a 3",
                   f"output_base_path={tmp_path}", "algo.stopping_kwargs.criterion=none"])
    outcomes = run(cfg, validate(cfg))
    (plain,) = write_job_grids(outcomes)
    (job,) = write_job_grids(outcomes, "grid-job1", "job 1: model.seed=1")
    assert plain.name == "grid.png" and job.name == "grid-job1.png" and plain.parent == job.parent
    assert Image.open(job).size[1] > Image.open(plain).size[1]  # the label's band on top
    line = stop_rule_line(cfg)
    assert "the last hit" in line and "criterion=none" in line and "1.00x by construction" in line
    assert "hit 1 (stop rule: core_index=1" in stop_rule_line(compose(["model=gaussian"]))
    assert "residual" in stop_rule_line(compose(["model=gaussian", "algo.stopping_kwargs.criterion=residual"]))
    assert "ParaDIGMS" in stop_rule_line(compose(["model=gaussian", "algo=paradigms"]))


def test_cfg_job_shows_init_t_resolved(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--cfg", "job", "algo.init_t=auto", "ngpu=8"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "init_t: 0-1-3-5-10-20-30-40" in out and "auto without algo.speedup" in out
    assert "init_t=preset: 0-2-4-8-16-24-32-40" in out
    with pytest.raises(SystemExit):
        main(["--cfg", "job"])
    out = capsys.readouterr().out
    assert "\n  init_t: 0-8-16-32\n" in out and "\n  init_t: preset" not in out
