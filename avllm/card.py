"""The model card (README.md) `avllm export` writes beside the weights, so that the folder uploads to
the Hugging Face Hub as it is and loads back with `--model hf:ORG/NAME`.

It says what the model is made of (the config), what it was trained on (each stage's recipe, found
by following the run's train_config.yaml back through the checkpoints it started from) and how it
scored (`avllm eval` reports: given with --eval, or found among the checkpoint's JSON files).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from .config import ModelConfig, load_model_config, load_yaml, to_dict
from .errors import ConfigError

CARD_FILE = "README.md"
RECIPE_FILE = "train_config.yaml"  # written by training beside each run's final checkpoint
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def model_card(src: str | Path, dst: str | Path, evals: list[str | Path] | None = None) -> Any:
    """The card (a huggingface_hub ModelCard; `.save(DST/README.md)`) for the checkpoint SRC exported to
    DST; `evals` are `avllm eval --out` reports. Built before the export, so a bad report fails first."""
    from huggingface_hub import ModelCard, ModelCardData

    src, dst = Path(src), Path(dst)
    config = load_model_config(str(src))
    reports = [_read_report(Path(p)) for p in evals] if evals else _found_reports(src)
    data = ModelCardData(
        library_name="avllm",
        pipeline_tag="video-text-to-text",
        tags=["avllm", "audio-visual", "video-text-to-text", *(["lora"] if config.lora else [])],
        base_model=config.llm if _is_hub_id(config.llm) else None,
    )
    body = [
        f"# {dst.resolve().name}",
        "",
        _summary(config),
        "",
        "## Use",
        "",
        "With avllm installed:",
        "",
        "```bash",
        'avllm chat --model hf:ORG/NAME clip.mp4 "What is happening, and what can be heard?"',
        "```",
        "",
        "`ORG/NAME` is where this folder was uploaded; `--model` also takes the folder itself.",
        "",
        "## Model",
        "",
        "```yaml",
        yaml.safe_dump(to_dict(config), sort_keys=False).rstrip(),
        "```",
        "",
        "## Training data",
        "",
        *_training(src),
        "",
        "## Evaluation",
        "",
        *(_evaluation(reports) if reports else ["No `avllm eval` report was given (`avllm export --eval FILE`)."]),
    ]
    return ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body) + "\n")


def _is_hub_id(spec: str) -> bool:
    return bool(HUB_ID.match(spec)) and not Path(spec).exists()


def _summary(config: ModelConfig) -> str:
    weights = f", {config.visual_pretrained} weights" if config.visual_pretrained else ""
    adapter = f", with a LoRA adapter (r={config.lora.r})" if config.lora else ""
    quant = f", loaded in {config.quantization}" if config.quantization else ""
    text = (
        f"An avllm audio-visual chat model: Whisper `{config.audio_encoder}` (sound) and open_clip "
        f"`{config.visual_encoder}` (frames{weights}) feed learned projectors into the LLM `{config.llm}`"
        f"{adapter}{quant}. This folder holds what training changed (the projectors and the adapter, as "
        "safetensors); the encoders and the LLM are loaded by the names above."
    )
    if not config.visual_pretrained:
        text += "\n\nThe visual encoder has no pretrained weights (random initialisation): its features are not CLIP's."
    return text


def _training(src: Path) -> list[str]:
    """One row per stage, newest first: each run's recipe names the checkpoint it started from."""
    rows, seen, folder = [], set(), src
    while (folder / RECIPE_FILE).is_file() and folder.resolve() not in seen:
        seen.add(folder.resolve())
        recipe = load_yaml(folder / RECIPE_FILE)
        data = recipe.get("data", "")
        named = data if isinstance(data, str) else json.dumps(data)
        rows.append(f"| {recipe.get('stage', '?')} | `{named}` | `{recipe.get('model', '?')}` |")
        folder = Path(str(recipe.get("model", "")))
    if not rows:
        return [f"Not recorded: {src} holds no {RECIPE_FILE} (export a training run's output_dir to name its data)."]
    return ["| stage | data | started from |", "|---|---|---|", *rows]


def _read_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--eval {path}: cannot read it as JSON ({exc}); pass an `avllm eval --out` file") from exc
    if not _is_report(report):
        raise ConfigError(f"--eval {path}: not an `avllm eval` report (no tasks); pass an `avllm eval --out` file")
    return report


def _found_reports(src: Path) -> list[dict[str, Any]]:
    """`avllm eval` reports saved in the checkpoint folder (e.g. `--out CKPT/eval.json`)."""
    found = []
    for path in sorted(src.glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # not a report: other files live there too
        if _is_report(report):
            found.append(report)
    return found


def _is_report(report: Any) -> bool:
    return isinstance(report, dict) and isinstance(report.get("tasks"), dict) and "model" in report


def _evaluation(reports: list[dict[str, Any]]) -> list[str]:
    from .eval import markdown

    return [markdown(r).rstrip() + "\n" for r in reports]
