"""Answers decoded by llama.cpp (llama-cpp-python): the fast engine for a GGUF LLM on the CPU.

A decoding step of a small LLM on a CPU is bound by reading its weights: torch's kernels read them
at about half llama.cpp's speed for a batch of one token, and the Python between a step's few
hundred operations costs as much again (docs/performance.md). Here the LLM, its LoRA adapter added
in, is written once as a GGUF file beside the one it came from (same metadata and tokenizer); the
prompt's embeddings, media included, go to llama.cpp as one batch, and each new token after them.
In float32 its next-token scores are torch's to 1e-4, so greedy answers differ only where two tokens
tie that closely; in bfloat16 the two round differently (llama.cpp keeps activations in float32).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ENGINES, cache_dir
from .errors import ConfigError, ModelLoadError
from .llm import resolve_llm_source

log = logging.getLogger(__name__)

GGML_TYPE_BF16 = 30  # ggml.h; llama-cpp-python names only its F32 and F16 types
EXPORT_FORMAT = 1  # bump when export_gguf writes something different: older cached files are not reused
CONTEXT_STEP = 256  # an answer's context holds its prompt and longest answer, rounded up to this


def installed() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError, RuntimeError):  # OSError/RuntimeError: a package without its library
        return False
    return True


def engine_source(engine: str, config: Any, llm_type: str, device: str, merged: bool) -> Path | None:
    """The GGUF file the LLM came from where answers go through llama.cpp, None where torch answers:
    "auto" picks llama.cpp where it can run, "llama.cpp" fails naming what stops it. `llm_type`: the
    loaded LLM's transformers model type (llama, qwen2, ...)."""
    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "torch":
        return None
    source = resolve_llm_source(config.llm)
    is_gguf = isinstance(source, Path) and source.suffix == ".gguf"
    blockers = [
        reason
        for reason, blocks in (
            ("llama-cpp-python is not installed (pip install 'avllm[llama-cpp]')", not installed()),
            (f"the model is on {device} and llama.cpp answers on the CPU", device != "cpu"),
            (f"the LLM is quantized ({config.quantization})", config.quantization is not None),
            ("the LoRA adapter is kept apart (llama.cpp answers with it added in)", not merged),
            (f"the LLM {config.llm!r} is not a GGUF file", not is_gguf),
            (f"the LLM is a {llm_type} model and avllm hands only llama models to llama.cpp", llm_type != "llama"),
        )
        if blocks
    ]
    if blockers and engine == "llama.cpp":
        raise ConfigError(f"engine llama.cpp: {'; '.join(blockers)}: use --engine torch")
    return None if blockers else Path(source)


def permute_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The rows of a q or k projection in llama.cpp's rotary order (pairs side by side) from
    Hugging Face's (halves), as llama.cpp's converter writes them."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def export_gguf(llm: Any, source: Path, target: Path) -> None:
    """Write `llm`'s weights (float32 or bfloat16; norms in float32) as a GGUF file with `source`'s
    metadata and tokenizer. `source` is the llama GGUF file `llm` was loaded from: its keys describe it."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        raise ModelLoadError(
            f"{source}: the llama.cpp engine writes llama GGUFs, this one is {arch!r}: use --engine torch"
        )
    bf16 = llm.dtype == torch.bfloat16
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.ALL_F32)
    config = llm.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    wanted = {t.name for t in reader.tensors}
    for name, tensor in llm.state_dict().items():
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname not in wanted:  # lm_head.weight where the output shares the embedding table
            continue
        wanted.discard(gname)
        if gname.endswith("attn_q.weight"):
            tensor = permute_rope(tensor, config.num_attention_heads)
        elif gname.endswith("attn_k.weight"):
            tensor = permute_rope(tensor, config.num_key_value_heads)
        if bf16 and tensor.dim() > 1:
            writer.add_tensor(
                gname,
                tensor.contiguous().view(torch.int16).numpy().view(np.uint16),
                raw_dtype=gguf.GGMLQuantizationType.BF16,
            )
        else:
            writer.add_tensor(gname, tensor.float().numpy())
    if wanted:
        raise ModelLoadError(f"{source}: the LLM has no weights for {sorted(wanted)[:3]}: use --engine torch")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(target)


def exported_gguf(llm: Any, source: Path, adapter: Path | None) -> Path:
    """The GGUF file of `llm` (`source` with the adapter file `adapter` added in), written once and
    then found in the cache by the adapter's bytes, the source and the dtype."""
    digest = hashlib.sha256(f"{EXPORT_FORMAT} {source.name} {source.stat().st_size} {llm.dtype}".encode())
    if adapter is not None:
        digest.update(adapter.read_bytes())
    kind = "bf16" if llm.dtype == torch.bfloat16 else "f32"
    target = cache_dir() / "llama.cpp" / f"{source.stem}-{kind}-{digest.hexdigest()[:12]}.gguf"
    if not target.is_file():
        log.info("writing the LLM for llama.cpp once: %s", target)
        target.parent.mkdir(parents=True, exist_ok=True)
        export_gguf(llm, source, target)
    return target


class LlamaCppSteps:
    """One answer's forward passes in one llama.cpp context: the prompt, then a token at a time."""

    def __init__(self, lib: Any, ctx: Any, vocab: int, width: int) -> None:
        self.lib, self.ctx, self.vocab, self.width = lib, ctx, vocab, width
        self.position = 0

    def _decode(self, batch: Any, n: int) -> torch.Tensor:
        for i in range(n):
            batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = self.position + i, 1, 0, 0
        batch.n_tokens, batch.logits[n - 1] = n, 1
        status = self.lib.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama.cpp could not decode {n} token(s) at position {self.position} (status {status})")
        self.position += n
        logits = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, -1), shape=(1, self.vocab))
        return torch.from_numpy(logits.copy())

    def prompt(self, embeds: torch.Tensor) -> torch.Tensor:
        """The next-token logits [1, V] after a prompt of input embeddings [1, L, D]."""
        rows = embeds[0].detach().to("cpu", torch.float32).contiguous().numpy()
        batch = self.lib.llama_batch_init(len(rows), self.width, 1)
        try:
            ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
            return self._decode(batch, len(rows))
        finally:
            self.lib.llama_batch_free(batch)

    def next(self, token: int) -> torch.Tensor:
        """The next-token logits [1, V] after `token`."""
        batch = self.lib.llama_batch_init(1, 0, 1)
        try:
            batch.token[0] = token
            return self._decode(batch, 1)
        finally:
            self.lib.llama_batch_free(batch)


class LlamaCppDecoder:
    """A GGUF LLM loaded by llama.cpp. Each answer gets a context of its own, sized to its prompt and
    longest answer (the server answers several at once), with its cache in the LLM's dtype, as torch's."""

    def __init__(self, path: Path, dtype: torch.dtype) -> None:
        import llama_cpp

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its loading chatter goes to stderr
        self.lib = llama_cpp
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = False  # no weight repacking: llama.cpp's AMX repacking crashed on an AMX host
        self.path = path
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load {path}: delete it to have it written again")
        weakref.finalize(self, llama_cpp.llama_model_free, self.model)
        self.vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.width = llama_cpp.llama_model_n_embd(self.model)
        self.cache_type = GGML_TYPE_BF16 if dtype == torch.bfloat16 else llama_cpp.GGML_TYPE_F32

    @contextmanager
    def steps(self, positions: int) -> Iterator[LlamaCppSteps]:
        """A context for one answer of at most `positions` prompt and answer tokens."""
        params = self.lib.llama_context_default_params()
        params.n_ctx = params.n_batch = -(-positions // CONTEXT_STEP) * CONTEXT_STEP
        params.n_threads = params.n_threads_batch = torch.get_num_threads()  # as set when the answer starts
        params.type_k = params.type_v = self.cache_type
        # its flash attention computes in float16: scores off by 0.05 in float32, against 6e-5 without it
        params.flash_attn_type = self.lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = self.lib.llama_init_from_model(self.model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not make a context of {params.n_ctx} positions")
        try:
            yield LlamaCppSteps(self.lib, ctx, self.vocab, self.width)
        finally:
            self.lib.llama_free(ctx)
