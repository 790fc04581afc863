"""Pool a slot's features to a fixed token budget, standardise, then a two-layer MLP
(LLaVA-1.5 style).

Audio frames are averaged along time. Visual patch tokens are pooled on their 2-D grid, and
each pooled token holds both the mean and the maximum of its region (side by side, twice the
encoder's width): the mean alone washes out a small object.

A slot with nothing to show (no audio track, audio ended, no picture) gets a learned "absent"
embedding, so the token count per slot never changes and the LLM is told plainly.

The pooled features are standardised per dimension, then whitened (ZCA), with statistics
fitted once on the training data (`fit_input_stats`, saved with the weights). Encoder features
share a large common component across clips, which a per-token LayerNorm keeps and
standardising removes. Standardising is not enough for the subtler facts: the random-CLIP
features keep most of their variance in a few directions (colour, mostly), and gradient descent
learns the small directions (shape, number) last; whitening gives every direction unit
variance. The whitening matrix is folded into the layers that read it when a checkpoint is
exported (`fold_input_whitening` in model.py), so it costs no shipped bytes.

The output is RMS-normalised with a learned gain that starts at the scale of the LLM's own
token embeddings: unnormalised, the media tokens grow far beyond the norm of text tokens in
training and swamp the residual stream.

Measurements behind these choices: docs/experiments.md.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WHITEN_SHRINK = 0.1  # added to the eigenvalues of the inputs' correlation matrix (mean 1): a floor on the gain


def grid_shape(tokens: int) -> tuple[int, int]:
    """The most square (rows, cols) with rows * cols == tokens."""
    rows = max(d for d in range(1, math.isqrt(tokens) + 1) if tokens % d == 0)
    return rows, tokens // rows


class MLPPoolProjector(nn.Module):
    def __init__(
        self, in_dim: int, out_dim: int, tokens: int, grid: tuple[int, int] | None = None, out_scale: float = 1.0
    ):
        super().__init__()
        self.tokens = tokens
        self.grid = grid
        self.input_dim = 2 * in_dim if grid is not None else in_dim  # visual: mean and max of each region
        self.register_buffer("feature_mean", torch.zeros(self.input_dim))  # identity until fit_input_stats
        self.register_buffer("feature_std", torch.ones(self.input_dim))
        self.register_buffer("feature_whiten", None)  # [input_dim, input_dim] once fitted; None: no whitening
        self.mlp = nn.Sequential(nn.Linear(self.input_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self.out_norm = nn.RMSNorm(out_dim)
        nn.init.constant_(self.out_norm.weight, out_scale)
        self.absent = nn.Parameter(torch.randn(tokens, out_dim) * out_scale)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """[S, N, D] -> [S, tokens, input_dim]: on the patch grid the mean and the max, else the mean."""
        if self.grid is None:
            return F.adaptive_avg_pool1d(features.transpose(1, 2), self.tokens).transpose(1, 2)
        x = features.transpose(1, 2).reshape(features.shape[0], features.shape[2], *self.grid)
        size = grid_shape(self.tokens)
        return (
            torch.cat([F.adaptive_avg_pool2d(x, size), F.adaptive_max_pool2d(x, size)], dim=1)
            .flatten(2)
            .transpose(1, 2)
        )

    def bins(self, frames: int) -> list[tuple[int, int]]:
        """The [start, end) of the frames each token averages when `pool` reads `frames` along time
        (adaptive average pooling's bins): what a long clip's audio is reduced to as it is encoded."""
        return [((i * frames) // self.tokens, -(-(i + 1) * frames // self.tokens)) for i in range(self.tokens)]

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any, **kwargs: Any):
        """Weights saved with a whitening matrix bring it; exported ones (folded) and older ones have none."""
        whiten = state_dict.get(prefix + "feature_whiten")
        self.feature_whiten = None if whiten is None else self.feature_mean.new_empty(whiten.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit_input_stats(self, slots: list[torch.Tensor | None]) -> bool:
        """Set the standardisation and the whitening from a sample of slots (before training; absent
        slots skipped). False, leaving them as they were, when the sample has no features of this kind."""
        present = [self.pool(x.unsqueeze(0).float()) for x in slots if x is not None]
        pooled = torch.cat(present).flatten(0, 1) if present else torch.zeros(0)
        if len(pooled) < 2:
            return False
        mean, std = pooled.mean(0), pooled.std(0).clamp_min(1e-4)
        values, vectors = torch.linalg.eigh(torch.cov(((pooled - mean) / std).T.double()))
        whiten = vectors @ torch.diag((values.clamp_min(0) + WHITEN_SHRINK).rsqrt()) @ vectors.T
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)
        self.feature_whiten = whiten.to(self.feature_mean)
        return True

    def standardized(self, slots: list[torch.Tensor | None]) -> tuple[torch.Tensor, list[int]]:
        """The pooled, standardised (and whitened) inputs [S, tokens, input_dim] (zeros where absent)
        and the present slots."""
        present = [i for i, x in enumerate(slots) if x is not None]
        param = self.mlp[0].weight
        out = param.new_zeros(len(slots), self.tokens, self.input_dim)
        if present:
            pooled = torch.cat([self.pool(slots[i].unsqueeze(0).to(param.device, param.dtype)) for i in present])
            standard = (pooled - self.feature_mean) / self.feature_std
            white = standard @ self.feature_whiten if self.feature_whiten is not None else standard
            out[present] = white.to(out.dtype)  # autocast runs the matmul in bf16
        return out, present

    def forward(
        self, slots: list[torch.Tensor | None], standard: tuple[torch.Tensor, list[int]] | None = None
    ) -> torch.Tensor:
        """One entry per time slot: features [N, in_dim] or None when absent -> [S, tokens, out_dim].
        `standard` is this call's `standardized(slots)` when the caller already has it."""
        inputs, present = standard if standard is not None else self.standardized(slots)
        out = self.absent.unsqueeze(0).repeat(len(slots), 1, 1)
        if present:
            out[present] = self.out_norm(self.mlp(inputs[present])).to(out.dtype)
        return out
