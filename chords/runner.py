"""prompts -> adapter.encode -> sample(...) -> adapter.decode -> run folder.

One timer for every algorithm, sequential included: ``sample_s`` is the wall time of
:func:`chords.core.sample` around the backend's velocity calls, hits are stamped from the
same clock. With ``reference=true`` each prompt is also sampled sequentially in-process, into
its own run folder, so speedup and latent RMSE can be reported (and eval can pair them).
"""
from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from tqdm.auto import tqdm

import chords
from chords.backends import LocalBackend, ProcessBackend, thread_setting
from chords.backends.processes import release_torchrun_ranks, serve_torchrun, torchrun_env
from chords.config import RunSpec, validate
from chords.core import Hit, SampleResult, Sequential, sample
from chords.latents import latent_rmse
from chords.sysinfo import cuda_info, cuda_summary, peak_rss_gb
from chords.models.base import Adapter, Encoded
from chords.config import CONFIG_DIR
from chords.rundir import (
    FolderLock,
    atomic_folder,
    clean_partial,
    digest,
    is_complete,
    run_folder,
    run_identity,
    save_latents,
    write_json,
)

log = logging.getLogger("chords.runner")

_PACKAGES = ("torch", "diffusers", "transformers", "hydra-core", "numpy", "safetensors", "open_clip_torch")


@dataclass
class Outcome:
    """What one (prompt, algorithm) produced, for the summary table."""

    prompt: str
    folder: Path
    rounds: int
    output_round: int
    nfe: int
    sample_s: float
    output: torch.Tensor | None
    skipped: bool = False


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "chords": chords.__version__}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _device(cfg: DictConfig) -> torch.device:
    """Rank 0's device: ``cuda:0``, or ``cuda:LOCAL_RANK`` under torchrun."""
    dev = cfg.hardware.get("device", "cpu")
    env = torchrun_env() if cfg.hardware.get("launcher", "spawn") == "torchrun" else None
    return torch.device(f"cuda:{env['local_rank'] if env else 0}" if dev == "cuda" else dev)


class Clock:
    """Seconds since ``start()``; on CUDA it synchronises the device before every reading, so a
    reading never stops the clock before queued kernels (the velocities of a round, the steps
    of the algorithm) have finished."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.t0 = 0.0

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        self.t0 = self.now()

    def elapsed(self) -> float:
        return self.now() - self.t0


def device_names(device: torch.device, world_size: int) -> list[str]:
    """What each rank computes on: the GPU's name (ranks r on cuda:r) or the CPU's."""
    if device.type == "cuda":
        return [torch.cuda.get_device_name(r % max(torch.cuda.device_count(), 1)) for r in range(world_size)]
    cpu = platform.processor() or platform.machine() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [cpu] * world_size


def reference_algo() -> dict:
    """The sequential algorithm group, as ``algo=sequential`` composes it (a reference run and a
    user's ``algo=sequential`` run with the same settings share one identity and one folder)."""
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "algo" / "sequential.yaml"), resolve=True)


def reference_hardware(cfg: DictConfig) -> dict:
    """Where in-process references run: the local loop backend on rank 0's device, as
    ``hardware=local`` resolves on this machine."""
    hw = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "hardware" / "local.yaml"), resolve=True)
    hw["device"] = str(cfg.hardware.get("device", "cpu"))
    if "threads_per_process" in cfg.hardware:  # the reference computes with the run's thread setting
        hw["threads_per_process"] = cfg.hardware.threads_per_process
    return hw


def make_backend(cfg: DictConfig, spec: RunSpec, adapter: Adapter):
    hw = cfg.hardware
    max_batch = hw.get("max_batch")
    if hw.backend == "local":
        return LocalBackend(adapter, hw.get("mode", "loop"), max_batch)
    return ProcessBackend(
        adapter,
        cfg.model.adapter,
        OmegaConf.to_container(cfg.model, resolve=True),
        spec.world_size,
        device_type=hw.get("device", "cpu"),
        dist_backend=hw.get("dist_backend", "gloo"),
        timeout_s=float(hw.get("timeout_s", 120)),
        load_timeout_s=float(hw.get("load_timeout_s", 600)),
        threads_per_process=int(hw.get("threads_per_process", 1)),
        num_cores=int(spec.algorithm.num_cores),
        max_batch=max_batch,
        launcher=str(hw.get("launcher", "spawn")),
    )


@dataclass
class RunContext:
    """What one (prompt, algorithm) run is, beyond the prompt's encoding: its identity, the
    algorithm group written to stats.json, where it runs and what the process measured."""

    identity: dict
    algo_cfg: dict
    hardware: str
    world_size: int
    devices: list[str]
    warmup: dict
    full_return: bool
    desc: str
    timed_after: str = "warm-up"  # what this process sampled just before (the run and its reference are both warm)


def sample_prompt(
    cfg: DictConfig,
    adapter: Adapter,
    backend: Any,
    algorithm: Any,
    stop: Any,
    enc: Encoded,
    encode_s: float,
    folder: Path,
    ctx: RunContext,
) -> Outcome:
    """Sample one prompt with one algorithm and write its run folder atomically."""
    prompt = ctx.identity["prompt"]
    backend.set_condition(enc.cond)
    stamps: list[float] = []
    evals = [0]  # velocity evaluations so far; each hit records the count at its arrival
    hit_nfe: list[int] = []
    bar = tqdm(total=enc.num_steps, desc=ctx.desc, unit="round", leave=False, disable=None)
    clock = Clock(adapter.device)

    def velocity(xs, steps):
        v = backend.velocity(xs, steps)
        evals[0] += int(xs.shape[0])
        bar.update(1)
        return v

    velocity.stage = getattr(backend, "stage", None)  # sample() stacks into the backend's shared memory

    def on_hit(hit: Hit) -> None:
        stamps.append(clock.elapsed())
        hit_nfe.append(evals[0])

    clock.start()
    result = sample(algorithm, velocity, enc.x0, enc.step, enc.num_steps, stop=stop, callback=on_hit)
    sample_s = clock.elapsed()
    bar.close()
    return write_run(cfg, adapter, algorithm, result, stamps, sample_s, enc, encode_s, folder, ctx, hit_nfe)


def write_run(
    cfg: DictConfig,
    adapter: Adapter,
    algorithm: Any,
    result: SampleResult,
    stamps: list[float],
    sample_s: float,
    enc: Encoded,
    encode_s: float,
    folder: Path,
    ctx: RunContext,
    hit_nfe: list[int] | None = None,
) -> Outcome:
    """Decode ``result`` and write its run folder atomically (``stamps``: each hit's wall time;
    ``hit_nfe``: evaluations made when each hit arrived, default one per round as sequential)."""
    if hit_nfe is None:
        hit_nfe = [h.round for h in result.hits]
    prompt = ctx.identity["prompt"]
    with atomic_folder(folder, overwrite=bool(cfg.overwrite)) as tmp:
        t1 = time.perf_counter()
        stem = "video" if adapter.media == "video" else "image"
        media = adapter.decode(result.output, tmp, stem)
        hit_media: list[str | None] = [None] * len(result.hits)
        if ctx.full_return:
            for i, h in enumerate(result.hits):
                hit_media[i] = adapter.decode(h.x, tmp, f"{stem}_hit{i:02d}")[0]
        decode_s = time.perf_counter() - t1
        out_hit = result.hits[result.stopped_at]
        latents = {f"hit_{i:02d}": h.x for i, h in enumerate(result.hits)}
        latents["output"] = result.output
        save_latents(tmp / "latents.safetensors", latents)
        stats = {
            "format": 2,
            "key": digest(ctx.identity),
            "identity": ctx.identity,
            "prompt": prompt,
            "seed": int(cfg.model.seed),
            "model": str(cfg.model.model_name),
            "media": adapter.media,
            "algorithm": ctx.algo_cfg["algo_name"],
            "algo_tag": folder.parent.name,
            "algo": ctx.algo_cfg,
            "num_cores": int(algorithm.num_cores),
            "num_steps": int(enc.num_steps),
            "hardware": ctx.hardware,
            "world_size": ctx.world_size,
            "devices": ctx.devices,
            "warmup": ctx.warmup,
            "timed_after": ctx.timed_after,
            "hits": [
                {"index": i, "core": h.core, "round": h.round, "nfe": hit_nfe[i], "wall_s": stamps[i], "latent": f"hit_{i:02d}",
                 "media": hit_media[i]}
                for i, h in enumerate(result.hits)
            ],
            "rounds": result.rounds,
            "nfe": result.nfe,
            "output_index": result.stopped_at,
            "output_round": out_hit.round,
            "timing": {"encode_s": encode_s, "sample_s": sample_s, "decode_s": decode_s, "total_s": encode_s + sample_s + decode_s},
            "latent_shape": list(result.output.shape),
            "latent_dtype": str(result.output.dtype).removeprefix("torch."),
            "media_files": media,
            "fps": enc.meta.get("fps"),
            "encode_meta": enc.meta,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "versions": versions(),
            "platform": cuda_info(),  # torch's CUDA build, the driver, the GPUs (chords.sysinfo)
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(tmp / "stats.json", stats)
    return Outcome(prompt, folder, result.rounds, out_hit.round, result.nfe, sample_s, result.output)


def _resolved_algo(cfg: DictConfig, spec: RunSpec) -> dict:
    algo = OmegaConf.to_container(cfg.algo, resolve=True)
    if algo["algo_name"] == "chords":
        algo["init_t"] = spec.algorithm.resolve_init_t(spec.num_steps)
    if algo["algo_name"] == "epd" and algo.get("table") is not None:
        from chords.epd_tables import resolve_path, table_digest

        # the table's content, not only its name: a refitted table never shares a run folder
        algo["table_sha1"] = table_digest(resolve_path(algo["table"]))
    return algo


def warm_up(backend: Any, enc: Encoded, num_cores: int, clock: Clock) -> dict:
    """Forwards on every rank before the first prompt is timed: a round of 1, 2, ..., K copies of
    ``x0`` at grid index 0 (the local loop: one state), so every batch size a run can use (a
    CHORDS round grows from 1 to K states, ParaDIGMS' window shrinks at the end, a rank's share
    is any size up to ceil(K / W)) has had its kernels chosen, caches filled and memory
    allocated before any clock runs, for the run and its sequential reference alike."""
    backend.set_condition(enc.cond)
    top = 1 if isinstance(backend, LocalBackend) and backend.mode == "loop" else max(1, int(num_cores))
    sizes = list(range(1, top + 1))
    clock.start()
    with torch.no_grad():
        for b in sizes:
            backend.velocity(torch.stack([enc.x0] * b), torch.zeros(b, dtype=torch.long))
    return {"states": top, "batch_sizes": sizes, "seconds": clock.elapsed()}


@dataclass
class Job:
    """One prompt: its run folder and, with ``reference=true``, its sequential reference's."""

    prompt: str
    folder: Path
    identity: dict
    ref: Path | None = None
    ref_identity: dict | None = None

    def folders(self) -> list[Path]:
        return [self.folder] + ([self.ref] if self.ref is not None else [])


class _Session:
    """The loaded model and backend, sampling jobs one at a time into a shared output tree.

    Before writing a folder the session takes its :class:`chords.rundir.FolderLock`. A folder
    another live run is writing (its lock is held) is *skipped* on the first pass and *waited
    for* at the end (:meth:`do` with ``wait=True``): when that run finishes it, it is read back;
    when that run dies (the lock frees with the folder still incomplete), it is recomputed here.
    """

    def __init__(self, cfg: DictConfig, spec: RunSpec, adapter: Adapter, backend: Any, device: torch.device,
                 algo_cfg: dict, seq_cfg: dict):
        self.cfg, self.spec, self.adapter, self.backend, self.device = cfg, spec, adapter, backend, device
        self.algo_cfg, self.seq_cfg = algo_cfg, seq_cfg
        self.ref_backend = LocalBackend(adapter, "loop")
        self.overwrite = bool(cfg.overwrite)
        self.root = Path(cfg.output_base_path)
        self.full_return = bool(cfg.algo.get("full_return", False))
        self.warmup: dict | None = None
        self.last_timed = "warm-up"  # the sampling this process timed last (stats.json: timed_after)
        self.rank_timed: dict[int, str] = {}  # the same for each worker rank's references

    def _warm(self, enc: Encoded, clock: Clock) -> None:
        """The warm-up (:func:`warm_up`), once per session, before the first timed sampling."""
        if self.warmup is None:
            self.warmup = warm_up(self.backend, enc, self.spec.algorithm.num_cores, clock)
            log.info("warm-up rounds of %s state(s): %.3fs", self.warmup["batch_sizes"], self.warmup["seconds"])

    def _timed(self, ctx: RunContext) -> RunContext:
        """``ctx`` stamped with what was timed before it; it becomes the last timed."""
        ctx.timed_after, self.last_timed = self.last_timed, ctx.desc
        return ctx

    def _needs(self, folder: Path) -> bool:
        return self.overwrite or not is_complete(folder)

    def do(self, job: Job, wait: bool) -> tuple[Outcome, Outcome | None] | None:
        """Sample what ``job`` still needs; None when a folder is busy and ``wait`` is False."""
        locks: dict[Path, FolderLock] = {}
        try:
            for folder in job.folders():
                if not self._needs(folder):
                    continue
                lock = FolderLock(folder, self.root)
                if not lock.acquire(blocking=False):
                    if not wait:
                        log.info("busy (another run is writing it): %s; coming back to it at the end", folder)
                        return None
                    log.info("waiting for another run to finish %s", folder)
                    lock.acquire(blocking=True)
                    if is_complete(folder):  # the other run finished it: use it, even with overwrite
                        lock.release()
                        continue
                elif not self.overwrite and is_complete(folder):  # finished between the check and the lock
                    lock.release()
                    continue
                locks[folder] = lock
            if not locks:
                log.info("skip (complete): %s", job.folder)
                return _skipped(job.prompt, job.folder), (_skipped(job.prompt, job.ref) if job.ref else None)
            return self._sample(job, locks)
        finally:
            for lock in locks.values():
                lock.release()

    def _sample(self, job: Job, locks: dict[Path, FolderLock]) -> tuple[Outcome, Outcome | None]:
        cfg, spec = self.cfg, self.spec
        clock = Clock(self.device)
        clock.start()
        with torch.no_grad():
            enc = self.adapter.encode(job.prompt, int(cfg.model.seed))
        encode_s = clock.elapsed()
        self._warm(enc, clock)
        if job.folder in locks:
            clean_partial(job.folder)
            ctx = RunContext(job.identity, self.algo_cfg, str(cfg.hardware.name), self.backend.world_size,
                             device_names(self.device, self.backend.world_size), self.warmup, self.full_return, spec.algo_tag)
            main = sample_prompt(cfg, self.adapter, self.backend, spec.algorithm, spec.stop, enc, encode_s, job.folder,
                                 self._timed(ctx))
            log.info("%s: %d rounds (output at %d), %d nfe, %.2fs -> %s", job.prompt[:60], main.rounds, main.output_round,
                     main.nfe, main.sample_s, job.folder)
        else:
            main = _skipped(job.prompt, job.folder)
        refo = None
        if job.ref is not None:
            if job.ref in locks:
                clean_partial(job.ref)
                ctx = RunContext(job.ref_identity or {}, self.seq_cfg, "local", 1, device_names(self.device, 1),
                                 self.warmup, False, "sequential")
                refo = sample_prompt(cfg, self.adapter, self.ref_backend, Sequential(), None, enc, encode_s, job.ref,
                                     self._timed(ctx))
            else:
                refo = _skipped(job.prompt, job.ref)
        return main, refo

    def references_on_ranks(self, jobs: list[Job]) -> None:
        """The sequential references still to make, run concurrently, one per rank (rank 0
        included), before the main runs; W at a time on W ranks.

        Each is the same computation as the in-process reference (the same x0, conditioning,
        step and thread setting, one state per forward): bitwise the same output. Its timing is
        the clock of the rank that ran it; its identity stays hardware ``local``, world size 1
        (:func:`reference_hardware`): a reference is one process alone with its device, wherever
        it ran. A reference folder another run is writing is left to :meth:`do`.
        """
        start = getattr(self.backend, "start_sequential", None)
        width = int(self.backend.world_size)
        if start is None or width < 2:
            return
        todo = [j for j in jobs if j.ref is not None and self._needs(j.ref)]
        for first in range(0, len(todo), width):
            locks: dict[Path, FolderLock] = {}
            try:
                batch = []
                for job in todo[first : first + width]:
                    lock = FolderLock(job.ref, self.root)
                    if not lock.acquire(blocking=False):
                        continue
                    if not self.overwrite and is_complete(job.ref):
                        lock.release()
                        continue
                    locks[job.ref] = lock
                    batch.append(job)
                if batch:
                    self._references(batch)
            finally:
                for lock in locks.values():
                    lock.release()

    def _references(self, batch: list[Job]) -> None:
        clock = Clock(self.device)
        encs: list[tuple[Encoded, float]] = []
        for job in batch:
            clock.start()
            with torch.no_grad():
                enc = self.adapter.encode(job.prompt, int(self.cfg.model.seed))
            encs.append((enc, clock.elapsed()))
        self._warm(encs[0][0], clock)
        for rank, (enc, _) in enumerate(encs[1:], start=1):
            self.backend.start_sequential(rank, enc.x0, enc.cond, enc.step, enc.num_steps)
        names = device_names(self.device, self.backend.world_size)
        for rank, (job, (enc, encode_s)) in enumerate(zip(batch, encs)):
            clean_partial(job.ref)
            ctx = RunContext(job.ref_identity or {}, self.seq_cfg, "local", 1, [names[rank]], self.warmup, False, "sequential")
            if rank == 0:
                sample_prompt(self.cfg, self.adapter, self.ref_backend, Sequential(), None, enc, encode_s, job.ref, self._timed(ctx))
                continue
            ctx.timed_after, self.rank_timed[rank] = self.rank_timed.get(rank, "warm-up"), "sequential"
            got = self.backend.finish_sequential(rank, enc.num_steps)
            hits = [Hit(core, rnd, x.to(self.device)) for core, rnd, x in got["hits"]]
            result = SampleResult(hits, hits[got["stopped_at"]].x, got["rounds"], got["nfe"], got["stopped_at"])
            write_run(self.cfg, self.adapter, Sequential(), result, got["stamps"], got["sample_s"], enc, encode_s, job.ref, ctx)
            log.info("%s: sequential reference on rank %d, %.2fs -> %s", job.prompt[:60], rank, got["sample_s"], job.ref)


def plan_jobs(cfg: DictConfig, spec: RunSpec) -> list[Job]:
    """One Job per prompt: its run folder and, with ``reference``, its sequential reference's
    (what :func:`run` samples or skips; ``dry_run`` lists them without sampling)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    algo_cfg = _resolved_algo(cfg, spec)
    want_ref = bool(cfg.get("reference", False)) and algo_cfg["algo_name"] != "sequential"
    base = Path(cfg.output_base_path)
    ref_hw = reference_hardware(cfg)
    jobs = []
    for prompt in spec.prompts:
        ident = run_identity(config, prompt, algo_cfg, config["hardware"], spec.world_size)
        job = Job(prompt, run_folder(base, cfg.model.model_name, spec.algo_tag, ident), ident)
        if want_ref:
            job.ref_identity = run_identity(config, prompt, reference_algo(), ref_hw, 1)
            job.ref = run_folder(base, cfg.model.model_name, "sequential", job.ref_identity)
        jobs.append(job)
    return jobs


def run(cfg: DictConfig, spec: RunSpec | None = None) -> list[tuple[Outcome, Outcome | None]]:
    """Run every prompt; return (outcome, sequential reference or None) per prompt.

    Folders are keyed by :func:`chords.rundir.run_identity` of the resolved config: a complete
    folder is skipped (unless ``overwrite``) only when everything that can change its sample or
    its timing is the same. Several runs may share an output tree (see :class:`_Session`).
    """
    spec = spec or validate(cfg)
    if cfg.hardware.get("launcher", "spawn") == "torchrun" and (torchrun_env() or {}).get("rank", 0) != 0:
        serve_rank(cfg, spec)  # a torchrun worker rank: serve rank 0's rounds, write nothing
        return []
    algo_cfg = _resolved_algo(cfg, spec)
    seq_cfg = reference_algo()
    want_ref = bool(cfg.get("reference", False)) and algo_cfg["algo_name"] != "sequential"
    jobs = plan_jobs(cfg, spec)
    pending = [j for j in jobs if any(cfg.overwrite or not is_complete(f) for f in j.folders())]
    log.info("%d prompt(s), %d to sample (%s, %s, K=%d, N=%d)", len(jobs), len(pending), cfg.model.model_name,
             spec.algo_tag, spec.algorithm.num_cores, spec.num_steps)
    if not pending:
        if cfg.hardware.get("launcher", "spawn") == "torchrun":  # the other ranks wait for rank 0: let them go
            release_torchrun_ranks(str(cfg.hardware.get("dist_backend", "gloo")), int(spec.algorithm.num_cores),
                                   float(cfg.hardware.get("load_timeout_s", 1800)))
        return [(_skipped(j.prompt, j.folder), _skipped(j.prompt, j.ref) if j.ref else None) for j in jobs]

    log.info("%s", cuda_summary())
    if spec.hardware_note:
        log.info("%s", spec.hardware_note)
    t_load = time.perf_counter()
    device = _device(cfg)
    adapter = spec.adapter_cls(cfg.model, device, "full")
    results: dict[int, tuple[Outcome, Outcome | None]] = {}
    hw = cfg.hardware
    threads = thread_setting(int(hw.get("threads_per_process", 1)), str(hw.get("device", "cpu")))
    with threads, make_backend(cfg, spec, adapter) as backend:  # every rank computes with the same threads
        log.info("model and %d process(es) ready in %.1fs; peak host memory of rank 0: %.1f GB", backend.world_size,
                 time.perf_counter() - t_load, peak_rss_gb())
        session = _Session(cfg, spec, adapter, backend, device, algo_cfg, seq_cfg)
        if want_ref:
            session.references_on_ranks(jobs)
        busy = []
        for i, job in enumerate(tqdm(jobs, desc="prompts", unit="prompt", disable=None)):
            got = session.do(job, wait=False)
            if got is None:
                busy.append(i)
            else:
                results[i] = got
        for i in busy:
            results[i] = session.do(jobs[i], wait=True)
    return [results[i] for i in range(len(jobs))]


def serve_rank(cfg: DictConfig, spec: RunSpec) -> None:
    """A torchrun rank other than 0: load the denoiser, serve every round rank 0 sends, until STOP."""
    hw = cfg.hardware
    serve_torchrun(
        cfg.model.adapter,
        OmegaConf.to_container(cfg.model, resolve=True),
        device_type=str(hw.get("device", "cpu")),
        dist_backend=str(hw.get("dist_backend", "gloo")),
        num_cores=int(spec.algorithm.num_cores),
        max_batch=hw.get("max_batch"),
        threads_per_process=int(hw.get("threads_per_process", 1)),
    )


def _skipped(prompt: str, folder: Path) -> Outcome:
    """An outcome read back from a complete run folder."""
    stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    out = load_file(str(folder / "latents.safetensors"))["output"]
    return Outcome(prompt, folder, stats["rounds"], stats["output_round"], stats["nfe"], stats["timing"]["sample_s"], out, skipped=True)


def _quality(outcomes: list[tuple[Outcome, Outcome | None]]) -> dict[Path, Any] | None:
    """Embedded-model quality of every output (chords.digitnet.score_sample), or None for other models."""
    from chords.digitnet import default_classifier, score_sample
    from chords.weights import WeightsError

    scores: dict[Path, Any] = {}
    net = None
    for o in (o for pair in outcomes for o in pair if o is not None and o.output is not None):
        try:
            meta = json.loads((o.folder / "stats.json").read_text(encoding="utf-8")).get("encode_meta") or {}
        except (OSError, ValueError):
            continue
        if meta.get("embedded") is None:
            continue
        try:
            net = net or default_classifier()
        except WeightsError as e:
            log.warning("quality column left out: %s", e)
            return None
        scores[o.folder] = score_sample(net, meta, o.output)
    return scores or None


def _verdict(score: Any) -> str:
    """'7+' (prompted class found), '1-' (another class), '7' (no class prompted); video adds the direction."""
    if score is None:
        return "-"
    from chords.digitnet import DIRECTIONS

    mark = {True: "+", False: "-", None: ""}
    text = f"{score.pred}{mark[score.correct]}"
    if score.direction >= 0:
        text += f" {DIRECTIONS[score.direction]}{mark[score.direction_correct]}"
    return text


def summary_table(outcomes: list[tuple[Outcome, Outcome | None]]) -> str:
    """rounds, speedup (sequential rounds / rounds at the output), wall seconds, latent RMSE.

    Embedded models (digits, moving-digits) add the quality metric: the digit classifier's
    class (video: majority class and measured direction) of the output and of sequential's,
    marked + when it is what the prompt named, and the class (direction) accuracy below.
    """
    quality = _quality(outcomes)
    qw = 12 if quality and any(getattr(q, "direction", -1) >= 0 for q in quality.values()) else 6
    head = f"{'prompt':<40} {'rounds':>6} {'seq':>5} {'speedup':>8} {'wall_s':>8} {'seq_s':>8} {'rmse':>10}"
    if quality:
        head += f" {'class':>{qw}} {'seq_class':>{qw}}"
    lines = [head, "-" * len(head)]
    for main, ref in outcomes:
        name = (main.prompt[:37] + "...") if len(main.prompt) > 40 else main.prompt
        q = f" {_verdict(quality.get(main.folder)):>{qw}} {_verdict(quality.get(ref.folder) if ref else None):>{qw}}" if quality else ""
        if ref is None:
            lines.append(f"{name:<40} {main.output_round:>6} {'-':>5} {'-':>8} {main.sample_s:>8.3f} {'-':>8} {'-':>10}{q}")
            continue
        rmse = latent_rmse(main.output, ref.output)
        lines.append(
            f"{name:<40} {main.output_round:>6} {ref.rounds:>5} {ref.rounds / main.output_round:>7.2f}x "
            f"{main.sample_s:>8.3f} {ref.sample_s:>8.3f} {rmse:>10.2e}{q}"
        )
    if quality:
        for what, attr, how in (("class", "correct", "digit classifier"), ("direction", "direction_correct", "centroid motion")):
            parts = []
            for label, pick in (("output", 0), ("sequential", 1)):
                got = [getattr(quality[p[pick].folder], attr) for p in outcomes
                       if p[pick] is not None and quality.get(p[pick].folder) is not None]
                got = [g for g in got if g is not None]
                if got:
                    parts.append(f"{label} {sum(got)}/{len(got)}")
            if parts:
                lines.append(f"{what} accuracy ({how} vs prompt): " + ", ".join(parts))
    return "\n".join(lines)
