"""Instruction records -> tokenized examples with their cached clip features -> padded batches.

Every record is tokenized once up front, so over-long examples are dropped (and counted)
before training starts rather than failing mid-run; only the kept records' indices stay in
memory, and each item is read, tokenized and given its clip's cached features when asked for.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..model import AVLLM, EncodedClip
from ..prompt import IGNORE_INDEX, ChatTokens
from .cache import FeatureCache
from .formats import InstructionRecord, PreferenceRecord

log = logging.getLogger(__name__)


class Examples(Sequence):
    """The records that fit max_length, each read and tokenized when asked for: what is held is
    the records' indices (8 bytes each), so the set may be far larger than memory."""

    def __init__(
        self,
        records: Sequence[Any],
        cache: FeatureCache,
        tokenize: Callable[[Any, EncodedClip], list[ChatTokens]],
        max_length: int,
        what: str,
    ):
        self.records, self.cache, self.tokenize = records, cache, tokenize
        self.kept: array = array("q")
        dropped = []
        for number, record in enumerate(tqdm(records, desc=f"tokenizing {what}", unit="record")):
            parts = tokenize(record, cache.get(record.media))
            if max(len(p.input_ids) for p in parts) > max_length:
                dropped.append(record.id)
            else:
                self.kept.append(number)
        if dropped:
            log.warning(
                "dropped %d of %d %s longer than max_length=%d tokens (first: %s)",
                len(dropped),
                len(records),
                what,
                max_length,
                ", ".join(dropped[:5]),
            )

    def __len__(self) -> int:
        return len(self.kept)

    def record(self, index: int) -> Any:
        return self.records[self.kept[index]]

    def __getitem__(self, index: int) -> tuple[Any, list[ChatTokens]]:  # type: ignore[override]
        record = self.record(index)
        return record, self.tokenize(record, self.cache.get(record.media))


class InstructionDataset(Dataset):
    """Supervised examples: the whole conversation, loss on the assistant turns only."""

    def __init__(self, records: Sequence[InstructionRecord], cache: FeatureCache, model: AVLLM, max_length: int):
        self.cache = cache
        self.examples = Examples(
            records,
            cache,
            lambda r, enc: [model.tokenize(r.conversations, enc, add_generation_prompt=False)],
            max_length,
            "instruction records",
        )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record, (tokens,) = self.examples[index]
        return {"input_ids": tokens.input_ids, "labels": tokens.labels, "media": self.cache.get(record.media)}


@dataclass
class Collator:
    """Right-pads token lists into tensors; the clips travel as a list beside them."""

    pad_id: int

    def pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [value] * (width - len(r)) for r in rows])

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [b["input_ids"] for b in batch]
        return {
            "input_ids": self.pad(ids, self.pad_id),
            "attention_mask": self.pad([[1] * len(r) for r in ids], 0),
            "labels": self.pad([b["labels"] for b in batch], IGNORE_INDEX),
            "media": [b["media"] for b in batch],
        }


class PreferenceDataset(Dataset):
    """Preference pairs: the prompt with the chosen and with the rejected answer, loss on the answer
    alone. `reference` holds the starting policy's log-probabilities [N, 2], set before training."""

    def __init__(self, records: Sequence[PreferenceRecord], cache: FeatureCache, model: AVLLM, max_length: int):
        self.cache = cache
        self.reference: torch.Tensor | None = None

        def tokenize(record: PreferenceRecord, enc: EncodedClip) -> list[ChatTokens]:
            start = len(model.tokenize(record.prompt, enc, add_generation_prompt=True).input_ids)
            pair = []
            for answer in (record.chosen, record.rejected):
                tokens = model.tokenize([*record.prompt, {"role": "assistant", "content": answer}], enc, False)
                pair.append(ChatTokens(tokens.input_ids, [IGNORE_INDEX] * start + tokens.labels[start:]))
            return pair

        self.examples = Examples(records, cache, tokenize, max_length, "preference pairs")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record, (chosen, rejected) = self.examples[index]
        item = {"chosen": chosen, "rejected": rejected, "media": self.cache.get(record.media), "index": index}
        if self.reference is not None:
            item["reference"] = self.reference[index]
        return item


@dataclass
class PairCollator(Collator):
    """One padded batch of 2B rows: the B chosen answers, then the B rejected ones."""

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [
            {"input_ids": b[side].input_ids, "labels": b[side].labels, "media": b["media"]}
            for side in ("chosen", "rejected")
            for b in batch
        ]
        out = super().__call__(rows)
        if all("reference" in b for b in batch):
            out["reference"] = torch.stack([b["reference"] for b in batch])
        return out
