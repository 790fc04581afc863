"""Models by hub id from a local Hugging Face cache (offline), and the model card `avllm export` writes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from factories import tiny_model_fields
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from avllm import hub
from avllm.card import model_card
from avllm.cli import main
from avllm.config import LoraConfig, MediaConfig, ModelConfig
from avllm.errors import ModelLoadError
from avllm.eval import TaskResult, build_report, markdown, write_report
from avllm.eval.matching import ItemResult
from avllm.model import AVLLM, export_checkpoint

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"  # any 40-hex commit hash


@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory):
    return tiny_model_fields(tmp_path_factory.mktemp("tiny-parts"))


@pytest.fixture(scope="module")
def checkpoint(tiny_parts, tmp_path_factory):
    """A trained-looking checkpoint folder: projectors and a LoRA adapter with non-zero weights."""
    config = ModelConfig(
        **tiny_parts,
        visual_tokens_per_slot=2,
        audio_tokens_per_slot=2,
        lora=LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        media=MediaConfig(num_frames=2),
    )
    model = AVLLM.from_config(config, device="cpu")
    model.add_lora()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    folder = tmp_path_factory.mktemp("ckpt") / "run"
    model.save_pretrained(folder)
    return folder


def cache_snapshot(cache: Path, repo: str, source: Path) -> Path:
    """Lay `source`'s files out as huggingface_hub caches a download of `repo` (refs/main -> snapshot)."""
    entry = cache / ("models--" + repo.replace("/", "--"))
    snapshot = entry / "snapshots" / SNAPSHOT
    for path in source.rglob("*"):
        if path.is_file():
            (snapshot / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / path.relative_to(source)).write_bytes(path.read_bytes())
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(SNAPSHOT)
    return snapshot


def test_an_avllm_checkpoint_and_its_llm_load_by_hub_id_from_the_cache_offline(checkpoint, tiny_parts, tmp_path):
    """hf:ORG/NAME finds an exported checkpoint in the cache; its config names the LLM by a plain hub id,
    which resolves through the same cache. A fresh process, as a user's would be, with the hub offline."""
    ship = tmp_path / "ship"
    export_checkpoint(checkpoint, ship)
    config_file = ship / "avllm_config.json"
    config = json.loads(config_file.read_text())
    config["model"]["llm"] = "test-org/tiny-llm"
    config_file.write_text(json.dumps(config))
    cache = tmp_path / "hub"
    cache_snapshot(cache, "test-org/tiny-llm", Path(tiny_parts["llm"]))
    snapshot = cache_snapshot(cache, "test-org/tiny-av", ship)
    dump = tmp_path / "loaded.safetensors"
    script = (
        "import sys; from safetensors.torch import save_file; from avllm.model import AVLLM\n"
        "m = AVLLM.load('hf:test-org/tiny-av', device='cpu')\n"
        "t = {f'{n}.{k}': v for n, p in m.projectors().items() for k, v in p.state_dict().items()}\n"
        "t.update({k.replace('.default', ''): v for k, v in m.llm.state_dict().items() if 'lora_' in k})\n"
        "t['llm.embed'] = m.base_llm.get_input_embeddings().weight\n"
        "save_file({k: v.contiguous() for k, v in t.items()}, sys.argv[1])\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("HF_HOME", None)
    run = subprocess.run([sys.executable, "-c", script, str(dump)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = load_file(dump)
    for key, value in load_file(snapshot / "projectors.safetensors").items():  # the hub copy's, not fresh ones
        assert torch.equal(loaded[key], value.float()), key
    adapter = load_file(snapshot / "adapter" / "adapter_model.safetensors")
    assert len(adapter) > 0 and {k for k in loaded if "lora_" in k} == set(adapter)
    for key, value in adapter.items():
        assert torch.equal(loaded[key], value.float()), key
    llm = load_file(Path(tiny_parts["llm"]) / "model.safetensors")
    assert torch.equal(loaded["llm.embed"], llm["model.embed_tokens.weight"])  # the LLM, by its hub id


def test_a_hub_id_missing_from_the_cache_is_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"hf:test-org/absent: not in the local Hugging Face cache.*hf download"):
        hub.resolve("hf:test-org/absent")
    with pytest.raises(ModelLoadError, match="expected hf:ORG/NAME"):
        hub.resolve("hf:no-slash")
    assert hub.resolve("weights/starter") == "weights/starter"  # other specs pass through


def eval_report(path: Path) -> dict:
    """A real `avllm eval` report (two items, one right) written where `--out` would write it."""
    result = TaskResult("jsonl:qa.jsonl", "loglik")
    result.results = [
        ItemResult("q1", "visual", None, "red", "red", True, ["red", "blue"]),
        ItemResult("q2", "audio", None, "beeps", "a tone", False, ["beeps", "a tone"]),
    ]
    report = build_report([result], "runs/tiny", 1.0)
    write_report(report, path, [result])
    return report


def test_export_writes_a_model_card_with_the_config_the_data_and_the_eval_table(checkpoint, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(checkpoint, run)
    align = tmp_path / "align"
    align.mkdir()
    (align / "train_config.yaml").write_text(yaml.safe_dump({"stage": "align", "model": "tiny", "data": "d/a.jsonl"}))
    recipe = {"stage": "instruct", "model": str(align), "data": "d/instruct.jsonl"}
    (run / "train_config.yaml").write_text(yaml.safe_dump(recipe))
    report = eval_report(run / "eval.json")  # found in the checkpoint folder
    ship = tmp_path / "ship"
    assert main(["export", "--model", str(run), "--out", str(ship)]) == 0
    shipped = ["README.md", "adapter", "avllm_config.json", "projectors.safetensors"]
    assert sorted(p.name for p in ship.iterdir()) == shipped
    card = ModelCard.load(ship / "README.md")
    assert card.data.library_name == "avllm" and "lora" in card.data.tags
    assert card.data.base_model is None  # the LLM is a local folder, not a hub id
    text = card.text
    assert "visual_tokens_per_slot: 2" in text and "r: 4" in text  # the config
    assert "no pretrained weights" in text
    assert f"| instruct | `d/instruct.jsonl` | `{align}` |" in text
    assert "| align | `d/a.jsonl` | `tiny` |" in text  # the chain followed back to the first stage
    table = markdown(report).splitlines()[2:]
    assert "| jsonl:qa.jsonl | all (loglik) | 2 | 50.0% | 50.0% |  |  |" in table
    assert all(line in text for line in table)


def test_export_refuses_a_file_that_is_not_an_eval_report_before_writing(checkpoint, tmp_path, capsys):
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({"loss": 1.0}))
    assert main(["export", "--model", str(checkpoint), "--out", str(tmp_path / "ship"), "--eval", str(bad)]) == 2
    assert "not an `avllm eval` report" in capsys.readouterr().err
    assert not (tmp_path / "ship").exists()


def test_the_card_names_a_hub_llm_as_its_base_model(checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    config = json.loads((checkpoint / "avllm_config.json").read_text())
    config["model"]["llm"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    (folder / "avllm_config.json").write_text(json.dumps(config))
    card = model_card(folder, tmp_path / "ship")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "Not recorded" in card.text and "No `avllm eval` report" in card.text
