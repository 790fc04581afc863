"""Subtitles: time-aligned speech segments from the same Whisper that encodes the sound.

The learned audio tokens carry what a sound is like; the words of a speech are read far better as
text. faster-whisper decodes with the CTranslate2 folder the audio encoder was converted from (int8
on the CPU: a 30 s window costs a fraction of a second), and runs Silero VAD first, so a clip
without speech costs only the VAD pass. Whisper invents words on music, noise and silence ("Thank
you."), so a segment is kept only when voice activity, Whisper's no-speech probability, its
average log-probability and its compression ratio (the checks of Whisper's own `transcribe`) all
say speech, and a segment that repeats the one before is dropped.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelLoadError
from .media import SAMPLE_RATE

log = logging.getLogger(__name__)

NO_SPEECH_MAX = 0.5  # Whisper's probability that a window holds no speech; above it a segment is dropped
LOGPROB_MIN = -1.0  # average token log-probability under which a segment is a guess (Whisper's threshold)
COMPRESSION_MAX = 2.4  # gzip ratio above which text is a loop (Whisper's threshold)
WINDOW_SECONDS = 30.0  # one Whisper window
WHISPER_NAMES = ("tiny", "base", "small", "medium", "large-v1", "large-v2", "large-v3", "large-v3-turbo", "turbo")


@dataclass
class Segment:
    start: float  # seconds from the clip's start
    end: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


def ctranslate2_source(spec: str) -> str | None:
    """What faster-whisper can load for an audio encoder spec (a folder or a released model name),
    or None when the spec has no decoder faster-whisper can run (a .pt or .safetensors file)."""
    if spec.startswith("pkg:"):
        from .encoders.audio import _package_model

        return str(_package_model(spec[4:]))
    if (Path(spec).expanduser() / "model.bin").is_file():
        return str(Path(spec).expanduser())
    name = spec.removesuffix(".en")
    return spec if name in WHISPER_NAMES else None


def _kept(segment: Any, previous: str) -> bool:
    text = segment.text.strip()
    return (
        bool(re.search(r"\w", text))
        and segment.no_speech_prob <= NO_SPEECH_MAX
        and segment.avg_logprob >= LOGPROB_MIN
        and segment.compression_ratio <= COMPRESSION_MAX
        and text.lower() != previous.lower()
    )


class Transcriber:
    """faster-whisper with voice activity detection and Whisper's hallucination checks, greedy."""

    def __init__(self, source: str, device: str = "cpu", threads: int = 0):
        from faster_whisper import WhisperModel

        self.source = source
        self.on_cpu = not device.startswith("cuda")
        try:
            self.model = WhisperModel(
                source,
                device="cpu" if self.on_cpu else "cuda",
                compute_type="int8" if self.on_cpu else "float16",
                cpu_threads=threads,
            )
        except Exception as exc:  # a missing download, a corrupt folder: one message either way
            raise ModelLoadError(
                f"subtitles: faster-whisper could not load {source} ({type(exc).__name__}: {exc}); "
                "set `subtitles: off` in the model config to run without them"
            ) from exc
        self.english_only = source.endswith(".en") or not self.model.model.is_multilingual

    @property
    def description(self) -> str:
        return f"faster-whisper {self.source}, VAD, greedy"

    def __call__(
        self,
        audio: np.ndarray,
        windows: Iterable[np.ndarray] = (),
        enough: Callable[[list[Segment]], bool] | None = None,
    ) -> list[Segment]:
        """Speech segments of 16 kHz mono audio, in time order; none for music, noise or silence.

        `windows`: Whisper's encoder output [1500, dim] for each 30 s of the audio in turn, which the
        audio tower has computed already (see `Transcript`); none: faster-whisper's own loop.
        `enough(segments so far)` stops early (the prompt's subtitle budget is full)."""
        transcript = self.begin(audio, enough)
        for window in windows:
            transcript.add(window)
        return transcript.segments()

    def begin(self, audio: np.ndarray, enough: Callable[[list[Segment]], bool] | None = None) -> Transcript:
        """A transcript of `audio` to feed the tower's windows to as they are encoded."""
        return Transcript(self, np.ascontiguousarray(audio, dtype=np.float32), enough)

    def _transcribe(self, audio: np.ndarray, enough: Callable[[list[Segment]], bool] | None = None) -> list[Segment]:
        """faster-whisper's own loop over the voice in `audio`; it encodes and decodes each window as its
        segments are read, so stopping when `enough` holds skips the rest."""
        segments, _ = self.model.transcribe(
            audio,
            language="en" if self.english_only else None,
            beam_size=1,
            temperature=0.0,  # no sampled retries: a sampled retry is where invented words come from
            condition_on_previous_text=False,  # one bad window must not seed the next
            vad_filter=True,
            compression_ratio_threshold=COMPRESSION_MAX,
            log_prob_threshold=LOGPROB_MIN,
            no_speech_threshold=NO_SPEECH_MAX,
        )
        return _keep(segments, enough=enough)

    def _decode_window(self, window: np.ndarray, voice: list[tuple[float, float]], previous: str = "") -> list[Segment]:
        """A window decoded as faster-whisper decodes one (greedy, with timestamps). Where Whisper leaves
        the last segment open, faster-whisper would encode a new window from there; here the window's
        voice is all in it already, so the decoder goes on in it from that timestamp. Whisper's times in
        a window that starts before the voice are coarse: each segment is trimmed to the voice it
        overlaps, and one outside the voice is dropped. `previous`: the text kept before the window."""
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer

        whisper = self.model
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(window[None], dtype=np.float32))
        language = "en" if self.english_only else whisper.model.detect_language(features)[0][0][0][2:-2]
        tokenizer = Tokenizer(whisper.hf_tokenizer, whisper.model.is_multilingual, "transcribe", language)
        kept: list[Segment] = []
        resume: float | None = None  # where a pass left a segment open
        while True:
            segments, open_at = self._decode_pass(features, tokenizer, resume)
            kept += _keep(segments, previous=kept[-1].text if kept else previous)
            if open_at is None or open_at >= voice[-1][1] or open_at == resume:
                break
            resume = open_at
        trimmed = []
        for segment in kept:
            heard = [(a, b) for a, b in voice if a < segment.end and b > segment.start]
            if heard:
                trimmed.append(Segment(max(segment.start, heard[0][0]), min(segment.end, heard[-1][1]), segment.text))
        return trimmed

    def _decode_pass(self, features: Any, tokenizer: Any, resume: float | None) -> tuple[list[Any], float | None]:
        """One greedy pass over the window, from the timestamp `resume` (None: from the start): its closed
        segments (faster-whisper's Segment, for `_kept`), and where it left one open (None: nowhere)."""
        from faster_whisper.transcribe import Segment as Decoded
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

        whisper, begin = self.model, tokenizer.timestamp_begin
        prefix = [] if resume is None else [begin + round(resume / whisper.time_precision)]
        prompt = whisper.get_prompt(tokenizer, []) + prefix
        result = whisper.model.generate(
            features,
            [prompt],
            beam_size=1,
            max_length=len(prompt) + 224,  # openai-whisper's sample_len: a loop stops there
            return_scores=True,
            return_no_speech_prob=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            max_initial_timestamp_index=round(1.0 / whisper.time_precision),  # faster-whisper's 1 s
        )[0]
        tokens = result.sequences_ids[0]  # the prefix included
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)  # faster-whisper's recovery of it
        ratio = get_compression_ratio(tokenizer.decode(tokens).strip())
        spans: list[tuple[float, float, list[int]]] = []  # (start, end, text tokens) of closed segments
        start, words = 0.0, []
        for token in tokens:
            if token < begin:
                words.append(token)
                continue
            time = (token - begin) * whisper.time_precision
            if words:  # a timestamp after words closes their segment
                spans.append((start, time, words))
                words = []
            start = time
        if words and not spans:  # no closing timestamp at all: Whisper's one segment to the window's end
            spans.append((start, WINDOW_SECONDS, words))
            open_at = None
        else:  # words left after the last closed segment, or a timestamp opening one: it is open there
            open_at = None if not spans or (len(tokens) >= 2 and tokens[-2] < begin <= tokens[-1]) else start
        segments = [
            Decoded(
                id=i,
                seek=0,
                start=a,
                end=b,
                text=tokenizer.decode(w),
                tokens=w,
                avg_logprob=avg_logprob,
                compression_ratio=ratio,
                no_speech_prob=result.no_speech_prob,
                words=None,
                temperature=0.0,
            )
            for i, (a, b, w) in enumerate(spans)
        ]
        return segments, open_at


class Transcript:
    """Subtitles decoded window by window from the audio tower's own encoder output, as the tower
    computes it (on the CPU; on a GPU that pass costs milliseconds, so faster-whisper's loop runs).

    Each 30 s window with voice in it (Silero VAD on its samples) is decoded by `_decode_window`;
    faster-whisper's loop (which cuts the voice out first and encodes it again) takes over for a
    window that keeps no segment. Speech across a window's end is cut there. Once `enough` holds,
    later windows are skipped: an hour's speech is not decoded for the minutes the prompt holds."""

    def __init__(self, transcriber: Transcriber, audio: np.ndarray, enough: Callable[[list[Segment]], bool] | None):
        self.transcriber, self.audio, self.enough = transcriber, audio, enough
        self.kept: list[Segment] = []
        self.windows = 0  # windows added so far
        self.full = False
        self.seconds = 0.0  # spent transcribing

    def add(self, window: np.ndarray) -> None:
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        begin = time.perf_counter()
        offset, self.windows = self.windows * WINDOW_SECONDS, self.windows + 1
        if self.full or not self.transcriber.on_cpu:
            return
        chunk = self.audio[round(offset * SAMPLE_RATE) : round((offset + WINDOW_SECONDS) * SAMPLE_RATE)]
        voice = [(v["start"] / SAMPLE_RATE, v["end"] / SAMPLE_RATE) for v in get_speech_timestamps(chunk, VadOptions())]
        if voice:
            heard = self.transcriber._decode_window(window, voice, self.kept[-1].text if self.kept else "")
            heard = heard or self.transcriber._transcribe(chunk)
            self.kept += [Segment(s.start + offset, s.end + offset, s.text) for s in heard]
            self.full = self.enough is not None and self.enough(self.kept)
        self.seconds += time.perf_counter() - begin

    def segments(self) -> list[Segment]:
        """What was heard: from the windows added, or faster-whisper's loop where none was (or on a GPU)."""
        if self.windows and self.transcriber.on_cpu:
            return self.kept
        begin = time.perf_counter()
        kept = self.transcriber._transcribe(self.audio, self.enough)
        self.seconds += time.perf_counter() - begin
        return kept


def _keep(
    segments: Iterable[Any], previous: str = "", enough: Callable[[list[Segment]], bool] | None = None
) -> list[Segment]:
    """The segments that `_kept` calls speech, as `Segment`s, read until `enough(kept)` holds;
    `previous`: the text kept before them."""
    kept: list[Segment] = []
    for segment in segments:
        if _kept(segment, kept[-1].text if kept else previous):
            kept.append(Segment(float(segment.start), float(segment.end), segment.text.strip()))
            if enough is not None and enough(kept):
                break
    return kept


NO_SPEECH = " [no speech]"  # after the slots of a transcribed clip in which nobody speaks: absence, stated as text


def subtitle_text(segment: Segment) -> str:
    """How a segment reads in the prompt: its start time, then the words as quoted speech."""
    return f' [{segment.start:.1f} s] "{segment.text}"'
