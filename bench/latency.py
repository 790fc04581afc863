"""Time `avllm chat --json` end to end on a 30 s clip with sound (the starter preset by default).

Runs the real command as a new process each time (imports, model load, decode, encode,
generation) and prints each run's timings and the median. Build the caches first with
`avllm convert`, so the figures do not include the one-off conversions.

    python bench/latency.py [--clip PATH] [--runs 3] [--model starter] [--max-new-tokens 64] [--threads 2]
    python bench/latency.py --engines llama.cpp torch   # chat's --engine choices, runs alternating
    python bench/latency.py --subtitles   # what transcription adds: 30 s of speech, 30 s without

`--subtitles` runs each clip with and without `--no-subtitles`, alternating, and prints the medians
and what subtitles add to the first token: the median of the differences within each pair of runs.
The speech clip is three real speeches one after the other (whisper-jfk.flac, the stereo wav, the
skateboarding dog: 30 s), written into a temporary folder; the clip without speech is the default
clip.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

from avllm.config import default_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = ROOT.parent / "shared" / "clips" / "moviepy-big_buck_bunny_0_30.webm"
SPEECHES = ("whisper-jfk.flac", "fasterwhisper-stereo_diarization.wav", "videollama-skateboarding_dog.mp4")
KEYS = ["load", "decode", "encode_audio", "encode_visual", "prefill", "first_token", "generate", "total"]


def run_once(clip: Path, model: str, max_new_tokens: int, threads: int, *flags: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "avllm.cli",
        "chat",
        str(clip),
        "What happens in this clip, and what can be heard?",
        "--model",
        model,
        "--max-new-tokens",
        str(max_new_tokens),
        "--threads",
        str(threads),
        "--json",
        *flags,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def speech_clip(folder: Path) -> Path:
    """Three real speeches one after the other, as 16 kHz mono wav (a repeated one would read as a
    Whisper loop and be dropped)."""
    from avllm.config import MediaConfig
    from avllm.media import SAMPLE_RATE, load_clip

    audio = np.concatenate([load_clip(DEFAULT_CLIP.parent / name, MediaConfig()).audio for name in SPEECHES])
    path = folder / "speeches.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def subtitles_cost(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for clip in (speech_clip(Path(tmp)), args.clip):
            runs: dict[str, list[dict]] = {"on": [], "off": []}
            for _ in range(args.runs):  # alternating, so a busy moment of the host hits both alike
                runs["on"].append(run_once(clip, args.model, args.max_new_tokens, args.threads))
                runs["off"].append(run_once(clip, args.model, args.max_new_tokens, args.threads, "--no-subtitles"))
            med = {
                k: {key: statistics.median(r["timings"].get(key, 0.0) for r in v) for key in KEYS + ["transcribe"]}
                for k, v in runs.items()
            }
            heard = " ".join(s["text"] for s in runs["on"][0]["subtitles"])
            print(f"{clip.name} ({runs['on'][0]['duration']:.1f} s, {args.threads} threads), heard: {heard[:70]!r}")
            for k in ("on", "off"):
                print(
                    f"  subtitles {k:3}: transcribe {med[k]['transcribe']:.2f} s, prefill {med[k]['prefill']:.2f} s, "
                    f"first token {med[k]['first_token']:.2f} s, total {med[k]['total']:.2f} s (medians of {args.runs})"
                )
            added = statistics.median(
                on["timings"]["first_token"] - off["timings"]["first_token"] for on, off in zip(runs["on"], runs["off"])
            )
            print(f"  subtitles add {added:+.2f} s to the first token (median of the {args.runs} pairs' differences)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="chat --threads (default: every core, as a chat on a quiet host; chat's own default would "
        "follow the load that the previous run left)",
    )
    parser.add_argument("--subtitles", action="store_true", help="what subtitles cost (see the docstring)")
    parser.add_argument("--engines", nargs="+", default=["auto"], help="chat --engine values, run in turn")
    args = parser.parse_args()
    if args.subtitles:
        return subtitles_cost(args)
    reports: dict[str, list[dict]] = {engine: [] for engine in args.engines}
    for _ in range(args.runs):  # alternating, so a busy moment of the host hits every engine alike
        for engine, done in reports.items():
            done.append(run_once(args.clip, args.model, args.max_new_tokens, args.threads, "--engine", engine))
    first = reports[args.engines[0]][0]
    print(
        f"clip {args.clip.name}: {first['duration']:.1f} s, {first['frames']} frames, "
        f"audio used {first['audio_used']} ({first['audio_seconds']:.1f} s); model {args.model}; "
        f"max_new_tokens {args.max_new_tokens}, {args.threads} threads"
    )
    for engine, runs in reports.items():
        print(f"--engine {engine}; answers of {', '.join(str(r['tokens']['generated']) for r in runs)} tokens")
        print("run  " + " ".join(f"{k:>13}" for k in KEYS))
        for i, report in enumerate(runs, 1):
            print(f"{i:<4} " + " ".join(f"{report['timings'].get(k, float('nan')):13.2f}" for k in KEYS))
        print(
            "med  "
            + " ".join(f"{statistics.median(r['timings'].get(k, float('nan')) for r in runs):13.2f}" for k in KEYS)
        )


if __name__ == "__main__":
    main()
