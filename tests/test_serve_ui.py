"""The Gradio UI against a live server on 127.0.0.1: through gradio_client (upload, two
questions with the clip reused, errors as chat sentences) and in a real browser (Playwright
driving Debian's chromium: upload, ask, see the answer; a screenshot is kept in
test-artifacts/ui-answer.png)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from gradio_client import Client, handle_file
from serve_fixtures import MAX_DURATION, MAX_UPLOAD_MB, SHARED_CLIPS

from avllm.serve.ui import NO_CLIP

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"

pytest_plugins = ["serve_fixtures"]  # live_server, serve_clips


@pytest.fixture
def ui(live_server):  # a fresh browser session (its own chat state) per test
    client = Client(live_server.url + "/", verbose=False)
    yield client
    client.close()  # its heartbeat stream would hold the server's shutdown up


def text(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def first_token(facts: str) -> float:
    return float(re.search(r"first token ([0-9.]+) s", facts).group(1))


def test_upload_shows_the_sampled_frames_and_what_was_used(ui, serve_clips):
    chat, gallery, facts = ui.predict(handle_file(str(serve_clips["av"])), 3, api_name="/load_clip")
    assert chat == []
    assert [item["caption"] for item in gallery] == ["t=0.7s", "t=2.0s", "t=3.3s"]
    assert all(Path(item["image"]).is_file() for item in gallery)
    assert "**Frames:** 3, at 0.7, 2.0, 3.3 s" in facts and "**Audio:** present, 4.0 s used" in facts
    assert "**Truncated:** nothing" in facts and "NO pretrained weights" in facts
    _, gallery, facts = ui.predict(handle_file(str(serve_clips["mute"])), 5, api_name="/load_clip")
    assert len(gallery) == 5 and "no audio track" in facts


def test_two_questions_stream_and_the_second_reuses_the_clip(ui, serve_clips):
    clip = handle_file(str(serve_clips["short"]))
    job = ui.submit("What is in the video?", [], clip, 3, 16, 0.0, api_name="/ask")
    chat, box, gallery, facts = job.result()
    assert len(job.outputs()) > 3  # the answer arrived in pieces
    assert box == "" and [m["role"] for m in chat] == ["user", "assistant"] and text(chat[1]).strip()
    assert "decode + encode" in facts and len(gallery) == 3  # the first question paid for encoding
    chat2, _, _, facts2 = ui.predict("And what can be heard?", chat, clip, 3, 16, 0.0, api_name="/ask")
    assert [m["role"] for m in chat2] == ["user", "assistant"] * 2 and text(chat2[3]).strip()
    assert "features reused from the upload" in facts2
    print(
        f"\ntiny model, time to first token: first question {first_token(facts):.3f} s, "
        f"second {first_token(facts2):.3f} s"
    )


def test_asking_without_a_clip_says_what_to_do(ui):
    chat, *_ = ui.predict("Hello?", [], None, 3, 16, 0.0, api_name="/ask")
    assert text(chat[-1]) == NO_CLIP


def test_clear_empties_the_chat(ui):
    assert ui.predict(api_name="/clear") == []


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, serve_clips):
    folder = tmp_path_factory.mktemp("bad-uploads")
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    notes = folder / "notes.txt"
    notes.write_text("not a video\n" * 50)
    large = folder / "large.mp4"
    large.write_bytes(b"\0" * int((MAX_UPLOAD_MB + 0.5) * 2**20))
    return {
        "corrupt": (corrupt, "cannot be read as audio or video"),
        "text": (notes, "looks like a text file"),
        "too_long": (serve_clips["too_long"], f"over the limit of {MAX_DURATION:g} s"),
        "too_large": (large, f"over this server's limit of {MAX_UPLOAD_MB:g} MiB"),
    }


@pytest.mark.parametrize("case", ["corrupt", "text", "too_long", "too_large"])
def test_bad_files_get_a_plain_sentence_in_the_chat(ui, bad_files, case):
    path, words = bad_files[case]
    chat, gallery, _ = ui.predict(handle_file(str(path)), 3, api_name="/load_clip")
    assert len(chat) == 1 and chat[0]["role"] == "assistant" and gallery == []
    message = text(chat[0])
    assert message.startswith("Sorry, I can't use that: ") and words in message
    assert "Traceback" not in message and "/tmp/" not in message  # the upload's name, not the server's path
    chat, *_ = ui.predict("What is it?", [], handle_file(str(path)), 3, 16, 0.0, api_name="/ask")
    assert words in text(chat[-1]) and "Traceback" not in text(chat[-1])


def test_browser_upload_ask_and_see_the_answer(live_server, serve_clips):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: .ci/run installs Debian's chromium with apt")
    real = SHARED_CLIPS / "videollama-dog_barking.mp4"  # a real picture in the frame strip when present
    clip = real if real.is_file() else serve_clips["av"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(live_server.url + "/")
            page.locator("#clip input[type=file]").set_input_files(str(clip))
            sync_api.expect(page.locator("#frames img")).to_have_count(3, timeout=30_000)
            sync_api.expect(page.locator("#facts")).to_contain_text(clip.name)
            box = page.locator("#question textarea")
            box.fill("What is happening in this video?")
            box.press("Enter")
            answer = page.locator('#chat [data-testid="bot"]').last
            sync_api.expect(answer).to_contain_text(re.compile(r"\w"), timeout=30_000)
            sync_api.expect(page.locator("#facts")).to_contain_text("first token", timeout=30_000)  # answer complete
            sync_api.expect(page.locator('#chat [data-testid="user"]')).to_contain_text(
                "What is happening in this video?"
            )
            page.screenshot(path=str(ARTIFACTS / "ui-answer.png"), full_page=True)
            assert answer.inner_text().strip()
            assert box.input_value() == ""
            if (SHARED_CLIPS / "gradio-muted_video_sample.mp4").is_file():  # an example clip, clicked
                page.get_by_text("gradio-muted_video_sample.mp4").click()
                sync_api.expect(page.locator("#facts")).to_contain_text("no audio track", timeout=30_000)
                sync_api.expect(page.locator('#chat [data-testid="bot"]')).to_have_count(0)  # a new clip, a new chat
        finally:
            browser.close()
    assert (ARTIFACTS / "ui-answer.png").stat().st_size > 10_000
