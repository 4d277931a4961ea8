"""What this machine computes with: torch's build, its CUDA, the driver, the GPUs.

Logged at the start of every run and written to stats.json (``versions.cuda``), so a run that
silently fell back to the CPU (a torch CUDA build on an older driver reports no GPU and raises
nothing) can be told from one that used the GPUs.
"""
from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from functools import lru_cache
from typing import Any

import torch


@lru_cache(maxsize=1)
def driver_version() -> str | None:
    """The NVIDIA driver's version as ``nvidia-smi`` reports it, or None without one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines[0] if out.returncode == 0 and lines else None


def cuda_info() -> dict[str, Any]:
    """torch's version and CUDA build, the driver, and the GPUs torch can use."""
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,  # None for a CPU build
        "driver": driver_version(),
        "cuda_available": available,
        "gpus": [torch.cuda.get_device_name(i) for i in range(count)],
    }
    if available and torch.distributed.is_available() and torch.distributed.is_nccl_available():
        try:
            info["nccl"] = ".".join(str(p) for p in torch.cuda.nccl.version())
        except (RuntimeError, AttributeError, TypeError):
            pass
    return info


def cuda_summary(info: dict[str, Any] | None = None) -> str:
    """One line: ``torch 2.13.0+cu130, CUDA 13.0 build, driver 580.65, 8 GPU(s): NVIDIA H200``."""
    info = info or cuda_info()
    build = f"CUDA {info['torch_cuda']} build" if info["torch_cuda"] else "CPU-only build"
    driver = f"driver {info['driver']}" if info["driver"] else "no NVIDIA driver found"
    if info["gpus"]:
        names = sorted(set(info["gpus"]))
        gpus = f"{len(info['gpus'])} GPU(s): {', '.join(names)}"
    elif info["torch_cuda"] and info["driver"]:
        gpus = "0 GPUs usable (torch.cuda.is_available() is False: is the driver older than this CUDA build needs?)"
    else:
        gpus = "0 GPUs usable"
    return f"torch {info['torch']}, {build}, {driver}, {gpus}"


def peak_rss_gb() -> float:
    """This process's peak resident host memory so far, in GB (``getrusage``'s ``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 30 if sys.platform == "darwin" else 1 << 20)  # bytes on macOS, KiB on Linux
