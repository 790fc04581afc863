"""The OpenAI-compatible API against a live server on 127.0.0.1: the official openai client
(streaming and not), multi-turn, audio, the clip store, limits, errors (4xx, never 500),
and four users at once with no cross-talk."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time

import httpx
import openai
import pytest
from serve_fixtures import MAX_DURATION, b64, data_url, until

from avllm.errors import ConfigError
from avllm.serve.server import BackgroundServer, ServeSettings

pytest_plugins = ["serve_fixtures"]  # live_server, serve_clips, slow_answers

QUESTION = "What is in the video?"


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="not-needed", max_retries=0, timeout=60)


def video_message(path, question=QUESTION, mime="video/mp4"):
    return {
        "role": "user",
        "content": [
            {"type": "video_url", "video_url": {"url": data_url(path, mime)}},
            {"type": "text", "text": question},
        ],
    }


def facts(response) -> dict:
    return response.to_dict()["avllm"]


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_chat_completion_reports_what_the_answer_used(client, serve_clips):
    response = client.chat.completions.create(model="tiny", messages=[video_message(serve_clips["av"])], max_tokens=12)
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason == "length"  # the tiny model never stops early
    assert response.usage.completion_tokens == 12 and response.usage.prompt_tokens > 3 * 6
    info = facts(response)
    assert info["frames"] == 3 and info["frame_times"] == pytest.approx([0.667, 2.0, 3.333], abs=0.01)
    assert info["audio_used"] and info["audio_seconds"] == pytest.approx(4.0, abs=0.1)
    assert info["duration"] == pytest.approx(4.0, abs=0.05) and info["truncated"] == []
    assert any("NO pretrained weights" in w for w in info["warnings"])
    assert {"decode", "encode_audio", "encode_visual", "prefill", "first_token", "generate"} <= set(info["timings"])


def test_streaming_gives_the_same_answer_and_facts_last(client, serve_clips):
    messages = [video_message(serve_clips["short"], "Describe it.")]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip() == whole.choices[0].message.content
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length" and last.usage.completion_tokens == 10
    assert facts(last)["frames"] == 3 and facts(last)["duration"] == pytest.approx(2.0, abs=0.05)
    assert all("avllm" not in c.to_dict() for c in chunks[:-1])


def test_raw_stream_is_server_sent_events_ending_with_done(live_server, serve_clips):
    body = {"model": "tiny", "messages": [video_message(serve_clips["av"])], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", live_server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_clip_is_encoded_once_and_reused(client, live_server, serve_clips):
    store = live_server.service.store
    messages = [video_message(serve_clips["long6"], mime="video/webm")]
    before = store.builds
    first = facts(client.chat.completions.create(model="tiny", messages=messages, max_tokens=4))
    second = facts(client.chat.completions.create(model="tiny", messages=messages, max_tokens=4))
    assert store.builds == before + 1
    assert not first["clip_reused"] and "encode_visual" in first["timings"]
    assert second["clip_reused"] and "encode_visual" not in second["timings"]
    assert second["frames"] == first["frames"] and second["duration"] == first["duration"]
    assert (
        first["clip_sha256"] == second["clip_sha256"] == hashlib.sha256(serve_clips["long6"].read_bytes()).hexdigest()
    )


def test_input_audio_wav(client, serve_clips):
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What do you hear?"},
            {"type": "input_audio", "input_audio": {"data": b64(serve_clips["wav"]), "format": "wav"}},
        ],
    }
    info = facts(client.chat.completions.create(model="tiny", messages=[message], max_tokens=4))
    assert info["frames"] == 0 and info["audio_used"] and info["audio_seconds"] == pytest.approx(3.0, abs=0.05)
    assert any("no video track" in w for w in info["warnings"])


def test_multi_turn_history_and_frames_option(client, serve_clips):
    first = video_message(serve_clips["av"], "What is in the video?")
    one = client.chat.completions.create(model="tiny", messages=[first], max_tokens=4)
    turns = [
        {"role": "system", "content": "You are brief."},
        first,
        {"role": "assistant", "content": one.choices[0].message.content},
        {"role": "user", "content": "And then?"},
    ]
    two = client.chat.completions.create(model="tiny", messages=turns, max_tokens=4, extra_body={"frames": 5})
    assert two.choices[0].message.content.strip()
    assert facts(two)["frames"] == 5
    # the same conversation with the clip sent in the last user message instead: same prompt
    moved = [
        turns[0],
        {"role": "user", "content": "What is in the video?"},
        turns[2],
        video_message(serve_clips["av"], "And then?"),
    ]
    again = client.chat.completions.create(model="tiny", messages=moved, max_tokens=4, extra_body={"frames": 5})
    assert again.usage.prompt_tokens == two.usage.prompt_tokens > one.usage.prompt_tokens
    assert again.choices[0].message.content == two.choices[0].message.content


def test_sampling_with_a_temperature(client, serve_clips):
    response = client.chat.completions.create(
        model="tiny", messages=[video_message(serve_clips["av"])], max_tokens=6, temperature=1.0
    )
    assert response.usage.completion_tokens == 6


def test_openai_client_sees_a_clear_400(client):
    with pytest.raises(openai.BadRequestError, match="no clip"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello?"}])


BAD = "data:video/mp4;base64,"


def _post(url, body=None, content=None):
    return httpx.post(
        url + "/v1/chat/completions",
        json=body,
        content=content,
        timeout=60,
        headers={"content-type": "application/json"},
    )


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("not_json", 400, "not valid JSON"),
        ("nested", 400, "nested too deeply"),
        ("surrogate", 400, "not valid Unicode"),
        ("svg", 400, "cannot be decoded"),
        ("json_list", 422, "JSON object"),
        ("no_messages", 422, "messages"),
        ("bad_role", 422, "role"),
        ("two_choices", 422, "n:"),
        ("image_part", 400, "unsupported content part type 'image_url'"),
        ("bad_audio_format", 422, "format"),
        ("text_only", 400, "no clip"),
        ("two_clips", 400, "2 clips"),
        ("ends_with_assistant", 400, "end the conversation with the user's question"),
        ("media_in_assistant", 400, "only come in a user message"),
        ("bad_base64", 400, "not valid base64"),
        ("data_not_base64", 400, "must be base64"),
        ("corrupt_bytes", 400, "cannot be read as audio or video"),
        ("local_path_off", 400, "--allow-local-files"),
        ("loopback_url", 400, "is a loopback address"),
        ("server_itself", 400, "is a loopback address"),
        ("ftp_url", 400, "unsupported URL scheme"),
        ("too_large", 413, "over this server's limit of 1 MiB"),
        ("too_long", 400, f"over the limit of {MAX_DURATION:g} s"),
        ("too_many_tokens", 400, "max tokens"),
        ("unknown_model", 404, "not served here"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(live_server, serve_clips, case, status, words):
    video = video_message(serve_clips["av"])
    text = {"type": "text", "text": "hi"}

    def user(*parts):
        return {"model": "tiny", "messages": [{"role": "user", "content": [*parts, text]}]}

    def url(value):
        return user({"type": "video_url", "video_url": value})

    bodies = {
        "json_list": [1, 2],
        "no_messages": {"model": "tiny"},
        "bad_role": {"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]},
        "two_choices": {"model": "tiny", "messages": [video], "n": 2},
        "image_part": user({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}),
        "bad_audio_format": user({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}}),
        "text_only": {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
        "two_clips": {"model": "tiny", "messages": [video, {"role": "assistant", "content": "ok"}, video]},
        "ends_with_assistant": {"model": "tiny", "messages": [video, {"role": "assistant", "content": "ok"}]},
        "media_in_assistant": {
            "model": "tiny",
            "messages": [{"role": "assistant", "content": video["content"]}, {"role": "user", "content": "hi"}],
        },
        "bad_base64": url(BAD + "!!!not base64!!!"),
        "svg": url("data:image/svg+xml;base64,PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciLz4="),
        "data_not_base64": url("data:video/mp4,plain"),
        "corrupt_bytes": url(BAD + "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v"),
        "local_path_off": url(str(serve_clips["av"])),
        "loopback_url": url({"url": "http://127.0.0.1:9/clip.mp4"}),
        "server_itself": url(live_server.url + "/v1/models"),
        "ftp_url": url("ftp://example.invalid/clip.mp4"),
        "too_large": url(BAD + "A" * int(1.5 * 2**20 * 4 / 3)),
        "too_long": url(data_url(serve_clips["too_long"])),
        "too_many_tokens": {"model": "tiny", "messages": [video], "max_tokens": 100000},
        "unknown_model": {"model": "gpt-4o", "messages": [video]},
    }
    raw = {
        "not_json": b"{not json",
        "nested": b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "surrogate": json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "\ud800"}]}).encode(),
    }
    response = _post(live_server.url, content=raw[case]) if case in raw else _post(live_server.url, bodies[case])
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and "Traceback" not in error["message"]
    assert "/tmp/" not in error["message"]  # uploads are named, not the server's temporary files


def clip_request(value, max_tokens=4) -> dict:
    part = {"type": "video_url", "video_url": value}
    return {"model": "tiny", "max_tokens": max_tokens, "messages": [{"role": "user", "content": [part]}]}


def test_a_conversation_may_open_with_an_assistant_greeting(client, serve_clips):
    greeting = {"role": "assistant", "content": "Hello! Send me a clip and ask about it."}
    response = client.chat.completions.create(
        model="tiny", messages=[greeting, video_message(serve_clips["av"])], max_tokens=4
    )
    assert response.choices[0].message.content.strip() and response.usage.completion_tokens == 4


def test_local_files_only_from_the_allowed_folder(live_server, serve_clips, tmp_path):
    root = serve_clips["av"].parent
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(serve_clips["av"].read_bytes())
    (root / "link.mp4").unlink(missing_ok=True)
    (root / "link.mp4").symlink_to(outside)
    fifo = root / "pipe.mp4"
    if not fifo.exists():
        os.mkfifo(fifo)
    settings = ServeSettings(
        port=0, model="tiny", allow_local_files=True, allowed_local_media_path=str(root), examples_dir=None
    )
    with BackgroundServer(settings, service=live_server.service) as local:
        for value in (str(serve_clips["av"]), serve_clips["av"].as_uri(), str(root / "sub" / ".." / "av.mp4")):
            response = _post(local.url, clip_request(value))
            assert response.status_code == 200, response.text
            assert response.json()["avllm"]["duration"] == pytest.approx(4.0, abs=0.05)
        refused = {
            "clip.mp4": "absolute path",
            str(outside): "outside the folder",
            f"{root}/../{tmp_path.name}/secret.mp4": "outside the folder",
            f"file://{root}/%2e%2e/{tmp_path.name}/secret.mp4": "outside the folder",
            str(root / "link.mp4"): "outside the folder",  # a symlink out of the folder
            "/dev/zero": "outside the folder",
            str(fifo): "no such file",  # a FIFO would block the reader forever
            str(root / "nothing.mp4"): "no such file",
        }
        for value, words in refused.items():
            response = _post(local.url, clip_request(value))
            assert response.status_code == 400 and words in response.json()["error"]["message"], (value, response.text)
    with pytest.raises(ConfigError, match="go together"):
        ServeSettings(model="tiny", allow_local_files=True).check()


def test_four_users_at_once_get_their_own_answers(client, live_server, serve_clips, monkeypatch):
    """Four clips that differ in length, frames and sound, asked about at once (two streaming):
    each answer carries its own clip's facts and equals the answer to the same request made alone."""
    service = live_server.service
    active, peak, lock = [0], [0], threading.Lock()
    real_stream = service.model.stream

    def counting_stream(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            yield from real_stream(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(service.model, "stream", counting_stream)
    jobs = [  # clip, question, frames, stream, expected (frames, duration, audio)
        ("av", "What is in the video?", 2, False, (2, 4.0, True)),
        ("short", "Describe the sound.", 4, True, (4, 2.0, True)),
        ("mute", "Is anything moving?", 6, False, (6, 6.0, False)),
        ("wav", "What do you hear?", None, True, (0, 3.0, True)),
    ]

    def request(job):
        name, question, frames, stream, _ = job
        if name == "wav":
            part = {"type": "input_audio", "input_audio": {"data": b64(serve_clips[name]), "format": "wav"}}
        else:
            part = {"type": "video_url", "video_url": {"url": data_url(serve_clips[name])}}
        extra = {"frames": frames} if frames else {}
        kwargs = dict(
            model="tiny",
            messages=[{"role": "user", "content": [part, {"type": "text", "text": question}]}],
            max_tokens=24,
            extra_body=extra,
        )
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **kwargs))
            return "".join(c.choices[0].delta.content or "" for c in chunks).strip(), facts(chunks[-1])
        response = client.chat.completions.create(**kwargs)
        return response.choices[0].message.content, facts(response)

    results: list = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def run(i):
        barrier.wait()
        results[i] = request(jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in results)
    assert peak[0] <= service.settings.concurrency
    for (name, _, _, _, (frames, duration, audio)), (answer, info) in zip(jobs, results):
        assert (info["frames"], info["audio_used"]) == (frames, audio), name
        assert info["duration"] == pytest.approx(duration, abs=0.05), name
        assert answer
    alone = [request(job) for job in jobs]
    assert [a for a, _ in alone] == [a for a, _ in results]
    assert len({a for a, _ in results}) == len(jobs)  # different clips and questions, different answers


def send_raw(url: str, body: dict) -> socket.socket:
    """A POST written on a bare socket, so the test can hang up at any moment."""
    address = httpx.URL(url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((address.host, address.port))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address.host}:{address.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_mid_answer_frees_its_slot_within_a_second(live_server, serve_clips, slow_answers, stream):
    slots = slow_answers.slots
    body = {"model": "tiny", "messages": [video_message(serve_clips["av"])], "max_tokens": 64, "stream": stream}
    sock = send_raw(live_server.url, body)
    assert until(lambda: slots.active == 1, 30) < 30
    time.sleep(0.5)  # mid-answer: 64 words take 3 s
    sock.close()  # the client goes away
    assert until(lambda: slots.active == 0, 5) <= 1.0


def test_a_client_that_leaves_while_waiting_leaves_the_line(live_server, serve_clips):
    slots = live_server.service.slots
    body = {"model": "tiny", "messages": [video_message(serve_clips["av"])], "max_tokens": 4}
    with slots.hold(), slots.hold():  # every slot taken
        sock = send_raw(live_server.url, body)
        assert until(lambda: slots.queued == 1, 30) < 30
        sock.close()
        assert until(lambda: slots.queued == 0, 5) <= 1.0


@pytest.mark.slow
def test_starter_model_answers_through_the_openai_client(shared_clips):
    from avllm.model import AVLLM

    model = AVLLM.load("starter")
    settings = ServeSettings(port=0, model="starter", examples_dir=None)
    with BackgroundServer(settings, model=model) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=120)
        clip = shared_clips / "videollama-dog_barking.mp4"
        stream = client.chat.completions.create(
            model="starter", messages=[video_message(clip, "What can you hear?")], max_tokens=16, stream=True
        )
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    info = facts(chunks[-1])
    assert info["frames"] == 8 and info["audio_used"] and info["duration"] == pytest.approx(7.2, abs=0.1)
