"""Time `avllm chat --json` end to end on a 30 s clip with sound (the starter preset by default).

Runs the real command as a new process each time (imports, model load, decode, encode,
generation) and prints each run's timings and the median. Build the caches first with
`avllm convert`, so the figures do not include the one-off conversions.

    python bench/latency.py [--clip PATH] [--runs 3] [--model starter] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from avllm.config import default_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = ROOT.parent / "shared" / "clips" / "moviepy-big_buck_bunny_0_30.webm"
KEYS = ["load", "decode", "encode_audio", "encode_visual", "prefill", "first_token", "generate", "total"]


def run_once(clip: Path, model: str, max_new_tokens: int) -> dict:
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
        "--json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    reports = [run_once(args.clip, args.model, args.max_new_tokens) for _ in range(args.runs)]
    first = reports[0]
    print(
        f"clip {args.clip.name}: {first['duration']:.1f} s, {first['frames']} frames, "
        f"audio used {first['audio_used']} ({first['audio_seconds']:.1f} s); model {args.model}; "
        f"max_new_tokens {args.max_new_tokens}"
    )
    print("run  " + " ".join(f"{k:>13}" for k in KEYS))
    for i, report in enumerate(reports, 1):
        print(f"{i:<4} " + " ".join(f"{report['timings'].get(k, float('nan')):13.2f}" for k in KEYS))
    print(
        "med  "
        + " ".join(f"{statistics.median(r['timings'].get(k, float('nan')) for r in reports):13.2f}" for k in KEYS)
    )


if __name__ == "__main__":
    main()
