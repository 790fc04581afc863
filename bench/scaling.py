"""How an answer's cost grows with the clip's length: 0.5, 2, 10 and 60 minutes by default.

Writes its own clips with PyAV (kept in --workdir, so a second run skips this): 320x180 at 5 fps
(h264, a keyframe every 10 s) whose colour changes every 30 s under a moving bar, and a 16 kHz
soundtrack (aac) with an espeak-ng sentence every 20 s (nine different ones in turn) and a tone
between sentences. Then, per clip, in a fresh process (so that its peak memory is its own), loads
the model as `avllm chat` does (`--engine`: auto, torch or llama.cpp), answers one question and prints:
frames, prompt tokens, decode, encode (Whisper + CLIP), transcribe (the subtitles), prefill (the
answer's pass over the prompt), first token (from the
start of decoding), total, and resident memory (GiB) after loading, at its peak while answering,
and at the process's peak (loading's own included); s/min is the first token's seconds per minute
of video. Threads: OMP_NUM_THREADS (2 when unset).

    OMP_NUM_THREADS=2 python bench/scaling.py [--minutes 0.5 2 10 60] [--model starter] [--engine auto]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avllm.config import default_model

WIDTH, HEIGHT, FPS, RATE = 320, 180, 5, 16000
COLOURS = [(200, 40, 40), (40, 160, 60), (40, 80, 200), (220, 200, 40), (160, 60, 180), (240, 240, 240)]
SENTENCES = (  # one every 20 s, in turn; unlike each other, as a talk's are (Whisper drops repetitive text)
    "At minute {minute}, the speaker opens with the budget for next year.",
    "Then she asks who has read the customer survey.",
    "Nobody answers, so she reads the three main complaints aloud.",
    "A colleague says the new office will be ready in spring.",
    "Someone wonders whether the trains will still run on Sundays.",
    "The test results arrive late, and the room goes quiet.",
    "Before the break, they vote on the hiring plan.",
    "We will meet again in {minute} minutes, she says.",
    "Two people argue about the colour of the logo.",
)
QUESTION = "What happens in this video, and what can be heard?"


def write_clip(path: Path, seconds: int) -> None:
    """One second at a time, so an hour is never held in memory."""
    from avllm.data.synth_media import sine, spoken

    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        vs.options = {"preset": "ultrafast", "g": str(10 * FPS)}
        aus = out.add_stream("aac", rate=RATE, layout="mono")
        sound = np.zeros(0, np.float32)
        for second in range(seconds):
            if second % 20 == 0:  # a sentence, then a tone whose pitch changes every block
                sentence = SENTENCES[second // 20 % len(SENTENCES)].format(minute=second // 60)
                words = spoken(sentence, "en-us", 175)
                tone = sine(300.0 + 100 * (second // 20 % 8), 300.0 + 100 * (second // 20 % 8), 3.0, 0.3)
                block = np.zeros(20 * RATE, np.float32)
                block[: len(words)] = words[: 20 * RATE]
                block[10 * RATE : 13 * RATE] += tone
                sound = np.concatenate([sound, block])
            for i in range(FPS):
                img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
                img[:] = COLOURS[second // 30 % len(COLOURS)]
                x = (second * FPS + i) * 4 % WIDTH
                img[:, x : x + 12] = 255
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts, frame.time_base = second * FPS + i, Fraction(1, FPS)
                out.mux(vs.encode(frame))
            chunk, sound = sound[:RATE], sound[RATE:]
            audio = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
            audio.sample_rate, audio.pts, audio.time_base = RATE, second * RATE, Fraction(1, RATE)
            out.mux(aus.encode(audio))
        out.mux(vs.encode(None))
        out.mux(aus.encode(None))
    tmp.replace(path)


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now (VmRSS) or at its peak since the last reset (VmHWM), in MiB."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":")) / 1024


def measure(path: str, model_spec: str, max_new_tokens: int, engine: str) -> dict:
    """One answer about one clip, in this process; prints nothing but the figures."""
    import torch

    from avllm.inference import ChatReport, ChatSettings, answer_stream, decode_and_encode
    from avllm.model import AVLLM
    from avllm.prompt import with_video

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    start = time.perf_counter()
    model = AVLLM.load(model_spec, device="cpu", merge_lora=True, engine=engine)
    load, loaded_mb = time.perf_counter() - start, rss_mb()
    with open("/proc/self/clear_refs", "w") as fh:  # the peak from here on is the answer's (Linux)
        fh.write("5")
    enc, _ = decode_and_encode(model, path, model.config.media)
    report = ChatReport()
    settings = ChatSettings(max_new_tokens=max_new_tokens)
    answer = "".join(answer_stream(model, enc, QUESTION, settings=settings, report=report))
    messages = [{"role": "user", "content": with_video(QUESTION)}]
    prompt_tokens = len(model.tokenize(messages, enc, add_generation_prompt=True).input_ids)
    t = report.timings
    return {
        "minutes": enc.duration / 60,
        "frames": report.frames,
        "audio_seconds": report.audio_seconds,
        "prompt_tokens": prompt_tokens,
        "load": load,
        "decode": t["decode"],
        "encode": t["encode_audio"] + t["encode_visual"],
        "encode_audio": t["encode_audio"],
        "prefill": t["prefill"],
        "first_token": t["first_token"],
        "transcribe": t.get("transcribe", 0.0),
        "total": t["decode"] + t["encode_audio"] + t["encode_visual"] + t.get("transcribe", 0.0) + t["generate"],
        "generated": report.tokens.get("generated", 0),
        "rss_after_load_mb": loaded_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # loading included
        "answer_peak_rss_mb": rss_mb("VmHWM"),
        "truncated": report.truncated,
        "answer": answer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[0.5, 2, 10, 60])
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/avllm-scaling"))
    parser.add_argument("--engine", default="auto", help="what generates the answer, as chat's --engine")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child process: one clip
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.model, args.max_new_tokens, args.engine)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for minutes in args.minutes:
        path = args.workdir / f"talk-{minutes:g}min.mp4"
        if not path.is_file():
            start = time.perf_counter()
            write_clip(path, int(round(minutes * 60)))
            print(f"wrote {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        cmd = [sys.executable, __file__, "--measure", str(path), "--model", args.model, "--engine", args.engine]
        done = subprocess.run(cmd + ["--max-new-tokens", str(args.max_new_tokens)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{path}: the measuring process failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{minutes:g} min: {rows[-1]['answer']!r} {rows[-1]['truncated']}", file=sys.stderr)
    threads = os.environ.get("OMP_NUM_THREADS", "2")
    print(
        f"model {args.model}; --engine {args.engine}; {threads} threads; {args.max_new_tokens} new tokens at most; "
        "seconds, GiB"
    )
    cols = (
        "minutes frames tokens decode encode (audio) transcribe prefill first_token total "
        "RSS_loaded answer_peak peak s/min"
    )
    print(" | ".join(cols.split()))
    for r in rows:
        print(
            f"{r['minutes']:.1f} | {r['frames']} | {r['prompt_tokens']} | {r['decode']:.1f} | {r['encode']:.1f} | "
            f"({r['encode_audio']:.1f}) | {r['transcribe']:.1f} | {r['prefill']:.2f} | {r['first_token']:.1f} | "
            f"{r['total']:.1f} | "
            f"{r['rss_after_load_mb'] / 1024:.2f} | {r['answer_peak_rss_mb'] / 1024:.2f} | "
            f"{r['peak_rss_mb'] / 1024:.2f} | {r['first_token'] / r['minutes']:.2f}"
        )


if __name__ == "__main__":
    main()
