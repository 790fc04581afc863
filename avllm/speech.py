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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelLoadError

log = logging.getLogger(__name__)

NO_SPEECH_MAX = 0.5  # Whisper's probability that a window holds no speech; above it a segment is dropped
LOGPROB_MIN = -1.0  # average token log-probability under which a segment is a guess (Whisper's threshold)
COMPRESSION_MAX = 2.4  # gzip ratio above which text is a loop (Whisper's threshold)
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
        try:
            self.model = WhisperModel(
                source,
                device="cuda" if device.startswith("cuda") else "cpu",
                compute_type="float16" if device.startswith("cuda") else "int8",
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

    def __call__(self, audio: np.ndarray) -> list[Segment]:
        """Speech segments of 16 kHz mono audio, in time order; none for music, noise or silence."""
        segments, _ = self.model.transcribe(
            np.ascontiguousarray(audio, dtype=np.float32),
            language="en" if self.english_only else None,
            beam_size=1,
            temperature=0.0,  # no sampled retries: a sampled retry is where invented words come from
            condition_on_previous_text=False,  # one bad window must not seed the next
            vad_filter=True,
            compression_ratio_threshold=COMPRESSION_MAX,
            log_prob_threshold=LOGPROB_MIN,
            no_speech_threshold=NO_SPEECH_MAX,
        )
        kept: list[Segment] = []
        for segment in segments:
            if _kept(segment, kept[-1].text if kept else ""):
                kept.append(Segment(float(segment.start), float(segment.end), segment.text.strip()))
        return kept


NO_SPEECH = " [no speech]"  # after the slots of a transcribed clip in which nobody speaks: absence, stated as text


def subtitle_text(segment: Segment) -> str:
    """How a segment reads in the prompt: its start time, then the words as quoted speech."""
    return f' [{segment.start:.1f} s] "{segment.text}"'
