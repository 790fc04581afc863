"""Preference data that teaches grounding (`avllm data pairs`) and the model's own errors (`avllm data onpolicy`)."""

import json
from collections import Counter

import pytest

from avllm.cli import main
from avllm.data.formats import load
from avllm.data.onpolicy import PICTURE_TERMS, SOUND_TERMS, is_wrong, onpolicy_pairs, terms
from avllm.data.prefs import KINDS, NO_PICTURE, build_pairs
from avllm.data.synth import synthesize
from avllm.errors import DataError
from avllm.media import probe


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prefs") / "set"
    synthesize(folder, 16, seed=13, workers=1, progress=False)
    return folder


@pytest.fixture(scope="module")
def pairs(synth_set):
    summary = build_pairs(
        synth_set, synth_set / "pairs.jsonl", 6, synth_set / "held-out.jsonl", 4, held_out_per_kind=2, progress=False
    )
    rows = [json.loads(line) for line in (synth_set / "pairs.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (synth_set / "held-out.jsonl").read_text().splitlines()]
    return summary, rows, held


def test_pairs_cover_every_kind_balanced_between_yes_and_no(synth_set, pairs):
    summary, rows, held = pairs
    by_kind = Counter(r["kind"] for r in rows)
    assert set(by_kind) == set(KINDS) and all(n <= 6 for n in by_kind.values()) and summary.pairs == len(rows)
    assert summary.by_kind == dict(by_kind) and summary.held_out == len(held)
    for kind in KINDS:
        truths = Counter(r["truth"] for r in rows if r["kind"] == kind)
        assert abs(truths["yes"] - truths["no"]) <= 1, (kind, truths)
    assert len(load(synth_set / "pairs.jsonl", "preference")) == len(rows)  # valid, media found
    assert len(load(synth_set / "held-out.jsonl", "preference")) == len(held)
    assert not {r["clip"] for r in rows} & {r["clip"] for r in held}  # no clip gives pairs to both


def test_modality_absence_pairs_use_files_without_a_picture_or_without_sound(synth_set, pairs):
    _, rows, _ = pairs
    no_picture = [r for r in rows if r["kind"] == "no-picture"]
    no_sound = [r for r in rows if r["kind"] == "no-sound"]
    assert no_picture and no_sound
    for r in no_picture:
        facts = probe(synth_set / r["media"])
        assert r["media"].endswith("-sound.wav") and not facts.has_video and facts.has_audio
        assert not terms(r["chosen"]) & PICTURE_TERMS and is_wrong(r["rejected"], r["chosen"])
        if r["target"] == "absence":  # else a question about the sound, answered yes
            assert "no picture" in r["chosen"] and terms(r["rejected"]) & PICTURE_TERMS
    for r in no_sound:
        facts = probe(synth_set / r["media"])
        assert facts.has_video and not facts.has_audio
        assert not terms(r["chosen"]) & SOUND_TERMS and is_wrong(r["rejected"], r["chosen"])
        if r["target"] == "absence":  # else a question about the picture, answered yes
            assert "no soundtrack" in r["chosen"]
            assert r["rejected"].startswith("Yes") or terms(r["rejected"]) & SOUND_TERMS


def test_open_pairs_add_one_absent_thing_to_the_description(pairs):
    _, rows, _ = pairs
    opens = [r for r in rows if r["kind"] == "open"]
    assert opens
    for r in opens:
        assert r["prompt"][0]["content"].startswith("What happens in this clip, and what can be heard?")
        chosen, rejected = set(r["chosen"].split(". ")), set(r["rejected"].split(". "))
        assert chosen < rejected or len(rejected - chosen) == 1  # the same sentences and one more
        assert is_wrong(r["rejected"], r["chosen"])


def test_is_wrong_reads_yes_no_by_the_decision_and_open_answers_by_what_they_name():
    assert is_wrong("Yes, there is a green square.", "I see a red cross. No, there is no green square.")
    assert is_wrong(
        "I see a red cross. Yes, there is a green square.", "I see a red cross. No, there is no green square."
    )
    assert not is_wrong("No.", "I see a red cross. No, there is no green square.")
    assert is_wrong("They are blue.", "They are red.") and not is_wrong("Red.", "They are red.")
    assert is_wrong("A blue circle is shown.", f'{NO_PICTURE} Someone says the word "apple" at about 1.5 s.')
    assert not is_wrong("Someone says apple.", f'{NO_PICTURE} Someone says the word "apple" at about 1.5 s.')
    assert terms("Two red circles. Beeps!") == {"two", "red", "circle", "beep"}


class ScriptedModel:
    """Answers each prompt from a rule on its question; records what it was asked."""

    def __init__(self, rule):
        self.rule, self.asked = rule, []

    def stream(self, messages, enc, max_new_tokens, temperature):
        self.asked.append(messages[-1]["content"])
        yield self.rule(messages[-1]["content"])


class NoCache:
    def get(self, media):
        return media


def test_onpolicy_keeps_the_models_wrong_answers_as_rejected(synth_set, pairs, capsys):
    _, rows, _ = pairs
    model = ScriptedModel(lambda q: "Yes, there is one." if q.startswith("Is ") else "A green cross moves up.")
    out = synth_set / "onpolicy.jsonl"
    summary = onpolicy_pairs(model, synth_set / "pairs.jsonl", out, NoCache(), limit=20, progress=False)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    asked = rows[:20]
    expected = [r for r in asked if is_wrong(model.rule(r["prompt"][0]["content"]), r["chosen"])]
    assert summary.asked == 20 and len(model.asked) == 20 and summary.wrong == len(written) == len(expected) > 0
    assert {w["id"] for w in written} == {f"{r['id']}-onpolicy" for r in expected}
    for w in written:
        assert w["target"] == "on-policy" and w["rejected"] in ("Yes, there is one.", "A green cross moves up.")
    assert any(r["chosen"].startswith("Yes,") for r in asked if r not in expected)  # a right "yes" is left out
    assert len(load(out, "preference")) == len(written)
    with pytest.raises(DataError, match="folder of"):
        onpolicy_pairs(model, synth_set / "pairs.jsonl", synth_set.parent / "elsewhere.jsonl", NoCache())


def test_cli_data_pairs(synth_set, capsys):
    out = synth_set / "cli-pairs.jsonl"
    assert main(["data", "pairs", "--synth", str(synth_set), "--out", str(out), "--per-kind", "2"]) == 0
    assert f"pairs to {out}" in capsys.readouterr().out
    assert Counter(json.loads(line)["kind"] for line in out.read_text().splitlines()) == {k: 2 for k in KINDS}
    assert main(["data", "pairs", "--synth", str(synth_set.parent), "--out", str(out)]) == 2
    assert "no clips.jsonl" in capsys.readouterr().err
