"""Token-by-token answers generated in the caller's thread.

`transformers`' `generate` streams only through a callback, so streaming it means running it in a
worker thread. On the CPU that thread's OpenMP team comes on top of the main thread's: libgomp then
manages more threads than there are cores and stops spin-waiting between parallel regions, and each
of a step's few hundred small operations pays a wake-up (a parallel multiply 3 to 4 times slower, the whole
answer 1.3 to 1.5x slower, docs/performance.md). Here the loop is a generator: each step runs
where the caller iterates. It keeps `generate`'s answers: the model's generation config and its
logits processors (temperature, top-k, suppressed tokens), its end-of-sequence ids, float32 scores.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from transformers import DynamicCache


def generate_ids(
    llm: Any,
    embeds: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    timings: dict[str, float] | None = None,
) -> Iterator[int]:
    """The new token ids for a prompt of input embeddings [1, L, D], end of sequence included.

    `timings` receives `prefill`: seconds from the call to the prompt's pass done.
    """
    started = time.perf_counter()
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    config, _ = llm._prepare_generation_config(None, **sampling)
    processors = llm._get_logits_processor(config, input_ids_seq_length=0, device=embeds.device)
    stop = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    generated = torch.zeros(1, 0, dtype=torch.long, device=embeds.device)
    cache = DynamicCache(config=llm.config)
    with torch.inference_mode():  # never across a yield: the next step may run in another thread (Gradio)
        out = llm(inputs_embeds=embeds, cache=cache, use_cache=True, logits_to_keep=1)
    if timings is not None:
        timings["prefill"] = time.perf_counter() - started
    for _ in range(max_new_tokens):
        with torch.inference_mode():
            scores = processors(generated, out.logits[:, -1].float())
            token = torch.multinomial(scores.softmax(-1), 1) if config.do_sample else scores.argmax(-1, keepdim=True)
            generated = torch.cat([generated, token], 1)
        yield int(token)
        if int(token) in stop:
            return
        with torch.inference_mode():
            out = llm(input_ids=token, cache=cache, use_cache=True)


def stream_text(tokenizer: Any, ids: Iterator[int]) -> Iterator[str]:
    """The text of `ids` piece by piece, special tokens left out. A piece is held back while it ends
    in part of a character (byte-level tokens split UTF-8)."""
    tokens: list[int] = []
    text = sent = ""
    for token in ids:
        tokens.append(token)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > len(sent):
            yield text[len(sent) :]
            sent = text
    if len(text) > len(sent):  # an answer cut inside a character
        yield text[len(sent) :]
