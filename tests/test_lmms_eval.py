"""avllm as an lmms-eval model: its interface on a tiny model, then lmms-eval's own CLI over a local task
(synthetic clips) agreeing with `avllm eval` item by item on the trained starter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from factories import tiny_preset_file

pytest.importorskip("lmms_eval", reason="lmms-eval comes with `make install` (the lmms-eval extra, see the Makefile)")

from lmms_eval.api.instance import Instance  # noqa: E402

from avllm.config import default_model  # noqa: E402
from avllm.data.formats import qa_messages  # noqa: E402
from avllm.data.synth import synthesize  # noqa: E402
from avllm.errors import MediaError  # noqa: E402
from avllm.eval import run_eval  # noqa: E402
from avllm.eval.lmms import AVLLMLmms, doc_to_text, doc_to_visual  # noqa: E402
from avllm.prompt import with_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASK_YAML = """\
task: avllm_synth_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function avllm.eval.lmms.doc_to_visual
doc_to_text: !function avllm.eval.lmms.doc_to_text
doc_to_choice: choices
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    media_root: {root}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> AVLLMLmms:
    folder = tmp_path_factory.mktemp("tiny-lmms")
    preset = tiny_preset_file(folder, visual_tokens_per_slot=2, audio_tokens_per_slot=2, media={"num_frames": 2})
    return AVLLMLmms(pretrained=str(preset), device="cpu", batch_size=4)


def requests(lm: AVLLMLmms, kind: str, docs: list[dict], args: list[tuple]) -> list[Instance]:
    """Instances as lmms-eval's tasks build them: arguments end with (doc_to_visual, doc_id, task, split)."""
    lm.task_dict = {"t": {"test": docs}}
    return [
        Instance(kind, (*a[:-1], lambda doc: [doc["media"]], a[-1], "t", "test"), idx=i, metadata=meta(a[-1]))
        for i, a in enumerate(args)
    ]


def meta(doc_id: int) -> dict:
    return {"task": "t", "doc_id": doc_id, "repeats": 1}


def test_lmms_eval_finds_the_model_by_its_name():
    from lmms_eval.models import get_model

    assert get_model("avllm") is AVLLMLmms, "reinstall avllm (pip install -e .) so lmms-eval sees its entry point"


def test_options_are_scored_as_avllm_eval_scores_them(tiny, av_clip, audio_only_wav):
    docs = [
        {"media": str(av_clip), "question": "What colour is it?", "choices": ["red", "grey", "blue"]},
        {"media": str(audio_only_wav), "question": "What do you hear?", "choices": ["a tone", "silence"]},
        {"media": str(av_clip), "question": "How many shapes?", "choices": ["one", "two"]},
    ]
    args = [(doc_to_text(d), " " + c, i) for i, d in enumerate(docs) for c in d["choices"]]
    out = tiny.loglikelihood(requests(tiny, "loglikelihood", docs, args))
    losses = [r.text[0] for r in out]  # a (loss, is_greedy) pair inside lmms-eval's response wrapper
    expected = []
    for d in docs:
        enc = tiny.scorer.encode(Path(d["media"]))
        expected += tiny.scorer.choice_scores(enc, [(qa_messages(d["question"], d["choices"]), d["choices"])])[0]
    assert losses == pytest.approx([-s for s in expected], abs=1e-5)
    assert len(set(losses)) == len(losses)  # real scores, option by option
    for d, k in ((0, 0), (1, 3), (2, 5)):  # greedy: the greedy answer is the option itself
        enc = tiny.scorer.encode(Path(docs[d]["media"]))
        greedy = tiny.scorer.generate(enc, qa_messages(docs[d]["question"], docs[d]["choices"]), 8)
        assert [r.text[1] for r in out[k : k + len(docs[d]["choices"])]] == [c == greedy for c in docs[d]["choices"]]


def test_generation_stops_at_the_tasks_stop_string(tiny, av_clip):
    docs = [{"media": str(av_clip)}]
    enc = tiny.scorer.encode(av_clip)
    full = "".join(tiny.model.stream([{"role": "user", "content": with_video("Describe it.")}], enc, 12)).strip()
    assert len(full) > 4
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    out = tiny.generate_until(
        requests(
            tiny,
            "generate_until",
            docs,
            [("Describe it.", {"max_new_tokens": 12, "until": [stop]}, 0), ("Describe it.", {"max_new_tokens": 12}, 0)],
        )
    )
    assert out == [full[: full.find(stop)].strip(), full]


def test_audio_samples_score_as_their_file_does(tiny, audio_only_wav):
    with av.open(str(audio_only_wav)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().astype(np.float32).reshape(-1) / 32768 for f in container.decode(stream)]
        samples = np.concatenate(frames)
        rate = stream.rate
    doc = {"question": "What do you hear?", "choices": ["a tone", "silence", "beeps"]}
    scores = []
    for media in (str(audio_only_wav), {"array": samples, "sampling_rate": rate}):
        docs = [{**doc, "media": media}]
        args = [(doc_to_text(doc), c, 0) for c in doc["choices"]]
        scores.append([r.text[0] for r in tiny.loglikelihood(requests(tiny, "loglikelihood", docs, args))])
    assert scores[1] == pytest.approx(scores[0], abs=1e-4)


def test_inputs_avllm_cannot_answer_about_are_refused_by_name(tiny, av_clip):
    from PIL import Image

    tiny.task_dict = {"t": {"test": [{"media": [str(av_clip), str(av_clip)]}, {"media": [Image.new("RGB", (8, 8))]}]}}
    for doc_id, message in ((0, "2 inputs"), (1, "images are not supported")):
        args = ("What is it?", {"max_new_tokens": 2}, lambda doc: doc["media"], doc_id, "t", "test")
        with pytest.raises(MediaError, match=message):
            tiny.generate_until([Instance("generate_until", args, idx=0, metadata=meta(doc_id))])


def test_multi_round_asks_each_round_the_task_gives(tiny, av_clip):
    def next_round(doc, previous_output, round_idx, previous_round_info):
        done = round_idx == 2
        return [doc["media"]], f"And after {previous_output[-1]!r}?", done, previous_output, None

    lm = tiny
    lm.task_dict = {"t": {"test": [{"media": str(av_clip)}]}}
    request = Instance(
        "generate_until_multi_round",
        ("What is it?", {"max_new_tokens": 5}, lambda doc: [doc["media"]], next_round, 0, "t", "test"),
        idx=0,
        metadata=meta(0),
    )
    [rounds] = lm.generate_until_multi_round([request])
    enc = lm.scorer.encode(av_clip)
    first = lm.scorer.generate(enc, [{"role": "user", "content": with_video("What is it?")}], 5)
    second = lm.scorer.generate(enc, [{"role": "user", "content": with_video(f"And after {first!r}?")}], 5)
    assert rounds == [first, second]


@pytest.mark.slow
def test_lmms_eval_cli_on_a_local_task_agrees_with_avllm_eval(tmp_path):
    """The same 12 questions (2 synthetic clips) through `lmms-eval --model avllm` and `avllm eval`: the
    same accuracy, the same verdict on each item and the same score for each option."""
    data = tmp_path / "set"
    synthesize(data, 6, seed=5, workers=1, progress=False)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "avllm_synth_qa.yaml").write_text(TASK_YAML.format(data=data / "qa.jsonl", root=data))
    model, limit = default_model(), 12
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "LMMS_EVAL_DATASETS_CACHE": str(tmp_path)}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # as here: bfloat16 sums differ with the thread count
    command = [str(Path(sys.executable).parent / "lmms-eval"), "--model", "avllm"]
    command += ["--model_args", f"pretrained={model}", "--tasks", "avllm_synth_qa", "--include_path", str(tasks)]
    command += ["--batch_size", "16"]
    command += ["--limit", str(limit), "--output_path", str(tmp_path / "out"), "--log_samples"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0 and "acc" in run.stdout, run.stdout[-2000:] + run.stderr[-4000:]
    [results] = (tmp_path / "out").rglob("*_results.json")
    [samples] = (tmp_path / "out").rglob("*_samples_avllm_synth_qa.jsonl")
    accuracy = json.loads(results.read_text())["results"]["avllm_synth_qa"]["acc,none"]
    docs = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda s: s["doc_id"])

    report = run_eval(model, [f"jsonl:{data / 'qa.jsonl'}"], limit=limit, batch_size=16, out=tmp_path / "e.json")
    [task] = report["tasks"].values()
    predictions = [json.loads(line) for line in (tmp_path / "e.predictions.jsonl").read_text().splitlines()]
    assert len(docs) == len(predictions) == task["n"] == limit
    assert accuracy * limit == pytest.approx(task["correct"]) and accuracy == pytest.approx(task["accuracy"], abs=1e-6)
    greedy = 0
    for doc, item in zip(docs, predictions):
        assert doc["target"] == item["answer"] and bool(doc["acc"]) == item["correct"], item["id"]
        losses = [float(loss) for loss, _ in doc["filtered_resps"]]
        assert [-loss for loss in losses] == pytest.approx(item["scores"], abs=1e-4), item["id"]
        flags = [flag in (True, "True") for _, flag in doc["filtered_resps"]]
        assert sum(flags) <= 1
        greedy += sum(flags)
    assert greedy > 0  # the trained model's greedy answers are options
    doc = json.loads(next(iter((data / "qa.jsonl").read_text().splitlines())))
    assert doc_to_visual(doc, {"media_root": str(data)}) == [str(data / doc["media"])]
