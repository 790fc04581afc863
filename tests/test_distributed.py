# ruff: noqa: F811 (pytest fixtures imported from test_train and test_dpo)
"""The shipped accelerate configs, run for real: two gloo processes on the CPU with a tiny model.

Each run uses configs/accelerate/ddp.yaml or fsdp.yaml as shipped, with only what a CPU needs on
the command line (two processes, no mixed precision, a free port; without CUDA the processes talk
over gloo). Every run must end with the weights a single process trains on the same data with the
same effective batch (per-device batch x 2 processes), also after a kill -9 and a resume.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_dpo import recipe as dpo_recipe
from test_dpo import sft_checkpoint  # noqa: F401
from test_train import dataset_dir, recipe, tiny_preset  # noqa: F401

from avllm.config import TrainConfig, from_dict, to_dict

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(config: str, kind: str, settings: dict, tmp_path: Path) -> subprocess.Popen:
    """`accelerate launch` with a shipped config and the CPU's overrides, in its own process group."""
    path = tmp_path / f"{Path(settings['output_dir']).name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    cmd = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--config_file", str(REPO / "configs" / "accelerate" / f"{config}.yaml")),
        *("--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port())),
        *("-m", "avllm.cli", "train", kind, "--config", str(path)),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def finished(proc: subprocess.Popen, out: Path) -> dict:
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    return json.loads((out / "train_metrics.json").read_text())


def trained(folder: Path) -> dict[str, torch.Tensor]:
    weights = load_file(folder / "projectors.safetensors")
    adapter = folder / "adapter" / "adapter_model.safetensors"
    if adapter.is_file():
        weights.update({f"adapter.{k}": v for k, v in load_file(adapter).items()})
    return weights


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = trained(a), trained(b)
    assert wa.keys() == wb.keys() and any("lora_B" in k for k in wa)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5, msg=name)


def sft_settings(tmp_path, preset, data, name, batch_size) -> dict:
    return recipe(
        tmp_path,
        preset,
        data,
        output_dir=str(tmp_path / name),
        batch_size=batch_size,
        max_steps=8,
        save_steps=4,
        save_total_limit=4,
        group_by_length=False,
    )


@pytest.fixture(scope="module")
def single_sft(tmp_path_factory, tiny_preset, dataset_dir):
    from avllm.train.sft import run_sft

    tmp_path = tmp_path_factory.mktemp("single-sft")
    return run_sft(from_dict(TrainConfig, sft_settings(tmp_path, tiny_preset, dataset_dir, "single", 4)))


@pytest.mark.slow  # two Python processes under accelerate launch: tens of seconds
@pytest.mark.parametrize("config", ["ddp", "fsdp"])
def test_sft_on_two_processes_trains_the_single_process_weights(
    config,
    single_sft,
    tmp_path,
    tiny_preset,
    dataset_dir,
):
    settings = sft_settings(tmp_path, tiny_preset, dataset_dir, config, 2)
    metrics = finished(launch(config, "sft", settings, tmp_path), tmp_path / config)
    # accelerate applies FSDP to GPU process groups only: on the CPU fsdp.yaml runs as plain data
    # parallel (docs/training.md says what that leaves unchecked)
    assert metrics["distributed"] == {"type": "MULTI_CPU", "processes": 2}
    assert_same_weights(single_sft, tmp_path / config)


@pytest.mark.slow  # two Python processes under accelerate launch: tens of seconds
def test_ddp_killed_then_resumed_trains_the_single_process_weights(
    single_sft,
    tmp_path,
    tiny_preset,
    dataset_dir,
):
    settings = sft_settings(tmp_path, tiny_preset, dataset_dir, "killed", 2)
    proc = launch("ddp", "sft", settings, tmp_path)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
    proc.wait()
    assert not (tmp_path / "killed" / "projectors.safetensors").exists()  # it really died mid-run
    metrics = finished(launch("ddp", "sft", settings, tmp_path), tmp_path / "killed")
    assert metrics["distributed"]["processes"] == 2
    assert_same_weights(single_sft, tmp_path / "killed")


@pytest.mark.slow  # two Python processes under accelerate launch: tens of seconds
def test_dpo_under_ddp_trains_the_single_process_weights(sft_checkpoint, tmp_path):
    from avllm.train.dpo import run_dpo

    def settings(name: str, batch_size: int) -> dict:
        cfg = dpo_recipe(sft_checkpoint, tmp_path, output_dir=str(tmp_path / name), batch_size=batch_size, max_steps=6)
        return to_dict(cfg)

    single = run_dpo(from_dict(TrainConfig, settings("single", 4)))
    metrics = finished(launch("ddp", "dpo", settings("ddp", 2), tmp_path), tmp_path / "ddp")
    assert metrics["distributed"] == {"type": "MULTI_CPU", "processes": 2}
    assert_same_weights(single, tmp_path / "ddp")


def features_cli(preset: str, data: Path, cache: Path, *extra: str, ranks: int = 1) -> subprocess.Popen:
    """`avllm features`, alone or on `ranks` processes under accelerate launch with the shipped ddp.yaml."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    launcher += ["--config_file", str(REPO / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", str(ranks)]
    launcher += ["--mixed_precision", "no", "--main_process_port", str(free_port())]
    cmd = [*(launcher if ranks > 1 else [sys.executable]), "-m", "avllm.cli", "features", "--data", str(data)]
    cmd += ["--model", preset, "--cache", str(cache), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # two Python processes under accelerate launch: tens of seconds
def test_features_sharded_over_two_processes_cache_every_clip_once(tmp_path, tiny_preset, dataset_dir):
    data, cache = dataset_dir / "train.jsonl", tmp_path / "cache"
    out, err = features_cli(tiny_preset, data, cache, ranks=2).communicate(timeout=300)
    summaries = sorted(line.split(";")[0] for line in out.splitlines() if line.startswith("shard"))
    assert summaries == [
        "shard 0/2: 2 clips: 0 cached already, 2 built, 0 rebuilt",
        "shard 1/2: 2 clips: 0 cached already, 2 built, 0 rebuilt",
    ], err[-3000:]
    assert len(list(cache.glob("*/*/*.safetensors"))) == 4  # the four clips, each once
    assert not list(cache.glob("*/*/*.tmp*"))
    again, _ = features_cli(tiny_preset, data, cache).communicate(timeout=300)  # a resumed or later run
    assert "4 clips: 4 cached already, 0 built, 0 rebuilt" in again


def test_deepspeed_zero2_config_becomes_a_stage_2_deepspeed_config():
    """DeepSpeed needs CUDA, so no run on the CPU: the shipped file must at least parse as accelerate
    reads it and give DeepSpeed the settings it names (docs/training.md)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / "deepspeed-zero2.yaml"))
    assert config.distributed_type == DistributedType.DEEPSPEED and config.mixed_precision == "bf16"
    ds = DeepSpeedPlugin(**config.deepspeed_config).deepspeed_config
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert ds["zero_optimization"]["offload_param"]["device"] == "none"
    assert (ds["gradient_accumulation_steps"], ds["gradient_clipping"]) == (1, 1.0)
    assert ds["train_micro_batch_size_per_gpu"] == "auto"  # the Trainer fills in the recipe's batch size
