"""The embedded trained models (digits, moving-digits), their classifier, metrics and main jobs."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from chords import CHORDS, Sequential, sample
from chords.backends import LocalBackend
from chords.digitnet import (
    CLASSIFIER_FILE,
    DIRECTIONS,
    GaussianStats,
    augment_params,
    canonical_params,
    classify,
    default_classifier,
    digit_split,
    frechet_distance,
    gaussian_stats,
    mixture_stats,
    reference_stats,
    render,
    render_clips,
    score_clip,
)
from chords.models.embedded import DigitsDiT, MovingDigitsDiT, prompt_motion
from chords.models.nets import DiT, DiTConfig, load_dit
from chords.weights import WEIGHTS_DIR
from tests.conftest import ROOT, cli_env, compose

DIGITS = {"model_name": "digits", "height": 32, "width": 32, "num_inference_steps": 50, "guidance_scale": 2.0,
          "shift": 1.0, "dtype": "float32", "model_path": None}
MOVING = {**DIGITS, "model_name": "moving-digits", "num_frames": 8, "fps": 4}


def sequential(ad, prompt: str, seeds: range) -> torch.Tensor:
    """Sequential samples of several seeds of one prompt, one batched forward per step."""
    encs = [ad.encode(prompt, s) for s in seeds]
    x = torch.cat([e.x0 for e in encs])
    enc = encs[0]
    for i in range(enc.num_steps):
        x = enc.step(x, ad.velocity(x[:, None], torch.full((len(x),), i), enc.cond)[:, 0], i, i + 1)
    return x


# --------------------------------------------------------------------------- committed weights


def test_committed_weights_are_small_and_load():
    files = sorted(WEIGHTS_DIR.glob("*.safetensors"))
    assert {f.name for f in files} >= {"digits.safetensors", "moving_digits.safetensors", "digit_classifier.safetensors"}
    assert sum(f.stat().st_size for f in files) <= 20 * 2**20
    for name in ("digits", "moving_digits"):
        net = load_dit(WEIGHTS_DIR / f"{name}.safetensors")
        assert 1e6 <= sum(p.numel() for p in net.parameters()) <= 5e6


def test_classifier_on_held_out_real_digits():
    net = default_classifier()
    src, lab = digit_split("heldout")
    probs, feats = classify(net, render(src, canonical_params(len(src))))
    assert float((probs.argmax(1) == lab).float().mean()) >= 0.97
    assert feats.shape == (len(src), 64)


def test_digits_samples_have_the_prompted_class():
    """Two seeds per class; a broken grid, sign, guidance or label would give about 10%."""
    ad = DigitsDiT(DIGITS)
    net = default_classifier()
    pred, target = [], []
    for c in range(10):
        probs, _ = classify(net, sequential(ad, f"a handwritten digit {c}", range(2)))
        pred += probs.argmax(1).tolist()
        target += [c, c]
    acc = np.mean(np.asarray(pred) == np.asarray(target))
    assert acc >= 0.8, (acc, pred)


def test_guidance_matters_and_null_class_is_any_digit():
    ad = DigitsDiT(DIGITS)
    enc = ad.encode("a handwritten digit 3", 0)
    assert enc.meta["digit"] == 3 and enc.cond["labels"].tolist() == [[3]]
    anyd = ad.encode("a squiggle", 0)
    assert anyd.meta["digit"] == -1 and anyd.cond["labels"].tolist() == [[10]]  # the null class
    x = enc.x0[None]
    v_g = ad.velocity(x, torch.tensor([10]), enc.cond)
    ad.guidance = 1.0
    v_1 = ad.velocity(x, torch.tensor([10]), enc.cond)
    assert (v_g - v_1).abs().max() > 1e-3  # guidance changes the velocity
    out = sequential(ad, "a squiggle", range(3))  # runs: every class allowed
    assert out.shape == (3, 1, 16, 16) and out.abs().max() < 3


def test_moving_digits_class_and_direction():
    ad = MovingDigitsDiT(MOVING)
    net = default_classifier()
    hits_c, hits_d = [], []
    for c, d in ((3, "right"), (7, "left"), (0, "up"), (9, "down")):
        clips = sequential(ad, f"a {c} moving {d}", range(2))
        assert clips.shape == (2, 1, 8, 16, 16)  # latents of 32x32 frames
        for clip in clips:
            s = score_clip(net, clip)
            hits_c.append(s.majority == c)
            hits_d.append(DIRECTIONS[s.direction] == d)
    assert np.mean(hits_d) >= 0.75 and np.mean(hits_c) >= 0.6, (hits_c, hits_d)


def test_prompt_motion_words():
    assert prompt_motion("a 7 moving left fast") == (0, 1)
    assert prompt_motion("Seven drifting DOWNWARDS slowly") == (3, 0)
    assert prompt_motion("a 7") == (-1, -1)


def test_chords_on_the_trained_model_streams_closer_hits():
    ad = DigitsDiT(DIGITS)
    enc = ad.encode("a handwritten digit 5", 3)
    be = LocalBackend(ad, "batched")
    be.set_condition(enc.cond)
    seq = sample(Sequential(), be.velocity, enc.x0, enc.step, 50).output
    res = sample(CHORDS(8, [0, 2, 4, 8, 16, 24, 32, 40]), be.velocity, enc.x0, enc.step, 50)
    err = [(h.x.double() - seq.double()).pow(2).mean().sqrt().item() for h in res.hits]
    assert 1e-4 < err[1] < 0.1  # index=1: not trivial, not far
    assert err[0] > err[1] > err[2] and err[-1] < 1e-4


# --------------------------------------------------------------------------- metrics on known inputs


def test_frechet_distance_closed_form():
    a = GaussianStats(np.zeros(3), np.diag([1.0, 4.0, 9.0]), 10)
    b = GaussianStats(np.ones(3), np.diag([4.0, 4.0, 1.0]), 10)
    # diagonal: |mu|^2 + sum (sqrt(a) - sqrt(b))^2
    assert frechet_distance(a, b) == pytest.approx(3 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    m = mixture_stats([GaussianStats(np.array([-1.0]), np.eye(1), 5), GaussianStats(np.array([1.0]), np.eye(1), 5)], [1, 1])
    assert m.mean[0] == pytest.approx(0) and m.cov[0, 0] == pytest.approx(2.0)


def test_real_held_out_digits_score_as_a_perfect_sampler():
    """Augmented held-out digits (what a perfect sampler draws) against noise and wrong labels."""
    net = default_classifier()
    src, lab = digit_split("heldout")
    rng = np.random.default_rng(5)
    probs, feats = classify(net, render(src, augment_params(rng, len(src))))
    assert float((probs.argmax(1) == lab).float().mean()) >= 0.95
    fd_real = frechet_distance(gaussian_stats(feats), reference_stats(lab.tolist()))
    blurry = render(src, augment_params(rng, len(src))).mean(0, keepdim=True).expand(len(src), -1, -1, -1)
    fd_blur = frechet_distance(gaussian_stats(classify(net, blurry + 0.01 * torch.randn_like(blurry))[1]), reference_stats(lab.tolist()))
    wrong = reference_stats(((lab + 1) % 10).tolist())  # the right images against the wrong classes
    fd_wrong = frechet_distance(gaussian_stats(feats), wrong)
    assert fd_real < 0.2 * fd_wrong and fd_real < 0.2 * fd_blur, (fd_real, fd_wrong, fd_blur)


def test_real_clips_score_perfect_motion_and_consistency():
    net = default_classifier()
    src, lab = digit_split("heldout")
    cb = render_clips(src[:40], lab[:40], np.random.default_rng(3), 8)
    scores = [score_clip(net, c) for c in cb.clips]
    assert [s.direction for s in scores] == cb.direction.tolist()
    assert np.mean([s.consistency for s in scores]) >= 0.9
    assert np.mean([s.majority == int(t) for s, t in zip(scores, cb.labels)]) >= 0.9


# --------------------------------------------------------------------------- training, bad weights


def test_reduced_training_run_writes_loadable_weights(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_embedded
    finally:
        sys.path.pop(0)
    assert train_embedded.main(["--out", str(tmp_path), "--max-steps", "2", "--jobs", "1"]) == 0
    for name in ("digits", "moving_digits"):
        assert isinstance(load_dit(tmp_path / f"{name}.safetensors"), DiT)
    from chords.digitnet import load_classifier

    load_classifier(tmp_path / "digit_classifier.safetensors")
    assert (tmp_path / "training_loss.png").is_file()
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert set(log["parts"]) == {"classifier", "digits", "moving-digits"}
    ad = DigitsDiT({**DIGITS, "model_path": str(tmp_path / "digits.safetensors")})
    enc = ad.encode("a handwritten digit 1", 0)
    # two processes (the default, as a user runs it) write the same files as one
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "scripts/train_embedded.py", "--out", str(two), "--max-steps", "2"],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from chords.weights import read_checkpoint

    for name in ("digit_classifier", "digits", "moving_digits"):  # tensors and metadata (the header's key order varies)
        a, b = read_checkpoint(two / f"{name}.safetensors"), read_checkpoint(tmp_path / f"{name}.safetensors")
        assert a.meta == b.meta and a.tensors.keys() == b.tensors.keys(), name
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors), name
    assert ad.velocity(enc.x0[None], torch.tensor([0]), enc.cond).shape == (1, 1, 1, 16, 16)


@pytest.mark.parametrize("script", ["run_image_mp.py", "run_video_mp.py"])
@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_missing_or_corrupt_weights_one_line_exit_2(tmp_path, script, kind):
    bad = tmp_path / "w.safetensors"
    if kind == "corrupt":
        bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    proc = subprocess.run([sys.executable, script, f"model.model_path={bad}", f"output_base_path={tmp_path / 'o'}"],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert str(bad) in err and "scripts/train_embedded.py" in err and kind in err
    assert not (tmp_path / "o").exists()


def test_wrong_size_is_refused_before_loading(tmp_path, monkeypatch):
    from chords.config import ConfigError, validate

    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match="trained at height=32"):
        validate(compose(["model.height=64", f"output_base_path={tmp_path}"]))


# --------------------------------------------------------------------------- main jobs, eval


def _job(script: str, tmp_path: Path, prompts: list[str], *extra: str) -> subprocess.CompletedProcess:
    pf = tmp_path / "prompts.txt"
    pf.write_text("\n".join(prompts) + "\n")
    return subprocess.run([sys.executable, script, f"prompt_file={pf}", f"output_base_path={tmp_path / 'out'}", *extra],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)


def test_image_main_job_reduced(tmp_path):
    proc = _job("run_image_mp.py", tmp_path, ["a handwritten digit 2", "seven"], "hardware=batched")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "speedup" in out and "rmse" in out and "seq_class" in out and "class accuracy" in out
    grid = next((tmp_path / "out" / "digits").glob("chords-*/grid.png"))
    assert f"grid: {grid}" in out
    from PIL import Image

    assert Image.open(grid).size[0] > 3 * 96  # sequential + coarse shot + fastest core


def test_video_main_job_reduced_and_eval(tmp_path):
    proc = _job("run_video_mp.py", tmp_path, ["a 3 moving right", "a 7 moving up fast"], "hardware=batched")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "direction accuracy" in proc.stdout and "seq_class" in proc.stdout
    folders = sorted((tmp_path / "out" / "moving-digits").glob("chords-*/*/"))
    assert len(folders) == 2 and all((f / "video.mp4").is_file() for f in folders)
    assert (folders[0].parent / "grid.mp4").is_file() and (folders[0].parent / "grid.png").is_file()
    s = json.loads((folders[0] / "stats.json").read_text())
    assert s["encode_meta"]["embedded"] == "moving-digits" and s["encode_meta"]["direction"] in DIRECTIONS
    from eval.cli import run_eval, validate

    res = run_eval(validate({**_eval_defaults(), "runs": [str(tmp_path / "out")], "out": str(tmp_path / "ev")}))
    row = res.summary.set_index("method").loc["Sequential"]
    assert 0 <= row["class_accuracy"] <= 1 and 0 <= row["direction_accuracy"] <= 1 and 0 < row["frame_consistency"] <= 1
    table = (tmp_path / "ev" / "table1.md").read_text()
    assert "Direction Acc." in table and "VBench" not in table.split("\n\n", 1)[1]


def _eval_defaults() -> dict:
    from eval.cli import compose_config

    cfg = compose_config(["runs=[.]"])
    cfg["figures"] = []
    return cfg


def test_eval_embedded_image_columns(tmp_path):
    proc = _job("run_image_mp.py", tmp_path, [f"a handwritten digit {c}" for c in (1, 4, 8)], "hardware=batched",
                "model.num_inference_steps=20")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from eval.cli import run_eval, validate

    res = run_eval(validate({**_eval_defaults(), "runs": [str(tmp_path / "out")], "out": str(tmp_path / "ev")}))
    s = res.summary.set_index("method")
    for m in ("Sequential", "CHORDS"):
        assert 0 <= s.loc[m, "class_accuracy"] <= 1
        assert s.loc[m, "n_frechet_distance"] == 3 and math.isfinite(s.loc[m, "frechet_distance"])
    table = (tmp_path / "ev" / "table2.md").read_text()
    assert "Class Acc." in table and "Fréchet Dist." in table and "CLIP" not in table.split("\n\n", 1)[1]
    # Accuracies get a Wilson interval (inside [0, 1], never "100% [100, 100]"); the Fréchet
    # distance of 3 samples is flagged in the cell and in problems.txt.
    from scipy.stats import binomtest

    for m in ("Sequential", "CHORDS"):
        k = round(s.loc[m, "class_accuracy"] * 3)
        ci = binomtest(k, 3).proportion_ci(0.95, method="wilson")
        assert s.loc[m, "class_accuracy_lo"] == pytest.approx(ci.low) and s.loc[m, "class_accuracy_hi"] == pytest.approx(ci.high)
        assert 0 <= s.loc[m, "class_accuracy_lo"] < s.loc[m, "class_accuracy_hi"] <= 1
    assert "(n=3 < 200)" in table
    problems = (tmp_path / "ev" / "problems.txt").read_text()
    assert "Fréchet distance from 3 sample(s) (< 200)" in problems
    summary_md = (tmp_path / "ev" / "summary.md").read_text()
    widths = [ln.count("|") - 1 for ln in summary_md.splitlines() if ln.startswith("|")]
    assert widths and max(widths) <= 12 and "## Speed" in summary_md and "## Quality" in summary_md
    assert "(n=3 < 200)" in summary_md
