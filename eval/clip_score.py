"""CLIP score of image runs with open_clip (the paper: ViT-g-14, laion2b_s34b_b88k).

CLIPScore here is ``100 * max(cos(E_image, E_text), 0)`` per sample, with L2-normalised
open_clip embeddings, and a cell's score is the mean of its samples' scores: the clamp is
applied to each sample, as in Hessel et al.'s reference-free CLIP-S (whose weight is 2.5; the
paper's values, ~31-32, are on the 100 scale). torchmetrics' ``CLIPScore`` instead clamps the
mean over the batch, ``max(mean(100 * cos), 0)``; the two agree whenever no sample's cosine is
negative (as with pretrained CLIP on real images) and differ only when some are (e.g. random
weights). Tables computed with non-pretrained weights (``clip.pretrained: null``) say so in
their caption. Text longer than the model's context (77 tokens) is truncated by open_clip's
tokenizer.

Weights are never downloaded implicitly: they are looked up where ``python download.py --clip``
(or ``open_clip.download_pretrained``) puts them, i.e. the Hugging Face hub cache (or
``clip.cache_dir``) for hub-hosted tags and ``clip.cache_dir`` / ``~/.cache/clip`` for
URL-hosted ones; ``clip.pretrained`` may also be a local checkpoint file. Missing weights raise
:class:`ClipWeightsMissing` whose message is the one line the CLI prints. ``clip.pretrained:
null`` builds random weights (tests only: the scores mean nothing).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence

import torch

log = logging.getLogger("eval")

DEFAULT_MODEL = "ViT-g-14"
DEFAULT_PRETRAINED = "laion2b_s34b_b88k"


class ClipWeightsMissing(Exception):
    """CLIP weights are not on this machine; the message is one line naming the fix."""


class ClipConfigError(Exception):
    """Unknown CLIP model / tag; one line."""


def clip_score_from_features(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """``100 * max(cos(image_i, text_i), 0)`` row by row, for [B, D] feature batches."""
    img = torch.nn.functional.normalize(image_features.double(), dim=-1)
    txt = torch.nn.functional.normalize(text_features.double(), dim=-1)
    return 100.0 * torch.clamp((img * txt).sum(dim=-1), min=0.0)


def _missing_line(model: str, pretrained: str, where: str) -> str:
    return (
        f"CLIP weights for {model} / {pretrained} are not on this machine ({where}); "
        f"fetch them with `python download.py --clip` (or set clip.pretrained to a local checkpoint file, "
        f"or clip.enabled=false)"
    )


def locate_weights(model: str, pretrained: str | None, cache_dir: str | None = None) -> str | None:
    """The local checkpoint file for (model, pretrained), or None for random weights.

    Raises ClipConfigError for an unknown model or tag, ClipWeightsMissing when not cached.
    """
    import open_clip

    if model not in open_clip.list_models():
        raise ClipConfigError(
            f"clip.model={model!r} is not an open_clip model (e.g. ViT-g-14, ViT-H-14, ViT-B-32; "
            f"see open_clip.list_models())"
        )
    if pretrained is None or str(pretrained).lower() in ("", "none", "null", "random"):
        return None
    p = Path(os.path.expanduser(str(pretrained)))
    if p.suffix in (".bin", ".pt", ".pth", ".safetensors") or os.sep in str(pretrained):
        if p.is_file():
            return str(p)
        raise ClipWeightsMissing(_missing_line(model, str(pretrained), f"no file {p}"))
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ClipConfigError(f"clip.pretrained={pretrained!r} is not a tag of {model} (accepted: {tags})")
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)  # open_clip: "org/name/" or "org/name/file.bin"
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth", ".pt")):
            names.insert(0, filename.rsplit(".", 1)[0] + ".safetensors")
        for rid in _cached_repo_ids(repo_id, cache_dir):
            for name in names:
                hit = try_to_load_from_cache(rid, name, cache_dir=cache_dir)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
        where = f"hub cache {cache_dir or 'default (HF_HUB_CACHE)'} lacks {repo_id}"
        raise ClipWeightsMissing(_missing_line(model, pretrained, where))
    url = cfg.get("url", "")
    if url:
        root = Path(os.path.expanduser(cache_dir or "~/.cache/clip"))
        target = root / os.path.basename(url)
        if target.is_file():
            return str(target)
        raise ClipWeightsMissing(_missing_line(model, pretrained, f"no file {target}"))
    raise ClipWeightsMissing(_missing_line(model, pretrained, "no download source known"))


def _cached_repo_ids(repo_id: str, cache_dir: str | None) -> list[str]:
    """``repo_id`` and any differently-cased spelling of it in the hub cache.

    Hub ids are case-insensitive online but the cache folder keeps the spelling used to fetch
    (open_clip says ``...-b88K``, a download may have said ``...-b88k``).
    """
    ids = [repo_id]
    try:
        from huggingface_hub import constants

        root = Path(os.path.expanduser(cache_dir)) if cache_dir else Path(constants.HF_HUB_CACHE)
        want = "models--" + repo_id.replace("/", "--")
        for d in root.iterdir() if root.is_dir() else []:
            if d.name.lower() == want.lower() and d.name != want:
                ids.append(d.name[len("models--"):].replace("--", "/", 1))
    except OSError:
        pass
    return ids


def resolve_device(device: str | None) -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


class ClipScorer:
    """An open_clip model, its preprocessing and tokenizer; scores (image, caption) pairs in batches."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        pretrained: str | None = DEFAULT_PRETRAINED,
        cache_dir: str | None = None,
        device: str | None = "auto",
        precision: str = "fp32",
    ) -> None:
        import open_clip

        self.model_name = model
        self.pretrained = pretrained
        self.device = resolve_device(device)
        checkpoint = locate_weights(model, pretrained, cache_dir)
        # Loading a file bypasses open_clip's tag lookup, so pass the tag's preprocessing on.
        pp: dict = {}
        tag_cfg = open_clip.get_pretrained_cfg(model, str(pretrained)) if checkpoint is not None else {}
        for key, arg in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                         ("resize_mode", "image_resize_mode")):
            if tag_cfg and key in tag_cfg:
                pp[arg] = tag_cfg[key]
        if checkpoint is None:
            log.warning("CLIP %s with random weights (clip.pretrained=null): scores are meaningless", model)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model,
            pretrained=checkpoint,
            precision=precision,
            device=self.device,
            **pp,
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model)

    @torch.no_grad()
    def features(self, images: Sequence, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised image and text embeddings for one batch (PIL images, strings)."""
        pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        dtype = next(self.model.parameters()).dtype
        img = self.model.encode_image(pixels.to(dtype))
        txt = self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
        return img.float().cpu(), txt.float().cpu()

    def score(self, images: Sequence, texts: Sequence[str], batch_size: int = 16) -> list[float]:
        if len(images) != len(texts):
            raise ValueError("images and texts differ in number")
        out: list[float] = []
        for i in range(0, len(images), max(1, int(batch_size))):
            img, txt = self.features(images[i : i + batch_size], texts[i : i + batch_size])
            out.extend(float(s) for s in clip_score_from_features(img, txt))
        return out


def score_files(scorer: ClipScorer, items: Sequence[tuple[str, Path, str]], batch_size: int = 16) -> dict[str, float]:
    """Score ``(key, image_path, caption)`` items; unreadable images give NaN (logged by the caller)."""
    from PIL import Image

    results: dict[str, float] = {}
    batch: list[tuple[str, object, str]] = []

    def flush():
        if batch:
            scores = scorer.score([b[1] for b in batch], [b[2] for b in batch], batch_size=len(batch))
            for (key, _, _), s in zip(batch, scores):
                results[key] = s
            batch.clear()

    for key, path, caption in items:
        try:
            with Image.open(path) as im:
                im.load()
                batch.append((key, im.copy(), caption))
        except Exception as e:  # unreadable media: this run has no CLIP score (the caller reports it)
            log.debug("image unreadable: %s (%s)", path, type(e).__name__)
            results[key] = math.nan
        if len(batch) >= batch_size:
            flush()
    flush()
    return results
