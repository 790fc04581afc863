"""A few LLM tokens computed from the whole clip at once: both streams, every slot.

The slot projectors see one frame (or its sound) at a time, so a fact that spans frames (which
way the shapes move, which shape came first) reaches the LLM only if the LLM compares tokens
across slots, which a small LLM learns slowly, although a linear probe reads such facts from
the concatenated projector inputs. This module is such a read-out, trained through the LLM: each
slot token's standardised input is squeezed to `width` numbers, the clip's slots are resampled
to a fixed count, and a two-layer MLP over all of it writes `tokens` LLM tokens (the idea of
Video-LLaMA's and VideoLLaMA2's clip-level connectors, kept small). What it does and does not
carry in the trained starter: docs/experiments.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClipSummary(nn.Module):
    def __init__(
        self,
        in_dims: tuple[int, ...],
        slot_tokens: tuple[int, ...],
        out_dim: int,
        tokens: int,
        slots: int = 8,
        width: int = 32,
        hidden: int = 256,
        out_scale: float = 1.0,
    ):
        super().__init__()
        self.tokens, self.slots = tokens, slots
        self.squeeze = nn.ModuleList(nn.Linear(d, width) for d in in_dims)
        self.mlp = nn.Sequential(
            nn.Linear(slots * width * sum(slot_tokens), hidden), nn.GELU(), nn.Linear(hidden, tokens * out_dim)
        )
        self.out_norm = nn.RMSNorm(out_dim)
        nn.init.constant_(self.out_norm.weight, out_scale)

    def forward(self, streams: list[torch.Tensor]) -> torch.Tensor:
        """Per stream the standardised slot inputs [S, tokens_i, in_dim_i] -> [tokens, out_dim]."""
        parts = []
        for squeeze, x in zip(self.squeeze, streams):
            y = squeeze(x.to(squeeze.weight.dtype)).flatten(1)  # [S, tokens_i * width]
            parts.append(F.adaptive_avg_pool1d(y.T.unsqueeze(0), self.slots)[0].T.flatten())  # S -> self.slots
        return self.out_norm(self.mlp(torch.cat(parts)).view(self.tokens, -1))
