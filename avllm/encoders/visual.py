"""Frozen CLIP visual tower (open_clip): frames in, patch tokens out.

Only the vision tower is built; the text tower is never created, which saves memory and
start-up time. Weights come from an open_clip pretrained tag, a local checkpoint file, or,
when none is given, a reproducible random init (seed 0) cached as safetensors so that
projectors trained on those features keep working. Random weights are always announced:
their features are not CLIP features.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..config import cache_dir
from ..errors import ModelLoadError


@contextlib.contextmanager
def _hidden(module: str) -> Iterator[None]:
    """Make `import MODULE` fail inside the block, unless it is loaded already."""
    if module in sys.modules:
        yield
        return
    sys.modules[module] = None  # type: ignore[assignment] - the import system's "not available"
    try:
        yield
    finally:
        del sys.modules[module]


# open_clip imports timm (a second or more of a 2-core CPU's start-up) for its timm towers alone,
# which avllm refuses (ViT towers only); it skips them when timm is missing.
with _hidden("timm"):
    import open_clip
    from open_clip.model import _build_vision_tower  # builds the vision tower alone (no text tower)
    from open_clip.transformer import VisionTransformer

log = logging.getLogger(__name__)

RANDOM_SEED = 0
_FIX = "run once with network access so open_clip caches them, or pass a local checkpoint file"


class CLIPVisualEncoder(torch.nn.Module):
    """open_clip ViT tower returning final-layer patch tokens (after ln_post, class token dropped).

    Tokens come from `VisionTransformer.forward_intermediates(indices=1,
    normalize_intermediates=True)`: the last block's output through ln_post, the same tensor
    that `output_tokens=True` returns for standard CLIP ViTs, without computing the pooled
    embedding we do not use.
    """

    def __init__(
        self,
        visual: VisionTransformer,
        preprocess_cfg: dict[str, Any],
        *,
        arch: str,
        pretrained_loaded: bool,
        description: str,
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        self.visual = visual
        self.arch = arch
        self.pretrained_loaded = pretrained_loaded
        self.description = description
        self.batch_size = batch_size
        self.image_size: tuple[int, int] = tuple(visual.image_size)  # (height, width)
        self.grid: tuple[int, int] = tuple(visual.grid_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.dim: int = visual.transformer.width
        self.preprocess_cfg = dict(preprocess_cfg)
        self.register_buffer("mean", torch.tensor(preprocess_cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess_cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> CLIPVisualEncoder:
        """Always stays in eval mode: the encoder is frozen, whatever its parent does."""
        return super().train(False)

    @classmethod
    def from_spec(
        cls,
        spec: str,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        pretrained: str | None = None,
        batch_size: int = 16,
    ) -> CLIPVisualEncoder:
        """Build from an open_clip arch name or JSON config (`spec`), on `device`, computing in
        `dtype` (bfloat16 is faster on CPUs with AMX or AVX512-BF16), with weights from `pretrained`: a tag,
        a checkpoint file, or None (random init, announced)."""
        name, model_cfg = _model_config(spec)
        preprocess = open_clip.transform.merge_preprocess_dict(open_clip.transform.PreprocessCfg(), {})
        quick_gelu = bool(model_cfg.get("quick_gelu", False))
        if pretrained is None:
            visual = _random_tower(name, model_cfg)
            loaded = False
            description = (
                f"open_clip {name} with NO pretrained weights (random init, seed {RANDOM_SEED}): "
                "its features are not CLIP features"
            )
            log.warning("visual encoder: %s", description)
        else:
            path, tag_cfg = _resolve_weights(name, pretrained)
            if tag_cfg:
                preprocess = open_clip.transform.merge_preprocess_dict(preprocess, tag_cfg)
                # Weights trained with QuickGELU (e.g. openai) give wrong features with GELU.
                quick_gelu = quick_gelu or bool(tag_cfg.get("quick_gelu", False))
                source = f"pretrained tag {pretrained!r} ({path})"
            else:  # a bare file carries no preprocessing info: open_clip's defaults (OpenAI mean/std)
                source = f"checkpoint {path}"
            visual = _tower_from_state(name, model_cfg, quick_gelu, _read_visual_state(path, name), source)
            loaded = True
            description = f"open_clip {name} with weights from {source}" + (", QuickGELU" if quick_gelu else "")
            log.info("visual encoder: %s", description)
        preprocess["size"] = visual.image_size
        return cls(
            visual, preprocess, arch=name, pretrained_loaded=loaded, description=description, batch_size=batch_size
        ).to(device, dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] uint8 -> [B, 3, h, w] float32 normalised, like open_clip's eval transform.

        Batched tensor version of Resize(bicubic) + CenterCrop (or squash / letterbox as the
        pretrained config says) + ToTensor + Normalize, without PIL per frame.
        """
        x = frames.permute(0, 3, 1, 2).float()
        h, w = x.shape[-2:]
        th, tw = self.image_size
        mode = self.preprocess_cfg.get("resize_mode", "shortest")
        interp = self.preprocess_cfg.get("interpolation", "bicubic")
        interp = interp if interp in ("bicubic", "bilinear") else "bicubic"
        if mode == "squash":
            size = (th, tw)
        elif mode == "longest":
            ratio = max(h / th, w / tw)
            size = (round(h / ratio), round(w / ratio))
        elif th == tw:  # torchvision Resize(int): shorter side to th, longer side truncated
            short, long = min(h, w), max(h, w)
            new_long = int(th * long / short)
            size = (th, new_long) if h <= w else (new_long, th)
        else:  # open_clip's ResizeKeepRatio for non-square targets (always bicubic there)
            ratio = min(h / th, w / tw)
            size = (round(h / ratio), round(w / ratio))
            interp = "bicubic"
        # PIL resizes horizontally, rounds to uint8, then vertically: doing the same keeps
        # us within one grey level of open_clip's PIL transform (one 2-D pass differs by ~6).
        for step in ((h, size[1]), tuple(size)):
            if tuple(x.shape[-2:]) != step:
                x = F.interpolate(x, size=step, mode=interp, antialias=True, align_corners=False)
                x = x.clamp_(0, 255).round_()
        x = _center_crop_or_pad(x, th, tw, float(self.preprocess_cfg.get("fill_color", 0)))
        return (x / 255.0 - self.mean) / self.std

    def forward(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """[T, H, W, 3] uint8 RGB frames -> float32 patch tokens [T, P, D] on the module's device."""
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.require(frames, requirements=["C", "W"]))  # copies only if needed
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"expected frames [T, H, W, 3] uint8 RGB, got {tuple(frames.shape)} {frames.dtype}")
        if frames.shape[0] == 0:
            return torch.zeros(0, self.num_patches, self.dim, device=self.device)
        outs = []
        with torch.inference_mode():
            for i in range(0, frames.shape[0], self.batch_size):
                x = self.preprocess(frames[i : i + self.batch_size].to(self.device)).to(self.dtype)
                out = self.visual.forward_intermediates(
                    x, indices=1, normalize_intermediates=True, intermediates_only=True, output_fmt="NLC"
                )
                outs.append(out["image_intermediates"][-1].float())
        # Concatenating outside inference_mode gives a normal tensor that trainable projectors
        # can save for backward (inference tensors cannot be).
        return torch.cat(outs)


def _center_crop_or_pad(x: torch.Tensor, th: int, tw: int, fill: float) -> torch.Tensor:
    """open_clip's center_crop_or_pad on a batch: pad (letterbox) if smaller, then centre crop."""
    h, w = x.shape[-2:]
    if th > h or tw > w:
        pad_l, pad_t = max(tw - w, 0) // 2, max(th - h, 0) // 2
        pad = (pad_l, max(tw - w, 0) - pad_l, pad_t, max(th - h, 0) - pad_t)
        x = F.pad(x, pad, value=fill)
        h, w = x.shape[-2:]
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


def _model_config(arch: str) -> tuple[str, dict[str, Any]]:
    """(name, open_clip model config) for a built-in arch name or a JSON config path."""
    path = Path(arch)
    if arch.endswith(".json") or path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"visual encoder {arch!r}: cannot read the open_clip model config ({exc})") from exc
        if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ModelLoadError(f"{arch}: an open_clip model config needs embed_dim, vision_cfg and text_cfg")
        name = path.stem
        if open_clip.get_model_config(name) != cfg:  # register once, so open_clip tools know it too
            open_clip.add_model_config(path)
    else:
        name = arch
    try:
        cfg = open_clip.get_model_config(name)
    except Exception as exc:  # hf-hub:/local-dir: names that cannot be resolved
        raise ModelLoadError(f"visual encoder {arch!r}: cannot get its open_clip config ({exc})") from exc
    if cfg is None:
        raise ModelLoadError(
            f"visual encoder {arch!r}: not an open_clip architecture (e.g. ViT-B-32, ViT-L-14-336; "
            "see open_clip.list_models()) nor a path to a model JSON config"
        )
    vision = cfg["vision_cfg"]
    if "timm_model_name" in vision or isinstance(vision.get("layers"), (list, tuple)) or vision.get("attentional_pool"):
        raise ModelLoadError(f"visual encoder {name}: only open_clip ViT towers are supported (patch tokens)")
    return name, cfg


def _build(model_cfg: dict[str, Any], quick_gelu: bool) -> VisionTransformer:
    return _build_vision_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"], quick_gelu, None)


def _tower_from_state(
    name: str, model_cfg: dict[str, Any], quick_gelu: bool, state: dict[str, torch.Tensor], source: str
) -> VisionTransformer:
    """Build the tower on the meta device (no init cost) and assign the given tensors."""
    with torch.device("meta"):
        visual = _build(model_cfg, quick_gelu)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        visual.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{source} does not fit open_clip {name}'s visual tower; pass the architecture it was trained "
            f"with: {str(exc)[:500]}"
        ) from exc
    left = [n for n, t in [*visual.named_parameters(), *visual.named_buffers()] if t.is_meta]
    if left:
        raise ModelLoadError(f"{source}: open_clip {name} tensors not loaded: {left[:5]}")
    return visual


def _random_tower(name: str, model_cfg: dict[str, Any]) -> VisionTransformer:
    """Seed-0 random tower, created once and then read from cache_dir()/clip as safetensors."""
    path = cache_dir() / "clip" / f"{name}-random-seed{RANDOM_SEED}.safetensors"
    key = json.dumps({"embed_dim": model_cfg["embed_dim"], "vision_cfg": model_cfg["vision_cfg"]}, sort_keys=True)
    quick_gelu = bool(model_cfg.get("quick_gelu", False))
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if meta.get("config") == key:
                return _tower_from_state(name, model_cfg, quick_gelu, load_file(str(path)), str(path))
            log.warning("%s was made for another %s config; regenerating it", path, name)
        except Exception as exc:  # noqa: BLE001 - a truncated or corrupt cache file is rebuilt, not trusted
            log.warning("%s is unreadable (%s); regenerating it", path, exc)
    # Same RNG order as open_clip.create_model(name) under torch.manual_seed(0): the vision
    # tower is built first, so these equal the visual weights of open_clip's own random model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        visual = _build(model_cfg, quick_gelu)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    state = {k: v.contiguous() for k, v in visual.state_dict().items()}
    save_file(state, str(tmp), metadata={"config": key, "seed": str(RANDOM_SEED), "arch": name})
    os.replace(tmp, path)  # atomic: parallel runs never see a half-written file
    return visual


def _resolve_weights(name: str, pretrained: str) -> tuple[str, dict[str, Any]]:
    """(local file, pretrained tag config or {}) for a tag or a checkpoint path."""
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        if os.path.isfile(pretrained):
            return pretrained, {}
        if os.sep in pretrained or Path(pretrained).suffix:
            raise ModelLoadError(f"visual weights {pretrained!r}: no such checkpoint file; check the path")
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ModelLoadError(
            f"visual weights {pretrained!r}: neither an existing checkpoint file nor a pretrained tag of "
            f"open_clip {name} (its tags: {', '.join(tags) or 'none'}); pass a tag or a local checkpoint file"
        )
    cached = _cached_hub_file(tag_cfg)
    if cached:
        return cached, tag_cfg
    try:
        file = open_clip.download_pretrained(tag_cfg)
    except Exception as exc:
        raise ModelLoadError(
            f"open_clip {name} pretrained weights {pretrained!r} are not in the local cache and could not be "
            f"downloaded ({type(exc).__name__}); {_FIX}"
        ) from exc
    if not file or not os.path.isfile(file):
        raise ModelLoadError(f"open_clip {name} pretrained weights {pretrained!r} could not be fetched; {_FIX}")
    return file, tag_cfg


def _cached_hub_file(tag_cfg: dict[str, Any]) -> str | None:
    """The tag's weights if already in the Hugging Face cache: no network call, no retry delay."""
    hub = tag_cfg.get("hf_hub")
    if not hub:
        return None
    from huggingface_hub import hf_hub_download

    repo, filename = os.path.split(hub)
    filename = filename or open_clip.constants.HF_WEIGHTS_NAME
    names = [filename]
    if filename == open_clip.constants.HF_WEIGHTS_NAME:
        names.insert(0, open_clip.constants.HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    for fname in names:
        try:
            return hf_hub_download(repo, fname, local_files_only=True)
        except Exception:  # noqa: BLE001 - any file not in the local cache: try the next name
            continue
    return None


def _read_visual_state(path: str, name: str) -> dict[str, torch.Tensor]:
    """The visual tower's tensors from a full open_clip checkpoint or a tower-only one.

    .safetensors via safetensors; anything else via torch.load(weights_only=True), never
    a full unpickle.
    """
    try:
        if str(path).endswith(".safetensors"):
            with safe_open(str(path), "pt") as f:  # read only the vision tower's tensors
                keys = [k for k in f.keys() if k.startswith(("visual.", "module.visual."))] or list(f.keys())
                state: Any = {k: f.get_tensor(k) for k in keys}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a checkpoint, truncated, or a pickle holding more than tensors
        log.debug("reading %s failed", path, exc_info=True)
        raise ModelLoadError(
            f"checkpoint {path}: not a safetensors file nor a plain tensor state dict that "
            f"torch.load(weights_only=True) accepts ({type(exc).__name__}); save the weights with "
            "safetensors (or torch.save(model.state_dict())) and pass that file"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"checkpoint {path}: not a state dict of tensors for open_clip {name}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):  # a whole CLIP model: keep the vision tower
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    return state
