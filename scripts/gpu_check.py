"""One-shot GPU check: run it once on a machine with one (or more) GPUs, from the repository root,

    python scripts/gpu_check.py            # ~3-6 min on one GPU; installs nothing

and read one line per step, ``PASS``/``FAIL``/``SKIP``, each with its number:

1. ``environment``: torch's CUDA build, the driver, the GPUs (chords.sysinfo).
2. ``nccl``: an all_reduce over NCCL (one rank per GPU, up to 2), its value and time.
3. ``bf16-matmul``: a 4096^2 bf16 matmul against float32: relative error and TFLOP/s.
4. ``defaults``: what the default command resolves to here (hardware=auto's one line).
5. ``cuda-tests``: the CUDA test tier (``pytest -m cuda tests/test_cuda*.py``), its counts.
6. ``flux-mid``: a random-initialised Flux-like transformer built from a diffusers config
   (8 double + 16 single blocks, hidden 3072, 1024 image tokens + 512 text tokens, bf16, N=50)
   behind the harness' own Flux adapter: seconds per sample for sequential and for CHORDS K=4
   batched on one GPU (0-8-16-32, output at hit 1, as the default), CUDA-synchronised; the
   forward time per batch size 1..4; CHORDS' overhead per round (its time minus its rounds'
   forwards); prompt 1 against prompt 2 (a warm-up that missed a batch size shows here).

Exit status 0 when every step that ran passed. ``--cpu-smoke`` runs the same steps on the CPU
with a tiny transformer and N=8 (NCCL and the CUDA tier skipped): a check of the script itself,
run by the test suite; its numbers say nothing about a GPU.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from chords.models.flux import FluxAdapter  # noqa: E402


@dataclass(frozen=True)
class Size:
    """The benchmark transformer and run: mid-size on a GPU, tiny for --cpu-smoke."""

    double: int
    single: int
    heads: int
    head_dim: int
    side: int  # image side in pixels = latent side (the tiny VAE does not downsample); tokens = (side/2)^2
    text_tokens: int
    steps: int
    repeats: int  # forwards per batch size when timing them


MID = Size(double=8, single=16, heads=24, head_dim=128, side=64, text_tokens=512, steps=50, repeats=10)
SMOKE = Size(double=1, single=1, heads=2, head_dim=16, side=8, text_tokens=16, steps=8, repeats=2)
ROPE = {128: [16, 56, 56], 16: [4, 4, 8]}


class MidFlux(FluxAdapter):
    """The tiny Flux pipeline (tiny text encoders and VAE) with a larger transformer, built from a
    diffusers config straight on the adapter's device (random weights, fixed seed)."""

    size: Size = MID

    def build_tiny_transformer(self, cfg):
        from diffusers import FluxTransformer2DModel

        s = self.size
        torch.manual_seed(self.tiny_seed(cfg))
        with torch.device(self.device):
            return FluxTransformer2DModel(
                patch_size=1, in_channels=4, num_layers=s.double, num_single_layers=s.single, attention_head_dim=s.head_dim,
                num_attention_heads=s.heads, joint_attention_dim=32, pooled_projection_dim=32,
                axes_dims_rope=ROPE[s.head_dim], guidance_embeds=True,
            ).to(self.dtype)


# --------------------------------------------------------------------------- reporting


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def line(self, status: str, step: str, text: str) -> None:
        self.failed += status == "FAIL"
        print(f"{status} {step}: {text}", flush=True)

    def step(self, name: str, fn: Callable[[], tuple[str, str]]) -> None:
        t0 = time.perf_counter()
        try:
            status, text = fn()
        except Exception as e:  # one step's failure must not hide the others
            status, text = "FAIL", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            traceback.print_exc(file=sys.stderr)
        self.line(status, name, f"{text} ({time.perf_counter() - t0:.1f}s)")


# --------------------------------------------------------------------------- steps


def check_environment(smoke: bool) -> tuple[str, str]:
    from chords.sysinfo import cuda_info, cuda_summary

    info = cuda_info()
    ok = info["cuda_available"] and bool(info["gpus"])
    return ("PASS" if ok or smoke else "FAIL"), cuda_summary(info) + (f", NCCL {info['nccl']}" if "nccl" in info else "")


def _nccl_rank(rank: int, world: int, port: int, out) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device(f"cuda:{rank}"))
    x = torch.full((1 << 20,), float(rank + 1), device=f"cuda:{rank}")
    dist.all_reduce(x)  # warm
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / 10 * 1e3
    if rank == 0:
        out.put((float(x[0]), ms))
    dist.destroy_process_group()


def check_nccl() -> tuple[str, str]:
    import torch.multiprocessing as mp

    from chords.backends.processes import _free_port

    world = min(2, torch.cuda.device_count())
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_nccl_rank, args=(r, world, port, q)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    if any(p.is_alive() for p in procs):
        for p in procs:
            p.kill()
        return "FAIL", f"all_reduce over {world} rank(s) did not finish in 120 s"
    if any(p.exitcode != 0 for p in procs):
        return "FAIL", f"a rank exited with {[p.exitcode for p in procs]}"
    value, ms = q.get(timeout=5)
    # ranks hold 1, 2, ... and the all_reduce (sum) is applied 11 times: the values grow as world^10 * sum
    want = float(sum(range(1, world + 1))) * world ** 10
    ok = abs(value - want) <= 1e-6 * want
    return ("PASS" if ok else "FAIL"), f"{world} rank(s), 4 MiB all_reduce {ms:.3f} ms, value {value:g} (expected {want:g})"


def check_bf16(device: torch.device) -> tuple[str, str]:
    g = torch.Generator(device="cpu").manual_seed(0)
    n = 4096 if device.type == "cuda" else 256
    a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
    ref = a.double() @ b.double()
    out = (a.bfloat16() @ b.bfloat16()).double()
    rel = float((out - ref).norm() / ref.norm())
    reps = 20 if device.type == "cuda" else 2
    ab, bb = a.bfloat16(), b.bfloat16()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        ab @ bb
    _sync(device)
    tflops = 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12
    # bf16 has 8 bits of mantissa: a product of unit-variance n x n matrices lands near 2^-9 relative
    ok = rel < 2e-2
    return ("PASS" if ok else "FAIL"), f"{n}x{n} relative error {rel:.2e} (bf16 expects ~4e-3), {tflops:.1f} TFLOP/s"


def check_defaults() -> tuple[str, str]:
    from hydra import compose, initialize_config_dir

    from chords.config import CONFIG_DIR, validate

    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="base")
    spec = validate(cfg, check_output=False)
    return "PASS", f"{spec.hardware_note or 'hardware=' + str(cfg.hardware.name)} (world size {spec.world_size}, K={spec.algorithm.num_cores})"


def check_cuda_tests() -> tuple[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rs", "tests/test_cuda.py",
                        "tests/test_cuda_backend.py"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    tail = [line for line in r.stdout.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    summary = tail[-1].strip("= ") if tail else "no summary"
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-6000:] + r.stderr[-2000:])
    return ("PASS" if r.returncode == 0 else "FAIL"), summary


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_flux(device: torch.device, size: Size) -> tuple[str, str]:
    from chords import CHORDS, CoreIndex, Sequential, sample
    from chords.backends import LocalBackend
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / "tiny-flux.yaml"), resolve=True)
    cfg.update(height=size.side, width=size.side, num_inference_steps=size.steps, max_sequence_length=size.text_tokens,
               dtype="bfloat16")
    MidFlux.size = size
    t0 = time.perf_counter()
    adapter = MidFlux(cfg, device, "full")
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in adapter.transformer.parameters())
    encs = [adapter.encode(p, 0) for p in ("a red fox in the snow", "a lighthouse at dusk")]
    tokens = encs[0].x0.shape[1]
    k = 4
    batched, loop = LocalBackend(adapter, "batched"), LocalBackend(adapter, "loop")

    # forward time per batch size (after a warm-up of each)
    fwd = {}
    x0, cond = encs[0].x0, encs[0].cond
    batched.set_condition(cond)
    with torch.no_grad():
        for b in range(1, k + 1):
            xs, st = torch.stack([x0] * b), torch.zeros(b, dtype=torch.long)
            batched.velocity(xs, st)
            _sync(device)
            times = []
            for _ in range(size.repeats):
                t = time.perf_counter()
                batched.velocity(xs, st)
                _sync(device)
                times.append(time.perf_counter() - t)
            fwd[b] = statistics.median(times)

    def timed(algo, backend, stop, enc) -> tuple[float, Any, list[int]]:
        sizes: list[int] = []
        backend.set_condition(enc.cond)

        def velocity(xs, steps):
            sizes.append(int(xs.shape[0]))
            return backend.velocity(xs, steps)

        _sync(device)
        t = time.perf_counter()
        res = sample(algo, velocity, enc.x0, enc.step, enc.num_steps, stop=stop)
        _sync(device)
        return time.perf_counter() - t, res, sizes

    chords = CHORDS(num_cores=k, init_t="preset")  # the paper's 0-8-16-32 at N=50 (scaled for the smoke's N)
    seq_s, chords_s, overhead = [], [], []
    rounds = 0
    for enc in encs:
        s, _, _ = timed(Sequential(), loop, None, enc)
        seq_s.append(s)
        c, res, sizes = timed(chords, batched, CoreIndex(1), enc)
        chords_s.append(c)
        rounds = res.rounds
        overhead.append((c - sum(fwd[b] for b in sizes)) / max(len(sizes), 1) * 1e3)
    speed = seq_s[1] / chords_s[1]
    drift = max(abs(a - b) / b for a, b in ((seq_s[0], seq_s[1]), (chords_s[0], chords_s[1])))
    text = (f"{params / 1e9:.2f}B params bf16 (built in {build_s:.0f}s), {tokens} image tokens, N={size.steps}; "
            f"forward ms by batch 1..{k}: {', '.join(f'{fwd[b] * 1e3:.1f}' for b in range(1, k + 1))}; "
            f"sequential {seq_s[0]:.2f}/{seq_s[1]:.2f} s per sample (prompt 1/2), CHORDS K={k} batched {chords_s[0]:.2f}/"
            f"{chords_s[1]:.2f} s at hit 1 ({rounds} rounds): wall speedup {speed:.2f}x; overhead "
            f"{overhead[0]:.2f}/{overhead[1]:.2f} ms per round; prompt 1 vs 2 differ by {drift * 100:.0f}%")
    ok = all(s > 0 for s in seq_s + chords_s)
    return ("PASS" if ok else "FAIL"), text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="run every step on the CPU with tiny sizes (checks the script only)")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out (environment,nccl,bf16-matmul,defaults,cuda-tests,flux-mid)")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    device = torch.device("cpu") if smoke else torch.device("cuda:0")
    report = Report()
    steps: list[tuple[str, Callable[[], tuple[str, str]]]] = [
        ("environment", lambda: check_environment(smoke)),
        ("nccl", check_nccl),
        ("bf16-matmul", lambda: check_bf16(device)),
        ("defaults", check_defaults),
        ("cuda-tests", check_cuda_tests),
        ("flux-mid", lambda: check_flux(device, SMOKE if smoke else MID)),
    ]
    if not smoke and not torch.cuda.is_available():
        report.step("environment", lambda: check_environment(False))
        print("no usable GPU: nothing else to check (use --cpu-smoke to check the script itself)", flush=True)
        return 1
    for name, fn in steps:
        if name in skip:
            report.line("SKIP", name, "--skip")
        elif smoke and name in ("nccl", "cuda-tests"):
            report.line("SKIP", name, "needs a GPU (--cpu-smoke)")
        else:
            report.step(name, fn)
    print(f"{'FAIL' if report.failed else 'PASS'} gpu_check: {report.failed} step(s) failed", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
