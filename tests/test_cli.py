"""The `avllm` command: chat (streamed and --json), info, and one-line errors."""

import json
import os
import subprocess
import sys

import pytest
from factories import tiny_preset_file

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
