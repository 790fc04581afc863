"""Supervised fine-tuning: stage `align` (projectors only) then `instruct` (projectors + LoRA)."""

from __future__ import annotations

import time
from pathlib import Path

from ..config import TrainConfig
from ..data.dataset import Collator, InstructionDataset
from ..data.mix import load_mix
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


def run_sft(cfg: TrainConfig, resume: str | None = "auto") -> Path:
    """Train one SFT stage as configured; returns the folder of the saved checkpoint."""
    cfg = resolve_precision(cfg)
    start = time.perf_counter()
    args = training_arguments(cfg)
    records = load_mix(cfg.sources(), "instruction", cfg.seed, cfg.allow_outside_media)
    model = build_model(cfg)
    cache = feature_cache(model, cfg)
    with args.main_process_first(desc="feature cache"):
        dataset = InstructionDataset(records, cache, model, cfg.max_length)
    fit_fresh_projectors(model, cfg, cache, (dataset.examples.record(i).media for i in range(len(dataset))))
    trainer = AVTrainer(
        model=TrainableAVLLM(model),
        args=args,
        train_dataset=dataset,
        data_collator=Collator(model.tokenizer.pad_token_id),
        projector_lr=cfg.projector_lr,
    )
    result = trainer.train(resume_from_checkpoint=resume_point(cfg, resume))
    metrics = {
        **result.metrics,
        "examples": len(dataset),
        "records": len(records),
        "cache": cache.stats,
        "wall_seconds": time.perf_counter() - start,
    }
    return finish(trainer, cfg, metrics)
