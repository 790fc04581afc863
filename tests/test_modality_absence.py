"""No invented modality: the default model, asked an open question about a real file without a
picture (or without sound), describes no picture (or no sound) and says the file has none.

Marked slow (the real weights, five real files); run it with
`python -m pytest -q -m slow tests/test_modality_absence.py`. The files are those in
../shared/clips (or $AVLLM_SHARED_CLIPS) that `avllm.media.probe` finds without a video or
without an audio track.
"""

import re

import pytest

from avllm.data.onpolicy import PICTURE_TERMS, SOUND_TERMS, terms

pytestmark = pytest.mark.slow

QUESTION = "What happens in this clip, and what can be heard?"
SAYS_NO_PICTURE = re.compile(r"\bno (picture|video|image|visuals?)\b|\b(sound|audio) only\b|\bonly (sound|audio)\b")
QUOTED = re.compile(r'"[^"]*"')  # what someone is heard saying: the sound, not a description of a picture
SAYS_NO_SOUND = re.compile(r"\bno (sound|soundtrack|audio)\b|\bwithout (sound|audio)\b|\bsilent\b")


@pytest.fixture(scope="module")
def answers(shared_clips):
    """The default model's greedy answer to QUESTION about each real file lacking a picture or sound."""
    from avllm.config import default_model
    from avllm.inference import encode_file
    from avllm.media import probe
    from avllm.model import AVLLM
    from avllm.prompt import with_video

    model = AVLLM.load(default_model())
    out = {}
    for path in sorted(p for p in shared_clips.iterdir() if p.suffix != ".md"):
        facts = probe(path)
        if facts.has_video and facts.has_audio:
            continue
        enc = encode_file(model, path)
        messages = [{"role": "user", "content": with_video(QUESTION)}]
        answer = "".join(model.stream(messages, enc, max_new_tokens=64)).strip()
        out[path.name] = (facts.has_video, facts.has_audio, answer)
    return out


def test_the_shared_clips_hold_files_without_a_picture_and_without_sound(answers):
    assert {"whisper-jfk.flac", "fasterwhisper-stereo_diarization.wav"} <= {n for n, a in answers.items() if not a[0]}
    assert {"gradio-muted_video_sample.mp4", "videollama-silence_girl.mp4"} <= {
        n for n, a in answers.items() if not a[1]
    }


def test_a_file_without_a_picture_gets_no_picture_in_the_answer(answers):
    wrong = {
        name: answer
        for name, (has_video, _, answer) in answers.items()
        if not has_video
        and (terms(QUOTED.sub("", answer)) & PICTURE_TERMS or not SAYS_NO_PICTURE.search(answer.lower()))
    }
    assert not wrong, f"answers that describe a picture, or do not say there is none: {wrong}"


def test_a_clip_without_sound_gets_no_sound_in_the_answer(answers):
    wrong = {
        name: answer
        for name, (_, has_audio, answer) in answers.items()
        if not has_audio and (terms(answer) & SOUND_TERMS or not SAYS_NO_SOUND.search(answer.lower()))
    }
    assert not wrong, f"answers that describe a sound, or do not say there is none: {wrong}"
