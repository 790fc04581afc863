"""`avllm synth`: deterministic sets whose clips show and sound the way their facts say."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from avllm.config import load_train_config
from avllm.data import formats
from avllm.data.formats import decision
from avllm.data.synth import HELDOUT_VOCAB, SESSION_ORDERS, VOCAB, clip_records, sample_facts, synthesize
from avllm.data.synth_media import COLOURS, FLASH, RATE, SLOT_SECONDS, render_clip
from avllm.media import load_clip

FILES = ("clips.jsonl", "instructions.jsonl", "sessions.jsonl", "preferences.jsonl", "qa.jsonl", "probes.jsonl")
PROBE_TARGETS = ("hallucination", "omission")


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "synth.json"
    }


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root / "a", 10, seed=5, workers=1, progress=False)
    synthesize(root / "b", 10, seed=5, workers=2, progress=False)
    synthesize(root / "c", 10, seed=6, workers=1, progress=False)
    return root


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_gives_the_same_bytes_and_other_seeds_share_no_clip(sets):
    a, b = digest(sets / "a"), digest(sets / "b")
    assert a == b and len([k for k in a if k.endswith(".mp4")]) == 10
    c = digest(sets / "c")
    assert not {k for k in a if k.endswith(".mp4")} & {k for k in c if k.endswith(".mp4")}
    ids_a = {r["id"] for r in read(sets / "a" / "clips.jsonl")}
    ids_c = {r["id"] for r in read(sets / "c" / "clips.jsonl")}
    assert not ids_a & ids_c and all(i.startswith("s5-") for i in ids_a)
    summary = json.loads((sets / "a" / "synth.json").read_text())
    assert summary["seed"] == 5 and summary["counts"]["clips"] == 10


def test_every_written_file_passes_validation(sets):
    for name, fmt in (
        ("instructions", "instruction"),
        ("sessions", "instruction"),
        ("preferences", "preference"),
        ("qa", "qa"),
        ("probes", "qa"),
        ("align", "instruction"),
        ("instruct-mix", "instruction"),
        ("yes-no-mix", "instruction"),
        ("dpo-pairs", "preference"),
    ):
        records = formats.load(sets / "a" / f"{name}.jsonl", fmt)
        assert records, name
        assert all(r.media.is_file() for r in records)


def test_synth_writes_the_files_the_starter_recipes_train_on(sets):
    """align: the choice records; instruct-mix: the sessions, then the open chats; dpo-pairs: every
    third hallucination pair, every third omission pair, then every fifteenth of the others."""
    written = {name: read(sets / "a" / f"{name}.jsonl") for name in ("instructions", "sessions", "preferences")}
    for recipe in ("starter-align", "starter-instruct"):  # starter-dpo reads `avllm data pairs` (test_prefs.py)
        data = Path(load_train_config(recipe).data)
        assert data.parent == Path("runs/synth/train") and (sets / "a" / data.name).is_file()
    instructions = written["instructions"]
    assert read(sets / "a" / "align.jsonl") == [r for r in instructions if r["style"] == "choice"]
    open_chats = [r for r in instructions if r["style"] == "open"]
    assert open_chats and read(sets / "a" / "instruct-mix.jsonl") == written["sessions"] + open_chats
    yes_no = [r for r in instructions if r["style"] == "yes-no"]
    mix = read(sets / "a" / "yes-no-mix.jsonl")
    assert mix == [r for r in yes_no if r in mix]  # in their order
    assert {r["kind"] for r in mix} == {r["kind"] for r in yes_no}
    for kind in {r["kind"] for r in yes_no}:
        asked = [decision(r["conversations"][-1]["content"]) for r in yes_no if r["kind"] == kind]
        said = [decision(r["conversations"][-1]["content"]) for r in mix if r["kind"] == kind]
        if set(asked) == {"yes", "no"}:
            assert said.count("yes") == said.count("no") == min(asked.count("yes"), asked.count("no")), kind
        else:  # answered one way only (sounds no clip makes): half of them
            assert said == asked[: len(asked) // 2], kind
    pairs, prefs = read(sets / "a" / "dpo-pairs.jsonl"), written["preferences"]
    probe_pairs = [p for p in pairs if p["target"] in PROBE_TARGETS]
    assert pairs[: len(probe_pairs)] == probe_pairs  # the probe pairs first
    for target in PROBE_TARGETS:
        assert [p for p in pairs if p["target"] == target] == [p for p in prefs if p["target"] == target][::3]
    content = [p for p in prefs if p["target"] not in PROBE_TARGETS]
    kept = pairs[len(probe_pairs) :]
    assert kept and len(kept) == -(-len(content) // 15) and all(p in content for p in kept)


def test_clips_show_and_sound_their_facts(tmp_path):
    facts = {
        "scene": "one",
        "shape": "square",
        "colour": "blue",
        "count": 1,
        "motion": "right",
        "flash_slot": 2,
        "sound": "beeps",
        "beep_slots": [2, 5],
        "jitter": [0, 0],
    }
    render_clip(facts, tmp_path / "beeps.mp4")
    clip = load_clip(tmp_path / "beeps.mp4")
    assert clip.frames.shape == (8, 224, 224, 3) and abs(clip.duration - 4.0) < 0.1
    corner = clip.frames[:, 5, 5].astype(int)  # the background: white only in the flash slot
    assert (corner[2] > FLASH - 20).all() and (np.delete(corner, 2, axis=0) < 20).all()
    centre = clip.frames[0, 112, 112 - 40].astype(int)  # the square starts left of centre and moves right
    assert np.abs(centre - COLOURS["blue"]).max() < 40
    assert np.abs(clip.frames[7, 112, 112 + 40].astype(int) - COLOURS["blue"]).max() < 40
    slots = np.abs(clip.audio[: 8 * int(SLOT_SECONDS * RATE)]).reshape(8, -1).max(axis=1)
    assert (slots[[2, 5]] > 0.3).all() and (np.delete(slots, [2, 5]) < 0.05).all()

    two = {
        "scene": "two",
        "objects": [{"shape": "circle", "colour": "red"}, {"shape": "cross", "colour": "green"}],
        "flash_slot": None,
        "sound": "speech",
        "word": "apple",
        "voice": "en-us",
        "speed": 150,
        "word_slot": 4,
        "sound_half": 1,
        "jitter": [0, 0],
    }
    render_clip(two, tmp_path / "word.mp4")
    clip = load_clip(tmp_path / "word.mp4")
    assert np.abs(clip.frames[1, 112, 112].astype(int) - COLOURS["red"]).max() < 40
    assert np.abs(clip.frames[6, 112, 112].astype(int) - COLOURS["green"]).max() < 40
    loud = np.abs(clip.audio[: 4 * RATE]).reshape(8, -1).max(axis=1)
    assert loud[:4].max() < 0.01 and loud[4:6].max() > 0.3 and loud[6:].max() < 0.01  # the word in slots 4-5

    render_clip({**facts, "sound": "none"}, tmp_path / "mute.mp4")
    assert not load_clip(tmp_path / "mute.mp4").facts.has_audio
    render_clip({**facts, "sound": "silence"}, tmp_path / "silent.mp4")
    assert load_clip(tmp_path / "silent.mp4").facts.audio_silent


@pytest.fixture(scope="module")
def many():
    """Facts and records of 400 clips (no rendering: a fraction of a second)."""
    facts = [sample_facts(9, i, heldout_frac=0.3) for i in range(400)]
    return facts, [clip_records(f) for f in facts]


def test_questions_are_four_choice_with_the_answer_spread_over_positions(many):
    _, records = many
    qa = [r for rec in records for r in rec["qa"]]
    assert all(len(r["choices"]) == 4 and len(set(r["choices"])) == 4 and r["answer"] in r["choices"] for r in qa)
    positions = Counter(r["choices"].index(r["answer"]) for r in qa)
    assert min(positions.values()) > 0.2 * len(qa)
    kinds = Counter(r["kind"] for r in qa)
    assert {"visual", "audio", "audio-visual", "no-audio"} <= set(kinds)
    families = Counter(r["family"] for r in qa)
    assert {
        "shape",
        "colour",
        "count",
        "motion",
        "first",
        "last",
        "sound",
        "word",
        "beeps",
        "tone",
        "describe",
        "sync",
        "at-sound",
    } == set(families)


def test_held_out_words_are_never_in_training_files(many):
    facts, records = many
    heldout = [f for f in facts if f["heldout"]]
    assert heldout and all(f["word"] in HELDOUT_VOCAB for f in heldout)
    training = json.dumps([r for rec in records for r in rec["instructions"] + rec["sessions"] + rec["preferences"]])
    assert not any(word in training for word in HELDOUT_VOCAB)
    assert all(word in training for word in VOCAB)
    word_qa = [r for rec in records for r in rec["qa"] if r["family"] == "word"]
    assert all((r.get("split") == "heldout_vocab") == (r["answer"] in HELDOUT_VOCAB) for r in word_qa)
    assert all("split" not in r for rec in records for r in rec["qa"] if r["family"] != "word")


def test_probes_are_balanced_and_preferences_target_hallucinations(many):
    facts, records = many
    probes = [r for rec in records for r in rec["probes"]]
    assert Counter(r["answer"] for r in probes) == {"yes": 400, "no": 400}
    kinds = Counter(r["kind"] for r in probes)
    assert {"audio/speech", "audio/absent", "visual/flash", "visual/object", "audio-visual/sync"} <= set(kinds)
    silent = [
        r
        for f, rec in zip(facts, records)
        if f["sound"] in ("silence", "none")
        for r in rec["probes"]
        if r["question"] == "Is someone speaking?"
    ]
    assert silent and all(r["answer"] == "no" for r in silent)
    prefs = [r for rec in records for r in rec["preferences"]]
    hallucination = [r for r in prefs if r["target"] == "hallucination"]
    assert len(hallucination) == sum(not f["heldout"] for f in facts)  # one per training clip
    assert all(decision(r["chosen"]) == "no" and decision(r["rejected"]) == "yes" for r in hallucination)
    omission = [r for r in prefs if r["target"] == "omission"]  # as many pairs whose grounded answer is yes
    assert len(omission) == len(hallucination)
    assert all(decision(r["chosen"]) == "yes" and decision(r["rejected"]) == "no" for r in omission)
    objects = [r for r in hallucination + omission if r["family"] == "probe-object"]
    assert objects and all(r["chosen"].startswith("I see ") for r in objects)  # what is seen, then the decision
    assert all(r["chosen"].split(". ")[0] == r["rejected"].split(". ")[0] for r in objects)
    assert {"sound", "picture"} <= {r["target"] for r in prefs}


def test_beeps_line_up_with_the_flash_half_the_time(many):
    facts, _ = many
    both = [f for f in facts if f["sound"] == "beeps" and f["flash_slot"] is not None]
    assert all((f["flash_slot"] in f["beep_slots"]) == f["sync"] for f in both)
    assert 0.3 < np.mean([f["sync"] for f in both]) < 0.7
    beeps = [f["beep_slots"] for f in facts if f["sound"] == "beeps"]
    assert all(b - a > 1 for slots in beeps for a, b in zip(slots, slots[1:]))


def test_sessions_ask_every_choice_question_of_a_clip_once_per_order(many):
    facts, records = many
    rec = next(r for f, r in zip(facts, records) if not f["heldout"])

    def pair(r):
        return r["conversations"][0]["content"].replace("\n<video>", ""), r["conversations"][1]["content"]

    choices = [r for r in rec["instructions"] if r["style"] == "choice"]
    pairs = [pair(r) for r in choices]
    described = {pair(r) for r in choices if r["family"] == "describe"}
    probes = {pair(r) for r in rec["instructions"] if r["style"] == "yes-no"}
    assert len(described) == 1 and len(pairs) > 5 and probes
    sessions = rec["sessions"]
    assert len(sessions) == SESSION_ORDERS and all(s["style"] == "session" for s in sessions)
    orders = set()
    for k, sess in enumerate(sessions):
        turns = sess["conversations"]
        assert turns[0]["content"].endswith("\n<video>")  # the eval prompt's layout for the first question
        assert sum(t["content"].count("<video>") for t in turns) == 1
        asked = [
            (turns[i]["content"].replace("\n<video>", ""), turns[i + 1]["content"]) for i in range(0, len(turns), 2)
        ]
        # the first session opens with a yes/no probe, the second with the description; otherwise
        # the description comes last, since it names the facts the other questions ask about
        if k == 0:
            assert asked[0] in probes and asked[-1] in described
            asked = asked[1:]
        else:
            assert (asked[0] if k == 1 else asked[-1]) in described
        assert sorted(asked) == sorted(pairs)
        orders.add(tuple(asked))
    assert len(orders) == SESSION_ORDERS  # a new order each time
    assert all(r["sessions"] == [] for f, r in zip(facts, records) if f["heldout"])
