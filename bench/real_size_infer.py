"""Answering at real sizes: the qwen2.5-7b preset's time to first token on a 30 s 720p clip with
sound, and its decode speed, with Whisper large-v3 + ViT-L-14-336 + Qwen2.5-7B-Instruct as the
preset loads them (nf4 LLM, float16 encoders on a GPU).

No model hub can be reached, so the networks have their real architectures and random, seeded
weights, and the tokenizer is bench/real_size_qlora.py's stand-in: token ids are synthetic, every
shape is real. The clip is written with PyAV (1280x720 H.264 + AAC) and answered through the path
`avllm chat` takes (decode, encode, prompt, streamed generation); end of sequence is switched off so
every answer has --new-tokens tokens. Timings are medians of --runs answers after one warm-up answer.

    python bench/real_size_infer.py [--new-tokens 128] [--runs 3] [--out figures.json]
    python bench/real_size_infer.py --tiny    # every size shrunk: an end-to-end check on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from real_size_qlora import gib, qwen_config, random_encoders, save_random_llm, stand_in_tokenizer

from avllm.config import ModelConfig, load_model_config
from avllm.inference import ChatReport, ChatSettings, answer_stream, decode_and_encode
from avllm.llm import load_llm
from avllm.media import SAMPLE_RATE
from avllm.model import AVLLM
from avllm.prompt import with_video

GOALS = {"first_token_s": 0.5, "decode_tokens_per_s": 100.0}  # on one H100, batch 1 (issue 36)
QUESTION = "What happens in this clip?"
TIMINGS = ("decode", "encode_audio", "encode_visual", "prefill", "first_token")


def write_clip(path: Path, seconds: float, width: int, height: int, fps: int = 8) -> None:
    """A moving colour gradient with a tone under noise, as H.264 + AAC mp4 (PyAV)."""
    import av

    rate = SAMPLE_RATE
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "23"}
        audio = out.add_stream("aac", rate=rate, layout="mono")
        for i in range(int(seconds * fps)):
            shade = (ramp + 255 * i / (seconds * fps)) % 256 * np.array([1.0, 0.5, 0.25], np.float32)
            img = np.broadcast_to(shade, (height, width, 3)).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        t = np.arange(int(seconds * rate)) / rate
        sound = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
        for start in range(0, len(sound), 1024):
            frame = av.AudioFrame.from_ndarray(sound[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))


def build(config: ModelConfig, tiny: bool, device: str, setup: dict[str, float]) -> AVLLM:
    """The preset's model with random weights, its LLM loaded by load_llm as `avllm chat` loads it."""
    start = time.perf_counter()
    audio, visual = random_encoders(config, tiny, device)
    setup["encoders"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="avllm-infer-llm-") as folder:
        start = time.perf_counter()
        save_random_llm(qwen_config(tiny), stand_in_tokenizer(), Path(folder), device)
        setup["random_llm_saved"] = time.perf_counter() - start
        start = time.perf_counter()
        llm = load_llm(folder, config.quantization, config.dtype, device)
        setup["llm_loaded"] = time.perf_counter() - start
    model = AVLLM(config, audio, visual, llm).eval()
    model.base_llm.generation_config.eos_token_id = None  # every answer has max_new_tokens tokens
    return model


def answer(model: AVLLM, clip: Path, new_tokens: int) -> ChatReport:
    report = ChatReport()
    enc, _ = decode_and_encode(model, clip, model.config.media)
    for _ in answer_stream(model, enc, QUESTION, settings=ChatSettings(new_tokens), report=report):
        pass
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--config", default="qwen2.5-7b", help="model preset name or YAML file")
    parser.add_argument("--tiny", action="store_true", help="tiny Whisper, ViT-B-32, 2-layer Qwen2, a 4 s clip")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    config = load_model_config(args.config)
    seconds, width, height = (4.0, 160, 90) if args.tiny else (30.0, 1280, 720)
    if args.tiny:
        config = dataclasses.replace(
            config,
            visual_encoder="ViT-B-32",
            media=dataclasses.replace(config.media, num_frames=4),
            encoder_dtype=config.encoder_dtype if device == "cuda" else "float32",
        )

    setup: dict[str, float] = {}
    model = build(config, args.tiny, device, setup)
    with tempfile.TemporaryDirectory(prefix="avllm-infer-clip-") as folder:
        clip = Path(folder) / "clip.mp4"
        start = time.perf_counter()
        write_clip(clip, seconds, width, height)
        setup["clip_written"] = time.perf_counter() - start
        answer(model, clip, 4)  # warm-up: CUDA kernels load, caches fill
        enc, _ = decode_and_encode(model, clip, model.config.media)
        prompt_tokens = len(model.tokenize([{"role": "user", "content": with_video(QUESTION)}], enc, True).input_ids)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        reports = [answer(model, clip, args.new_tokens) for _ in range(args.runs)]

    def median(key: str) -> float:
        return statistics.median(r.timings[key] for r in reports)

    def decode_rate(r: ChatReport) -> float:
        # answer_stream's first_token counts from the decode; generate from the stream's start
        to_first = r.timings["first_token"] - sum(r.timings[k] for k in ("decode", "encode_audio", "encode_visual"))
        return (r.tokens["generated"] - 1) / (r.timings["generate"] - to_first)

    first = reports[0]
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "versions": {m.__name__: m.__version__ for m in (torch, transformers)},
        "models": [model.llm_description, model.audio_encoder.description, model.visual_encoder.description],
        "tiny": args.tiny,
        "clip": f"{seconds:.0f} s {width}x{height} H.264 + AAC, {first.frames} frames sampled",
        "prompt_tokens": prompt_tokens,
        "new_tokens": first.tokens["generated"],
        "runs": args.runs,
        "setup_seconds": {k: round(v, 1) for k, v in setup.items()},
        **{f"{k}_s": round(median(k), 3) for k in TIMINGS},
        "decode_tokens_per_s": round(statistics.median(decode_rate(r) for r in reports), 1),
        "peak_allocated_gib": gib(torch.cuda.max_memory_allocated()) if device == "cuda" else None,
        "note": "random weights of the real architectures; synthetic token ids (a stand-in BPE tokenizer)",
    }
    if device == "cuda" and not args.tiny:
        figures["goals_met"] = {k: figures[k] <= v if k.endswith("_s") else figures[k] >= v for k, v in GOALS.items()}
    for key, value in figures.items():
        print(f"{key:>22}: {value}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
