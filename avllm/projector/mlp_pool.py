"""Pool a slot's features to a fixed token budget, standardise, then a two-layer MLP
(LLaVA-1.5 style).

Audio frames are averaged along time. Visual patch tokens are pooled on their 2-D grid, and
each pooled token holds both the mean and the maximum of its region (side by side, twice the
encoder's width): the mean alone washes out a small object. Linear probes on the starter's
random-CLIP tokens of one frame pooled to 2x2 (585 synthetic training clips, 102 held-out):
shape 0.72 with the mean, 0.87 with mean and max; number of shapes 0.89 and 0.93. Averaged
over a clip's 8 frames, mean and max read shape at 0.99 and number at 1.00.

A slot with nothing to show (no audio track, audio ended, no picture) gets a learned "absent"
embedding, so the token count per slot never changes and the LLM is told plainly.

The pooled features are standardised per dimension, then whitened (ZCA), with statistics
fitted once on the training data (`fit_input_stats`, saved with the weights). Encoder features
share a large common component across clips (pooled CLIP features of synthetic clips: mean
cosine 0.98 between clips), which a per-token LayerNorm keeps. Trained on colour questions alone
(batch 16, LLM frozen), the starter answered 100% of held-out ones after 40 steps with
standardised inputs, 17% (chance) with the LayerNorm, which needed about 100 steps.

Standardising is not enough for the subtler facts: the random-CLIP inputs of the synthetic
clips keep 87% of their variance in 10 of 1,536 directions (colour, mostly), and gradient
descent learns the small directions (shape, number) last. Whitening gives every direction unit
variance. A linear read-out of one clip's slots trained with Adam (batch 8, 2e-3; the 423
one-group training clips of seed 1, the 102 held-out ones of seed 2): shape 41% / 68% / 89%
after 25 / 100 / 400 steps when standardised, 76% / 89% / 96% when whitened; number 38% / 73% /
97% against 78% / 96% / 100%. End to end, the starter went from 61.9% to 67.9% held-out (README).
The whitening matrix is folded into the layers that read it when a checkpoint is exported
(`fold_input_whitening` in model.py), so it costs no shipped bytes.

The output is RMS-normalised with a learned gain that starts at the scale of the LLM's own
token embeddings: unnormalised, the media tokens grew to ~50x the norm of text tokens in
training and swamped the residual stream (visual answers stayed at chance).
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
