"""`avllm data import`: public audio-visual datasets, in their published layouts, to our JSONL.

One module per family (llava, captions, qa, preference), one line per dataset in FORMATS.
The import streams: rows are read one at a time (`readers`), converted, checked as
`formats.validate` checks our own files, and written, so memory does not grow with the
dataset. A row whose clip is missing (or that holds an image, or no media) is skipped and
counted, never written; rows that are not in the published layout are all collected and
reported together, and then nothing is written. The file only appears when the import
succeeded (it is written beside the output as OUT.partial and renamed at the end).

Media paths are written relative to the output file's folder, as our formats require, when
the clips are inside it; clips elsewhere (a download folder given as --media-dir) are written
as absolute paths only with `allow_outside_media`, the same permission every command that
reads the file then needs.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import DataError
from ..formats import MAX_LISTED, check_record
from . import captions, llava, preference, qa
from .base import Bad, ImportFormat, MediaFinder, Skip
from .readers import read_rows

FORMATS: dict[str, ImportFormat] = {
    spec.name: spec
    for spec in (
        ImportFormat(
            "llava",
            "LLaVA-style conversation JSON (VideoLLaMA2, Video-ChatGPT)",
            ("instruction",),
            llava.media,
            llava.convert,
        ),
        ImportFormat("audiocaps", "AudioCaps CSV", ("instruction",), captions.audiocaps_media, captions.audiocaps),
        ImportFormat("clotho", "Clotho captions CSV", ("instruction",), captions.clotho_media, captions.clotho),
        ImportFormat("valor", "VALOR-32K desc JSON", ("instruction",), captions.valor_media, captions.valor),
        ImportFormat("music-avqa", "MUSIC-AVQA JSON", ("qa", "instruction"), qa.music_avqa_media, qa.music_avqa),
        ImportFormat("avqa", "AVQA JSON", ("qa", "instruction"), qa.avqa_media, qa.avqa),
        ImportFormat("trl-dpo", "TRL preference dataset", ("preference",), preference.trl_media, preference.trl),
        ImportFormat(
            "llava-hound-dpo", "LLaVA-Hound DPO JSONL", ("preference",), preference.hound_media, preference.hound
        ),
    )
}


@dataclass
class Summary:
    """What an import did: records read and written, and why the others were skipped."""

    out: Path
    fmt: str
    read: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few names per reason, to act on

    def skip(self, item: Skip) -> None:
        self.skipped[item.reason] += 1
        shown = self.examples.setdefault(item.reason, [])
        if item.detail and len(shown) < 3 and item.detail not in shown:
            shown.append(item.detail)

    def lines(self) -> list[str]:
        lines = [f"wrote {self.written} {self.fmt} records to {self.out} (from {self.read} source records)"]
        if self.skipped:
            lines.append(f"skipped {sum(self.skipped.values())}:")
            for reason, count in self.skipped.most_common():
                shown = self.examples.get(reason)
                lines.append(f"  {count} {reason}" + (f" (e.g. {', '.join(shown)})" if shown else ""))
        return lines


class Placement:
    """Where written media paths point from: the output file's folder."""

    def __init__(self, out: Path, allow_outside_media: bool):
        self.folder = os.path.join(os.path.abspath(out.parent), "")  # with the trailing separator
        self.allow_outside_media = allow_outside_media

    def path(self, media: Path) -> str:
        media = str(media)  # absolute and normalised by MediaFinder
        if media.startswith(self.folder):
            return Path(media[len(self.folder) :]).as_posix()
        if self.allow_outside_media:
            return media
        raise DataError(
            f"{os.path.dirname(media)}: the clips are outside {self.folder}, the output's folder; write --out "
            "inside the folder that holds them, or pass --allow-outside-media (absolute paths, and every "
            "command that reads the file then needs the same permission)"
        )


def convert_row(
    spec: ImportFormat, row: object, index: int, to: str, finder: MediaFinder, summary: Summary
) -> Iterator[dict]:
    """The records of one source row, each with its clip's absolute path; skips go to the summary."""
    if isinstance(row, Bad):
        raise row
    if not isinstance(row, dict):
        raise Bad(f"must be an object, got {type(row).__name__}")
    names = spec.media(row)
    items = list(spec.convert(row, index, to))  # layout problems surface even when the clip is missing
    media = names if isinstance(names, Skip) else finder.find(names)
    if isinstance(media, Skip):
        summary.skip(media)
        return
    for item in items:
        if isinstance(item, Skip):
            summary.skip(item)
        else:
            yield {"id": item["id"], "media": media, **{k: v for k, v in item.items() if k != "id"}}


def run_import(
    name: str,
    src: str,
    out: str | os.PathLike,
    media_dir: str | None = None,
    to: str | None = None,
    split: str | None = None,
    allow_outside_media: bool = False,
    progress: bool = True,
) -> Summary:
    """Convert SRC (a file, a dataset folder or hf:ORG/NAME) in the layout `name` to our JSONL at `out`."""
    from tqdm.auto import tqdm

    spec = FORMATS.get(name)
    if spec is None:
        raise DataError(f"--format {name}: unknown; use one of {', '.join(FORMATS)}")
    to = spec.check_output(to)
    if media_dir is not None and not Path(media_dir).is_dir():
        raise DataError(f"--media-dir {media_dir}: no such folder; give the folder that holds the clips")
    rows, root = read_rows(src, split)
    finder = MediaFinder(Path(media_dir) if media_dir else root)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    placement = Placement(out, allow_outside_media)
    summary = Summary(out, to)
    problems: list[str] = []
    n_problems = 0
    partial = out.with_name(out.name + ".partial")
    try:
        with open(partial, "w", encoding="utf-8") as fh:
            for where, row in tqdm(rows, desc=f"importing {name}", unit=" rows", disable=not progress, mininterval=1):
                summary.read += 1
                try:
                    for record in convert_row(spec, row, summary.read - 1, to, finder, summary):
                        record["media"] = placement.path(record["media"])
                        found = check_record(record, to, out, summary.written + 1, allow_outside_media, False)
                        messages = [f"{where}: {p.field}: {p.message}" for p in found]
                        if not messages and not n_problems:
                            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                            summary.written += 1
                        n_problems += len(messages)
                        problems += messages[: MAX_LISTED - len(problems)]
                except Bad as exc:
                    n_problems += 1
                    problems += [f"{where}: {exc}"][: MAX_LISTED - len(problems)]
        if n_problems:
            more = [f"... and {n_problems - len(problems)} more"] if n_problems > len(problems) else []
            raise DataError(
                f"{src}: {n_problems} problem(s); is this the published {spec.title}? Nothing was written:\n  "
                + "\n  ".join(problems + more)
            )
        if not summary.written:
            reasons = ", ".join(f"{count} {reason}" for reason, count in summary.skipped.most_common())
            raise DataError(
                f"{src}: none of its {summary.read} rows could be imported ({reasons or 'no rows'}); "
                "check --media-dir (the clips' folder) and --format"
            )
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return summary
