"""Run folders (the contract with eval, see docs/run_folders.md): naming and atomic writes."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import save_file

SLUG_LEN = 48
#: model settings that change the sample, hashed into the folder key
SAMPLE_KEYS = ("num_inference_steps", "guidance_scale", "height", "width", "num_frames", "shift", "true_cfg_scale", "negative_prompt", "use_dynamic_cfg", "dtype", "step_precision")


def prompt_slug(prompt: str) -> str:
    """Lower-case ASCII letters, digits and '_' from the prompt, at most SLUG_LEN chars."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "_", text).strip("_")[:SLUG_LEN].rstrip("_")
    return slug or "prompt"


def run_key(prompt: str, seed: int, model: Mapping[str, Any]) -> str:
    settings = {k: model.get(k) for k in SAMPLE_KEYS if k in model}
    blob = json.dumps({"prompt": prompt, "seed": seed, "model": settings}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:10]


def run_folder(base: str | os.PathLike, model_name: str, tag: str, prompt: str, seed: int, model: Mapping[str, Any]) -> Path:
    return Path(base) / str(model_name) / tag / f"{prompt_slug(prompt)}-{run_key(prompt, seed, model)}"


def is_complete(folder: Path) -> bool:
    stats = folder / "stats.json"
    if not stats.is_file() or not (folder / "latents.safetensors").is_file():
        return False
    try:
        json.loads(stats.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def clean_partial(folder: Path) -> None:
    """Remove temporary folders an interrupted run left next to ``folder``."""
    if folder.parent.is_dir():
        for tmp in folder.parent.glob(f"{folder.name}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_folder(folder: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``folder`` in one rename."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            if not overwrite:
                raise FileExistsError(f"{folder} appeared while this run was writing it")
            old = folder.with_name(f"{folder.name}.tmp-old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str), encoding="utf-8")


def save_latents(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    # clone: safetensors refuses tensors that share memory (the output is also one of the hits)
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(path))
