"""DPO on tiny random models: ln 2 at step 0, a rising margin, a reference that never moves."""

import json
import math

import pytest
import torch
from conftest import write_clip
from factories import tiny_model_config
from safetensors.torch import load_file

from avllm.config import TrainConfig, from_dict
from avllm.data.dataset import PairCollator, PreferenceDataset
from avllm.data.formats import load
from avllm.model import AVLLM
from avllm.prompt import IGNORE_INDEX
from avllm.train.common import TrainableAVLLM, build_model, feature_cache
from avllm.train.dpo import REFERENCE_FILE, dpo_loss, pair_logps, reference_logps, run_dpo, without_lora_dropout

PAIRS = {
    440.0: ("No, nobody is speaking.", "Yes, someone is speaking."),
    1760.0: ("No, there is no dog.", "Yes, a dog is barking."),
}


def test_loss_and_rewards_by_hand():
    same = torch.tensor([[-3.0, -5.0], [-2.0, -1.0]])
    loss, stats = dpo_loss(same, same, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2)) and stats["rewards/chosen"].item() == 0
    policy = torch.tensor([[-2.0, -6.0]])  # chosen up by 1, rejected down by 1
    loss, stats = dpo_loss(policy, torch.tensor([[-3.0, -5.0]]), beta=0.5)
    assert stats["rewards/margins"].item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    assert stats["rewards/accuracies"].item() == 1.0
    ipo, _ = dpo_loss(policy, torch.tensor([[-3.0, -5.0]]), beta=0.5, kind="ipo")
    assert ipo.item() == pytest.approx((2.0 - 1.0) ** 2)


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory):
    """A tiny model with a LoRA adapter, saved as an SFT checkpoint, and preference pairs."""
    folder = tmp_path_factory.mktemp("dpo")
    config = tiny_model_config(
        folder,
        media={"num_frames": 2},
        visual_tokens_per_slot=1,
        audio_tokens_per_slot=2,
        lora={"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
    )
    model = AVLLM.from_config(config, device="cpu")
    model.add_lora()
    model.save_pretrained(folder / "sft")
    records = []
    for i, tone in enumerate([440.0, 1760.0, 440.0, 1760.0]):
        write_clip(folder / f"c{i}.mp4", seconds=2.0, tone_hz=tone)
        chosen, rejected = PAIRS[tone]
        records.append(
            {
                "id": f"p{i}",
                "media": f"c{i}.mp4",
                "chosen": chosen,
                "rejected": rejected,
                "prompt": [{"role": "user", "content": "<video>\nDo you hear it?"}],
            }
        )
    (folder / "prefs.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder


def recipe(folder, tmp_path, **overrides) -> TrainConfig:
    settings = dict(
        stage="dpo",
        model=str(folder / "sft"),
        data=str(folder / "prefs.jsonl"),
        output_dir=str(tmp_path / "dpo"),
        feature_cache=str(tmp_path / "features"),
        batch_size=2,
        learning_rate=2e-2,
        max_steps=15,
        save_steps=100,
        logging_steps=1,
        precision="fp32",
        warmup_ratio=0.0,
        lr_scheduler="constant",
        beta=0.5,
    )
    settings.update(overrides)
    return from_dict(TrainConfig, settings)


def dataset_for(cfg):
    model = build_model(cfg)
    without_lora_dropout(model)
    data = PreferenceDataset(load(cfg.data, "preference"), feature_cache(model, cfg), model, 512)
    return model, data


def test_pairs_label_only_the_answers(sft_checkpoint, tmp_path):
    model, data = dataset_for(recipe(sft_checkpoint, tmp_path))
    item = data[0]
    for side, text in (("chosen", PAIRS[440.0][0]), ("rejected", PAIRS[440.0][1])):
        labels = [t for t in item[side].labels if t != IGNORE_INDEX]
        assert model.tokenizer.decode(labels) == f"{text}<|im_end|>\n"
    batch = PairCollator(model.tokenizer.pad_token_id)([data[0], data[1]])
    assert batch["input_ids"].shape[0] == 4  # chosen rows, then rejected rows, each with its clip
    assert batch["media"][0] is batch["media"][2] and batch["media"][1] is batch["media"][3]


def test_step_zero_loss_is_ln2_with_zero_rewards(sft_checkpoint, tmp_path):
    cfg = recipe(sft_checkpoint, tmp_path)
    model, data = dataset_for(cfg)
    collator = PairCollator(model.tokenizer.pad_token_id)
    data.reference = reference_logps(model, data, collator, batch_size=3, kind="sigmoid")  # other batching
    batch = collator([data[i] for i in range(4)])
    policy = pair_logps(TrainableAVLLM(model).train(), batch, "sigmoid")  # train mode: dropout is off
    loss, stats = dpo_loss(policy, batch["reference"], beta=0.5)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-4)
    assert abs(stats["rewards/chosen"].item()) < 1e-4 and abs(stats["rewards/rejected"].item()) < 1e-4


def test_training_raises_the_margin_and_never_moves_the_reference(sft_checkpoint, tmp_path):
    cfg = recipe(sft_checkpoint, tmp_path)
    out = run_dpo(cfg)
    history = [e for e in json.loads((out / "train_metrics.json").read_text())["log_history"] if "rewards/margins" in e]
    assert abs(history[0]["rewards/margins"]) < 0.05 and history[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert history[-1]["rewards/margins"] > 0.5 and history[-1]["rewards/accuracies"] == 1.0
    saved = load_file(out / REFERENCE_FILE)["logps"]
    fresh_model, fresh_data = dataset_for(cfg)  # the starting checkpoint, loaded anew
    fresh = reference_logps(fresh_model, fresh_data, PairCollator(fresh_model.tokenizer.pad_token_id), 2, "sigmoid")
    torch.testing.assert_close(saved, fresh)
    trained = AVLLM.from_pretrained(out, device="cpu")
    after = reference_logps(trained, fresh_data, PairCollator(trained.tokenizer.pad_token_id), 2, "sigmoid")
    assert (after[:, 0] - after[:, 1]).mean() > (
        fresh[:, 0] - fresh[:, 1]
    ).mean()  # the policy moved, the reference did not


def test_held_out_pairs_are_scored_from_step_zero_and_the_curves_read_back(sft_checkpoint, tmp_path, capsys):
    from avllm.cli import main
    from avllm.train.curves import read_curves

    held_out = sft_checkpoint / "held-out.jsonl"  # beside the clips; here the training pairs themselves
    held_out.write_text("\n".join((sft_checkpoint / "prefs.jsonl").read_text().splitlines()[:2]) + "\n")
    cfg = recipe(sft_checkpoint, tmp_path, eval_data=str(held_out), eval_steps=4, max_steps=10)
    out = run_dpo(cfg)
    assert (out / "reference_logps_eval.safetensors").is_file()
    evals = [e for e in json.loads((out / "train_metrics.json").read_text())["log_history"] if "eval_loss" in e]
    assert [e["step"] for e in evals] == [0, 4, 8, 10]  # before the first step, every 4, and at the end
    assert evals[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-3) and evals[0]["eval_rewards/margins"] == 0
    assert evals[-1]["eval_rewards/margins"] > evals[0]["eval_rewards/margins"]  # trained on the same pairs
    assert evals[-1]["eval_preference_accuracy"] == 1.0
    curves = read_curves(out)
    assert [step for step, _ in curves["eval/preference_accuracy"]] == [0, 4, 8, 10]
    assert curves["eval/rewards/margins"][-1][1] == pytest.approx(evals[-1]["eval_rewards/margins"], rel=1e-5)
    assert [step for step, _ in curves["train/rewards/accuracies"]] == list(range(1, 11))
    assert main(["curves", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "eval/preference_accuracy" in printed and "train/rewards/margins" in printed and "step    10" in printed


def test_held_out_pairs_belong_to_a_dpo_stage():
    from avllm.config import load_train_config
    from avllm.errors import ConfigError

    assert load_train_config("starter-dpo").eval_data == "runs/dpo/held-out.jsonl"
    with pytest.raises(ConfigError, match="eval_data: 'pairs.jsonl' is out of range; it must be null outside a dpo"):
        load_train_config("starter-instruct", {"eval_data": "pairs.jsonl"})
