"""Record formats (instruction, preference, QA) as JSONL, and their validation.

Every file is checked whole before any work starts: all problems are collected and raised
together in one `DataError`, each naming `file:line: field: what is wrong (the fix)`, so a
user fixes a dataset in one pass rather than one error per run. Media paths are relative
to the JSONL file's folder and may not leave it unless the caller allows it (a dataset
folder then stays self-contained and safe to share). The formats are documented with
examples in data/instructions/README.md.
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..prompt import VIDEO_TOKEN, Message, with_video

FORMATS = ("instruction", "preference", "qa")
ROLES = ("system", "user", "assistant")
MAX_LISTED = 50  # problems spelled out in an error message; the rest are counted
YES, NO = "yes", "no"
DECISION = re.compile(r"(?:^|[.!?;:]\s+)(yes|no)\b", re.IGNORECASE)

REQUIRED = {
    "instruction": ("id", "media", "conversations"),
    "preference": ("id", "media", "prompt", "chosen", "rejected"),
    "qa": ("id", "media", "question", "answer", "kind"),
}


# ----------------------------------------------------------------------------- records


@dataclass
class InstructionRecord:
    id: str
    media: Path  # resolved against the JSONL file's folder
    conversations: list[Message]
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # any other fields, kept as they were


@dataclass
class PreferenceRecord:
    id: str
    media: Path
    prompt: list[Message]  # the conversation up to (and including) the last user turn
    chosen: str
    rejected: str
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class QARecord:
    id: str
    media: Path
    question: str
    answer: str
    kind: str
    choices: list[str] | None = None
    split: str | None = None  # e.g. "heldout_vocab": scored and reported apart from the rest
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


Record = InstructionRecord | PreferenceRecord | QARecord


@dataclass
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


# ----------------------------------------------------------------------------- prompts shared by synth and eval


def is_yes_no(choices: list[str] | None) -> bool:
    return bool(choices) and sorted(c.strip().lower() for c in choices) == [NO, YES]


def decision(answer: str) -> str | None:
    """The yes or no a yes/no answer decides: the first sentence that starts with one. A grounded
    answer may say what it sees first ("I see a red cross. No, there is no green cross.")."""
    found = DECISION.search(answer)
    return found.group(1).lower() if found else None


def qa_prompt(question: str, choices: list[str] | None) -> str:
    """The user's text for a QA item (without <video>): the question, then the options.

    Multiple choice lists the options in order after the question, and the expected
    answer is the option's text exactly, so instruction data written in this style
    (as `avllm synth` writes it) trains the model to answer the way `avllm eval` scores.
    Yes/no questions and open questions are asked as they are (AVHBench style).
    """
    if not choices or is_yes_no(choices):
        return question
    return f"{question}\nOptions: " + "; ".join(choices) + "."


def qa_messages(question: str, choices: list[str] | None, history: list[Message] | None = None) -> list[Message]:
    """The conversation for one question: earlier turns (holding <video>) or <video> in this turn."""
    text = qa_prompt(question, choices)
    if history:
        return [*history, {"role": "user", "content": text}]
    return [{"role": "user", "content": with_video(text)}]


# ----------------------------------------------------------------------------- reading and writing


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """One compact JSON object per line (UTF-8); returns the number written."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def media_problem(root: Path, media: Any, allow_outside_media: bool) -> tuple[Path | None, str | None]:
    """Resolve a record's media path; a message when it is not a usable relative path."""
    if not isinstance(media, str) or not media.strip():
        return None, "must be a non-empty string: the media file's path relative to this JSONL file"
    candidate = Path(media)
    full = candidate if candidate.is_absolute() else root / candidate
    inside = os.path.normpath(full).startswith(os.path.normpath(root) + os.sep)
    if not inside and not allow_outside_media:
        return None, (
            f"{media!r} leaves the dataset folder {root}; move the file into that folder and give a "
            "relative path, or allow outside media (--allow-outside-media; in a recipe, allow_outside_media: true)"
        )
    return Path(os.path.normpath(full)), None


# ----------------------------------------------------------------------------- validation


class _Checker:
    def __init__(self, path: Path, line: int):
        self.path, self.line, self.problems = str(path), line, []

    def add(self, field_name: str, message: str) -> None:
        self.problems.append(Problem(self.path, self.line, field_name, message))

    def text(self, value: Any, field_name: str, allow_empty: bool = False) -> bool:
        if not isinstance(value, str):
            self.add(field_name, f"must be a string, got {type(value).__name__}")
            return False
        if not allow_empty and not value.strip():
            self.add(field_name, "is empty; give the text")
            return False
        return True

    def conversation(self, turns: Any, name: str, end_with: str) -> None:
        """Roles, order, content and the single <video> in the first user turn."""
        if not isinstance(turns, list) or not turns:
            self.add(name, 'must be a non-empty list of {"role", "content"} turns')
            return
        roles = []
        for i, turn in enumerate(turns):
            where = f"{name}[{i}]"
            if not isinstance(turn, dict):
                self.add(where, 'must be an object {"role": ..., "content": ...}')
                roles.append(None)
                continue
            role = turn.get("role")
            if role not in ROLES:
                self.add(f"{where}.role", f"{role!r} is not one of {', '.join(ROLES)}")
            roles.append(role)
            self.text(turn.get("content"), f"{where}.content", allow_empty=role == "system")
            unknown = sorted(set(turn) - {"role", "content"})
            if unknown:
                self.add(where, f"unknown key(s) {unknown}; a turn has only role and content")
        if None in roles or any(r not in ROLES for r in roles):
            return
        body = roles[1:] if roles[0] == "system" else roles
        if "system" in body:
            self.add(name, "a system turn may only come first")
            return
        expected = ["user" if k % 2 == 0 else "assistant" for k in range(len(body))]
        if body != expected:
            self.add(
                name,
                f"turns go {' -> '.join(body) or '(none)'}; after an optional system turn they must "
                "alternate user, assistant, user, ... starting with user",
            )
            return
        if body and body[-1] != end_with:
            self.add(name, f"must end with a {end_with} turn, ends with {body[-1]}")
        offset = len(roles) - len(body)
        counts = [t["content"].count(VIDEO_TOKEN) if isinstance(t.get("content"), str) else 0 for t in turns]
        if sum(counts) != 1 or (body and counts[offset] != 1):
            self.add(name, f"holds {sum(counts)} {VIDEO_TOKEN} placeholder(s); put exactly one, in the first user turn")


def _check_common(
    c: _Checker, data: dict, fmt: str, root: Path, allow_outside_media: bool, check_media: bool, missing: list[Problem]
) -> Path | None:
    for key in REQUIRED[fmt]:
        if key not in data:
            c.add(key, f"missing; a {fmt} record needs {', '.join(REQUIRED[fmt])}")
    if "id" in data and not (isinstance(data["id"], (str, int)) and str(data["id"]).strip()):
        c.add("id", "must be a non-empty string (or integer)")
    if "media" not in data:
        return None
    media, message = media_problem(root, data["media"], allow_outside_media)
    if message:
        c.add("media", message)
        return None
    if check_media and not media.is_file():
        missing.append(Problem(c.path, c.line, "media", f"{data['media']!r} not found (looked for {media})"))
    return media


def _check_instruction(c: _Checker, data: dict) -> None:
    if "conversations" in data:
        c.conversation(data["conversations"], "conversations", end_with="assistant")


def _check_preference(c: _Checker, data: dict) -> None:
    if "prompt" in data:
        c.conversation(data["prompt"], "prompt", end_with="user")
    ok = all([c.text(data[k], k) for k in ("chosen", "rejected") if k in data])
    if ok and "chosen" in data and "rejected" in data and data["chosen"].strip() == data["rejected"].strip():
        c.add("rejected", "is the same as chosen; a preference pair needs two different answers")
    for k in ("chosen", "rejected"):
        if isinstance(data.get(k), str) and VIDEO_TOKEN in data[k]:
            c.add(k, f"holds {VIDEO_TOKEN}; the placeholder belongs in the prompt's first user turn")


def _check_qa(c: _Checker, data: dict) -> None:
    for k in ("question", "answer", "kind"):
        if k in data:
            c.text(data[k], k)
    if isinstance(data.get("question"), str) and data["question"].count(VIDEO_TOKEN) > 1:
        c.add("question", f"holds more than one {VIDEO_TOKEN}")
    choices = data.get("choices")
    if choices is not None:
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(x, str) and x.strip() for x in choices)
        ):
            c.add("choices", "must be a list of at least two non-empty strings (or left out for open questions)")
        elif len({x.strip().lower() for x in choices}) != len(choices):
            c.add("choices", "has duplicate options; each option must differ")
        elif isinstance(data.get("answer"), str) and data["answer"] not in choices:
            c.add("answer", f"{data['answer']!r} is not one of the choices {choices}; copy the right option exactly")
    split = data.get("split")
    if split is not None and not (isinstance(split, str) and split.strip()):
        c.add("split", 'must be a non-empty string when given (e.g. "heldout_vocab")')


CHECKS = {"instruction": _check_instruction, "preference": _check_preference, "qa": _check_qa}


def _check_line(
    data: Any, fmt: str, path: Path, line: int, allow_outside_media: bool, check_media: bool
) -> tuple[list[Problem], list[Problem]]:
    """One parsed line's problems (ids aside), split into those that drop the record and missing
    media files (listed, but the record kept: eval counts and skips them)."""
    if not isinstance(data, dict):
        return [Problem(str(path), line, "(line)", f"must be a JSON object, got {type(data).__name__}")], []
    c, missing = _Checker(path, line), []
    _check_common(c, data, fmt, Path(os.path.abspath(path.parent)), allow_outside_media, check_media, missing)
    CHECKS[fmt](c, data)
    return c.problems, missing


def check_record(
    data: dict,
    fmt: str,
    path: str | os.PathLike,
    line: int,
    allow_outside_media: bool = False,
    check_media: bool = True,
) -> list[Problem]:
    """One record's problems, as `validate` finds them (ids aside): for writers that stream records out."""
    errors, missing = _check_line(data, fmt, Path(path), line, allow_outside_media, check_media)
    return errors + missing


def _build(fmt: str, data: dict, media: Path, line: int) -> Record:
    known = set(REQUIRED[fmt]) | ({"choices", "split"} if fmt == "qa" else set())
    extra = {k: v for k, v in data.items() if k not in known}
    rid = str(data["id"])
    if fmt == "instruction":
        return InstructionRecord(rid, media, data["conversations"], line, extra)
    if fmt == "preference":
        return PreferenceRecord(rid, media, data["prompt"], data["chosen"], data["rejected"], line, extra)
    return QARecord(
        rid, media, data["question"], data["answer"], data["kind"], data.get("choices"), data.get("split"), line, extra
    )


def validate(
    path: str | os.PathLike, fmt: str, check_media: bool = True, allow_outside_media: bool = False
) -> tuple[list[Record], list[Problem]]:
    """All records that passed and every problem found (bad fields, duplicate ids, missing media)."""
    records, problems = index(path, fmt, check_media, allow_outside_media)
    return list(records), problems


def load(
    path: str | os.PathLike, fmt: str, check_media: bool = True, allow_outside_media: bool = False
) -> list[Record]:
    """Validated records of a JSONL file; raises one DataError listing every problem."""
    records, problems = validate(path, fmt, check_media, allow_outside_media)
    if problems:
        raise DataError(describe_problems(path, fmt, problems))
    return records


class RecordFile(Sequence):
    """A validated JSONL file's records, read from disk when asked for: it holds each good record's
    byte offset and line (16 bytes a record), never the records, so a million-record file costs
    megabytes. Built by `index`."""

    def __init__(self, path: Path, fmt: str, allow_outside_media: bool, offsets: array, lines: array):
        self.path, self.fmt, self.allow_outside_media = path, fmt, allow_outside_media
        self.offsets, self.lines = offsets, lines
        self.root = Path(os.path.abspath(path.parent))
        self._file: tuple[int, Any] | None = None  # (pid, open file): a forked data-loader worker opens its own

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> Record:  # type: ignore[override]
        if self._file is None or self._file[0] != os.getpid():
            self._file = (os.getpid(), open(self.path, "rb"))  # kept open for the next reads
        fh = self._file[1]
        fh.seek(self.offsets[index])
        data = json.loads(fh.readline())
        media, _ = media_problem(self.root, data["media"], self.allow_outside_media)
        return _build(self.fmt, data, media, self.lines[index])


def index(
    path: str | os.PathLike, fmt: str, check_media: bool = True, allow_outside_media: bool = False
) -> tuple[RecordFile, list[Problem]]:
    """Check a file line by line: the good records (a missing media file listed but its record kept)
    as a `RecordFile`, and every problem found. Memory holds one line at a time, the good records'
    offsets, and the ids seen (for duplicates)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path")
    offsets, lines = array("q"), array("q")
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as fh:
        offset = 0
        for number, raw in enumerate(fh, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                data = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not UTF-8 text ({exc}); save the file as UTF-8 JSONL") from exc
            except json.JSONDecodeError as exc:
                message = f"not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object"
                problems.append(Problem(str(path), number, "(line)", message))
                continue
            errors, missing = _check_line(data, fmt, path, number, allow_outside_media, check_media)
            if isinstance(data, dict):
                rid = str(data.get("id"))
                if "id" in data and rid in seen:
                    message = f"{rid!r} already used on line {seen[rid]}; ids must be unique"
                    errors.append(Problem(str(path), number, "id", message))
                seen.setdefault(rid, number)
            problems += errors + missing
            if not errors:
                offsets.append(start)
                lines.append(number)
    if not offsets and not problems:
        problems.append(Problem(str(path), 0, "(file)", "holds no records"))
    return RecordFile(path, fmt, allow_outside_media, offsets, lines), problems


def describe_problems(path: str | os.PathLike, fmt: str, problems: list[Problem]) -> str:
    missing = [p for p in problems if p.field == "media" and "not found" in p.message]
    other = [p for p in problems if p not in missing]
    head = f"{path}: {len(problems)} problem(s) in this {fmt} file"
    if missing:
        head += f" ({len(missing)} missing media file(s))"
    lines = [head + "; fix them all, then run again:"]
    listed = other + missing
    lines += [f"  {p}" for p in listed[:MAX_LISTED]]
    if len(listed) > MAX_LISTED:
        lines.append(f"  ... and {len(listed) - MAX_LISTED} more")
    return "\n".join(lines)
