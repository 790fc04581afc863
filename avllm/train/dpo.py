"""Direct preference optimisation (Rafailov et al. 2023) on audio-visual answers, with LoRA/QLoRA.

The reference policy is exactly the starting checkpoint, projectors included: its
log-probabilities of every chosen and rejected answer are computed in one pass before the
first step (and saved beside the run, so a resumed run reuses them), so the reference can
never see weights that training changes. LoRA dropout is switched off: at step 0 the policy
then equals the reference, the loss is ln 2 and both rewards are 0.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import TrainerCallback, TrainingArguments

from ..config import DataSource, TrainConfig
from ..data.dataset import PairCollator, PreferenceDataset
from ..data.mix import load_mix
from ..errors import ConfigError
from ..model import AVLLM
from .common import (
    AVTrainer,
    TrainableAVLLM,
    build_model,
    feature_cache,
    finish,
    fit_fresh_projectors,
    resolve_precision,
    resume_point,
    training_arguments,
)

log = logging.getLogger(__name__)
REFERENCE_FILE = "reference_logps.safetensors"
EVAL_REFERENCE_FILE = "reference_logps_eval.safetensors"  # the held-out pairs' (eval_data)


def dpo_loss(
    policy: torch.Tensor, reference: torch.Tensor, beta: float, kind: str = "sigmoid"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """policy, reference: [B, 2] log-probabilities of (chosen, rejected). Returns the loss and the
    logged figures: implicit rewards beta * (policy - reference) of each side, their margin, accuracy."""
    rewards = beta * (policy - reference)
    margin = rewards[:, 0] - rewards[:, 1]
    if kind == "sigmoid":
        loss = -F.logsigmoid(margin).mean()
    elif kind == "ipo":  # Azar et al. 2023: regress the log-ratio margin to 1 / (2 beta)
        loss = ((margin / beta - 1 / (2 * beta)) ** 2).mean()
    else:
        raise ValueError(f"dpo_loss {kind!r}: TrainConfig allows sigmoid or ipo")
    stats = {
        "rewards/chosen": rewards[:, 0].mean(),
        "rewards/rejected": rewards[:, 1].mean(),
        "rewards/margins": margin.mean(),
        "rewards/accuracies": (margin > 0).float().mean(),
    }
    return loss, stats


def pair_sums(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 2] (chosen, rejected) summed log-probabilities of the answers, and their token counts."""
    sums, counts = model(
        batch["input_ids"], batch["attention_mask"], batch["media"], labels=batch["labels"], per_sequence=True
    )
    return sums.view(2, -1).T, counts.view(2, -1).T


def pair_logps(model: nn.Module, batch: dict[str, Any], kind: str) -> torch.Tensor:
    """[B, 2] (chosen, rejected) log-probabilities: summed for sigmoid DPO, per token for IPO."""
    sums, counts = pair_sums(model, batch)
    return sums / counts.clamp(min=1) if kind == "ipo" else sums


@torch.no_grad()
def reference_logps(
    model: AVLLM, dataset: PreferenceDataset, collator: PairCollator, batch_size: int, kind: str
) -> torch.Tensor:
    """The starting policy's log-probabilities of every pair, in one pass."""
    wrapper = TrainableAVLLM(model).eval()
    out = []
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size, collate_fn=collator), desc="reference log-probs"):
        out.append(pair_logps(wrapper, batch, kind).float().cpu())
    wrapper.train()
    return torch.cat(out)


def with_reference(
    dataset: PreferenceDataset,
    saved: Path,
    model: AVLLM,
    collator: PairCollator,
    cfg: TrainConfig,
    args: TrainingArguments,
) -> None:
    """Give the pairs the starting policy's log-probabilities: read from `saved` when a run is
    resumed, else computed (by rank 0 first; the other ranks then read its file)."""
    with args.main_process_first(desc="reference log-probs"):
        if saved.is_file() and len(load_file(saved)["logps"]) == len(dataset):
            dataset.reference = load_file(saved)["logps"]
        else:
            dataset.reference = reference_logps(model, dataset, collator, cfg.batch_size, cfg.dpo_loss)
            if args.should_save:
                saved.parent.mkdir(parents=True, exist_ok=True)
                save_file({"logps": dataset.reference}, saved)


def without_lora_dropout(model: AVLLM) -> None:
    for module in model.llm.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


class EvaluateAtEnd(TrainerCallback):
    """Score the held-out pairs at the last step too, so their curve ends where training does."""

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
        return control


class DPOTrainer(AVTrainer):
    def __init__(self, *args: Any, beta: float, loss_kind: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.beta, self.loss_kind = beta, loss_kind
        self.stats: dict[str, list[float]] = defaultdict(list)

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        policy = pair_logps(model, inputs, self.loss_kind)
        loss, stats = dpo_loss(policy, inputs["reference"].to(policy.device), self.beta, self.loss_kind)
        for key, value in stats.items():
            self.stats[key].append(float(value.detach()))
        return (loss, {"policy": policy}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if not any(k.startswith("eval_") for k in logs):  # a training log: the figures of the steps since the last
            logs.update({k: sum(v) / len(v) for k, v in self.stats.items() if v})
            self.stats.clear()
        super().log(logs, *args, **kwargs)

    @torch.no_grad()
    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """The held-out pairs scored as training scores its own (loss, rewards, their accuracy), plus
        the preference accuracy: the share of pairs whose chosen answer the policy finds likelier per
        token than the rejected one, as `avllm eval` compares options. At step 0 the rewards are 0 by
        construction, while the preference accuracy is the SFT model's own."""
        model = self.model
        was_training = model.training
        model.eval()
        sums, counts, refs = [], [], []
        for batch in self.get_eval_dataloader(eval_dataset):
            s, c = pair_sums(model, batch)
            sums.append(s.float())
            counts.append(c.float())
            refs.append(batch["reference"].float())
        model.train(was_training)
        gather = self.accelerator.gather_for_metrics
        sums, counts, refs = gather(torch.cat(sums)), gather(torch.cat(counts)), gather(torch.cat(refs))
        policy = sums / counts.clamp(min=1) if self.loss_kind == "ipo" else sums
        loss, stats = dpo_loss(policy, refs.to(policy.device), self.beta, self.loss_kind)
        per_token = sums / counts.clamp(min=1)
        figures = {"loss": loss, **stats, "preference_accuracy": (per_token[:, 0] > per_token[:, 1]).float().mean()}
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in figures.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def run_dpo(cfg: TrainConfig, resume: str | None = "auto") -> Path:
    """Preference-tune an SFT checkpoint as configured; returns the saved checkpoint's folder."""
    if cfg.stage != "dpo":
        raise ConfigError(f"stage {cfg.stage!r}: a DPO recipe has stage: dpo")
    cfg = resolve_precision(cfg)
    start = time.perf_counter()
    args = training_arguments(dataclasses.replace(cfg, group_by_length=False))  # pairs keep their random order
    records = load_mix(cfg.sources(), "preference", cfg.seed, cfg.allow_outside_media)
    model = build_model(cfg)
    without_lora_dropout(model)
    cache = feature_cache(model, cfg)
    collator = PairCollator(model.tokenizer.pad_token_id)
    with args.main_process_first(desc="feature cache"):
        dataset = PreferenceDataset(records, cache, model, cfg.max_length)
    fit_fresh_projectors(model, cfg, cache, (dataset.examples.record(i).media for i in range(len(dataset))))
    held_out = None
    if cfg.eval_data:
        held_out_records = load_mix([DataSource(cfg.eval_data)], "preference", cfg.seed, cfg.allow_outside_media)
        with args.main_process_first(desc="feature cache"):
            held_out = PreferenceDataset(held_out_records, cache, model, cfg.max_length)
    for data, name in ((dataset, REFERENCE_FILE), (held_out, EVAL_REFERENCE_FILE)):
        if data is not None:
            with_reference(data, Path(cfg.output_dir) / name, model, collator, cfg, args)
    trainer = DPOTrainer(
        model=TrainableAVLLM(model),
        args=args,
        train_dataset=dataset,
        eval_dataset=held_out,
        data_collator=collator,
        projector_lr=cfg.projector_lr,
        beta=cfg.beta,
        loss_kind=cfg.dpo_loss,
        callbacks=[EvaluateAtEnd()] if held_out is not None else None,
    )
    result = trainer.train(resume_from_checkpoint=resume_point(cfg, resume))
    metrics = {
        **result.metrics,
        "pairs": len(dataset),
        "records": len(records),
        "held_out_pairs": len(held_out) if held_out is not None else 0,
        "wall_seconds": time.perf_counter() - start,
    }
    return finish(trainer, cfg, metrics)
