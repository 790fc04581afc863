"""Load test: many clients against `avllm serve` on 127.0.0.1, for a bounded time.

Starts the server in its own process (so its memory is its own), then runs --clients threads
until --seconds pass. Each request is one of: a question about a repeated clip (its features
are reused), a new clip (a few random bytes appended to a clip make a new file with the same
picture, so it is encoded again), or a malformed request (bad base64, no clip, wrong types);
half the answers stream. A client that gets 429 waits for its Retry-After, at most --max-wait
seconds (so that a run reaches many requests). Memory is measured
after loading, after one first answer (the weights are memory-mapped, so the first answer pages
them in: that is not growth) and at the end. Every answer's
report must name the sha256 of the clip that client sent (no cross-talk). Prints requests by
status, p50/p95/p99 time to first token (streamed answers) and latency (all answers), answers
per second, the server's memory at start and end, and the goals:

    no 5xx; no answer about the wrong clip; server memory growth under 300 MB after 1,000
    requests; 429s rather than a pile-up (the longest wait in line stays bounded)

    python bench/serve_load.py [--model avllm/weights/starter] [--clients 32] [--seconds 120]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_clips(folder: Path, n: int) -> list[bytes]:
    """n short clips that differ in colour and tone (PyAV), as bytes."""
    import av

    clips = []
    for k in range(n):
        path = folder / f"load-{k}.mp4"
        with av.open(str(path), "w") as out:
            video = out.add_stream("libx264", rate=10)
            video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
            audio = out.add_stream("aac", rate=16000, layout="mono")
            for i in range(30):  # 3 s
                level = (40 * k + 5 * i) % 255
                frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), level, np.uint8), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, 10)
                out.mux(video.encode(frame))
                t = (np.arange(1600) + 1600 * i) / 16000
                wave = (0.3 * np.sin(2 * np.pi * (220 + 110 * k) * t)).astype(np.float32)[None]
                sound = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
                sound.sample_rate, sound.pts, sound.time_base = 16000, 1600 * i, Fraction(1, 16000)
                out.mux(audio.encode(sound))
            out.mux(video.encode(None))
            out.mux(audio.encode(None))
        clips.append(path.read_bytes())
    return clips


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return f"p50 {q[49]:.2f} s, p95 {q[94]:.2f} s, p99 {q[98]:.2f} s (n={len(values)})"


class Load:
    def __init__(self, url: str, clips: list[bytes], max_tokens: int, deadline: float, seed: int, max_wait: float):
        self.url, self.clips, self.max_tokens, self.deadline = url, clips, max_tokens, deadline
        self.max_wait = max_wait
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.ttft: list[float] = []
        self.latency: list[float] = []
        self.wrong: list[str] = []
        self.failures: list[str] = []

    def body(self, rng: random.Random) -> tuple[dict, str | None]:
        """A request and the sha256 its answer must name (None: a malformed request)."""
        roll = rng.random()
        if roll < 0.1:
            bad = rng.choice(["base64", "no clip", "types"])
            if bad == "base64":
                part = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,!!notbase64!!"}}
                return {"model": "x", "messages": [{"role": "user", "content": [part]}]}, None
            if bad == "no clip":
                return {"messages": [{"role": "user", "content": "hello?"}]}, None
            return {"messages": "not a list", "max_tokens": "many"}, None
        data = rng.choice(self.clips)
        if roll < 0.3:  # a new file: the same clip with bytes appended, so it is encoded again
            data = data + os.urandom(16)
        part = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(data).decode()}}
        question = {"type": "text", "text": rng.choice(["What is in the video?", "What can be heard?", "Describe it."])}
        body = {
            "max_tokens": self.max_tokens,
            "stream": rng.random() < 0.5,
            "messages": [{"role": "user", "content": [part, question]}],
        }
        return body, hashlib.sha256(data).hexdigest()

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=300) as http:
            while time.monotonic() < self.deadline:
                body, sha = self.body(rng)
                status, wait = self.one(http, body, sha)
                with self.lock:
                    self.statuses[status] += 1
                if wait:
                    time.sleep(min(wait, self.max_wait, max(0.0, self.deadline - time.monotonic())))

    def one(self, http: httpx.Client, body: dict, sha: str | None) -> tuple[str, float]:
        start = time.perf_counter()
        ttft = None
        try:
            with http.stream("POST", self.url + "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    retry = float(response.headers.get("retry-after", 0) or 0)
                    if response.status_code >= 500:
                        self.note(self.failures, f"{response.status_code}: {response.text[:200]}")
                    elif sha is not None and response.status_code != 429:
                        self.note(self.failures, f"good request got {response.status_code}: {response.text[:200]}")
                    return str(response.status_code), retry
                if body.get("stream"):
                    report = None
                    for line in response.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line[6:])
                        if "error" in event:
                            self.note(self.failures, f"stream error: {event['error']['message'][:200]}")
                            return "200 (error event)", 0
                        choice = event["choices"][0]
                        if ttft is None and choice["delta"].get("content"):
                            ttft = time.perf_counter() - start
                        report = event.get("avllm", report)
                else:
                    report = json.loads(response.read())["avllm"]
        except httpx.HTTPError as exc:
            self.note(self.failures, f"{type(exc).__name__}: {exc}")
            return "no answer", 0
        elapsed = time.perf_counter() - start
        with self.lock:
            self.latency.append(elapsed)
            if ttft is not None:
                self.ttft.append(ttft)
            if report is None or report.get("clip_sha256") != sha:
                self.wrong.append(f"sent {sha[:12]}, answer names {(report or {}).get('clip_sha256', '?')[:12]}")
        return "200", 0

    def note(self, where: list[str], text: str) -> None:
        with self.lock:
            where.append(text)


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "avllm.cli", "serve", "--port", str(port), "--model", args.model,
        "--concurrency", str(args.concurrency), "--max-queue", str(args.max_queue),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main() -> None:
    from avllm.config import default_model
    from avllm.serve.server import free_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2, help="the server's --concurrency")
    parser.add_argument("--max-queue", type=int, default=8, help="the server's --max-queue")
    parser.add_argument("--max-wait", type=float, default=2.0, help="longest wait after a 429 (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        clips = make_clips(Path(tmp), 4)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args, port)
    try:
        started = time.monotonic()
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() - started > 300:
                raise SystemExit(f"the server did not start:\n{server.stderr.read() if server.stderr else ''}")
            time.sleep(0.5)
        memory_loaded = rss_mb(server.pid)
        print(f"server up in {time.monotonic() - started:.1f} s ({args.model}); RSS {memory_loaded:.0f} MB")
        load = Load(url, clips, args.max_tokens, time.monotonic() + args.seconds, args.seed, args.max_wait)
        with httpx.Client(timeout=300) as http:  # one answer first: weights are memory-mapped, paged in on first use
            assert load.one(http, *load.body(random.Random(-1)))[0] == "200", load.failures
        load.statuses.clear()
        load.latency.clear()
        load.ttft.clear()
        memory_start = rss_mb(server.pid)
        print(f"after a first answer (weights paged in): RSS {memory_start:.0f} MB")
        begin = time.monotonic()
        threads = [threading.Thread(target=load.client, args=(args.seed * 1000 + i,)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.monotonic() - begin
        memory_end = rss_mb(server.pid)
        metrics = httpx.get(url + "/metrics", timeout=10).text
    finally:
        server.terminate()
        code = server.wait(timeout=60)
    total = sum(load.statuses.values())
    fivexx = sum(n for s, n in load.statuses.items() if s[:1] == "5")
    print(f"{args.clients} clients for {took:.0f} s, max_tokens {args.max_tokens}, server concurrency "
          f"{args.concurrency}, queue {args.max_queue}")  # fmt: skip
    print(f"requests: {total}; by status: {dict(sorted(load.statuses.items()))}")
    print(f"answers: {len(load.latency)}, {len(load.latency) / took:.2f} answers/s")
    print(f"time to first token (streamed): {percentiles(load.ttft)}")
    print(f"latency (all answers): {percentiles(load.latency)}")
    print(f"server memory (RSS): loaded {memory_loaded:.0f} MB, start (after one answer) {memory_start:.0f} MB, "
          f"end {memory_end:.0f} MB, growth from start {memory_end - memory_start:+.0f} MB")  # fmt: skip
    for line in metrics.splitlines():
        if line.startswith(("avllm_clips_total", "avllm_generated_tokens_total")):
            print(f"server metric: {line}")
    print(f"server exit code after SIGTERM: {code}")
    for text in (load.failures + load.wrong)[:10]:
        print(f"  problem: {text}")
    print("goals:")
    print(f"  no 5xx: {'yes' if not fivexx else f'NO ({fivexx})'}")
    print(f"  every answer about its own clip: {'yes' if not load.wrong else f'NO ({len(load.wrong)} wrong)'}")
    grew = memory_end - memory_start
    short = "" if total >= 1000 else " (fewer than 1,000 requests: run longer)"
    print(
        f"  memory growth under 300 MB after {total} requests: {'yes' if grew < 300 else 'NO'} ({grew:+.0f} MB){short}"
    )
    longest = max(load.latency, default=0.0)
    print(f"  429s rather than a pile-up: {load.statuses.get('429', 0)} refused, longest answer {longest:.1f} s")


if __name__ == "__main__":
    main()
