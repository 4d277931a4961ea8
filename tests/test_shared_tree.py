"""Several runs writing into one output tree: nothing crashes, nothing is lost, nothing is done twice
needlessly; a folder left incomplete by a dead run is recomputed; each run logs in its own folder."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from chords.rundir import FolderLock, atomic_folder, is_complete
from chords.runner import run
from tests.conftest import ROOT, cli_env, compose

ARGS = ["model=gaussian", "hardware=local", "ngpu=2", "algo.num_cores=2", "model.num_inference_steps=400",
        "model.height=48", "model.width=48"]


def test_two_concurrent_runs_into_one_tree_complete_every_folder(tmp_path):
    out = tmp_path / "out"
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"sample {i}" for i in range(8)))
    cmd = [sys.executable, "run_image_mp.py", *ARGS, f"prompt_file={prompts}", f"output_base_path={out}"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
        assert "Traceback" not in stderr
        assert sum(line.startswith("sample ") for line in stdout.splitlines()) == 8  # every prompt in each table
    folders = [f for f in out.glob("gaussian/*/*") if f.is_dir()]
    assert len(folders) == 16 and all(is_complete(f) for f in folders)
    assert not list(out.rglob("*.tmp-*"))
    logs = [d for d in (out / "logs").iterdir() if d.is_dir()]
    assert len(logs) == 2  # one log folder per run


def test_folder_left_by_a_dead_run_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\n")
    cfg = compose([*ARGS, "model.num_inference_steps=8", f"prompt_file={prompts}", f"output_base_path={tmp_path / 'out'}"])
    (main, ref), = run(cfg)
    stats = json.loads((main.folder / "stats.json").read_text())
    # a dead run left: a temporary folder, and a folder whose stats.json is gone
    (main.folder.parent / f"{main.folder.name}.tmp-dead1").mkdir()
    (main.folder / "stats.json").unlink()
    (main2, _), = run(compose([*ARGS, "model.num_inference_steps=8", f"prompt_file={prompts}",
                               f"output_base_path={tmp_path / 'out'}"]))
    assert main2.folder == main.folder and is_complete(main.folder) and not main2.skipped
    assert json.loads((main.folder / "stats.json").read_text())["identity"] == stats["identity"]
    assert not list((tmp_path / "out").rglob("*.tmp-*"))


def test_a_complete_folder_written_meanwhile_is_kept(tmp_path):
    folder = tmp_path / "m" / "t" / "x-123"
    with atomic_folder(folder) as tmp:
        (tmp / "stats.json").write_text("{}")
        (tmp / "latents.safetensors").write_bytes(b"first")
    with atomic_folder(folder) as tmp:  # a second writer of the same identity
        (tmp / "stats.json").write_text("{}")
        (tmp / "latents.safetensors").write_bytes(b"second")
    assert (folder / "latents.safetensors").read_bytes() == b"first"
    assert not list(folder.parent.glob("*.tmp-*"))


def test_folder_lock_is_exclusive_between_processes(tmp_path):
    folder = tmp_path / "m" / "t" / "x-123"
    lock = FolderLock(folder)
    assert lock.acquire()
    code = ("import sys; from pathlib import Path; from chords.rundir import FolderLock; "
            f"sys.exit(0 if not FolderLock(Path({str(folder)!r})).acquire() else 1)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env()).returncode == 0
    lock.release()
    code = code.replace("0 if not", "0 if")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env()).returncode == 0


def _one_prompt_run(tmp_path, *extra):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    return run(compose([*ARGS, "model.num_inference_steps=8", f"prompt_file={prompts}",
                        f"output_base_path={tmp_path / 'out'}", *extra]))


def test_a_folder_another_live_run_is_writing_is_skipped_then_read_back(tmp_path, monkeypatch):
    import shutil
    import threading
    import time

    monkeypatch.chdir(ROOT)
    first = _one_prompt_run(tmp_path, "reference=false")
    folder = first[0][0].folder
    backup = tmp_path / "backup"
    shutil.copytree(folder, backup)
    shutil.rmtree(folder)
    lock = FolderLock(folder, tmp_path / "out")
    assert lock.acquire()

    def other_run_finishes():
        time.sleep(1.0)
        shutil.copytree(backup, folder)
        lock.release()

    t = threading.Thread(target=other_run_finishes)
    t.start()
    outcomes = _one_prompt_run(tmp_path, "reference=false")
    t.join()
    assert outcomes[0][0].skipped and outcomes[0][0].folder == folder  # read back, not recomputed
    assert not outcomes[1][0].skipped or is_complete(outcomes[1][0].folder)


def test_a_folder_whose_writer_dies_is_recomputed(tmp_path, monkeypatch):
    import shutil
    import threading
    import time

    monkeypatch.chdir(ROOT)
    first = _one_prompt_run(tmp_path, "reference=false")
    folder = first[0][0].folder
    shutil.rmtree(folder)
    lock = FolderLock(folder, tmp_path / "out")
    assert lock.acquire()
    (folder.parent / f"{folder.name}.tmp-live").mkdir()  # the other run's work in progress

    def other_run_dies():
        time.sleep(1.0)
        lock.release()  # as the kernel does when the process dies

    t = threading.Thread(target=other_run_dies)
    t.start()
    outcomes = _one_prompt_run(tmp_path, "reference=false")
    t.join()
    assert not outcomes[0][0].skipped and is_complete(folder)
    assert not list(folder.parent.glob("*.tmp-*"))
