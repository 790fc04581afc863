"""What every importer shares: skips, layout problems, media lookup, and turn text.

An importer names the clip a source row (a dict, whatever file it came from) points at,
and turns the row into zero or more of our records (the import adds `media`), or a `Skip`
that says why a row (or one of its captions) was left out. A row that is not in the
published layout raises `Bad`; the import collects every such problem and reports them
together, as our own validation does. Ids are the source's id (or the dataset's name) and
the row's position in the source, so they are unique without remembering the ones seen.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...errors import DataError

# Clips avllm decodes (PyAV): video containers first, then audio files.
MEDIA_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".wav", ".flac", ".mp3", ".ogg", ".m4a")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
# LLaVA-family placeholders for the one media item of a record; ours is <video> for any clip.
PLACEHOLDER = re.compile(r"<(?:video|image|audio)>\n?")

MISSING = "media file missing"
IMAGE = "image record (avllm takes video or audio clips)"
NO_MEDIA = "no media (text-only record)"
SEVERAL = "several media items in one record"
FRAMES = "media is a folder of frames, not a clip"


@dataclass(frozen=True)
class Skip:
    """A source row (or one record from it) left out, and why; `detail` names what was looked for."""

    reason: str
    detail: str = ""


class Bad(Exception):
    """A row that is not in the published layout: a missing field, a wrong type, an unfillable template."""


class MediaFinder:
    """Finds a record's clip under the media folder by the dataset's naming convention.

    Names are tried as given, then with each clip suffix appended (ids without one, or with
    dots in them), then swapped in for a suffix that is not a clip's (Video-ChatGPT names its
    CLIP features `v_ID.pkl`; the videos are `v_ID.mp4`). Answers are remembered for the most
    recent 65,536 names, since QA sets ask many questions about each clip.
    """

    def __init__(self, root: Path):
        self.root = os.path.abspath(root)
        self.find = lru_cache(maxsize=1 << 16)(self._find)

    def _find(self, names: tuple[str, ...]) -> Path | Skip:
        for name in names:
            base = os.path.join(self.root, name)  # an absolute name stays as it is
            stem, suffix = os.path.splitext(base)
            if suffix.lower() in IMAGE_SUFFIXES:
                return Skip(IMAGE, name)
            stems = [base] + ([stem] if suffix and suffix.lower() not in MEDIA_SUFFIXES else [])
            for candidate in (base, *(s + ext for s in stems for ext in MEDIA_SUFFIXES)):
                if os.path.isfile(candidate):
                    return Path(os.path.normpath(candidate))
            if os.path.isdir(base):
                return Skip(FRAMES, name)
        return Skip(MISSING, names[0] if names else "")


def need(row: dict, keys: Iterable[str]) -> None:
    absent = [k for k in keys if k not in row or row[k] is None]
    if absent:
        raise Bad(f"missing field(s) {absent}")


def text(value: Any, field: str) -> str:
    """A text field, stripped; numbers are accepted (CSV and parquet ids come either way)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Bad(f"{field}: must be text, got {type(value).__name__}")
    return str(value).strip()


def one_media(row: dict, keys: Sequence[str]) -> str | Skip:
    """The row's single media path from the first of `keys` it holds (a one-item list counts)."""
    for key in ("image", "images"):
        if row.get(key):
            return Skip(IMAGE, key)
    for key in keys:
        value = row.get(key)
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, list):
            if len(value) > 1:
                return Skip(SEVERAL, key)
            value = value[0]
        if not isinstance(value, str):
            raise Bad(f"{key}: must be a file path, got {type(value).__name__}")
        return value
    return Skip(NO_MEDIA)


def place_video(turns: list[dict[str, str]], placeholders: int) -> list[dict[str, str]] | Skip:
    """Our single <video>, at the end of the first user turn (the source's own placeholders removed)."""
    if placeholders > 1:
        return Skip(SEVERAL, f"{placeholders} placeholders")
    first = next(i for i, t in enumerate(turns) if t["role"] == "user")
    turns[first] = {"role": "user", "content": f"{turns[first]['content']}\n<video>"}
    return turns


def strip_placeholders(value: str) -> tuple[str, int]:
    """Text without LLaVA placeholders, and how many there were."""
    stripped, count = PLACEHOLDER.subn("", value)
    return stripped.strip(), count


@dataclass(frozen=True)
class ImportFormat:
    name: str
    title: str  # the published layout, for messages
    outputs: tuple[str, ...]  # our formats it can write; the first is the default
    media: Callable[[dict], tuple[str, ...] | Skip]  # the clip's file names to look for, in order
    convert: Callable[[dict, int, str], Iterable[dict | Skip]]  # (row, position in the source, our format)

    def check_output(self, to: str | None) -> str:
        to = to or self.outputs[0]
        if to not in self.outputs:
            raise DataError(
                f"--to {to}: {self.name} imports as {' or '.join(self.outputs)}; drop --to or pick one of those"
            )
        return to
