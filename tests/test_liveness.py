"""Failures named quickly, in every direction, and no hang or leftover (issue 20, item 3).

CPU process groups over gloo. NCCL cannot run here; its paths share this logic (rank 0's waits,
the watchdog, heartbeats, bounded teardown: chords/backends/liveness.py), and where NCCL hides a
death that gloo would see (a dead peer's connection stays silent), a stand-in does the same on
gloo: a worker whose process exits while a forked child keeps its sockets open.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from chords.backends import ProcessBackend, WorkerError
from chords.models.digits import DigitsModel
from tests.conftest import ROOT, cli_env
from tests.test_faults import alive, digits_cfg, seconds_until_gone, wait_for

DIGITS = "chords.models.digits.DigitsModel"
LOAD_S = 300.0


def _in_thread(fn, limit: float):
    """Run ``fn`` in a thread: (its exception or result, seconds taken); fails the test if it is
    still running ``limit`` seconds later (the old code waited for hours there)."""
    box: list = []
    t0 = time.monotonic()

    def run():
        try:
            box.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    took = time.monotonic() - t0
    return (box[0] if box else None), took, t.is_alive()


def _stopped(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def test_a_worker_dead_with_its_connection_open_is_named_at_once(tmp_path):
    """The NCCL case on gloo: the transport never reports the death; the process handle does."""
    cfg = digits_cfg(fault_rank=2, fault_stamp=str(tmp_path))
    from tests.liveness_adapters import SilentDeathDigits

    ad = SilentDeathDigits(cfg)
    enc = ad.encode("digit 1", 0)
    backend = ProcessBackend(ad, "tests.liveness_adapters.SilentDeathDigits", cfg, 3, timeout_s=600, load_timeout_s=LOAD_S)
    pids = [p.pid for p in backend.procs]
    try:
        backend.set_condition(enc.cond)
        got, took, hung = _in_thread(lambda: backend.velocity(torch.stack([enc.x0] * 3), torch.tensor([0, 1, 2])), 60)
        print(f"silent death: named {took:.1f}s after the round began (timeout_s=600)")
        assert not hung, "a dead worker with open connections was not named within 60s"
        assert isinstance(got, WorkerError) and "worker rank 2 exited with code 7" in str(got), got
        assert took < 20
    finally:
        orphan = tmp_path / "orphan"
        if orphan.exists():
            try:
                os.kill(int(orphan.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        backend.close(error=True)
    seconds_until_gone(pids, 15)


def test_a_worker_stopped_during_a_reference_is_named_within_timeout():
    """A reference of 200000 steps on rank 1, timeout_s=3: the deadline is on progress, not on the
    job (which used to get timeout_s x num_steps, here a week)."""
    cfg = {**digits_cfg(), "num_inference_steps": 200_000}
    ad = DigitsModel(cfg)
    enc = ad.encode("digit 1", 0)
    backend = ProcessBackend(ad, DIGITS, cfg, 2, timeout_s=3, load_timeout_s=LOAD_S)
    pid = backend.procs[0].pid
    try:
        backend.set_condition(enc.cond)
        backend.start_sequential(1, enc.x0, enc.cond, enc.step, enc.num_steps)
        box: list = []
        waiting = threading.Thread(target=lambda: box.append(_in_thread(lambda: backend.finish_sequential(1, enc.num_steps), 60)))
        waiting.start()
        time.sleep(6)  # twice timeout_s: the wait must not fire while the reference makes progress
        assert not box, f"ended while the reference was making progress: {box}"
        _stopped(pid)
        t0 = time.monotonic()
        waiting.join(70)
        got, took, hung = box[0]
        print(f"stopped during a reference: named {time.monotonic() - t0:.1f}s after SIGSTOP (timeout_s=3)")
        assert not hung, "a stopped worker was not named within 60s"
        assert isinstance(got, WorkerError) and "worker rank 1" in str(got) and "progress" in str(got), got
        assert 2 < time.monotonic() - t0 < 15
    finally:
        backend.close(error=True)
    seconds_until_gone([pid], 15)


@pytest.mark.parametrize("how", ["timeout", "ctrl-c"])
def test_a_worker_stopped_before_the_conditioning_is_named_or_interrupted(how):
    """The conditioning (32 MB here, more than a socket buffer) goes out in set_condition, with a
    deadline: a stopped worker is named within timeout_s, and Ctrl-C ends the wait at once."""
    ad = DigitsModel(digits_cfg())
    enc = ad.encode("digit 1", 0)
    cond = {**enc.cond, "padding": torch.zeros(8 << 20)}
    backend = ProcessBackend(ad, DIGITS, digits_cfg(), 2, timeout_s=3 if how == "timeout" else 120, load_timeout_s=LOAD_S)
    pid = backend.procs[0].pid
    try:
        _stopped(pid)
        t0 = time.monotonic()
        if how == "timeout":
            def cond_and_round():
                backend.set_condition(cond)
                return backend.velocity(torch.stack([enc.x0] * 2), torch.tensor([0, 1]))

            got, took, hung = _in_thread(cond_and_round, 60)
            print(f"stopped worker, conditioning: named {took:.1f}s later (timeout_s=3)")
            assert not hung and isinstance(got, WorkerError) and "worker rank 1" in str(got), got
            assert took < 15
        else:
            timer = threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGINT))
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                backend.set_condition(cond)
                backend.velocity(torch.stack([enc.x0] * 2), torch.tensor([0, 1]))
            took = time.monotonic() - t0
            print(f"stopped worker, conditioning: Ctrl-C took effect {took - 2:.1f}s after it was sent")
            assert took < 10
    finally:
        backend.close(error=True)
    seconds_until_gone([pid], 15)


def _child(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.liveness_child", str(tmp_path)], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    assert line.startswith("PIDS "), line + proc.stderr.read()
    pids = [int(p) for p in line.split()[1:]]
    wait_for(lambda: (tmp_path / "rank2").exists(), 120, "a worker hung in its round")
    return proc, pids


def _shm(pid: int) -> list[str]:
    return [f for f in os.listdir("/dev/shm") if f.startswith(f"chords-{pid}-")] if os.path.isdir("/dev/shm") else []


def test_rank_0_killed_mid_round_leaves_no_shared_memory_file(tmp_path):
    """The files are unlinked once every worker has mapped them, before the first round."""
    proc, pids = _child(tmp_path)
    try:
        proc.kill()
        proc.wait()
        left = _shm(pids[0])
        for f in left:
            os.unlink(os.path.join("/dev/shm", f))
        assert not left, f"left behind: {left}"
        seconds_until_gone(pids[1:], 15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def test_no_worker_outlives_a_stopped_rank_0_by_more_than_10s(tmp_path):
    """Rank 0 stopped (its sockets open, its process alive): the workers see its heartbeat stop."""
    proc, pids = _child(tmp_path)
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        took = seconds_until_gone(pids[1:], 30)
        print(f"rank 0 stopped: every worker gone {time.monotonic() - t0:.1f}s later")
        assert took < 14  # 8 s of silence, plus a loaded machine's slack
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGCONT)
        proc.communicate()
    assert not any(alive(p) for p in pids)


def test_teardown_is_bounded():
    """What close() does with destroy_process_group (which can hang on a pending NCCL receive)."""
    from chords.backends.liveness import bounded

    t0 = time.monotonic()
    assert bounded(lambda: time.sleep(60), 1.0, "a hanging call") is False
    assert time.monotonic() - t0 < 5
    assert bounded(lambda: None, 1.0, "a quick call") is True
