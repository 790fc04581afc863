"""`avllm synth`: short clips whose every fact is known, and the instruction, preference, QA
and probe files that ask about them.

A clip (4 s, 224x224 at 8 fps, 16 kHz mono AAC, in mp4) shows a group of 1-3 shapes of one
colour moving one way, or two objects one after the other; the screen may flash white for
one 0.5 s slot. Its sound is a spoken word (espeak-ng), 1-4 beeps, a tone (low, high,
rising, falling), silence, or no audio track at all; beeps may or may not line up with the
flash. Facts come from a random stream seeded by (seed, clip index) only, so a set is the
same on every machine and run, and clip ids carry the seed (`s7-00012`): sets made with
different seeds never share a clip. Use one seed for training and another for testing.

A few spoken clips (`--heldout-frac`) use words from a held-out vocabulary. They appear
only in qa.jsonl and probes.jsonl (QA items about the word carry `split: heldout_vocab`,
scored apart by `avllm eval`), never in instructions.jsonl or preferences.jsonl, so no
training set made by this tool ever speaks them.

Files written in DIR: clips/*.mp4, clips.jsonl (the facts), instructions.jsonl,
sessions.jsonl, preferences.jsonl, qa.jsonl, probes.jsonl, synth.json (settings and counts), and
the starter recipe's training files chosen from them (see `recipe_mixes`): align.jsonl,
instruct-mix.jsonl, yes-no-mix.jsonl and dpo-pairs.jsonl.

sessions.jsonl holds the multiple-choice records of instructions.jsonl regrouped for training:
all of a clip's questions as one chat, in SESSION_ORDERS orders (see `sessions`). The
clip's tokens are then paid for once per seven answers instead of once per answer, so a CPU
trains on far more answers in the same time.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError
from ..prompt import VIDEO_TOKEN, with_video
from .formats import decision, qa_prompt, write_jsonl
from .synth_media import (
    COLOURS,
    MOTIONS,
    SECONDS,
    SHAPES,
    SLOTS,
    SPEEDS,
    TONE_SLOTS,
    TONES,
    VOICES,
    WORD_SLOTS,
    render_clip,
)
from .synth_text import Question, describe, mc_questions, pick_probes, probe_candidates

VERSION = 1
VOCAB = ("apple", "banana", "guitar", "window", "rocket", "pencil", "tiger", "coffee")  # spoken in training
HELDOUT_VOCAB = ("dragon", "ladder", "violin", "orange")  # only ever spoken in held-out test items
SOUNDS = ("speech", "beeps", "tone", "silence")
SOUND_P = (0.3, 0.3, 0.2, 0.2)
OPEN_FOLLOW_UPS = 2  # open questions after the description in the multi-turn conversation
PROBES_PER_ANSWER = 1  # probes.jsonl: one yes and one no per clip
TRAIN_PROBES_PER_ANSWER = 2  # instructions.jsonl: up to two of each
SESSION_ORDERS = 3  # sessions.jsonl: each clip's multiple-choice questions in this many orders
DPO_PROBE_EVERY = 3  # dpo-pairs.jsonl: every third hallucination pair, and every third omission pair
DPO_OTHER_EVERY = 15  # and every fifteenth of the pairs about content


@dataclass
class SynthSummary:
    out: Path
    seed: int
    clips: int
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


# ----------------------------------------------------------------------------- facts


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    value = options[int(rng.integers(len(options)))]
    return value.item() if isinstance(value, np.generic) else value


def _spaced_slots(rng: np.random.Generator, n: int, allowed: list[int]) -> list[int]:
    """n slots from `allowed` with no two adjacent (each beep stands alone)."""
    while True:
        slots = sorted(int(s) for s in rng.choice(allowed, size=n, replace=False))
        if all(b - a > 1 for a, b in zip(slots, slots[1:])):
            return slots


def sample_facts(seed: int, index: int, heldout_frac: float = 0.1) -> dict[str, Any]:
    """The facts of clip `index` of a set made with `seed`; nothing else influences them."""
    rng = np.random.default_rng([seed, index, VERSION])
    cid = f"s{seed}-{index:05d}"
    f: dict[str, Any] = {
        "id": cid,
        "media": f"clips/{cid}.mp4",
        "seed": seed,
        "index": index,
        "duration": SECONDS,
        "slots": SLOTS,
        "scene": "two" if rng.random() < 0.3 else "one",
        "jitter": [int(rng.integers(-10, 11)), int(rng.integers(-10, 11))],
    }
    if f["scene"] == "one":
        f.update(
            shape=_pick(rng, SHAPES),
            colour=_pick(rng, list(COLOURS)),
            count=int(rng.integers(1, 4)),
            motion=_pick(rng, list(MOTIONS)),
        )
    else:
        shapes = rng.choice(len(SHAPES), 2, replace=False)
        colours = rng.choice(len(COLOURS), 2, replace=False)
        f["objects"] = [{"shape": SHAPES[s], "colour": list(COLOURS)[c]} for s, c in zip(shapes, colours)]
    sound = str(rng.choice(SOUNDS, p=SOUND_P))
    if sound == "silence" and rng.random() < 0.5:
        sound = "none"  # no audio track at all
    f["sound"] = sound
    f["flash_slot"] = int(rng.integers(SLOTS)) if rng.random() < 0.5 else None
    half = int(rng.integers(2))
    f["heldout"] = False
    if sound == "speech":
        f["heldout"] = bool(rng.random() < heldout_frac)
        f["word"] = _pick(rng, HELDOUT_VOCAB if f["heldout"] else VOCAB)
        f["voice"], f["speed"] = _pick(rng, VOICES), _pick(rng, SPEEDS)
        if f["scene"] == "one":
            f["word_slot"] = int(rng.integers(SLOTS - WORD_SLOTS + 1))
        else:
            f["sound_half"] = half
            f["word_slot"] = half * SLOTS // 2 + int(rng.integers(SLOTS // 2 - WORD_SLOTS + 1))
    elif sound == "beeps":
        if f["scene"] == "one":
            f["beep_slots"] = _spaced_slots(rng, int(rng.integers(1, 5)), list(range(SLOTS)))
        else:
            f["sound_half"] = half
            f["beep_slots"] = _spaced_slots(
                rng, int(rng.integers(1, 3)), list(range(half * SLOTS // 2, (half + 1) * SLOTS // 2))
            )
        if f["flash_slot"] is not None:  # beep at the flash or not, half and half
            f["sync"] = bool(rng.random() < 0.5)
            others = [s for s in range(SLOTS) if s not in f["beep_slots"]]
            f["flash_slot"] = _pick(rng, f["beep_slots"] if f["sync"] else others)
    elif sound == "tone":
        f["tone"] = _pick(rng, list(TONES))
        f["tone_slot"] = int(rng.integers(SLOTS - TONE_SLOTS + 1))
    return f


# ----------------------------------------------------------------------------- records


def _user(question: str) -> dict[str, str]:
    return {"role": "user", "content": with_video(question)}


def _qa(f: dict[str, Any], q: Question, n: int, prefix: str = "q") -> dict[str, Any]:
    record = {
        "id": f"{f['id']}-{prefix}{n}",
        "media": f["media"],
        "question": q.question,
        "choices": q.choices,
        "answer": q.answer,
        "kind": q.kind,
        "family": q.family,
        "clip": f["id"],
    }
    if q.split:
        record["split"] = q.split
    return record


def clip_records(f: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """All records about one clip, by file; a held-out-vocabulary clip gets no training records."""
    rng = np.random.default_rng([f["seed"], f["index"], VERSION, 1])
    mcs = mc_questions(f, rng, list(VOCAB))
    candidates = probe_candidates(f, rng)
    probes = pick_probes(candidates, rng, PROBES_PER_ANSWER)
    out = {
        "qa": [_qa(f, q, i) for i, q in enumerate(mcs)],
        "probes": [_qa(f, q, i, "p") for i, q in enumerate(probes)],
        "instructions": [],
        "sessions": [],
        "preferences": [],
    }
    if f["heldout"]:
        return out
    ins, pref = out["instructions"], out["preferences"]
    base = {"media": f["media"], "clip": f["id"]}
    for i, q in enumerate(mcs):  # the eval prompt exactly, answered with the option's text
        ins.append(
            {
                "id": f"{f['id']}-mc{i}",
                **base,
                "style": "choice",
                "family": q.family,
                "kind": q.kind,
                "conversations": [_user(qa_prompt(q.question, q.choices)), {"role": "assistant", "content": q.answer}],
            }
        )
    train_probes = pick_probes(candidates, rng, TRAIN_PROBES_PER_ANSWER)
    for i, q in enumerate(train_probes):
        ins.append(
            {
                "id": f"{f['id']}-yn{i}",
                **base,
                "style": "yes-no",
                "family": q.family,
                "kind": q.kind,
                "conversations": [_user(q.question), {"role": "assistant", "content": q.sentence}],
            }
        )
    follow = [mcs[i] for i in rng.permutation(len(mcs)) if mcs[i].family != "describe"][:OPEN_FOLLOW_UPS]
    turns = [_user("Describe what you see and hear."), {"role": "assistant", "content": describe(f)}]
    for q in follow:
        turns += [{"role": "user", "content": q.question}, {"role": "assistant", "content": q.sentence}]
    ins.append(
        {
            "id": f"{f['id']}-open",
            **base,
            "style": "open",
            "family": "describe+" + "+".join(q.family for q in follow),
            "kind": "audio-visual",
            "conversations": turns,
        }
    )
    # Preferences: the grounded answer against one that contradicts the sound or the picture; a
    # hallucinated "Yes" against a grounded "No" for a probe whose answer is no; and, as many, a
    # grounded "Yes" against a denial of what is there, so that DPO cannot win by saying "No".
    by_target = {t: [q for q in mcs if q.target == t and q.family != "describe"] for t in ("sound", "picture")}
    chosen_qs = [qs[int(rng.integers(len(qs)))] for qs in by_target.values() if qs]
    chosen_qs.append(next(q for q in mcs if q.family == "describe"))
    no_probes = [q for q in candidates if q.answer == "no"]
    chosen_qs.append(no_probes[int(rng.integers(len(no_probes)))])
    yes_probes = [q for q in candidates if q.answer == "yes"]
    chosen_qs.append(yes_probes[int(rng.integers(len(yes_probes)))])
    for i, q in enumerate(chosen_qs):
        pref.append(
            {
                "id": f"{f['id']}-pref{i}",
                **base,
                "target": q.target,
                "family": q.family,
                "kind": q.kind,
                "prompt": [_user(q.question if q.family != "describe" else "Describe what you see and hear.")],
                "chosen": q.sentence,
                "rejected": q.wrong,
            }
        )
    out["sessions"] = sessions(f["id"], ins, rng)
    return out


def sessions(clip_id: str, records: list[dict[str, Any]], rng: np.random.Generator) -> list[dict[str, Any]]:
    """The clip's choice questions as SESSION_ORDERS chats, each in a new order.

    The eval asks each question alone, its text just before the clip, so every session puts a
    different kind of question first: a yes/no probe (the only yes/no question the instruct
    stage sees; without one the starter answers "yes" to most things that are absent), then the
    description, then a plain one. The description otherwise comes last: it names the count,
    colour, shape and sound and would give them away (trained only there, the model learns to
    copy the earlier answers rather than to look, and cannot answer it asked alone)."""
    words = [r for r in records if r["style"] == "choice" and r["family"] != "describe"]
    described = [r for r in records if r["family"] == "describe"]
    probes = [r for r in records if r["style"] == "yes-no"]
    out = []
    for k in range(SESSION_ORDERS):
        shuffled = [words[i] for i in rng.permutation(len(words))]
        first = [probes[int(rng.integers(len(probes)))]] if k == 0 and probes else described if k == 1 else []
        out.append(session(first + shuffled + [r for r in described if r not in first], f"{clip_id}-session{k}"))
    return out


def session(records: list[dict[str, Any]], record_id: str) -> dict[str, Any]:
    """One chat asking every question of these single-turn records about one clip, in their order;
    the clip is placed in the first question only."""
    turns = []
    for r in records:
        question, answer = r["conversations"]
        text = question["content"] if not turns else question["content"].replace(f"\n{VIDEO_TOKEN}", "")
        turns += [{"role": "user", "content": text}, answer]
    return {
        "id": record_id,
        "media": records[0]["media"],
        "clip": records[0]["clip"],
        "style": "session",
        "conversations": turns,
    }


def balanced_yes_no(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kind, the first records answered yes and as many answered no, in their order; a kind
    answered one way only (sounds no clip makes) gives half of its records.

    The one probe each clip's sessions hold is too little for a question form to be read from the
    clip: the model learns the form's usual answer instead (docs/experiments.md)."""
    by_kind: dict[str, tuple[list[int], list[int]]] = {}
    for i, r in enumerate(records):
        yes, no = by_kind.setdefault(r["kind"], ([], []))
        (yes if decision(r["conversations"][-1]["content"]) == "yes" else no).append(i)
    keep: set[int] = set()
    for yes, no in by_kind.values():
        if yes and no:
            n = min(len(yes), len(no))
            keep.update(yes[:n] + no[:n])
        else:
            one_way = yes or no
            keep.update(one_way[: len(one_way) // 2])
    return [r for i, r in enumerate(records) if i in keep]


def _render(job: tuple[dict[str, Any], str]) -> dict[str, Any]:
    facts, out = job
    render_clip(facts, Path(out) / facts["media"])
    return clip_records(facts)


# ----------------------------------------------------------------------------- the recipe's files


def recipe_mixes(files: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The training files of the starter recipe (avllm/presets/train/starter-*.yaml), by name.

    align: the multiple-choice records alone, one short answer each about one picture or sound
    fact, which is what the projectors must learn to carry. instruct-mix: the sessions, then the
    open chats (a description in sentences, then follow-ups without options), which keep
    free-form questions answered in sentences. dpo-pairs: a share of the hallucination pairs (a
    false "Yes, a dog is barking" against a grounded "No, ..."), as many omissions (a false "No"
    about what is there against a grounded "Yes, ..."), and a few pairs about content (a wrong
    colour, count or sound), which keep the answers about what is there from drifting; one epoch
    of the DPO recipe covers them all, its reference pass included."""
    instructions = files["instructions"]
    by_target: dict[str, list[dict[str, Any]]] = {}
    for pair in files["preferences"]:
        by_target.setdefault(pair["target"], []).append(pair)
    probes = ("hallucination", "omission")
    content = [pair for target, pairs in by_target.items() if target not in probes for pair in pairs]
    return {
        "align": [r for r in instructions if r["style"] == "choice"],
        "instruct-mix": files["sessions"] + [r for r in instructions if r["style"] == "open"],
        "yes-no-mix": balanced_yes_no([r for r in instructions if r["style"] == "yes-no"]),
        "dpo-pairs": [pair for t in probes for pair in by_target.get(t, [])[::DPO_PROBE_EVERY]]
        + content[::DPO_OTHER_EVERY],
    }


# ----------------------------------------------------------------------------- the whole set


def synthesize(
    out: str | Path, n: int, seed: int, workers: int = 2, heldout_frac: float = 0.1, progress: bool = True
) -> SynthSummary:
    """Write n clips and their record files into `out` (see the module docstring)."""
    if n <= 0:
        raise DataError(f"--n {n}: give a positive number of clips")
    if not 0 <= heldout_frac <= 1:
        raise DataError(f"--heldout-frac {heldout_frac}: must lie between 0 and 1")
    start = time.perf_counter()
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    facts = [sample_facts(seed, i, heldout_frac) for i in range(n)]
    jobs = [(f, str(out)) for f in facts]
    bar = tqdm(total=n, desc="synth clips", unit="clip", disable=not progress)
    results: list[dict[str, list]] = []
    try:
        if workers <= 1:
            for job in jobs:
                results.append(_render(job))
                bar.update()
        else:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for result in pool.imap(_render, jobs, chunksize=4):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    files = {
        name: [r for result in results for r in result[name]]
        for name in ("instructions", "sessions", "preferences", "qa", "probes")
    }
    counts = {"clips": write_jsonl(out / "clips.jsonl", facts)}
    for name, records in {**files, **recipe_mixes(files)}.items():
        counts[name] = write_jsonl(out / f"{name}.jsonl", records)
    summary = SynthSummary(out, seed, n, counts, time.perf_counter() - start)
    stats = {
        "version": VERSION,
        "seed": seed,
        "n": n,
        "heldout_frac": heldout_frac,
        "vocab": list(VOCAB),
        "heldout_vocab": list(HELDOUT_VOCAB),
        "counts": counts,
        "qa_by_kind": dict(Counter(r["kind"] for r in files["qa"])),
        "probes_by_answer": dict(Counter(r["answer"] for r in files["probes"])),
        "heldout_clips": sum(f["heldout"] for f in facts),
    }
    (out / "synth.json").write_text(json.dumps(stats, indent=2) + "\n")
    return summary
