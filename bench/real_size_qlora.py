"""QLoRA training at real sizes: Whisper large-v3 + ViT-L-14-336 + Qwen2.5-7B-Instruct in nf4.

No model hub can be reached, so every network has its real architecture and random, seeded
weights, and the tokenizer is a small BPE stand-in with Qwen's ChatML specials and template:
token ids are synthetic, the 152,064-row embedding table is the real size. The rest is the
path `avllm train sft` takes with the qwen2.5-7b-qlora recipe: the LLM saved as a
checkpoint folder and loaded in nf4 by avllm.llm.load_llm, AVLLM, prepare_for_stage, the SFT
collator and AVTrainer. Prints the card, memory (the loaded model, peak while training) and speed.

    python bench/real_size_qlora.py [--batch 1] [--seq-len 2048] [--steps 8] [--out figures.json]
    python bench/real_size_qlora.py --tiny    # every size shrunk: an end-to-end check on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if importlib.util.find_spec("av") is None:
    # avllm.model imports avllm.media, which imports PyAV at module level. Nothing here decodes a
    # file, so where PyAV is missing (the GPU image) avllm.media is imported against an empty
    # stand-in, withdrawn at once so that other libraries (torchvision.io) still see PyAV absent.
    sys.modules["av"] = types.ModuleType("av")
    import avllm.media  # noqa: F401

    del sys.modules["av"]

import bitsandbytes
import numpy as np
import peft
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config, TrainerCallback
from whisper.model import AudioEncoder, ModelDimensions

from avllm.config import ModelConfig, TrainConfig, load_train_config
from avllm.data.dataset import Collator
from avllm.encoders.audio import WhisperAudioEncoder
from avllm.encoders.visual import CLIPVisualEncoder
from avllm.llm import DTYPES, load_llm
from avllm.media import SAMPLE_RATE, Clip, MediaFacts, sample_times
from avllm.model import AVLLM, EncodedClip
from avllm.prompt import IGNORE_INDEX, with_video
from avllm.train.common import AVTrainer, TrainableAVLLM, prepare_for_stage, stage_model_config, training_arguments

WARMUP = 2  # optimizer steps run before timing: CUDA kernels load, optimizer state is created
GOAL_GIB = 24.0
LARGE_V3 = ModelDimensions(
    n_mels=128,
    n_audio_ctx=1500,
    n_audio_state=1280,
    n_audio_head=20,
    n_audio_layer=32,
    n_vocab=51866,
    n_text_ctx=448,
    n_text_state=1280,
    n_text_head=20,
    n_text_layer=32,
)
TINY_WHISPER = dataclasses.replace(LARGE_V3, n_mels=80, n_audio_state=64, n_audio_head=2, n_audio_layer=2)
SYSTEM = "You are a helpful assistant."
QUESTION = "Describe what happens in the video and what can be heard."
ANSWER = "A dog runs across the grass while a man speaks and music plays in the background."
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def qwen_config(tiny: bool) -> Qwen2Config:
    """Qwen2.5-7B-Instruct's config.json, or a 2-layer model of the same family."""
    rope = {"rope_type": "default", "rope_theta": 1e6}
    if tiny:
        return Qwen2Config(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=4096,
            max_position_embeddings=4096,
            rope_parameters=rope,
        )
    return Qwen2Config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=32768,
        rope_parameters=rope,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )


def stand_in_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here on a few sentences, with Qwen's ChatML specials and template;
    load_llm reloads it from the folder as transformers' Qwen2Tokenizer, as it does the real one."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator([SYSTEM, QUESTION, ANSWER, "system user assistant t=1.5s"] * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    return tokenizer


def save_random_llm(config: Qwen2Config, tokenizer: PreTrainedTokenizerFast, folder: Path, device: str) -> None:
    """A bf16 checkpoint folder with random weights, so load_llm quantizes it to nf4 as it would the real one."""
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="4GB")  # shards: less host memory while writing 15 GB
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()


def random_encoders(config: ModelConfig, tiny: bool, device: str) -> tuple[WhisperAudioEncoder, CLIPVisualEncoder]:
    """Whisper (float32 weights, input in encoder_dtype) and CLIP, both random as AVLLM.from_config builds them."""
    dims = TINY_WHISPER if tiny else LARGE_V3
    with torch.device(device):
        state = AudioEncoder(
            dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer
        ).state_dict()
        audio = WhisperAudioEncoder(
            dims,
            state,
            f"Whisper {'tiny' if tiny else 'large-v3'} encoder, random weights",
            dtype=DTYPES[config.encoder_dtype],
        )
    visual = CLIPVisualEncoder.from_spec(config.visual_encoder, device, DTYPES[config.encoder_dtype])
    return audio, visual


def synthetic_clip(config: ModelConfig, seconds: float = 30.0) -> Clip:
    """Noise frames at the preset's sampled times and 30 s of noise audio (one Whisper window)."""
    rng = np.random.default_rng(0)
    times, _ = sample_times(seconds, config.media)
    frames = rng.integers(0, 256, (len(times), 360, 640, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)
    facts = MediaFacts(
        path="synthetic",
        container="none",
        duration=seconds,
        has_video=True,
        has_audio=True,
        audio_silent=False,
        video_codec=None,
        audio_codec=None,
        width=640,
        height=360,
        fps=None,
        audio_channels=1,
        audio_sample_rate=SAMPLE_RATE,
        frames=len(times),
        audio_seconds=seconds,
    )
    return Clip(frames, times, audio, facts)


def examples(model: AVLLM, enc: EncodedClip, seq_len: int, count: int) -> list[dict[str, Any]]:
    """Items shaped like InstructionDataset's, each exactly seq_len tokens: a question with the clip,
    then an answer filling the rest, so every text token after the media carries the loss (the most
    logits, hence memory, a sequence of this length can need)."""
    answer = " ".join([ANSWER] * math.ceil(seq_len / len(ANSWER.split())))  # at least a token per word
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": with_video(QUESTION)},
        {"role": "assistant", "content": answer},
    ]
    tokens = model.tokenize(messages, enc, add_generation_prompt=False)
    assert len(tokens.input_ids) >= seq_len, "the answer should fill the sequence"
    item = {"input_ids": tokens.input_ids[:seq_len], "labels": tokens.labels[:seq_len], "media": enc}
    return [item] * count


class StepClock(TrainerCallback):
    """Wall time at the end of each optimizer step, once the device is done; skips checkpoint writes."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())
        control.should_save = False  # the bench measures training steps, not saving
        return control


def gib(n: int) -> float:
    return round(n / 2**30, 2)


def build(
    cfg: TrainConfig, config: ModelConfig, tiny: bool, device: str, setup: dict[str, float]
) -> tuple[AVLLM, dict[str, Any]]:
    """The model `avllm train sft` would build for this recipe, with random weights; its memory in GiB."""
    cuda = device == "cuda"
    start = time.perf_counter()
    audio, visual = random_encoders(config, tiny, device)
    encoder_bytes = torch.cuda.memory_allocated() if cuda else 0
    setup["encoders"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="avllm-qlora-llm-") as folder:
        start = time.perf_counter()
        save_random_llm(qwen_config(tiny), stand_in_tokenizer(), Path(folder), device)
        setup["random_llm_saved"] = time.perf_counter() - start
        start = time.perf_counter()
        llm = load_llm(folder, config.quantization, config.dtype, device)
        setup["llm_loaded"] = time.perf_counter() - start
    llm_bytes = torch.cuda.memory_allocated() - encoder_bytes if cuda else 0
    model = AVLLM(config, audio, visual, llm)
    prepare_for_stage(model, cfg)  # as build_model does, which loads the weights by name instead
    memory = (
        {
            "encoders_gib": gib(encoder_bytes),
            "llm_loaded_gib": gib(llm_bytes),
            "model_gib": gib(torch.cuda.memory_allocated()),
        }
        if cuda
        else {}
    )
    return model, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (2048; 256 with --tiny)")
    parser.add_argument("--steps", type=int, default=8, help=f"timed optimizer steps, after {WARMUP} warm-up steps")
    parser.add_argument("--config", default="qwen2.5-7b-qlora", help="recipe name or YAML file")
    parser.add_argument("--tiny", action="store_true", help="tiny Whisper, ViT-B-32, 2-layer Qwen2, 4 frames")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    seq_len = args.seq_len or (256 if args.tiny else 2048)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    torch.manual_seed(0)
    run_dir = tempfile.TemporaryDirectory(prefix="avllm-qlora-run-")
    cfg = load_train_config(
        args.config,
        {
            "batch_size": args.batch,
            "max_steps": WARMUP + args.steps,
            "max_length": seq_len,
            "logging_steps": 1,
            "output_dir": run_dir.name,
            "dataloader_workers": 0,
        },
    )
    train_args = training_arguments(cfg)  # first: a transformers without the pinned API fails in seconds
    config = stage_model_config(cfg)  # the recipe's quantization and adapter, as build_model uses
    if args.tiny:
        config = dataclasses.replace(
            config,
            visual_encoder="ViT-B-32",
            media=dataclasses.replace(config.media, num_frames=4),
            encoder_dtype=config.encoder_dtype if cuda else "float32",
        )

    setup: dict[str, float] = {}
    model, memory = build(cfg, config, args.tiny, device, setup)
    start = time.perf_counter()
    enc = model.encode(synthetic_clip(config))
    model.fit_projector_inputs([enc])  # as fit_fresh_projectors does before a stage from a preset
    setup["clip_encoded"] = time.perf_counter() - start
    items = examples(model, enc, seq_len, (WARMUP + args.steps) * args.batch)
    clock = StepClock()
    trainer = AVTrainer(
        model=TrainableAVLLM(model),
        args=train_args,
        train_dataset=items,
        callbacks=[clock],
        data_collator=Collator(model.tokenizer.pad_token_id),
        projector_lr=cfg.projector_lr,
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    run_dir.cleanup()

    seconds = (clock.ends[-1] - clock.ends[WARMUP - 1]) / args.steps
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "versions": {m.__name__: m.__version__ for m in (torch, transformers, peft, bitsandbytes)},
        "models": [model.llm_description, model.audio_encoder.description, model.visual_encoder.description],
        "tiny": args.tiny,
        "batch": args.batch,
        "seq_len": seq_len,
        "timed_steps": args.steps,
        "warmup_steps": WARMUP,
        "media_tokens_per_sequence": items[0]["input_ids"].count(model.video_token_id),
        "labelled_tokens_per_sequence": sum(label != IGNORE_INDEX for label in items[0]["labels"][1:]),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "setup_seconds": {k: round(v, 1) for k, v in setup.items()},
        **memory,
        "peak_allocated_gib": gib(torch.cuda.max_memory_allocated()) if cuda else None,
        "peak_reserved_gib": gib(torch.cuda.max_memory_reserved()) if cuda else None,
        "seconds_per_step": round(seconds, 3),
        "samples_per_second": round(args.batch / seconds, 3),
        "tokens_per_second": round(args.batch * seq_len / seconds, 1),
        "losses": [round(x, 4) for x in losses],
        "losses_finite": all(math.isfinite(x) for x in losses),
        "note": "random weights of the real architectures; synthetic token ids (a stand-in BPE tokenizer)",
    }
    if cuda and not args.tiny and args.batch == 1 and seq_len == 2048:
        # torch's counters leave out the CUDA context (~0.5 GiB), which a 24 GB card also holds
        figures["goal_peak_reserved_under_24gib"] = figures["peak_reserved_gib"] < GOAL_GIB
    for key, value in figures.items():
        print(f"{key:>30}: {value}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
