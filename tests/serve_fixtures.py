"""A live avllm server on 127.0.0.1 with a tiny random model, for the serving tests.

Import the fixtures into a test module (`from serve_fixtures import live_server, ...`);
each module starts one server on a free port in a background thread and stops it at the end.

The tiny model's weights are scaled up and its unprintable tokens suppressed, so that it
writes visible text that depends on the clip and the question (the factory's model answers
nothing but newlines), which the cross-talk and browser tests need. It never stops early,
so every answer is exactly max_tokens long.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from conftest import write_clip  # noqa: E402
from factories import tiny_model_config  # noqa: E402

from avllm.model import AVLLM  # noqa: E402
from avllm.serve.server import BackgroundServer, ServeSettings  # noqa: E402

MAX_UPLOAD_MB = 1.0
MAX_DURATION = 20.0
SHARED_CLIPS = Path(__file__).resolve().parents[2] / "shared" / "clips"  # the UI's example clips, when present


def chatty_tiny_model(folder: Path) -> AVLLM:
    config = tiny_model_config(folder, visual_tokens_per_slot=4, audio_tokens_per_slot=2, media={"num_frames": 3})
    model = AVLLM.from_config(config, device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    tok = model.tokenizer

    def printable(text: str) -> bool:
        return bool(text.strip()) and all(c.isascii() and (c.isalnum() or c in " .,?!'") for c in text)

    model.llm.generation_config.suppress_tokens = [
        i for i in range(model.llm.config.vocab_size) if not printable(tok.decode([i]))
    ]
    model.eval()
    return model


def start_server(folder: Path, **overrides) -> BackgroundServer:
    settings = ServeSettings(
        port=0,
        model="tiny",
        concurrency=2,
        max_upload_mb=MAX_UPLOAD_MB,
        max_duration=MAX_DURATION,
        max_new_tokens=64,
        examples_dir=str(SHARED_CLIPS) if SHARED_CLIPS.is_dir() else None,
        **overrides,
    )
    return BackgroundServer(settings, model=chatty_tiny_model(folder)).start()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("tiny-serve"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def serve_clips(tmp_path_factory) -> dict[str, Path]:
    """Clips that differ in length, frame rate, picture and sound (so their facts differ)."""
    folder = tmp_path_factory.mktemp("serve-clips")
    return {
        "av": write_clip(folder / "av.mp4", seconds=4.0),
        "short": write_clip(folder / "short.mp4", seconds=2.0, tone_hz=880.0),
        "mute": write_clip(folder / "mute.mp4", seconds=6.0, with_audio=False),
        "long6": write_clip(
            folder / "long6.webm", seconds=3.0, video_codec="libvpx-vp9", audio_codec="libopus", sample_rate=48000
        ),
        "wav": write_clip(
            folder / "tone.wav", seconds=3.0, with_video=False, audio_codec="pcm_s16le", sample_rate=16000, channels=1
        ),
        "too_long": write_clip(
            folder / "too_long.mp4", seconds=MAX_DURATION + 5, width=16, height=16, fps=2, with_audio=False
        ),
    }


def data_url(path: Path, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


def b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


@pytest.fixture
def slow_answers(live_server, monkeypatch):
    """Answers of the tiny model at 20 words a second (a real model's pace), so a client can leave mid-answer."""
    real_stream = live_server.service.model.stream

    def slow_stream(*args, **kwargs):
        for piece in real_stream(*args, **kwargs):
            time.sleep(0.05)
            yield piece

    monkeypatch.setattr(live_server.service.model, "stream", slow_stream)
    return live_server.service


def until(condition, seconds: float) -> float:
    """Seconds until condition() held (polled every 20 ms), or inf after `seconds`."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if condition():
            return time.monotonic() - start
        time.sleep(0.02)
    return float("inf")
