"""Average-pool a slot's features to a fixed token budget, then a two-layer MLP (LLaVA-1.5 style).

Visual patch tokens are pooled on their 2-D grid, audio frames along time. A slot with
nothing to show (no audio track, audio ended, no picture) gets a learned "absent"
embedding, so the token count per slot never changes and the LLM is told plainly.

The output is RMS-normalised with a learned gain that starts at the scale of the LLM's own
token embeddings: unnormalised, the media tokens grew to ~50x the norm of text tokens in
training and swamped the residual stream (visual answers stayed at chance).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def grid_shape(tokens: int) -> tuple[int, int]:
    """The most square (rows, cols) with rows * cols == tokens."""
    rows = max(d for d in range(1, math.isqrt(tokens) + 1) if tokens % d == 0)
    return rows, tokens // rows


class MLPPoolProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, tokens: int, grid: tuple[int, int] | None = None, out_scale: float = 1.0):
        super().__init__()
        self.tokens = tokens
        self.grid = grid
        self.norm = nn.LayerNorm(in_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self.out_norm = nn.RMSNorm(out_dim)
        nn.init.constant_(self.out_norm.weight, out_scale)
        self.absent = nn.Parameter(torch.randn(tokens, out_dim) * out_scale)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """[S, N, D] -> [S, tokens, D]; on the patch grid when there is one."""
        if self.grid is not None:
            s, n, d = features.shape
            x = features.transpose(1, 2).reshape(s, d, *self.grid)
            return F.adaptive_avg_pool2d(x, grid_shape(self.tokens)).flatten(2).transpose(1, 2)
        return F.adaptive_avg_pool1d(features.transpose(1, 2), self.tokens).transpose(1, 2)

    def forward(self, slots: list[torch.Tensor | None]) -> torch.Tensor:
        """One entry per time slot: features [N, in_dim] or None when absent -> [S, tokens, out_dim]."""
        present = [i for i, x in enumerate(slots) if x is not None]
        out = self.absent.unsqueeze(0).repeat(len(slots), 1, 1)
        if present:
            param = self.mlp[0].weight
            pooled = torch.cat([self.pool(slots[i].unsqueeze(0).to(param.device, param.dtype)) for i in present])
            out[present] = self.out_norm(self.mlp(self.norm(pooled))).to(out.dtype)
        return out
