"""Preference pairs: TRL's prompt/chosen/rejected forms and the LLaVA-Hound DPO layout.

Checked against:
- TRL's "Dataset formats and types" documentation (huggingface.co/docs/trl/dataset_formats):
  a preference row is standard `{"prompt": str, "chosen": str, "rejected": str}` or
  conversational `{"prompt": [{"role", "content"}...], "chosen": [{"role": "assistant", ...}],
  "rejected": [...]}`; with an implicit prompt the conversational chosen/rejected hold the
  whole conversation. Vision rows put an `images` column beside them and typed content parts
  (`{"type": "image"}`, `{"type": "text", "text": ...}`). TRL has no column for a clip, so the
  clip's path is read from `video`, `audio` or `media` (or a one-item `videos`/`audios` list).
- LLaVA-Hound DPO, RifleZhang/LLaVA-Hound-DPO `dpo_scripts/train_dpo.sh` and its `run_dpo.py`
  (`DPODataset`): `sft_dpo_17k.jsonl`, one `{"id", "video", "prompt", "chosen", "rejected",
  "chosen_score", "rejected_score"}` per line, `video` relative to `--video_folder` (the
  ShareGPTVideo release has frame folders there; avllm needs the clip, looked for as
  `{video}` then `{video}.mp4` etc.), `<video>` optional in the prompt.

A standard row without a prompt (TRL's implicit prompt as plain text) is skipped: where the
prompt ends inside the text is not written down.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .base import Bad, Skip, need, one_media, place_video, strip_placeholders, text

MEDIA_KEYS = ("video", "audio", "media", "videos", "audios")
ROLES = ("system", "user", "assistant")
PARTS = ("image", "video", "audio")


def content_text(content: Any, where: str) -> tuple[str, int]:
    """A message's text (typed parts joined) without placeholders, and the placeholders it held."""
    if isinstance(content, list):
        pieces, count = [], 0
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                pieces.append(text(part.get("text"), f"{where}[{i}].text"))
            elif kind in PARTS:
                count += 1
            else:
                raise Bad(f"{where}[{i}]: a content part is {{'type': 'text', 'text': ...}} or a media part")
        stripped, more = strip_placeholders(" ".join(pieces))
        return stripped, count + more
    return strip_placeholders(text(content, where))


def messages(value: Any, field: str) -> tuple[list[dict[str, str]], int]:
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise Bad(f'{field}: must be a list of {{"role", "content"}} messages')
    turns, placeholders = [], 0
    for i, message in enumerate(value):
        if message["role"] not in ROLES:
            raise Bad(f"{field}[{i}].role: {message['role']!r} is not one of {', '.join(ROLES)}")
        content, count = content_text(message["content"], f"{field}[{i}].content")
        turns.append({"role": message["role"], "content": content})
        placeholders += count
    return turns, placeholders


def answer(value: Any, field: str) -> str | Skip:
    if not isinstance(value, list):
        return strip_placeholders(text(value, field))[0]
    turns, _ = messages(value, field)
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        return Skip("answer with several turns or no assistant turn")
    return turns[0]["content"]


def pair(rid: str, prompt: list[dict[str, str]], placeholders: int, chosen: Any, rejected: Any) -> dict | Skip:
    for value in (chosen, rejected):
        if isinstance(value, Skip):
            return value
    if any(not t["content"] for t in prompt if t["role"] != "system") or not chosen or not rejected:
        return Skip("empty prompt or answer")
    if chosen == rejected:
        return Skip("chosen and rejected are the same")
    placed = place_video(prompt, placeholders)
    if isinstance(placed, Skip):
        return placed
    return {"id": rid, "prompt": placed, "chosen": chosen, "rejected": rejected}


def trl_media(row: dict) -> tuple[str, ...] | Skip:
    found = one_media(row, MEDIA_KEYS)
    return found if isinstance(found, Skip) else (found,)


def trl(row: dict, index: int, to: str) -> Iterable[dict | Skip]:
    need(row, ("chosen", "rejected"))
    chosen, rejected = row["chosen"], row["rejected"]
    prompt = row.get("prompt")
    if isinstance(chosen, list) and prompt is None:  # conversational, implicit prompt
        before_chosen, placeholders = messages(chosen[:-1], "chosen")
        before_rejected, _ = messages(rejected[:-1], "rejected") if isinstance(rejected, list) else ([], 0)
        if before_chosen != before_rejected:
            raise Bad("chosen and rejected must share the conversation before their last turn (implicit prompt)")
        turns, chosen, rejected = before_chosen, chosen[-1:], rejected[-1:]
    elif prompt is None:
        yield Skip("implicit prompt in plain text (no prompt column)")
        return
    elif isinstance(prompt, list):
        turns, placeholders = messages(prompt, "prompt")
    else:
        content, placeholders = strip_placeholders(text(prompt, "prompt"))
        turns = [{"role": "user", "content": content}]
    if not any(t["role"] == "user" for t in turns):
        raise Bad("prompt: holds no user turn")
    rid = f"{row['id']}-{index}" if row.get("id") is not None else f"trl-{index}"
    record = pair(rid, turns, placeholders, answer(chosen, "chosen"), answer(rejected, "rejected"))
    yield record if isinstance(record, Skip) else record | {"source": "trl-dpo"}


def hound_media(row: dict) -> tuple[str, ...]:
    need(row, ("video",))
    return (text(row["video"], "video"),)


def hound(row: dict, index: int, to: str) -> Iterable[dict | Skip]:
    need(row, ("id", "video", "prompt", "chosen", "rejected"))
    content, placeholders = strip_placeholders(text(row["prompt"], "prompt"))
    record = pair(
        f"{text(row['id'], 'id')}-{index}",
        [{"role": "user", "content": content}],
        placeholders,
        strip_placeholders(text(row["chosen"], "chosen"))[0],
        strip_placeholders(text(row["rejected"], "rejected"))[0],
    )
    if isinstance(record, Skip):
        yield record
        return
    scores = {k: row[k] for k in ("chosen_score", "rejected_score") if isinstance(row.get(k), (int, float))}
    yield record | scores | {"source": "llava-hound-dpo"}
