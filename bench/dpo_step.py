"""Time DPO's two kinds of work, a reference batch (forward only) and a training step (forward and
backward of the chosen and rejected answers), at each number of torch threads, on the same pairs.

Builds the model the way `avllm train dpo` does and reads the clips from the feature cache (fill
it first: `avllm features --data PAIRS`). Prints, per thread count and round, the mean wall and
CPU seconds of a batch: on a CPU shared with other work, wall above CPU means the process waited
for a core, and CPU far above one thread's means threads spinning while they wait on each other.

    python bench/dpo_step.py --data runs/dpo/train.jsonl [--model avllm/weights/starter]
                             [--cache DIR] [--batches 3] [--threads 1 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from avllm.config import load_train_config
from avllm.data import formats
from avllm.data.dataset import PairCollator, PreferenceDataset
from avllm.train.common import TrainableAVLLM, build_model, feature_cache
from avllm.train.dpo import dpo_loss, pair_logps, without_lora_dropout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="starter-dpo", help="recipe name or YAML file")
    ap.add_argument("--data", required=True, help="preference pairs to batch")
    ap.add_argument("--model", default=None, help="checkpoint to start from (default: the recipe's model)")
    ap.add_argument("--cache", default=None, help="feature cache folder (default: the recipe's)")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2, help="each thread count is timed this many times, in turn")
    args = ap.parse_args()
    overrides = {"data": args.data, "eval_data": None}
    overrides.update({k: v for k, v in (("model", args.model), ("feature_cache", args.cache)) if v})
    cfg = load_train_config(args.config, overrides)
    model = build_model(cfg)
    without_lora_dropout(model)
    pairs = formats.load(cfg.data, "preference")[: args.batches * cfg.batch_size]
    data = PreferenceDataset(pairs, feature_cache(model, cfg), model, cfg.max_length)
    collate = PairCollator(model.tokenizer.pad_token_id)
    batches = [
        collate([data[j] for j in range(i, min(i + cfg.batch_size, len(data)))])
        for i in range(0, len(data), cfg.batch_size)
    ]
    policy = TrainableAVLLM(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    print(f"{len(batches)} batches of {cfg.batch_size} pairs from {args.data}")
    for _ in range(args.rounds):
        for threads in args.threads:
            torch.set_num_threads(threads)
            wall, cpu = time.perf_counter(), time.process_time()
            with torch.no_grad():
                for batch in batches:
                    pair_logps(policy, batch, cfg.dpo_loss)
            ref_wall, ref_cpu = time.perf_counter() - wall, time.process_time() - cpu
            wall, cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                logps = pair_logps(policy, batch, cfg.dpo_loss)
                loss, _ = dpo_loss(logps, logps.detach(), cfg.beta, cfg.dpo_loss)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            step_wall, step_cpu = time.perf_counter() - wall, time.process_time() - cpu
            n = len(batches)
            print(
                f"threads {threads}: reference batch {ref_wall / n:.1f} s wall, {ref_cpu / n:.1f} s CPU; "
                f"training step {step_wall / n:.1f} s wall, {step_cpu / n:.1f} s CPU",
                flush=True,
            )


if __name__ == "__main__":
    main()
