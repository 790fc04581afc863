"""The `avllm` command: chat (streamed and --json), info, and one-line errors."""

import json
import os
import subprocess
import sys

import pytest
from factories import tiny_preset_file

from avllm import cli
from avllm.cli import main

REPORT_KEYS = {
    "answer",
    "audio_used",
    "audio_seconds",
    "frames",
    "duration",
    "truncated",
    "model",
    "warnings",
    "timings",
}
TIMING_KEYS = {"load", "decode", "encode_audio", "encode_visual", "prefill", "first_token", "total"}


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-preset")
    return str(tiny_preset_file(folder, media={"num_frames": 4}))


def chat_json(capsys, *args) -> dict:
    assert main(["chat", *args, "--json", "--max-new-tokens", "5"]) == 0
    return json.loads(capsys.readouterr().out)


def test_chat_json_reports_what_was_used(capsys, tiny_preset, av_clip):
    report = chat_json(capsys, str(av_clip), "What do you hear?", "--model", tiny_preset)
    assert REPORT_KEYS <= set(report) and TIMING_KEYS <= set(report["timings"])
    assert report["audio_used"] is True and report["audio_seconds"] == pytest.approx(4.0, abs=0.1)
    assert report["frames"] == 4 and report["duration"] == pytest.approx(4.0, abs=0.1)
    assert report["model"] == "tiny" and report["truncated"] == []
    assert any("NO pretrained weights" in w for w in report["warnings"])
    assert all(v >= 0 for v in report["timings"].values())


def test_chat_says_when_audio_is_absent(capsys, tiny_preset, video_only_clip):
    report = chat_json(capsys, str(video_only_clip), "What do you hear?", "--model", tiny_preset, "--frames", "2")
    assert report["audio_used"] is False and report["audio_seconds"] == 0.0 and report["frames"] == 2
    assert any("no audio" in w.lower() for w in report["warnings"])


def test_chat_streams_text_then_a_summary(capsys, tiny_preset, av_clip):
    assert main(["chat", str(av_clip), "What is this?", "--model", tiny_preset, "--max-new-tokens", "5"]) == 0
    captured = capsys.readouterr()
    assert "4 frames" in captured.err and "to first token" in captured.err
    assert not captured.out.lstrip().startswith("{")


def test_info_prints_facts(capsys, av_clip):
    assert main(["info", str(av_clip), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["has_video"] and facts["has_audio"] and facts["duration"] == pytest.approx(4.0, abs=0.1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "/no/such/clip.mp4"], "/no/such/clip.mp4"),
        (["chat", "CORRUPT", "q?", "--model", "TINY"], "CORRUPT"),
        (["chat", "CLIP", "q?", "--model", "no-such-preset"], "no-such-preset"),
        (["train", "sft", "--config", "no-such-recipe"], "starter-instruct"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tiny_preset, corrupt_file, av_clip, args, message):
    names = {"CORRUPT": str(corrupt_file), "TINY": tiny_preset, "CLIP": str(av_clip)}
    args = [names.get(a, a) for a in args]
    message = names.get(message, message)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "avllm.cli", *args], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("avllm: error: ") and message in lines[-1]
    assert "Traceback" not in done.stderr


def test_bad_flag_value_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", "x.mp4", "q", "--frames", "0"])
    assert exit_info.value.code == 2
    assert "--frames" in capsys.readouterr().err


@pytest.mark.parametrize("cores, load, threads", [(2, 0.1, 2), (2, 0.9, 1), (2, 2.3, 1), (2, 7.0, 1), (4, 1.2, 3)])
def test_default_threads_leave_busy_cores_alone(monkeypatch, cores, load, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert cli.default_threads() == threads


@pytest.fixture
def torch_threads():
    """Restore torch's thread count after a test that sets it."""
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


def test_threads_come_from_the_flag_then_the_environment_then_the_load(monkeypatch, torch_threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli.use_threads(2) == 2 and torch_threads.get_num_threads() == 2
    assert cli.use_threads(None) == 1 and torch_threads.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cli.use_threads(None) == 2 and torch_threads.get_num_threads() == 2


def test_chat_and_serve_take_threads(capsys, monkeypatch, tiny_preset, av_clip, torch_threads):
    import avllm.serve.server as server

    torch_threads.set_num_threads(1)
    chat_json(capsys, str(av_clip), "What is this?", "--model", tiny_preset, "--threads", "2")
    assert torch_threads.get_num_threads() == 2
    started = []
    monkeypatch.setattr(server, "serve", started.append)
    assert main(["serve", "--threads", "1"]) == 0
    assert started[0].threads == 1 and torch_threads.get_num_threads() == 1
    with pytest.raises(SystemExit):
        main(["serve", "--threads", "0"])
