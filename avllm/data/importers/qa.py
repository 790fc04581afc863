"""Audio-visual QA sets, written as our QA JSONL (to evaluate) or as instructions (to train).

Checked against:
- MUSIC-AVQA, GeWu-Lab/MUSIC-AVQA `net_grd_avst/dataloader_avst.py`: `avqa-{train,val,test}.json`
  is a JSON list of `{"video_id", "question_id", "type", "question_content", "templ_values",
  "anser"}` (sic), where `<Object>`-style slots in question_content are filled in order from
  templ_values (a list written as a string) and type is a list as a string, e.g.
  '["Audio-Visual", "Counting"]'; the clips are `{video_id}.mp4`.
- AVQA (Yang et al., ACM MM 2022), AlyssaYoung/AVQA `preprocess/preprocess_text/datautils/avqa.py`:
  a JSON list of `{"id", "video_name", "video_id", "question_text", "multi_choice", "answer",
  "question_type", "question_relation"}`, `answer` the index of the right option in
  multi_choice; the clips are VGG-Sound cuts named `{video_name}.mp4` (`data/video/` there).

MUSIC-AVQA answers are single words, so the question asks for one, as `avllm eval` does with
the published file; AVQA is four-choice, asked in the evaluation's option style. QA kinds:
MUSIC-AVQA's type as `modality/what`; AVQA's question_relation as a modality where it names
one (both: audio-visual, view or visual: visual, sound or audio: audio), then its
question_type.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from ...prompt import with_video
from ..formats import qa_prompt
from .base import Bad, Skip, need, text

# MUSIC-AVQA answers are single words from a fixed set; asking for one (the LLaVA / lmms-eval
# convention) lets a normalised exact match score a free answer fairly.
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
RELATIONS = {"both": "audio-visual", "view": "visual", "visual": "visual", "sound": "audio", "audio": "audio"}


def literal_list(value: Any) -> list[Any]:
    """MUSIC-AVQA stores lists as strings ('["Audio", "Counting"]'); accept real lists too."""
    if isinstance(value, list):
        return value
    return list(_parsed(value)) if isinstance(value, str) and value.strip() else []


@lru_cache(maxsize=1 << 12)  # the same few hundred type and slot lists recur across a set
def _parsed(value: str) -> tuple[Any, ...]:
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"{value!r} is not a list") from exc
    if not isinstance(parsed, list):
        raise ValueError(f"{value!r} is not a list")
    return tuple(parsed)


def fill_template(question: str, values: Any) -> str:
    """Fill `<Object>`, `<LR>`, ... slots in order from templ_values (extra values are ignored)."""
    values = literal_list(values)
    slots = re.findall(r"<[^<>]+>", question)
    if len(slots) > len(values):
        raise ValueError(f"question {question!r} has {len(slots)} slot(s) but templ_values gives {len(values)}")
    for slot, value in zip(slots, values):
        question = question.replace(slot, str(value), 1)
    return question


def music_avqa_kind(types: Any) -> str:
    """'["Audio-Visual", "Counting"]' -> 'audio-visual/counting'."""
    kinds = [str(k).strip().lower() for k in literal_list(types)]
    return "/".join(kinds) if kinds else "unknown"


def as_record(
    rid: str, question: str, answer: str, kind: str, choices: list[str] | None, to: str, source: str
) -> dict | Skip:
    if not answer:
        return Skip("empty answer")
    if to == "qa":
        record = {"id": rid, "question": question, "answer": answer, "kind": kind, "source": source}
        return record | ({"choices": choices} if choices else {})
    turns = [
        {"role": "user", "content": with_video(qa_prompt(question, choices))},
        {"role": "assistant", "content": answer},
    ]
    return {"id": rid, "conversations": turns, "kind": kind, "source": source}


def music_avqa_media(row: dict) -> tuple[str, ...]:
    need(row, ("video_id",))
    return (text(row["video_id"], "video_id"),)


def music_avqa(row: dict, index: int, to: str) -> Iterable[dict | Skip]:
    need(row, ("video_id", "question_id", "type", "question_content", "anser"))
    try:
        question = fill_template(text(row["question_content"], "question_content"), row.get("templ_values", "[]"))
        kind = music_avqa_kind(row["type"])
    except ValueError as exc:
        raise Bad(str(exc)) from exc
    rid = f"music-avqa-{text(row['question_id'], 'question_id')}-{index}"
    yield as_record(rid, question + SHORT_ANSWER, text(row["anser"], "anser"), kind, None, to, "music-avqa")


def avqa_media(row: dict) -> tuple[str, ...]:
    need(row, ("video_name",))
    return (text(row["video_name"], "video_name"),)


def avqa(row: dict, index: int, to: str) -> Iterable[dict | Skip]:
    need(row, ("id", "video_name", "question_text", "multi_choice", "answer", "question_type", "question_relation"))
    choices = row["multi_choice"]
    if not isinstance(choices, list) or len(choices) < 2:
        raise Bad("multi_choice: must be a list of the options")
    choices = [text(c, "multi_choice") for c in choices]
    answer = row["answer"]
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise Bad(f"answer: {row['answer']!r} is not the index of one of the {len(choices)} options")
    relation = text(row["question_relation"], "question_relation").lower()
    what = re.sub(r"\s+", "-", text(row["question_type"], "question_type").lower())
    kind = f"{RELATIONS.get(relation, relation)}/{what}"
    rid = f"avqa-{text(row['id'], 'id')}-{index}"
    yield as_record(rid, text(row["question_text"], "question_text"), choices[answer], kind, choices, to, "avqa")
