"""Every bad input is one line naming the key, the value and what is accepted; exit 2; nothing written.

One test per class of input (issue 12, item 1), parametrised over its cases. The command line
runs in this process (``chords.cli.main``): validation happens before Hydra or any model starts.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chords.cli import main as cli_main
from chords.config import SETTINGS, ranges_markdown, nearest_key
from chords.paths import writable_problem
from tests.conftest import ROOT, cli_env


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.is_dir() else set()


def refused(tmp_path: Path, capsys, monkeypatch, *args: str) -> str:
    """Run the CLI on ``args``; assert exit 2, one ``error:`` line, nothing written; return the line."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "never"
    before_root, before_tmp = sorted(os.listdir(ROOT)), _tree(tmp_path)
    slash_logs = Path("/logs").exists()
    with pytest.raises(SystemExit) as e:
        cli_main([f"output_base_path={out}", *args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not out.exists()
    assert sorted(os.listdir(ROOT)) == before_root and _tree(tmp_path) == before_tmp
    assert Path("/logs").exists() == slash_logs
    return err.removeprefix("error: ")


@pytest.mark.parametrize(
    "args,expect",
    [
        (["overwrite=no"], "overwrite 'no' is invalid: it must be true or false"),
        (["reference=off"], "reference 'off' is invalid: it must be true or false"),
        (["summary=abc"], "summary 'abc' is invalid: it must be true or false"),
        (["algo.full_return=maybe"], "algo.full_return 'maybe' is invalid: it must be true or false"),
        (["overwrite=1"], "overwrite 1 is invalid: it must be true or false"),
        (["algo.verbose=yes"], "algo.verbose 'yes' is invalid"),
        (["model=tiny-flux", "model.vae_tiling=on"], "model.vae_tiling 'on' is invalid"),
    ],
)
def test_booleans_are_true_or_false_only(tmp_path, capsys, monkeypatch, args, expect):
    assert expect in refused(tmp_path, capsys, monkeypatch, *args)


def test_hydra_spellings_of_booleans_are_accepted(tmp_path, capsys, monkeypatch):
    from chords.config import precheck_argv

    monkeypatch.chdir(ROOT)
    precheck_argv([f"output_base_path={tmp_path / 'o'}", "overwrite=TRUE", "reference=False", "summary=true", "hardware=local"])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args,expect",
    [
        (["model.shift=nan"], "model.shift nan is invalid: it must be a finite number > 0 and <= 100"),
        (["model.guidance_scale=abc"], "model.guidance_scale 'abc' is invalid: it must be a finite number from 0 to 100"),
        (["hardware.timeout_s=inf"], "hardware.timeout_s inf is invalid: it must be a finite number > 0 and <= 604800"),
        (["hardware.load_timeout_s=0"], "hardware.load_timeout_s 0 is invalid"),
        (["hardware=cpu", "hardware.threads_per_process=abc"], "hardware.threads_per_process 'abc' is invalid: it must be an integer from 0 to 1024"),
        (["algo.speedup=abc"], "algo.speedup 'abc' is invalid: it must be null or a finite number from 1 to 1000000"),
        (["algo.init_t=auto", "algo.speedup=inf"], "algo.speedup inf is invalid"),
        (["model.num_inference_steps=1e20"], "model.num_inference_steps 1e+20 is invalid: it must be an integer from 1 to 10000"),
        (["model.num_inference_steps=50.0"], "model.num_inference_steps 50.0 is invalid: it must be an integer"),
        (["model.height=100000", "model.width=100000"], "model.height 100000 is invalid: it must be an integer from 1 to 8192"),
        (["model=hunyuan", "model.height=8192", "model.width=8192"], "pixels per sample is too large: at most 268435456"),
        (["model.seed=-1"], "model.seed -1 is invalid: it must be an integer from 0 to"),
        (["algo=paradigms", "algo.tolerance=nan"], "algo.tolerance nan is invalid: it must be a finite number >= 0"),
        (["algo.stopping_kwargs.criterion=residual", "algo.stopping_kwargs.threshold=inf"], "algo.stopping_kwargs.threshold inf"),
        (["algo=srds", "algo.num_blocks=0"], "algo.num_blocks 0 is invalid: it must be null or an integer from 1 to 10000"),
        (["ngpu=0"], "ngpu 0 is invalid: it must be an integer from 1 to 1024"),
        (["ngpu=2.5"], "ngpu 2.5 is invalid"),
        (["ngpu=1000"], "ngpu 1000 is too many cores for model.num_inference_steps=50: algo=chords accepts ngpu from 1 to 50"),
        (["ngpu=70", "algo=paradigms", "hardware=cpu"], "ngpu 70 is too many CPU processes for hardware=cpu: it accepts 1 to"),
        (["model.num_inference_steps=1"], "model.num_inference_steps 1 is too small for 4 cores (ngpu=4): algo=chords accepts 4 to 10000 steps"),
        (["hardware=local", "algo.num_cores=3", "model.num_inference_steps=2"],
         "algo.num_cores 3 is too many cores for model.num_inference_steps=2: algo=chords accepts algo.num_cores from 1 to 2"),
    ],
)
def test_numbers_are_finite_and_within_their_range(tmp_path, capsys, monkeypatch, args, expect):
    assert expect in refused(tmp_path, capsys, monkeypatch, *args)


@pytest.mark.parametrize(
    "args,expect",
    [
        (["hardware.device=nonsense"], "hardware.device 'nonsense' is unknown for hardware=auto: use auto, cpu or cuda"),
        (["hardware=local", "hardware.device=meta"], "hardware.device 'meta' is unknown for hardware=local: use auto, cpu, cuda, cuda:N or mps"),
        (["hardware=cpu", "hardware.device=cuda:1"], "hardware.device 'cuda:1' is unknown for hardware=cpu"),
        (["hardware=cpu", "hardware.dist_backend=mpi"], "hardware.dist_backend 'mpi' is unknown: use gloo, nccl or auto"),
        (["hardware=cpu", "hardware.dist_backend=nccl"], "hardware.dist_backend 'nccl' needs hardware.device=cuda"),
    ],
)
def test_devices_must_exist(tmp_path, capsys, monkeypatch, args, expect):
    assert expect in refused(tmp_path, capsys, monkeypatch, *args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="GPUs are visible here")
@pytest.mark.parametrize("args", [["hardware.device=cuda"], ["hardware=gpu"], ["hardware=local", "hardware.device=cuda:0"]])
def test_cuda_without_gpus_is_refused(tmp_path, capsys, monkeypatch, args):
    assert "needs a CUDA GPU but none is visible: use hardware=cpu or hardware=local" in refused(tmp_path, capsys, monkeypatch, *args)


@pytest.mark.parametrize(
    "args,expect",
    [
        (["+experiment=nosuchexp"], "experiment='nosuchexp' is unknown"),
        (["model=nosuch"], "model='nosuch' is unknown: choose one of cogvideo, digits"),
        (["model.shft=2"], "unknown key 'model.shft' in 'model.shft=2': did you mean model.shift?"),
        (["seed=3"], "unknown key 'seed' in 'seed=3': did you mean model.seed?"),
        (["algo.stopping_kwargs.indx=2"], "did you mean algo.stopping_kwargs.index?"),
        (["hardware.timeout=3"], "did you mean hardware.timeout_s?"),
        (["model=tiny-flux", "model.true_cfg=2"], "did you mean model.true_cfg_scale?"),
        (["algo=srds", "algo.init_t=auto"], "unknown key 'algo.init_t' in 'algo.init_t=auto'"),
        (["xyzzy=1"], "unknown key 'xyzzy' in 'xyzzy=1': see docs/config_ranges.md"),
        (["--bogus-flag"], "unknown option '--bogus-flag': accepted options are -m/--multirun"),
        (["-x"], "unknown option '-x'"),
    ],
)
def test_unknown_names_are_refused_with_the_nearest_valid_one(tmp_path, capsys, monkeypatch, args, expect):
    assert expect in refused(tmp_path, capsys, monkeypatch, *args)


def test_nearest_key():
    keys = {"model", "model.shift", "model.seed", "hardware.timeout_s", "hardware.load_timeout_s"}
    assert nearest_key("seed", keys) == "model.seed"
    assert nearest_key("hardware.timout_s", keys) == "hardware.timeout_s"
    assert nearest_key("zzz", keys) is None


@pytest.mark.parametrize(
    "value,expect",
    [
        ("", "output_base_path '' is invalid: it must be a non-empty string"),
        ("''", "output_base_path '' is invalid: it must be a non-empty string"),
        ("/proc/x", "output_base_path '/proc/x' is not writable (cannot create a file in /proc"),
        ("/dev/null/x", "output_base_path '/dev/null/x' is not writable (/dev/null is not a folder)"),
    ],
)
def test_output_path_must_be_writable(tmp_path, capsys, monkeypatch, value, expect):
    assert expect in refused(tmp_path, capsys, monkeypatch, f"output_base_path={value}")


def test_write_probe_leaves_nothing(tmp_path):
    assert writable_problem(tmp_path / "a" / "b") is None
    assert list(tmp_path.iterdir()) == []
    assert "is not a folder" in writable_problem(Path(os.devnull) / "x")


def test_eval_out_must_be_writable(tmp_path, capsys):
    from eval.cli import main as eval_main

    (tmp_path / "runs").mkdir()
    before = _tree(tmp_path)
    assert eval_main([f"runs=[{tmp_path / 'runs'}]", "out=/proc/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "eval: out=/proc/x cannot be created (cannot create a file in /proc: No such file or directory); give a folder you can write to"
    assert _tree(tmp_path) == before and not Path("/proc/x").exists()


def test_a_real_process_prints_one_line_for_a_bad_flag(tmp_path):
    proc = subprocess.run([sys.executable, "run_image_mp.py", "--bogus-flag", f"output_base_path={tmp_path / 'o'}"],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown option '--bogus-flag'" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_every_default_config_passes_its_own_ranges(monkeypatch):
    """The bounds refuse nothing that ships: every model / algo / hardware option validates."""
    from chords.config import CONFIG_DIR, check_settings
    from tests.conftest import compose

    monkeypatch.chdir(ROOT)
    for group in ("model", "algo", "hardware"):
        for option in sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")):
            cfg = compose([f"{group}={option}"])
            check_settings(cfg)


def test_docs_hold_the_ranges_table():
    doc = (ROOT / "docs" / "config_ranges.md").read_text(encoding="utf-8")
    assert ranges_markdown() in doc, "docs/config_ranges.md is out of date: paste chords.config.ranges_markdown()"
    assert len(SETTINGS) >= 30
