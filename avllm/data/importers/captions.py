"""Caption tables: every caption becomes one "describe this clip" instruction.

Checked against:
- AudioCaps, cdjkim/audiocaps `dataset/train.csv`, `val.csv`, `test.csv`: columns
  `audiocap_id,youtube_id,start_time,caption`, one caption per row. The audio is not shipped;
  download tools name the 10 s clips by `audiocap_id` (MorenoLaQuatra/audiocaps-download
  `audiocaps_download/Downloader.py`: `{audiocap_id}.{format}`), AudioSet-style by YouTube id
  (`Y{youtube_id}`), or `{youtube_id}_{start_time}`; all are looked for, in that order.
- Clotho, audio-captioning/clotho-dataset and DCASE loaders: `clotho_captions_{split}.csv` with
  columns `file_name,caption_1,...,caption_5`; the audio is `{split}/{file_name}` once the 7z
  archive is unpacked, so --media-dir names that folder.
- VALOR-32K annotations `desc_{train,val,test}.json`: a JSON list of `{"video_id", "desc"}`
  (read this way by third-party loaders, e.g. MissRAG's OneLLM script, which also shows the id
  is `{youtube_id}_{start}_{end}`); the clip is looked for as `{video_id}.*`, then by the
  YouTube id alone.

The question is picked from a fixed list by a hash of the record id (stable across runs and
independent of order), and placed before the clip like every avllm prompt.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence

from ...prompt import with_video
from .base import Skip, need, text

AUDIO_QUESTIONS = (
    "Describe what you hear.",
    "What can be heard in this clip?",
    "Describe the sounds in this recording.",
    "What is happening, judging by the sound?",
    "Give a one-sentence description of the audio.",
)
AUDIO_VISUAL_QUESTIONS = (
    "Describe what you see and hear.",
    "What is happening in this video, and what can be heard?",
    "Describe this clip: the picture and the sound.",
    "Give a one-sentence description of the video and its audio.",
)
CLOTHO_CAPTIONS = tuple(f"caption_{k}" for k in range(1, 6))
VALOR_ID = re.compile(r"^(?P<youtube>.+)_\d+(?:\.\d+)?_\d+(?:\.\d+)?$")


def describe(rid: str, caption: str, questions: Sequence[str], source: str) -> dict | Skip:
    if not caption:
        return Skip("empty caption")
    question = questions[zlib.crc32(rid.encode()) % len(questions)]
    turns = [{"role": "user", "content": with_video(question)}, {"role": "assistant", "content": caption}]
    return {"id": rid, "conversations": turns, "source": source}


def audiocaps_media(row: dict) -> tuple[str, ...]:
    need(row, ("audiocap_id", "youtube_id", "start_time"))
    youtube, start = text(row["youtube_id"], "youtube_id"), text(row["start_time"], "start_time")
    return (text(row["audiocap_id"], "audiocap_id"), f"Y{youtube}", f"{youtube}_{start}")


def audiocaps(row: dict, index: int, to: str) -> Iterable[dict | Skip]:
    need(row, ("audiocap_id", "caption"))
    rid = f"audiocaps-{text(row['audiocap_id'], 'audiocap_id')}-{index}"
    yield describe(rid, text(row["caption"], "caption"), AUDIO_QUESTIONS, "audiocaps")


def clotho_media(row: dict) -> tuple[str, ...]:
    need(row, ("file_name",))
    return (text(row["file_name"], "file_name"),)


def clotho(row: dict, index: int, to: str) -> Iterable[dict | Skip]:
    need(row, ("file_name", *CLOTHO_CAPTIONS))
    stem = text(row["file_name"], "file_name").rsplit(".", 1)[0]
    for k, column in enumerate(CLOTHO_CAPTIONS, start=1):
        yield describe(f"clotho-{stem}-{index}-{k}", text(row[column], column), AUDIO_QUESTIONS, "clotho")


def valor_media(row: dict) -> tuple[str, ...]:
    need(row, ("video_id",))
    video_id = text(row["video_id"], "video_id")
    match = VALOR_ID.match(video_id)
    return (video_id, match["youtube"]) if match else (video_id,)


def valor(row: dict, index: int, to: str) -> Iterable[dict | Skip]:
    need(row, ("video_id", "desc"))
    rid = f"valor-{text(row['video_id'], 'video_id')}-{index}"
    yield describe(rid, text(row["desc"], "desc"), AUDIO_VISUAL_QUESTIONS, "valor")
