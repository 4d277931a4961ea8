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
from chords.backends import LocalBackend, ProcessBackend
from chords.config import RunSpec, validate
from chords.core import Hit, Sequential, sample
from chords.models.base import Adapter, Encoded
from chords.rundir import atomic_folder, clean_partial, is_complete, run_folder, save_latents, write_json

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
    dev = cfg.hardware.get("device", "cpu")
    return torch.device("cuda:0" if dev == "cuda" else dev)


def make_backend(cfg: DictConfig, spec: RunSpec, adapter: Adapter):
    hw = cfg.hardware
    if hw.backend == "local":
        return LocalBackend(adapter, hw.get("mode", "loop"))
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
    )


def sample_prompt(
    cfg: DictConfig,
    adapter: Adapter,
    backend: Any,
    algorithm: Any,
    stop: Any,
    enc: Encoded,
    encode_s: float,
    prompt: str,
    folder: Path,
    algo_cfg: dict,
    hardware: str,
    world_size: int,
    full_return: bool,
    desc: str,
) -> Outcome:
    """Sample one prompt with one algorithm and write its run folder atomically."""
    backend.set_condition(enc.cond)
    stamps: list[float] = []
    bar = tqdm(total=enc.num_steps, desc=desc, unit="round", leave=False, disable=None)

    def velocity(xs, steps):
        v = backend.velocity(xs, steps)
        bar.update(1)
        return v

    t0 = time.perf_counter()

    def on_hit(hit: Hit) -> None:
        stamps.append(time.perf_counter() - t0)

    result = sample(algorithm, velocity, enc.x0, enc.step, enc.num_steps, stop=stop, callback=on_hit)
    sample_s = time.perf_counter() - t0
    bar.close()

    with atomic_folder(folder, overwrite=bool(cfg.overwrite)) as tmp:
        t1 = time.perf_counter()
        stem = "video" if adapter.media == "video" else "image"
        media = adapter.decode(result.output, tmp, stem)
        hit_media: list[str | None] = [None] * len(result.hits)
        if full_return:
            for i, h in enumerate(result.hits):
                hit_media[i] = adapter.decode(h.x, tmp, f"{stem}_hit{i:02d}")[0]
        decode_s = time.perf_counter() - t1
        out_hit = result.hits[result.stopped_at]
        latents = {f"hit_{i:02d}": h.x for i, h in enumerate(result.hits)}
        latents["output"] = result.output
        save_latents(tmp / "latents.safetensors", latents)
        stats = {
            "format": 1,
            "prompt": prompt,
            "seed": int(cfg.model.seed),
            "model": str(cfg.model.model_name),
            "media": adapter.media,
            "algorithm": algo_cfg["algo_name"],
            "algo_tag": folder.parent.name,
            "algo": algo_cfg,
            "num_cores": int(algorithm.num_cores),
            "num_steps": int(enc.num_steps),
            "hardware": hardware,
            "world_size": world_size,
            "hits": [
                {"index": i, "core": h.core, "round": h.round, "wall_s": stamps[i], "latent": f"hit_{i:02d}", "media": hit_media[i]}
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
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(tmp / "stats.json", stats)
    return Outcome(prompt, folder, result.rounds, out_hit.round, result.nfe, sample_s, result.output)


def _resolved_algo(cfg: DictConfig, spec: RunSpec) -> dict:
    algo = OmegaConf.to_container(cfg.algo, resolve=True)
    if algo["algo_name"] == "chords":
        algo["init_t"] = spec.algorithm.resolve_init_t(spec.num_steps)
    return algo


def run(cfg: DictConfig, spec: RunSpec | None = None) -> list[tuple[Outcome, Outcome | None]]:
    """Run every prompt; return (outcome, sequential reference or None) per prompt."""
    spec = spec or validate(cfg)
    algo_cfg = _resolved_algo(cfg, spec)
    seq_cfg = {"algo_name": "sequential", "num_cores": 1, "stopping_kwargs": {"criterion": "none"}, "full_return": False}
    is_seq = algo_cfg["algo_name"] == "sequential"
    want_ref = bool(cfg.get("reference", False)) and not is_seq
    seed = int(cfg.model.seed)
    base = Path(cfg.output_base_path)

    todo = []
    for prompt in spec.prompts:
        folder = run_folder(base, cfg.model.model_name, spec.algo_tag, prompt, seed, cfg.model)
        ref = run_folder(base, cfg.model.model_name, "sequential", prompt, seed, cfg.model) if want_ref else None
        todo.append((prompt, folder, ref))
    pending = [t for t in todo if cfg.overwrite or not is_complete(t[1]) or (t[2] is not None and not is_complete(t[2]))]
    log.info("%d prompt(s), %d to sample (%s, %s, K=%d, N=%d)", len(todo), len(pending), cfg.model.model_name, spec.algo_tag, spec.algorithm.num_cores, spec.num_steps)

    outcomes: list[tuple[Outcome, Outcome | None]] = []
    if not pending:
        return [(_skipped(p, f), _skipped(p, r) if r else None) for p, f, r in todo]

    t_load = time.perf_counter()
    adapter = spec.adapter_cls(cfg.model, _device(cfg), "full")
    with make_backend(cfg, spec, adapter) as backend:
        log.info("model and %d process(es) ready in %.1fs", backend.world_size, time.perf_counter() - t_load)
        ref_backend = LocalBackend(adapter, "loop")
        hardware = str(cfg.hardware.name)
        for prompt, folder, ref in tqdm(todo, desc="prompts", unit="prompt", disable=None):
            do_main = cfg.overwrite or not is_complete(folder)
            do_ref = ref is not None and (cfg.overwrite or not is_complete(ref))
            if not (do_main or do_ref):
                log.info("skip (complete): %s", folder)
                outcomes.append((_skipped(prompt, folder), _skipped(prompt, ref) if ref else None))
                continue
            t0 = time.perf_counter()
            with torch.no_grad():
                enc = adapter.encode(prompt, seed)
            encode_s = time.perf_counter() - t0
            common = dict(enc=enc, encode_s=encode_s, prompt=prompt)
            if do_main:
                clean_partial(folder)
                main = sample_prompt(cfg, adapter, backend, spec.algorithm, spec.stop, folder=folder, algo_cfg=algo_cfg,
                                     hardware=hardware, world_size=backend.world_size,
                                     full_return=bool(cfg.algo.get("full_return", False)), desc=spec.algo_tag, **common)
                log.info("%s: %d rounds (output at %d), %d nfe, %.2fs -> %s", prompt[:60], main.rounds, main.output_round, main.nfe, main.sample_s, folder)
            else:
                main = _skipped(prompt, folder)
            refo = None
            if ref is not None:
                if do_ref:
                    clean_partial(ref)
                    refo = sample_prompt(cfg, adapter, ref_backend, Sequential(), None, folder=ref, algo_cfg=seq_cfg,
                                         hardware="local", world_size=1, full_return=False, desc="sequential", **common)
                else:
                    refo = _skipped(prompt, ref)
            outcomes.append((main, refo))
    return outcomes


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
        rmse = (main.output.double() - ref.output.double()).pow(2).mean().sqrt().item()
        lines.append(
            f"{name:<40} {main.output_round:>6} {ref.rounds:>5} {ref.rounds / main.output_round:>7.2f}x "
            f"{main.sample_s:>8.3f} {ref.sample_s:>8.3f} {rmse:>10.2e}{q}"
        )
    if quality:
        for what, attr in (("class", "correct"), ("direction", "direction_correct")):
            parts = []
            for label, pick in (("output", 0), ("sequential", 1)):
                got = [getattr(quality[p[pick].folder], attr) for p in outcomes
                       if p[pick] is not None and quality.get(p[pick].folder) is not None]
                got = [g for g in got if g is not None]
                if got:
                    parts.append(f"{label} {sum(got)}/{len(got)}")
            if parts:
                lines.append(f"{what} accuracy (digit classifier vs prompt): " + ", ".join(parts))
    return "\n".join(lines)
