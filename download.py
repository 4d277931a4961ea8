"""Fetch the weights the model configs name, and the CLIP model the eval needs.

    python download.py --model flux                 # configs/model/flux.yaml's repo
    python download.py --model flux --model cogvideo
    python download.py --model all                  # the paper's five: flux sd3-5 hunyuan wan2-1 cogvideo
    python download.py --clip                       # open_clip hf-hub:laion/CLIP-ViT-g-14-laion2B-s34B-b88k
    python download.py --model flux --cache-dir /data/hf     # then run with model.cache_dir=/data/hf
    python download.py --model flux --local-dir /data/flux   # then run with model.model_path=/data/flux

``--model`` takes a config name (``configs/model/NAME.yaml``; its ``repo_id``, else its hub-id
``model_path``) or a hub id. Only what ``diffusers`` loads is fetched: ``model_index.json`` and
the folders of the components it lists, preferring safetensors (no duplicate single-file
checkpoints). Everything goes into the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), or
``--cache-dir`` / ``--local-dir``. A model already complete on disk is skipped without touching
the network, so the command is idempotent. Gated repositories (FLUX.1-dev, SD3.5-Large) need
their licence accepted on huggingface.co and a token (``hf auth login`` or ``HF_TOKEN``).

Exit status: 0 when everything asked for is present, 2 on any problem (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CONFIG_DIR = ROOT / "configs" / "model"
PAPER_MODELS = ("flux", "sd3-5", "hunyuan", "wan2-1", "cogvideo")
CLIP_REPO = "laion/CLIP-ViT-g-14-laion2B-s34B-b88k"
CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_NON_SAFETENSORS = (".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx", ".onnx_data", ".gguf")
_VARIANT = re.compile(r"\.(fp16|bf16|fp32)([.-])")


class DownloadError(Exception):
    """One line for the user."""


def _say(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- what to fetch


def resolve_repo(name: str) -> tuple[str, str]:
    """(label, hub repo id) for a config name or a hub id."""
    path = CONFIG_DIR / f"{name}.yaml"
    if path.is_file():
        from omegaconf import OmegaConf

        from chords.models.diffusers_common import repo_id_of

        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if str(cfg.get("build", "")).lower() == "tiny" or not (cfg.get("model_path") or cfg.get("repo_id")):
            raise DownloadError(f"configs/model/{name}.yaml names no hub weights (it is built in code); nothing to download")
        repo = repo_id_of(cfg)
        if not repo:
            raise DownloadError(f"configs/model/{name}.yaml points at a local folder ({cfg.get('model_path')}); "
                                "add repo_id: OWNER/NAME to it")
        return name, repo
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return name, name
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("tiny-"))
    raise DownloadError(f"unknown model {name!r}: use a config name ({', '.join(known)}), 'all', or a hub id OWNER/NAME")


def select_files(files: list[str], components: list[str]) -> list[str]:
    """model_index.json plus each component folder, safetensors preferred, no precision variants."""
    chosen = ["model_index.json"]
    for comp in components:
        inside = [f for f in files if f.startswith(comp + "/")]
        weights = [f for f in inside if f.endswith(".safetensors") or f.endswith(_NON_SAFETENSORS)]
        if any(f.endswith(".safetensors") for f in weights):
            inside = [f for f in inside if not f.endswith(_NON_SAFETENSORS)]
        plain = [f for f in inside if not _VARIANT.search(f.rsplit("/", 1)[-1])]
        if any(f.endswith((".safetensors",) + _NON_SAFETENSORS) for f in plain) or not weights:
            inside = plain
        chosen += inside
    return chosen


def _components(model_index: Path) -> list[str]:
    spec = json.loads(model_index.read_text())
    return [k for k, v in spec.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]]


# --------------------------------------------------------------------------- fetching


def _hub_errors():
    from huggingface_hub import errors

    return errors


def _explain(repo: str, e: Exception) -> str:
    errors = _hub_errors()
    if isinstance(e, errors.GatedRepoError):
        return (f"{repo} is gated: accept its licence at https://huggingface.co/{repo} and log in "
                "(`hf auth login` or HF_TOKEN), then run again")
    if isinstance(e, errors.RepositoryNotFoundError):
        return f"{repo} was not found on the Hugging Face Hub (or needs a token): check the name and your login"
    if isinstance(e, errors.OfflineModeIsEnabled) or "offline" in str(e).lower():
        return f"cannot download {repo}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE=1) and it is not on disk"
    return (f"cannot download {repo}: the Hugging Face Hub is unreachable ({type(e).__name__}); "
            "check the network / HF_ENDPOINT and run again")


_PROBED: set[str] = set()


def probe_hub(repo: str, timeout_s: float = 10.0) -> None:
    """Fail fast, with one line, when the Hub cannot be reached (no retries, bounded wait)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        raise DownloadError(f"cannot download {repo}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE=1) "
                            "and it is not on disk; unset HF_HUB_OFFLINE on a machine with network")
    if constants.ENDPOINT in _PROBED:
        return
    try:
        get_session().head(f"{constants.ENDPOINT}/api/models/{repo}", timeout=timeout_s, follow_redirects=True)
    except Exception as e:  # any HTTP answer (even 401/404) means reachable; only transport errors land here
        raise DownloadError(f"cannot download {repo}: the Hugging Face Hub ({constants.ENDPOINT}) is unreachable "
                            f"({type(e).__name__}); check the network / HF_ENDPOINT and run again") from e
    _PROBED.add(constants.ENDPOINT)


def fetch_model(label: str, repo: str, cache_dir: str | None, local_dir: str | None) -> None:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    from chords.models.diffusers_common import pipeline_folder_problem, weights_problem

    target = local_dir or cache_dir or "the Hugging Face cache"
    present = pipeline_folder_problem(Path(local_dir)) if local_dir else weights_problem(repo, cache_dir)
    if present is None:
        _say(f"{label}: {repo} already complete in {target}; skipped")
        return
    probe_hub(repo)
    _say(f"{label}: fetching {repo} into {target} ...")
    kw = {"local_dir": local_dir} if local_dir else {"cache_dir": cache_dir}
    try:
        index = Path(hf_hub_download(repo, "model_index.json", **kw))
        files = HfApi().list_repo_files(repo)
        allow = select_files(files, _components(index))
        snapshot_download(repo, allow_patterns=allow, **kw)
    except Exception as e:  # network, auth, offline: one line for the user
        if isinstance(e, (KeyboardInterrupt, DownloadError)):
            raise
        raise DownloadError(_explain(repo, e)) from e
    problem = pipeline_folder_problem(Path(local_dir)) if local_dir else weights_problem(repo, cache_dir)
    if problem is not None:
        raise DownloadError(f"{repo} is still incomplete after downloading: {problem}")
    _say(f"{label}: {repo} complete in {target}")


def clip_present(cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(CLIP_REPO, "open_clip_config.json", cache_dir=cache_dir), str):
        return None
    for name in CLIP_FILES:
        hit = try_to_load_from_cache(CLIP_REPO, name, cache_dir=cache_dir)
        if isinstance(hit, str):
            return hit
    return None


def fetch_clip(cache_dir: str | None) -> None:
    """The open_clip ViT-g-14 the CLIP score uses, where open_clip's hf-hub loader finds it."""
    from huggingface_hub import HfApi, snapshot_download

    target = cache_dir or "the Hugging Face cache"
    if clip_present(cache_dir):
        _say(f"clip: {CLIP_REPO} already in {target}; skipped")
        return
    probe_hub(CLIP_REPO)
    _say(f"clip: fetching {CLIP_REPO} into {target} ...")
    try:
        files = set(HfApi().list_repo_files(CLIP_REPO))
        weights = next((f for f in CLIP_FILES if f in files), None)
        if weights is None:
            raise DownloadError(f"{CLIP_REPO} has none of {', '.join(CLIP_FILES)}")
        snapshot_download(CLIP_REPO, allow_patterns=["open_clip_config.json", weights], cache_dir=cache_dir)
    except DownloadError:
        raise
    except Exception as e:
        raise DownloadError(_explain(CLIP_REPO, e)) from e
    if not clip_present(cache_dir):
        raise DownloadError(f"{CLIP_REPO} is still incomplete after downloading")
    _say(f"clip: {CLIP_REPO} complete in {target}")


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--model", action="append", default=[], metavar="NAME",
                    help="config name (configs/model/NAME.yaml), 'all' (the paper's five) or a hub id; repeatable")
    ap.add_argument("--clip", action="store_true", help=f"also fetch {CLIP_REPO} (open_clip) for the CLIP score")
    ap.add_argument("--cache-dir", default=None, help="Hugging Face cache folder to use instead of the default")
    ap.add_argument("--local-dir", default=None, help="put one model's files in this plain folder (then model_path=DIR)")
    args = ap.parse_args(argv)
    if not args.model and not args.clip:
        ap.print_usage(sys.stderr)
        print("download.py: nothing to do: give --model NAME (or all) and/or --clip", file=sys.stderr)
        return 2
    names: list[str] = []
    for m in args.model:
        names += list(PAPER_MODELS) if m == "all" else [m]
    names = list(dict.fromkeys(names))
    if args.local_dir and len(names) != 1:
        print("download.py: --local-dir takes exactly one --model", file=sys.stderr)
        return 2
    try:
        for name in names:
            label, repo = resolve_repo(name)
            fetch_model(label, repo, args.cache_dir, args.local_dir)
        if args.clip:
            fetch_clip(args.cache_dir)
    except DownloadError as e:
        print(f"download.py: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("download.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
