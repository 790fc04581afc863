"""`avllm data pairs`: preference pairs that teach grounding, from a set `avllm synth` wrote.

The SFT model's errors are what DPO must remove, and a yes/no bias is not a cure: so the pairs
are balanced across kinds of fact (KINDS), and within each kind between questions whose true
answer is yes (the rejected answer denies what is there) and no (the rejected answer claims what
is not). Every rejected answer differs from the chosen one in what it says about the clip alone:

- visual-object, sound, word, sync, count: the probes and questions of `synth_text` about
  objects on the screen, what is heard, the spoken word or tone, how sound and picture line up,
  and how many shapes or beeps; the chosen answer is the grounded sentence, the rejected one its
  plausible contradiction.
- open: an open question ("What happens in this clip, and what can be heard?") answered by the
  clip's description, against the same description with one thing added that is absent (a
  barking dog, a shape of another colour, a word nobody says).
- no-picture: the clip's soundtrack alone, written as a sound file (`clips/ID-sound.wav`): the
  chosen answer says there is no picture and describes the sound; the rejected one describes the
  picture the file does not have. Asked open, and as a probe about an object.
- no-sound: the clip's picture without an audio track (`clips/ID-mute.mp4`, and the clips synth
  made without one): the chosen answer says there is no sound; the rejected one invents it.

The last `held_out` clips give the held-out pairs (`--held-out-out`) that DPO scores as it trains
(TrainConfig.eval_data); no clip gives pairs to both files. `avllm data onpolicy` then adds pairs
whose rejected answer is what a model itself says wrongly (avllm/data/onpolicy.py).
"""

from __future__ import annotations

import json
import os
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError
from ..prompt import with_video
from .formats import write_jsonl
from .synth import VERSION, VOCAB
from .synth_media import COLOURS, RATE, SHAPES, render_audio, render_frames, write_mp4
from .synth_text import (
    ABSENT_SOUNDS,
    Question,
    article,
    describe,
    mc_questions,
    picture_sentences,
    probe_candidates,
    sound_sentence,
)

KINDS = ("visual-object", "sound", "word", "sync", "count", "open", "no-picture", "no-sound")
FAMILIES = {  # the synth_text question families that teach each kind
    "visual-object": ("probe-object", "probe-flash", "shape", "colour", "first", "last"),
    "sound": ("probe-speech", "probe-beeps", "probe-silence", "probe-absent", "sound"),
    "word": ("word", "tone"),
    "sync": ("sync", "probe-sync", "probe-speech-shape", "at-sound"),
    "count": ("count", "beeps"),
}
OPEN_QUESTION = "What happens in this clip, and what can be heard?"
NO_PICTURE = "There is no picture: the file holds sound only."
SOUND_PROBES = ("Is someone speaking?", "Do you hear any beeps?", "Is music playing?")


@dataclass
class PairsSummary:
    pairs: int
    held_out: int
    by_kind: dict[str, int] = field(default_factory=dict)
    clips_written: int = 0


def _pair(f: dict[str, Any], media: str, kind: str, question: str, chosen: str, rejected: str, target: str) -> dict:
    return {
        "media": media,
        "clip": f["id"],
        "kind": kind,
        "target": target,
        "truth": chosen.split(",")[0].lower() if chosen.startswith(("Yes,", "No,")) else "open",
        "prompt": [{"role": "user", "content": with_video(question)}],
        "chosen": chosen,
        "rejected": rejected,
    }


def _from_question(f: dict[str, Any], kind: str, q: Question) -> dict:
    question = "Describe what you see and hear." if q.family == "describe" else q.question
    return _pair(f, f["media"], kind, question, q.sentence, q.wrong, q.target or "content")


def _invented(f: dict[str, Any], rng: np.random.Generator) -> str:
    """One sentence about something the clip does not have: a sound, or a shape of another colour."""
    silent = f["sound"] in ("silence", "none")
    choice = int(rng.integers(3))
    if choice == 0 or (choice == 2 and not silent):
        _, present, _ = ABSENT_SOUNDS[int(rng.integers(len(ABSENT_SOUNDS)))]
        return present[0].upper() + present[1:] + "."
    if choice == 1:
        shown = {f["colour"]} if f["scene"] == "one" else {o["colour"] for o in f["objects"]}
        colour = [c for c in COLOURS if c not in shown][int(rng.integers(len(COLOURS) - len(shown)))]
        return f"{article(colour + ' ' + SHAPES[int(rng.integers(len(SHAPES)))]).capitalize()} appears as well."
    return sound_sentence({**f, "sound": "speech", "word": "apple", "word_slot": int(rng.integers(7))})


def open_pair(f: dict[str, Any], rng: np.random.Generator) -> dict:
    """The description against the description with one absent thing added."""
    picture, described = picture_sentences(f), describe(f)
    rejected = f"{picture} {_invented(f, rng)}{described[len(picture) :]}"
    return _pair(f, f["media"], "open", OPEN_QUESTION, described, rejected, "hallucination")


def still_there(f: dict[str, Any], media: str, kind: str, probes: list[Question], modality: str) -> list[dict]:
    """One probe about the modality the file still has, answered yes: a file without a picture (or
    without sound) is no reason to deny what can be heard (or seen)."""
    yes = [q for q in probes if q.answer == "yes" and q.kind.startswith(modality + "/")]
    return [_pair(f, media, kind, q.question, q.sentence, q.wrong, "omission") for q in yes[:1]]


def no_picture_pairs(f: dict[str, Any], media: str, rng: np.random.Generator) -> list[dict]:
    """The clip's sound alone: no picture may be described."""
    heard = sound_sentence(f)
    objs = [{"shape": f["shape"], "colour": f["colour"]}] if f["scene"] == "one" else f["objects"]
    obj = objs[int(rng.integers(len(objs)))]
    name = f"{obj['colour']} {obj['shape']}"
    return [
        _pair(f, media, "no-picture", OPEN_QUESTION, f"{NO_PICTURE} {heard}", describe(f), "absence"),
        _pair(
            f,
            media,
            "no-picture",
            f"Is there {article(name)} on the screen?",
            f"No, there is no picture at all: the file holds sound only. {heard}",
            f"Yes, there is {article(name)}.",
            "absence",
        ),
    ]


def no_sound_pairs(f: dict[str, Any], media: str, rng: np.random.Generator) -> list[dict]:
    """The clip's picture without an audio track: no sound may be described."""
    mute = {**f, "sound": "none"}  # described as a clip without an audio track
    none = sound_sentence(mute)
    invented = f if f["sound"] not in ("silence", "none") else {**f, "sound": "beeps", "beep_slots": [1, 5]}
    question = SOUND_PROBES[int(rng.integers(len(SOUND_PROBES)))]
    claim = {
        SOUND_PROBES[0]: "someone is speaking.",
        SOUND_PROBES[1]: "I hear beeps.",
        SOUND_PROBES[2]: "music is playing.",
    }
    return [
        _pair(
            f,
            media,
            "no-sound",
            OPEN_QUESTION,
            describe(mute),
            f"{picture_sentences(f)} {sound_sentence(invented)}",
            "absence",
        ),
        _pair(f, media, "no-sound", question, f"No, {none[0].lower()}{none[1:]}", f"Yes, {claim[question]}", "absence"),
    ]


def clip_pairs(f: dict[str, Any], root: Path, write_variants: bool) -> dict[str, list[dict]]:
    """Every candidate pair about one synth clip, by kind (the sound-only and mute files written
    into root/clips when `write_variants`)."""
    rng = np.random.default_rng([f["seed"], f["index"], VERSION, 7])
    probes = probe_candidates(f, rng)
    questions = mc_questions(f, rng, list(VOCAB)) + probes
    out: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for kind, families in FAMILIES.items():
        out[kind] += [_from_question(f, kind, q) for q in questions if q.family in families]
    out["open"].append(open_pair(f, rng))
    if f["sound"] == "none":
        out["no-sound"] += no_sound_pairs(f, f["media"], rng) + still_there(f, f["media"], "no-sound", probes, "visual")
    elif write_variants:
        sound_file, mute_file = f"clips/{f['id']}-sound.wav", f"clips/{f['id']}-mute.mp4"
        write_wav(root / sound_file, render_audio(f))
        write_mp4(root / mute_file, render_frames(f), None)
        out["no-picture"] += no_picture_pairs(f, sound_file, rng) + still_there(
            f, sound_file, "no-picture", probes, "audio"
        )
        out["no-sound"] += no_sound_pairs(f, mute_file, rng) + still_there(f, mute_file, "no-sound", probes, "visual")
    return out


def write_wav(path: Path, audio: np.ndarray) -> None:
    """16-bit mono PCM at the synth sample rate: a sound file with no picture."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def balanced(pairs: list[dict], n: int, rng: np.random.Generator) -> list[dict]:
    """n pairs (or all there are), taking yes, no and open answers in turn so none outnumbers the others."""
    groups = [[p for p in pairs if p["truth"] == a] for a in ("yes", "no", "open")]
    groups = [[g[i] for i in rng.permutation(len(g))] for g in groups if g]
    out: list[dict] = []
    while len(out) < n and any(groups):
        for g in groups:
            if g and len(out) < n:
                out.append(g.pop())
    return out


def build_pairs(
    synth_dir: str | os.PathLike,
    out: str | os.PathLike,
    per_kind: int,
    held_out_out: str | os.PathLike | None = None,
    held_out_clips: int = 0,
    held_out_per_kind: int = 6,
    variant_every: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> PairsSummary:
    """Write `per_kind` pairs of every kind (fewer where the set has fewer) from the clips of
    `synth_dir` into `out`, and from its last `held_out_clips` clips `held_out_per_kind` of every
    kind into `held_out_out`. Every `variant_every`-th clip also gets a sound-only and a
    mute copy (the no-picture and no-sound kinds)."""
    root = Path(synth_dir)
    facts_file = root / "clips.jsonl"
    if not facts_file.is_file():
        raise DataError(f"{synth_dir}: no clips.jsonl; give a folder written by `avllm synth`")
    if per_kind < 1 or variant_every < 1:
        raise DataError("--per-kind and --variant-every must be at least 1")
    facts = [json.loads(line) for line in facts_file.read_text().splitlines() if line.strip()]
    facts = [f for f in facts if not f["heldout"]]  # held-out words stay out of training, as in synth
    if held_out_clips >= len(facts):
        raise DataError(f"--held-out-clips {held_out_clips}: the set has only {len(facts)} training clips")
    train_facts, test_facts = facts[: len(facts) - held_out_clips], facts[len(facts) - held_out_clips :]
    rng = np.random.default_rng(seed)
    written = 0

    def gather(group: list[dict[str, Any]]) -> dict[str, list[dict]]:
        nonlocal written
        by_kind: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for i, f in enumerate(tqdm(group, desc="preference pairs", unit="clip", disable=not progress)):
            variants = i % variant_every == 0
            written += 2 * (variants and f["sound"] != "none")
            for kind, pairs in clip_pairs(f, root, variants).items():
                by_kind[kind] += pairs
        return by_kind

    def write(
        path: str | os.PathLike, by_kind: dict[str, list[dict]], take: Callable[[list[dict]], list[dict]]
    ) -> dict:
        media_root = _media_root(root, Path(path))
        chosen = {kind: take(pairs) for kind, pairs in by_kind.items()}
        records = [p for pairs in chosen.values() for p in pairs]
        records = [records[i] for i in rng.permutation(len(records))]
        for n, r in enumerate(records):
            r["id"] = f"{r['clip']}-{r['kind']}-{n}"
            r["media"] = str(media_root / r["media"])
        write_jsonl(path, records)
        return {kind: len(pairs) for kind, pairs in chosen.items()}

    by_kind = write(out, gather(train_facts), lambda pairs: balanced(pairs, per_kind, rng))
    held_out = 0
    if held_out_out is not None and test_facts:
        held = write(held_out_out, gather(test_facts), lambda pairs: balanced(pairs, held_out_per_kind, rng))
        held_out = sum(held.values())
    return PairsSummary(sum(by_kind.values()), held_out, by_kind, written)


def _media_root(synth_dir: Path, out: Path) -> Path:
    """The synth folder as seen from the output file's folder (media paths are relative to it)."""
    rel = Path(os.path.relpath(synth_dir.resolve(), out.resolve().parent))
    if rel.parts and rel.parts[0] == "..":
        raise DataError(f"--out {out}: write the pairs in or above {synth_dir}, so the clips' paths stay inside")
    return rel
