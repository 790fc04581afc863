"""CLIPVisualEncoder: shapes, batching, frozen weights, reproducible random init, weight loading
and its failures, and preprocessing against open_clip's own PIL transform. No network."""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from factories import TINY_CLIP, tiny_clip_config
from PIL import Image
from safetensors.torch import save_file

from avllm.encoders.visual import CLIPVisualEncoder
from avllm.errors import ModelLoadError

GREY_LEVEL = 1 / 255 / min(open_clip.OPENAI_DATASET_STD)  # one uint8 step after normalising


@pytest.fixture(autouse=True)
def offline_cache(tmp_path, monkeypatch) -> Path:
    """Each test gets its own empty avllm cache, and the Hugging Face hub is offline."""
    import huggingface_hub.constants

    cache = tmp_path / "avllm-cache"
    monkeypatch.setenv("AVLLM_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    return cache


@pytest.fixture
def tiny_cfg(tmp_path) -> Path:
    return tiny_clip_config(tmp_path)


def frames(t: int, h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def tiny_clip_model(cfg: Path, seed: int) -> torch.nn.Module:
    """A whole open_clip model (both towers) for the tiny config, as a user checkpoint would hold."""
    open_clip.add_model_config(cfg)  # another test may have registered a different "tiny-clip"
    torch.manual_seed(seed)
    return open_clip.create_model(cfg.stem)


@pytest.mark.parametrize("t", [0, 1, 3, 9])
def test_shapes(tiny_cfg, t):
    enc = CLIPVisualEncoder.from_spec(str(tiny_cfg), batch_size=4)
    assert (enc.dim, enc.grid, enc.num_patches, enc.image_size) == (32, (4, 4), 16, (32, 32))
    out = enc(frames(t))
    assert out.shape == (t, 16, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_any_frame_size_and_tensor_input(tiny_cfg):
    enc = CLIPVisualEncoder.from_spec(str(tiny_cfg))
    for h, w in [(32, 32), (17, 90), (300, 20), (240, 320)]:
        x = frames(2, h, w)
        assert enc(torch.from_numpy(x)).shape == (2, 16, 32)
        torch.testing.assert_close(enc(torch.from_numpy(x)), enc(x))
    with pytest.raises(ValueError, match="uint8"):
        enc(frames(1).astype(np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        enc(frames(1)[0])


def test_batching_equals_one_by_one(tiny_cfg):
    enc = CLIPVisualEncoder.from_spec(str(tiny_cfg), batch_size=3)
    x = frames(7)
    assert enc.batch_size == 3
    batched = enc(x)
    single = torch.cat([enc(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_tokens_are_the_final_layer_after_ln_post(tiny_cfg):
    """Same tensor that open_clip's `output_tokens=True` path returns (class token dropped)."""
    enc = CLIPVisualEncoder.from_spec(str(tiny_cfg))
    x = frames(3)
    ours = enc(x)
    enc.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = enc.visual(enc.preprocess(torch.from_numpy(x)))
    torch.testing.assert_close(ours, tokens)


def test_frozen(tiny_cfg):
    enc = CLIPVisualEncoder.from_spec(str(tiny_cfg))
    assert not any(p.requires_grad for p in enc.parameters())
    parent = torch.nn.Sequential(enc)
    parent.train()
    assert not enc.training and not enc.visual.training
    # The output is a normal tensor (not an inference tensor): a projector can train on it.
    out = enc(frames(2))
    proj = torch.nn.Linear(32, 8)
    proj(out).sum().backward()
    assert proj.weight.grad is not None and not any(p.grad is not None for p in enc.parameters())


def test_random_init_is_reproducible_and_cached(tiny_cfg, offline_cache, caplog):
    x = frames(2)
    before = torch.random.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="avllm.encoders.visual"):
        first = CLIPVisualEncoder.from_spec(str(tiny_cfg))
    assert torch.equal(torch.random.get_rng_state(), before), "global RNG was disturbed"
    assert not first.pretrained_loaded
    assert "NO pretrained weights" in first.description and "not CLIP features" in first.description
    assert "NO pretrained weights" in caplog.text
    cached = offline_cache / "clip" / "tiny-clip-random-seed0.safetensors"
    assert cached.is_file()

    torch.manual_seed(1234)  # the global seed must not matter
    second = CLIPVisualEncoder.from_spec(str(tiny_cfg))
    torch.testing.assert_close(first(x), second(x), atol=0, rtol=0)

    cached.unlink()
    third = CLIPVisualEncoder.from_spec(str(tiny_cfg))
    assert cached.is_file()
    s1, s3 = first.visual.state_dict(), third.visual.state_dict()
    assert s1.keys() == s3.keys() and all(torch.equal(s1[k], s3[k]) for k in s1)


def test_random_init_is_open_clips_own_under_seed_0(tiny_cfg):
    ours = CLIPVisualEncoder.from_spec(str(tiny_cfg)).visual.state_dict()
    theirs = tiny_clip_model(tiny_cfg, 0).visual.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_cache_for_another_config_with_the_same_name_is_rebuilt(tmp_path, offline_cache):
    CLIPVisualEncoder.from_spec(str(tiny_clip_config(tmp_path)))
    wider = json.loads(json.dumps(TINY_CLIP))
    wider["vision_cfg"]["width"] = 48
    other = tmp_path / "other"
    other.mkdir()
    (other / "tiny-clip.json").write_text(json.dumps(wider))
    assert CLIPVisualEncoder.from_spec(str(other / "tiny-clip.json"))(frames(1)).shape == (1, 16, 48)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_local_checkpoint_loads(tiny_cfg, tmp_path, suffix):
    model = tiny_clip_model(tiny_cfg, seed=7).eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(model.state_dict(), str(path))
    else:
        torch.save({"state_dict": model.state_dict()} if suffix == ".bin" else model.state_dict(), path)
    enc = CLIPVisualEncoder.from_spec(str(tiny_cfg), pretrained=str(path))
    assert enc.pretrained_loaded and str(path) in enc.description and "NO" not in enc.description
    x = frames(2)
    random_feats = CLIPVisualEncoder.from_spec(str(tiny_cfg))(x)
    assert not torch.allclose(enc(x), random_feats)
    model.visual.output_tokens = True
    with torch.no_grad():
        _, expected = model.visual(enc.preprocess(torch.from_numpy(x)))
    torch.testing.assert_close(enc(x), expected)
    assert not any(p.requires_grad for p in enc.parameters())


def test_pretrained_tag_from_the_hub_cache(tiny_cfg, tmp_path, monkeypatch):
    """A tag whose weights are already in the Hugging Face cache loads offline, with the tag's
    preprocessing and activation (openai weights need QuickGELU)."""
    import huggingface_hub.constants

    model = tiny_clip_model(tiny_cfg, seed=5)
    snapshot = tmp_path / "hf" / "models--someorg--tiny-clip" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(model.state_dict(), str(snapshot / "open_clip_model.safetensors"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    tag_cfg = {
        "hf_hub": "someorg/tiny-clip/",
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "resize_mode": "squash",
        "quick_gelu": True,
    }
    real = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda m, t: tag_cfg if t == "mytag" else real(m, t))

    enc = CLIPVisualEncoder.from_spec(str(tiny_cfg), pretrained="mytag")
    assert enc.pretrained_loaded and "'mytag'" in enc.description and "QuickGELU" in enc.description
    assert enc.preprocess_cfg["resize_mode"] == "squash" and tuple(enc.preprocess_cfg["mean"]) == (0.5,) * 3
    assert isinstance(enc.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    torch.testing.assert_close(enc.visual.conv1.weight, model.visual.conv1.weight)


def test_tower_only_checkpoint_loads(tiny_cfg, offline_cache):
    random_enc = CLIPVisualEncoder.from_spec(str(tiny_cfg))
    cached = offline_cache / "clip" / "tiny-clip-random-seed0.safetensors"
    enc = CLIPVisualEncoder.from_spec(str(tiny_cfg), pretrained=str(cached))
    assert enc.pretrained_loaded
    torch.testing.assert_close(enc(frames(1)), random_enc(frames(1)))


def test_torch_load_is_weights_only(tiny_cfg, tmp_path, monkeypatch):
    model = tiny_clip_model(tiny_cfg, seed=3)
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": model.state_dict(), "args": logging.getLogger("x")}, path)  # needs full unpickle
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    with pytest.raises(ModelLoadError, match="pickled.pt.*weights_only=True"):
        CLIPVisualEncoder.from_spec(str(tiny_cfg), pretrained=str(path))
    assert calls and all(k.get("weights_only") is True for k in calls)


@pytest.mark.parametrize(
    "arch, pretrained, match",
    [
        ("ViT-Nope-99", None, "not an open_clip architecture"),
        ("{cfg_dir}/missing.json", None, "missing.json"),
        ("{cfg}", "{cfg_dir}/no-such-file.safetensors", "no such checkpoint file"),
        ("{cfg}", "openai", "neither an existing checkpoint file nor a pretrained tag"),
        ("ViT-B-32", "openai", "network access"),  # a real tag, not cached here
        ("ViT-B-32", "{tiny_weights}", "does not fit"),
        ("{cfg}", "{cfg}", "not a safetensors file nor a plain tensor state dict"),  # JSON is no checkpoint
    ],
)
def test_load_failures_raise_model_load_error_quickly(tiny_cfg, tmp_path, arch, pretrained, match):
    tiny_weights = tmp_path / "tiny.safetensors"
    save_file(tiny_clip_model(tiny_cfg, 0).state_dict(), str(tiny_weights))
    fill = {"cfg": tiny_cfg, "cfg_dir": tmp_path, "tiny_weights": tiny_weights}
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=match) as info:
        CLIPVisualEncoder.from_spec(
            arch.format(**fill), pretrained=None if pretrained is None else pretrained.format(**fill)
        )
    assert time.perf_counter() - start < 5
    assert "random" not in str(info.value).lower()


def _real_frames() -> list[tuple[str, np.ndarray]]:
    """A photo shipped with gradio (a dependency) and a frame of a real video in ../shared/clips."""
    found = []
    spec = importlib.util.find_spec("gradio")
    if spec and spec.origin:
        photo = Path(spec.origin).parent / "media_assets" / "images" / "cheetah.jpg"
        if photo.is_file():
            found.append(("cheetah.jpg", np.asarray(Image.open(photo).convert("RGB"))))
    clip = Path(__file__).resolve().parents[2] / "shared" / "clips" / "moviepy-chaplin.mp4"
    if clip.is_file():
        import av

        with av.open(str(clip)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i == 75:  # 3 s in
                    found.append(("chaplin.mp4@3s", frame.to_ndarray(format="rgb24")))
                    break
    return found


@pytest.mark.parametrize("resize_mode, levels", [("shortest", 1), ("squash", 1), ("longest", 2)])
def test_preprocess_matches_open_clip_pil_transform(tmp_path, resize_mode, levels):
    """Batched tensor preprocessing vs open_clip's eval transform (PIL) on real pictures.

    Resizing horizontally then vertically with uint8 rounding in between, as PIL does, keeps
    every pixel within one grey level (two for the letterbox mode's upscaling); a single 2-D
    interpolation would be up to 6 levels off at sharp edges.
    """
    images = _real_frames()
    if not images:
        pytest.skip("no real picture found (gradio's media assets or ../shared/clips)")
    cfg = json.loads(json.dumps(TINY_CLIP))
    cfg["vision_cfg"].update(image_size=224, patch_size=32)
    path = tmp_path / "tiny-224.json"
    path.write_text(json.dumps(cfg))
    enc = CLIPVisualEncoder.from_spec(str(path))
    enc.preprocess_cfg["resize_mode"] = resize_mode
    pp_cfg = open_clip.transform.PreprocessCfg(**enc.preprocess_cfg)
    pil_transform = open_clip.transform.image_transform_v2(pp_cfg, is_train=False)
    for name, img in images:
        ours = enc.preprocess(torch.from_numpy(img.copy())[None])[0]
        theirs = pil_transform(Image.fromarray(img))
        assert ours.shape == theirs.shape == (3, 224, 224), name
        diff = (ours - theirs).abs()
        assert diff.max() <= levels * GREY_LEVEL + 1e-4, (name, diff.max().item())
        assert diff.mean() < 0.01 * GREY_LEVEL, (name, diff.mean().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tiny_cfg):
    cpu = CLIPVisualEncoder.from_spec(str(tiny_cfg))
    gpu = CLIPVisualEncoder.from_spec(str(tiny_cfg), device="cuda")
    x = frames(5, 120, 160)
    out = gpu(x)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), cpu(x), atol=2e-3, rtol=2e-3)


def test_real_vit_b_32_random(offline_cache):
    """The starter preset's encoder: random ViT-B-32 (350 MB cache file, removed afterwards)."""
    try:
        enc = CLIPVisualEncoder.from_spec("ViT-B-32")
        assert not enc.pretrained_loaded and "NO pretrained weights" in enc.description
        assert (enc.dim, enc.grid, enc.num_patches, enc.image_size) == (768, (7, 7), 49, (224, 224))
        assert enc(frames(2, 240, 320)).shape == (2, 49, 768)
        start = time.perf_counter()
        again = CLIPVisualEncoder.from_spec("ViT-B-32")
        assert time.perf_counter() - start < 5  # cached: built on the meta device, tensors assigned
        assert torch.equal(again.visual.conv1.weight, enc.visual.conv1.weight)
    finally:
        for f in (offline_cache / "clip").glob("ViT-B-32-*"):
            f.unlink()
