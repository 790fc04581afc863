"""One answer about one clip, with everything the answer used: the path shared by the CLI,
the UI and the API, so each face reports the same facts and timings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import MediaConfig
from .media import Clip, load_clip
from .model import AVLLM, EncodedClip
from .prompt import Message, with_video


@dataclass
class ChatSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy


@dataclass
class ChatReport:
    """What an answer was built from; printed by `avllm chat --json` and shown by the UI."""

    answer: str = ""
    audio_used: bool = False
    audio_seconds: float = 0.0
    frames: int = 0
    frame_times: list[float] = field(default_factory=list)
    duration: float = 0.0
    truncated: list[str] = field(default_factory=list)
    subtitles: list[dict[str, Any]] = field(default_factory=list)  # speech heard: {start, end, text}
    model: str = ""
    engine: str = ""  # what generated the answer: llama.cpp or torch (AVLLM.use_engine)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)  # `generated`: tokens the answer took

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return out


def model_warnings(model: AVLLM) -> list[str]:
    """Standing caveats of a model, repeated with every answer so none goes unnoticed."""
    warnings = []
    if not getattr(model.visual_encoder, "pretrained_loaded", True):
        warnings.append(model.visual_encoder.description)
    return warnings


def with_frames(cfg: MediaConfig, frames: int | None) -> MediaConfig:
    """The media settings with `frames` sampled uniformly, whatever the clip's length (None keeps them)."""
    return (
        cfg
        if frames is None
        else replace(cfg, num_frames=frames, max_frames=max(frames, cfg.max_frames), frame_every=None)
    )


def decode_and_encode(model: AVLLM, path: str | Path, cfg: MediaConfig) -> tuple[EncodedClip, Clip]:
    """The clip's features (timed) and the decoded clip itself (for callers that show its frames)."""
    start = time.perf_counter()
    clip = load_clip(path, cfg)
    decode = time.perf_counter() - start
    enc = model.encode(clip)
    enc.timings["decode"] = decode
    return enc, clip


def encode_file(model: AVLLM, path: str | Path, frames: int | None = None) -> EncodedClip:
    """Decode and encode a media file once; the result can serve many questions."""
    return decode_and_encode(model, path, with_frames(model.config.media, frames))[0]


def answer_stream(
    model: AVLLM,
    enc: EncodedClip,
    question: str,
    history: list[Message] | None = None,
    settings: ChatSettings | None = None,
    report: ChatReport | None = None,
) -> Iterator[str]:
    """Stream the answer to `question` about `enc`, after earlier turns `history` (which hold the <video>).

    `report` is filled as the answer streams; its timings are measured from this call.
    """
    settings = settings or ChatSettings()
    report = report if report is not None else ChatReport()
    messages = list(history or [])
    messages.append({"role": "user", "content": question if messages else with_video(question)})
    facts = enc.facts
    report.model = model.config.name
    report.engine = "torch" if model.engine is None else "llama.cpp"
    report.audio_used = enc.audio is not None
    report.audio_seconds = facts.audio_seconds if facts else 0.0
    report.frames = 0 if enc.visual is None else len(enc.frame_times)
    report.frame_times = [round(float(t), 3) for t in enc.frame_times]
    report.duration = enc.duration
    report.truncated = enc.truncated
    report.subtitles = [s.to_dict() for s in enc.subtitles]
    report.warnings = model_warnings(model) + (list(facts.warnings) if facts else [])
    report.timings.update(enc.timings)
    start = time.perf_counter()
    pieces = []
    for piece in model.stream(
        messages, enc, settings.max_new_tokens, settings.temperature, report.timings, report.tokens
    ):
        if not pieces:
            report.timings["first_token"] = time.perf_counter() - start + sum(enc.timings.values())
        pieces.append(piece)
        yield piece
    report.answer = "".join(pieces).strip()
    report.timings["generate"] = time.perf_counter() - start
