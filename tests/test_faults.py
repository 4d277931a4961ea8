"""Start-up faults and stop signals, with real processes (issue 12, item 2).

Workers misbehave through ``tests.fault_adapters.FaultyDigits``. Every test checks, by pid,
that no process is left. Timeouts are generous: on a loaded 2-core machine each worker needs
10-30 s just to import torch.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chords.backends import ProcessBackend, WorkerError
from chords.rundir import is_complete
from tests.conftest import ROOT, cli_env
from tests.fault_adapters import FaultyDigits

FAULTY = "tests.fault_adapters.FaultyDigits"
LOAD_S = 300.0  # never reached by a test that passes: failures must be reported long before


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap it counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return os.name != "posix" or not Path("/proc").is_dir()
    return state not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is usually there
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        kids = [int(x) for x in out.split()]
        return kids + [d for k in kids for d in descendants(k)]
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def workers_of(pid: int) -> list[int]:
    out = []
    for d in descendants(pid):
        try:
            if "spawn_main" in Path(f"/proc/{d}/cmdline").read_text(errors="ignore"):
                out.append(d)
        except OSError:
            pass
    return out


def seconds_until_gone(pids: list[int], limit: float) -> float:
    t0 = time.monotonic()
    while any(alive(p) for p in pids):
        if time.monotonic() - t0 > limit:
            left = [p for p in pids if alive(p)]
            for p in left:  # do not leave them to the next test
                os.kill(p, signal.SIGKILL)
            pytest.fail(f"processes {left} still alive {limit:g}s later")
        time.sleep(0.1)
    return time.monotonic() - t0


def wait_for(check, limit: float, what: str):
    t0 = time.monotonic()
    while not (found := check()):
        if time.monotonic() - t0 > limit:
            pytest.fail(f"no {what} after {limit:g}s")
        time.sleep(0.1)
    return found


def digits_cfg(**extra) -> dict:
    return {"model_name": "digits", "height": 8, "width": 8, "num_inference_steps": 10, "dtype": "float32", "shift": 1.0, **extra}


# --------------------------------------------------------------------------- the backend, in this process


@pytest.mark.parametrize(
    "fault,expect",
    [
        ("die_load", "worker rank 2 died while loading model 'digits' (it exited with code 3)"),
        ("fail_load", "worker rank 2 failed to load model 'digits': RuntimeError: injected load failure"),
    ],
)
def test_worker_failing_while_loading_is_named_within_seconds(tmp_path, fault, expect):
    cfg = digits_cfg(fault=fault, fault_rank=2, fault_stamp=str(tmp_path))
    with pytest.raises(WorkerError) as e:
        ProcessBackend(FaultyDigits(cfg), FAULTY, cfg, 3, load_timeout_s=LOAD_S)
    reported = time.time()
    assert expect in str(e.value)
    died = float((tmp_path / "rank2").read_text())
    assert reported - died < 10, f"reported {reported - died:.1f}s after the worker failed"
    print(f"{fault}: reported {reported - died:.1f}s after the worker failed")
    assert not workers_of(os.getpid())


def test_worker_hanging_while_loading_is_named_after_load_timeout():
    cfg = digits_cfg(fault="hang_load", fault_rank="all")
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"worker rank 1 did not load model 'digits' within 8s \(hardware.load_timeout_s"):
        ProcessBackend(FaultyDigits(cfg), FAULTY, cfg, 3, load_timeout_s=8)
    print(f"hang_load: reported {time.monotonic() - t0:.1f}s after the start with load_timeout_s=8")
    assert 8 <= time.monotonic() - t0 < 25
    assert not workers_of(os.getpid())


def test_worker_hanging_in_a_round_is_named_within_timeout_and_others_stay_quiet(capfd):
    cfg = digits_cfg(fault="hang_velocity", fault_rank=2)
    ad = FaultyDigits(cfg)
    enc = ad.encode("digit 1", 0)
    backend = ProcessBackend(ad, FAULTY, cfg, 3, timeout_s=5, load_timeout_s=LOAD_S)
    pids = [p.pid for p in backend.procs]
    capfd.readouterr()
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="worker rank 2"):
        with backend:
            backend.set_condition(enc.cond)
            backend.velocity(torch.stack([enc.x0] * 3), torch.tensor([0, 1, 2]))
    took = time.monotonic() - t0
    print(f"hang_velocity: reported {took:.1f}s after the round began with timeout_s=5")
    assert took < 5 + 10, f"reported after {took:.1f}s with timeout_s=5"
    seconds_until_gone(pids, 10)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


def test_a_signal_while_a_worker_is_being_started_orphans_nothing(monkeypatch):
    """SIGTERM right after a fork, before the backend has recorded the child: raised after, child stopped."""
    from multiprocessing.context import SpawnProcess

    class Stop(Exception):
        pass

    def stop(signum, frame):
        raise Stop()

    started: list[int] = []
    real_start = SpawnProcess.start

    def start(self):
        real_start(self)
        started.append(self.pid)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(SpawnProcess, "start", start)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        cfg = digits_cfg(fault="slow_load", fault_rank="all", fault_s=600)  # an orphan would live 10 minutes
        with pytest.raises(Stop):
            ProcessBackend(FaultyDigits(cfg), FAULTY, cfg, 3, load_timeout_s=LOAD_S)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(started) == 1
    seconds_until_gone(started, 10)


# --------------------------------------------------------------------------- the command line


def _start(tmp_path: Path, *extra: str, prompts: int = 4) -> subprocess.Popen:
    pf = tmp_path / "prompts.txt"
    pf.write_text("\n".join(f"a handwritten digit {i % 10} number {i}" for i in range(prompts)))
    args = [sys.executable, "run_image_mp.py", "hardware=cpu", f"prompt_file={pf}", f"output_base_path={tmp_path / 'out'}",
            "reference=false", "algo.full_return=false", *extra]
    # a session of its own: a signal to the process group is a terminal's Ctrl-C, and reaches nothing else
    return subprocess.Popen(args, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _slow_start(tmp_path: Path) -> subprocess.Popen:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    return _start(tmp_path, "ngpu=3", f"model.adapter={FAULTY}", "+model.fault=slow_load", "+model.fault_rank=all",
                  "+model.fault_s=600", f"+model.fault_stamp={stamps}")


def _send(proc: subprocess.Popen, how: str) -> None:
    if how == "ctrl-c":  # a terminal sends SIGINT to the whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, getattr(signal, how))


def _finish(proc: subprocess.Popen, limit: float) -> tuple[str, float]:
    """(stderr, seconds until rank 0 exited); the output is small, so waiting before reading is safe."""
    t0 = time.monotonic()
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"still running {limit:g}s after the signal")
    took = time.monotonic() - t0
    _, err = proc.communicate(timeout=limit)
    return err, took


@pytest.mark.parametrize("moment", ["importing", "loading"])
def test_main_killed_while_workers_start_leaves_no_process(tmp_path, moment):
    proc = _slow_start(tmp_path)
    try:
        pids = wait_for(lambda: len(workers_of(proc.pid)) == 2 and workers_of(proc.pid), 180, "workers")
        if moment == "loading":  # both workers are past their imports, inside the model load
            wait_for(lambda: len(list((tmp_path / "stamps").iterdir())) == 2, 180, "loading workers")
        everything = descendants(proc.pid)
        proc.kill()
        proc.wait()  # not communicate(): the workers hold its pipes until they end
        # a worker still importing torch notices at its first line of code; one that is loading, at once
        took = seconds_until_gone(everything, 120 if moment == "importing" else 10)
        print(f"{moment}: every process gone {took:.1f}s after SIGKILL")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert not list((tmp_path / "out").glob("digits/*"))


def _interrupt(proc: subprocess.Popen, ready, how: str, what: str) -> tuple[str, float]:
    """Once ``ready()`` holds, send ``how``; check rank 0 exits within seconds with one line and no process is left."""
    try:
        wait_for(ready, 240, what)
        everything = descendants(proc.pid)
        _send(proc, how)
        err, took = _finish(proc, 60)
        print(f"{how} ({what}): rank 0 exited {took:.1f}s after the signal")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    sig = signal.SIGINT if how == "ctrl-c" else signal.SIGTERM
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines()[-1] == (f"interrupted by {sig.name}: every process stopped; complete run folders kept, "
                                            "partial ones removed (rerun to resume)"), err
    assert "Traceback" not in err, err
    assert took < 15
    seconds_until_gone(everything, 10)
    return err, took


@pytest.mark.parametrize("how", ["ctrl-c", "SIGTERM"])
def test_signal_during_start_up_stops_everything_in_seconds(tmp_path, how):
    proc = _slow_start(tmp_path)
    # as soon as the workers exist: they are still importing torch
    err, _ = _interrupt(proc, lambda: len(workers_of(proc.pid)) == 2, how, "workers starting")
    assert len(err.strip().splitlines()) == 1, err
    assert not list((tmp_path / "out").glob("digits/*"))


@pytest.mark.parametrize("how", ["ctrl-c", "SIGTERM"])
def test_signal_on_a_running_job_keeps_complete_folders_only(tmp_path, how):
    proc = _start(tmp_path, "ngpu=2", "model=digits-exact", "model.num_inference_steps=400", "model.height=64", "model.width=64",
                  prompts=200)
    out = tmp_path / "out"
    _interrupt(proc, lambda: list(out.glob("digits-exact/chords-*/*/stats.json")), how, "sampling")
    folders = [p for p in out.glob("digits-exact/chords-*/*") if p.is_dir()]
    assert folders and all(is_complete(f) for f in folders), [f for f in folders if not is_complete(f)]
    assert not list(out.rglob("*.tmp-*"))


def test_signal_while_rank_0_waits_on_a_hung_worker_stops_in_seconds(tmp_path):
    """Rank 0 is blocked inside a gloo wait (timeout 600 s): the signal still ends the run at once."""
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    proc = _start(tmp_path, "ngpu=3", f"model.adapter={FAULTY}", "+model.fault=hang_velocity", "+model.fault_rank=2",
                  f"+model.fault_stamp={stamps}", "hardware.timeout_s=600")
    _interrupt(proc, lambda: (stamps / "rank2").exists(), "SIGTERM", "a worker hung in a round")
    assert not list((tmp_path / "out").rglob("*.tmp-*"))


# --------------------------------------------------------------------------- under torchrun


@pytest.mark.parametrize("fault,limit", [("hang_velocity", 3.0), ("die_velocity", 3.0)])
def test_torchrun_rank_hung_or_killed_in_a_round_is_named_with_its_node_within_timeout(fault, limit):
    """``torchrun --nproc-per-node 2``, gloo on CPU: rank 1 hangs in (or dies at) its first round.
    Rank 0 reports a WorkerError naming rank 1 and its node within ``timeout_s`` (+ slack), not a
    bare RuntimeError from the teardown that follows, and torchrun then leaves no process."""
    port = socket_port()
    env = cli_env()
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", "--master-addr",
           "127.0.0.1", "--master-port", str(port), "tests/torchrun_fault.py", fault, str(limit)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [line for line in out.splitlines() if line.startswith("REPORTED after ")]
    assert proc.returncode != 0 and lines, out + err
    took = float(lines[0].removeprefix("REPORTED after ").split("s:", 1)[0])
    print(f"{fault} under torchrun: reported {took:.2f}s after the first round began (timeout_s={limit:g})")
    assert took < limit + 5, lines[0]
    assert "worker rank 1 on node 0 did not answer" in lines[0], lines[0]
    if fault == "hang_velocity":
        assert took >= limit - 0.5, lines[0]  # the timeout, not something else, ended it
    assert "[rank0]: Traceback" not in err, err  # rank 0 caught the WorkerError; nothing else was raised
    try:  # torchrun ended its ranks: nothing of the session is left
        seconds_until_gone([int(p) for p in subprocess.run(["ps", "-o", "pid=", "-s", str(proc.pid)], capture_output=True,
                                                            text=True).stdout.split()], 20)
    except ProcessLookupError:
        pass


def socket_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
