"""The chat logic shared by the Gradio UI and the OpenAI-compatible API.

* `ClipStore`: encoded clips keyed by the file's content hash (and the frame setting), a
  bounded LRU. A clip is decoded and run through the frozen encoders once per upload; every
  later question about it (from the UI or the API, from any user) reuses the features. Two
  requests for the same new clip at once encode it once: the second waits for the first.
* `Slots`: at most `concurrency` answers and clip encodings run at once, at most `max_queue`
  wait in line (first come, first served), and the rest are refused at once (`Busy`, the
  API's 429) rather than piling up.
* `Watch`: a request's way out: its client went away or its deadline passed. Waiting in line
  and generating both look at it, so a slot is freed within a word of the client leaving.
* `ChatService`: the served model, its limits (ServeSettings) and the above.

Conversations follow `inference.answer_stream`: `history` holds the earlier turns, with the
clip's <video> placeholder in the first user turn.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import hashlib
import logging
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import MediaConfig
from ..errors import AVLLMError, MediaError
from ..inference import ChatReport, ChatSettings, answer_stream, decode_and_encode, with_frames
from ..media import probe
from ..model import AVLLM, EncodedClip
from ..prompt import VIDEO_TOKEN, Message, with_video
from .metrics import Metrics
from .settings import ServeSettings

log = logging.getLogger("avllm.serve")

THUMB_SIDE = 160  # pixels: the longer side of the frame thumbnails the UI shows
POLL = 0.1  # seconds between looks at a waiting request's Watch


def _malloc_trim() -> Callable[[int], int] | None:
    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None  # glibc only


MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand memory that finished work freed back to the system. glibc keeps it in per-thread arenas,
    and a server's many threads made its memory grow with every request (bench/serve_load.py)."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


class UploadTooLarge(MediaError):
    """A clip over the server's upload limit (the API answers 413)."""


class PromptTooLong(AVLLMError):
    """A conversation over the server's prompt limit (the API answers 400)."""


class Busy(AVLLMError):
    """Every slot taken and the line full (the API answers 429 with Retry-After)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Stopped(AVLLMError):
    """The request's client went away, or its time ran out (`timed_out`)."""

    def __init__(self, message: str, timed_out: bool):
        super().__init__(message)
        self.timed_out = timed_out


@dataclass
class Watch:
    """A request's way out: `cancel` is set when its client goes away; `deadline` is time.monotonic()."""

    deadline: float = math.inf
    timeout: float = math.inf  # what the deadline was set from, for the message
    cancel: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def after(cls, seconds: float) -> Watch:
        return cls(time.monotonic() + seconds, seconds)

    def check(self) -> None:
        if self.cancel.is_set():
            raise Stopped("the client went away", timed_out=False)
        if time.monotonic() > self.deadline:
            raise Stopped(
                f"the request ran past this server's time limit of {self.timeout:g} s (--request-timeout); "
                "ask for fewer tokens or try again when the server is less busy",
                timed_out=True,
            )


class Slots:
    """At most `running` holders at once and at most `waiting` in line, served in order of arrival."""

    def __init__(self, running: int, waiting: int):
        self.running, self.waiting = max(1, running), max(0, waiting)
        self.active = 0
        self._line: deque[object] = deque()
        self._cond = threading.Condition()
        self._mean_hold = 5.0  # seconds a holder keeps its slot (moving average), for Retry-After

    @property
    def queued(self) -> int:
        return len(self._line)

    def retry_after(self) -> int:
        """Seconds until a place in line is likely to free up."""
        return max(1, math.ceil(self._mean_hold * (len(self._line) + 1) / self.running))

    def check_room(self) -> None:
        """Busy now when the line is full: a request refused before any work is done on it."""
        with self._cond:
            if self.active >= self.running and len(self._line) >= self.waiting:
                self._refuse()

    def _refuse(self) -> None:
        retry = self.retry_after()
        raise Busy(
            f"the server is busy: {self.active} answers running and {len(self._line)} waiting, "
            f"the most it takes; try again in {retry} s",
            retry,
        )

    @contextmanager
    def hold(self, watch: Watch | None = None) -> Iterator[float]:
        """A slot for the with-block, after waiting in line; yields the seconds waited."""
        watch = watch or Watch()
        start = time.monotonic()
        with self._cond:
            if self.active >= self.running or self._line:
                if len(self._line) >= self.waiting:
                    self._refuse()
                me = object()
                self._line.append(me)
                try:
                    while self.active >= self.running or self._line[0] is not me:
                        watch.check()
                        self._cond.wait(POLL)
                finally:
                    self._line.remove(me)
                    self._cond.notify_all()
            self.active += 1
        began = time.monotonic()
        try:
            yield began - start
        finally:
            with self._cond:
                self.active -= 1
                self._mean_hold = 0.8 * self._mean_hold + 0.2 * (time.monotonic() - began)
                self._cond.notify_all()
            release_freed_memory()


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

    def get(self, key: tuple, build: Callable[[], StoredClip], watch: Watch | None = None) -> tuple[StoredClip, bool]:
        """The entry for `key` and whether it was reused (True) or built by this call (False).

        While another request encodes the same clip, this one waits (watching its own `watch`);
        when that request stops (its client left), the clip is built again rather than failed.
        """
        while True:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return self._entries[key], True
                future = self._pending.get(key)
                if future is None:
                    future = self._pending[key] = Future()
                    break
            while not future.done():  # someone else is encoding this clip: wait and share
                (watch or Watch()).check()
                wait([future], timeout=POLL)
            if not isinstance(future.exception(), Stopped):
                return future.result(), True
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

    def __init__(self, model: AVLLM, settings: ServeSettings | None = None, model_id: str | None = None):
        self.model = model
        self.settings = settings or ServeSettings(model=model.config.name)
        self.slots = Slots(self.settings.concurrency, self.settings.max_queue)
        self.store = ClipStore(self.settings.cache_size)
        self.model_id = model_id or model.config.name
        self.metrics = Metrics(self.slots)
        context = getattr(model.llm.config, "max_position_embeddings", None) or 4096
        self.max_prompt_tokens = self.settings.max_prompt_tokens or max(1, context - self.settings.max_new_tokens)
        # No token is longer than this many characters, so more characters than limit x this are surely over it.
        self._chars_per_token = max(len(t) for t in model.tokenizer.get_vocab())

    # ---- clips ----------------------------------------------------------------------------
    def media_config(self, frames: int | None) -> MediaConfig:
        """The model's media settings with the server's limits (and a frame count, like encode_file)."""
        cfg = self.model.config.media
        cfg = dataclasses.replace(
            cfg,
            max_duration=min(cfg.max_duration, self.settings.max_duration),
            max_file_mb=min(cfg.max_file_mb, self.settings.max_upload_mb),
        )
        if frames is not None and not 1 <= frames <= self.settings.max_frames:
            raise AVLLMError(f"frames={frames}: choose between 1 and {self.settings.max_frames}")
        return with_frames(cfg, frames)

    def check_size(self, nbytes: int, name: str) -> None:
        limit = self.settings.max_upload_mb
        if nbytes > limit * 2**20:
            raise UploadTooLarge(
                f"{name}: the clip is {nbytes / 2**20:.1f} MiB, over this server's limit of "
                f"{limit:g} MiB; cut or re-encode it smaller"
            )

    def clip_from_path(
        self, path: str | os.PathLike, frames: int | None = None, name: str | None = None, watch: Watch | None = None
    ) -> tuple[StoredClip, bool]:
        """The encoded clip of a file (encoded now, or reused), and whether it was reused."""
        path = Path(path)
        name = name or path.name
        if not path.is_file():  # a FIFO or a device (/dev/zero) would block or never end
            raise MediaError(f"{name}: no such file; upload the clip again")
        self.check_size(path.stat().st_size, name)
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        key = digest.hexdigest()
        clip, reused = self.store.get((key, frames), lambda: self._encode(path, key, name, frames, watch), watch)
        self.metrics.clips.labels("reused" if reused else "encoded").inc()
        return clip, reused

    def _encode(self, path: Path, key: str, name: str, frames: int | None, watch: Watch | None) -> StoredClip:
        """Decode (refusing files over the limits) and run the encoders, holding a slot;
        the decoded frames also become the UI's thumbnails."""
        cfg = self.media_config(frames)
        try:
            probe(path, cfg)  # headers only: a clip over the limits is refused before decoding
            with self.slots.hold(watch):
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
        watch: Watch | None = None,
        started: Callable[[], None] | None = None,
    ) -> Iterator[str]:
        """Answer pieces, generated while holding one of the `concurrency` slots.

        `report.timings` gets `queue` (waiting for a slot) besides answer_stream's timings.
        When the clip was `reused`, its encode timings are left out, so `first_token` is the
        time to first token of this question alone; otherwise it includes decode and encode.
        Generation stops (Stopped) when `watch` says so, and closing the iterator stops it too;
        either way the slot is freed. `started` is called once the slot is held.
        """
        settings = settings or ChatSettings()
        report = report if report is not None else ChatReport()
        watch = watch or Watch.after(self.settings.request_timeout)
        self.check_settings(settings)
        turns, question = conversation(history or [], question)
        prompt = self.prompt_tokens(clip, turns, question, converted=True)
        enc = dataclasses.replace(clip.enc, timings={}) if reused else clip.enc
        with self.slots.hold(watch) as waited:
            report.timings["queue"] = waited
            if started:
                started()
            pieces = answer_stream(self.model, enc, question, turns, settings, report)
            try:
                for piece in pieces:
                    yield piece
                    watch.check()
            finally:
                pieces.close()
                report.tokens["prompt"] = prompt
                self.metrics.tokens.inc(report.tokens.get("generated", 0))

    def check_settings(self, settings: ChatSettings) -> None:
        limit = self.settings.max_new_tokens
        if not 1 <= settings.max_new_tokens <= limit:
            raise AVLLMError(f"max tokens {settings.max_new_tokens}: choose between 1 and {limit}")
        if settings.temperature < 0:
            raise AVLLMError(f"temperature {settings.temperature}: must be 0 (greedy) or more")

    def prompt_tokens(self, clip: StoredClip, history: list[Message], question: str, converted: bool = False) -> int:
        """How many tokens the LLM reads for this question (media placeholders included);
        PromptTooLong past the server's limit, without tokenizing text that is surely over it."""
        limit = self.max_prompt_tokens
        chars = len(question) + sum(len(m["content"]) for m in history)
        count = None
        if chars <= limit * self._chars_per_token:
            turns, question = (history, question) if converted else conversation(history, question)
            messages = turns + [{"role": "user", "content": question}]
            count = len(self.model.tokenize(messages, clip.enc, True).input_ids)
            if count <= limit:
                return count
        raise PromptTooLong(
            f"the conversation is {f'{count} tokens' if count else f'{chars} characters'}, over this server's "
            f"prompt limit of {limit} tokens (the clip included); shorten the question or the history"
        )


def report_dict(report: ChatReport, clip: StoredClip, reused: bool) -> dict:
    """The facts of an answer for the API's `avllm` field: what it used, and which clip (its sha256)."""
    out = report.to_dict()
    out["clip_sha256"] = clip.key
    out["clip_reused"] = reused
    return out
