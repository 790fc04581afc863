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
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch
from transformers import DynamicCache


class Steps(Protocol):
    """An answer's forward passes: the prompt, then one token at a time; each gives logits [1, V]."""

    def prompt(self, embeds: torch.Tensor) -> torch.Tensor: ...

    def next(self, token: int) -> torch.Tensor: ...


class Engine(Protocol):
    """What answers outside torch (llamacpp.LlamaCppDecoder): `Steps` for an answer of at most
    `positions` prompt and answer tokens."""

    def steps(self, positions: int) -> AbstractContextManager[Steps]: ...


class TorchSteps:
    """The LLM's own forward passes, with transformers' dynamic cache."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.cache = DynamicCache(config=llm.config)
        self.device = llm.get_input_embeddings().weight.device

    def prompt(self, embeds: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # never across a yield: the next step may run in another thread (Gradio)
            return self.llm(inputs_embeds=embeds, cache=self.cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    def next(self, token: int) -> torch.Tensor:
        ids = torch.tensor([[token]], device=self.device)
        with torch.inference_mode():
            return self.llm(input_ids=ids, cache=self.cache, use_cache=True).logits[:, -1]


def generate_ids(
    llm: Any,
    embeds: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    timings: dict[str, float] | None = None,
    engine: Engine | None = None,
) -> Iterator[int]:
    """The new token ids for a prompt of input embeddings [1, L, D], end of sequence included:
    `llm`'s forward passes, or `engine`'s where one is given (`llm` still sets how tokens are chosen).

    `timings` receives `prefill`: seconds from the call to the prompt's pass done.
    """
    started = time.perf_counter()
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    config, _ = llm._prepare_generation_config(None, **sampling)
    processors = llm._get_logits_processor(config, input_ids_seq_length=0, device=embeds.device)
    stop = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    generated = torch.zeros(1, 0, dtype=torch.long, device=embeds.device)
    positions = embeds.shape[1] + max_new_tokens
    with engine.steps(positions) if engine is not None else nullcontext(TorchSteps(llm)) as steps:
        logits = steps.prompt(embeds)
        if timings is not None:
            timings["prefill"] = time.perf_counter() - started
        for _ in range(max_new_tokens):
            with torch.inference_mode():
                scores = processors(generated, logits.to(embeds.device, torch.float32))
                token = (
                    torch.multinomial(scores.softmax(-1), 1) if config.do_sample else scores.argmax(-1, keepdim=True)
                )
                generated = torch.cat([generated, token], 1)
            yield int(token)
            if int(token) in stop:
                return
            logits = steps.next(int(token))


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
