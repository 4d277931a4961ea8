#!/usr/bin/env python
"""Write the paper's image prompt list: 1000 COCO2017 val captions, sampled with a fixed seed.

    python scripts/coco_prompts.py                                   # -> prompts/coco1000.txt
    python scripts/coco_prompts.py --captions captions_val2017.json  # offline, from a local file
    python scripts/coco_prompts.py --n 200 --seed 1 --out prompts/coco200.txt

The sample (as in ParaDIGMS / SRDS / CHORDS, "1000 prompts from COCO2017 captions"): images of
``captions_val2017.json`` sorted by image id, ``--n`` of them drawn with
``random.Random(seed).sample``, and for each the caption with the lowest annotation id,
whitespace collapsed to one line. Same file + same seed = same list, on any machine. The paper
does not publish its 1000 captions: this draw is this project's own, fixed by the seed, so CLIP
scores compare exactly between this project's runs and only approximately with the paper's.

``--captions`` takes ``captions_val2017.json`` or the official
``annotations_trainval2017.zip``; without it the zip is downloaded once into ``--cache-dir``
(default ``~/.cache/chords/coco``). Offline without a local file: one line naming what to
fetch, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import urllib.request
import zipfile
from pathlib import Path

URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
MEMBER = "annotations/captions_val2017.json"


class Fail(Exception):
    """One line for stderr, exit status 2."""


def load_captions(path: Path) -> dict:
    if not path.is_file():
        raise Fail(f"--captions {path}: no such file")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("captions_val2017.json")), None)
                if name is None:
                    raise Fail(f"{path} has no captions_val2017.json inside")
                return json.loads(z.read(name).decode("utf-8"))
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise Fail(f"{path} is not a readable COCO captions file ({type(e).__name__}: {e})") from None


def download(cache_dir: Path, url: str = URL, timeout: float = 30.0) -> Path:
    target = cache_dir / os.path.basename(url)
    if target.is_file() and zipfile.is_zipfile(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except Exception as e:  # offline, DNS, HTTP error, ...
        tmp.unlink(missing_ok=True)
        raise Fail(
            f"cannot download {url} ({type(e).__name__}: {' '.join(str(e).split())[:120]}); fetch it on a machine "
            f"with network and pass --captions annotations_trainval2017.zip (or captions_val2017.json)"
        ) from None
    tmp.replace(target)
    return target


def sample_captions(data: dict, n: int, seed: int) -> list[str]:
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list) or not anns:
        raise Fail("the captions file has no 'annotations' list (expected COCO captions_val2017.json)")
    first: dict[int, tuple[int, str]] = {}
    for a in anns:
        try:
            img, aid, text = int(a["image_id"]), int(a["id"]), str(a["caption"])
        except (KeyError, TypeError, ValueError):
            continue
        text = " ".join(text.split())
        if text and (img not in first or aid < first[img][0]):
            first[img] = (aid, text)
    images = sorted(first)
    if n > len(images):
        raise Fail(f"--n {n} is more than the {len(images)} captioned images in the file")
    chosen = random.Random(seed).sample(images, n)
    return [first[i][1] for i in chosen]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=Path, help="captions_val2017.json or annotations_trainval2017.zip (local)")
    ap.add_argument("--n", type=int, default=1000, help="number of captions (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--out", type=Path, default=Path("prompts/coco1000.txt"), help="output prompt file")
    ap.add_argument("--cache-dir", type=Path, default=Path("~/.cache/chords/coco").expanduser())
    ap.add_argument("--url", default=URL, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    try:
        if a.n < 1:
            raise Fail(f"--n {a.n}: give a positive number of captions")
        src = a.captions if a.captions is not None else download(a.cache_dir, a.url)
        prompts = sample_captions(load_captions(src), a.n, a.seed)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_name(a.out.name + ".tmp")
        tmp.write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
        tmp.replace(a.out)
    except Fail as e:
        print(f"coco_prompts.py: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(prompts)} captions (seed {a.seed}) to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
