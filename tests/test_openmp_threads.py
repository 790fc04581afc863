"""The server loads its model without starting an OpenMP team in the loading thread, so that each
answer's thread runs its own team at full speed (avllm.serve.server.load_outside_openmp).

Seen from outside, in a fresh process: libgomp starts a team's worker threads at a thread's first
parallel region and keeps them. After a plain load, a parallel multiply in the same thread adds no
thread (the load started the team); after `load_outside_openmp` it adds one.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from factories import tiny_preset_file

PROBE = """
import json, os, sys
import torch
torch.set_num_threads(2)
from avllm.model import AVLLM
from avllm.serve.server import load_outside_openmp

load = load_outside_openmp if sys.argv[2] == "outside" else lambda spec: AVLLM.load(spec, merge_lora=True)
model = load(sys.argv[1])
before = len(os.listdir("/proc/self/task"))
torch.ones(4_000_000).mul(2.0)  # a parallel region in this thread
print(json.dumps({"added": len(os.listdir("/proc/self/task")) - before, "threads": torch.get_num_threads()}))
"""


@pytest.fixture(scope="module")
def preset(tmp_path_factory) -> Path:
    return tiny_preset_file(tmp_path_factory.mktemp("tiny"))


def threads_added(preset: Path, how: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(preset), how], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux's /proc")
def test_the_server_s_model_load_starts_no_openmp_team_in_its_thread(preset):
    assert threads_added(preset, "plain") == {"added": 0, "threads": 2}
    assert threads_added(preset, "outside") == {"added": 1, "threads": 2}  # torch's count is back for the answers
