"""Zero-shot scoring: multiple choice by log-likelihood (or by generation and answer matching),
open questions by normalised exact match.

Prompt (shared with `avllm synth`'s instruction data, see data/formats.qa_prompt): the user's
turn is the question, for multiple choice "Options: a; b; c; d.", then `<video>`; each
option is scored as the assistant's whole answer (its tokens and the end-of-turn tokens),
by the mean log-probability per token, so long and short options compete fairly. Yes/no
questions are asked bare and scored by the first word alone ("Yes" against "No"), since a
grounded answer goes on to explain itself ("No, nobody speaks; ...").

Each clip is decoded and encoded once; all options of all its questions go through the
LLM in padded batches. The model is reached through the small `AnswerModel` interface so
tests can score a fake model whose answers are known.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from ..data.formats import is_yes_no, qa_messages
from ..errors import AVLLMError
from ..prompt import IGNORE_INDEX, Message
from .tasks import EvalItem, TaskData

MODES = ("loglik", "generate")
YES_NO_SCORED = ("Yes", "No")  # how a grounded answer starts (see synth's probes)
NUMBER_WORDS = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())
}
ARTICLES = {"a", "an", "the"}

ChoiceRequest = tuple[
    list[Message], list[str], bool
]  # conversation ending in the user's turn, options, first-word only


class AnswerModel(Protocol):
    """What the evaluator needs from a model."""

    name: str

    def encode(self, media: Path) -> Any:
        """Decode and encode one clip (called once per clip)."""

    def choice_scores(self, enc: Any, requests: Sequence[ChoiceRequest]) -> list[list[float]]:
        """For each request, the length-normalised log-likelihood of each option as the answer."""

    def generate(self, enc: Any, messages: list[Message], max_new_tokens: int) -> str:
        """The greedy answer to the conversation."""


@dataclass
class ItemResult:
    id: str
    kind: str
    split: str | None
    answer: str
    prediction: str | None
    correct: bool
    choices: list[str] | None = None
    scores: list[float] | None = None
    generated: str | None = None

    @property
    def yes_no(self) -> bool:
        return is_yes_no(self.choices) or (self.choices is None and normalize(self.answer) in ("yes", "no"))


@dataclass
class TaskResult:
    name: str
    mode: str
    results: list[ItemResult] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # media files not found (items not scored)
    missing_items: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # media path -> why it could not be decoded
    unreadable_items: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


# ----------------------------------------------------------------------------- answer matching


def normalize(text: str) -> str:
    """Lower case, punctuation and articles dropped, number words as digits, single spaces."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def exact_match(prediction: str, answer: str) -> bool:
    return normalize(prediction) == normalize(answer)


def match_choice(generated: str, choices: list[str]) -> str | None:
    """The option a free answer names: the same text, else the first yes/no word, else the option
    found earliest in the answer (the longest when several start there); None when none is named."""
    text = normalize(generated)
    normed = [normalize(c) for c in choices]
    for c, n in zip(choices, normed):
        if text == n:
            return c
    if is_yes_no(choices):
        first = text.split()[0] if text else ""
        return next((c for c in choices if normalize(c) == first), None)
    padded = f" {text} "
    found = [(padded.find(f" {n} "), -len(n), c) for c, n in zip(choices, normed) if n and f" {n} " in padded]
    return min(found)[2] if found else None


# ----------------------------------------------------------------------------- evaluation loop


def _messages(item: EvalItem) -> list[Message]:
    return qa_messages(item.question, item.choices, item.history or None)


def evaluate(
    task: TaskData,
    model: AnswerModel,
    mode: str = "loglik",
    limit: int | None = None,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> TaskResult:
    """Score a task's items (the first `limit`); each clip is encoded once for all its questions."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    start = time.perf_counter()
    items = task.items[:limit] if limit else list(task.items)
    result = TaskResult(task.name, mode, skipped=dict(task.skipped))
    groups: dict[Path, list[EvalItem]] = {}
    for item in items:
        if item.media is None:
            result.missing_items += 1
            continue
        groups.setdefault(item.media, []).append(item)
    result.missing = sorted({it.wanted or it.id for it in items if it.media is None})
    bar = tqdm(total=sum(len(g) for g in groups.values()), desc=f"eval {task.name}", unit="q", disable=not progress)
    try:
        for media, group in groups.items():
            try:
                enc = model.encode(media)
            except AVLLMError as exc:  # a damaged benchmark file: counted and named, not fatal
                result.unreadable[str(media)] = str(exc)
                result.unreadable_items += len(group)
                bar.update(len(group))
                continue
            result.results += _score_group(model, enc, group, mode, max_new_tokens)
            bar.update(len(group))
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


def _score_group(
    model: AnswerModel, enc: Any, group: list[EvalItem], mode: str, max_new_tokens: int
) -> list[ItemResult]:
    by_ll = [it for it in group if it.choices and mode == "loglik"]
    scored_by_ll = {id(it) for it in by_ll}
    requests = []
    for it in by_ll:
        yn = is_yes_no(it.choices)
        options = (
            [YES_NO_SCORED[0] if c.strip().lower() == "yes" else YES_NO_SCORED[1] for c in it.choices]
            if yn
            else it.choices
        )
        requests.append((_messages(it), options, yn))
    scores = iter(model.choice_scores(enc, requests) if requests else [])
    out = []
    for it in group:
        if id(it) in scored_by_ll:
            s = list(next(scores))
            best = max(range(len(s)), key=lambda k: s[k])
            pred = it.choices[best]
            out.append(ItemResult(it.id, it.kind, it.split, it.answer, pred, pred == it.answer, it.choices, s))
            continue
        text = model.generate(enc, _messages(it), max_new_tokens)
        if it.choices:
            pred = match_choice(text, it.choices)
            out.append(
                ItemResult(it.id, it.kind, it.split, it.answer, pred, pred == it.answer, it.choices, generated=text)
            )
        else:
            out.append(
                ItemResult(it.id, it.kind, it.split, it.answer, text, exact_match(text, it.answer), generated=text)
            )
    return out


# ----------------------------------------------------------------------------- the real model


class AVLLMScorer:
    """AnswerModel over an AVLLM: batched option scoring with left padding, greedy generation."""

    def __init__(self, model: Any, batch_size: int = 16, frames: int | None = None, name: str | None = None):
        self.model = model
        self.batch_size = max(1, batch_size)
        self.frames = frames
        self.name = name or model.config.name

    def encode(self, media: Path) -> Any:
        from ..inference import encode_file

        return encode_file(self.model, media, self.frames)

    def _sequence(self, enc: Any, messages: list[Message], option: str, first_word: bool) -> tuple[list[int], int]:
        """Token ids of the conversation answered with `option`, and how many final tokens are scored."""
        tokens = self.model.tokenize(
            [*messages, {"role": "assistant", "content": option}], enc, add_generation_prompt=False
        )
        labels = tokens.labels
        end = max(i for i, t in enumerate(labels) if t != IGNORE_INDEX) + 1
        begin = end
        while begin > 0 and labels[begin - 1] != IGNORE_INDEX:  # the last assistant turn only
            begin -= 1
        if first_word:
            end = min(end, begin + len(self.model.tokenizer.encode(option, add_special_tokens=False)))
        return tokens.input_ids[:end], end - begin

    def choice_scores(self, enc: Any, requests: Sequence[ChoiceRequest]) -> list[list[float]]:
        """Shared work runs once, in three passes over a key/value cache: the tokens every sequence
        starts with (system prompt and media), then each question's own tokens (one row per
        question), then the options (one row per option, on its question's row). Sequences whose
        shared start does not hold all the media run whole instead (left padded)."""
        import torch

        groups = [
            [self._sequence(enc, messages, option, first) for option in options]
            for messages, options, first in requests
        ]
        seqs = [seq for group in groups for seq in group]
        with torch.inference_mode():
            shared = self._common_length(seqs, 0)
            if shared == 0 or any(self.model.video_token_id in ids[shared:] for ids, _ in seqs):
                flat = [
                    x
                    for k in range(0, len(seqs), self.batch_size)
                    for x in self._batch_scores(enc, seqs[k : k + self.batch_size], torch)
                ]
            else:
                flat = self._staged_scores(enc, groups, shared, torch)
        out, k = [], 0
        for group in groups:
            out.append(flat[k : k + len(group)])
            k += len(group)
        return out

    def _staged_scores(
        self, enc: Any, groups: list[list[tuple[list[int], int]]], shared: int, torch: Any
    ) -> list[float]:
        device = self.model.llm.get_input_embeddings().weight.device
        first = torch.tensor([groups[0][0][0][:shared]], device=device)
        out = self._llm_call(self.model.embed(first, [enc]), torch.ones_like(first), None, None, logits_to_keep=1)
        cache, mask = self._out_cache(out), torch.ones((1, shared), dtype=torch.long, device=device)
        owns = [self._common_length(group, shared) for group in groups]
        parts = [group[0][0][shared:own] for group, own in zip(groups, owns)]
        if any(parts):  # the questions' own tokens, one row each
            rows = [0] * len(groups)
            for k in range(0, len(groups), self.batch_size):
                chunk = list(range(k, min(k + self.batch_size, len(groups))))
                sub, sub_mask = self._select(cache, [0] * len(chunk), torch), mask.expand(len(chunk), -1)
                _, new_cache, new_mask = self._extend(sub, sub_mask, [parts[i] for i in chunk], torch, logits=False)
                for j, i in enumerate(chunk):
                    rows[i] = (new_cache, new_mask, j)
        else:
            rows = [(cache, mask, 0)] * len(groups)
        jobs = [(g, ids[own:], n) for g, (group, own) in enumerate(zip(groups, owns)) for ids, n in group]
        scores: list[float] = []
        for k in range(0, len(jobs), self.batch_size):
            chunk = jobs[k : k + self.batch_size]
            caches = {}  # rows may come from different question batches: gather per source cache
            for g, _, _ in chunk:
                caches.setdefault(id(rows[g][0]), rows[g][0])
            if len(caches) > 1:  # split the chunk where the source cache changes
                for part in self._split_by_source(chunk, rows):
                    scores += self._option_scores(part, rows, torch)
            else:
                scores += self._option_scores(chunk, rows, torch)
        return scores

    @staticmethod
    def _split_by_source(chunk: list, rows: list) -> list[list]:
        parts: list[list] = []
        for job in chunk:
            if parts and rows[parts[-1][-1][0]][0] is rows[job[0]][0]:
                parts[-1].append(job)
            else:
                parts.append([job])
        return parts

    def _option_scores(self, chunk: list, rows: list, torch: Any) -> list[float]:
        source, source_mask, _ = rows[chunk[0][0]]
        index = [rows[g][2] for g, _, _ in chunk]
        sub = self._select(source, index, torch)
        sub_mask = source_mask[torch.tensor(index, device=source_mask.device)]
        logprobs, _, _ = self._extend(sub, sub_mask, [rest for _, rest, _ in chunk], torch, logits=True)
        out = []
        for row, (_, rest, n) in enumerate(chunk):
            pos = torch.arange(len(rest) - n - 1, len(rest) - 1, device=logprobs.device)
            target = torch.tensor(rest, device=logprobs.device)[pos + 1]
            out.append(float(logprobs[row, pos, target].mean()))
        return out

    def _extend(self, cache: Any, mask: Any, parts: list[list[int]], torch: Any, logits: bool) -> tuple:
        """Run `parts` (one token list per cache row, right padded) after the cached tokens; rows may
        hold holes (padding) in the cache, so positions are given explicitly. Returns log-probs
        (or None), the extended cache and its mask."""
        device = mask.device
        width = max(1, max(len(p) for p in parts))
        ids = torch.zeros((len(parts), width), dtype=torch.long, device=device)
        new = torch.zeros((len(parts), width), dtype=torch.long, device=device)
        for row, p in enumerate(parts):
            if p:
                ids[row, : len(p)] = torch.tensor(p, device=device)
                new[row, : len(p)] = 1
        positions = mask.sum(dim=1, keepdim=True) + torch.arange(width, device=device).unsqueeze(0)
        full = torch.cat([mask, new], dim=1)
        out = self._llm_call(
            self.model.llm.get_input_embeddings()(ids),
            full,
            cache,
            positions,
            **({} if logits else {"logits_to_keep": 1}),
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1) if logits else None
        return logprobs, self._out_cache(out), full

    def _llm_call(self, embeds: Any, mask: Any, cache: Any, positions: Any, **kw: Any) -> Any:
        """The LLM forward with a key/value cache, whichever keyword this transformers names it by."""
        import inspect

        if not hasattr(self, "_cache_kw"):
            params = inspect.signature(self.model.base_llm.forward).parameters
            self._cache_kw = "cache" if "cache" in params else "past_key_values"
        extra = {self._cache_kw: cache} if cache is not None else {}
        if positions is not None:
            extra["position_ids"] = positions
        return self.model.llm(inputs_embeds=embeds, attention_mask=mask, use_cache=True, **extra, **kw)

    @staticmethod
    def _out_cache(out: Any) -> Any:
        cache = getattr(out, "cache", None)
        return cache if cache is not None else out.past_key_values

    @staticmethod
    def _select(cache: Any, index: list[int], torch: Any) -> Any:
        """A new cache holding rows `index` (repeats allowed) of `cache`, which stays as it was."""
        from transformers import DynamicCache

        idx = torch.tensor(index, device=cache.layers[0].keys.device)
        return DynamicCache(ddp_cache_data=[(layer.keys[idx], layer.values[idx]) for layer in cache.layers])

    @staticmethod
    def _common_length(seqs: list[tuple[list[int], int]], floor: int) -> int:
        """How many leading tokens all sequences share, leaving each one's first scored logit outside."""
        length = min(len(ids) - n for ids, n in seqs) - 1
        first = seqs[0][0]
        for ids, _ in seqs[1:]:
            j = floor
            while j < length and ids[j] == first[j]:
                j += 1
            length = j
        return max(length, floor)

    def _batch_scores(self, enc: Any, batch: list[tuple[list[int], int]], torch: Any) -> list[float]:
        """Mean log-probability of each sequence's last `n` tokens; sequences padded on the left so
        that all scored tokens sit at the end and only those logits are computed."""
        device = self.model.llm.get_input_embeddings().weight.device
        pad = self.model.tokenizer.pad_token_id
        pad = 0 if pad is None or pad == self.model.video_token_id else pad
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (seq, _) in enumerate(batch):
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        keep = max(n for _, n in batch) + 1
        ids, mask = ids.to(device), mask.to(device)
        embeds = self.model.embed(ids, [enc] * len(batch))
        logits = self.model.llm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # position j predicts token j + 1
        lengths = torch.tensor([n for _, n in batch], device=device)
        scored = torch.arange(keep - 1, device=device).unsqueeze(0) >= keep - 1 - lengths.unsqueeze(1)
        targets = ids[:, width - keep + 1 :].masked_fill(~scored, 0)  # unscored slots may hold media placeholders
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, keep - 1]
        return [float(picked[row, picked.shape[1] - n :].mean()) for row, (_, n) in enumerate(batch)]

    def generate(self, enc: Any, messages: list[Message], max_new_tokens: int) -> str:
        return "".join(self.model.stream(messages, enc, max_new_tokens=max_new_tokens)).strip()
