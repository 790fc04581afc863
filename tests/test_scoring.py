"""Option scoring under an AVLLM: the key/value-cache passes and the left-padded batches give the
scores of each sequence run alone."""

import pytest
import torch
from factories import tiny_model_config

from avllm.data.formats import qa_messages
from avllm.model import AVLLM
from avllm.scoring import AVLLMScorer

COLOURS = ["red", "green", "blue", "a bright yellow"]


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    """A tiny model with a LoRA adapter that changes its answers, so the adapter must be on every path."""
    folder = tmp_path_factory.mktemp("tiny-scoring")
    config = tiny_model_config(
        folder,
        visual_tokens_per_slot=4,
        audio_tokens_per_slot=2,
        media={"num_frames": 3},
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    )
    model = AVLLM.from_config(config, device="cpu")
    model.add_lora()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    model.eval()
    return AVLLMScorer(model, batch_size=3)


def alone(scorer, enc, messages, option) -> float:
    """The mean log-probability of the scored tokens, from one forward pass over the whole sequence."""
    ids, n = scorer.sequence(enc, messages, option)
    with torch.inference_mode():
        logits = scorer.model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), [enc]).logits[0]
    logprobs = torch.log_softmax(logits.float(), -1)
    return float(sum(logprobs[p - 1, ids[p]] for p in range(len(ids) - n, len(ids))) / n)


def requests(layout: str) -> list:
    if layout == "one question":  # every option after the same question and clip
        return [(qa_messages("What colour are the shapes?", COLOURS), COLOURS)]
    if layout == "clip first":  # the clip, then each question (the user placed <video> first)
        asked = ["What colour?", "Which colour is it?", "Name the colour.", "Colour?"]
        return [([{"role": "user", "content": f"<video>\n{q}"}], COLOURS) for q in asked] + [
            ([{"role": "user", "content": "<video>\nIs anyone speaking?"}], ["Yes", "No"])
        ]
    return [  # the usual prompt: each question, then the clip
        (qa_messages("What colour are the shapes?", COLOURS), COLOURS),
        (qa_messages("Which word is spoken?", ["apple", "tiger"]), ["apple", "tiger"]),
        (qa_messages("Is anyone speaking?", ["yes", "no"]), ["Yes", "No"]),
    ]


@pytest.mark.parametrize(
    ("layout", "staged"), [("one question", True), ("clip first", True), ("clip after each question", False)]
)
def test_option_scores_equal_each_sequence_scored_alone(scorer, av_clip, monkeypatch, layout, staged):
    enc = scorer.encode(av_clip)
    used = []
    for path in ("_staged_scores", "_whole_scores"):
        method = getattr(scorer, path)
        monkeypatch.setattr(scorer, path, lambda *a, m=method, p=path: used.append(p) or m(*a))
    asked = requests(layout)
    scores = scorer.choice_scores(enc, asked)
    assert set(used) == {"_staged_scores" if staged else "_whole_scores"}
    assert [len(s) for s in scores] == [len(options) for _, options in asked]
    for (messages, options), got in zip(asked, scores):
        expected = [alone(scorer, enc, messages, option) for option in options]
        assert got == pytest.approx(expected, abs=1e-4)
