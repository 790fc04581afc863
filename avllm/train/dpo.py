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

from ..config import TrainConfig
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


def pair_logps(model: nn.Module, batch: dict[str, Any], kind: str) -> torch.Tensor:
    """[B, 2] (chosen, rejected) log-probabilities: summed for sigmoid DPO, per token for IPO."""
    sums, counts = model(
        batch["input_ids"], batch["attention_mask"], batch["media"], labels=batch["labels"], per_sequence=True
    )
    values = sums / counts.clamp(min=1) if kind == "ipo" else sums
    return values.view(2, -1).T


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


def without_lora_dropout(model: AVLLM) -> None:
    for module in model.llm.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


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
        logs.update({k: sum(v) / len(v) for k, v in self.stats.items() if v})
        self.stats.clear()
        super().log(logs, *args, **kwargs)


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
    saved = Path(cfg.output_dir) / REFERENCE_FILE
    with args.main_process_first(desc="reference log-probs"):  # the other ranks then read rank 0's file
        if saved.is_file() and len(load_file(saved)["logps"]) == len(dataset):
            dataset.reference = load_file(saved)["logps"]
        else:
            dataset.reference = reference_logps(model, dataset, collator, cfg.batch_size, cfg.dpo_loss)
            if args.should_save:
                saved.parent.mkdir(parents=True, exist_ok=True)
                save_file({"logps": dataset.reference}, saved)
    trainer = DPOTrainer(
        model=TrainableAVLLM(model),
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        projector_lr=cfg.projector_lr,
        beta=cfg.beta,
        loss_kind=cfg.dpo_loss,
    )
    result = trainer.train(resume_from_checkpoint=resume_point(cfg, resume))
    metrics = {
        **result.metrics,
        "pairs": len(dataset),
        "records": len(records),
        "wall_seconds": time.perf_counter() - start,
    }
    return finish(trainer, cfg, metrics)
