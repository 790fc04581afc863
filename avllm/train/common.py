"""What SFT and DPO share: building the model for a stage, the feature cache, and a
transformers Trainer that saves and resumes avllm checkpoints (projectors + LoRA only).

Trainer brings accelerate (DDP, FSDP, DeepSpeed through `accelerate launch`), mixed
precision, gradient accumulation and checkpointing, TensorBoard, a progress bar, and resuming
with the same data order; avllm only teaches it what a checkpoint is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME

from ..config import LoraConfig, ModelConfig, TrainConfig, load_model_config, to_dict
from ..data.cache import FeatureCache
from ..errors import ConfigError
from ..llm import AUTO, native_bf16
from ..model import AVLLM, CONFIG_FILE, default_device

log = logging.getLogger(__name__)
STATS_CLIPS = 256  # clips sampled to fit fresh projectors' input standardisation


def build_model(cfg: TrainConfig) -> AVLLM:
    """The model a stage starts from: the preset or checkpoint named by cfg.model, prepared for the stage.
    Seeded first, so a fresh adapter starts alike in every run and on every rank (a rerun, a resumed
    run and a multi-process run then train the same weights)."""
    set_seed(cfg.seed)
    model = prepare_for_stage(AVLLM.from_config(stage_model_config(cfg), default_device()), cfg)
    model.llm.set_attn_implementation(cfg.attention)  # a peft wrapper passes it to the LLM
    if starts_from_checkpoint(cfg):
        model.load_trainable(cfg.model)
    if cfg.compile:
        compile_layers(model)
    return model


def compile_layers(model: AVLLM) -> None:
    """Compile the LLM's decoder layers in place, each with the same code, so one graph (and one
    for inputs without padding) serves them all; the state dict keeps its names. It fuses the
    norms, activations and LoRA additions, for faster steps once compiled
    (`bench/train_step.py --compile` times both); gradients stay as close to float32's as eager
    bfloat16's."""
    for layer in model.base_llm.get_decoder().layers:
        layer.compile(dynamic=True)


def stage_model_config(cfg: TrainConfig) -> ModelConfig:
    """cfg.model's settings with the recipe's quantization and subtitles, and an adapter for the LoRA stages."""
    config = load_model_config(cfg.model)
    if cfg.quantization is not None:
        config = dataclasses.replace(config, quantization=cfg.quantization)
    if cfg.subtitles is not None:
        config = dataclasses.replace(config, subtitles=cfg.subtitles)
    if cfg.stage != "align" and config.lora is None:
        config = dataclasses.replace(config, lora=cfg.lora or LoraConfig())
    return config


def prepare_for_stage(model: AVLLM, cfg: TrainConfig) -> AVLLM:
    """Set exactly the parameters the stage trains trainable.

    align: projectors only. instruct and dpo: projectors and a fresh LoRA adapter (QLoRA when
    the LLM is loaded in 4-bit). The encoders and the LLM's own weights stay frozen.
    """
    for param in model.llm.parameters():
        param.requires_grad_(False)
    if model.config.lora is not None:
        if model.config.quantization:
            from peft import prepare_model_for_kbit_training

            model.llm = prepare_model_for_kbit_training(
                model.llm, use_gradient_checkpointing=cfg.gradient_checkpointing
            )
        model.add_lora()
        if cfg.precision != "fp32":
            # peft casts each LoRA layer's input to the adapter's float32 and back; under autocast the
            # matmuls run in bf16/fp16 anyway, so the casts are pure copies (bench/train_step.py
            # times both precisions)
            from peft.tuners.tuners_utils import BaseTunerLayer

            for module in model.llm.modules():
                if isinstance(module, BaseTunerLayer):
                    module.cast_input_dtype_enabled = False
    for proj in model.projectors().values():
        proj.float().requires_grad_(True)  # trained in float32; autocast computes in bf16/fp16
    return model


def starts_from_checkpoint(cfg: TrainConfig) -> bool:
    """Whether the stage continues an avllm checkpoint (else it starts from a preset's fresh projectors)."""
    return (Path(cfg.model) / CONFIG_FILE).is_file()


def fit_fresh_projectors(model: AVLLM, cfg: TrainConfig, cache: FeatureCache, media: Iterable[Path]) -> None:
    """Projectors that start from scratch first fit their input standardisation on the stage's first
    distinct clips; a checkpoint carries its own (and resuming restores it)."""
    if not starts_from_checkpoint(cfg):
        sample: dict[Path, None] = {}
        for path in media:
            sample.setdefault(path)
            if len(sample) == STATS_CLIPS:
                break
        model.fit_projector_inputs([cache.get(m) for m in sample])


def feature_cache(model: AVLLM, cfg: TrainConfig) -> FeatureCache:
    return FeatureCache(model, cfg.feature_cache)


class TrainableAVLLM(nn.Module):
    """What the Trainer sees: AVLLM's forward with batch keys as arguments."""

    def __init__(self, avllm: AVLLM):
        super().__init__()
        self.avllm = avllm

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        media: list,
        labels: torch.Tensor | None = None,
        per_sequence: bool = False,
    ) -> Any:
        """The loss (SFT), or with per_sequence each row's summed label log-probability and count (DPO)."""
        if per_sequence:
            return self.avllm.sequence_logps(input_ids, attention_mask, media, labels)
        return self.avllm(input_ids, attention_mask, media, labels=labels)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **_: Any) -> None:
        self.avllm.llm.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=activation_checkpointing_kwargs or {"use_reentrant": False}
        )


class AVTrainer(Trainer):
    """A Trainer whose checkpoints are avllm checkpoints (config, projectors, adapter), with
    the projectors in their own optimizer group so they can learn at their own rate."""

    def __init__(self, *args: Any, projector_lr: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.projector_lr = projector_lr

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            avllm = self.accelerator.unwrap_model(model or self.model).avllm
            projectors = [p for proj in avllm.projectors().values() for p in proj.parameters()]
            known = {id(p) for p in projectors}
            others = [p for p in avllm.parameters() if p.requires_grad and id(p) not in known]
            decay = {"weight_decay": self.args.weight_decay}
            groups = [{"params": projectors, "lr": self.projector_lr or self.args.learning_rate, **decay}]
            groups += [{"params": others, **decay}] if others else []
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, avllm)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.args.should_save:
            self.accelerator.unwrap_model(self.model).avllm.save_pretrained(output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        log.warning("resuming from %s", resume_from_checkpoint)
        self.accelerator.unwrap_model(model or self.model).avllm.load_trainable(resume_from_checkpoint)


def resolve_precision(cfg: TrainConfig) -> TrainConfig:
    """precision: auto made concrete: bf16 autocast where the device computes in bfloat16, else fp32."""
    if cfg.precision != AUTO:
        return cfg
    return dataclasses.replace(cfg, precision="bf16" if native_bf16(default_device()) else "fp32")


def training_arguments(cfg: TrainConfig) -> TrainingArguments:
    on_gpu = torch.cuda.is_available()
    cfg = resolve_precision(cfg)
    if cfg.precision == "fp16" and not on_gpu:
        raise ConfigError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    return TrainingArguments(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        use_cpu=not on_gpu,
        activation_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        # DPO with held-out pairs: scored before the first step (the curve's start), then every eval_steps
        eval_strategy="steps" if cfg.eval_data else "no",
        eval_steps=cfg.eval_steps,
        eval_on_start=bool(cfg.eval_data),
        per_device_eval_batch_size=cfg.batch_size,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=cfg.dataloader_workers,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        label_names=["labels"],
        report_to=["tensorboard"],
        disable_tqdm=False,  # the CLI quiets transformers, which would otherwise hide the bar
    )


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint-N in folder whose trainer state reads back. Trainer writes that file
    last, so a run killed while saving leaves a folder without it (or with half of it): skipped."""
    found = [
        (int(m.group(1)), path)
        for path in folder.glob("checkpoint-*")
        if path.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", path.name))
    ]
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / TRAINER_STATE_NAME).read_text())
            return str(path)
        except (OSError, ValueError):
            log.warning("skipping %s: incomplete (the run was killed while saving it)", path)
    return None


def resume_point(cfg: TrainConfig, resume: str | None) -> str | None:
    """`auto`: the newest checkpoint in output_dir, if a run was interrupted; `none`: start over."""
    if resume in (None, "none"):
        return None
    if resume == "auto":
        return last_complete_checkpoint(Path(cfg.output_dir))
    if not Path(resume).is_dir():
        raise ConfigError(f"--resume {resume}: no such checkpoint folder")
    return resume


def finish(trainer: AVTrainer, cfg: TrainConfig, metrics: dict[str, Any]) -> Path:
    """Save the final checkpoint with the run's settings and figures beside it."""
    out = Path(cfg.output_dir)
    trainer.save_model(str(out))
    if trainer.args.should_save:
        (out / "train_config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        accelerator = trainer.accelerator
        history = {
            "distributed": {"type": accelerator.distributed_type.value, "processes": accelerator.num_processes},
            "log_history": trainer.state.log_history,
        }
        (out / "train_metrics.json").write_text(json.dumps({**metrics, **history}, indent=2))
    return out
