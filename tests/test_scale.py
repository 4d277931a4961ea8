"""K cores on any number of ranks, micro-batches, torchrun across nodes (on loopback, gloo).

Bitwise comparisons use the embedded analytic models, whose velocity is exact under batching
(digits: float64 per row, rounded once; gaussian: elementwise): there, one batched forward per
rank equals the per-state loop of ``hardware=local`` bit for bit. For networks whose kernels
change with the batch size, ``hardware.max_batch=1`` gives every rank the per-state loop, and
``hardware=batched`` with the same micro-batch shapes is the matching single-process reference.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from baselines import SRDS, ParaDIGMS
from chords import CHORDS, sample
from chords.buffers import checking
from chords.backends import LocalBackend, ProcessBackend
from chords.backends.processes import share_cap, shares
from chords.config import ConfigError, validate
from chords.models.digits import DigitsModel
from chords.runner import run
from tests.conftest import ROOT, cli_env, compose

DIGITS = {"model_name": "digits", "height": 16, "width": 16, "num_inference_steps": 24, "dtype": "float32", "shift": 1.0}
ALGOS = {
    "chords-k2": CHORDS(2, [0, 8]),
    "chords-k4": CHORDS(4, [0, 4, 8, 16]),
    "chords-k8": CHORDS(8, [0, 2, 4, 6, 8, 12, 16, 20]),
    "paradigms-k8": ParaDIGMS(num_cores=8, tolerance=0.05),
    "srds-k8": SRDS(num_cores=8),
}


def test_shares_are_even_consecutive_and_cover_the_round():
    for b in range(1, 20):
        for w in range(1, 9):
            parts = shares(b, w)
            sizes = [hi - lo for lo, hi in parts]
            assert parts[0][0] == 0 and parts[-1][1] == b and all(parts[i][1] == parts[i + 1][0] for i in range(w - 1))
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True) and sizes[0] >= 1
            assert max(sizes) <= share_cap(b, w)
    assert shares(8, 3) == [(0, 3), (3, 6), (6, 8)]


def _outputs(backend, ad, enc) -> dict[str, torch.Tensor]:
    out = {}
    with backend:
        backend.set_condition(enc.cond)
        for name, algo in ALGOS.items():
            res = sample(algo, backend.velocity, enc.x0, enc.step, enc.num_steps)
            out[name] = torch.stack([h.x for h in res.hits])
    return out


@pytest.fixture(scope="module")
def local_outputs():
    ad = DigitsModel(DIGITS)
    enc = ad.encode("a handwritten digit 7", 42)
    return ad, enc, _outputs(LocalBackend(ad, "loop"), ad, enc)


@pytest.mark.parametrize("world,max_batch,shm", [(2, 3, True), (4, None, False)])
def test_k_cores_on_fewer_ranks_equal_local_bitwise(local_outputs, world, max_batch, shm):
    """K = 2, 4, 8 on 2 ranks (micro-batches of 3, shared memory) and on 4 ranks (shares of 2
    in one forward, sockets)."""
    ad, enc, ref = local_outputs
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    backend = ProcessBackend(ad, "chords.models.digits.DigitsModel", DIGITS, world, timeout_s=60, num_cores=8,
                             max_batch=max_batch, shared_memory=shm)
    got = _outputs(backend, ad, enc)
    assert backend.bytes_total > 0 and backend.shared_memory == shm
    for name in ALGOS:
        assert torch.equal(got[name], ref[name]), name
    assert not backend.procs or all(not p.is_alive() for p in backend.procs)
    if os.path.isdir("/dev/shm"):  # the shared slots are unlinked once mapped
        # this process's files (tests in other pytest-xdist workers make their own meanwhile)
        assert not {f for f in set(os.listdir("/dev/shm")) - before if f.startswith(f"chords-{os.getpid()}-")}


def test_rounds_go_through_shared_memory_both_ways_and_follow_the_buffer_rule(local_outputs):
    """sample() stacks each round into the backend's shared state file (ProcessBackend.stage),
    so the backend copies no state, and the backend returns the round's velocities as they lie
    in a shared velocity area (rank 0's share copied in beside the workers'; the two areas take
    turns). The buffer rule (chords.buffers) holds: a round's velocities are unchanged until the
    next call, and with the rule checked (what is no longer valid turned NaN) every output is
    still bitwise local's."""
    ad, enc, ref = local_outputs
    with ProcessBackend(ad, "chords.models.digits.DigitsModel", DIGITS, 2, timeout_s=60, num_cores=8) as backend:
        backend.set_condition(enc.cond)
        in_file, in_area = [], []

        def plain(xs, steps):
            slots = backend._slots
            in_file.append((xs.shape[0], slots is not None and xs.data_ptr() == slots.bufs[0].data_ptr()))
            v = backend.velocity(xs, steps)
            slots = backend._slots
            in_area.append(xs.shape[0] >= 2 and slots is not None
                           and v.data_ptr() in (slots.bufs[1].data_ptr(), slots.bufs[2].data_ptr()))
            return v

        plain.stage = backend.stage
        res = sample(ALGOS["chords-k8"], plain, enc.x0, enc.step, enc.num_steps)
        assert torch.equal(torch.stack([h.x for h in res.hits]), ref["chords-k8"])
        # every round with a share for rank 1 (b >= 2), once the files exist (made in round 2)
        assert all(staged for b, staged in in_file[2:] if b >= 2) and sum(s for _, s in in_file) >= res.rounds // 2
        assert sum(in_area) >= res.rounds // 2
        previous: list[tuple[torch.Tensor, torch.Tensor]] = []

        def checking_previous(xs, steps):
            if previous:  # the last round's velocities, as returned, until this call
                assert torch.equal(*previous.pop())
            v = backend.velocity(xs, steps)
            previous.append((v, v.clone()))
            return v

        checking_previous.stage = backend.stage
        with checking():
            res = sample(ALGOS["chords-k8"], checking_previous, enc.x0, enc.step, enc.num_steps)
        assert torch.equal(torch.stack([h.x for h in res.hits]), ref["chords-k8"])


def test_no_room_in_shared_memory_falls_back_to_sockets(local_outputs, monkeypatch, caplog):
    """A /dev/shm too small for the slots (Docker's default is 64 MB) is found when rank 0
    reserves them: the rounds cross the sockets, with one warning, and nothing is left behind."""
    import errno

    from chords.backends import processes

    def no_room(paths, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(processes, "_reserve", no_room)
    ad, enc, ref = local_outputs
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    with caplog.at_level("WARNING", logger="chords.backends.processes"):
        backend = ProcessBackend(ad, "chords.models.digits.DigitsModel", DIGITS, 2, timeout_s=60, num_cores=8)
        with backend:
            backend.set_condition(enc.cond)
            res = sample(ALGOS["chords-k8"], backend.velocity, enc.x0, enc.step, enc.num_steps)
            assert backend._slots is None and backend.bytes_total > 0
    assert torch.equal(torch.stack([h.x for h in res.hits]), ref["chords-k8"])
    assert any("no room in shared memory" in r.getMessage() for r in caplog.records)
    if os.path.isdir("/dev/shm"):
        # this process's files (tests in other pytest-xdist workers make their own meanwhile)
        assert not {f for f in set(os.listdir("/dev/shm")) - before if f.startswith(f"chords-{os.getpid()}-")}


def test_reserving_shared_memory_leaves_nothing_when_it_fails(tmp_path, monkeypatch):
    from chords.backends import processes

    calls = []

    def fallocate(fd, offset, size):
        calls.append(size)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", fallocate, raising=False)
    paths = tuple(str(tmp_path / name) for name in ("a", "b", "c"))
    with pytest.raises(OSError, match="No space"):
        processes._reserve(paths, 1 << 20)
    assert not list(tmp_path.iterdir()) and calls == [1 << 20, 1 << 20]


@pytest.mark.parametrize("max_batch", [1, 3, None])
def test_batched_with_max_batch_equals_local_bitwise(local_outputs, max_batch):
    ad, enc, ref = local_outputs
    got = _outputs(LocalBackend(ad, "batched", max_batch), ad, enc)
    for name in ALGOS:
        assert torch.equal(got[name], ref[name]), name


def test_micro_batches_split_the_forward():
    calls: list[int] = []

    class Counting(DigitsModel):
        def velocity(self, xs, steps, cond):
            calls.append(xs.shape[0])
            return super().velocity(xs, steps, cond)

    ad = Counting(DIGITS)
    enc = ad.encode("a handwritten digit 3", 1)
    be = LocalBackend(ad, "batched", max_batch=3)
    be.set_condition(enc.cond)
    be.velocity(torch.stack([enc.x0] * 8), torch.zeros(8, dtype=torch.long))
    assert calls == [3, 3, 2]


def test_world_size_is_min_of_ngpu_and_cores(monkeypatch):
    monkeypatch.chdir(ROOT)
    for extra, ws in ((["ngpu=4", "algo.num_cores=8"], 4), (["ngpu=2", "algo.num_cores=8"], 2), (["ngpu=8", "algo.num_cores=2"], 2)):
        cfg = compose(["hardware=cpu", "model.num_inference_steps=20", *extra])
        assert validate(cfg, check_output=False).world_size == ws
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="hardware=multinode runs under torchrun"):
        validate(compose(["hardware=multinode"]), check_output=False)
    cfg = compose(["hardware=cpu", "hardware.max_batch=0"])
    with pytest.raises(ConfigError, match="hardware.max_batch 0 is invalid"):
        validate(cfg, check_output=False)


def test_cli_eight_cores_on_two_processes_equal_local(tmp_path, monkeypatch):
    """``ngpu=2 algo.num_cores=8``: two processes, 8 cores, the output of ``hardware=local``."""
    monkeypatch.chdir(ROOT)
    # the analytic model: exact under batching (a trained network's last bits follow the batch shape, README)
    common = ["model=digits-exact", "model.num_inference_steps=20", "algo.num_cores=8", "algo.init_t=0-2-4-6-8-10-12-16",
              "reference=false", "prompt_file=prompts/digits_demo.txt"]
    cpu = run(compose([f"output_base_path={tmp_path / 'cpu'}", "hardware=cpu", "ngpu=2", *common]))
    local = run(compose([f"output_base_path={tmp_path / 'local'}", "hardware=local", *common]))
    for (a, _), (b, _) in zip(cpu, local):
        s = json.loads((a.folder / "stats.json").read_text())
        assert (s["world_size"], s["num_cores"], s["hardware"]) == (2, 8, "cpu")
        assert torch.equal(a.output, b.output)
        assert torch.equal(load_file(str(a.folder / "latents.safetensors"))["output"], b.output)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_torchrun_nodes(out, common: list[str]) -> list[tuple[int, str, str]]:
    """Two torchrun invocations, --nnodes 2 with node ranks 0 and 1, 2 processes each, on 127.0.0.1."""
    port = _free_port()
    env = cli_env()
    env["OMP_NUM_THREADS"] = "1"
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(port), "run_image_mp.py", "hardware=multinode",
               "hardware.timeout_s=120", "hardware.load_timeout_s=240", f"output_base_path={out}", *common]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True))
    try:
        results = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    return [(p.returncode, stdout, stderr) for p, (stdout, stderr) in zip(procs, results)]


def test_torchrun_two_nodes_on_loopback_equal_single_process(tmp_path):
    """Two torchrun invocations (--nnodes 2, node ranks 0 and 1, 2 processes each, gloo on
    127.0.0.1) run a small job; only global rank 0 writes, and its output equals hardware=local.
    Run again, everything is complete: rank 0 lets the other ranks go and all exit at once."""
    common = ["model=gaussian", "model.num_inference_steps=12", "algo.num_cores=6", "algo.init_t=0-1-2-4-6-8",
              "prompt_file=prompts/digits_demo.txt", "reference=false", "summary=true"]
    out = tmp_path / "multi"
    results = _two_torchrun_nodes(out, common)
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    assert "wall_s" in results[0][1] and "wall_s" not in results[1][1]  # only rank 0 reports
    folders = sorted(out.glob("gaussian/chords-k6-*/*"))
    assert len(folders) == 4 and not list(out.rglob("*.tmp-*"))
    local = run(compose([f"output_base_path={tmp_path / 'local'}", "hardware=local", *common]))
    by_prompt = {o.prompt: o.output for o, _ in local}
    for f in folders:
        s = json.loads((f / "stats.json").read_text())
        assert (s["hardware"], s["world_size"], s["num_cores"]) == ("multinode", 4, 6)
        assert torch.equal(load_file(str(f / "latents.safetensors"))["output"], by_prompt[s["prompt"]])
    t0 = time.monotonic()
    for code, _, stderr in _two_torchrun_nodes(out, common):
        assert code == 0, stderr[-3000:]
    assert time.monotonic() - t0 < 200 and sorted(out.glob("gaussian/chords-k6-*/*")) == folders


def test_references_spread_over_ranks_equal_references_on_rank_0(tmp_path, monkeypatch, caplog):
    """reference=true on 3 ranks: 4 references, 3 at a time (ranks 0, 1, 2, then rank 0), with
    the same folders (identity: hardware local, world size 1) and bitwise the same latents as
    references made in-process on rank 0 (hardware=local)."""
    monkeypatch.chdir(ROOT)
    caplog.set_level("INFO", logger="chords.runner")
    common = ["model.num_inference_steps=16", "algo.num_cores=3", "algo.init_t=0-4-8", "reference=true",
              "prompt_file=prompts/digits_demo.txt"]
    spread = run(compose([f"output_base_path={tmp_path / 'cpu'}", "hardware=cpu", "ngpu=3", *common]))
    on_ranks = sorted(r.message.split("sequential reference on ")[1][:6] for r in caplog.records if "sequential reference on rank" in r.message)
    assert on_ranks == ["rank 1", "rank 2"]
    local = run(compose([f"output_base_path={tmp_path / 'local'}", "hardware=local", *common]))
    assert len(spread) == 4
    for (_, a), (_, b) in zip(spread, local):
        assert a.folder.relative_to(tmp_path / "cpu") == b.folder.relative_to(tmp_path / "local")
        sa, sb = (json.loads((f.folder / "stats.json").read_text()) for f in (a, b))
        assert (sa["hardware"], sa["world_size"], sa["rounds"], sa["key"]) == ("local", 1, 16, sb["key"])
        la, lb = (load_file(str(f.folder / "latents.safetensors")) for f in (a, b))
        assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)
        assert len(sa["hits"]) == 1 and sa["hits"][0]["wall_s"] > 0
