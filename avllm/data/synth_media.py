"""Pictures and sounds for `avllm synth`: numpy drawing, tones, espeak-ng words, PyAV mp4 writing.

A clip is cut into SLOTS equal time slots (8 slots of 0.5 s for a 4 s clip): the starter
model samples one frame at the centre of each slot and pools the sound of each slot, so
every event here (a flash, a beep, a word, a tone) starts on a slot boundary and fills
whole slots. Shapes are large and colours saturated, so even coarse pooled features tell
them apart. `render_clip(facts, path)` turns a facts dict (see synth.py) into the file.
"""

from __future__ import annotations

import functools
import io
import subprocess
import wave
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

SECONDS = 4.0
SLOTS = 8
SLOT_SECONDS = SECONDS / SLOTS
FPS = 8  # whole frames per slot (4), so the frame sampled at a slot's centre is the slot's picture
SIZE = 224  # square frames, CLIP's input size
RATE = 16000  # audio sample rate (Whisper's)
FRAMES_PER_SLOT = int(FPS * SLOT_SECONDS)

COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 245),
    "yellow": (245, 225, 20),
    "purple": (170, 40, 225),
}
SHAPES = ("circle", "square", "triangle", "cross")
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUND, FLASH = 0, 255  # black; the whole background turns white during a flash slot
SHAPE_SIZE = {1: 96, 2: 72, 3: 60}  # pixels, by how many shapes are shown
TRAVEL = 80  # pixels the group moves over the whole clip
GAP = 12

BEEP_HZ, BEEP_SECONDS, BEEP_OFFSET = 1000.0, 0.2, 0.15  # a beep sits in the middle of its slot
TONES = {"low": (300.0, 300.0), "high": (1200.0, 1200.0), "rising": (300.0, 1200.0), "falling": (1200.0, 300.0)}
TONE_SLOTS = 4
WORD_SLOTS = 2  # a word is spoken within two slots (1 s)
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3")
SPEEDS = (150, 175)  # words per minute


# ----------------------------------------------------------------------------- picture


@functools.lru_cache(maxsize=64)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean [size, size] mask of a shape filling most of its box."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    c = size / 2
    if shape == "circle":
        return (xx - c) ** 2 + (yy - c) ** 2 <= (0.48 * size) ** 2
    if shape == "square":
        m = 0.08 * size
        return (xx >= m) & (xx <= size - m) & (yy >= m) & (yy <= size - m)
    if shape == "triangle":  # pointing up, base at the bottom
        top, bottom = 0.05 * size, 0.92 * size
        half = (yy - top) / (bottom - top) * 0.48 * size
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - c) <= half)
    if shape == "cross":  # a plus sign with thick arms
        arm = 0.17 * size
        return (
            ((np.abs(xx - c) <= arm) | (np.abs(yy - c) <= arm))
            & (np.abs(xx - c) <= 0.48 * size)
            & (np.abs(yy - c) <= 0.48 * size)
        )
    raise ValueError(f"unknown shape {shape!r}")


def _paste(img: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], cx: float, cy: float) -> None:
    size = mask.shape[0]
    x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
    xs, ys = max(0, x0), max(0, y0)
    xe, ye = min(img.shape[1], x0 + size), min(img.shape[0], y0 + size)
    if xe <= xs or ye <= ys:
        return
    sub = mask[ys - y0 : ye - y0, xs - x0 : xe - x0]
    img[ys:ye, xs:xe][sub] = colour


def group_centres(count: int, size: int, motion: str, centre: tuple[float, float]) -> list[tuple[float, float]]:
    """Shapes side by side across the direction of motion (a column when moving left or right)."""
    dx, dy = MOTIONS[motion]
    step = size + GAP
    offsets = [(k - (count - 1) / 2) * step for k in range(count)]
    if dx:  # moving sideways: stack vertically
        return [(centre[0], centre[1] + o) for o in offsets]
    return [(centre[0] + o, centre[1]) for o in offsets]


def render_frames(facts: dict[str, Any]) -> np.ndarray:
    """[SECONDS * FPS, SIZE, SIZE, 3] uint8 RGB frames for a clip's facts."""
    n = int(SECONDS * FPS)
    frames = np.empty((n, SIZE, SIZE, 3), np.uint8)
    jx, jy = facts.get("jitter", (0, 0))
    for i in range(n):
        slot = i // FRAMES_PER_SLOT
        img = frames[i]
        img[:] = FLASH if facts.get("flash_slot") == slot else BACKGROUND
        if facts["scene"] == "one":
            size = SHAPE_SIZE[facts["count"]]
            dx, dy = MOTIONS[facts["motion"]]
            progress = (i + 0.5) / n - 0.5  # -0.5 .. 0.5 over the clip
            centre = (SIZE / 2 + jx + dx * TRAVEL * progress, SIZE / 2 + jy + dy * TRAVEL * progress)
            mask = shape_mask(facts["shape"], size)
            for cx, cy in group_centres(facts["count"], size, facts["motion"], centre):
                _paste(img, mask, COLOURS[facts["colour"]], cx, cy)
        else:  # "two": the first object for the first half, the second for the second half
            obj = facts["objects"][0 if slot < SLOTS // 2 else 1]
            _paste(img, shape_mask(obj["shape"], 112), COLOURS[obj["colour"]], SIZE / 2 + jx, SIZE / 2 + jy)
    return frames


# ----------------------------------------------------------------------------- sound


def _fade(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    k = min(len(x) // 2, int(seconds * RATE))
    if k:
        ramp = np.linspace(0.0, 1.0, k, dtype=np.float32)
        x[:k] *= ramp
        x[-k:] *= ramp[::-1]
    return x


def sine(freq_start: float, freq_end: float, seconds: float, amplitude: float) -> np.ndarray:
    n = int(round(seconds * RATE))
    freq = np.linspace(freq_start, freq_end, n, dtype=np.float64)
    phase = 2 * np.pi * np.cumsum(freq) / RATE
    return _fade((amplitude * np.sin(phase)).astype(np.float32))


@functools.lru_cache(maxsize=256)
def spoken(word: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's rendering of one word at RATE, silence trimmed, peak 0.6 (cached per process)."""
    try:
        out = subprocess.run(
            ["espeak-ng", "--stdout", "-v", voice, "-s", str(speed), word], capture_output=True, check=True, timeout=30
        ).stdout
    except FileNotFoundError as exc:
        raise DataError(
            "espeak-ng is not installed; install it (apt-get install espeak-ng) to synthesize speech"
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise DataError(
            f"espeak-ng failed on {word!r} with voice {voice}: {exc.stderr.decode(errors='replace')}"
        ) from exc
    with wave.open(io.BytesIO(out)) as wav:
        rate = wav.getframerate()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    loud = np.flatnonzero(np.abs(data) > 0.02)
    if len(loud):
        data = data[loud[0] : loud[-1] + 1]
    n = int(round(len(data) * RATE / rate))
    resampled = np.interp(np.arange(n) * rate / RATE, np.arange(len(data)), data).astype(np.float32)
    peak = float(np.abs(resampled).max()) if n else 0.0
    return resampled * (0.6 / peak) if peak else resampled


def render_audio(facts: dict[str, Any]) -> np.ndarray | None:
    """Mono float32 soundtrack at RATE, or None for a clip without an audio track."""
    sound = facts["sound"]
    if sound == "none":
        return None
    audio = np.zeros(int(SECONDS * RATE), np.float32)
    if sound == "speech":
        wav = spoken(facts["word"], facts["voice"], facts["speed"]).copy()
        room = int((WORD_SLOTS * SLOT_SECONDS - 0.1) * RATE)
        if len(wav) > room:
            wav = _fade(wav[:room], 0.03)
        window = int(facts["word_slot"] * SLOT_SECONDS * RATE), int(WORD_SLOTS * SLOT_SECONDS * RATE)
        start = window[0] + (window[1] - len(wav)) // 2  # centred in its two slots
        audio[start : start + len(wav)] += wav
    elif sound == "sentence":  # from the start of its slot, cut (faded) at the clip's end
        start = int(facts["speech_slot"] * SLOT_SECONDS * RATE)
        wav = spoken(facts["sentence"], facts["voice"], facts["speed"])[: len(audio) - start]
        audio[start : start + len(wav)] += _fade(wav.copy(), 0.03)
    elif sound == "beeps":
        beep = sine(BEEP_HZ, BEEP_HZ, BEEP_SECONDS, 0.5)
        for slot in facts["beep_slots"]:
            start = int((slot * SLOT_SECONDS + BEEP_OFFSET) * RATE)
            audio[start : start + len(beep)] += beep
    elif sound == "tone":
        lo, hi = TONES[facts["tone"]]
        tone = sine(lo, hi, TONE_SLOTS * SLOT_SECONDS - 0.1, 0.4)
        start = int((facts["tone_slot"] * SLOT_SECONDS + 0.05) * RATE)
        audio[start : start + len(tone)] += tone
    return audio  # "silence": a track of zeros


# ----------------------------------------------------------------------------- file


def write_mp4(path: str | Path, frames: np.ndarray, audio: np.ndarray | None) -> None:
    """h264 (x264, one thread, so the bytes are the same every run) + AAC mono in mp4."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        vs.options = {"crf": "18", "preset": "ultrafast", "g": str(FPS * 2), "threads": "1"}
        vs.codec_context.thread_count = 1
        aus = None
        if audio is not None:
            aus = out.add_stream("aac", rate=RATE, layout="mono")
            aus.codec_context.thread_count = 1
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if aus is not None:
            chunk = 1024
            for start in range(0, len(audio), chunk):
                piece = audio[start : start + chunk].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
                out.mux(aus.encode(frame))
            out.mux(aus.encode(None))


def render_clip(facts: dict[str, Any], path: str | Path) -> None:
    write_mp4(path, render_frames(facts), render_audio(facts))
