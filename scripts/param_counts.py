"""Parameters a CHORDS worker holds (the denoiser only) against the whole pipeline, per family.

    python scripts/param_counts.py            # tiny models + real checkpoints
    python scripts/param_counts.py --json     # machine-readable

* tiny-*: measured by instantiating the adapter with role="full" and role="denoiser".
* real checkpoints: computed from their component configs when the weights are on disk (every
  model is built on the meta device, so nothing is allocated); otherwise the published sizes
  below, marked "published (approx.)".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILIES = ("flux", "sd3-5", "hunyuan", "wan2-1", "cogvideo")
REAL = ("flux", "flux-schnell", "sd3-5", "hunyuan", "wan2-1", "wan2-1-1.3b", "cogvideo")
B = 1e9
#: (denoiser, whole pipeline) in parameters, from the model cards / papers, rounded; the
#: pipeline = transformer + text encoder(s) + VAE.
PUBLISHED: dict[str, tuple[float, float, str]] = {
    "flux": (11.9 * B, 16.9 * B, "12B MMDiT + T5-XXL enc 4.76B + CLIP-L 0.12B + VAE 0.08B"),
    "flux-schnell": (11.9 * B, 16.9 * B, "as FLUX.1-dev"),
    "sd3-5": (8.1 * B, 13.8 * B, "8.1B MMDiT + T5-XXL enc 4.76B + CLIP-G 0.69B + CLIP-L 0.12B + VAE 0.08B"),
    "hunyuan": (12.8 * B, 20.7 * B, "13B DiT + Llava-Llama-3-8B text 7.5B + CLIP-L 0.12B + VAE 0.25B"),
    "wan2-1": (14.29 * B, 20.10 * B, "14.29B DiT + UMT5-XXL enc 5.68B + VAE 0.13B"),
    "wan2-1-1.3b": (1.42 * B, 7.23 * B, "1.42B DiT + UMT5-XXL enc 5.68B + VAE 0.13B"),
    "cogvideo": (5.57 * B, 10.55 * B, "5.57B DiT + T5-XXL enc 4.76B + VAE 0.22B"),
}


def load_cfg(name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / f"{name}.yaml"), resolve=True)


def tiny_counts(family: str) -> dict:
    from chords.models.base import load_adapter_class

    cfg = load_cfg(f"tiny-{family}")
    cls = load_adapter_class(cfg["adapter"])
    full = cls(cfg, "cpu", "full").param_counts()
    worker = cls(cfg, "cpu", "denoiser").param_counts()
    return {"model": f"tiny-{family}", "source": "measured (instantiated)", "worker": worker["total"], "total": full["total"]}


def _count_component(folder: Path, library: str, class_name: str) -> int:
    import torch

    if library == "diffusers":
        import diffusers

        cls = getattr(diffusers, class_name)
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            return 0  # schedulers
        with torch.device("meta"):
            model = cls.from_config(cls.load_config(str(folder)))
    elif library == "transformers":
        import transformers

        cls = getattr(transformers, class_name)
        if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
            return 0  # tokenizers, processors
        config = transformers.AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            model = cls(config)
    else:
        return 0
    return sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else 0


def real_counts(name: str, cfg: dict | None = None) -> dict:
    from chords.models.diffusers_common import cached_snapshot, weights_problem

    cfg = cfg or load_cfg(name)
    path = str(cfg["model_path"])
    if weights_problem(path, cfg.get("cache_dir")) is None:
        folder = Path(path) if Path(path).is_dir() else cached_snapshot(path, cfg.get("cache_dir"))
        spec = json.loads((folder / "model_index.json").read_text())
        total = worker = 0
        for comp, value in spec.items():
            if comp.startswith("_") or not isinstance(value, list) or not value or not value[0]:
                continue
            n = _count_component(folder / comp, value[0], value[1])
            total += n
            if comp == "transformer":
                worker = n
        return {"model": name, "source": "computed from local configs", "worker": worker, "total": total}
    w, t, note = PUBLISHED[name]
    return {"model": name, "source": "published (approx.)", "worker": int(w), "total": int(t), "note": note}


def _fmt(n: int) -> str:
    return f"{n / B:.2f}B" if n >= 1e8 else f"{n:,}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-tiny", action="store_true")
    ap.add_argument("--no-real", action="store_true")
    args = ap.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    rows = []
    if not args.no_tiny:
        rows += [tiny_counts(f) for f in FAMILIES]
    if not args.no_real:
        rows += [real_counts(m) for m in REAL]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<14} {'source':<29} {'worker (denoiser)':>18} {'whole pipeline':>15} {'worker share':>13}")
    for r in rows:
        print(f"{r['model']:<14} {r['source']:<29} {_fmt(r['worker']):>18} {_fmt(r['total']):>15} "
              f"{100 * r['worker'] / r['total']:>12.1f}%")
    notes = [r for r in rows if "note" in r]
    if notes:
        print("\npublished sizes (not measured here; weights not on disk):")
        for r in notes:
            print(f"  {r['model']}: {r['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
