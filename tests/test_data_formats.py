"""Instruction, preference and QA JSONL: records load, and every problem is reported at once."""

import json
from pathlib import Path

import pytest

from avllm.cli import main
from avllm.data import formats
from avllm.errors import DataError


def write(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "set" / "clips").mkdir(parents=True)
    (tmp_path / "set" / "clips" / "a.mp4").write_bytes(b"fake")
    (tmp_path / "outside.mp4").write_bytes(b"fake")
    return tmp_path / "set"


def turns(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


GOOD_CONV = turns(
    ("system", "Be brief."),
    ("user", "<video>\nWhat is shown?"),
    ("assistant", "A red circle."),
    ("user", "And the sound?"),
    ("assistant", "A beep."),
)


def test_good_files_load_with_resolved_media_and_extra_fields(folder):
    ins = write(
        folder / "ins.jsonl", [{"id": "x1", "media": "clips/a.mp4", "conversations": GOOD_CONV, "style": "open"}]
    )
    pref = write(
        folder / "pref.jsonl",
        [{"id": 7, "media": "clips/a.mp4", "prompt": GOOD_CONV[:4], "chosen": "No beep.", "rejected": "A dog barks."}],
    )
    qa = write(
        folder / "qa.jsonl",
        [
            {
                "id": "q1",
                "media": "clips/a.mp4",
                "question": "Colour?",
                "choices": ["red", "blue"],
                "answer": "red",
                "kind": "visual",
            },
            {
                "id": "q2",
                "media": "clips/a.mp4",
                "question": "Say it.",
                "answer": "hello",
                "kind": "speech",
                "split": "heldout_vocab",
            },
        ],
    )
    [r] = formats.load(ins, "instruction")
    assert r.media == folder / "clips" / "a.mp4" and r.extra == {"style": "open"} and r.conversations == GOOD_CONV
    [p] = formats.load(pref, "preference")
    assert p.id == "7" and p.prompt[-1]["role"] == "user"
    q1, q2 = formats.load(qa, "qa")
    assert q1.choices == ["red", "blue"] and q2.choices is None and q2.split == "heldout_vocab" and q2.kind == "speech"


def test_every_problem_is_reported_at_once_with_file_line_and_field(folder):
    path = write(
        folder / "bad.jsonl",
        [
            {"media": "clips/a.mp4", "conversations": GOOD_CONV},  # 1: no id
            {
                "id": "b",
                "media": "clips/a.mp4",
                "conversations": turns(("user", "<video> <video>"), ("assistant", "x")),
            },  # 2
            {"id": "c", "media": "clips/a.mp4", "conversations": turns(("assistant", "hi"), ("user", "<video>"))},  # 3
            "{not json",  # 4
            {
                "id": "c",
                "media": "clips/a.mp4",
                "conversations": turns(("user", "<video>q"), ("assistant", "a")),
            },  # 5: duplicate
            {
                "id": "e",
                "media": "clips/missing.mp4",
                "conversations": turns(("user", "<video>q"), ("assistant", "a")),
            },  # 6
            {
                "id": "f",
                "media": "../outside.mp4",
                "conversations": turns(("user", "<video>q"), ("assistant", "a")),
            },  # 7
            {
                "id": "g",
                "media": "clips/a.mp4",
                "conversations": turns(("user", "no placeholder"), ("assistant", "a")),
            },  # 8
            {"id": "h", "media": "clips/a.mp4", "conversations": [{"role": "robot", "content": "<video>"}]},  # 9
            {"id": "i", "media": "clips/a.mp4", "conversations": turns(("user", "<video>q"), ("assistant", ""))},  # 10
        ],
    )
    with pytest.raises(DataError) as info:
        formats.load(path, "instruction")
    text = str(info.value)
    expected = [
        (1, "id"),
        (2, "conversations"),
        (3, "conversations"),
        (4, "(line)"),
        (5, "id"),
        (6, "media"),
        (7, "media"),
        (8, "conversations"),
        (9, "conversations[0].role"),
        (10, "conversations[1].content"),
    ]
    for line, field in expected:
        assert f"{path}:{line}: {field}:" in text, (line, field, text)
    assert "1 missing media file(s)" in text and "already used on line 3" in text
    assert "leaves the dataset folder" in text and "--allow-outside-media" in text  # the fix is named
    records, problems = formats.validate(path, "instruction")
    assert len(problems) == 10 and [r.id for r in records] == ["e"]  # missing media is listed, the record kept


def test_media_outside_the_folder_needs_the_flag(folder, tmp_path):
    rows = [
        {"id": "a", "media": "../outside.mp4", "question": "q?", "answer": "x", "kind": "visual"},
        {"id": "b", "media": str(tmp_path / "outside.mp4"), "question": "q?", "answer": "x", "kind": "visual"},
    ]
    path = write(folder / "qa.jsonl", rows)
    with pytest.raises(DataError, match="leaves the dataset folder"):
        formats.load(path, "qa")
    assert [r.media for r in formats.load(path, "qa", allow_outside_media=True)] == [tmp_path / "outside.mp4"] * 2
    write(folder / "sneaky.jsonl", [{**rows[0], "media": "clips/../../outside.mp4"}])
    with pytest.raises(DataError, match="leaves the dataset folder"):
        formats.load(folder / "sneaky.jsonl", "qa")


def test_preference_and_qa_rules(folder):
    pref = write(
        folder / "pref.jsonl",
        [
            {
                "id": "a",
                "media": "clips/a.mp4",
                "prompt": GOOD_CONV[:3],
                "chosen": "x",
                "rejected": "y",
            },  # ends with assistant
            {"id": "b", "media": "clips/a.mp4", "prompt": GOOD_CONV[:2], "chosen": "same", "rejected": "same"},
            {"id": "c", "media": "clips/a.mp4", "prompt": GOOD_CONV[:2], "chosen": "<video> x", "rejected": 3},
        ],
    )
    _, problems = formats.validate(pref, "preference")
    assert [(p.line, p.field) for p in problems] == [(1, "prompt"), (2, "rejected"), (3, "rejected"), (3, "chosen")]
    qa = write(
        folder / "qa.jsonl",
        [
            {
                "id": "a",
                "media": "clips/a.mp4",
                "question": "q",
                "choices": ["x", "y"],
                "answer": "z",
                "kind": "visual",
            },
            {
                "id": "b",
                "media": "clips/a.mp4",
                "question": "q",
                "choices": ["x", "X"],
                "answer": "x",
                "kind": "visual",
            },
            {"id": "c", "media": "clips/a.mp4", "question": "q", "choices": "x", "answer": "x"},
            {"id": "d", "media": "clips/a.mp4", "question": "", "answer": "x", "kind": "visual", "split": ""},
        ],
    )
    _, problems = formats.validate(qa, "qa")
    assert [(p.line, p.field) for p in problems] == [
        (1, "answer"),
        (2, "choices"),
        (3, "kind"),
        (3, "choices"),
        (4, "question"),
        (4, "split"),
    ]


def test_empty_and_missing_files(folder):
    write(folder / "empty.jsonl", [])
    with pytest.raises(DataError, match="holds no records"):
        formats.load(folder / "empty.jsonl", "qa")
    with pytest.raises(DataError, match="no such file"):
        formats.load(folder / "nope.jsonl", "qa")


def test_qa_prompt_lists_options_and_leaves_yes_no_bare():
    assert formats.qa_prompt("Colour?", ["red", "blue"]) == "Colour?\nOptions: red; blue."
    assert formats.qa_prompt("Is it red?", ["yes", "no"]) == "Is it red?"
    assert formats.qa_prompt("Open?", None) == "Open?"
    assert formats.qa_messages("Colour?", None) == [{"role": "user", "content": "Colour?\n<video>"}]
    history = turns(("user", "<video>\nHi"), ("assistant", "Hello"))
    assert formats.qa_messages("More?", None, history)[-1] == {"role": "user", "content": "More?"}


def test_cli_eval_reports_bad_data_before_loading_any_model(folder, capsys):
    path = write(
        folder / "qa.jsonl",
        [
            {"id": "a", "media": "clips/nope.mp4", "question": "q", "answer": "x", "kind": "visual"},
            {"id": "b", "media": "clips/a.mp4", "question": "q", "answer": "x"},
        ],
    )
    assert main(["eval", "--model", "no-such-model", "--tasks", f"jsonl:{path}"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1: media:" in err and f"{path}:2: kind:" in err and "no-such-model" not in err


def test_the_documented_examples_are_valid():
    examples = Path(__file__).resolve().parents[1] / "data" / "instructions" / "examples"
    for name, fmt in (("instructions", "instruction"), ("preferences", "preference"), ("qa", "qa"), ("probes", "qa")):
        assert formats.load(examples / f"{name}.jsonl", fmt), name
