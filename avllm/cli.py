"""`avllm`: the command line. Heavy libraries are imported inside each command, so `--help`
and `avllm info` start instantly; a user's error prints one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable

from .config import ENGINES, default_model
from .errors import AVLLMError, ConfigError
from .serve.settings import ServeSettings, env_api_keys

SERVE_FIELDS = {f.name for f in dataclasses.fields(ServeSettings)}

PROCESS_START = time.perf_counter()
DEFAULT_MODEL = default_model()  # the trained starter shipped in the package, else the starter preset


def quiet_libraries() -> None:
    """Keep library chatter (and the hub) out of the answer; warnings that matter are ours."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "Failed to load CPU gemm_4bit_forward": harmless
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def default_threads() -> int:
    """The cores this process may use that the last minute's load leaves idle, at least 1. torch's
    OpenMP threads spin against any other busy thread on their cores: on a 2-core host running
    another job, 2 threads generate several times slower than 1 (docs/performance.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    idle = cores - os.getloadavg()[0] if hasattr(os, "getloadavg") else cores
    return max(1, min(cores, round(idle)))


def use_threads(requested: int | None) -> int:
    """Set torch's CPU threads: `requested`, else OMP_NUM_THREADS when set, else `default_threads()`."""
    import torch

    env = os.environ.get("OMP_NUM_THREADS", "")
    threads = requested or (int(env) if env.isdigit() and int(env) > 0 else default_threads())
    torch.set_num_threads(threads)
    return threads


def add_engine_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=default,
        help="what generates the answer: llama.cpp (several times faster on a CPU; needs llama-cpp-python "
        "and a GGUF LLM, as the starter's), torch, or auto: llama.cpp where it can run (default: %(default)s)",
    )


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for torch (default: OMP_NUM_THREADS if set, else the cores left idle by the last "
        "minute's load average, at least 1); on a CPU busy with other work, 1 thread can be many times "
        "faster than oversubscribed ones",
    )


def cmd_chat(args: argparse.Namespace) -> int:
    quiet_libraries()
    use_threads(args.threads)
    from .inference import ChatReport, ChatSettings, answer_stream, encode_file
    from .media import probe
    from .model import AVLLM

    probe(args.media)  # a bad file fails in milliseconds, before the model loads
    start = time.perf_counter()
    model = AVLLM.load(args.model, merge_lora=True, engine=args.engine)
    load = time.perf_counter() - start
    if args.no_subtitles:
        model.transcriber = None
    report = ChatReport()
    enc = encode_file(model, args.media, args.frames)
    settings = ChatSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
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
        print(
            f"[{report.timings['first_token']:.2f} s to first token, {report.timings['total']:.1f} s in all]",
            file=sys.stderr,
        )
    return 0


def report_header(model, enc) -> list[str]:  # noqa: ANN001 - AVLLM and EncodedClip, imported lazily
    """What the answer will be built from, printed before it streams."""
    facts = enc.facts
    sound = f"{facts.audio_seconds:.1f} s of audio" if enc.audio is not None else "NO audio"
    lines = [
        f"[{model.config.name}: {len(enc.frame_times) if enc.visual is not None else 0} frames, {sound}, "
        f"{enc.duration:.1f} s clip]"
    ]
    from .inference import model_warnings

    lines += [f"[warning: {w}]" for w in model_warnings(model) + facts.warnings]
    lines += [f'[heard at {s.start:.1f} s: "{s.text}"]' for s in enc.subtitles]
    lines += [f"[truncated: {t}]" for t in enc.truncated]
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


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .card import CARD_FILE, model_card
    from .model import export_checkpoint

    card = model_card(args.model, args.out, args.eval)
    files = export_checkpoint(args.model, args.out, args.dtype)
    card.save(Path(args.out) / CARD_FILE)
    for path in [*files, Path(args.out) / CARD_FILE]:
        print(f"{path}  {path.stat().st_size / 1e6:.2f} MB")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    quiet_libraries()
    from .serve.server import serve

    logging.getLogger("avllm").setLevel(logging.INFO)
    settings = {k: v for k, v in vars(args).items() if k in SERVE_FIELDS}
    settings["api_keys"] = tuple(args.api_keys or env_api_keys())
    settings["allow_remote_urls"] = not args.no_remote_urls
    config = ServeSettings(**settings)
    use_threads(config.threads)
    serve(config)
    return 0


def parse_overrides(pairs: list[str]) -> dict:
    """`--set key=value` pairs, each value read as YAML (numbers, booleans, null, lists)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair}: expected key=value, e.g. --set max_steps=100")
        out[key] = yaml.safe_load(value)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_train_config

    cfg = load_train_config(args.config, parse_overrides(args.set))  # a bad setting fails here, before torch loads
    if (cfg.stage == "dpo") != (args.kind == "dpo"):
        fits = "avllm train dpo" if cfg.stage == "dpo" else "avllm train sft"
        raise ConfigError(f"{args.config}: stage {cfg.stage!r} is not a {args.kind} stage; run it with {fits}")
    quiet_libraries()
    if args.kind == "sft":
        from .train.sft import run_sft

        out = run_sft(cfg, args.resume)
    else:
        from .train.dpo import run_dpo

        out = run_dpo(cfg, args.resume)
    print(f"saved {out}")
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from .train.curves import DPO_TAGS, read_curves, summary_lines

    curves = read_curves(args.run)
    print("\n".join(summary_lines(curves, None if args.all else DPO_TAGS)))
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    quiet_libraries()
    from .data.cache import FeatureCache, dataset_media, shard
    from .model import AVLLM

    media, index, count = shard(dataset_media(args.data, allow_outside_media=args.allow_outside_media), args.shard)
    cache = FeatureCache(AVLLM.load(args.model), args.cache)
    stats = cache.build(media)
    part = f"shard {index}/{count}: " if count > 1 else ""
    print(
        f"{part}{len(media)} clips: {stats['hits']} cached already, {stats['built']} built, "
        f"{stats['rebuilt']} rebuilt; in {cache.folder}"
    )
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import synthesize
    from .data.synth_speech import synthesize_speech

    make = synthesize_speech if args.speech else synthesize
    summary = make(args.out, args.n, args.seed, workers=args.workers, heldout_frac=args.heldout_frac)
    counts = ", ".join(f"{v} {k}" for k, v in summary.counts.items())
    print(f"{summary.out}: {counts}; seed {summary.seed}, {summary.seconds:.1f} s")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    quiet_libraries()
    from .eval import markdown, run_eval

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    use_threads(args.threads)
    report = run_eval(
        args.model,
        tasks,
        limit=args.limit,
        mode=args.mode,
        media_dir=args.media_dir,
        allow_outside_media=args.allow_outside_media,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        out=args.out,
        engine=args.engine,
    )
    print(markdown(report), end="")
    if args.out:
        from pathlib import Path

        print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}", file=sys.stderr)
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from .data.importers import run_import

    summary = run_import(args.format, args.src, args.out, args.media_dir, args.to, args.split, args.allow_outside_media)
    print("\n".join(summary.lines()))
    return 0


def cmd_data_pairs(args: argparse.Namespace) -> int:
    from .data.prefs import build_pairs

    s = build_pairs(
        args.synth,
        args.out,
        args.per_kind,
        args.held_out_out,
        args.held_out_clips,
        args.held_out_per_kind,
        seed=args.seed,
    )
    kinds = ", ".join(f"{n} {kind}" for kind, n in s.by_kind.items())
    print(f"wrote {s.pairs} pairs to {args.out} ({kinds}); {s.held_out} held out; {s.clips_written} clip files")
    return 0


def cmd_data_onpolicy(args: argparse.Namespace) -> int:
    quiet_libraries()
    import torch

    from .data.cache import FeatureCache
    from .data.onpolicy import onpolicy_pairs
    from .model import AVLLM

    if args.threads:
        torch.set_num_threads(args.threads)
    model = AVLLM.load(args.model)
    s = onpolicy_pairs(
        model, args.pairs, args.out, FeatureCache(model, args.cache), args.limit, args.max_new_tokens, args.temperature
    )
    print(f"wrote {s.wrong} on-policy pairs to {s.out} (wrong answers to {s.wrong} of {s.asked} prompts)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avllm", description="Audio-visual chat assistant")
    sub = parser.add_subparsers(dest="command", required=True)

    chat = sub.add_parser("chat", help="ask a question about a video (or audio) file; the answer streams")
    chat.add_argument("media", help="video or audio file")
    chat.add_argument("question")
    chat.add_argument("--model", default=DEFAULT_MODEL, help="preset name, YAML file or checkpoint folder")
    chat.add_argument(
        "--frames", type=positive_int, default=None, help="frames to sample (default: the model's setting)"
    )
    chat.add_argument("--max-new-tokens", type=positive_int, default=128)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    chat.add_argument(
        "--no-subtitles", action="store_true", help="leave speech out of the prompt (the model's `subtitles` otherwise)"
    )
    chat.add_argument("--json", action="store_true", help="print one JSON object: answer, what was used, timings")
    add_engine_argument(chat, "auto")
    add_threads_argument(chat)
    chat.set_defaults(func=cmd_chat)

    info = sub.add_parser("info", help="print a media file's facts")
    info.add_argument("media")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    train = sub.add_parser("train", help="fine-tune: sft (align, instruct) or dpo, from a YAML recipe")
    train.add_argument("kind", choices=["sft", "dpo"])
    train.add_argument("--config", required=True, help="a shipped recipe (starter-align, ...) or a YAML file")
    train.add_argument(
        "--resume", default="auto", help="auto (the newest checkpoint in output_dir), none, or a checkpoint folder"
    )
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    train.set_defaults(func=cmd_train)

    curves = sub.add_parser("curves", help="a training run's logged curves (TensorBoard): start and end of each")
    curves.add_argument("run", help="the run's output_dir (e.g. runs/starter-dpo)")
    curves.add_argument("--all", action="store_true", help="every scalar logged, not only loss, rewards and eval")
    curves.set_defaults(func=cmd_curves)

    features = sub.add_parser("features", help="cache the frozen encoders' outputs for a dataset's clips")
    features.add_argument("--data", required=True, help="instruction, preference or QA JSONL")
    features.add_argument("--model", default=DEFAULT_MODEL)
    features.add_argument("--cache", default=None, help="cache folder (default ~/.cache/avllm/features)")
    features.add_argument("--allow-outside-media", action="store_true", help="let media paths leave the dataset folder")
    features.add_argument(
        "--shard",
        default="auto",
        help="this process's share of the clips: auto (RANK/WORLD_SIZE under accelerate launch or torchrun) or I/N",
    )
    features.set_defaults(func=cmd_features)

    convert = sub.add_parser("convert", help="build the cached offline weights of a preset")
    convert.add_argument("--model", default=DEFAULT_MODEL)
    convert.set_defaults(func=cmd_convert)

    export = sub.add_parser(
        "export",
        help="copy a checkpoint's trained weights (projectors, LoRA) for shipping, in half precision, "
        "with a model card (README.md) for the hub",
    )
    export.add_argument("--model", required=True, help="checkpoint folder (a training run's output_dir)")
    export.add_argument("--out", required=True, help="folder to write, e.g. avllm/weights/starter")
    export.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    export.add_argument(
        "--eval",
        action="append",
        metavar="FILE",
        help="an `avllm eval --out` report for the model card (repeatable; default: reports in the checkpoint folder)",
    )
    export.set_defaults(func=cmd_export)

    add_serve_parser(sub)
    synth = sub.add_parser(
        "synth",
        help="write synthetic clips with known facts, instruction/preference/QA/probe files, and the files the "
        "starter recipes train on (align.jsonl, instruct-mix.jsonl, dpo-pairs.jsonl)",
    )
    synth.add_argument("--out", required=True, help="folder to write (clips/ and *.jsonl)")
    synth.add_argument("--n", type=positive_int, default=1000, help="number of clips")
    synth.add_argument("--seed", type=int, default=0, help="defines the set; use different seeds for train and test")
    synth.add_argument("--workers", type=positive_int, default=2, help="processes rendering clips")
    synth.add_argument(
        "--heldout-frac",
        type=float,
        default=0.1,
        help="share of spoken clips using held-out words (test-only; reported apart)",
    )
    synth.add_argument(
        "--speech",
        action="store_true",
        help="clips with spoken sentences instead, transcribed by the starter's Whisper: speech.jsonl (questions "
        "answered from the subtitles) and speech-qa.jsonl (avllm/data/synth_speech.py)",
    )
    synth.set_defaults(func=cmd_synth)

    from .data.importers import FORMATS

    data = sub.add_parser("data", help="datasets: import public layouts (LLaVA, AudioCaps, MUSIC-AVQA, ...) as JSONL")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    imp = data_sub.add_parser(
        "import", help="convert a public dataset to avllm instruction / preference / QA JSONL, streamed"
    )
    imp.add_argument("--format", required=True, choices=list(FORMATS), help="the dataset's published layout")
    imp.add_argument("src", help="a .json/.jsonl/.csv/.parquet file, a Hugging Face dataset folder, or hf:ORG/NAME")
    imp.add_argument("--out", required=True, help="JSONL to write; media paths are relative to its folder")
    imp.add_argument("--media-dir", default=None, help="folder of the downloaded clips (default: SRC's folder)")
    imp.add_argument(
        "--to", choices=["qa", "instruction"], default=None, help="QA sets: QA JSONL (default) or instructions"
    )
    imp.add_argument("--split", default=None, help="split of a Hugging Face dataset (default: train, or its only one)")
    imp.add_argument(
        "--allow-outside-media", action="store_true", help="clips outside the output's folder: write absolute paths"
    )
    imp.set_defaults(func=cmd_data_import)
    pairs = data_sub.add_parser("pairs", help="preference pairs that teach grounding, from an `avllm synth` folder")
    pairs.add_argument("--synth", required=True, help="a folder written by avllm synth")
    pairs.add_argument("--out", required=True, help="preference JSONL to write, in or above the synth folder")
    pairs.add_argument(
        "--per-kind", type=positive_int, default=40, help="pairs of each kind (fewer where there are fewer)"
    )
    pairs.add_argument(
        "--held-out-out", default=None, help="preference JSONL of held-out pairs (TrainConfig.eval_data)"
    )
    pairs.add_argument("--held-out-clips", type=int, default=0, help="the set's last clips kept for the held-out pairs")
    pairs.add_argument("--held-out-per-kind", type=positive_int, default=6, help="held-out pairs of each kind")
    pairs.add_argument("--seed", type=int, default=0, help="which pairs are picked, and their order")
    pairs.set_defaults(func=cmd_data_pairs)
    onpolicy = data_sub.add_parser(
        "onpolicy", help="pairs whose rejected answer is a model's own wrong answer to a preference file's prompts"
    )
    onpolicy.add_argument("--model", default=DEFAULT_MODEL, help="the model whose errors to collect (the SFT)")
    onpolicy.add_argument("--pairs", required=True, help="preference JSONL whose prompts and chosen answers to use")
    onpolicy.add_argument("--out", required=True, help="preference JSONL to write, beside --pairs")
    onpolicy.add_argument("--limit", type=positive_int, default=None, help="ask only the first N prompts")
    onpolicy.add_argument("--max-new-tokens", type=positive_int, default=48)
    onpolicy.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the answer users get)")
    onpolicy.add_argument("--cache", default=None, help="feature cache folder (default ~/.cache/avllm/features)")
    onpolicy.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    onpolicy.set_defaults(func=cmd_data_onpolicy)

    evaluate = sub.add_parser("eval", help="zero-shot evaluation on QA files and benchmarks; JSON + Markdown report")
    evaluate.add_argument("--model", default=DEFAULT_MODEL, help="preset name, YAML file or checkpoint folder")
    evaluate.add_argument(
        "--tasks",
        required=True,
        help="comma-separated PREFIX:PATH: jsonl:qa.jsonl, music-avqa:avqa-test.json, avsd:test.json, avhbench:json/",
    )
    evaluate.add_argument("--limit", type=positive_int, default=None, help="score only the first N items of each task")
    evaluate.add_argument("--out", default=None, help="report JSON (FILE.md and FILE.predictions.jsonl beside it)")
    evaluate.add_argument(
        "--mode",
        choices=["loglik", "generate"],
        default="loglik",
        help="multiple choice by option log-likelihood, or by generating and matching the answer",
    )
    evaluate.add_argument(
        "--media-dir", default=None, help="benchmark videos folder (default: the annotation file's folder)"
    )
    evaluate.add_argument(
        "--allow-outside-media", action="store_true", help="let JSONL media paths leave the dataset folder"
    )
    evaluate.add_argument("--batch-size", type=positive_int, default=16, help="options scored per forward pass")
    evaluate.add_argument(
        "--max-new-tokens", type=positive_int, default=32, help="for open and yes/no questions, and --mode generate"
    )
    add_engine_argument(evaluate, "torch")
    add_threads_argument(evaluate)
    evaluate.set_defaults(func=cmd_eval)
    return parser


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """`avllm serve`: every flag's default comes from ServeSettings (docs/api.md: running it safely)."""
    d = ServeSettings
    serve = sub.add_parser("serve", help="start the Gradio chat UI at / and an OpenAI-compatible API at /v1")
    serve.add_argument("--host", default=d.host, help="address to bind; a non-loopback one needs --api-key")
    serve.add_argument("--port", type=positive_int, default=d.port)
    serve.add_argument("--model", default=DEFAULT_MODEL, help="preset name, YAML file or checkpoint folder")
    serve.add_argument("--examples", dest="examples_dir", metavar="DIR", help="example clips to show in the UI")
    who = serve.add_argument_group("who may use it")
    who.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        metavar="KEY",
        help="require `Authorization: Bearer KEY` on /v1 and /metrics (repeat for several keys; default: "
        "AVLLM_API_KEY, comma-separated)",
    )
    who.add_argument("--ui-auth", metavar="USER:PASS|FILE", help="log in to the UI (a file: one user:pass a line)")
    who.add_argument(
        "--allowed-hosts",
        type=names,
        default=d.allowed_hosts,
        metavar="NAME,...",
        help="Host header names accepted (default: localhost names on a loopback --host, any otherwise)",
    )
    media = serve.add_argument_group("where clips may come from")
    media.add_argument(
        "--no-remote-urls", action="store_true", help="refuse http(s) video_url values instead of fetching them"
    )
    media.add_argument(
        "--allowed-media-domains",
        type=names,
        default=d.allowed_media_domains,
        metavar="DOMAIN,...",
        help="fetch video_url values only from these domains and their subdomains",
    )
    media.add_argument(
        "--fetch-timeout", type=float, default=d.fetch_timeout, help="seconds for a whole fetch, redirects included"
    )
    media.add_argument(
        "--allow-local-files",
        action="store_true",
        help="let API requests name files on this machine (video_url: /path or file://), under the folder below",
    )
    media.add_argument("--allowed-local-media-path", metavar="DIR", help="the one folder local files may come from")
    limits = serve.add_argument_group("limits")
    limits.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb, help="largest clip accepted (MiB)")
    limits.add_argument("--max-duration", type=float, default=d.max_duration, help="longest clip accepted (seconds)")
    limits.add_argument("--max-new-tokens", type=positive_int, default=d.max_new_tokens, help="longest answer")
    limits.add_argument("--max-frames", type=positive_int, default=d.max_frames, help="most frames a request may ask")
    limits.add_argument(
        "--max-prompt-tokens", type=positive_int, help="longest prompt (default: the model's context minus the answer)"
    )
    limits.add_argument("--concurrency", type=positive_int, default=d.concurrency, help="answers generated at once")
    limits.add_argument(
        "--max-queue", type=int, default=d.max_queue, help="requests waiting for a slot; past that, 429"
    )
    limits.add_argument(
        "--request-timeout", type=float, default=d.request_timeout, help="seconds an answer may take, waiting included"
    )
    limits.add_argument(
        "--shutdown-timeout", type=float, default=d.shutdown_timeout, help="on SIGTERM, seconds to finish answers"
    )
    limits.add_argument("--cache-size", type=positive_int, default=d.cache_size, help="encoded clips kept")
    add_engine_argument(limits, d.engine)
    add_threads_argument(limits)
    serve.set_defaults(func=cmd_serve)


def names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


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
