"""Feature cache and SFT on tiny random models: the loss falls, masks, resume after kill -9."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_clip
from factories import tiny_preset_file
from safetensors.torch import load_file

from avllm.config import (
    PACKAGE,
    TrainConfig,
    from_dict,
    list_presets,
    list_recipes,
    load_model_config,
    load_train_config,
)
from avllm.data.cache import FeatureCache
from avllm.data.dataset import Collator, InstructionDataset
from avllm.data.formats import load
from avllm.errors import ConfigError
from avllm.model import AVLLM
from avllm.prompt import IGNORE_INDEX
from avllm.train.common import build_model, last_complete_checkpoint, resolve_precision

ANSWERS = {440.0: "A low tone.", 1760.0: "A high tone."}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """Four clips (two tones, with and without a picture) and instruction records about them."""
    folder = tmp_path_factory.mktemp("sft-data")
    records = []
    for i, (tone, video) in enumerate([(440.0, True), (1760.0, True), (440.0, False), (1760.0, False)]):
        name = f"clip{i}.mp4" if video else f"clip{i}.wav"
        write_clip(
            folder / name,
            seconds=2.0,
            tone_hz=tone,
            with_video=video,
            audio_codec="aac" if video else "pcm_s16le",
            channels=2 if video else 1,
        )
        records.append(
            {
                "id": f"r{i}",
                "media": name,
                "conversations": [
                    {"role": "user", "content": "<video>\nWhat do you hear?"},
                    {"role": "assistant", "content": ANSWERS[tone]},
                ],
            }
        )
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-train-model")
    return str(tiny_preset_file(folder, media={"num_frames": 2}, visual_tokens_per_slot=1, audio_tokens_per_slot=2))


def recipe(tmp_path, tiny_preset, dataset_dir, **overrides) -> dict:
    settings = dict(
        stage="instruct",
        model=tiny_preset,
        data=str(dataset_dir / "train.jsonl"),
        output_dir=str(tmp_path / "run"),
        feature_cache=str(tmp_path / "features"),
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        batch_size=2,
        learning_rate=3e-3,
        max_steps=12,
        save_steps=100,
        logging_steps=1,
        precision="fp32",
        warmup_ratio=0.0,
        lr_scheduler="constant",
    )
    settings.update(overrides)
    return settings


def test_feature_cache_hits_and_rebuilds_bad_entries(tmp_path, tiny_preset, dataset_dir):
    model = AVLLM.from_config(load_model_config(tiny_preset), device="cpu")
    cache = FeatureCache(model, tmp_path / "cache")
    clip = dataset_dir / "clip0.mp4"
    first = cache.get(clip)
    again = cache.get(clip)
    assert cache.stats == {"hits": 1, "built": 1, "rebuilt": 0}
    assert torch.equal(first.visual, again.visual) and torch.equal(first.audio, again.audio)
    assert again.facts.path == first.facts.path and again.duration == first.duration
    entry = cache.entry(clip)
    entry.write_bytes(entry.read_bytes()[:-100])  # truncated
    cache.get(clip)
    raw = bytearray(entry.read_bytes())
    raw[-5] ^= 0xFF  # a flipped bit in the tensor data
    entry.write_bytes(bytes(raw))
    rebuilt = cache.get(clip)
    assert cache.stats["rebuilt"] == 2 and torch.equal(rebuilt.audio, first.audio)
    config = load_model_config(tiny_preset)
    config = dataclasses.replace(config, media=dataclasses.replace(config.media, num_frames=3))
    other = FeatureCache(AVLLM.from_config(config, device="cpu"), tmp_path / "cache")
    assert other.folder != cache.folder  # other sampling settings never share entries


def test_dataset_labels_only_the_answers(tmp_path, tiny_preset, dataset_dir):
    cfg = from_dict(TrainConfig, recipe(tmp_path, tiny_preset, dataset_dir))
    model = build_model(cfg)
    data = InstructionDataset(load(cfg.data, "instruction"), FeatureCache(model, cfg.feature_cache), model, 512)
    items = [data[0], data[2]]  # a clip with a picture and one without: different lengths
    batch = Collator(model.tokenizer.pad_token_id)(items)
    assert batch["media"] == [items[0]["media"], items[1]["media"]]
    for item, ids, labels, mask in zip(items, batch["input_ids"], batch["labels"], batch["attention_mask"]):
        answer = model.tokenizer.decode(labels[labels != IGNORE_INDEX])
        assert answer in {f"{a}<|im_end|>\n" for a in ANSWERS.values()}
        assert int(mask.sum()) == len(item["input_ids"]) and ids[: len(item["input_ids"])].tolist() == item["input_ids"]
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"visual_proj", "audio_proj", "llm"}
    assert all("lora_" in n for n, p in model.llm.named_parameters() if p.requires_grad)


def test_loss_falls_and_checkpoint_loads(tmp_path, tiny_preset, dataset_dir):
    from avllm.train.sft import run_sft

    lora = {
        "r": 8,
        "alpha": 16,
        "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
    }
    cfg = from_dict(
        TrainConfig, recipe(tmp_path, tiny_preset, dataset_dir, max_steps=30, learning_rate=3e-2, lora=lora)
    )
    out = run_sft(cfg)
    metrics = json.loads((out / "train_metrics.json").read_text())
    losses = [e["loss"] for e in metrics["log_history"] if "loss" in e]
    assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]
    assert metrics["examples"] == 4
    loaded = AVLLM.from_pretrained(out, device="cpu")
    assert loaded.config.lora is not None and (out / "adapter" / "adapter_model.safetensors").is_file()
    fresh = AVLLM.from_config(loaded.config, device="cpu")  # the run fitted input statistics on its clips
    assert not torch.equal(loaded.visual_proj.feature_mean, fresh.visual_proj.feature_mean)
    assert not torch.equal(loaded.audio_proj.feature_std, fresh.audio_proj.feature_std)


def test_align_trains_projectors_only(tmp_path, tiny_preset, dataset_dir):
    model = build_model(from_dict(TrainConfig, recipe(tmp_path, tiny_preset, dataset_dir, stage="align", lora=None)))
    assert not any(p.requires_grad for p in model.llm.parameters())
    assert all(p.requires_grad for p in model.visual_proj.parameters())


def test_bf16_recipe_feeds_lora_bf16_inputs_and_matches_fp32(tmp_path, tiny_preset, dataset_dir):
    """Under autocast peft's casts of each LoRA input to float32 are pure copies, so a bf16 recipe
    turns them off; the loss must still match the float32 recipe's, and the adapter's float32
    weights must still get gradients."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    losses = {}
    for precision in ("fp32", "bf16"):
        model = build_model(from_dict(TrainConfig, recipe(tmp_path, tiny_preset, dataset_dir, precision=precision)))
        layers = [m for m in model.llm.modules() if isinstance(m, BaseTunerLayer)]
        assert layers and all(m.cast_input_dtype_enabled == (precision == "fp32") for m in layers)
        cache = FeatureCache(model, tmp_path / "features")
        data = InstructionDataset(load(str(dataset_dir / "train.jsonl"), "instruction"), cache, model, 512)
        model.fit_projector_inputs([cache.get(record.media) for record, _ in data.examples])  # whitened inputs too
        batch = Collator(model.tokenizer.pad_token_id)([data[0], data[1]])
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            loss = model(batch["input_ids"], batch["attention_mask"], batch["media"], labels=batch["labels"]).loss
        loss.backward()
        grads = [p.grad for n, p in model.llm.named_parameters() if "lora_B" in n]
        assert grads and all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)
        losses[precision] = loss.item()
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)


def test_attention_kernels_agree_and_the_setting_reaches_the_llm(tmp_path, tiny_preset, dataset_dir):
    """The recipe's attention setting reaches the LLM, and both kernels give one loss on a padded batch."""
    losses = {}
    for attention in ("eager", "sdpa"):
        torch.manual_seed(0)  # the same fresh adapter and projectors
        model = build_model(from_dict(TrainConfig, recipe(tmp_path, tiny_preset, dataset_dir, attention=attention)))
        assert model.llm.get_base_model().config._attn_implementation == attention
        data = InstructionDataset(
            load(str(dataset_dir / "train.jsonl"), "instruction"),
            FeatureCache(model, tmp_path / "features"),
            model,
            512,
        )
        batch = Collator(model.tokenizer.pad_token_id)([data[0], data[2]])  # two lengths: padding
        losses[attention] = model(
            batch["input_ids"], batch["attention_mask"], batch["media"], labels=batch["labels"]
        ).loss.item()
    assert losses["eager"] == pytest.approx(losses["sdpa"], rel=1e-4)
    with pytest.raises(ConfigError, match="attention: 'flash' is not one of 'sdpa', 'eager'"):
        from_dict(TrainConfig, recipe(tmp_path, tiny_preset, dataset_dir, attention="flash"))


def test_compiled_layers_match_eager_and_keep_their_names(tmp_path, tiny_preset, dataset_dir):
    """compile: true compiles each decoder layer in place: the same loss and adapter gradients on a
    padded batch and on one without padding (no attention mask: another graph), the same names."""
    results = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model(from_dict(TrainConfig, recipe(tmp_path, tiny_preset, dataset_dir, compile=compiled)))
        data = InstructionDataset(
            load(str(dataset_dir / "train.jsonl"), "instruction"),
            FeatureCache(model, tmp_path / "features"),
            model,
            512,
        )
        collate = Collator(model.tokenizer.pad_token_id)
        losses = []
        for pair in ((0, 2), (0, 1)):  # two lengths, then two of one length
            batch = collate([data[i] for i in pair])
            loss = model(batch["input_ids"], batch["attention_mask"], batch["media"], labels=batch["labels"]).loss
            loss.backward()
            losses.append(loss.item())
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        layers = model.llm.get_base_model().get_decoder().layers
        assert all((m._compiled_call_impl is not None) == compiled for m in layers)
        results[compiled] = losses, grads
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-4)
    assert results[True][1].keys() == results[False][1].keys()
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], grad, rtol=1e-3, atol=1e-5, msg=name)


def train_cli(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "avllm.cli", "train", "sft", "--config", str(config), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_preset, dataset_dir):
    settings = recipe(
        tmp_path, tiny_preset, dataset_dir, max_steps=16, save_steps=4, lora=None, stage="align", save_total_limit=10
    )
    straight = tmp_path / "straight.yaml"
    straight.write_text(yaml.safe_dump({**settings, "output_dir": str(tmp_path / "straight")}))
    killed = tmp_path / "killed.yaml"
    killed.write_text(yaml.safe_dump({**settings, "output_dir": str(tmp_path / "killed")}))
    assert train_cli(straight).wait(timeout=300) == 0

    proc = train_cli(killed)
    deadline = time.time() + 240
    while not (tmp_path / "killed" / "checkpoint-8" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "projectors.safetensors").exists()  # it really died mid-run
    resumed = train_cli(killed)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = load_file(tmp_path / "straight" / "projectors.safetensors")
    b = load_file(tmp_path / "killed" / "projectors.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_resume_skips_checkpoints_a_kill_left_half_written(tmp_path):
    """A kill -9 while Trainer saves leaves checkpoint-N without its trainer state (written last),
    or with part of it: resuming from there crashed with FileNotFoundError (seen in CI)."""
    for step, state in ((4, '{"global_step": 4}'), (8, None), (12, '{"global_st'), (100, None)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-7.tmp").mkdir()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    (tmp_path / "checkpoint-100" / "trainer_state.json").write_text('{"global_step": 100}')
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-100")  # by number, not by name
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_recipe_numbers_written_without_a_dot_are_numbers():
    cfg = from_dict(TrainConfig, yaml.safe_load("learning_rate: 2e-3\nprojector_lr: 1e-3"))  # YAML reads these as text
    assert cfg.learning_rate == 0.002 and cfg.projector_lr == 0.001
    with pytest.raises(ConfigError, match="learning_rate: 'fast' is not a number"):
        from_dict(TrainConfig, {"learning_rate": "fast"})


def test_recipes_and_presets_ship_in_the_package_and_are_read_by_name(tmp_path):
    assert {"starter-align", "starter-instruct", "starter-dpo"} <= set(list_recipes()) and "starter" in list_presets()
    shipped = PACKAGE.joinpath("presets", "train", "starter-instruct.yaml")
    by_name = load_train_config("starter-instruct", {"max_steps": 3})
    assert by_name == load_train_config(str(shipped), {"max_steps": 3}) and by_name.max_steps == 3
    assert by_name.data.startswith("runs/")  # data and output paths stay relative to the working folder
    edited = tmp_path / "mine.yaml"  # a path to a YAML file is read from that file
    edited.write_text(shipped.read_text().replace("stage: instruct", "stage: align"))
    assert load_train_config(str(edited)).stage == "align"
    assert load_model_config("starter") == load_model_config(str(PACKAGE.joinpath("presets", "models", "starter.yaml")))
    with pytest.raises(ConfigError, match="starter-align"):
        load_train_config("configs/train/starter-align.yaml")  # the old path names the recipes instead


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtypes_are_bfloat16_only_where_the_device_computes_in_it(tmp_path, tiny_preset, monkeypatch, native):
    monkeypatch.setattr("avllm.llm.native_bf16", lambda device: native)
    monkeypatch.setattr("avllm.train.common.native_bf16", lambda device: native)
    config = dataclasses.replace(load_model_config(tiny_preset), dtype="auto", encoder_dtype="auto")
    model = AVLLM.from_config(config, device="cpu")
    want = torch.bfloat16 if native else torch.float32
    assert model.llm.dtype == want and model.visual_encoder.dtype == want and model.audio_encoder.dtype == want
    concrete = AVLLM.from_config(
        dataclasses.replace(config, encoder_dtype=str(want).removeprefix("torch.")), device="cpu"
    )
    assert (
        FeatureCache(model, tmp_path).folder == FeatureCache(concrete, tmp_path).folder
    )  # what auto became is the key
    assert resolve_precision(TrainConfig(precision="auto")).precision == ("bf16" if native else "fp32")
    assert resolve_precision(TrainConfig(precision="fp32")).precision == "fp32"
    with pytest.raises(ConfigError, match=r"encoder_dtype: 'bf16' is not one of .*'auto'"):
        dataclasses.replace(config, encoder_dtype="bf16")
