"""A recipe's data mix: several files, each sampled by its weight, as one list of records.

The rule (docs/training.md, "Data mixes and streaming"): a file of N records and weight w gives
floor(w) x N records (every record floor(w) times) plus round((w - floor(w)) x N) drawn without
replacement by a random.Random(seed) that walks the files in the recipe's order. An epoch is the
sum over the files; the Trainer's seeded sampler then shuffles it, so a resumed run, and every
rank of a multi-process run, sees the same epoch in the same order.
"""

from __future__ import annotations

import logging
import math
import random

from ..config import DataSource
from ..errors import DataError
from . import formats

log = logging.getLogger(__name__)


def load_mix(sources: list[DataSource], fmt: str, seed: int, allow_outside_media: bool = False) -> list[formats.Record]:
    """Every file validated first (all their problems in one DataError), then mixed by weight."""
    loaded, reports = [], []
    for source in sources:
        records, problems = formats.validate(source.path, fmt, allow_outside_media=allow_outside_media)
        if problems:
            reports.append(formats.describe_problems(source.path, fmt, problems))
        loaded.append(records)
    if reports:
        raise DataError("\n".join(reports))
    rng = random.Random(seed)
    mixed: list[formats.Record] = []
    for source, records in zip(sources, loaded):
        whole = math.floor(source.weight)
        drawn = rng.sample(records, round((source.weight - whole) * len(records)))
        taken = records * whole + drawn
        if len(sources) > 1:
            log.warning(
                "data mix: %s: %d of its %d records (weight %g)", source.path, len(taken), len(records), source.weight
            )
        mixed += taken
    return mixed
