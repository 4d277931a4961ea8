from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def compose(overrides: list[str]):
    """The config a command line with these overrides would run (no Hydra run folder)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from chords.config import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        return hcompose(config_name="base", overrides=overrides)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("TQDM_DISABLE", "1")
    return env


def stand_in_gpus(monkeypatch, n: int) -> None:
    """Make torch report ``n`` CUDA GPUs (for config resolution only: nothing may run on them)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Stand-in GPU")


@pytest.fixture
def python() -> str:
    return sys.executable


# Property tests draw the same examples on every machine and every run (a CI failure is
# reproducible, and a pass is not luck of the draw); set HYPOTHESIS_PROFILE=explore to search anew.
try:
    from hypothesis import settings as _hsettings

    _hsettings.register_profile("deterministic", derandomize=True, print_blob=True)
    _hsettings.register_profile("explore", derandomize=False, print_blob=True)
    _hsettings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))
except ImportError:  # pragma: no cover - hypothesis is in requirements.txt
    pass
