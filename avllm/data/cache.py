"""A disk cache of the frozen encoders' outputs, so no clip is decoded or encoded twice.

One safetensors file per clip, keyed by the media file's content hash and by everything that
shapes the features (the encoders, the media sampling settings). Each file records its key
and a checksum of its tensors; an entry that is unreadable, truncated, or written for other
settings is rebuilt rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from tqdm.auto import tqdm

from ..config import cache_dir
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..model import AVLLM, EncodedClip

log = logging.getLogger(__name__)
FORMAT = "2"  # 2: subtitles in the metadata


def file_hash(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(tensors[name].contiguous().numpy().tobytes(), zlib.crc32(name.encode(), crc))
    return f"{crc:08x}"


class FeatureCache:
    """Encoded clips on disk for one model's encoders and media settings."""

    def __init__(self, model: AVLLM, root: str | os.PathLike | None = None):
        self.model = model
        settings = {
            "audio": model.audio_encoder.description,
            "visual": model.visual_encoder.description,
            "media": asdict(model.config.media),
            "encoder_dtype": str(model.visual_encoder.dtype).removeprefix("torch."),  # what "auto" became
            "subtitles": model.transcriber.description if model.transcriber else None,
            "format": FORMAT,
        }
        self.settings_key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.root = Path(root) if root else cache_dir() / "features"
        self.folder = self.root / self.settings_key
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "settings.json").write_text(json.dumps(settings, indent=2))
        self._hashes: dict[tuple[str, int, int], str] = {}
        self.stats = {"hits": 0, "built": 0, "rebuilt": 0}

    def content_hash(self, media: str | os.PathLike) -> str:
        stat = os.stat(media)
        memo = (os.path.abspath(media), stat.st_size, stat.st_mtime_ns)
        if memo not in self._hashes:
            self._hashes[memo] = file_hash(media)
        return self._hashes[memo]

    def entry(self, media: str | os.PathLike) -> Path:
        digest = self.content_hash(media)
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def get(self, media: str | os.PathLike) -> EncodedClip:
        """The clip's encoder outputs: from disk when a sound entry exists, else computed and stored."""
        path = self.entry(media)
        if path.is_file():
            enc = self._read(path, media)
            if enc is not None:
                self.stats["hits"] += 1
                return enc
            self.stats["rebuilt"] += 1
        else:
            self.stats["built"] += 1
        from ..inference import encode_file

        enc = encode_file(self.model, media)
        self._write(path, enc, media)
        return enc

    def build(self, media: Iterable[str | os.PathLike], progress: bool = True) -> dict[str, int]:
        """Fill the cache for many files (each distinct file once), with a progress bar."""
        unique = list(dict.fromkeys(os.path.abspath(m) for m in media))
        for item in tqdm(unique, desc="features", unit="clip", disable=not progress):
            self.get(item)
        return dict(self.stats)

    def _write(self, path: Path, enc: EncodedClip, media: str | os.PathLike) -> None:
        tensors = {"frame_times": torch.as_tensor(np.asarray(enc.frame_times, dtype=np.float64))}
        if enc.visual is not None:
            tensors["visual"] = enc.visual.detach().float().cpu().contiguous()
        if enc.audio is not None:
            tensors["audio"] = enc.audio.detach().float().cpu().contiguous()
        meta = {
            "key": path.stem,
            "settings": self.settings_key,
            "duration": repr(float(enc.duration)),
            "facts": json.dumps(enc.facts.to_dict() if enc.facts else None),
            "subtitles": json.dumps([s.to_dict() for s in enc.subtitles]),
            "subtitles_left_out": str(enc.subtitles_left_out),
            "checksum": checksum(tensors),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(tensors, tmp, metadata=meta)
        tmp.replace(path)

    def _read(self, path: Path, media: str | os.PathLike) -> EncodedClip | None:
        from ..media import MediaFacts
        from ..model import EncodedClip
        from ..speech import Segment

        try:
            with safe_open(path, framework="pt") as fh:
                meta = fh.metadata() or {}
            tensors = load_file(path)
            if meta.get("key") != path.stem or meta.get("settings") != self.settings_key:
                raise ValueError("written for another clip or other settings")
            if meta.get("checksum") != checksum(tensors):
                raise ValueError("checksum mismatch")
            facts = json.loads(meta["facts"])
            return EncodedClip(
                visual=tensors.get("visual"),
                frame_times=tensors["frame_times"].numpy(),
                audio=tensors.get("audio"),
                duration=float(meta["duration"]),
                facts=MediaFacts(**facts) if facts else None,
                subtitles=[Segment(**s) for s in json.loads(meta["subtitles"])],
                subtitles_left_out=int(meta["subtitles_left_out"]),
            )
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            log.warning("feature cache entry %s for %s is unusable (%s); rebuilding it", path, media, exc)
            return None


def shard(media: list[Path], spec: str = "auto") -> tuple[list[Path], int, int]:
    """This process's share of a dataset's distinct clips, (its clips, index, count): every count-th
    clip from its index, in sorted order, so the shards never overlap and together hold every clip.
    `auto` takes the index and count from RANK and WORLD_SIZE, as `accelerate launch` and torchrun set
    them (one shard without them); `I/N` names them, for machines started on their own."""
    if spec == "auto":
        index, count = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    else:
        left, sep, right = spec.partition("/")
        if not (sep and left.isdigit() and right.isdigit() and int(left) < int(right)):
            raise ConfigError(f"--shard {spec}: expected auto or I/N with 0 <= I < N, e.g. 0/4")
        index, count = int(left), int(right)
    unique = sorted(set(os.path.abspath(m) for m in media))
    return [Path(m) for m in unique[index::count]], index, count


def dataset_media(path: str | os.PathLike, allow_outside_media: bool = False) -> list[Path]:
    """The media files of an instruction, preference or QA JSONL (validated whole first)."""
    from . import formats

    with open(path, encoding="utf-8") as fh:
        first = json.loads(next((line for line in fh if line.strip()), "{}"))
    fmt = "instruction" if "conversations" in first else "preference" if "chosen" in first else "qa"
    return [record.media for record in formats.load(path, fmt, allow_outside_media=allow_outside_media)]
