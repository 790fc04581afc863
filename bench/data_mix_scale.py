"""Peak memory of reading a training data file as it grows: the streaming index against the
whole-file validator it replaces for training.

For each N, writes an instruction JSONL of N records (all naming one clip, an empty file: only
its presence is checked), then in a fresh process either builds the training mix from it
(`avllm.data.mix.load_mix`: checked line by line, byte offsets kept) and reads every record back,
or loads it whole (`formats.load`), printing the seconds and the process's peak resident memory
(ru_maxrss). The streaming path should grow by tens of bytes a record (offsets, and the ids kept
to report duplicates); the whole-file one by the records themselves.

    python bench/data_mix_scale.py [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import resource, sys, time
from avllm.config import DataSource
from avllm.data import formats
from avllm.data.mix import load_mix
path, how = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if how == "stream":
    records = load_mix([DataSource(path)], "instruction", seed=0)
    n = sum(1 for _ in records)
else:
    n = len(formats.load(path, "instruction"))
print(n, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def write(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            turns = [
                {"role": "user", "content": f"<video>\nWhat happens in this clip? (question {i})"},
                {"role": "assistant", "content": "A red square moves left while a dog barks twice. " * 3},
            ]
            fh.write(json.dumps({"id": f"r{i}", "media": "clip.mp4", "conversations": turns}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "clip.mp4").write_bytes(b"")
        print("records  how     seconds  peak MiB  file MiB")
        for n in args.sizes:
            path = Path(tmp) / f"train-{n}.jsonl"
            write(path, n)
            size = path.stat().st_size / 2**20
            for how in ("stream", "whole"):
                out = subprocess.run([sys.executable, "-c", CHILD, str(path), how], capture_output=True, text=True)
                if out.returncode:
                    sys.exit(out.stderr)
                count, seconds, peak = out.stdout.split()
                assert int(count) == n
                print(f"{n:>8}  {how:<6}  {float(seconds):7.1f}  {float(peak):8.0f}  {size:8.0f}")
            path.unlink()


if __name__ == "__main__":
    main()
