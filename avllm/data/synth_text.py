"""Questions, answers and descriptions for `avllm synth`, all derived from a clip's facts.

Each question family gives a 4-choice question (the right option's position shuffled by
the clip's own random stream), a grounded full-sentence answer, and a plausible wrong
sentence that contradicts the picture or the sound, as audio-visual hallucinations do.
Probes are yes/no questions in the style of AVHBench; their `kind` names what is probed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .synth_media import COLOURS, SHAPES, SLOT_SECONDS, TONE_SLOTS, WORD_SLOTS

NUMBERS = ("one", "two", "three", "four")
SOUND_LABELS = {"speech": "someone saying a word", "beeps": "beeps", "tone": "a tone", "silence": "silence"}
SOUND_PHRASES = {
    "speech": "with someone saying a word",
    "beeps": "with beeps",
    "tone": "with a tone",
    "silence": "in silence",
}
TONE_LABELS = {
    "low": "a low steady tone",
    "high": "a high steady tone",
    "rising": "a rising tone",
    "falling": "a falling tone",
}
DIRECTIONS = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
SYNC_CHOICES = (
    "yes, a beep comes with the flash",
    "no, the beeps come at other moments",
    "there is no flash",
    "there are no beeps",
)
ABSENT_SOUNDS = (
    ("Is a dog barking?", "a dog is barking", "no dog is barking"),
    ("Is music playing?", "music is playing", "no music is playing"),
    ("Is someone clapping?", "someone is clapping", "nobody is clapping"),
    ("Is a car horn honking?", "a car horn is honking", "no car horn is honking"),
)


@dataclass
class Question:
    family: (
        str  # shape, colour, count, motion, first, last, sound, word, beeps, tone, describe, sync, at-sound; probe-*
    )
    kind: str  # visual, audio, audio-visual, no-audio; for probes modality/what (audio/speech, visual/flash, ...)
    question: str
    choices: list[str]
    answer: str
    sentence: str  # the grounded answer in words
    wrong: str  # a plausible answer that contradicts the picture or the sound
    target: str = ""  # what the wrong answer gets wrong: picture, sound, hallucination, omission
    split: str | None = None


# ----------------------------------------------------------------------------- wording helpers


def plural(word: str, n: int) -> str:
    return word if n == 1 else word + ("es" if word.endswith("s") else "s")


def article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def at_time(slot: float) -> str:
    return f"at about {slot * SLOT_SECONDS + SLOT_SECONDS / 2:.1f} s"


def picture_phrase(f: dict[str, Any], colours: tuple[str, ...] | None = None, swap: bool = False) -> str:
    """'two red triangles' or 'a blue circle, then a yellow cross'."""
    if f["scene"] == "one":
        colour = colours[0] if colours else f["colour"]
        if f["count"] == 1:
            return article(f"{colour} {f['shape']}")
        return f"{NUMBERS[f['count'] - 1]} {colour} {plural(f['shape'], f['count'])}"
    objs = list(f["objects"])
    if colours:
        objs = [{**o, "colour": c} for o, c in zip(objs, colours)]
    if swap:
        objs = objs[::-1]
    return ", then ".join(article(f"{o['colour']} {o['shape']}") for o in objs)


def sound_sentence(f: dict[str, Any]) -> str:
    sound = f["sound"]
    if sound == "speech":
        return f'Someone says the word "{f["word"]}" {at_time(f["word_slot"] + (WORD_SLOTS - 1) / 2)}.'
    if sound == "beeps":
        n = len(f["beep_slots"])
        times = [f"{s * SLOT_SECONDS + SLOT_SECONDS / 2:.1f} s" for s in f["beep_slots"]]
        when = times[0] if n == 1 else ", ".join(times[:-1]) + " and " + times[-1]
        return f"{NUMBERS[n - 1].capitalize()} {plural('beep', n)} {'sounds' if n == 1 else 'sound'}, at {when}."
    if sound == "tone":
        start = f["tone_slot"] * SLOT_SECONDS
        end = start + TONE_SLOTS * SLOT_SECONDS
        return f"{TONE_LABELS[f['tone']].capitalize()} plays from {start:.1f} s to {end:.1f} s."
    if sound == "silence":
        return "There is no sound: the soundtrack is silent."
    return "The clip has no soundtrack at all."


def picture_sentences(f: dict[str, Any]) -> str:
    if f["scene"] == "one":
        n = f["count"]
        text = f"{picture_phrase(f).capitalize()} {'moves' if n == 1 else 'move'} {DIRECTIONS[f['motion']]}."
    else:
        a, b = f["objects"]
        first, then = article(a["colour"] + " " + a["shape"]), article(b["colour"] + " " + b["shape"])
        text = f"{first.capitalize()} is shown first, then {then}."
    if f["flash_slot"] is None:
        return text + " The screen never flashes."
    return text + f" The screen flashes white once, {at_time(f['flash_slot'])}."


def describe(f: dict[str, Any]) -> str:
    """The whole clip in a few sentences: what is seen, what is heard, and how they line up."""
    text = picture_sentences(f) + " " + sound_sentence(f)
    if f["sound"] == "beeps" and f["flash_slot"] is not None:
        text += " One beep comes exactly with the flash." if f["sync"] else " None of the beeps comes with the flash."
    return text


def wrong_description(f: dict[str, Any], rng: np.random.Generator) -> tuple[str, str]:
    """A description that gets the sound (or, half the time, the picture) wrong, and which it got wrong."""
    if rng.random() < 0.5:
        sound = _other(rng, ["speech", "beeps", "tone", "silence"], sound_kind(f))
        fake = {
            **f,
            "sound": sound,
            "word": _other(rng, ["apple", "guitar", "rocket"], f.get("word", "")),
            "word_slot": int(rng.integers(7)),
            "beep_slots": [1, 4, 6][: int(rng.integers(1, 4))],
            "tone": _other(rng, list(TONE_LABELS), f.get("tone", "")),
            "tone_slot": int(rng.integers(5)),
        }
        return picture_sentences(f) + " " + sound_sentence(fake), "sound"
    if f["scene"] == "one":
        fake = {**f, "colour": _other(rng, list(COLOURS), f["colour"])}
    else:
        fake = {**f, "objects": f["objects"][::-1]}
    return picture_sentences(fake) + " " + sound_sentence(f), "picture"


def sound_kind(f: dict[str, Any]) -> str:
    return "silence" if f["sound"] == "none" else f["sound"]


# ----------------------------------------------------------------------------- multiple-choice families


def _choices(
    rng: np.random.Generator, answer: str, pool: list[str], must: tuple[str, ...] = (), k: int = 4
) -> list[str]:
    others = [p for p in pool if p != answer and p not in must]
    picked = [answer, *[m for m in must if m != answer]]
    picked += [others[i] for i in rng.permutation(len(others))[: k - len(picked)]]
    return [picked[i] for i in rng.permutation(len(picked))]


def _mc(
    rng: np.random.Generator,
    family: str,
    kind: str,
    question: str,
    answer: str,
    pool: Sequence[str],
    sentence: str,
    wrong_answer: str,
    wrong_sentence: str,
    target: str,
    must: Sequence[str] = (),
    split: str | None = None,
):
    return Question(
        family,
        kind,
        question,
        _choices(rng, answer, pool, must),
        answer,
        sentence,
        wrong_sentence.format(x=wrong_answer),
        target,
        split,
    )


def _other(rng: np.random.Generator, pool: list[str] | tuple[str, ...], not_this: str) -> str:
    rest = [p for p in pool if p != not_this]
    return rest[int(rng.integers(len(rest)))]


def visual_questions(f: dict[str, Any], rng: np.random.Generator) -> list[Question]:
    out = []
    if f["scene"] == "one":
        n, shape, colour = f["count"], f["shape"], f["colour"]
        things = plural("shape", n)
        out.append(
            _mc(
                rng,
                "shape",
                "visual",
                "What shape is on the screen?",
                shape,
                list(SHAPES),
                f"The {things} {'is' if n == 1 else 'are'} {article(shape) if n == 1 else plural(shape, n)}.",
                _other(rng, SHAPES, shape),
                f"The {things} {'is a' if n == 1 else 'are'} {{x}}{'' if n == 1 else 's'}.",
                "picture",
            )
        )
        out.append(
            _mc(
                rng,
                "colour",
                "visual",
                f"What colour {'is the shape' if n == 1 else 'are the shapes'}?",
                colour,
                list(COLOURS),
                f"{'It is' if n == 1 else 'They are'} {colour}.",
                _other(rng, list(COLOURS), colour),
                f"{'It is' if n == 1 else 'They are'} {{x}}.",
                "picture",
            )
        )
        out.append(
            _mc(
                rng,
                "count",
                "visual",
                "How many shapes are on the screen?",
                NUMBERS[n - 1],
                list(NUMBERS),
                f"There {'is' if n == 1 else 'are'} {NUMBERS[n - 1]} {plural(shape, n)}.",
                _other(rng, NUMBERS[:3], NUMBERS[n - 1]),
                f"There are {{x}} {plural(shape, 2)}.",
                "picture",
            )
        )
        out.append(
            _mc(
                rng,
                "motion",
                "visual",
                f"Which way {'does the shape' if n == 1 else 'do the shapes'} move?",
                f["motion"],
                list(DIRECTIONS),
                f"{'It moves' if n == 1 else 'They move'} {DIRECTIONS[f['motion']]}.",
                DIRECTIONS[_other(rng, list(DIRECTIONS), f["motion"])],
                f"{'It moves' if n == 1 else 'They move'} {{x}}.",
                "picture",
            )
        )
    else:
        a, b = (o["shape"] for o in f["objects"])
        out.append(
            _mc(
                rng,
                "first",
                "visual",
                "Which shape appears first?",
                a,
                list(SHAPES),
                f"The {a} appears first, then the {b}.",
                b,
                "The {x} appears first.",
                "picture",
                must=(b,),
            )
        )
        out.append(
            _mc(
                rng,
                "last",
                "visual",
                "Which shape appears last?",
                b,
                list(SHAPES),
                f"The {b} appears last, after the {a}.",
                a,
                "The {x} appears last.",
                "picture",
                must=(a,),
            )
        )
    return out


def audio_questions(f: dict[str, Any], rng: np.random.Generator, vocab: list[str]) -> list[Question]:
    sound = sound_kind(f)
    kind = "no-audio" if f["sound"] == "none" else "audio"
    wrong_sound = _other(rng, list(SOUND_LABELS), sound)
    out = [
        _mc(
            rng,
            "sound",
            kind,
            "What do you hear?",
            SOUND_LABELS[sound],
            list(SOUND_LABELS.values()),
            sound_sentence(f),
            SOUND_LABELS[wrong_sound],
            "I hear {x}.",
            "sound",
        )
    ]
    if f["sound"] == "speech":
        split = "heldout_vocab" if f["heldout"] else None
        out.append(
            _mc(
                rng,
                "word",
                "audio",
                "What word is spoken?",
                f["word"],
                vocab if not f["heldout"] else [f["word"], *vocab],
                f'The word spoken is "{f["word"]}".',
                _other(rng, vocab, f["word"]),
                'The word spoken is "{x}".',
                "sound",
                split=split,
            )
        )
    elif f["sound"] == "beeps":
        n = len(f["beep_slots"])
        out.append(
            _mc(
                rng,
                "beeps",
                "audio",
                "How many beeps do you hear?",
                NUMBERS[n - 1],
                list(NUMBERS),
                f"I hear {NUMBERS[n - 1]} {plural('beep', n)}.",
                _other(rng, NUMBERS, NUMBERS[n - 1]),
                "I hear {x} beeps.",
                "sound",
            )
        )
    elif f["sound"] == "tone":
        out.append(
            _mc(
                rng,
                "tone",
                "audio",
                "What kind of tone do you hear?",
                TONE_LABELS[f["tone"]],
                list(TONE_LABELS.values()),
                f"I hear {TONE_LABELS[f['tone']]}.",
                TONE_LABELS[_other(rng, list(TONE_LABELS), f["tone"])],
                "I hear {x}.",
                "sound",
            )
        )
    return out


def av_questions(f: dict[str, Any], rng: np.random.Generator) -> list[Question]:
    sound = sound_kind(f)
    right = f"{picture_phrase(f)}, {SOUND_PHRASES[sound]}"
    other_sound = SOUND_PHRASES[_other(rng, list(SOUND_PHRASES), sound)]
    if f["scene"] == "one":
        wrong_pic = picture_phrase(f, colours=(_other(rng, list(COLOURS), f["colour"]),))
    else:
        wrong_pic = picture_phrase(f, swap=True)
    options = [
        right,
        f"{picture_phrase(f)}, {other_sound}",
        f"{wrong_pic}, {SOUND_PHRASES[sound]}",
        f"{wrong_pic}, {other_sound}",
    ]
    wrong, target = wrong_description(f, rng)
    out = [
        Question(
            "describe",
            "audio-visual",
            "What do you see and hear?",
            [options[i] for i in rng.permutation(4)],
            right,
            describe(f),
            wrong,
            target,
        )
    ]
    if f["sound"] == "beeps" and f["flash_slot"] is not None:
        answer = SYNC_CHOICES[0] if f["sync"] else SYNC_CHOICES[1]
        sentence = (
            "Yes: the screen flashes " + at_time(f["flash_slot"]) + " and a beep sounds at that moment."
            if f["sync"]
            else "No: the screen flashes " + at_time(f["flash_slot"]) + ", but the beeps come at other moments."
        )
        wrong = "No, the beeps come at other moments." if f["sync"] else "Yes, a beep comes exactly with the flash."
        out.append(
            Question(
                "sync",
                "audio-visual",
                "Does a beep sound at the moment the screen flashes?",
                [SYNC_CHOICES[i] for i in rng.permutation(4)],
                answer,
                sentence,
                wrong,
                "sound",
            )
        )
    if f["scene"] == "two" and f["sound"] in ("speech", "beeps"):
        half = f["sound_half"]
        shapes = [o["shape"] for o in f["objects"]]
        during = "while the word is spoken" if f["sound"] == "speech" else "while the beeps sound"
        out.append(
            _mc(
                rng,
                "at-sound",
                "audio-visual",
                f"Which shape is on the screen {during}?",
                shapes[half],
                list(SHAPES),
                f"The {shapes[half]} is on the screen {during}.",
                shapes[1 - half],
                f"The {{x}} is on the screen {during}.",
                "picture",
                must=(shapes[1 - half],),
            )
        )
    return out


def mc_questions(f: dict[str, Any], rng: np.random.Generator, vocab: list[str]) -> list[Question]:
    return visual_questions(f, rng) + audio_questions(f, rng, vocab) + av_questions(f, rng)


# ----------------------------------------------------------------------------- yes/no probes


def _probe(kind: str, question: str, truth: bool, true_text: str, false_text: str, seen: str = "") -> Question:
    """A yes/no probe: the grounded answer explains itself; the wrong one is the bare opposite claim.

    For a probe whose true answer is no, the wrong answer is a hallucination ("Yes, a dog is barking");
    for one whose answer is yes, an omission ("No, nobody is speaking" while someone speaks). `seen`
    opens both: what is on the screen, said before deciding whether something named is there, since
    the starter compares a named object with words it has just said, not with the picture itself.
    """
    sentence = seen + ("Yes, " if truth else "No, ") + true_text
    wrong = seen + ("No, " if truth else "Yes, ") + false_text
    target = "omission" if truth else "hallucination"
    return Question(
        f"probe-{kind.split('/')[1]}", kind, question, ["yes", "no"], "yes" if truth else "no", sentence, wrong, target
    )


def probe_candidates(f: dict[str, Any], rng: np.random.Generator) -> list[Question]:
    """Every yes/no probe that fits the clip, with true answers yes and no."""
    heard = sound_sentence(f)
    heard_lc = heard[0].lower() + heard[1:]
    sound, flash = f["sound"], f["flash_slot"]
    speech, beeps, silent = sound == "speech", sound == "beeps", sound in ("silence", "none")
    out = [
        _probe(
            "audio/speech",
            "Is someone speaking?",
            speech,
            f'someone says the word "{f.get("word")}".' if speech else f"nobody speaks; {heard_lc}",
            "nobody is speaking." if speech else "someone is speaking.",
        ),
        _probe(
            "audio/beeps",
            "Do you hear any beeps?",
            beeps,
            heard_lc if beeps else f"there are no beeps; {heard_lc}",
            "there are no beeps." if beeps else "I hear beeps.",
        ),
        _probe(
            "audio/silence",
            "Is the clip silent?",
            silent,
            heard_lc if silent else f"there is sound: {heard_lc}",
            "there is sound." if silent else "the clip is silent.",
        ),
    ]
    question, present, absent = ABSENT_SOUNDS[int(rng.integers(len(ABSENT_SOUNDS)))]
    out.append(_probe("audio/absent", question, False, f"{absent}; {heard_lc}", f"{present}."))
    out.append(
        _probe(
            "visual/flash",
            "Does the screen flash?",
            flash is not None,
            f"the screen flashes white {at_time(flash)}."
            if flash is not None
            else "the screen never flashes; the background stays black.",
            "the screen never flashes." if flash is not None else "the screen flashes.",
        )
    )
    objs = [{"shape": f["shape"], "colour": f["colour"]}] if f["scene"] == "one" else f["objects"]
    seen = f"I see {picture_phrase(f)}. "
    real = objs[int(rng.integers(len(objs)))]
    name = f"{real['colour']} {real['shape']}"
    out.append(
        _probe(
            "visual/object",
            f"Is there {article(name)} on the screen?",
            True,
            f"there is {article(name)}.",
            f"there is no {name}.",
            seen,
        )
    )
    fake = dict(real)
    if rng.random() < 0.5:
        fake["colour"] = _other(
            rng, [c for c in COLOURS if all(c != o["colour"] for o in objs)] + [real["colour"]], real["colour"]
        )
    else:
        fake["shape"] = _other(
            rng, [s for s in SHAPES if all(s != o["shape"] for o in objs)] + [real["shape"]], real["shape"]
        )
    fake_name = f"{fake['colour']} {fake['shape']}"
    out.append(
        _probe(
            "visual/object",
            f"Is there {article(fake_name)} on the screen?",
            False,
            f"there is no {fake_name}.",
            f"there is {article(fake_name)}.",
            seen,
        )
    )
    if beeps and flash is not None:
        out.append(
            _probe(
                "audio-visual/sync",
                "Is the beep in time with the flash?",
                f["sync"],
                f"a beep sounds exactly when the screen flashes, {at_time(flash)}."
                if f["sync"]
                else f"the screen flashes {at_time(flash)}, but the beeps come at other moments.",
                "the beeps and the flash do not line up." if f["sync"] else "a beep sounds exactly with the flash.",
            )
        )
    if f["scene"] == "two" and speech:
        shapes = [o["shape"] for o in f["objects"]]
        asked = int(rng.integers(2))
        truth = asked == f["sound_half"]
        out.append(
            _probe(
                "audio-visual/speech-shape",
                f"Is the word spoken while the {shapes[asked]} is on the screen?",
                truth,
                f"the word is spoken while the {shapes[asked]} is shown."
                if truth
                else f"the word is spoken while the {shapes[f['sound_half']]} is shown, not the {shapes[asked]}.",
                f"the word is spoken while the {shapes[1 - asked]} is shown."
                if truth
                else f"the word is spoken while the {shapes[asked]} is shown.",
            )
        )
    return out


def pick_probes(candidates: list[Question], rng: np.random.Generator, per_answer: int = 1) -> list[Question]:
    """`per_answer` probes answered yes and as many answered no, so yes and no stay balanced."""
    out = []
    for answer in ("yes", "no"):
        pool = [q for q in candidates if q.answer == answer]
        out += [pool[i] for i in sorted(rng.permutation(len(pool))[:per_answer])]
    return out
