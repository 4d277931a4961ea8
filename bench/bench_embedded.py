"""Measure the embedded trained models: quality, CHORDS convergence and wall-clock speedup.

    python bench/bench_embedded.py                     # everything (a few minutes on 2 cores)
    python bench/bench_embedded.py --only speed        # quality | video | chords | speed | fd
    python bench/bench_embedded.py --seeds 10 --reps 5

* ``quality`` (model=digits): sequential sampling (N=50, the config's guidance and shift) of
  ``--seeds`` seeds per class; class accuracy by the digit classifier; Fréchet distance to
  class-matched held-out real digits; nearest-neighbour RMSE of every sample to the training
  images (canonical 32x32 renders of the training split, all through the fixed autoencoder) against the training images' own
  nearest-neighbour spacing and against held-out real digits' distance to the training set.
* ``video`` (model=moving-digits): every class x direction, ``--video-seeds`` seeds: class
  accuracy (majority over frames), per-frame class consistency, motion-direction accuracy.
* ``chords``: CHORDS K=8 (0-2-4-8-16-24-32-40) and K=4 (0-8-16-32) without a stop rule: the
  latent RMSE of every streamed hit against sequential, with its round (index 1 is the
  official ``stopping_kwargs.index=1`` output).
* ``speed``: wall-clock of one sample, side by side in this process, interleaved, median of
  ``--reps``: sequential vs CHORDS K=4 (index 1) on ``hardware=batched`` (one batched forward
  per round), ``local`` (a loop) and ``cpu`` (4 processes, gloo), with 1 and 2 torch threads.
* ``fd``: how many samples make the Fréchet distance stable: FD between two independent draws
  of N augmented held-out digits (a perfect sampler) for several N.

Rows are printed as they are measured; every figure comes from one run of this script.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chords import CHORDS, CoreIndex, Sequential, sample  # noqa: E402
from chords.backends import LocalBackend, ProcessBackend  # noqa: E402
from chords.digitnet import (  # noqa: E402
    CLASSIFIER_FILE,
    load_classifier,
    DIRECTIONS,
    accuracy,
    as_pixels,
    augment_params,
    canonical_params,
    classify,
    default_classifier,
    digit_split,
    encode_pixels,
    frechet_distance,
    gaussian_stats,
    reference_stats,
    render,
    score_clip,
)
from chords.models.embedded import DigitsDiT, MovingDigitsDiT  # noqa: E402

ADAPTER = {"digits": "chords.models.embedded.DigitsDiT", "moving-digits": "chords.models.embedded.MovingDigitsDiT"}


WEIGHTS: Path | None = None  # --weights: another folder of weights (e.g. a fresh training run)


def model_cfg(name: str, **over) -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml"))
    if WEIGHTS is not None:
        cfg["model_path"] = str(WEIGHTS / f"{name.replace('-', '_')}.safetensors")
    cfg.update(over)
    return cfg


def classifier_path() -> Path:
    return WEIGHTS / CLASSIFIER_FILE.name if WEIGHTS is not None else CLASSIFIER_FILE


def classifier():
    return load_classifier(classifier_path()) if WEIGHTS is not None else default_classifier()


def sequential_batch(ad, prompts_seeds: list[tuple[str, int]]) -> torch.Tensor:
    """Sequential samples of several (prompt, seed) sharing one prompt, in one batched forward per step."""
    encs = [ad.encode(p, s) for p, s in prompts_seeds]
    x = torch.cat([e.x0 for e in encs])
    enc = encs[0]
    with torch.no_grad():
        for i in range(enc.num_steps):
            v = ad.velocity(x[:, None], torch.full((len(x),), i), enc.cond)[:, 0]
            x = enc.step(x, v, i, i + 1)
    return x


def nn_rmse(x: torch.Tensor, bank: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """RMSE of every row of x [N, D] to its nearest row of bank [M, D]."""
    d2 = torch.cdist(x.double(), bank.double()).pow(2) / x.shape[1]
    if exclude_self:
        d2.fill_diagonal_(float("inf"))
    return d2.min(1).values.sqrt()


def bench_quality(seeds: int) -> None:
    ad = DigitsDiT(model_cfg("digits"))
    net = classifier()
    t0 = time.perf_counter()
    samples, targets = [], []
    for c in range(10):
        samples.append(sequential_batch(ad, [(f"a handwritten digit {c}", s) for s in range(seeds)]))
        targets += [c] * seeds
    x = as_pixels(torch.cat(samples)).reshape(-1, 1, 32, 32)  # decoded, as the PNGs show them
    probs, feats = classify(net, x)
    pred = probs.argmax(1).tolist()
    acc = accuracy(pred, targets)
    per_class = [accuracy(pred[c * seeds:(c + 1) * seeds], targets[c * seeds:(c + 1) * seeds]) for c in range(10)]
    fd = frechet_distance(gaussian_stats(feats), reference_stats(targets, classifier_path()))
    print(f"[quality] digits, guidance {ad.guidance}, N=50, {seeds} seeds x 10 classes ({time.perf_counter() - t0:.0f}s)")
    print(f"  class accuracy (sequential): {100 * acc:.1f}%  per class: " + " ".join(f"{c}:{100 * a:.0f}" for c, a in enumerate(per_class)))
    print(f"  Frechet distance to class-matched held-out digits ({len(x)} samples): {fd:.2f}")
    # every image through the fixed autoencoder, as the model sees its training data
    ae = lambda imgs: as_pixels(encode_pixels(imgs)).reshape(len(imgs), -1)  # noqa: E731
    src, lab = digit_split("train")
    train = ae(render(src, canonical_params(len(src))))
    hsrc, _ = digit_split("heldout")
    held = ae(render(hsrc, canonical_params(len(hsrc))))
    rng = np.random.default_rng(7)
    aug_train = ae(render(src, augment_params(rng, len(src))))
    s_nn = nn_rmse(x.reshape(len(x), -1).clamp(-1, 1), train)
    spacing = nn_rmse(train, train, exclude_self=True)
    h_nn = nn_rmse(held, train)
    a_nn = nn_rmse(aug_train, train)
    q = lambda t: f"median {t.median():.3f}, min {t.min():.3f}, 5% {t.quantile(0.05):.3f}"  # noqa: E731
    print(f"  NN RMSE sample -> training images:          {q(s_nn)}")
    print(f"  NN RMSE training image -> other training:   {q(spacing)}  (training-image spacing)")
    print(f"  NN RMSE held-out real digit -> training:    {q(h_nn)}")
    print(f"  NN RMSE augmented training image -> training: {q(a_nn)}")
    print(f"  samples closer to a training image than the median spacing: {100 * float((s_nn < spacing.median()).float().mean()):.0f}%"
          f" (held-out real digits: {100 * float((h_nn < spacing.median()).float().mean()):.0f}%)")
    print(f"  exact copies (NN RMSE < 0.01): {int((s_nn < 0.01).sum())}")


def bench_video(seeds: int) -> None:
    ad = MovingDigitsDiT(model_cfg("moving-digits"))
    net = classifier()
    t0 = time.perf_counter()
    pred, target, dpred, dtarget, cons = [], [], [], [], []
    for c in range(10):
        for d, dname in enumerate(DIRECTIONS):
            x = sequential_batch(ad, [(f"a {c} moving {dname}", s) for s in range(seeds)])
            for clip in x:
                sc = score_clip(net, clip)
                pred.append(sc.majority)
                target.append(c)
                dpred.append(sc.direction)
                dtarget.append(d)
                cons.append(sc.consistency)
    print(f"[video] moving-digits, guidance {ad.guidance}, N=50, {seeds} seeds x 10 classes x 4 directions ({time.perf_counter() - t0:.0f}s)")
    print(f"  class accuracy (majority of frames): {100 * accuracy(pred, target):.1f}%")
    print(f"  per-frame class consistency: {100 * float(np.mean(cons)):.1f}%")
    print(f"  motion-direction accuracy: {100 * accuracy(dpred, dtarget):.1f}%")


def bench_chords(samples: int) -> None:
    ad = DigitsDiT(model_cfg("digits"))
    be = LocalBackend(ad, "batched")
    for k, init in ((8, [0, 2, 4, 8, 16, 24, 32, 40]), (4, [0, 8, 16, 32])):
        per_hit: list[list[float]] = []
        rounds: list[int] = []
        cores: list[int] = []
        for i in range(samples):
            enc = ad.encode(f"a handwritten digit {i % 10}", 100 + i)
            be.set_condition(enc.cond)
            seq = sample(Sequential(), be.velocity, enc.x0, enc.step, enc.num_steps).output
            res = sample(CHORDS(k, init), be.velocity, enc.x0, enc.step, enc.num_steps)
            for j, h in enumerate(res.hits):
                if len(per_hit) <= j:
                    per_hit.append([])
                    rounds.append(h.round)
                    cores.append(h.core)
                per_hit[j].append((h.x.double() - seq.double()).pow(2).mean().sqrt().item())
        print(f"[chords] K={k} init {'-'.join(map(str, init))}, no stop rule, {samples} samples (digits 0-9): latent RMSE vs sequential per hit")
        for j, (r, c, v) in enumerate(zip(rounds, cores, per_hit)):
            tag = "  <- index=1 (official default)" if j == 1 else ""
            print(f"  hit {j} core {c} round {r:>2} speedup {50 / r:4.2f}x  RMSE mean {np.mean(v):.4f} (min {np.min(v):.4f}, max {np.max(v):.4f}){tag}")


def _time_one(be, ad, algo, stop, enc) -> float:
    be.set_condition(enc.cond)
    t0 = time.perf_counter()
    sample(algo, be.velocity, enc.x0, enc.step, enc.num_steps, stop=stop)
    return time.perf_counter() - t0


def bench_speed(reps: int, model: str) -> None:
    cfg = model_cfg(model)
    cls = DigitsDiT if model == "digits" else MovingDigitsDiT
    prompt = "a handwritten digit 7" if model == "digits" else "a 7 moving left"
    for threads in (1, 2):
        torch.set_num_threads(threads)
        ad = cls(cfg)
        enc = ad.encode(prompt, 0)
        setups = {
            "sequential": (LocalBackend(ad, "batched"), Sequential(), None),
            "chords-batched": (LocalBackend(ad, "batched"), CHORDS(4, [0, 8, 16, 32]), CoreIndex(1)),
            "chords-loop": (LocalBackend(ad, "loop"), CHORDS(4, [0, 8, 16, 32]), CoreIndex(1)),
        }
        procs = ProcessBackend(ad, ADAPTER[model], cfg, 4, threads_per_process=1) if threads == 1 else None
        if procs is not None:
            setups["chords-cpu-4proc"] = (procs, CHORDS(4, [0, 8, 16, 32]), CoreIndex(1))
        try:
            times: dict[str, list[float]] = {k: [] for k in setups}
            for name, (be, algo, stop) in setups.items():  # warm-up
                _time_one(be, ad, algo, stop, enc)
            for _ in range(reps):
                for name, (be, algo, stop) in setups.items():
                    times[name].append(_time_one(be, ad, algo, stop, enc))
        finally:
            if procs is not None:
                procs.close()
        seq = statistics.median(times["sequential"])
        print(f"[speed] {model}, N=50, guidance {ad.guidance}, torch threads {threads}, median of {reps} interleaved reps")
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"  {name:<18} {m * 1000:8.1f} ms  wall speedup vs sequential {seq / m:5.2f}x  (min {min(ts) * 1000:.1f}, max {max(ts) * 1000:.1f})")


def bench_fd(sizes: list[int]) -> None:
    net = classifier()
    src, lab = digit_split("heldout")
    rng = np.random.default_rng(11)
    canon = render(src, canonical_params(len(src)))
    acc_px = float((classify(net, canon)[0].argmax(1) == lab).float().mean())
    acc_ae = float((classify(net, as_pixels(encode_pixels(canon)))[0].argmax(1) == lab).float().mean())
    print(f"[fd] classifier on held-out digits: {100 * acc_px:.1f}% as rendered, {100 * acc_ae:.1f}% through the fixed autoencoder")
    print("[fd] Frechet distance between two independent sets of N augmented held-out digits (a perfect sampler), 5 trials;"
          " 'autoencoded': the same through the fixed autoencoder (a perfect latent sampler) vs the reference")
    for n in sizes:
        vals = []
        for _ in range(5):
            ia, ib = rng.integers(0, len(src), n), rng.integers(0, len(src), n)
            _, fa = classify(net, render(src[ia], augment_params(rng, n)))
            _, fb = classify(net, render(src[ib], augment_params(rng, n)))
            vals.append(frechet_distance(gaussian_stats(fa), gaussian_stats(fb)))
        ref = [frechet_distance(gaussian_stats(classify(net, render(src[ia := rng.integers(0, len(src), n)], augment_params(rng, n)))[1]),
                                reference_stats(lab[ia].tolist(), classifier_path())) for _ in range(3)]
        aer = []
        for _ in range(3):
            ia = rng.integers(0, len(src), n)
            feats = classify(net, as_pixels(encode_pixels(render(src[ia], augment_params(rng, n)))))[1]
            aer.append(frechet_distance(gaussian_stats(feats), reference_stats(lab[ia].tolist(), classifier_path())))
        print(f"  N={n:>5}: set vs set {np.mean(vals):7.2f} ± {np.std(vals):5.2f}; set vs class-matched reference {np.mean(ref):7.2f} ± {np.std(ref):5.2f};"
              f" autoencoded vs reference {np.mean(aer):7.2f} ± {np.std(aer):5.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="quality,video,chords,speed,fd")
    ap.add_argument("--seeds", type=int, default=10, help="seeds per class (quality)")
    ap.add_argument("--video-seeds", type=int, default=3, help="seeds per class and direction (video)")
    ap.add_argument("--chords-samples", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads outside the speed section")
    ap.add_argument("--weights", type=Path, default=None, help="folder with the weights files (default: the committed ones)")
    args = ap.parse_args(argv)
    global WEIGHTS
    WEIGHTS = args.weights
    only = {s.strip() for s in args.only.split(",")}
    torch.set_num_threads(args.threads)
    if "quality" in only:
        bench_quality(args.seeds)
    if "video" in only:
        bench_video(args.video_seeds)
    if "chords" in only:
        bench_chords(args.chords_samples)
    if "speed" in only:
        bench_speed(args.reps, "digits")
        bench_speed(args.reps, "moving-digits")
        torch.set_num_threads(args.threads)
    if "fd" in only:
        bench_fd([50, 100, 200, 500, 1000, 2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
