"""Fuzzing the API: 320 mutated requests against a live server on 127.0.0.1 (the tiny model).

Each mutation starts from a good request and breaks it the way careless or hostile clients do:
wrong types, missing and extra fields, bad base64, lying MIME types, truncated and corrupt
media, absurd numbers, huge and deeply nested values, invalid UTF-8 and lone surrogates, and
raw byte damage to the JSON. Every one must get a 4xx with an OpenAI-style error, or a valid
answer; never a 5xx, a traceback or a hang. A good request still works afterwards. The seed is
fixed, so a failure names a mutation that can be replayed.
"""

from __future__ import annotations

import base64
import copy
import json
import random
from collections import Counter

import httpx
import pytest
from conftest import write_clip

pytest_plugins = ["serve_fixtures"]  # live_server

N = 320
SEED = 35


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory) -> bytes:
    return write_clip(tmp_path_factory.mktemp("fuzz") / "clip.mp4", seconds=1.0, width=32, height=24).read_bytes()


def good_request(clip: bytes) -> dict:
    return {
        "model": "tiny",
        "max_tokens": 2,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in the clip?"},
                    {
                        "type": "video_url",
                        "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(clip).decode()},
                    },
                ],
            },
        ],
    }


ODD_VALUES = [None, True, 0, -1, 2**63, 10**40, 1e308, -0.5, "", "x" * 5000, [], {}, [[[]]], {"a": {"b": 1}}, "\ud800"]


def paths(value, prefix=()):
    """Every (path, value) in a JSON value, depth first."""
    yield prefix, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def at(body, path):
    for step in path:
        body = body[step]
    return body


def mutate(rng: random.Random, clip: bytes) -> tuple[str, bytes]:
    """One broken request: (what was done, the raw body)."""
    body = good_request(clip)
    spots = [p for p, _ in paths(body) if p]
    kind = rng.choice(
        ["type", "drop", "extra", "base64", "mime", "media", "number", "huge", "nested", "text", "bytes", "stream"]
    )
    path = rng.choice(spots)
    parent, key = at(body, path[:-1]), path[-1]
    part = body["messages"][1]["content"][1]["video_url"]
    if kind == "type":
        parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
    elif kind == "drop":
        del parent[key]
    elif kind == "extra":
        target = rng.choice([p for p, v in paths(body) if isinstance(v, dict)])
        at(body, target)[rng.choice(["extra", "role", "type", "url", "frames", "n"])] = rng.choice(ODD_VALUES)
    elif kind == "base64":
        data = list(part["url"])
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(22, len(data))] = rng.choice("!@#$%^&*()=\n -_")
        part["url"] = "".join(data)
    elif kind == "mime":
        mime = rng.choice(
            ["audio/wav", "image/png", "image/svg+xml", "text/plain", "application/json", "video/x-bogus"]
        )
        part["url"] = part["url"].replace("video/mp4", mime)
    elif kind == "media":
        data = bytearray(clip)
        if rng.random() < 0.5:
            data = data[: rng.randrange(0, len(data))]  # truncated
        else:
            for _ in range(rng.randint(1, 200)):
                data[rng.randrange(len(data))] = rng.randrange(256)  # corrupt
        part["url"] = "data:video/mp4;base64," + base64.b64encode(bytes(data)).decode()
    elif kind == "number":
        field = rng.choice(["max_tokens", "max_completion_tokens", "temperature", "frames", "n", "top_p"])
        body[field] = rng.choice([0, -1, 10**12, 2**31, 1e308, -1e308, 0.5, 65, 3, "7"])
    elif kind == "huge":
        body["messages"][1]["content"][0]["text"] = rng.choice(["why " * 20000, "x" * 500_000, "\u00e9" * 100_000])
    elif kind == "nested":
        depth = rng.choice([50, 400, 1000, 50_000])
        nested: object = "deep"
        for _ in range(depth if depth < 500 else 0):
            nested = [nested]
        if depth >= 500:  # past what json.dumps itself can write
            raw = json.dumps(body).encode()
            return f"nested raw {depth}", raw[:-1] + b', "x": ' + b"[" * depth + b"]" * depth + b"}"
        parent[key] = nested
    elif kind == "text":
        raw = json.dumps(body).encode()
        bad = rng.choice([b"\\ud800", b"\\udfff\\ud800", b"\xff\xfe", b"\xc3(", b"\x00"])
        at_text = raw.index(b"What is in")
        return f"text {bad!r}", raw[:at_text] + bad + raw[at_text:]
    elif kind == "bytes":
        raw = bytearray(json.dumps(body).encode())
        if rng.random() < 0.5:
            raw = raw[: rng.randrange(len(raw))]
        else:
            for _ in range(rng.randint(1, 10)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        return "bytes", bytes(raw)
    elif kind == "stream":
        body["stream"] = rng.choice([True, "yes", 1, None])
        body["stream_options"] = rng.choice([{"include_usage": True}, "no", [], None])
    return f"{kind} at {'.'.join(map(str, path))}", json.dumps(body).encode()


def check(response: httpx.Response, what: str) -> str:
    """'ok' or 'NNN' for an acceptable answer; fails the test otherwise."""
    assert response.status_code < 500, (what, response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and "Traceback" not in error["message"], what
        return str(response.status_code)
    assert response.status_code == 200, what
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and '"error"' not in response.text, (what, response.text[-300:])
    else:
        answer = response.json()
        assert isinstance(answer["choices"][0]["message"]["content"], str), what
        assert answer["usage"]["completion_tokens"] >= 1 and "avllm" in answer, what
    return "ok"


def test_mutated_requests_get_a_4xx_or_an_answer(live_server, clip_bytes):
    rng = random.Random(SEED)
    statuses: Counter[str] = Counter()
    url = live_server.url + "/v1/chat/completions"
    with httpx.Client(timeout=30, headers={"Content-Type": "application/json"}) as client:
        assert check(client.post(url, content=json.dumps(good_request(clip_bytes))), "good") == "ok"
        for i in range(N):
            what, raw = mutate(rng, clip_bytes)
            try:
                response = client.post(url, content=raw)
            except httpx.TimeoutException:
                pytest.fail(f"mutation {i} ({what}) hung for 30 s")
            statuses[check(response, f"mutation {i}: {what}")] += 1
        assert check(client.post(url, content=json.dumps(good_request(clip_bytes))), "good after") == "ok"
    print(f"\n{N} mutated requests: {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) == N and statuses["ok"] > 10 and len(statuses) >= 3
