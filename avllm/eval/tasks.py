"""Evaluation tasks: each adapter turns a benchmark's published annotation file into EvalItems.

A task is named `PREFIX:PATH` on the command line (`jsonl:data/qa.jsonl`,
`music-avqa:avqa-test.json`). A new benchmark is one Task subclass plus one line in TASKS.

- `jsonl`      this project's QA format (data/instructions/README.md); validated strictly
               (every problem at once, missing media included) before anything runs.
- `music-avqa` MUSIC-AVQA as published: a JSON list of {video_id, question_id, type,
               question_content, templ_values, anser}; `<Object>`-style slots are filled in
               order from templ_values; media `MEDIA_DIR/{video_id}.mp4`. Open answers.
- `avsd`       AVSD (DSTC7/8): {"dialogs": [{image_id, dialog: [{question, answer}]}]}; the last
               turn of each dialogue is asked with the earlier turns as history. Open answers.
- `avhbench`   AVHBench: JSON lists of {video_id, task, text, label}, one file or a folder of them;
               yes/no judgement tasks (captioning items are counted as skipped), each item's
               kind the task as AVHBench names it ("Audio-driven Video Hallucination", "Video-driven
               Audio Hallucination", "AV Matching"), so the report's rows are its tables' rows.

Benchmark media that are missing are counted and listed in the report, not fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..data.formats import QARecord, load
from ..data.importers.qa import SHORT_ANSWER, fill_template, music_avqa_kind
from ..errors import DataError
from ..prompt import Message, with_video

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


@dataclass
class EvalItem:
    id: str
    media: Path | None  # None when the file is missing (then the item is not scored)
    question: str
    answer: str
    kind: str
    choices: list[str] | None = None  # None: an open question, scored by normalised exact match
    split: str | None = None  # items with a split are reported apart (e.g. heldout_vocab)
    history: list[Message] = field(default_factory=list)  # earlier turns; the first user turn holds <video>
    wanted: str = ""  # the media the annotation names (reported when it is missing)


@dataclass
class TaskData:
    name: str
    items: list[EvalItem]
    missing: list[str] = field(default_factory=list)  # media named by the annotations but not found
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count of annotations not turned into items


class Task:
    """Base adapter: `load()` reads the annotations; `media_dir` is where the clips are."""

    prefix: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, path: str, media_dir: str | None = None, allow_outside_media: bool = False):
        self.path = Path(path)
        self.media_dir = Path(media_dir) if media_dir else None
        self.allow_outside_media = allow_outside_media
        if not self.path.exists():
            raise DataError(f"{self.prefix}:{path}: no such file; check the path")

    @property
    def name(self) -> str:
        return f"{self.prefix}:{self.path}"

    def load(self) -> TaskData:
        raise NotImplementedError

    # helpers for benchmark adapters
    def read_json(self, path: Path | None = None) -> Any:
        path = path or self.path
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc}); pass the annotation file as published") from exc

    def find_media(self, stem: str) -> Path | None:
        folder = self.media_dir or self.path.parent
        for suffix in ("", *VIDEO_SUFFIXES):
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
        return None


def _need(record: Any, keys: tuple[str, ...], where: str, problems: list[str]) -> bool:
    if not isinstance(record, dict):
        problems.append(f"{where}: must be a JSON object")
        return False
    absent = [k for k in keys if k not in record]
    if absent:
        problems.append(f"{where}: missing field(s) {absent}")
    return not absent


def _raise(path: Path, problems: list[str], what: str) -> None:
    if problems:
        listed = problems[:50] + ([f"... and {len(problems) - 50} more"] if len(problems) > 50 else [])
        raise DataError(
            f"{path}: {len(problems)} problem(s); is this the published {what} file?\n  " + "\n  ".join(listed)
        )


class JsonlTask(Task):
    prefix = "jsonl"
    description = "this project's QA JSONL (id, media, question, choices, answer, kind, split)"

    def load(self) -> TaskData:
        records: list[QARecord] = load(self.path, "qa", check_media=True, allow_outside_media=self.allow_outside_media)  # type: ignore[assignment]
        items = [EvalItem(r.id, r.media, r.question, r.answer, r.kind, r.choices, r.split) for r in records]
        return TaskData(self.name, items)


class MusicAVQATask(Task):
    prefix = "music-avqa"
    description = "MUSIC-AVQA annotations (avqa-test.json); --media-dir holds {video_id}.mp4"

    def load(self) -> TaskData:
        data = self.read_json()
        if not isinstance(data, list):
            raise DataError(f"{self.path}: expected a JSON list of questions (MUSIC-AVQA avqa-*.json)")
        items, missing, problems = [], [], []
        for i, rec in enumerate(data):
            where = f"{self.path}[{i}]"
            if not _need(rec, ("video_id", "question_id", "type", "question_content", "anser"), where, problems):
                continue
            try:
                question = fill_template(rec["question_content"], rec.get("templ_values", "[]"))
                kind = music_avqa_kind(rec["type"])
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            media = self.find_media(str(rec["video_id"]))
            if media is None:
                missing.append(str(rec["video_id"]))
            items.append(
                EvalItem(
                    str(rec["question_id"]),
                    media,
                    question + SHORT_ANSWER,
                    str(rec["anser"]),
                    kind,
                    wanted=str(rec["video_id"]),
                )
            )
        _raise(self.path, problems, "MUSIC-AVQA")
        return TaskData(self.name, items, sorted(set(missing)))


class AVSDTask(Task):
    prefix = "avsd"
    description = 'AVSD dialogues ({"dialogs": [{image_id, dialog}]}); --media-dir holds the Charades videos'

    def load(self) -> TaskData:
        data = self.read_json()
        dialogs = data.get("dialogs") if isinstance(data, dict) else None
        if not isinstance(dialogs, list):
            raise DataError(f'{self.path}: expected {{"dialogs": [...]}} as in the published AVSD files')
        items, missing, problems, skipped = [], [], [], {}
        for i, rec in enumerate(dialogs):
            where = f"{self.path}: dialogs[{i}]"
            if not _need(rec, ("image_id", "dialog"), where, problems):
                continue
            turns = rec["dialog"]
            if (
                not isinstance(turns, list)
                or not turns
                or not all(isinstance(t, dict) and "question" in t and "answer" in t for t in turns)
            ):
                problems.append(f"{where}.dialog: must be a non-empty list of {{question, answer}}")
                continue
            last = turns[-1]
            if not str(last["answer"]).strip() or str(last["answer"]).startswith("__UNDISCLOSED__"):
                skipped["no reference answer"] = skipped.get("no reference answer", 0) + 1
                continue
            history: list[Message] = []
            for t in turns[:-1]:
                history += [
                    {"role": "user", "content": str(t["question"])},
                    {"role": "assistant", "content": str(t["answer"])},
                ]
            if history:
                history[0]["content"] = with_video(history[0]["content"])
            media = self.find_media(str(rec["image_id"]))
            if media is None:
                missing.append(str(rec["image_id"]))
            items.append(
                EvalItem(
                    f"{rec['image_id']}-{len(turns) - 1}",
                    media,
                    str(last["question"]),
                    str(last["answer"]),
                    "audio-visual",
                    history=history,
                    wanted=str(rec["image_id"]),
                )
            )
        _raise(self.path, problems, "AVSD")
        return TaskData(self.name, items, sorted(set(missing)), skipped)


class AVHBenchTask(Task):
    prefix = "avhbench"
    description = (
        "AVHBench judgement questions (JSON lists of {video_id, task, text, label}); a file or a folder of them"
    )

    def load(self) -> TaskData:
        files = sorted(self.path.glob("*.json")) if self.path.is_dir() else [self.path]
        if not files:
            raise DataError(f"{self.path}: no .json files in this folder")
        items, missing, problems, skipped = [], [], [], {}
        for path in files:
            data = self.read_json(path)
            if not isinstance(data, list):
                problems.append(f"{path}: expected a JSON list of {{video_id, task, text, label}}")
                continue
            for i, rec in enumerate(data):
                where = f"{path}[{i}]"
                if not _need(rec, ("video_id", "task", "text", "label"), where, problems):
                    continue
                label = str(rec["label"]).strip().lower()
                if label not in ("yes", "no"):
                    skipped[f"{rec['task']} (not yes/no)"] = skipped.get(f"{rec['task']} (not yes/no)", 0) + 1
                    continue
                kind = " ".join(str(rec["task"]).split())
                media = self.find_media(str(rec["video_id"]))
                if media is None:
                    missing.append(str(rec["video_id"]))
                items.append(
                    EvalItem(
                        f"{path.stem}-{i}",
                        media,
                        str(rec["text"]),
                        label,
                        kind,
                        ["yes", "no"],
                        wanted=str(rec["video_id"]),
                    )
                )
        _raise(self.path, problems, "AVHBench")
        return TaskData(self.name, items, sorted(set(missing)), skipped)


TASKS: dict[str, type[Task]] = {cls.prefix: cls for cls in (JsonlTask, MusicAVQATask, AVSDTask, AVHBenchTask)}


def make_task(spec: str, media_dir: str | None = None, allow_outside_media: bool = False) -> Task:
    """`PREFIX:PATH` -> the adapter; a bare path ending in .jsonl counts as jsonl:PATH."""
    prefix, sep, path = spec.partition(":")
    if not sep and spec.endswith(".jsonl"):
        prefix, path = "jsonl", spec
    if prefix not in TASKS or not path:
        known = "; ".join(f"{p}:PATH ({c.description})" for p, c in TASKS.items())
        raise DataError(f"--tasks {spec!r}: expected PREFIX:PATH with PREFIX one of: {known}")
    return TASKS[prefix](path, media_dir, allow_outside_media)
