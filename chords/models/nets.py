"""The embedded diffusion transformer: a DiT with adaLN-Zero, for images and videos.

Pure network code (torch only): the adapters in :mod:`chords.models.embedded` and
``scripts/train_embedded.py`` use it; nothing here knows about prompts, grids or files
beyond safetensors (de)serialisation.

* Input: a latent ``[B, C, F, H, W]`` (images have ``F = 1``), cut into non-overlapping
  spatio-temporal patches ``patch_t x patch x patch`` -> ``T`` tokens, linearly embedded, plus
  a learned position embedding.
* Conditioning: the noise level ``sigma`` (sinusoidal features of ``1000 * sigma``, as diffusers
  feeds timesteps) plus one embedding per label (class; direction and speed for video), each
  label table with an extra *null* entry (index = its size) for classifier-free guidance.
  The sum modulates every block through adaLN-Zero (shift, scale, gate per sub-layer, as DiT);
  the time and label embeddings also enter the sequence as tokens of their own (in-context
  conditioning, as DiT's "in-context" variant and MMDiT's text tokens), which attention can read
  from the first step of training while the zero-initialised modulations are still silent.
* Output: the velocity in diffusers' flow-matching convention, ``v = noise - x0`` for
  ``x_sigma = (1 - sigma) x0 + sigma noise``, same shape as the input.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from chords.weights import WeightsError, read_checkpoint

Tensor = torch.Tensor


@dataclass(frozen=True)
class DiTConfig:
    channels: int = 1
    frames: int = 1
    height: int = 32
    width: int = 32
    patch_t: int = 1
    patch: int = 8
    dim: int = 128
    depth: int = 8
    heads: int = 4
    mlp_ratio: float = 4.0
    labels: tuple[int, ...] = (10,)  # vocabulary size of each label; index = size is its null entry

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(int(n) for n in self.labels))
        if self.frames % self.patch_t or self.height % self.patch or self.width % self.patch:
            raise ValueError(f"latent {self.frames}x{self.height}x{self.width} is not divisible by patches {self.patch_t}x{self.patch}x{self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")

    @property
    def grid(self) -> tuple[int, int, int]:
        return self.frames // self.patch_t, self.height // self.patch, self.width // self.patch

    @property
    def tokens(self) -> int:
        f, h, w = self.grid
        return f * h * w

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_t * self.patch * self.patch

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DiTConfig":
        return cls(**json.loads(text))


def timestep_features(sigma: Tensor, dim: int = 64, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of ``1000 * sigma`` ([B] -> [B, dim]), as diffusers' Timesteps."""
    half = dim // 2
    dtype = sigma.dtype if sigma.is_floating_point() else torch.float32
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=sigma.device) / half)
    args = (1000.0 * sigma.to(dtype))[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.ada = nn.Linear(dim, 6 * dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        b, t, d = x.shape
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c)[:, None].chunk(6, dim=-1)
        y = self.norm1(x) * (1 + sc1) + sh1
        q, k, v = self.qkv(y).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + g1 * self.proj(y)
        y = self.norm2(x) * (1 + sc2) + sh2
        return x + g2 * self.fc2(F.gelu(self.fc1(y), approximate="tanh"))


class DiT(nn.Module):
    """Class-conditional flow-matching transformer over spatio-temporal patches."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.embed = nn.Linear(cfg.patch_dim, d)
        self.pos = nn.Parameter(torch.randn(1, cfg.tokens, d) * 0.02)
        self.time = nn.Sequential(nn.Linear(64, d), nn.SiLU(), nn.Linear(d, d))
        self.label_emb = nn.ModuleList([nn.Embedding(n + 1, d) for n in cfg.labels])
        self.cond_pos = nn.Parameter(torch.randn(1, 1 + len(cfg.labels), d) * 0.02)
        self.cond_in = nn.Linear(d, d)
        self.blocks = nn.ModuleList([Block(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, cfg.patch_dim)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.ada.weight)
            nn.init.zeros_(blk.ada.bias)
        nn.init.zeros_(self.final_ada.weight)
        nn.init.zeros_(self.final_ada.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def patchify(self, x: Tensor) -> Tensor:
        c = self.cfg
        b = x.shape[0]
        f, h, w = c.grid
        x = x.reshape(b, c.channels, f, c.patch_t, h, c.patch, w, c.patch)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, f * h * w, c.patch_dim)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        c = self.cfg
        b = tokens.shape[0]
        f, h, w = c.grid
        x = tokens.reshape(b, f, h, w, c.channels, c.patch_t, c.patch, c.patch)
        return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, c.channels, c.frames, c.height, c.width)

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        """x [B, C, F, H, W], sigma [B], labels [B, len(cfg.labels)] (null = the label's size)."""
        parts = [self.time(timestep_features(sigma))] + [emb(labels[:, i]) for i, emb in enumerate(self.label_emb)]
        cond = F.silu(torch.stack(parts).sum(0))
        n_cond = len(parts)
        tokens = self.embed(self.patchify(x)) + self.pos + self.cond_in(cond)[:, None]
        h = torch.cat([torch.stack(parts, 1) + self.cond_pos, tokens], dim=1)
        for blk in self.blocks:
            h = blk(h, cond)
        h = h[:, n_cond:]
        shift, scale = self.final_ada(cond)[:, None].chunk(2, dim=-1)
        return self.unpatchify(self.out(self.norm(h) * (1 + scale) + shift))


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- weights files


def load_dit(path: str | Path) -> DiT:
    """A DiT rebuilt from the config stored in the file's metadata, weights loaded, eval mode."""
    ck = read_checkpoint(path)
    try:
        net = DiT(DiTConfig.from_json(ck.meta["dit_config"]))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck.tensors.items()}, strict=True)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise WeightsError(f"{path} is not a DiT checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    return net.eval()
