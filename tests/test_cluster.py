"""Sweeps on a cluster with Hydra's submitit launcher: configs/hydra/launcher/slurm.yaml for SLURM,
and the same job layout on submitit's local executor (slurm_local), tested here end to end."""
from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from chords.rundir import is_complete
from tests.conftest import ROOT, cli_env

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    from chords.config import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="base", overrides=["hydra/launcher=slurm", "ngpu=8"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert OmegaConf.select(cfg, "hydra.launcher.gpus_per_node") == 8 and launcher.nodes == 1


def test_sweep_through_submitit_local_executor_writes_every_run_folder(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "run_image_mp.py", "-m", "hydra/launcher=slurm_local", "model=gaussian", "hardware=local",
           "ngpu=2", "algo.num_cores=2", "model.num_inference_steps=8,9", f"prompt_file={prompts}",
           f"output_base_path={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = [f for f in out.glob("gaussian/*/*") if f.is_dir()]
    assert len(folders) == 8 and all(is_complete(f) for f in folders)  # 2 jobs x 2 prompts x (run + reference)
    assert list(out.glob("logs/multirun-*/.submitit/*"))  # submitit ran the jobs
