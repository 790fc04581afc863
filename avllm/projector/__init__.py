"""Projectors: encoder features of one time slot -> a fixed number of LLM-space tokens.

A new kind is one new file plus one line in PROJECTORS.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .mlp_pool import MLPPoolProjector

PROJECTORS: dict[str, type[torch.nn.Module]] = {
    "mlp_pool": MLPPoolProjector,
}


def build_projector(
    kind: str, in_dim: int, out_dim: int, tokens: int, grid: tuple[int, int] | None = None, out_scale: float = 1.0
) -> torch.nn.Module:
    """The projector named `kind`; `grid` is the patch grid for visual features, None for audio;
    `out_scale` the per-element RMS of the LLM's token embeddings, which its outputs start at."""
    if kind not in PROJECTORS:
        raise ConfigError(f"projector {kind!r}: known kinds are {sorted(PROJECTORS)}")
    return PROJECTORS[kind](in_dim=in_dim, out_dim=out_dim, tokens=tokens, grid=grid, out_scale=out_scale)
