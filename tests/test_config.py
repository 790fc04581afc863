"""Settings check themselves when read: every field against its type hint, ranges per class,
one line naming the file (or --set), the field, the bad value and what is allowed."""

import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from avllm.config import (
    LoraConfig,
    MediaConfig,
    ModelConfig,
    TrainConfig,
    from_dict,
    list_presets,
    load_model_config,
    load_train_config,
    package_folder,
)
from avllm.errors import ConfigError, ModelLoadError

RECIPES = sorted((REPO_ROOT / "avllm" / "presets" / "train").glob("*.yaml"))
DPO_RECIPE = REPO_ROOT / "avllm" / "presets" / "train" / "starter-dpo.yaml"
STARTER = REPO_ROOT / "avllm" / "weights" / "starter"


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_reads(name):
    assert load_model_config(name).name == name


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_reads(path):
    assert load_train_config(path).stage in ("align", "instruct", "dpo")


# (class, field, a bad value, words the one-line error must hold)
BAD = [
    (TrainConfig, "stage", "pretrain", "'align', 'instruct', 'dpo'"),
    (TrainConfig, "attention", "flash", "'sdpa', 'eager'"),
    (TrainConfig, "precision", "bf32", "'bf16', 'fp16', 'fp32', 'auto'"),
    (TrainConfig, "dpo_loss", "hinge", "'sigmoid', 'ipo'"),
    (TrainConfig, "quantization", "4bit", "'nf4', '8bit', or null"),
    (TrainConfig, "lr_scheduler", "cosine_schedule", "'linear', 'cosine'"),
    (TrainConfig, "batch_size", 0, "at least 1"),
    (TrainConfig, "batch_size", 2.5, "not a whole number"),
    (TrainConfig, "grad_accum", 0, "at least 1"),
    (TrainConfig, "max_steps", 0, "-1 (all epochs) or at least 1"),
    (TrainConfig, "epochs", 0, "above 0"),
    (TrainConfig, "learning_rate", -1e-3, "above 0"),
    (TrainConfig, "learning_rate", "fast", "not a number"),
    (TrainConfig, "projector_lr", 0, "above 0, or null"),
    (TrainConfig, "warmup_ratio", 1.0, "at least 0 and below 1"),
    (TrainConfig, "beta", 0, "above 0"),
    (TrainConfig, "save_steps", 0, "at least 1"),
    (TrainConfig, "dataloader_workers", -1, "0 (the main process) or more"),
    (TrainConfig, "compile", "yes", "not true or false"),
    (TrainConfig, "allow_outside_media", 1, "not true or false"),
    (TrainConfig, "output_dir", 5, "not text"),
    (ModelConfig, "dtype", "bf16", "'float32', 'bfloat16', 'float16', 'auto'"),
    (ModelConfig, "encoder_dtype", "half", "'float32', 'bfloat16', 'float16', 'auto'"),
    (ModelConfig, "quantization", "int4", "'nf4', '8bit', or null"),
    (ModelConfig, "projector", "qformer", "'mlp_pool'"),
    (ModelConfig, "visual_tokens_per_slot", 0, "at least 1"),
    (ModelConfig, "summary_tokens", -1, "0 (none) or more"),
    (ModelConfig, "time_marks", "no", "not true or false"),
    (ModelConfig, "media", [8], "not a mapping of MediaConfig fields"),
    (MediaConfig, "num_frames", 0, "at least 1"),
    (MediaConfig, "fps", -2, "above 0, or null"),
    (MediaConfig, "max_side", 0, "at least 1"),
    (MediaConfig, "max_file_mb", 0, "above 0"),
    (LoraConfig, "dropout", 1.0, "at least 0 and below 1"),
    (LoraConfig, "r", 0, "at least 1"),
    (LoraConfig, "target_modules", "q_proj", "not a list"),
    (LoraConfig, "target_modules", [], "at least one module name"),
]


@pytest.mark.parametrize("cls, name, value, allowed", BAD, ids=[f"{c.__name__}.{n}={v!r}" for c, n, v, _ in BAD])
def test_a_bad_value_is_named_in_one_line(cls, name, value, allowed):
    with pytest.raises(ConfigError) as info:
        from_dict(cls, {name: value}, "my.yaml")
    message = str(info.value)
    assert message.startswith(f"my.yaml: {name}: {value!r}") and allowed in message and "\n" not in message
    with pytest.raises(ConfigError, match=f"^{name}: "):  # built in code (dataclasses.replace) as well
        dataclasses.replace(cls(), **{name: value})


def test_nested_fields_name_their_path():
    with pytest.raises(ConfigError, match=r"^run.yaml: lora.dropout: 1.5 is out of range; it must be at least 0"):
        from_dict(TrainConfig, {"lora": {"r": 4, "dropout": 1.5}}, "run.yaml")
    with pytest.raises(ConfigError, match=r"^m.json: lora.target_modules\[1\]: 3 is not text"):
        from_dict(ModelConfig, {"lora": {"target_modules": ["q_proj", 3]}}, "m.json")
    with pytest.raises(ConfigError, match=r"^m.json: media.fps: 'fast' is not a number, or null"):
        from_dict(ModelConfig, {"media": {"fps": "fast"}}, "m.json")


def test_every_field_is_checked_by_its_type_hint():
    """No field escapes the check: each hint is one the checker knows (Literal choices, numbers,
    text, true/false, lists, nested settings, each optionally null)."""
    for cls in (MediaConfig, LoraConfig, ModelConfig, TrainConfig):
        hints = typing.get_type_hints(cls)
        assert set(hints) >= {f.name for f in dataclasses.fields(cls)}
        for f in dataclasses.fields(cls):
            with pytest.raises(ConfigError, match=f"^{f.name}: <object object"):  # no field takes just anything
                cls(**{f.name: object()})


def test_text_numbers_and_whole_numbers():
    cfg = from_dict(TrainConfig, yaml.safe_load("learning_rate: 2e-3\nprojector_lr: 1e-3\nepochs: 2"))
    assert cfg.learning_rate == 0.002 and cfg.projector_lr == 0.001
    assert cfg.epochs == 2 and type(cfg.epochs) is int  # kept as written: feature cache keys hash these values
    media = from_dict(MediaConfig, {"max_audio_seconds": 120})
    assert json.dumps(dataclasses.asdict(media)).count('"max_audio_seconds": 120,') == 1
    with pytest.raises(ConfigError, match="batch_size: True is not a whole number"):
        from_dict(TrainConfig, {"batch_size": True})


def test_unknown_fields_are_refused_with_the_nearest_name():
    with pytest.raises(
        ConfigError,
        match="^r.yaml: allow_media_outside: unknown field of TrainConfig; did you mean allow_outside_media",
    ):
        from_dict(TrainConfig, {"allow_media_outside": True}, "r.yaml")
    with pytest.raises(ConfigError, match="zzz: unknown field of MediaConfig; known fields: num_frames, fps"):
        from_dict(ModelConfig, {"media": {"zzz": 1}})


def test_a_checkpoint_written_with_trim_audio_windows_false_still_loads(tmp_path):
    """Checkpoints saved while the option existed hold `trim_audio_windows: false`: padded windows,
    which is what avllm does now. `true` meant other features, which are gone: refused."""
    shipped = json.loads((STARTER / "avllm_config.json").read_text())
    for value, ok in ((False, True), (True, False)):
        folder = tmp_path / str(value)
        folder.mkdir()
        data = {**shipped, "model": {**shipped["model"], "trim_audio_windows": value}}
        (folder / "avllm_config.json").write_text(json.dumps(data))
        if ok:
            assert load_model_config(str(folder)) == load_model_config(str(STARTER))
        else:
            with pytest.raises(ConfigError, match="trim_audio_windows: only false is accepted: Whisper always"):
                load_model_config(str(folder))
    assert "trim_audio_windows" not in dataclasses.asdict(ModelConfig())  # and never written again


def test_set_overrides_are_checked_and_named():
    cfg = load_train_config(DPO_RECIPE, {"dpo_loss": "ipo", "max_steps": 5})
    assert (cfg.dpo_loss, cfg.max_steps) == ("ipo", 5)
    with pytest.raises(ConfigError, match=r"^--set dpo_loss: 'bogus' is not one of 'sigmoid', 'ipo'$"):
        load_train_config(DPO_RECIPE, {"dpo_loss": "bogus"})
    with pytest.raises(ConfigError, match=r"^--set lora.r: 0 is out of range"):
        load_train_config(DPO_RECIPE, {"lora": {"r": 0}})


def test_a_bad_recipe_file_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(DPO_RECIPE.read_text().replace("dpo_loss: sigmoid", "dpo_loss: hinge"))
    with pytest.raises(ConfigError, match=rf"^{recipe}: dpo_loss: 'hinge' is not one of 'sigmoid', 'ipo'$"):
        load_train_config(recipe, {"max_steps": 5})


@pytest.mark.parametrize(
    "kind, setting, message",
    [
        ("dpo", "dpo_loss=bogus", "--set dpo_loss: 'bogus' is not one of 'sigmoid', 'ipo'"),
        ("dpo", "precision=fp64", "--set precision: 'fp64' is not one of 'bf16', 'fp16', 'fp32', 'auto'"),
        ("dpo", "stage=pretrain", "--set stage: 'pretrain' is not one of 'align', 'instruct', 'dpo'"),
        ("sft", "attention=flash", "--set attention: 'flash' is not one of 'sdpa', 'eager'"),
        ("sft", "max_steps=100", f"{DPO_RECIPE}: stage 'dpo' is not a sft stage; run it with avllm train dpo"),
    ],
)
def test_cli_train_refuses_a_bad_setting_before_loading_anything(kind, setting, message):
    """Before, a bad dpo_loss surfaced only after the model loaded and the whole reference pass ran;
    now `avllm train` stops on it with one line before importing torch."""
    argv = ["train", kind, "--config", str(DPO_RECIPE), "--set", setting]
    code = f"import sys; from avllm.cli import main; rc = main({argv!r}); print(rc, 'torch' in sys.modules)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert done.stderr.strip() == f"avllm: error: {message}"


def test_lr_schedulers_are_transformers_schedules():
    from transformers import SchedulerType

    allowed = typing.get_args(typing.get_type_hints(TrainConfig)["lr_scheduler"])
    assert set(allowed) <= {s.value for s in SchedulerType}


def test_package_folder_finds_an_installed_package_without_importing_it():
    assert package_folder("yaml") == Path(yaml.__file__).parent
    with pytest.raises(ModelLoadError, match="pkg:no-such-pkg: package no_such_pkg is not installed"):
        package_folder("no-such-pkg")
