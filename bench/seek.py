"""Time frame sampling (`load_clip`) in one clip's streams written into mp4, matroska and MPEG-TS.

Writes a clip with PyAV (a moving 640x360 picture at 25 fps, a keyframe every 10 s as x264's
default, a tone), copies its streams into each container, and prints per container the seconds
`load_clip` takes and the video frames it decodes. Sampling cost should follow the number of
frames taken, not the length of the file, in every container.

    python bench/seek.py [--minutes 3] [--frames 8 32] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avllm import media
from avllm.config import MediaConfig

WIDTH, HEIGHT, FPS, GOP = 640, 360, 25, 250


def write(path: Path, seconds: float) -> None:
    """A moving diagonal gradient (cheap to make, not trivial to decode) and a 440 Hz tone."""
    ramp = (np.add.outer(np.arange(HEIGHT), np.arange(WIDTH)) % 256).astype(np.uint8)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        vs.options = {"preset": "ultrafast", "g": str(GOP)}
        aus = out.add_stream("aac", rate=16000, layout="mono")
        for i in range(int(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(np.repeat(np.roll(ramp, 4 * i, axis=1)[..., None], 3, 2), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(vs.encode(frame))
            n = 16000 // FPS
            tone = (0.3 * np.sin(2 * np.pi * 440 * (np.arange(n) + i * n) / 16000)).astype(np.float32)
            sound = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
            sound.sample_rate, sound.pts, sound.time_base = 16000, i * n, Fraction(1, 16000)
            out.mux(aus.encode(sound))
        out.mux(vs.encode(None))
        out.mux(aus.encode(None))


def remux(src: Path, dst: Path) -> None:
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        mapping = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = mapping[packet.stream.index]
                out.mux(packet)


def measure(path: Path, frames: int, runs: int) -> tuple[float, int]:
    """Median seconds of load_clip (sound cut to 1 s, so the picture is timed) and frames decoded."""
    count, decode = [0], media._decode

    def counting(container, stream, damaged):  # noqa: ANN001, ANN202
        for frame in decode(container, stream, damaged):
            count[0] += isinstance(frame, av.VideoFrame)
            yield frame

    media._decode = counting
    try:
        seconds = []
        for _ in range(runs):
            count[0] = 0
            start = time.perf_counter()
            media.load_clip(path, MediaConfig(num_frames=frames, max_frames=frames, max_audio_seconds=1.0))
            seconds.append(time.perf_counter() - start)
    finally:
        media._decode = decode
    return statistics.median(seconds), count[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "clip.mp4"
        write(source, args.minutes * 60)
        print(f"{args.minutes:g} min, {WIDTH}x{HEIGHT} at {FPS} fps, keyframe every {GOP} frames (h264/aac)")
        print(f"{'container':<10} {'frames':>6} {'seconds':>8} {'decoded':>8}")
        for suffix in ("mp4", "mkv", "ts"):
            path = source if suffix == "mp4" else Path(tmp) / f"clip.{suffix}"
            if suffix != "mp4":
                remux(source, path)
            for frames in args.frames:
                seconds, decoded = measure(path, frames, args.runs)
                print(f"{suffix:<10} {frames:>6} {seconds:>8.2f} {decoded:>8}")


if __name__ == "__main__":
    main()
