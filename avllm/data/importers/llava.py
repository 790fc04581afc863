"""LLaVA-style conversations, as VideoLLaMA2's and Video-ChatGPT's releases write them.

Checked against:
- DAMO-NLP-SG/VideoLLaMA2 `README.md` ("Data Format", branch audio_visual): a JSON list of
  `{"id", "video" | "audio", "conversations": [{"from": "human" | "gpt", "value"}]}`, the first
  human turn opening with `<video>\\n`, `<audio>\\n` or `<image>\\n` (images also sit in
  "video"); `videollama2/train.py` joins "video" to `--data_folder` and reads "image", then
  "video", then "audio";
- mbzuai-oryx/Video-ChatGPT `scripts/convert_instruction_json_to_training_format.py`: the same
  layout with `"id": video_id`, `"video": "{video_id}.pkl"` (its CLIP features; the clips are
  the ActivityNet videos `{video_id}.mp4`) and `<video>` before or after the question; and
  the VideoInstruct-100K release it converts, `{"video_id", "q", "a"}`, which is read too.

Each record becomes one instruction record: `human` -> user, `gpt` -> assistant, leading
assistant turns dropped (as LLaVA's preprocessing does) and a trailing question without an
answer dropped; the source's placeholder is removed and our `<video>` put at the end of the
first user turn. Images, text-only records and records with several media are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable

from .base import Bad, Skip, one_media, place_video, strip_placeholders, text

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
MEDIA_KEYS = ("video", "audio", "video_id")


def media(row: dict) -> tuple[str, ...] | Skip:
    found = one_media(row, MEDIA_KEYS)
    return found if isinstance(found, Skip) else (found,)


def convert(row: dict, index: int, to: str) -> Iterable[dict | Skip]:
    source = row.get("conversations")
    if source is None and "q" in row and "a" in row:
        source = [{"from": "human", "value": row["q"]}, {"from": "gpt", "value": row["a"]}]
    if not isinstance(source, list) or not all(isinstance(t, dict) and "from" in t and "value" in t for t in source):
        raise Bad('conversations: must be a list of {"from", "value"} turns (or the record {"video_id", "q", "a"})')
    turns, placeholders = [], 0
    for i, turn in enumerate(source):
        role = ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise Bad(f"conversations[{i}].from: {turn['from']!r} is not one of {', '.join(ROLES)}")
        content, count = strip_placeholders(text(turn["value"], f"conversations[{i}].value"))
        placeholders += count
        turns.append({"role": role, "content": content})
    system = turns[:1] if turns and turns[0]["role"] == "system" else []
    body = turns[len(system) :]
    while body and body[0]["role"] != "user":
        body = body[1:]
    while body and body[-1]["role"] != "assistant":
        body = body[:-1]
    if not body:
        yield Skip("no question with an answer")
        return
    if any(not t["content"] for t in body):
        yield Skip("empty turn")
        return
    placed = place_video(system + body, placeholders)
    if isinstance(placed, Skip):
        yield placed
        return
    rid = row.get("id", row.get("video_id", "llava"))
    yield {"id": f"{rid}-{index}", "conversations": placed, "source": "llava"}
