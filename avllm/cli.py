"""`avllm`: the command line. Heavy libraries are imported inside each command, so `--help`
and `avllm info` start instantly; a user's error prints one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable

from .errors import AVLLMError

PROCESS_START = time.perf_counter()
DEFAULT_MODEL = "starter"


def quiet_libraries() -> None:
    """Keep library chatter (and the hub) out of the answer; warnings that matter are ours."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def cmd_chat(args: argparse.Namespace) -> int:
    quiet_libraries()
    from .inference import ChatReport, ChatSettings, answer_stream, encode_file
    from .media import probe
    from .model import AVLLM

    probe(args.media)  # a bad file fails in milliseconds, before the model loads
    start = time.perf_counter()
    model = AVLLM.load(args.model)
    load = time.perf_counter() - start
    report = ChatReport()
    enc = encode_file(model, args.media, args.frames)
    settings = ChatSettings(frames=args.frames, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    if not args.json:
        for line in report_header(model, enc):
            print(line, file=sys.stderr)
    for piece in answer_stream(model, enc, args.question, settings=settings, report=report):
        if not args.json:
            print(piece, end="", flush=True)
    report.timings["load"] = load
    report.timings["total"] = time.perf_counter() - PROCESS_START
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print()
        print(f"[{report.timings['first_token']:.2f} s to first token, {report.timings['total']:.1f} s in all]", file=sys.stderr)
    return 0


def report_header(model, enc) -> list[str]:  # noqa: ANN001 - AVLLM and EncodedClip, imported lazily
    """What the answer will be built from, printed before it streams."""
    facts = enc.facts
    sound = f"{facts.audio_seconds:.1f} s of audio" if enc.audio is not None else "NO audio"
    lines = [f"[{model.config.name}: {len(enc.frame_times) if enc.visual is not None else 0} frames, {sound}, {enc.duration:.1f} s clip]"]
    from .inference import model_warnings

    lines += [f"[warning: {w}]" for w in model_warnings(model) + facts.warnings]
    lines += [f"[truncated: {t}]" for t in facts.truncated]
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    from .media import probe

    facts = probe(args.media)
    if args.json:
        print(json.dumps(facts.to_dict(), indent=2))
    else:
        for key, value in facts.to_dict().items():
            print(f"{key:18} {value}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Build the cached offline weights (Whisper from CTranslate2, the LLM from GGUF, the random CLIP)."""
    quiet_libraries()
    from .model import AVLLM

    start = time.perf_counter()
    model = AVLLM.load(args.model)
    print(f"audio:  {model.audio_encoder.description}")
    print(f"visual: {model.visual_encoder.description}")
    print(f"llm:    {model.llm_description}")
    print(f"ready in {time.perf_counter() - start:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avllm", description="Audio-visual chat assistant")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="ask a question about a video (or audio) file; the answer streams")
    chat.add_argument("media", help="video or audio file")
    chat.add_argument("question")
    chat.add_argument("--model", default=DEFAULT_MODEL, help="preset name, YAML file or checkpoint folder")
    chat.add_argument("--frames", type=positive_int, default=None, help="frames to sample (default: the model's setting)")
    chat.add_argument("--max-new-tokens", type=positive_int, default=128)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    chat.add_argument("--json", action="store_true", help="print one JSON object: answer, what was used, timings")
    chat.set_defaults(func=cmd_chat)

    info = sub.add_parser("info", help="print a media file's facts")
    info.add_argument("media")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    convert = sub.add_parser("convert", help="build the cached offline weights of a preset")
    convert.add_argument("--model", default=DEFAULT_MODEL)
    convert.set_defaults(func=cmd_convert)
    return parser


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive whole number")
    return value


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="avllm: %(message)s")
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except AVLLMError as exc:
        print(f"avllm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
