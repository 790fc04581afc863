"""LLM tokens per slot that say how the slot's picture differs from the clip's first frame.

A fact that spans frames (which way the shapes move) reaches the LLM through the slot tokens only
if the LLM compares tokens across positions, which SmolLM2-135M learns slowly: the trained
starter answered 10 to 33 of 44 held-out motion questions in runs that differed only in their
host, while a linear probe reads motion from its slot tokens at 100%. The clip summary
(clip_summary.py) reads every slot at once but memorises the training clips: its tokens give
motion for 98% of the training clips and 49% of held-out ones.

These tokens carry the change itself, so the LLM reads it at one position. The same weights
serve every slot, and the input holds only what changed (a clip's colour and shapes cancel out).
Linear probes on the starter's whitened visual inputs (423 one-group training clips, 102
held-out): the last slot minus the first reads motion at 99% held-out, one slot minus the one
before it at 63%. With the LLM frozen (200 steps on the 412 motion questions, 44 held-out):
27/44 with one change token per slot (then reading both streams), 13/44 with the four summary
tokens, 13/44 and 16/44 with a token per slot that also reads the slot itself (beside its
change since the previous slot, or since the first). The picture alone: reading the sound too,
the recipe's change tokens carried motion for only 53% of held-out clips (a probe), the sound's
changes (beeps, words) taking their room.
"""

from __future__ import annotations

import torch
from torch import nn


class SlotChange(nn.Module):
    def __init__(self, in_dims: tuple[int, ...], slot_tokens: tuple[int, ...], out_dim: int, tokens: int,
                 width: int = 32, hidden: int = 256, out_scale: float = 1.0):
        super().__init__()
        self.tokens = tokens
        self.squeeze = nn.ModuleList(nn.Linear(d, width) for d in in_dims)
        self.mlp = nn.Sequential(nn.Linear(width * sum(slot_tokens), hidden), nn.GELU(), nn.Linear(hidden, tokens * out_dim))
        self.out_norm = nn.RMSNorm(out_dim)
        nn.init.constant_(self.out_norm.weight, out_scale)

    def forward(self, streams: list[torch.Tensor]) -> torch.Tensor:
        """Per stream the standardised slot inputs [S, tokens_i, in_dim_i] -> [S, tokens, out_dim]."""
        now = torch.cat([squeeze(x.to(squeeze.weight.dtype)).flatten(1) for squeeze, x in zip(self.squeeze, streams)], dim=1)
        return self.out_norm(self.mlp(now - now[:1]).view(len(now), self.tokens, -1))
