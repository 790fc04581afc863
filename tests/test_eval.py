"""`avllm eval`: answer matching, scoring of models whose answers are known, reports, adapters."""

import json
from pathlib import Path

import pytest
from factories import tiny_preset_file

from avllm.cli import main
from avllm.data.synth import synthesize
from avllm.errors import DataError, MediaError
from avllm.eval import build_report, evaluate, make_task, markdown, run_eval, write_report
from avllm.eval.matching import ItemResult, TaskResult, _messages, decided, exact_match, match_choice, normalize
from avllm.eval.tasks import EvalItem, TaskData, fill_template
from avllm.scoring import AVLLMScorer


class FakeModel:
    """Answers through a rule `answer(item_question, options) -> option`; records what it was asked."""

    name = "fake"

    def __init__(self, rule, unreadable=()):
        self.rule, self.unreadable, self.encoded, self.requests = rule, set(unreadable), [], []

    def encode(self, media):
        if Path(media).name in self.unreadable:
            raise MediaError(f"{media}: damaged")
        self.encoded.append(Path(media).name)
        return media

    def choice_scores(self, enc, requests):
        self.requests.append(len(requests))
        out = []
        for messages, options in requests:
            pick = self.rule(messages[-1]["content"], options)
            out.append([0.0 if o == pick else -1.0 for o in options])
        return out

    def generate(self, enc, messages, max_new_tokens, until=None):
        return self.rule(messages[-1]["content"], None)


def items(media: Path) -> list[EvalItem]:
    return [
        EvalItem("v1", media, "What colour?", "red", "visual", ["blue", "red", "green", "yellow"]),
        EvalItem("v2", media, "What shape?", "circle", "visual", ["circle", "square", "cross", "triangle"]),
        EvalItem("a1", media, "What word?", "apple", "audio", ["guitar", "tiger", "apple", "rocket"]),
        EvalItem("a2", media.with_name("b.mp4"), "How many beeps?", "two", "audio", ["one", "two", "three", "four"]),
        EvalItem(
            "h1",
            media.with_name("b.mp4"),
            "What word?",
            "dragon",
            "audio",
            ["dragon", "tiger", "apple", "rocket"],
            split="heldout_vocab",
        ),
        EvalItem("p1", media, "Is someone speaking?", "no", "audio/speech", ["yes", "no"]),
        EvalItem("p2", media, "Does the screen flash?", "yes", "visual/flash", ["yes", "no"]),
        EvalItem("p3", media, "Is a dog barking?", "no", "audio/absent", ["yes", "no"]),
    ]


def first_option(question, options):
    return options[0] if options else "Yes."  # yes/no questions are answered by generation


def test_normalise_and_match():
    assert normalize("The  Two red circles!") == "2 red circles"
    assert exact_match("Two.", "2") and not exact_match("two cats", "2")
    choices = ["a red circle", "a blue circle", "silence", "beeps"]
    assert match_choice("A red circle.", choices) == "a red circle"
    assert match_choice("I think it is a blue circle, not a red one", choices) == "a blue circle"
    assert match_choice("nothing", choices) is None
    assert match_choice("Yes, someone speaks.", ["yes", "no"]) == "yes"
    assert match_choice("No.", ["yes", "no"]) == "no" and match_choice("Maybe", ["yes", "no"]) is None
    assert match_choice("I see a red cross. No, there is no green cross.", ["yes", "no"]) == "no"
    assert match_choice("I see no yellow. Yes: a red one.", ["yes", "no"]) == "yes"  # a sentence's first word
    assert (
        match_choice("Nobody knows; yes.", ["yes", "no"]) == "yes" and match_choice("Yesterday", ["no", "yes"]) is None
    )


def test_yes_no_answers_are_generated_until_they_decide():
    class Streaming:
        def __init__(self):
            self.pieces = ["I see", " a red", " cross.", " No", ",", " there", " is", " no", " green", " cross."]
            self.read = 0

        def stream(self, messages, enc, max_new_tokens):
            for piece in self.pieces[:max_new_tokens]:
                self.read += 1
                yield piece

    assert not decided("I see no") and not decided("I see a red cross. No") and decided("I see a red cross. No,")
    model = Streaming()
    scorer = AVLLMScorer(model, name="streaming")
    assert scorer.generate(None, [], 32, until=decided) == "I see a red cross. No," and model.read == 5
    assert scorer.generate(None, [], 32) == "I see a red cross. No, there is no green cross."


def test_known_answers_give_known_scores_and_hallucination_rate(tmp_path):
    media = tmp_path / "a.mp4"
    task = TaskData("fake-task", items(media))
    model = FakeModel(first_option)  # always the first option: "Yes" on every probe
    result = evaluate(task, model, progress=False)
    assert model.encoded == ["a.mp4", "b.mp4"]  # each clip encoded once
    assert model.requests == [3, 2]  # all choice questions of a clip scored in one call; yes/no generated
    s = build_report([result], model.name, 1.0)["tasks"]["fake-task"]
    # scored main items: v1 x, v2 ok, a1 x, a2 x, p1 x (yes), p2 ok (yes), p3 x (yes)
    assert s["n"] == 7 and s["accuracy"] == pytest.approx(2 / 7, abs=1e-4)
    assert s["chance"] == pytest.approx((4 * 0.25 + 3 * 0.5) / 7, abs=1e-4)
    assert s["hallucination_rate"] == 1.0 and s["yes_rate"] == 1.0
    assert s["by_kind"]["visual"] == {"n": 2, "correct": 1, "accuracy": 0.5, "chance": 0.25}
    assert s["by_kind"]["audio/*"]["n"] == 2 and s["by_kind"]["audio/*"]["hallucination_rate"] == 1.0
    assert s["by_kind"]["visual/flash"]["hallucination_rate"] is None  # no probe there whose answer is no
    heldout = s["splits"]["heldout_vocab"]
    assert heldout["n"] == 1 and heldout["accuracy"] == 1.0 and heldout["by_kind"]["audio"]["n"] == 1

    oracle = FakeModel(
        lambda q, opts: {
            "What colour?": "red",
            "What shape?": "circle",
            "What word?": "apple",
            "How many beeps?": "two",
        }.get(q.split("\n")[0], "No")
    )
    s = build_report([evaluate(task, oracle, progress=False)], "oracle", 1.0)["tasks"]["fake-task"]
    assert s["by_kind"]["audio"]["accuracy"] == 1.0 and s["hallucination_rate"] == 0.0 and s["yes_rate"] == 0.0
    assert s["splits"]["heldout_vocab"]["accuracy"] == 0.0


def test_generation_mode_matches_answers_and_open_questions_use_exact_match(tmp_path):
    media = tmp_path / "a.mp4"
    task = TaskData(
        "gen",
        [
            EvalItem("o1", media, "Count?", "2", "audio"),
            EvalItem("o2", media, "Word?", "apple", "audio"),
            EvalItem("o3", media, "Colour?", "red", "visual", ["red", "blue"]),
        ],
    )
    answers = {"Count?": "Two.", "Word?": "The word is apple.", "Colour?\nOptions: red; blue.": "It is red."}
    model = FakeModel(lambda q, opts: answers[q.removesuffix("\n<video>")])
    result = evaluate(task, model, mode="generate", progress=False)
    assert [(r.id, r.correct, r.prediction) for r in result.results] == [
        ("o1", True, "Two."),
        ("o2", False, "The word is apple."),
        ("o3", True, "red"),
    ]
    s = build_report([result], "m", 1.0)["tasks"]["gen"]
    assert s["by_kind"]["audio"]["chance"] == 0.5  # open questions: the majority answer's share
    assert s["mode"] == "generate"


def test_report_json_markdown_and_predictions(tmp_path):
    media = tmp_path / "a.mp4"
    task = TaskData(
        "t",
        items(media) + [EvalItem("m1", None, "Gone?", "x", "visual", ["x", "y"], wanted="lost-clip")],
        skipped={"AV Captioning (not yes/no)": 3},
    )
    result = evaluate(task, FakeModel(first_option, unreadable={"b.mp4"}), progress=False)
    report = build_report([result], "fake", 2.5)
    s = report["tasks"]["t"]
    assert s["missing_media"] == 1 and s["missing_files"] == ["lost-clip"]
    assert s["unreadable_media"] == 2 and "damaged" in s["unreadable_files"][str(media.with_name("b.mp4"))]
    assert set(report) == {"tasks", "model", "seconds"} and {"n", "accuracy", "chance", "by_kind"} <= set(s)
    paths = write_report(report, tmp_path / "out" / "report.json", [result])
    assert [p.name for p in paths] == ["report.json", "report.md", "report.predictions.jsonl"]
    assert json.loads(paths[0].read_text()) == report
    md = paths[1].read_text()
    assert "| task | group | n | accuracy | chance | hallucination rate | yes rate |" in md
    assert "| t | all (loglik) | 6 | 33.3% | 37.5% | 100.0% | 100.0% |" in md  # 3 probes, all answered yes
    assert "| t | all (loglik) | 6 |" in md and "| | visual/flash |" in md.replace("|  |", "| |")
    assert "1 item(s) not scored, media missing (lost-clip)" in md and "3 annotation(s) skipped" in md
    assert len(paths[2].read_text().splitlines()) == 6
    assert markdown(report) == md


def test_accuracy_is_rounded_once():
    """313 of 399 is 78.446%: the table must not say 78.5% (78.45% after rounding to 4 places first)."""
    results = [
        ItemResult(f"q{i}", "visual", None, "x", "x" if i < 313 else "y", i < 313, ["x", "y"]) for i in range(399)
    ]
    report = build_report([TaskResult("t", "loglik", results)], "m", 1.0)
    assert report["tasks"]["t"]["correct"] == 313
    assert "| t | all (loglik) | 399 | 78.4% |" in markdown(report)


# ----------------------------------------------------------------------------- benchmark adapters


def test_music_avqa_adapter(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "00000272.mp4").write_bytes(b"fake")
    ann = tmp_path / "avqa-test.json"
    ann.write_text(
        json.dumps(
            [
                {
                    "video_id": "00000272",
                    "question_id": 11,
                    "type": '["Audio-Visual", "Existential"]',
                    "question_content": "Is the <Object> in the video always playing?",
                    "templ_values": '["cello"]',
                    "question_deleted": 0,
                    "anser": "yes",
                },
                {
                    "video_id": "00000272",
                    "question_id": 12,
                    "type": '["Visual", "Location"]',
                    "question_content": "Where is the <FL> sounding <Object>?",
                    "templ_values": "['first', 'piano']",
                    "anser": "left",
                },
                {
                    "video_id": "00009999",
                    "question_id": 13,
                    "type": '["Audio", "Counting"]',
                    "question_content": "How many instruments are sounding in the video?",
                    "templ_values": "[]",
                    "anser": "two",
                },
            ]
        )
    )
    data = make_task(f"music-avqa:{ann}", media_dir=str(tmp_path / "videos")).load()
    q = {i.id: i for i in data.items}
    assert q["11"].question.startswith(
        "Is the cello in the video always playing?\nAnswer the question using a single word"
    )
    assert q["12"].question.startswith("Where is the first sounding piano?") and q["12"].kind == "visual/location"
    assert q["11"].kind == "audio-visual/existential" and q["11"].answer == "yes" and q["11"].choices is None
    assert q["13"].media is None and data.missing == ["00009999"]
    model = FakeModel(lambda question, opts: "Yes" if question.startswith("Is") else "right")
    s = build_report([evaluate(data, model, progress=False)], "m", 0)["tasks"][data.name]
    assert s["n"] == 2 and s["accuracy"] == 0.5 and s["missing_media"] == 1 and s["hallucination_rate"] is None
    assert s["by_kind"]["audio-visual/*"]["n"] == 1
    assert fill_template("<A> and <B>", ["x", "y", "z"]) == "x and y"
    with pytest.raises(ValueError):
        fill_template("<A> and <B>", "['x']")


def test_avsd_adapter(tmp_path):
    (tmp_path / "QRTWF.mp4").write_bytes(b"fake")
    ann = tmp_path / "avsd_test.json"
    ann.write_text(
        json.dumps(
            {
                "dialogs": [
                    {
                        "image_id": "QRTWF",
                        "summary": "s",
                        "caption": "c",
                        "dialog": [
                            {"question": "is there sound ?", "answer": "yes , a man talks"},
                            {"question": "how many people ?", "answer": "one"},
                        ],
                    },
                    {"image_id": "ZZZZZ", "dialog": [{"question": "what happens ?", "answer": "he sits"}]},
                    {"image_id": "QRTWF", "dialog": [{"question": "and then ?", "answer": "__UNDISCLOSED__"}]},
                ]
            }
        )
    )
    data = make_task(f"avsd:{ann}").load()  # media next to the annotations by default
    first, second = data.items
    assert first.question == "how many people ?" and first.answer == "one" and first.media == tmp_path / "QRTWF.mp4"
    assert first.history[0]["content"] == "is there sound ?\n<video>" and first.history[1]["role"] == "assistant"
    assert _messages(first)[-1] == {"role": "user", "content": "how many people ?"}
    assert second.media is None and data.missing == ["ZZZZZ"] and data.skipped == {"no reference answer": 1}
    s = build_report([evaluate(data, FakeModel(lambda q, o: "One."), progress=False)], "m", 0)["tasks"][data.name]
    assert s["n"] == 1 and s["accuracy"] == 1.0 and s["missing_media"] == 1


AVHBENCH = Path(__file__).parent / "fixtures" / "avhbench" / "json"
AVHBENCH_NAMES = ("00001", "00001_swap")


def avhbench_media(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    for name in AVHBENCH_NAMES:
        (folder / f"{name}.mp4").write_bytes(b"fake")
    return folder


def test_avhbench_adapter_names_its_tasks_and_reports_them_as_avhbench_does(tmp_path):
    data = make_task(f"avhbench:{AVHBENCH}", media_dir=str(avhbench_media(tmp_path / "video"))).load()
    kinds = {"Audio-driven Video Hallucination": 3, "Video-driven Audio Hallucination": 3, "AV Matching": 2}
    assert {k: sum(i.kind == k for i in data.items) for k in kinds} == kinds and len(data.items) == 8
    assert all(i.choices == ["yes", "no"] and i.answer in ("yes", "no") for i in data.items)
    assert data.skipped == {"AV Captioning (not yes/no)": 1} and data.missing == []
    # a model that hears no sound and sees everything: "no" to the audio questions, "yes" to the rest
    model = FakeModel(lambda q, opts: "No" if "in the audio" in q else "Yes")
    report = build_report([evaluate(data, model, progress=False)], "m", 0)
    s = report["tasks"][data.name]["by_kind"]
    sight, sound, matching = (s[k] for k in kinds)  # questions about the picture, the sound, both
    assert sound["accuracy"] == pytest.approx(2 / 3, abs=1e-4) and sound["yes_rate"] == 0.0
    assert sound["hallucination_rate"] == 0.0 and sound["recall"] == 0.0 and sound["f1"] == 0.0
    assert sight["accuracy"] == pytest.approx(1 / 3, abs=1e-4) and sight["hallucination_rate"] == 1.0
    assert sight["yes_rate"] == 1.0 and sight["precision"] == pytest.approx(1 / 3, abs=1e-4)
    assert sight["recall"] == 1.0 and sight["f1"] == 0.5
    assert matching["accuracy"] == 0.5 and matching["hallucination_rate"] == 1.0
    md = markdown(report)
    assert "|  | Video-driven Audio Hallucination | 3 | 66.7% | 0.0% | 0.0% | 0.0% | 0.0% | 0.0% |" in md
    assert "|  | Audio-driven Video Hallucination | 3 | 33.3% | 33.3% | 100.0% | 50.0% | 100.0% | 100.0% |" in md


def test_avhbench_adapter_reads_one_file_and_names_missing_videos(tmp_path):
    data = make_task(f"avhbench:{AVHBENCH / '00001_swap.json'}", media_dir=str(tmp_path)).load()
    assert [i.kind for i in data.items] == [
        "Video-driven Audio Hallucination",
        "Audio-driven Video Hallucination",
        "AV Matching",
    ]
    assert data.missing == ["00001_swap"] and all(i.media is None for i in data.items)


def test_bad_benchmark_files_and_specs(tmp_path):
    with pytest.raises(DataError, match="PREFIX:PATH"):
        make_task("nope:thing")
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [
                {"video_id": "1", "question_content": "q"},
                {"video_id": "2", "type": "[", "question_id": 1, "question_content": "q", "anser": "a"},
            ]
        )
    )
    with pytest.raises(DataError) as info:
        make_task(f"music-avqa:{bad}").load()
    assert "[0]: missing field(s)" in str(info.value) and "[1]: '[' is not a list" in str(info.value)
    with pytest.raises(DataError, match="no such file"):
        make_task(f"avsd:{tmp_path / 'missing.json'}")


# ----------------------------------------------------------------------------- the real model, tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-eval")
    path = tiny_preset_file(folder, visual_tokens_per_slot=4, audio_tokens_per_slot=2)
    synthesize(folder / "set", 2, seed=11, workers=1, progress=False)
    return path, folder / "set"


def test_cli_eval_runs_end_to_end_on_a_tiny_model(tiny, tmp_path, capsys):
    path, data = tiny
    out = tmp_path / "report.json"
    tasks = f"jsonl:{data / 'qa.jsonl'},jsonl:{data / 'probes.jsonl'}"
    assert main(["eval", "--model", str(path), "--tasks", tasks, "--limit", "6", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    qa = report["tasks"][f"jsonl:{data / 'qa.jsonl'}"]
    probes = report["tasks"][f"jsonl:{data / 'probes.jsonl'}"]
    assert qa["n"] + qa.get("splits", {}).get("heldout_vocab", {}).get("n", 0) == 6 and qa["chance"] == 0.25
    assert probes["n"] == 4 and "hallucination_rate" in probes and report["model"] == str(path)
    assert out.with_suffix(".md").read_text() in capsys.readouterr().out
    gen = run_eval(
        str(path), [f"jsonl:{data / 'probes.jsonl'}"], limit=2, mode="generate", max_new_tokens=3, progress=False
    )
    assert gen["tasks"][f"jsonl:{data / 'probes.jsonl'}"]["n"] == 2


def test_cli_eval_runs_the_avhbench_fixture_on_a_tiny_model(tiny, tmp_path, capsys):
    path, data = tiny
    clips = sorted((data / "clips").glob("*.mp4"))
    video = tmp_path / "video"
    video.mkdir()
    for name, clip in zip(AVHBENCH_NAMES, clips):
        (video / f"{name}.mp4").write_bytes(clip.read_bytes())
    out = tmp_path / "avh.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(path),
                "--tasks",
                f"avhbench:{AVHBENCH}",
                "--media-dir",
                str(video),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    s = json.loads(out.read_text())["tasks"][f"avhbench:{AVHBENCH}"]
    assert s["n"] == 8 and s["missing_media"] == 0
    for kind, n in (
        ("Audio-driven Video Hallucination", 3),
        ("Video-driven Audio Hallucination", 3),
        ("AV Matching", 2),
    ):
        assert s["by_kind"][kind]["n"] == n and {"hallucination_rate", "yes_rate", "f1"} <= set(s["by_kind"][kind])
    printed = capsys.readouterr().out
    assert "|  | Audio-driven Video Hallucination | 3 |" in printed and "precision, recall and F1" in printed
