"""Time to first token of the first and the second question about one clip, through the server.

Starts the server (UI + API) on a free port with the starter model, loaded as `avllm serve` loads
it, then asks two questions
about one clip with the openai client, streaming, as a user would: the second is a follow-up
in the same conversation. The first question pays for decoding and encoding the clip; the
second reuses the stored features. Prints what the client saw (time to the first answer
text, and the answer's tokens per second after it) and the server's own breakdown.

    python bench/serve_ttft.py [--clip FILE] [--model starter] [--max-tokens 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from avllm.config import default_model

if TYPE_CHECKING:
    from openai import OpenAI

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = REPO.parent / "shared" / "clips" / "videollama-dog_barking.mp4"


def ask(client: OpenAI, model: str, messages: list[dict], max_tokens: int) -> tuple[float, float, str, dict]:
    """Seconds to the first text, tokens per second after it, the answer, the server's report."""
    start = time.perf_counter()
    ttft, pieces, last, tokens = None, [], None, 0
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta and ttft is None:
            ttft = time.perf_counter() - start
        pieces.append(delta or "")
        tokens = chunk.usage.completion_tokens if chunk.usage else tokens
        last = chunk if chunk.choices else last
    after = (tokens - 1) / (time.perf_counter() - start - ttft) if ttft is not None and tokens > 1 else float("nan")
    return ttft if ttft is not None else float("nan"), after, "".join(pieces).strip(), last.to_dict().get("avllm", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", default=str(DEFAULT_CLIP))
    parser.add_argument("--model", default=default_model())
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds; each round uses a fresh copy of the clip (a new upload)"
    )
    parser.add_argument("--engine", default="auto", help="what generates answers: auto, torch or llama.cpp")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import openai
    import torch
    import transformers

    from avllm.serve.server import BackgroundServer, ServeSettings, load_outside_openmp

    transformers.logging.set_verbosity_error()
    clip = Path(args.clip)
    data = clip.read_bytes()
    start = time.perf_counter()
    model = load_outside_openmp(args.model, args.engine)
    print(
        f"model {args.model} loaded in {time.perf_counter() - start:.1f} s; torch threads {torch.get_num_threads()}; "
        f"device {next(model.llm.parameters()).device}; answers by {'llama.cpp' if model.engine else 'torch'}"
    )
    settings = ServeSettings(port=0, model=args.model, examples_dir=None, engine=args.engine)
    rows = []
    with BackgroundServer(settings, model=model) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=300)
        served = client.models.list().data[0].id  # the checkpoint's name when --model is a folder
        for r in range(args.repeat):
            # A byte appended to an mp4 changes its hash but not its content: a new upload each round.
            payload = base64.b64encode(data + bytes([r])).decode()
            video = {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{payload}"}}
            first_q = "What is happening in this video?"
            first = [{"role": "user", "content": [video, {"type": "text", "text": first_q}]}]
            t1, rate1, a1, f1 = ask(client, served, first, args.max_tokens)
            second = first + [{"role": "assistant", "content": a1}, {"role": "user", "content": "What can be heard?"}]
            t2, rate2, a2, f2 = ask(client, served, second, args.max_tokens)
            rows.append((t1, t2, f1, f2, rate1, rate2))
            print(
                f"round {r + 1}: first {t1:.3f} s (reused={f1.get('clip_reused')}), "
                f"second {t2:.3f} s (reused={f2.get('clip_reused')}); {rate1:.1f} and {rate2:.1f} tokens/s after"
            )
    t1s, t2s = [r[0] for r in rows], [r[1] for r in rows]
    f1, f2 = rows[-1][2], rows[-1][3]
    print()
    print(
        f"clip: {clip.name}, {f1.get('duration', 0):.1f} s, {f1.get('frames')} frames, "
        f"audio {f1.get('audio_seconds', 0):.1f} s; "
        f"max_tokens {args.max_tokens}"
    )
    print(f"time to first token, client side (median of {len(rows)}):")
    print(f"  first question  (decode + encode + prefill): {statistics.median(t1s):.3f} s")
    print(f"  second question (features reused, follow-up): {statistics.median(t2s):.3f} s")
    rates = [r[k] for r in rows for k in (4, 5)]
    print(f"tokens/s after the first token (median of {len(rates)}): {statistics.median(rates):.1f}")
    print("server timings of the last round (s):")
    for name, facts in (("first", f1), ("second", f2)):
        print(f"  {name:6} " + ", ".join(f"{k} {v:.3f}" for k, v in facts.get("timings", {}).items()))
    print(f"last answers: {a1!r} / {a2!r}")


if __name__ == "__main__":
    sys.exit(main())
