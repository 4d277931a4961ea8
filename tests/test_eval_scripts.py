"""Prompt-list builders: scripts/coco_prompts.py and scripts/vbench_prompts.py, on small files
written here (no network)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("VBENCH_PYTHON", None)
    e.update(env or {})
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=120, env=e)


def _captions(path: Path) -> dict:
    anns, aid = [], 100
    for img in range(1, 21):  # 20 images, 2-3 captions each, in shuffled order
        for j in range(2 + img % 2):
            aid += 7
            anns.append({"image_id": img * 11, "id": aid - j * 3, "caption": f"  image {img}\ncaption {j}  "})
    random.Random(5).shuffle(anns)
    data = {"info": {}, "images": [{"id": i * 11} for i in range(1, 21)], "annotations": anns}
    path.write_text(json.dumps(data))
    return data


def test_coco_prompts_fixed_seed_sample_from_a_local_file(tmp_path):
    data = _captions(tmp_path / "captions_val2017.json")
    out = tmp_path / "coco.txt"
    proc = _run("coco_prompts.py", "--captions", str(tmp_path / "captions_val2017.json"), "--n", "5", "--seed", "3",
                "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    # By hand: images sorted by id, 5 drawn with random.Random(3), each image's lowest-id caption, one line.
    images = sorted({a["image_id"] for a in data["annotations"]})
    chosen = random.Random(3).sample(images, 5)
    first = {}
    for a in data["annotations"]:
        if a["image_id"] not in first or a["id"] < first[a["image_id"]]["id"]:
            first[a["image_id"]] = a
    assert lines == [" ".join(first[i]["caption"].split()) for i in chosen]
    # The official zip works too, and gives the same list.
    z = tmp_path / "annotations_trainval2017.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(tmp_path / "captions_val2017.json", "annotations/captions_val2017.json")
    out2 = tmp_path / "coco2.txt"
    assert _run("coco_prompts.py", "--captions", str(z), "--n", "5", "--seed", "3", "--out", str(out2)).returncode == 0
    assert out2.read_text() == out.read_text()
    # Another seed, another sample; too many asked: one line, exit 2.
    out3 = tmp_path / "coco3.txt"
    assert _run("coco_prompts.py", "--captions", str(z), "--n", "5", "--seed", "4", "--out", str(out3)).returncode == 0
    assert out3.read_text() != out.read_text()
    proc = _run("coco_prompts.py", "--captions", str(z), "--n", "50", "--out", str(tmp_path / "x.txt"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "more than the 20 captioned images" in proc.stderr
    assert not (tmp_path / "x.txt").exists()


def test_coco_prompts_offline_is_one_line_exit_2(tmp_path):
    proc = _run("coco_prompts.py", "--out", str(tmp_path / "c.txt"), "--cache-dir", str(tmp_path / "cache"),
                "--url", "http://127.0.0.1:9/annotations_trainval2017.zip")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "cannot download" in proc.stderr and "--captions" in proc.stderr
    assert not (tmp_path / "c.txt").exists()


def test_vbench_prompts_from_a_fake_full_info(tmp_path):
    info = [
        {"prompt_en": "a stop sign", "dimension": ["temporal_flickering"]},
        {"prompt_en": "a dog running", "dimension": ["subject_consistency", "dynamic_degree", "motion_smoothness"]},
        {"prompt_en": "a beach", "dimension": ["background_consistency", "scene"],
         "auxiliary_info": {"scene": {"scene": {"scene": "beach"}}}},
        {"prompt_en": "an  astronaut\nriding", "dimension": ["aesthetic_quality", "imaging_quality", "subject_consistency"]},
        {"prompt_en": "a red apple", "dimension": ["color"]},
    ]
    fi = tmp_path / "VBench_full_info.json"
    fi.write_text(json.dumps(info))
    out = tmp_path / "vb"
    proc = _run("vbench_prompts.py", "--full-info", str(fi), "--out-dir", str(out), "--combined", str(tmp_path / "q.txt"))
    assert proc.returncode == 0, proc.stderr
    assert (out / "subject_consistency.txt").read_text().splitlines() == ["a dog running", "an astronaut riding"]
    assert (out / "temporal_flickering.txt").read_text().splitlines() == ["a stop sign"]
    assert not (out / "color.txt").exists() and not (out / "scene.txt").exists()
    assert (tmp_path / "q.txt").read_text().splitlines() == [
        "a dog running", "an astronaut riding", "a beach", "a stop sign"]
    proc = _run("vbench_prompts.py", "--full-info", str(fi), "--out-dir", str(tmp_path / "all"), "--dimensions", "all",
                "--combined", "")
    assert proc.returncode == 0 and (tmp_path / "all" / "color.txt").read_text() == "a red apple\n"
    proc = _run("vbench_prompts.py", "--full-info", str(fi), "--dimensions", "colour", "--out-dir", str(tmp_path / "n"))
    assert proc.returncode == 2 and "unknown 'colour'" in proc.stderr and not (tmp_path / "n").exists()


def test_vbench_prompts_without_vbench_is_one_line_exit_2(tmp_path):
    import importlib.util

    if importlib.util.find_spec("vbench") is not None:
        return
    proc = _run("vbench_prompts.py", "--out-dir", str(tmp_path / "vb"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "VBench_full_info.json not found" in proc.stderr
