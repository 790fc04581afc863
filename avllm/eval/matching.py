"""How each item is asked and its answer matched: multiple choice by log-likelihood (or by generation
and answer matching), open questions by normalised exact match.

Prompt (shared with `avllm synth`'s instruction data, see data/formats.qa_prompt): the user's
turn is the question, for multiple choice "Options: a; b; c; d.", then `<video>`; the option the
model finds likeliest as its answer is the prediction (avllm/scoring.py scores them). Yes/no
questions are asked bare and answered by generation in either mode, since a grounded answer may
say what it sees before it decides ("I see a red cross. No, there is no green cross."); the
prediction is the answer's decision (data.formats.decision).

Each clip is decoded and encoded once for all its questions. The model is reached through the
small `AnswerModel` interface so tests can score a fake model whose answers are known.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from ..data.formats import DECISION, decision, is_yes_no, qa_messages
from ..errors import AVLLMError
from ..prompt import Message
from ..scoring import ChoiceRequest
from .tasks import EvalItem, TaskData

MODES = ("loglik", "generate")
NUMBER_WORDS = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())
}
ARTICLES = {"a", "an", "the"}


class AnswerModel(Protocol):
    """What the evaluator needs from a model."""

    name: str

    def encode(self, media: Path) -> Any:
        """Decode and encode one clip (called once per clip)."""

    def choice_scores(self, enc: Any, requests: Sequence[ChoiceRequest]) -> list[list[float]]:
        """For each request, the length-normalised log-likelihood of each option as the answer."""

    def generate(
        self, enc: Any, messages: list[Message], max_new_tokens: int, until: Callable[[str], bool] | None = None
    ) -> str:
        """The greedy answer to the conversation, cut short once `until(answer so far)` holds."""


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


def decided(answer: str) -> bool:
    """Whether a yes/no answer's decision is known: its word is followed by more ("Yes," not "Yes"
    that may go on to "Yesterday"), so generation can stop there."""
    found = DECISION.search(answer)
    return found is not None and found.end() < len(answer)


def match_choice(generated: str, choices: list[str]) -> str | None:
    """The option a free answer names: for yes/no its decision, else the same text, else the option
    found earliest in the answer (the longest when several start there); None when none is named."""
    if is_yes_no(choices):
        said = decision(generated)
        return next((c for c in choices if c.strip().lower() == said), None)
    text = normalize(generated)
    normed = [normalize(c) for c in choices]
    for c, n in zip(choices, normed):
        if text == n:
            return c
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
    by_ll = [it for it in group if it.choices and not is_yes_no(it.choices) and mode == "loglik"]
    scored_by_ll = {id(it) for it in by_ll}
    requests = [(_messages(it), it.choices) for it in by_ll]
    scores = iter(model.choice_scores(enc, requests) if requests else [])
    out = []
    for it in group:
        if id(it) in scored_by_ll:
            s = list(next(scores))
            best = max(range(len(s)), key=lambda k: s[k])
            pred = it.choices[best]
            out.append(ItemResult(it.id, it.kind, it.split, it.answer, pred, pred == it.answer, it.choices, s))
            continue
        text = model.generate(enc, _messages(it), max_new_tokens, decided if is_yes_no(it.choices) else None)
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
