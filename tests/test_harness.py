"""The harness end to end: configs, CLI, run folders, backends, failure handling."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chords import CHORDS, sample
from chords.backends import LocalBackend, ProcessBackend, WorkerError
from chords.cli import main as cli_main
from chords.config import ConfigError, validate
from chords.models.digits import DigitsExactModel, GaussianModel, prompt_digit
from chords.rundir import is_complete, run_folder
from chords.runner import run
from tests.conftest import ROOT, cli_env, compose

OFFICIAL = [
    "model=flux ngpu=8 output_base_path=output_samples_flux prompt_file=prompts/image_demo.txt algo=chords algo.num_cores=8 "
    "algo.init_t=0-2-4-8-16-24-32-40 algo.stopping_kwargs.criterion=core_index algo.stopping_kwargs.index=2",
    "model=flux ngpu=1 output_base_path=output_samples_flux prompt_file=prompts/image_demo.txt algo=sequential",
    "model=hunyuan ngpu=8 output_base_path=output_samples_hunyuan prompt_file=prompts/video_demo.txt algo=chords algo.num_cores=8 "
    "algo.init_t=0-2-4-8-16-24-32-40 algo.stopping_kwargs.criterion=core_index algo.stopping_kwargs.index=1",
    "model=sd3-5 ngpu=8 algo=chords algo.num_cores=8 algo.init_t=0-2-4-8-16-24-32-40",
    "model=wan2-1 ngpu=8 prompt_file=prompts/video_demo.txt algo=chords algo.num_cores=8 algo.init_t=0-2-4-8-16-24-32-40",
    "model=cogvideo ngpu=8 prompt_file=prompts/video_demo.txt algo=chords algo.num_cores=8 algo.init_t=0-2-4-8-16-24-32-40",
]


def stats(folder: Path) -> dict:
    return json.loads((folder / "stats.json").read_text())


def digits_cfg(tmp_path, *extra):
    return compose([f"output_base_path={tmp_path / 'out'}", "hardware=local", "model.num_inference_steps=20", *extra])


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("line", OFFICIAL)
def test_official_command_lines_compose_and_validate(line, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = compose(line.split())
    if cfg.hardware.backend == "processes":  # GPUs aside: validate the rest on the cpu group
        cfg.hardware.device = "cpu"
    spec = validate(cfg, check_output=False, check_weights=False)
    k = cfg.algo.num_cores
    assert spec.algorithm.num_cores == k and spec.num_steps == 50
    if cfg.algo.algo_name == "chords":
        assert list(spec.algorithm.resolve_init_t(50)) == [0, 2, 4, 8, 16, 24, 32, 40]
        assert spec.stop.index == cfg.algo.stopping_kwargs.index


def test_defaults_are_chords_on_four_batched_cores(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = compose([])
    spec = validate(cfg, check_output=False)
    if torch.cuda.is_available():
        pytest.skip("hardware=auto resolves to gpu where CUDA is visible")
    # auto -> batched without GPUs: one process, all 4 cores of a round in one forward
    assert (cfg.model.model_name, cfg.algo.algo_name, cfg.hardware.name, cfg.hardware.backend, cfg.hardware.mode) == (
        "digits", "chords", "batched", "local", "batched")
    assert spec.world_size == 1 and spec.algorithm.num_cores == 4
    assert spec.algorithm.resolve_init_t(50) == [0, 8, 16, 32]


@pytest.mark.parametrize("algo", ["sequential", "paradigms", "srds", "chords"])
def test_every_algorithm_runs_and_writes_valid_folders(tmp_path, algo, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = digits_cfg(tmp_path, f"algo={algo}", "ngpu=4", "prompt_file=prompts/digits_demo.txt")
    outcomes = run(cfg)
    assert len(outcomes) == 4
    for main, ref in outcomes:
        s = stats(main.folder)
        assert s["algorithm"] == algo and s["num_steps"] == 20 and s["seed"] == 42
        assert s["output_round"] == s["hits"][s["output_index"]]["round"] <= s["rounds"] <= 20
        lat = load_file(str(main.folder / "latents.safetensors"))
        assert set(lat) == {"output"} | {h["latent"] for h in s["hits"]}
        assert lat["output"].shape == (1, 1, 16, 16) and (main.folder / "image.png").is_file()  # latent of 32x32
        if algo == "sequential":
            assert ref is None and s["rounds"] == 20
        else:
            assert stats(ref.folder)["algorithm"] == "sequential"
            assert s["rounds"] < 20  # every parallel method saves rounds on this model


# --------------------------------------------------------------------------- main job, backends


def test_default_job_with_two_cores(tmp_path):
    """The default job (trained digits, CHORDS, hardware=auto) with K=2; processes are covered below."""
    out = tmp_path / "out"
    hw = [] if not torch.cuda.is_available() else ["hardware=batched"]
    proc = subprocess.run(
        [sys.executable, "run_image_mp.py", "ngpu=2", f"output_base_path={out}", *hw],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "speedup" in proc.stdout and proc.stdout.count("x ") >= 4
    assert "class accuracy (digit classifier vs prompt)" in proc.stdout
    folders = sorted(p for p in (out / "digits").glob("chords-k2-*/*") if p.is_dir())
    refs = sorted(p for p in (out / "digits" / "sequential").glob("*") if p.is_dir())
    assert len(folders) == 4 and len(refs) == 4
    assert (folders[0].parent / "grid.png").is_file()
    for f in folders:
        s = stats(f)
        assert is_complete(f) and s["world_size"] == 1 and s["hardware"] == "batched" and s["num_cores"] == 2
        assert s["algo"]["init_t"][0] == 0 and len(s["algo"]["init_t"]) == 2
        assert [h["core"] for h in s["hits"]] == [0, 2]  # coarse shot, then the fastest core (index 1)
        assert all(h["wall_s"] >= 0 for h in s["hits"]) and s["timing"]["sample_s"] > 0
        assert len(list(f.glob("image_hit*.png"))) == 2  # full_return
    assert not list(out.rglob("*.tmp-*"))


def test_same_seed_bitwise_identical_across_backends():
    cfg = {"model_name": "digits-exact", "height": 16, "width": 16, "num_inference_steps": 24, "dtype": "float32", "shift": 1.0}
    ad = DigitsExactModel(cfg)
    enc = ad.encode("a handwritten digit 4", 42)
    outs = {}
    algo = CHORDS(3, [0, 4, 12])
    for name in ("loop", "batched", "cpu"):
        backend = ProcessBackend(ad, "chords.models.digits.DigitsExactModel", cfg, 3, timeout_s=60) if name == "cpu" else LocalBackend(ad, name)
        with backend:
            backend.set_condition(enc.cond)
            res = sample(algo, backend.velocity, enc.x0, enc.step, enc.num_steps)
        outs[name] = torch.stack([h.x for h in res.hits])
    assert outs["loop"].dtype == torch.float32
    # bitwise: the digits velocity is computed in float64 per row and rounded once to float32
    assert torch.equal(outs["loop"], outs["batched"]) and torch.equal(outs["loop"], outs["cpu"])


def test_killed_worker_is_named_and_nothing_is_left(tmp_path):
    cfg = {"model_name": "digits-exact", "height": 8, "width": 8, "num_inference_steps": 10, "dtype": "float32", "shift": 1.0}
    ad = DigitsExactModel(cfg)
    enc = ad.encode("digit 1", 0)
    backend = ProcessBackend(ad, "chords.models.digits.DigitsExactModel", cfg, 3, timeout_s=20)
    pids = [p.pid for p in backend.procs]
    try:
        backend.set_condition(enc.cond)
        backend.velocity(torch.stack([enc.x0] * 3), torch.tensor([0, 1, 2]))
        os.kill(pids[1], signal.SIGKILL)  # rank 2
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="rank 2"):
            for _ in range(50):
                backend.velocity(torch.stack([enc.x0] * 3), torch.tensor([3, 4, 5]))
        assert time.monotonic() - t0 < 25
    finally:
        backend.close(error=True)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_cli_worker_killed_mid_run_exits_nonzero_naming_rank(tmp_path):
    out = tmp_path / "out"
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"a handwritten digit {i % 10} number {i}" for i in range(200)))
    proc = subprocess.Popen(
        [sys.executable, "run_image_mp.py", "ngpu=2", "hardware=cpu", "model=digits-exact", "model.num_inference_steps=400",
         "model.height=64", "model.width=64",
         f"prompt_file={prompts}", f"output_base_path={out}", "hardware.timeout_s=15", "reference=false", "algo.full_return=false"],
        cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(out.glob("digits-exact/chords-*/*/stats.json")):
            time.sleep(0.2)
        # the spawned worker (rank 1) runs "python -c from multiprocessing.spawn import ..."
        workers = [w for w in _children(proc.pid) if "spawn_main" in Path(f"/proc/{w}/cmdline").read_text(errors="ignore")]
        assert workers, "no worker process found"
        for w in workers:
            os.kill(w, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, None)
    assert "worker rank 1" in err
    assert not _children(proc.pid)
    for f in out.glob("digits-exact/chords-*/*"):
        assert is_complete(f), f"half-written {f}"
    assert not list(out.rglob("*.tmp-*"))


def test_interrupted_run_resumes_without_recomputing(tmp_path):
    out = tmp_path / "out"
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"digit {i}" for i in range(10)))
    args = [sys.executable, "run_image_mp.py", "hardware=local", "model=digits-exact", "model.num_inference_steps=300",
            "model.height=64", "model.width=64",
            f"prompt_file={prompts}", f"output_base_path={out}", "reference=false", "algo.full_return=false"]
    proc = subprocess.Popen(args, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("digits-exact/chords-*/*/stats.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {f.parent: f.stat().st_mtime_ns for f in out.glob("digits-exact/chords-*/*/stats.json")}
    assert 3 <= len(done) < 10
    proc = subprocess.run(args, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = {f.parent: f.stat().st_mtime_ns for f in out.glob("digits-exact/chords-*/*/stats.json")}
    assert len(after) == 10 and all(after[f] == t for f, t in done.items())
    assert not list(out.rglob("*.tmp-*"))


# --------------------------------------------------------------------------- bad input


def _bad(tmp_path, capsys, *args):
    out = tmp_path / "never"
    argv = [f"output_base_path={out}", *args]
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not out.exists()
    return err


@pytest.mark.parametrize(
    "args,expect",
    [
        (["prompt_file=missing.txt"], "prompt_file 'missing.txt' does not exist"),
        (["model=nope"], "model='nope' is unknown: choose one of"),
        (["algo=nope"], "algo='nope' is unknown: choose one of chords"),
        (["hardware=nope"], "hardware='nope' is unknown"),
        (["algo.num_cores=4", "algo.init_t=0-8-16"], "init_t 0-8-16 has 3 entries"),
        (["algo.num_cores=4", "algo.init_t=0-8-8-32"], "strictly increasing"),
        (["algo.num_cores=4", "algo.init_t=0-8-16-50"], "below num_steps=50"),
        (["hardware=multinode"], "hardware=multinode runs under torchrun"),
        (["algo.stopping_kwargs.criterion=residual", "algo.stopping_kwargs.threshold=-1"], "threshold -1"),
        (["algo.stopping_kwargs.criterion=fastest"], "criterion 'fastest' is unknown: use one of core_index, residual, none"),
        (["algo.stopping_kwargs.index=9"], "stop index 9 is out of range"),
        (["algo=paradigms", "algo.tolerance=-0.5"], "tolerance -0.5"),
        (["algo=chords", "algo.num_cores=4,51"], "algo.num_cores 51"),  # a sweep: every job is checked first
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch, args, expect):
    monkeypatch.chdir(ROOT)
    assert expect in _bad(tmp_path, capsys, *args)


def test_empty_prompt_file_and_unwritable_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert "is empty" in _bad(tmp_path, capsys, f"prompt_file={empty}")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root): unwritable folders cannot be simulated")
        with pytest.raises(SystemExit) as e:
            cli_main([f"output_base_path={ro / 'x'}"])
        assert e.value.code == 2 and "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_output_under_a_file_is_not_writable(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as e:
        cli_main([f"output_base_path={blocker / 'sub'}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is not writable" in err and len(err.strip().splitlines()) == 1


def test_bad_input_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "run_image_mp.py", "algo=nope", f"output_base_path={tmp_path / 'o'}"],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "algo='nope'" in proc.stderr
    assert not (tmp_path / "o").exists() and not (ROOT / "outputs").exists()


# --------------------------------------------------------------------------- names and models


def test_prompt_folder_names_are_safe_and_distinct(tmp_path):
    prompts = ["a/b/../c", "a.b.c", 'say "hi"', "x" * 5000, "数字 7 — ünïcödé", "a b", "a_b", ".", "..", "   /   "]
    def ident(prompt, seed=42, n=50):
        return {"prompt": prompt, "model": {"seed": seed, "num_inference_steps": n}, "algo": {}, "hardware": {}, "run": {}}

    folders = [run_folder(tmp_path, "digits", "sequential", ident(p)) for p in prompts]
    assert len({f.name for f in folders}) == len(prompts)
    for f in folders:
        assert f.parent == tmp_path / "digits" / "sequential"
        assert len(f.name) <= 60 and all(c.isascii() and (c.isalnum() or c in "_-") for c in f.name)
    f = run_folder(tmp_path, "digits", "sequential", ident("a"))
    assert f != run_folder(tmp_path, "digits", "sequential", ident("a", seed=43))
    assert f != run_folder(tmp_path, "digits", "sequential", ident("a", n=20))


def test_odd_prompts_run(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    p = tmp_path / "p.txt"
    p.write_text('a/b "7"\n' + "y" * 5000 + "\n數字 3\n", encoding="utf-8")
    outcomes = run(digits_cfg(tmp_path, "algo=sequential", f"prompt_file={p}"))
    assert len({o.folder for o, _ in outcomes}) == 3
    assert [stats(o.folder)["prompt"] for o, _ in outcomes] == ['a/b "7"', "y" * 5000, "數字 3"]


def test_prompt_digit():
    assert [prompt_digit(p) for p in ["a handwritten digit 7", "Seven!", "no number", "3 cats and 4 dogs"]] == [7, 7, -1, 3]


def test_digits_velocity_is_the_exact_posterior_mean():
    """At a state equal to (1 - sigma) d_n + sigma eps with tiny sigma the velocity points at d_n."""
    cfg = {"model_name": "digits-exact", "height": 8, "width": 8, "num_inference_steps": 50, "dtype": "float64", "shift": 1.0}
    ad = DigitsExactModel(cfg)
    enc = ad.encode("digit 5", 0)
    d = ad._subset(5)[0][3].reshape(1, 1, 8, 8)
    eps = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    i = 49
    sig = enc.cond["sigmas"][i]
    x = (1 - sig) * d + sig * eps
    v = ad.velocity(x[None], torch.tensor([i]), enc.cond)[0]
    torch.testing.assert_close(x - sig * v, d, atol=1e-9, rtol=0)  # x - sigma * v = E[d | x] = d_n


def test_gaussian_model_converges_to_exact_solution(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    errs = []
    for n in (50, 100, 200):
        cfg = {"model_name": "gaussian", "height": 8, "width": 8, "num_inference_steps": n, "dtype": "float64", "shift": 3.0}
        ad = GaussianModel(cfg)
        enc = ad.encode("", 1)
        be = LocalBackend(ad)
        be.set_condition(enc.cond)
        res = sample(CHORDS(4, None), be.velocity, enc.x0, enc.step, n)
        errs.append((res.output - ad.exact(enc.x0)).abs().max().item())
    assert errs[0] > errs[1] > errs[2] and errs[2] < errs[0] / 3
