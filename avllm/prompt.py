"""Chat prompts: the tokenizer's own template, the <video> placeholder and the label masks.

The placeholder is one added special token. Before the LLM runs, each placeholder is
expanded into the media layout (one placeholder id per media token, plus optional text
time marks) and the model scatters the media embeddings into those positions, the way
transformers' own multimodal models (LLaVA, Qwen2-VL) splice images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import SpliceError

VIDEO_TOKEN = "<video>"
IGNORE_INDEX = -100  # label value that carries no loss (transformers' convention)

Message = dict[str, str]


def add_video_token(tokenizer: Any) -> int:
    """Register <video> as a special token (once) and return its id.

    The id may lie past the LLM's embedding table: it is never looked up, since the model
    replaces every placeholder position by a media embedding before the LLM sees it.
    """
    if VIDEO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    return tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)


def check_messages(messages: list[Message]) -> None:
    """Exactly one <video>, in the first user turn; roles from the usual set; a user turn last or an answer."""
    if not messages:
        raise SpliceError("empty conversation: give at least one user turn")
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise SpliceError(f"bad turn {m!r}: each turn needs role system/user/assistant and text content")
    if not users:
        raise SpliceError("no user turn in the conversation")
    counts = [m["content"].count(VIDEO_TOKEN) for m in messages]
    if sum(counts) != 1 or counts[users[0]] != 1:
        raise SpliceError(
            f"the conversation has {sum(counts)} {VIDEO_TOKEN} placeholder(s); put exactly one in the first user turn"
        )


def with_video(question: str) -> str:
    """The first user turn: the question, then the placeholder (unless the user placed it).

    The clip goes last, next to where the answer starts: a small frozen LLM barely reads media
    that sit before the question (docs/experiments.md).
    """
    return question if VIDEO_TOKEN in question else f"{question}\n{VIDEO_TOKEN}"


def render(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


@dataclass
class ChatTokens:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX except on assistant tokens


def encode_chat(tokenizer: Any, messages: list[Message], add_generation_prompt: bool = False) -> ChatTokens:
    """Tokenize a conversation; only the assistant turns (with their end-of-turn token) carry labels,
    and none in a generation prompt (its history is context, and finding the spans renders the
    conversation once per assistant turn: quadratic in a long history).

    Assistant spans are found as the text each assistant turn adds to the rendered prompt,
    then mapped onto tokens with the tokenizer's character offsets.
    """
    check_messages(messages)
    text = render(tokenizer, messages, add_generation_prompt)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or add_generation_prompt:  # a prompt to answer is not trained on
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True)
        if not text.startswith(prefix):
            raise SpliceError("the chat template does not render prefixes consistently; label masks need that")
        spans.append((len(prefix), len(render(tokenizer, messages[: i + 1], add_generation_prompt=False))))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [IGNORE_INDEX] * len(enc["input_ids"])
    for k, (a, b) in enumerate(enc["offset_mapping"]):
        if any(s <= a and b <= e and b > a for s, e in spans):
            labels[k] = enc["input_ids"][k]
    return ChatTokens(list(enc["input_ids"]), labels)


def expand_placeholders(tokens: ChatTokens, video_token_id: int, layouts: list[list[int]]) -> ChatTokens:
    """Replace the i-th <video> id with layouts[i] (media slots as placeholder ids, time marks as text)."""
    positions = [k for k, t in enumerate(tokens.input_ids) if t == video_token_id]
    if len(positions) != len(layouts):
        raise SpliceError(
            f"the prompt has {len(positions)} {VIDEO_TOKEN} placeholder(s) but {len(layouts)} clip(s) were given"
        )
    ids: list[int] = []
    labels: list[int] = []
    last = 0
    for pos, layout in zip(positions, layouts):
        ids += tokens.input_ids[last:pos] + layout
        labels += tokens.labels[last:pos] + [IGNORE_INDEX] * len(layout)
        last = pos + 1
    ids += tokens.input_ids[last:]
    labels += tokens.labels[last:]
    return ChatTokens(ids, labels)
