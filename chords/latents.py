"""Comparing latents wherever they were made.

A run's output may be on a GPU while its sequential reference was read back from disk (CPU), or
the other way round: every comparison moves both to the CPU and computes in float64, so it is
the same number whatever device or dtype either side has.
"""
from __future__ import annotations

import math

import torch


def host64(x: torch.Tensor) -> torch.Tensor:
    """``x`` on the CPU in float64 (detached)."""
    return x.detach().to("cpu", torch.float64)


def latent_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """sqrt(mean((a - b)^2)) over every element, on the CPU in float64."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shapes differ: {list(a.shape)} vs {list(b.shape)}")
    d = host64(a) - host64(b)
    return math.sqrt(float(torch.mean(d * d)))


def l1_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean(|a - b|) over every element (the L1 distance per element), on the CPU in float64."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shapes differ: {list(a.shape)} vs {list(b.shape)}")
    return float(torch.mean(torch.abs(host64(a) - host64(b))))
