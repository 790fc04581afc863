"""Streaming readers: each yields `(where, row)` one source record at a time.

An import of a million records then holds one record and one read buffer, never the file:
JSON lists are decoded element by element (the standard library's `raw_decode` over a
sliding 1 MiB buffer), JSON lines and CSV line by line, parquet batch by batch (pyarrow),
and Hugging Face dataset folders file by file, the files of a split found by `datasets` (a
`save_to_disk` folder is memory-mapped instead). `where` names the record for messages; a JSON lines row
that does not parse is yielded as a `Bad` so the import reports it with the others.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import DataError
from .base import Bad

CHUNK = 1 << 20
SEPARATORS = re.compile(r"[\s,]*")
Rows = Iterator[tuple[str, Any]]


def read_rows(src: str, split: str | None = None) -> tuple[Rows, Path]:
    """Rows of SRC, and the folder its media paths are relative to unless --media-dir says otherwise."""
    if src.startswith("hf:"):
        folder = hub_snapshot(src[3:])
        return dataset_rows(folder, split, src), folder
    path = Path(src)
    if path.is_dir():
        return dataset_rows(path, split, src), path
    if not path.is_file():
        raise DataError(f"{src}: no such file or folder; check the path (or name a cached dataset as hf:ORG/NAME)")
    if split is not None:
        raise DataError(f"--split {split}: {src} is a single file; --split picks a split of a Hugging Face dataset")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"{src}: unknown file type {path.suffix!r}; give a .json, .jsonl, .csv or .parquet file, "
            "a Hugging Face dataset folder, or hf:ORG/NAME"
        )
    return reader(path), path.parent


def _open(path: Path):  # noqa: ANN202 - a text file object
    return open(path, encoding="utf-8-sig", newline="")


def _unicode(path: Path, exc: UnicodeDecodeError) -> DataError:
    return DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); pass the file as published")


def json_rows(path: Path) -> Rows:
    """A JSON list, element by element, or JSON lines (one object per line)."""
    try:
        with _open(path) as fh:
            buf = fh.read(CHUNK)
            start = SEPARATORS.match(buf).end()
            if buf[start : start + 1] == "[":
                yield from _json_list(path, fh, buf, start + 1)
                return
        with _open(path) as fh:
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        yield f"{path}:{number}", json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield f"{path}:{number}", Bad(f"not valid JSON ({exc.msg}); expected a JSON list or JSON lines")
    except UnicodeDecodeError as exc:
        raise _unicode(path, exc) from exc


def _json_list(path: Path, fh: Any, buf: str, pos: int) -> Rows:
    decoder = json.JSONDecoder()
    index, eof = 0, False
    while True:
        pos = SEPARATORS.match(buf, pos).end()
        if pos < len(buf) and buf[pos] == "]":
            return
        try:
            if pos >= len(buf):
                raise json.JSONDecodeError("the list is not closed", buf, pos)
            value, pos = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as exc:
            more = "" if eof else fh.read(CHUNK)
            if not more:
                raise DataError(
                    f"{path}: not valid JSON at element {index} ({exc.msg}); pass the file as published"
                ) from exc
            eof = len(more) < CHUNK
            buf, pos = buf[pos:] + more, 0  # drop what was read; keep the element that did not fit
            continue
        yield f"{path}[{index}]", value
        index += 1


def csv_rows(path: Path) -> Rows:
    try:
        with _open(path) as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                yield f"{path}:{reader.line_num}", row
    except UnicodeDecodeError as exc:
        raise _unicode(path, exc) from exc
    except csv.Error as exc:
        raise DataError(f"{path}: not valid CSV ({exc}); pass the file as published") from exc


def parquet_rows(path: Path) -> Rows:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        index = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield f"{path}[{index}]", row
                index += 1
    except pyarrow.ArrowException as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc


def hub_snapshot(repo: str) -> Path:
    """A dataset repository's folder in the local Hugging Face hub cache; never the network."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, repo_type="dataset", local_files_only=True))
    except HFValidationError as exc:
        raise DataError(f"hf:{repo}: not a dataset id; write hf:ORG/NAME") from exc
    except LocalEntryNotFoundError as exc:
        raise DataError(
            f"hf:{repo}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); download it first "
            f"(huggingface-cli download --repo-type dataset {repo}) or pass the dataset's folder"
        ) from exc


def dataset_rows(folder: Path, split: str | None, label: str) -> Rows:
    """A Hugging Face dataset folder: its split's data files, as `datasets` finds them, or a save_to_disk folder.

    The data files are streamed by the readers above rather than by `datasets`' own iterable
    dataset, which imports torch (about 900 MB resident) for a feature the import has no use for.
    """
    import datasets

    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(folder))  # Arrow files, memory-mapped
        splits = loaded if isinstance(loaded, dict) else {split or "train": loaded}
        name = pick_split(list(splits), split, label)
        for index, row in enumerate(splits[name]):
            yield f"{label}[{name}][{index}]", row
        return
    try:
        files = datasets.load_dataset_builder(str(folder)).config.data_files or {}
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise DataError(
            f"{label}: not a Hugging Face dataset folder ({exc}); pass a data file (.json, .jsonl, .csv, .parquet) "
            "or a folder of them"
        ) from exc
    for path in map(Path, files[pick_split(list(files), split, label)]):
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"{path}: data files of type {path.suffix!r} are not read; convert them to parquet or JSON")
        yield from reader(path)


def pick_split(names: list[str], wanted: str | None, label: str) -> str:
    if wanted is not None:
        if wanted not in names:
            raise DataError(f"--split {wanted}: {label} has split(s) {', '.join(names)}; pick one of them")
        return wanted
    if len(names) == 1:
        return names[0]
    if "train" in names:
        return "train"
    raise DataError(f"{label} has splits {', '.join(names)}; choose one with --split")


READERS = {".csv": csv_rows, ".json": json_rows, ".jsonl": json_rows, ".parquet": parquet_rows}
