"""Experiment configs (configs/experiment/): each composes and validates every job of its sweep,
the up-front validation expands an experiment's hydra.sweeper.params exactly as Hydra launches
them, and a sweep runs end to end on an embedded model."""
from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from chords.config import CONFIG_DIR, ConfigError, expand_overrides, precheck_argv, validate
from chords.rundir import is_complete
from tests.conftest import ROOT, cli_env, stand_in_gpus

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
PAPER = {"table1", "table2", "table3", "table4", "fig4", "fig5"}


def test_one_experiment_per_paper_table_and_figure():
    assert PAPER <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_every_job_validates(name, tmp_path, monkeypatch):
    stand_in_gpus(monkeypatch, 8)  # as on the 8-GPU node the paper's experiments run on (hardware=auto -> gpu)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat wearing sunglasses at a pool\n")
    jobs = expand_overrides([f"+experiment={name}", f"prompt_file={prompts}"], "base")
    assert len(jobs) > 1
    models, media = set(), set()
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        for job in jobs:
            cfg = compose(config_name="base", overrides=job)
            assert cfg.reference is True and cfg.output_base_path.startswith("runs/")
            spec = validate(cfg, check_output=False, check_weights=False)
            if cfg.algo.algo_name == "chords":
                assert spec.stop is None  # every hit is kept: eval applies the stop rules
            models.add(cfg.model.model_name)
            media.add(cfg.model.media)
    assert len(media) == 1  # one prompt list per experiment: image and video halves are separate files
    cfg_text = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
    assert cfg_text.startswith("# @package _global_")


def test_table1_sweep_is_models_x_methods_x_cores_x_seeds():
    jobs = expand_overrides(["+experiment=table1"], "base")
    assert len(jobs) == 3 * 3 * 3 * 5
    assert ["model=hunyuan", "algo=chords", "ngpu=4", "model.seed=0", "+experiment=table1"] in jobs


def test_command_line_replaces_a_swept_key_and_sweeps_multiply():
    jobs = expand_overrides(["+experiment=table2", "model=digits", "model.seed=0,1", "ngpu=4"], "base")
    assert len(jobs) == 3 * 2  # algo x seed; model and ngpu fixed by the command line
    assert all("model=digits" in j and "ngpu=4" in j for j in jobs)
    # an experiment swept on the command line is not composed into the master config (as in Hydra)
    assert expand_overrides(["+experiment=table1,table2"], "base") == [["+experiment=table1"], ["+experiment=table2"]]
    assert expand_overrides(["model=gaussian,digits", "ngpu=2"]) == [["model=gaussian", "ngpu=2"], ["model=digits", "ngpu=2"]]


def test_experiment_without_multirun_and_bad_names_are_one_line():
    with pytest.raises(ConfigError, match=r"\+experiment=table1 holds a sweep .*run it with -m"):
        precheck_argv(["+experiment=table1"])
    with pytest.raises(ConfigError, match=r"write \+experiment=table2"):
        precheck_argv(["-m", "experiment=table2"])
    with pytest.raises(ConfigError, match=r"experiment='nope' is unknown: choose one of fig4"):
        precheck_argv(["-m", "+experiment=nope"])


def test_every_job_of_an_experiment_is_validated_up_front(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a handwritten digit 3\n")
    # ngpu=4,6,8 with hardware=local and N=5: K=6 and K=8 cannot run CHORDS on 5 steps
    with pytest.raises(ConfigError, match=r"ngpu 6 is too many cores"):
        precheck_argv(["-m", "+experiment=table2", "model=digits", "hardware=local", "model.num_inference_steps=5",
                       f"prompt_file={prompts}", f"output_base_path={tmp_path / 'out'}"])


def test_sweep_runs_as_precheck_expands_it(tmp_path):
    """Hydra launches exactly the jobs precheck validated (one Hydra job folder each) and every
    run folder is written; CHORDS keeps all its hits."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\n")
    out = tmp_path / "out"
    args = ["+experiment=table3", "model=gaussian", "hardware=local", "model.num_inference_steps=12", "model.seed=0",
            "ngpu=4,6", f"prompt_file={prompts}", f"output_base_path={out}"]
    expected = expand_overrides(args, "base")
    assert len(expected) == 4  # K x init sequence
    proc = subprocess.run([sys.executable, "run_image_mp.py", "-m", *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_dirs = [d for d in next(out.glob("logs/multirun-*")).iterdir() if d.is_dir() and d.name.isdigit()]
    assert len(job_dirs) == len(expected)
    folders = [f for f in out.glob("gaussian/*/*") if f.is_dir()]
    assert len(folders) == 4 + 1 and all(is_complete(f) for f in folders)  # 4 CHORDS runs + one shared reference
    import json

    for f in folders:
        stats = json.loads((f / "stats.json").read_text())
        if stats["algorithm"] == "chords":
            assert len(stats["hits"]) == stats["num_cores"] + 1 and stats["output_index"] == stats["num_cores"]


def test_reproduce_script_knows_every_experiment():
    text = (ROOT / "scripts" / "reproduce_paper.sh").read_text()
    for name in PAPER:
        assert f"+experiment={name}" in text or f"{name})" in text
    proc = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "reproduce_paper.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_duplicate_prompts_are_reported_in_one_line_and_sampled_once(tmp_path, caplog):
    import logging

    from chords.config import read_prompts

    p = tmp_path / "dups.txt"
    p.write_text("a cat\na dog\na cat\n\na cat\na bird\na dog\n")
    with caplog.at_level(logging.WARNING, logger="chords"):
        assert read_prompts(p) == ["a cat", "a dog", "a bird"]
        assert read_prompts(p) == ["a cat", "a dog", "a bird"]  # reported once per file and process
    lines = [r.getMessage() for r in caplog.records if "distinct prompts" in r.getMessage()]
    assert len(lines) == 1
    assert "6 lines, 3 distinct prompts (2 repeated: 'a cat' x3; 'a dog' x2)" in lines[0]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "run_image_mp.py", "model=gaussian", "hardware=local", "ngpu=2",
                           "model.num_inference_steps=6", f"prompt_file={p}", f"output_base_path={out}", "reference=false"],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len([f for f in out.glob("gaussian/*/*") if f.is_dir()]) == 3
    assert proc.stderr.count("distinct prompts") == 1


def test_experiment_on_the_slurm_launcher_asks_for_its_largest_k():
    """The launcher is configured once per sweep from the master config: the experiment's
    ngpu: 8 (its largest K) becomes gpus_per_node for every job."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="base", overrides=["+experiment=table1", "hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 8
    assert set(cfg.hydra.sweeper.params) == {"model", "algo", "ngpu", "model.seed"}
