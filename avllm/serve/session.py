"""The chat logic shared by the Gradio UI and the OpenAI-compatible API.

* `ClipStore`: encoded clips keyed by the file's content hash (and the frame setting), a
  bounded LRU. A clip is decoded and run through the frozen encoders once per upload; every
  later question about it (from the UI or the API, from any user) reuses the features. Two
  requests for the same new clip at once encode it once: the second waits for the first.
* `ChatService`: the served model, its limits (upload size, duration) and a semaphore that
  bounds how many answers are generated at once, for the UI and the API together.

Conversations follow `inference.answer_stream`: `history` holds the earlier turns, with the
clip's <video> placeholder in the first user turn.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import MediaConfig
from ..errors import AVLLMError, MediaError
from ..inference import ChatReport, ChatSettings, answer_stream, decode_and_encode, with_frames
from ..media import probe
from ..model import AVLLM, EncodedClip
from ..prompt import VIDEO_TOKEN, Message, with_video

log = logging.getLogger("avllm.serve")

THUMB_SIDE = 160  # pixels: the longer side of the frame thumbnails the UI shows
MAX_FRAMES = 64  # the most frames a request may ask for (the model's own cap may be lower)


class UploadTooLarge(MediaError):
    """A clip over the server's upload limit (the API answers 413)."""


@dataclass
class Limits:
    max_upload_mb: float = 200.0  # MiB per clip (upload, data: URL, fetched URL or local file)
    max_duration: float = 600.0  # seconds; longer clips are refused
    max_new_tokens: int = 1024  # the most tokens one answer may ask for


@dataclass
class StoredClip:
    """A clip's features plus what the UI shows of it (small frame thumbnails)."""

    key: str  # sha256 of the file's bytes
    name: str  # what to call the clip in messages (the upload's file name)
    enc: EncodedClip
    thumbs: list[np.ndarray] = field(default_factory=list)


class ClipStore:
    """A thread-safe, bounded LRU of encoded clips; concurrent misses on one key build once."""

    def __init__(self, capacity: int = 16):
        self.capacity = max(1, capacity)
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, StoredClip] = OrderedDict()
        self._pending: dict[tuple, Future] = {}
        self.builds = 0  # clips encoded so far (tests and logs read it)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key: tuple, build: Callable[[], StoredClip]) -> tuple[StoredClip, bool]:
        """The entry for `key` and whether it was reused (True) or built by this call (False)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key], True
            future = self._pending.get(key)
            owner = future is None
            if owner:
                future = self._pending[key] = Future()
        if not owner:
            return future.result(), True  # someone else is encoding this clip: wait and share
        try:
            value = build()
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            future.set_exception(exc)
            raise
        with self._lock:
            self.builds += 1
            self._entries[key] = value
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            del self._pending[key]
        future.set_result(value)
        return value, False


def _thumbnail(frame: np.ndarray) -> np.ndarray:
    """A frame scaled down (nearest pixel, no extra dependency) so its longer side is THUMB_SIDE."""
    h, w = frame.shape[:2]
    scale = min(1.0, THUMB_SIDE / max(h, w))
    if scale == 1.0:
        return frame
    rows = (np.arange(max(1, round(h * scale))) / scale).astype(int)
    cols = (np.arange(max(1, round(w * scale))) / scale).astype(int)
    return np.ascontiguousarray(frame[rows][:, cols])


def _clean(text: str) -> str:
    """User text may not carry the placeholder itself: only the clip decides where media go."""
    return text.replace(VIDEO_TOKEN, "video")


def conversation(history: list[Message], question: str) -> tuple[list[Message], str]:
    """History and question with user text cleaned and <video> in the first user turn."""
    turns = [
        {"role": m["role"], "content": _clean(m["content"]) if m["role"] == "user" else m["content"]} for m in history
    ]
    first_user = next((i for i, m in enumerate(turns) if m["role"] == "user"), None)
    question = _clean(question)
    if first_user is None:
        question = with_video(question)
    else:
        turns[first_user]["content"] = with_video(turns[first_user]["content"])
    return turns, question


class ChatService:
    """One served model: cached clip encoding, limits, and bounded concurrent generation."""

    def __init__(
        self,
        model: AVLLM,
        limits: Limits | None = None,
        concurrency: int = 2,
        cache_size: int = 16,
        model_id: str | None = None,
    ):
        self.model = model
        self.limits = limits or Limits()
        self.concurrency = max(1, concurrency)
        self.gate = threading.BoundedSemaphore(self.concurrency)
        self.store = ClipStore(cache_size)
        self.model_id = model_id or model.config.name

    # ---- clips ----------------------------------------------------------------------------
    def media_config(self, frames: int | None) -> MediaConfig:
        """The model's media settings with the server's limits (and a frame count, like encode_file)."""
        cfg = self.model.config.media
        cfg = dataclasses.replace(
            cfg,
            max_duration=min(cfg.max_duration, self.limits.max_duration),
            max_file_mb=min(cfg.max_file_mb, self.limits.max_upload_mb),
        )
        if frames is not None:
            if not 1 <= frames <= MAX_FRAMES:
                raise AVLLMError(f"frames={frames}: choose between 1 and {MAX_FRAMES}")
        return with_frames(cfg, frames)

    def check_size(self, nbytes: int, name: str) -> None:
        limit = self.limits.max_upload_mb
        if nbytes > limit * 2**20:
            raise UploadTooLarge(
                f"{name}: the clip is {nbytes / 2**20:.1f} MiB, over this server's limit of "
                f"{limit:g} MiB; cut or re-encode it smaller"
            )

    def clip_from_path(
        self, path: str | os.PathLike, frames: int | None = None, name: str | None = None
    ) -> tuple[StoredClip, bool]:
        """The encoded clip of a file (encoded now, or reused), and whether it was reused."""
        path = Path(path)
        name = name or path.name
        if not path.is_file():
            raise MediaError(f"{name}: no such file; upload the clip again")
        self.check_size(path.stat().st_size, name)
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        key = digest.hexdigest()
        return self.store.get((key, frames), lambda: self._encode(path, key, name, frames))

    def clip_from_bytes(
        self, data: bytes, suffix: str, frames: int | None = None, name: str = "the clip"
    ) -> tuple[StoredClip, bool]:
        """Like clip_from_path for bytes (an API request): written to a temporary file only when new."""
        self.check_size(len(data), name)
        key = hashlib.sha256(data).hexdigest()

        def build() -> StoredClip:
            fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="avllm-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                return self._encode(Path(tmp), key, name, frames)
            finally:
                os.unlink(tmp)

        return self.store.get((key, frames), build)

    def _encode(self, path: Path, key: str, name: str, frames: int | None) -> StoredClip:
        """Decode (refusing files over the limits) and run the encoders, holding a generation slot;
        the decoded frames also become the UI's thumbnails."""
        cfg = self.media_config(frames)
        try:
            probe(path, cfg)  # headers only: a clip over the limits is refused before decoding
            with self.gate:
                enc, clip = decode_and_encode(self.model, path, cfg)
        except MediaError as exc:  # name the upload, not the server's temporary file
            raise type(exc)(str(exc).replace(str(path), name)) from None
        log.info("encoded %s (%s, %d frames) in %.2f s", name, key[:12], len(clip.frames), sum(enc.timings.values()))
        return StoredClip(key, name, enc, [_thumbnail(f) for f in clip.frames])

    # ---- answers --------------------------------------------------------------------------
    def stream(
        self,
        clip: StoredClip,
        question: str,
        history: list[Message] | None = None,
        settings: ChatSettings | None = None,
        report: ChatReport | None = None,
        reused: bool = False,
    ) -> Iterator[str]:
        """Answer pieces, generated while holding one of the `concurrency` slots.

        `report.timings` gets `queue` (waiting for a slot) besides answer_stream's timings.
        When the clip was `reused`, its encode timings are left out, so `first_token` is the
        time to first token of this question alone; otherwise it includes decode and encode.
        Closing the iterator stops generation and frees the slot.
        """
        settings = settings or ChatSettings()
        report = report if report is not None else ChatReport()
        self.check_settings(settings)
        turns, question = conversation(history or [], question)
        enc = dataclasses.replace(clip.enc, timings={}) if reused else clip.enc
        waited = time.perf_counter()
        with self.gate:
            report.timings["queue"] = time.perf_counter() - waited
            yield from answer_stream(self.model, enc, question, turns, settings, report)

    def check_settings(self, settings: ChatSettings) -> None:
        if not 1 <= settings.max_new_tokens <= self.limits.max_new_tokens:
            raise AVLLMError(f"max tokens {settings.max_new_tokens}: choose between 1 and {self.limits.max_new_tokens}")
        if settings.temperature < 0:
            raise AVLLMError(f"temperature {settings.temperature}: must be 0 (greedy) or more")

    def prompt_tokens(self, clip: StoredClip, history: list[Message], question: str) -> int:
        """How many tokens the LLM reads for this question (media placeholders included)."""
        turns, question = conversation(history, question)
        return len(self.model.tokenize(turns + [{"role": "user", "content": question}], clip.enc, True).input_ids)


def report_dict(report: ChatReport, reused: bool) -> dict:
    """The facts of an answer for the API's `avllm` field and the UI's panel."""
    out = report.to_dict()
    out["clip_reused"] = reused
    return out
