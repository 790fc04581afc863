"""Peak memory and speed of `avllm data import` as the source grows: it must stay flat.

For each N, writes a source of N rows and imports it in a fresh process, printing the
seconds, rows per second, and that process's peak resident memory (ru_maxrss). A reader that
held the file or the records would grow with N; the streaming one should not. Layouts:

- `json`: a MUSIC-AVQA-style JSON list (one big array, the hardest layout to stream) over 500
  clip names, half of them present (as empty files: the import only looks for them);
- `parquet`: a Hugging Face dataset folder (`data/train-00000-of-00001.parquet`) of TRL
  conversational preference pairs, all naming one clip.

    python bench/import_scale.py [--layout json parquet] [--sizes 10000 100000 1000000]
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
BATCH = 50_000


def avqa_rows(start: int, stop: int) -> list[dict]:
    return [
        {
            "video_id": f"{i % CLIPS:08d}",
            "question_id": i,
            "type": '["Audio-Visual", "Location"]',
            "question_content": "Where is the <FL> sounding <Object>?",
            "templ_values": '["first", "instrument"]',
            "question_deleted": 0,
            "anser": "left",
        }
        for i in range(start, stop)
    ]


def preference_rows(start: int, stop: int) -> list[dict]:
    return [
        {
            "video": "clips/beep.mp4",
            "prompt": [{"role": "user", "content": f"Question {i}: what do you hear?"}],
            "chosen": [{"role": "assistant", "content": "A steady tone plays."}],
            "rejected": [{"role": "assistant", "content": "A dog barks."}],
        }
        for i in range(start, stop)
    ]


def write_json(work: Path, n: int) -> tuple[str, Path, Path]:
    media = work / "media"
    for i in range(0, CLIPS, 2):
        (media / f"{i:08d}.mp4").touch()
    source = work / f"avqa-{n}.json"
    with open(source, "w", encoding="utf-8") as fh:
        fh.write("[\n")
        for start in range(0, n, BATCH):
            fh.write(",\n".join(json.dumps(r) for r in avqa_rows(start, min(n, start + BATCH))))
            fh.write(",\n" if start + BATCH < n else "\n")
        fh.write("]\n")
    return "music-avqa", source, media


def write_parquet(work: Path, n: int) -> tuple[str, Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    media = work / "media"
    (media / "clips").mkdir(exist_ok=True)
    (media / "clips" / "beep.mp4").touch()
    source = work / f"prefs-{n}"
    (source / "data").mkdir(parents=True)
    writer = None
    for start in range(0, n, BATCH):
        table = pa.Table.from_pylist(preference_rows(start, min(n, start + BATCH)))
        writer = writer or pq.ParquetWriter(source / "data" / "train-00000-of-00001.parquet", table.schema)
        writer.write_table(table)
    writer.close()
    return "trl-dpo", source, media


def run(fmt: str, source: Path, media: Path, out: Path) -> tuple[float, float, str]:
    code = (
        "import resource, sys; from avllm.data.importers import run_import; "
        "s = run_import(sys.argv[1], sys.argv[2], sys.argv[4], sys.argv[3], progress=False); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); print(s.lines()[0])"
    )
    start = time.perf_counter()
    args = [sys.executable, "-c", code, fmt, str(source), str(media), str(out)]
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr)
    peak_kb, result = done.stdout.strip().split("\n", 1)
    return seconds, int(peak_kb) / 1024, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", nargs="+", choices=["json", "parquet"], default=["json", "parquet"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--workdir", default="/tmp/avllm-import-bench")
    args = parser.parse_args()
    print(f"{'layout':>8} {'rows':>10} {'source MB':>10} {'seconds':>8} {'rows/s':>8} {'peak RSS MB':>12}  result")
    for layout in args.layout:
        for n in args.sizes:
            work = Path(args.workdir)
            shutil.rmtree(work, ignore_errors=True)
            (work / "media").mkdir(parents=True)
            fmt, source, media = (write_json if layout == "json" else write_parquet)(work, n)
            size = sum(f.stat().st_size for f in [source, *source.rglob("*")] if f.is_file()) / 1e6
            seconds, peak_mb, result = run(fmt, source, media, media / "out.jsonl")
            print(f"{layout:>8} {n:>10} {size:>10.1f} {seconds:>8.1f} {n / seconds:>8.0f} {peak_mb:>12.1f}  {result}")
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
