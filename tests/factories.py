"""Tiny random models built inside the tests: no downloads, a few seconds at most."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from avllm.config import ModelConfig, from_dict

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def tiny_whisper_checkpoint(folder: Path, n_audio_state: int = 32) -> Path:
    """An openai-whisper .pt checkpoint with tiny dimensions and random weights."""
    import whisper

    dims = whisper.model.ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=n_audio_state,
        n_audio_head=2,
        n_audio_layer=1,
        n_vocab=51864,
        n_text_ctx=8,
        n_text_state=n_audio_state,
        n_text_head=2,
        n_text_layer=1,
    )
    torch.manual_seed(0)
    model = whisper.model.Whisper(dims)
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.02)  # whisper leaves it uninitialised
    path = Path(folder) / "tiny-whisper.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


def tiny_clip_config(folder: Path, name: str = "tiny-clip") -> Path:
    """An open_clip model JSON (the file's stem is the architecture name)."""
    path = Path(folder) / f"{name}.json"
    path.write_text(json.dumps(TINY_CLIP))
    return path


CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_llm_folder(folder: Path, hidden: int = 32) -> Path:
    """A 2-layer random Llama and a byte-level BPE tokenizer trained here, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["What is in the video? A red square moves left. A dog barks. Someone says hello."] * 4
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        bos_token="<|im_start|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
        initializer_range=0.3,
    )  # logits wide enough to learn
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = Path(folder) / "tiny-llm"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_model_fields(folder: Path, **fields: Any) -> dict[str, Any]:
    """A model preset as YAML holds it, on tiny parts written into `folder`; `fields` add or replace settings."""
    return {
        "name": "tiny",
        "audio_encoder": str(tiny_whisper_checkpoint(folder)),
        "visual_encoder": str(tiny_clip_config(folder)),
        "llm": str(tiny_llm_folder(folder)),
        **fields,
    }


def tiny_model_config(folder: Path, **fields: Any) -> ModelConfig:
    """The tiny preset read the way `avllm` reads a YAML one (nested settings as dicts)."""
    return from_dict(ModelConfig, tiny_model_fields(folder, **fields))


def tiny_preset_file(folder: Path, **fields: Any) -> Path:
    """The tiny preset written as `folder`/tiny.yaml, for tests that pass `--model PATH`."""
    path = Path(folder) / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_model_fields(folder, **fields)))
    return path


def greedy_generate(model: Any, messages: list[dict], enc: Any, max_new_tokens: int) -> torch.Tensor:
    """The new token ids transformers' own `generate` gives, greedy: what avllm's streamed answers must equal."""
    ids = torch.tensor([model.tokenize(messages, enc, True).input_ids])
    with torch.inference_mode():
        return model.llm.generate(
            inputs_embeds=model.embed(ids, [enc]),
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.tokenizer.pad_token_id,
        )[0]
