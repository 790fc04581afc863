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
from array import array
from collections.abc import Iterable, Sequence

from ..config import DataSource
from ..errors import DataError
from . import formats

log = logging.getLogger(__name__)


class MixedRecords(Sequence):
    """The epoch's records as (file, record) references into the files' `RecordFile`s: each record
    is read from disk when asked for, so the mix holds 16 bytes per record, never the records."""

    def __init__(self, files: list[formats.RecordFile]):
        self.files = files
        self.file_of, self.record_of = array("q"), array("q")

    def add(self, file: int, records: Iterable[int]) -> None:
        for record in records:
            self.file_of.append(file)
            self.record_of.append(record)

    def __len__(self) -> int:
        return len(self.file_of)

    def __getitem__(self, index: int) -> formats.Record:  # type: ignore[override]
        return self.files[self.file_of[index]][self.record_of[index]]


def load_mix(sources: list[DataSource], fmt: str, seed: int, allow_outside_media: bool = False) -> MixedRecords:
    """Every file validated first (all their problems in one DataError), then mixed by weight."""
    files, reports = [], []
    for source in sources:
        records, problems = formats.index(source.path, fmt, allow_outside_media=allow_outside_media)
        if problems:
            reports.append(formats.describe_problems(source.path, fmt, problems))
        files.append(records)
    if reports:
        raise DataError("\n".join(reports))
    rng = random.Random(seed)
    mixed = MixedRecords(files)
    for number, (source, records) in enumerate(zip(sources, files)):
        whole = math.floor(source.weight)
        drawn = rng.sample(range(len(records)), round((source.weight - whole) * len(records)))
        before = len(mixed)
        for _ in range(whole):
            mixed.add(number, range(len(records)))
        mixed.add(number, drawn)
        if len(sources) > 1:
            taken = len(mixed) - before
            log.warning("data mix: %s: %d of %d records (weight %g)", source.path, taken, len(records), source.weight)
    return mixed
