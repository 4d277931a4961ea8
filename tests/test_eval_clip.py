"""CLIP score: the formula by hand, a tiny open_clip model registered here (random weights),
local checkpoints, the hub-cache lookup, and the missing-weights error (exit 2, one line)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

open_clip = pytest.importorskip("open_clip")

from eval.cli import main, run_eval  # noqa: E402
from eval.clip_score import (  # noqa: E402
    ClipScorer,
    ClipWeightsMissing,
    clip_score_from_features,
    locate_weights,
)
from tests.test_eval import P1, P2, eval_cfg, image_sweep, read_csv, write_run  # noqa: E402

TINY = "chords-test-tiny-clip"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """Register a tiny open_clip architecture (the real tokenizer, 2 heads, 1 layer, 32x32 images)."""
    d = tmp_path_factory.mktemp("clipcfg")
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (d / f"{TINY}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / f"{TINY}.json")
    assert TINY in open_clip.list_models()
    return TINY


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_clip, tmp_path_factory):
    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip, pretrained=None)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_clip.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _images(n):
    g = torch.Generator().manual_seed(1)
    return [Image.fromarray((torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()) for _ in range(n)]


def test_formula_by_hand():
    img = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [3.0, 4.0]])
    txt = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, -1.0], [4.0, 3.0]])
    s = clip_score_from_features(img, txt)
    # cos = 1, 1/sqrt(2), -1 (clamped to 0), 24/25
    assert s.tolist() == pytest.approx([100.0, 100 / math.sqrt(2), 0.0, 96.0])


def test_tiny_model_scores_match_a_hand_computation(tiny_clip, tiny_checkpoint):
    scorer = ClipScorer(tiny_clip, str(tiny_checkpoint), device="cpu")
    images = _images(5)
    texts = ["a red cube", "a blue sphere", "two cats on a sofa", "a long prompt " * 30, "x"]
    got = scorer.score(images, texts, batch_size=2)  # batches of 2, 2, 1
    with torch.no_grad():
        pix = torch.stack([scorer.preprocess(im) for im in images])
        ei = scorer.model.encode_image(pix)
        et = scorer.model.encode_text(open_clip.get_tokenizer(tiny_clip)(texts))
    for i in range(5):
        a, b = ei[i].double(), et[i].double()
        cos = float(a @ b / (a.norm() * b.norm()))
        assert got[i] == pytest.approx(100 * max(cos, 0.0), abs=1e-4)
    # The local checkpoint was really loaded (same weights as saved, not a fresh random init).
    from safetensors.torch import load_file

    saved = load_file(str(tiny_checkpoint))
    name = next(iter(saved))
    assert torch.equal(scorer.model.state_dict()[name].cpu(), saved[name])


def test_table2_clip_column_through_the_pipeline(tiny_clip, tiny_checkpoint, tmp_path, monkeypatch):
    image_sweep(tmp_path / "out")
    cfg = eval_cfg(tmp_path, [tmp_path / "out"], "clip.enabled=true", f"clip.model={tiny_clip}",
                   f"clip.pretrained={tiny_checkpoint}", "clip.device=cpu", "clip.batch_size=3", "figures=[]")
    res = run_eval(cfg)
    runs = res.runs
    # Hand computation per run from its image and prompt.
    scorer = ClipScorer(tiny_clip, str(tiny_checkpoint), device="cpu")
    for _, r in runs.iterrows():
        img = Image.open(f"{r['run']}/image.png")
        assert r["clip_score"] == pytest.approx(scorer.score([img], [r["prompt"]])[0], abs=1e-4)
    t2 = read_csv(tmp_path / "eval_out" / "table2.csv").set_index(["Model", "Method"])
    for method, k in (("Sequential", 4), ("CHORDS", 4), ("CHORDS", 8), ("ParaDIGMS", 4)):
        sel = runs[(runs["method"] == method) & (runs["num_cores"] == (1 if method == "Sequential" else k))]
        assert t2.loc[("tiny-img", method), f"K{k}_clip_score"] == pytest.approx(sel["clip_score"].mean(), abs=1e-9)
    md = (tmp_path / "eval_out" / "table2.md").read_text()
    seq = runs[runs["method"] == "Sequential"]["clip_score"].mean()
    assert f"{seq:.1f}" in md
    # Second run: every score comes from {out}/cache, the model is not even built.
    monkeypatch.setattr("eval.clip_score.ClipScorer.__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    res2 = run_eval(cfg)
    assert list(res2.runs["clip_score"]) == pytest.approx(list(runs["clip_score"]))


def test_missing_weights_one_line_exit_2_nothing_written(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root, prompt=P1, image=True)
    out = tmp_path / "eval_out"
    code = main([f"runs=[{root}]", f"out={out}", "clip.enabled=true", f"clip.cache_dir={tmp_path / 'emptycache'}"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("eval:")]
    assert code == 2 and len(lines) == 1, err
    assert "python download.py --clip" in lines[0] and "ViT-g-14" in lines[0]
    assert not out.exists()
    # An unknown tag is one line too.
    code = main([f"runs=[{root}]", f"out={out}", "clip.enabled=true", "clip.pretrained=laion_nope"])
    err = capsys.readouterr().err
    assert code == 2 and "is not a tag of ViT-g-14 (accepted: laion2b_s12b_b42k, laion2b_s34b_b88k)" in err
    assert not out.exists()


def test_hub_cache_lookup_is_case_insensitive(tmp_path):
    """download.py may fetch 'laion/CLIP-ViT-g-14-laion2B-s34B-b88k'; open_clip names it '...b88K'."""
    repo = tmp_path / "models--laion--CLIP-ViT-g-14-laion2B-s34B-b88k"
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    (snap / "open_clip_config.json").write_text("{}")
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    found = locate_weights("ViT-g-14", "laion2b_s34b_b88k", str(tmp_path))
    assert found is not None and found.endswith("open_clip_pytorch_model.bin")
    with pytest.raises(ClipWeightsMissing, match="download.py --clip"):
        locate_weights("ViT-g-14", "laion2b_s34b_b88k", str(tmp_path / "elsewhere"))
    with pytest.raises(ClipWeightsMissing, match="no file"):
        locate_weights("ViT-g-14", str(tmp_path / "missing.safetensors"))


def test_unreadable_image_is_left_out(tiny_clip, tiny_checkpoint, tmp_path):
    root = tmp_path / "out"
    write_run(root, prompt=P1, image=True)
    f = write_run(root, prompt=P2, image=True)
    (f / "image.png").write_bytes(b"not a png")
    res = run_eval(eval_cfg(tmp_path, [root], "clip.enabled=true", f"clip.model={tiny_clip}",
                            f"clip.pretrained={tiny_checkpoint}", "figures=[]"))
    by_prompt = res.runs.set_index("prompt")["clip_score"]
    assert math.isnan(by_prompt[P2]) and not math.isnan(by_prompt[P1])
    assert any("image unreadable; left out of CLIP score" in p for p in res.problems)
    assert res.summary["clip_score"].iloc[0] == pytest.approx(by_prompt[P1])


def test_tables_from_random_clip_weights_say_so(tiny_clip, tmp_path):
    image_sweep(tmp_path / "out")
    res = run_eval(eval_cfg(tmp_path, [tmp_path / "out"], "clip.enabled=true", f"clip.model={tiny_clip}",
                            "clip.pretrained=null", "clip.device=cpu", "figures=[]"))
    assert any("random (non-pretrained) CLIP weights" in p for p in res.problems)
    assert "non-pretrained" in (tmp_path / "eval_out" / "table2.md").read_text()
