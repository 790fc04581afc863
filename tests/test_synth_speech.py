"""`avllm synth --speech`: spoken sentences in the synthetic world, answered from the transcript."""

import numpy as np
import pytest

from avllm.data.synth_media import RATE, SLOT_SECONDS, render_audio
from avllm.data.synth_speech import HELDOUT, NO_PICTURE, PLACES, SUBJECTS, speech_facts, speech_records, talk_audio


def sentence_clip(seed: int = 4, heldout_frac: float = 0.0) -> dict:
    return next(f for i in range(50) if (f := speech_facts(seed, i, heldout_frac))["sound"] == "sentence")


def test_the_sentence_is_spoken_from_its_slot():
    f = sentence_clip()
    audio = render_audio(f)
    start = int(f["speech_slot"] * SLOT_SECONDS * RATE)
    assert not audio[:start].any() and np.abs(audio[start : start + RATE]).max() > 0.1


def test_held_out_sentences_use_only_held_out_words():
    f = sentence_clip(heldout_frac=1.0)
    assert f["heldout"] and all(any(w in f["sentence"] for w in words) for words in HELDOUT)
    assert not any(w in f["sentence"] for w in SUBJECTS + PLACES)


def test_answers_quote_the_transcript_not_the_script():
    f = {**sentence_clip(), "subtitles": [{"start": 0.6, "end": 2.1, "text": "The old man walks to the rever."}]}
    instructions, qa = speech_records(f, np.random.default_rng(0))
    answers = {t["content"] for r in instructions for t in r["conversations"] if t["role"] == "assistant"}
    assert 'They say: "The old man walks to the rever."' in answers and "At about 0.6 s." in answers
    assert qa[0]["answer"] == f["sentence"] and f["sentence"] in qa[0]["choices"] and len(qa[0]["choices"]) == 4


@pytest.mark.parametrize("sound, records", [("beeps", 1), ("sentence", 0)])
def test_without_subtitles_nobody_speaks_unless_whisper_missed_real_speech(sound, records):
    f = {**next(f for i in range(50) if (f := speech_facts(4, i, 0.0))["sound"] == sound), "subtitles": []}
    instructions, _ = speech_records(f, np.random.default_rng(0))
    assert len(instructions) == records
    if records:
        turns = instructions[0]["conversations"]
        asked = next(i for i, t in enumerate(turns) if t["content"].startswith("What does the speaker say?"))
        assert turns[asked + 1]["content"] == "Nobody speaks in this clip."
        assert "says" not in " ".join(t["content"] for t in turns[1::2])


def test_a_talk_is_sound_only_and_its_answers_name_no_picture():
    f = next(f for i in range(200) if (f := speech_facts(4, i, 0.0))["sound"] == "talk")
    audio = talk_audio(f)
    assert f["media"].endswith(".wav") and 2 <= len(f["sentences"]) <= 3 and len(audio) > 4 * RATE
    f = {**f, "subtitles": [{"start": 0.5, "end": 2.0, "text": "One."}, {"start": 3.0, "end": 4.0, "text": "Two."}]}
    turns = speech_records(f, np.random.default_rng(0))[0][0]["conversations"]
    answers = [t["content"] for t in turns[1::2]]
    assert 'They say: "One. Two."' in answers
    assert f'{NO_PICTURE} Someone says: "One. Two."' in answers


def test_some_clips_keep_their_sound_alone_and_their_answers_name_no_picture(tmp_path):
    from avllm.data.synth_speech import _render, has_picture
    from avllm.data.synth_text import sound_sentence
    from avllm.media import probe

    clips = [speech_facts(4, i, 0.0) for i in range(200)]
    alone = [f for f in clips if f["sound"] in ("beeps", "tone", "speech") and not has_picture(f)]
    assert alone and any(has_picture(f) for f in clips if f["sound"] in ("beeps", "tone", "speech"))
    f = next(f for f in alone if f["sound"] == "beeps")
    (tmp_path / "clips").mkdir()
    _render((f, str(tmp_path)))
    facts = probe(tmp_path / f["media"])
    assert f["media"].endswith(".wav") and facts.has_audio and not facts.has_video
    turns = speech_records({**f, "subtitles": []}, np.random.default_rng(0))[0][0]["conversations"]
    asked = next(i for i, t in enumerate(turns) if "what can be heard" in t["content"])
    assert turns[asked + 1]["content"] == f"{NO_PICTURE} {sound_sentence(f)}"


def test_the_picture_named_is_the_one_on_screen_when_speech_starts():
    f = next(f for i in range(80) if (f := speech_facts(4, i, 0.0))["sound"] == "sentence" and f["scene"] == "two")
    late = {**f, "subtitles": [{"start": 2.5, "end": 3.5, "text": "Hello."}]}
    instructions, _ = speech_records(late, np.random.default_rng(0))
    second = f["objects"][1]
    turns = instructions[0]["conversations"]
    on_screen = turns[turns.index(next(t for t in turns if t["content"].startswith("What is on screen"))) + 1]
    assert f"{second['colour']} {second['shape']}" in on_screen["content"]
