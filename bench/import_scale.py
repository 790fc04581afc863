"""Peak memory and speed of `avllm data import` as the source grows: it must stay flat.

Writes a MUSIC-AVQA-style JSON list (one big array: the layout that is hardest to stream) of
N questions over a few hundred clip names, half of them present as empty files (the import
only looks for them), then imports it in a fresh process for each N and prints the seconds,
rows per second, and that process's peak resident memory (ru_maxrss). A reader that held the file or the
records would grow with N; the streaming one should not.

    python bench/import_scale.py [--sizes 10000 100000 1000000] [--workdir /tmp/avllm-import-bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

CLIPS = 500


def write_source(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[\n")
        for i in range(n):
            record = {
                "video_id": f"{i % CLIPS:08d}",
                "question_id": i,
                "type": '["Audio-Visual", "Location"]',
                "question_content": "Where is the <FL> sounding <Object>?",
                "templ_values": '["first", "instrument"]',
                "question_deleted": 0,
                "anser": "left",
            }
            fh.write(("," if i else "") + json.dumps(record) + "\n")
        fh.write("]\n")


def run(source: Path, media: Path, out: Path) -> tuple[float, float, str]:
    code = (
        "import resource, sys; from avllm.data.importers import run_import; "
        "s = run_import('music-avqa', sys.argv[1], sys.argv[3], sys.argv[2], progress=False); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); print(s.lines()[0])"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, str(source), str(media), str(out)], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr)
    peak_kb, result = done.stdout.strip().split("\n", 1)
    return seconds, int(peak_kb) / 1024, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--workdir", default="/tmp/avllm-import-bench")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    media = work / "media"
    media.mkdir(parents=True)
    for i in range(0, CLIPS, 2):
        (media / f"{i:08d}.mp4").touch()
    print(f"{'rows':>10} {'source MB':>10} {'seconds':>8} {'rows/s':>9} {'peak RSS MB':>12}  result")
    for n in args.sizes:
        source = work / f"avqa-{n}.json"
        write_source(source, n)
        seconds, peak_mb, result = run(source, media, media / f"qa-{n}.jsonl")
        size_mb = source.stat().st_size / 1e6
        print(f"{n:>10} {size_mb:>10.1f} {seconds:>8.1f} {n / seconds:>9.0f} {peak_mb:>12.1f}  {result}")
        source.unlink()
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
