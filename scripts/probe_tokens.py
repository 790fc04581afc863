"""Does a trained model's media carry a fact in a form that generalises? A linear probe, per set
of tokens (the summary tokens, the slot tokens), trained on the synthetic training clips and
scored on held-out ones.

A fact the probe reads on the training clips but not on held-out ones is memorised per clip,
not encoded; one it reads on both but the model answers at chance is there and unread.

    python scripts/probe_tokens.py --model avllm/weights/starter [--fact motion]
                                   [--train runs/synth/train] [--test runs/synth/test]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from avllm.data.cache import FeatureCache
from avllm.model import AVLLM


def media_tokens(
    model: AVLLM, cache: FeatureCache, folder: Path, fact: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Per token set [clips, features] for the one-group clips of a synth folder, and their labels."""
    sets: dict[str, list[torch.Tensor]] = {"summary": [], "slot": []}
    labels = []
    summary = model.config.summary_tokens
    for line in (folder / "clips.jsonl").read_text().splitlines():
        clip = json.loads(line)
        if clip["scene"] != "one":
            continue
        with torch.no_grad():
            tokens = model.media_embeds(cache.get(folder / clip["media"])).float()
        sets["summary"].append(tokens[len(tokens) - summary :].flatten())
        sets["slot"].append(tokens[: len(tokens) - summary].flatten())
        labels.append(str(clip[fact]))
    return {name: torch.stack(rows) for name, rows in sets.items() if rows and rows[0].numel()}, labels


def probe(
    train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, weight_decay: float, steps: int = 300
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on standardised inputs (Adam, full batch): predictions on both."""
    mean, std = train.mean(0), train.std(0) + 1e-4
    train, test = (train - mean) / std, (test - mean) / std
    weight = torch.zeros(train.shape[1], int(train_y.max()) + 1, requires_grad=True)
    bias = torch.zeros(weight.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        (F.cross_entropy(train @ weight + bias, train_y) + weight_decay * weight.pow(2).sum()).backward()
        optimizer.step()
    with torch.no_grad():
        return (train @ weight + bias).argmax(1), (test @ weight + bias).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder")
    parser.add_argument("--fact", default="motion", help="a field of clips.jsonl (motion, count, shape, colour)")
    parser.add_argument("--train", type=Path, default=Path("runs/synth/train"))
    parser.add_argument("--test", type=Path, default=Path("runs/synth/test"))
    args = parser.parse_args()
    model = AVLLM.load(args.model)
    cache = FeatureCache(model)
    train, train_labels = media_tokens(model, cache, args.train, args.fact)
    test, test_labels = media_tokens(model, cache, args.test, args.fact)
    names = sorted(set(train_labels) | set(test_labels))
    train_y = torch.tensor([names.index(x) for x in train_labels])
    test_y = torch.tensor([names.index(x) for x in test_labels])
    for tokens in train:
        for weight_decay in (1e-3, 1e-2, 1e-1):
            on_train, on_test = probe(train[tokens], train_y, test[tokens], weight_decay)
            print(
                f"{args.fact} from the {tokens} tokens ({train[tokens].shape[1]} numbers), "
                f"weight decay {weight_decay}: "
                f"training clips {(on_train == train_y).float().mean():.2f}, "
                f"held-out {(on_test == test_y).float().mean():.2f} "
                f"({len(test_y)} clips)",
                flush=True,
            )


if __name__ == "__main__":
    main()
