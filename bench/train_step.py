"""Time one training step (forward and backward) of a recipe at each precision, attention
kernel and compile setting, on the same batches.

Builds the stage's model the way `avllm train sft` does (so bf16 gets the same autocast and
the same LoRA input handling), reads the clips from the feature cache, and prints per precision
and kernel the seconds of each batch, their median, and the losses (which should agree to a few
digits). With --compile both settings run; the first compiled batches include the compiling.
Build the cache first with `avllm features --data DATA`.

    python bench/train_step.py [--config starter-instruct] [--data FILE]
                               [--model CHECKPOINT] [--batches 4] [--precisions fp32 bf16]
                               [--attention eager sdpa] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import time

import torch

from avllm.config import load_train_config
from avllm.data import formats
from avllm.data.dataset import Collator, InstructionDataset
from avllm.train.common import build_model, feature_cache, resolve_precision


def time_steps(config: str, overrides: dict, batches: int) -> tuple[list[float], list[float]]:
    cfg = resolve_precision(load_train_config(config, overrides))
    model = build_model(cfg)
    records = formats.load(cfg.data, "instruction")[: batches * cfg.batch_size]
    data = InstructionDataset(records, feature_cache(model, cfg), model, cfg.max_length)
    collate = Collator(model.tokenizer.pad_token_id)
    trained = [p for p in model.parameters() if p.requires_grad]
    seconds, losses = [], []
    for i in range(batches):
        batch = collate([data[j] for j in range(i * cfg.batch_size, (i + 1) * cfg.batch_size)])
        autocast = torch.autocast("cpu", torch.bfloat16) if cfg.precision == "bf16" else contextlib.nullcontext()
        start = time.perf_counter()
        with autocast:
            loss = model(batch["input_ids"], batch["attention_mask"], batch["media"], labels=batch["labels"]).loss
        loss.backward()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
        for p in trained:
            p.grad = None
    return seconds, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="starter-instruct", help="recipe name or YAML file")
    ap.add_argument("--data", default=None, help="records to batch (default: the recipe's data)")
    ap.add_argument("--model", default=None, help="checkpoint to start from (default: the recipe's model)")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--attention", nargs="+", default=["sdpa"], help="the LLM's attention kernels: sdpa, eager")
    ap.add_argument("--compile", action="store_true", help="time the decoder layers compiled as well as not")
    args = ap.parse_args()
    base = {k: v for k, v in (("data", args.data), ("model", args.model)) if v}
    compiles = [False, True] if args.compile else [False]
    for precision, attention, compiled in itertools.product(args.precisions, args.attention, compiles):
        overrides = {**base, "precision": precision, "attention": attention, "compile": compiled}
        seconds, losses = time_steps(args.config, overrides, args.batches)
        print(
            f"{precision}, {attention} attention{', compiled' if compiled else ''}: "
            f"step s {[round(s, 2) for s in seconds]}, "
            f"median {statistics.median(seconds):.2f}; "
            f"loss {[round(x, 4) for x in losses]}",
            flush=True,
        )


if __name__ == "__main__":
    main()
