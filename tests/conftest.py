"""Shared fixtures: small media clips written with PyAV, and the real clips in ../shared/clips.

The synthetic clips are made once per test session (a fraction of a second in all) so that
tests know exactly what is in them: frame i of a video is a flat grey of level
`frame_level(i)`, and the soundtrack is a sine tone.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CLIP_SECONDS = 4.0
CLIP_WIDTH, CLIP_HEIGHT, CLIP_FPS = 64, 48, 10


def frame_level(i: int) -> int:
    """Grey level of frame i in clips from write_clip (steps of 5, wrapping below 255)."""
    return 10 + (5 * i) % 240


def level_to_index(level: float) -> int:
    """Inverse of frame_level for the first 48 frames."""
    return int(round((float(level) - 10) / 5))


def write_clip(
    path: str | os.PathLike,
    seconds: float = CLIP_SECONDS,
    width: int = CLIP_WIDTH,
    height: int = CLIP_HEIGHT,
    fps: int = CLIP_FPS,
    with_video: bool = True,
    with_audio: bool = True,
    tone_hz: float = 440.0,
    amplitude: float = 0.5,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
    sample_rate: int = 44100,
    channels: int = 2,
    options: dict[str, str] | None = None,
) -> Path:
    """Write a clip with PyAV; the container is chosen from the file suffix.

    Video frames are flat grey (see frame_level) so a test can tell which frame was decoded;
    audio is a sine of `tone_hz` at `amplitude` (0 gives a silent track).
    """
    import av

    path = Path(path)
    with av.open(str(path), "w", options=options or {}) as out:
        vs = as_ = None
        if with_video:
            vs = out.add_stream(video_codec, rate=fps)
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            if video_codec == "libx264":
                vs.options = {"crf": "0", "preset": "ultrafast", "g": "10"}
            elif video_codec in ("libvpx-vp9", "libvpx"):
                vs.options = {"crf": "4", "b": "0", "deadline": "realtime", "cpu-used": "8", "g": "10"}
        if with_audio:
            layout = "stereo" if channels == 2 else "mono"
            as_ = out.add_stream(audio_codec, rate=sample_rate, layout=layout)

        n_video = int(round(seconds * fps)) if with_video else 0
        total = int(round(seconds * sample_rate))
        step = sample_rate // fps if with_video else sample_rate // 10
        n_chunks = max(n_video, -(-total // step)) if with_audio else n_video
        for i in range(n_chunks):
            if vs is not None and i < n_video:
                img = np.full((height, width, 3), frame_level(i), dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                out.mux(vs.encode(frame))
            if as_ is not None and i * step < total:
                n = min(step, total - i * step)
                t = (np.arange(n) + i * step) / sample_rate
                wave = (amplitude * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
                planar = np.tile(wave, (channels, 1))
                if audio_codec.startswith("pcm_s16"):
                    data = (planar.T.reshape(1, -1) * 32767).astype(np.int16)
                    frame = av.AudioFrame.from_ndarray(data, format="s16", layout=as_.layout.name)
                else:
                    frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=as_.layout.name)
                frame.sample_rate = sample_rate
                frame.pts = i * step
                frame.time_base = Fraction(1, sample_rate)
                out.mux(as_.encode(frame))
        for stream in (vs, as_):
            if stream is not None:
                out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def av_clip(clip_dir) -> Path:
    """4 s, 64x48 at 10 fps (h264), with a 440 Hz stereo tone at 44.1 kHz (aac), in mp4."""
    return write_clip(clip_dir / "av_clip.mp4")


@pytest.fixture(scope="session")
def video_only_clip(clip_dir) -> Path:
    """The same picture as av_clip, with no audio track."""
    return write_clip(clip_dir / "video_only.mp4", with_audio=False)


@pytest.fixture(scope="session")
def audio_only_wav(clip_dir) -> Path:
    """4 s of a 440 Hz tone, mono 16-bit PCM at 22.05 kHz."""
    return write_clip(clip_dir / "tone.wav", with_video=False, audio_codec="pcm_s16le", sample_rate=22050, channels=1)


@pytest.fixture(scope="session")
def audio_only_flac(clip_dir) -> Path:
    """4 s of a 440 Hz stereo tone in flac at 44.1 kHz."""
    return write_clip(clip_dir / "tone.flac", with_video=False, audio_codec="flac")


@pytest.fixture(scope="session")
def webm_clip(clip_dir) -> Path:
    """4 s, 64x48 at 10 fps in webm: vp9 video, opus audio at 48 kHz."""
    return write_clip(clip_dir / "clip.webm", video_codec="libvpx-vp9", audio_codec="libopus", sample_rate=48000)


@pytest.fixture(scope="session")
def mkv_clip(clip_dir) -> Path:
    """av_clip's streams (h264/aac) in a matroska container."""
    return write_clip(clip_dir / "clip.mkv")


@pytest.fixture(scope="session")
def silent_clip(clip_dir) -> Path:
    """A video whose audio track exists but holds only zeros."""
    return write_clip(clip_dir / "silent.mp4", amplitude=0.0)


@pytest.fixture(scope="session")
def corrupt_file(clip_dir) -> Path:
    """Random bytes with a video suffix."""
    path = clip_dir / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes())
    return path


@pytest.fixture(scope="session")
def text_file(clip_dir) -> Path:
    path = clip_dir / "notes.txt"
    path.write_text("This is not a video.\nJust some notes.\n" * 20)
    return path


@pytest.fixture(scope="session")
def truncated_mp4(clip_dir) -> Path:
    """The first half of an 8 s mp4 whose index (moov) is at the front: a cut-off download."""
    full = write_clip(clip_dir / "full_faststart.mp4", seconds=8.0, options={"movflags": "faststart"})
    path = clip_dir / "truncated.mp4"
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture(scope="session")
def truncated_mp4_no_index(clip_dir, av_clip) -> Path:
    """The first half of av_clip, whose index (moov) is at the end, so it is cut off."""
    path = clip_dir / "truncated_no_index.mp4"
    data = av_clip.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture(scope="session")
def shared_clips() -> Path:
    """The real clips in ../shared/clips (see SOURCES.md there), or $AVLLM_SHARED_CLIPS; skip when absent."""
    folder = Path(os.environ.get("AVLLM_SHARED_CLIPS", Path(__file__).resolve().parents[2] / "shared" / "clips"))
    if not folder.is_dir():
        pytest.skip(f"{folder} not found: the real-clip tests need the shared clips folder")
    return folder
