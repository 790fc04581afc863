"""bench/real_size_infer.py end to end on a CPU with every size shrunk (--tiny)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_real_size_infer_measures_an_answer_with_tiny_shapes(tmp_path):
    out = tmp_path / "figures.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "bench/real_size_infer.py", "--tiny", "--new-tokens", "5", "--runs", "2", "--out", str(out)]
    subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    figures = json.loads(out.read_text())
    assert figures["tiny"] and figures["new_tokens"] == 5 and figures["runs"] == 2
    assert "4 frames" in figures["clip"] and "nf4" in figures["models"][0]
    media = 4 * (16 + 8)  # the preset's visual and audio tokens per slot, 4 slots
    assert figures["prompt_tokens"] > media
    for key in ("decode_s", "encode_audio_s", "encode_visual_s", "prefill_s"):
        assert 0 < figures[key] < figures["first_token_s"], key
    assert figures["decode_tokens_per_s"] > 0
