"""Who may use the server and what it will fetch, against live servers on 127.0.0.1: the UI's file
check, API keys, UI logins, Host/Origin/content-type checks, request forgery (a local HTTP server
on 127.0.0.1 stands in for the targets: refused by default, allowed only by the test setting
fetch_private_hosts), bounded bodies and prompts, the line of waiting requests (429), timeouts,
/health and /metrics, and a graceful SIGTERM."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest
from serve_fixtures import data_url, until

from avllm.serve import fetch
from avllm.serve.api import Uploads, lift_media, parse_body
from avllm.serve.server import BackgroundServer, ServeSettings
from avllm.serve.session import Busy, ClipStore, Slots, Stopped, Watch
from avllm.serve.settings import ServeSettings as Settings

pytest_plugins = ["serve_fixtures"]  # live_server, serve_clips, slow_answers

CHAT = "/v1/chat/completions"


def ask(url: str, clip_url: str | dict, **extra) -> dict:
    part = {"type": "video_url", "video_url": clip_url}
    return {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": [part]}], **extra}


def post(base: str, body: dict | None = None, timeout: float = 60, **kwargs) -> httpx.Response:
    return httpx.post(base + CHAT, json=body, timeout=timeout, **kwargs)


def message(response: httpx.Response) -> str:
    return response.json()["error"]["message"]


@pytest.fixture(scope="module")
def other_server(live_server):
    """A second server on the same model and service, with the settings a test names: `with other_server(...)`."""

    def start(**settings) -> BackgroundServer:
        return BackgroundServer(ServeSettings(port=0, model="tiny", **settings), service=live_server.service)

    return start


# ----------------------------------------------------------------------------- the UI's file check


def gradio_call(base: str, name: str, data: list, timeout: float = 20) -> str:
    """Gradio's two-step API: POST the inputs, then read the result's event stream (its text)."""
    event = httpx.post(f"{base}/gradio_api/call/{name}", json={"data": data}, timeout=timeout).json()["event_id"]
    return httpx.get(f"{base}/gradio_api/call/{name}/{event}", timeout=timeout).text


@pytest.mark.parametrize("target", ["clip", "/etc/passwd", "/dev/zero"])
def test_the_ui_refuses_files_that_were_not_uploaded(live_server, serve_clips, target):
    path = str(serve_clips["av"]) if target == "clip" else target
    file = {"path": path, "meta": {"_type": "gradio.FileData"}}
    start = time.monotonic()
    for name, data in (("load_clip", [file, 3]), ("ask", ["what?", [], file, 3, 8, 0.0, []])):
        text = gradio_call(live_server.url, name, data)
        assert "event: error" in text and "t=" not in text and "root:" not in text, text[:300]
    assert time.monotonic() - start < 20  # /dev/zero is never read
    assert httpx.get(live_server.url + "/health", timeout=5).status_code == 200  # the server still answers


# ----------------------------------------------------------------------------- API keys, UI login, hosts


def test_api_keys_guard_v1_and_metrics_but_not_health(other_server, serve_clips):
    with other_server(api_keys=("key-one", "key-two")) as server:
        body = ask(server.url, data_url(serve_clips["short"]))
        missing = post(server.url, body)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert missing.headers["www-authenticate"] == "Bearer"
        assert post(server.url, body, headers={"Authorization": "Bearer key-three"}).status_code == 401
        assert post(server.url, body, headers={"Authorization": "Basic key-one"}).status_code == 401
        assert httpx.get(server.url + "/v1/models", timeout=10).status_code == 401
        assert httpx.get(server.url + "/metrics", timeout=10).status_code == 401
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="key-two", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()
        assert post(server.url, body, headers={"Authorization": "Bearer key-one"}).status_code == 200


def test_the_key_comes_from_the_flags_or_the_environment(monkeypatch):
    """`avllm serve` builds its settings from the flags, whose defaults are ServeSettings' own."""
    import avllm.serve.server as server
    from avllm.cli import build_parser

    started = []
    monkeypatch.setattr(server, "serve", started.append)

    def settings(*flags: str) -> ServeSettings:
        args = build_parser().parse_args(["serve", *flags])
        args.func(args)
        return started.pop()

    monkeypatch.setenv("AVLLM_API_KEY", "a, b")
    assert settings().api_keys == ("a", "b")
    assert settings("--api-key", "c", "--api-key", "d").api_keys == ("c", "d")
    defaults = settings()
    for name in ("port", "max_upload_mb", "max_duration", "max_new_tokens", "max_frames", "concurrency", "max_queue"):
        assert getattr(defaults, name) == getattr(Settings, name), name
    assert defaults.examples_dir is None and settings("--examples", "/clips").examples_dir == "/clips"
    assert settings("--max-upload-mb", "5", "--max-frames", "9").max_upload_mb == 5.0


def test_ui_login(other_server, serve_clips, tmp_path):
    logins = tmp_path / "logins"
    logins.write_text("ann:first-secret\nbob:second-secret\n")
    with other_server(ui_auth=str(logins)) as server:
        file = {"path": str(serve_clips["av"]), "meta": {"_type": "gradio.FileData"}}
        refused = httpx.post(f"{server.url}/gradio_api/call/load_clip", json={"data": [file, 3]}, timeout=10)
        assert refused.status_code in (401, 403)
        wrong = httpx.post(f"{server.url}/login", data={"username": "ann", "password": "second-secret"}, timeout=10)
        assert wrong.status_code >= 400
        from gradio_client import Client, handle_file

        client = Client(server.url + "/", auth=("bob", "second-secret"), verbose=False)
        try:
            _, gallery, _ = client.predict(handle_file(str(serve_clips["av"])), 3, api_name="/load_clip")
        finally:
            client.close()
        assert len(gallery) == 3


def test_host_origin_and_content_type(live_server, other_server, serve_clips):
    body = ask(live_server.url, data_url(serve_clips["short"]))
    raw = json.dumps(body)
    url = live_server.url + CHAT
    rebound = httpx.post(url, content=raw, headers={"Host": "evil.example", "Content-Type": "application/json"})
    assert rebound.status_code == 400 and "Host" in message(rebound)
    assert httpx.get(live_server.url + "/", headers={"Host": "evil.example:7860"}).status_code == 400
    for host in ("localhost", "127.0.0.1:8000", "[::1]:7860"):
        assert httpx.get(live_server.url + "/health", headers={"Host": host}).status_code == 200, host
    plain = httpx.post(url, content=raw, headers={"Content-Type": "text/plain", "Origin": "https://evil.example"})
    assert plain.status_code == 403 and "cross-origin" in message(plain)
    plain = httpx.post(url, content=raw, headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    form = httpx.post(
        live_server.url + "/gradio_api/call/ask", content=b"data=1", headers={"Content-Type": "text/plain"}
    )
    assert form.status_code == 415
    with other_server(allowed_hosts=("avllm.example",)) as server:
        named = server.url + "/health"
        assert httpx.get(named, headers={"Host": "avllm.example:443"}).status_code == 200
        assert httpx.get(named).status_code == 400  # 127.0.0.1 is no longer a name it answers to


def test_a_public_bind_without_a_key_warns():
    assert len(Settings(model="tiny", host="0.0.0.0").warnings()) == 2
    keyed = Settings(model="tiny", host="0.0.0.0", api_keys=("k",), ui_auth="a:b")
    assert keyed.warnings() == [] and Settings(model="tiny").warnings() == []
    assert Settings(model="tiny", host="0.0.0.0").host_names == ("*",)


# ----------------------------------------------------------------------------- request forgery


class Targets(BaseHTTPRequestHandler):
    """What a fetch may meet: a clip, a redirect, a 404, a text page, a drip-fed body, a huge body."""

    clip = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        if path == "/clip.mp4":
            self.reply(200, self.clip, "video/mp4")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.path.split("to=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/page":
            self.reply(200, b"<html>hello</html>", "text/html")
        elif path == "/drip":
            self.send_response(200)
            self.end_headers()
            for _ in range(200):  # 40 s at most, a byte at a time
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        elif path == "/huge":
            self.send_response(200)
            self.end_headers()  # no length: the size shows only while streaming
            for _ in range(64):
                self.wfile.write(b"\0" * 2**20)
        else:
            self.reply(404, b"no", "text/plain")

    def reply(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def targets(serve_clips):
    Targets.clip = serve_clips["short"].read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Targets)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_loopback_and_private_targets_are_refused_alike(live_server, targets):
    port = targets.rsplit(":", 1)[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    urls = [
        f"{targets}/clip.mp4",
        f"{targets}/missing",
        f"{targets}/page",
        f"http://127.0.0.1:{closed_port}/x",
        f"http://localhost:{port}/clip.mp4",
        f"http://[::1]:{port}/clip.mp4",
        f"http://0.0.0.0:{port}/clip.mp4",
        f"http://2130706433:{port}/clip.mp4",  # 127.0.0.1 as a decimal number
        f"http://127.1:{port}/clip.mp4",
        f"http://[::ffff:127.0.0.1]:{port}/clip.mp4",
        "http://169.254.169.254/latest/meta-data/",  # the cloud metadata address
        "http://10.0.0.1/clip.mp4",
        "http://192.168.1.1/clip.mp4",
        f"{live_server.url}/v1/models",  # the server itself
    ]
    rules = set()
    for url in urls:
        response = post(live_server.url, ask(live_server.url, url))
        assert response.status_code == 400, (url, response.text)
        text = message(response)
        assert "this server fetches only from public addresses" in text, text
        rules.add(text.split("could not fetch ", 1)[1].split(": ", 1)[1].split(" is a ")[1])
    # one message per rule, whatever the target would have answered (open, closed, 404 or a page)
    assert rules == {
        "loopback address; this server fetches only from public addresses",
        "unspecified address; this server fetches only from public addresses",
        "link-local address; this server fetches only from public addresses",
        "private address; this server fetches only from public addresses",
    }


@pytest.mark.parametrize(
    "address, rule",
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 around the metadata address
        ("fd00:ec2::254", "private"),
        ("100.100.100.200", "non-public"),  # shared address space (a cloud's metadata service)
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("fe80::1%eth0", "link-local"),
    ],
)
def test_address_rules(address, rule):
    assert fetch.address_rule(address) == rule


def test_fetching_with_the_test_setting_and_its_limits(other_server, targets, serve_clips):
    with other_server(fetch_private_hosts=True, fetch_timeout=1.5) as server:
        answered = post(server.url, ask(server.url, f"{targets}/clip.mp4"))
        assert answered.status_code == 200 and answered.json()["avllm"]["duration"] == pytest.approx(2.0, abs=0.05)
        redirected = post(server.url, ask(server.url, f"{targets}/redirect?to={targets}/clip.mp4"))
        assert redirected.status_code == 200
        assert "HTTP 404" in message(post(server.url, ask(server.url, f"{targets}/missing")))
        start = time.monotonic()
        drip = post(server.url, ask(server.url, f"{targets}/drip"))
        assert drip.status_code == 400 and "longer than this server's 1.5 s" in message(drip)
        assert time.monotonic() - start < 5  # one deadline for the whole fetch, not one per read
        huge = post(server.url, ask(server.url, f"{targets}/huge"))
        assert huge.status_code == 413 and "over this server's limit of 1 MiB" in message(huge)
    with other_server(fetch_private_hosts=True, allowed_media_domains=("localhost",)) as server:
        port = targets.rsplit(":", 1)[1]
        assert post(server.url, ask(server.url, f"http://localhost:{port}/clip.mp4")).status_code == 200
        refused = post(server.url, ask(server.url, f"{targets}/clip.mp4"))
        assert "not among this server's allowed media domains" in message(refused)
        hop = post(server.url, ask(server.url, f"http://localhost:{port}/redirect?to={targets}/clip.mp4"))
        assert hop.status_code == 400 and "not among this server's allowed media domains" in message(hop)
    with other_server(allow_remote_urls=False, fetch_private_hosts=True) as server:
        assert "turned off" in message(post(server.url, ask(server.url, f"{targets}/clip.mp4")))


def test_every_redirect_hop_is_checked(other_server, targets, monkeypatch):
    """127.0.0.1 let through, but a redirect from it to [::1] (or localhost) is refused at the hop."""
    real = fetch.address_rule
    monkeypatch.setattr(fetch, "address_rule", lambda a: None if a == "127.0.0.1" else real(a))
    with other_server() as server:
        port = targets.rsplit(":", 1)[1]
        assert post(server.url, ask(server.url, f"{targets}/clip.mp4")).status_code == 200
        hop = post(server.url, ask(server.url, f"{targets}/redirect?to=http://[::1]:{port}/clip.mp4"))
        assert hop.status_code == 400 and "is a loopback address" in message(hop)


@pytest.mark.parametrize("url", ["http://[::1", "https://\x00", "http://" + "a" * 100_000, "http://a:99999/x"])
def test_malformed_urls_are_a_400(live_server, url):
    response = post(live_server.url, ask(live_server.url, url))
    assert response.status_code == 400, response.text


# ----------------------------------------------------------------------------- bounded bodies, prompts, work


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_2gb_body_is_refused_without_being_read(live_server):
    address = httpx.URL(live_server.url)
    before = rss_mb()
    with socket.create_connection((address.host, address.port), timeout=30) as sock:
        sock.sendall(
            f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"%x\r\n%s\r\n" % (2**20, b"A" * 2**20)
        sent = 0
        try:
            while sent < 2048:  # 2 GB, a MiB at a time, unless the server answers first
                sock.sendall(chunk)
                sent += 1
        except OSError:
            pass  # the server answered and closed
        reply = sock.recv(4096).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert sent < 100  # it stopped reading just past the 2.3 MiB limit
    assert rss_mb() - before < 100
    with socket.create_connection((address.host, address.port), timeout=30) as sock:  # a declared 2 GiB
        sock.sendall(
            f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {2**31}\r\n\r\n{{".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")


def test_a_clip_costs_at_most_twice_its_size_while_it_is_read(serve_clips):
    clip = os.urandom(8 * 2**20)  # 8 MiB
    body = json.dumps(ask("", "data:video/mp4;base64," + __import__("base64").b64encode(clip).decode())).encode()
    uploads = Uploads()
    tracemalloc.start()
    try:
        raw = bytearray()
        for start in range(0, len(body), 65536):  # as the server reads it
            raw += body[start : start + 65536]
        del body
        request = parse_body(lift_media(raw, uploads, 16 * 2**20))
        del raw
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        (path,) = uploads.placeholders.values()
        assert path.read_bytes() == clip
        assert request.messages[0].content[0]["video_url"] in uploads.placeholders
        assert peak < 2 * len(clip), f"{peak / len(clip):.2f}x the clip"
    finally:
        uploads.cleanup()


def test_prompts_are_bounded(live_server, serve_clips):
    service = live_server.service
    video = {"type": "video_url", "video_url": {"url": data_url(serve_clips["short"])}}

    def request(question: str, history: list | None = None) -> httpx.Response:
        user = {"role": "user", "content": [video, {"type": "text", "text": question}]}
        return post(live_server.url, {"model": "tiny", "max_tokens": 2, "messages": [*(history or []), user]})

    limit = service.max_prompt_tokens
    assert limit == service.model.llm.config.max_position_embeddings - service.settings.max_new_tokens
    start = time.monotonic()
    long = request("why " * (limit + 10))
    assert long.status_code == 400 and f"prompt limit of {limit} tokens" in message(long)
    huge = request("x" * 2_000_000)  # refused by its length in characters, before tokenizing
    assert huge.status_code == 400 and "characters" in message(huge)
    turns = [{"role": r, "content": "hi"} for _ in range(500) for r in ("user", "assistant")]
    many = request("and?", turns)
    assert many.status_code in (200, 400), many.text
    assert time.monotonic() - start < 30


def test_a_full_line_gets_429_with_retry_after(live_server, serve_clips, monkeypatch):
    slots = live_server.service.slots
    monkeypatch.setattr(slots, "waiting", 0)
    with slots.hold(), slots.hold():
        response = post(live_server.url, ask(live_server.url, data_url(serve_clips["short"])))
    assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "server_busy"
    assert post(live_server.url, ask(live_server.url, data_url(serve_clips["short"]))).status_code == 200


def test_a_clip_whose_encoder_left_is_encoded_for_the_next_request():
    store = ClipStore(4)
    started = threading.Event()

    def leaves():
        started.set()
        time.sleep(0.3)
        raise Stopped("the client went away", timed_out=False)

    first = threading.Thread(target=lambda: pytest.raises(Stopped, store.get, ("clip",), leaves))
    first.start()
    started.wait(5)
    assert store.get(("clip",), lambda: "encoded") == ("encoded", False)  # waited, then built it itself
    first.join(5)


def test_slots_serve_in_order_and_refuse_past_the_line():
    slots, order = Slots(running=1, waiting=2), []

    def wait_then_note(name: str) -> None:
        with slots.hold():
            order.append(name)

    with slots.hold():
        threads = []
        for name in ("a", "b"):
            threads.append(threading.Thread(target=wait_then_note, args=(name,)))
            threads[-1].start()
            assert until(lambda: slots.queued == len(threads), 5) < 5
        with pytest.raises(Busy) as busy:
            slots.hold().__enter__()
        assert busy.value.retry_after >= 1
        watch = Watch()
        watch.cancel.set()
        assert slots.queued == 2
    for thread in threads:
        thread.join(5)
    assert order == ["a", "b"] and slots.active == 0 and slots.queued == 0
    with pytest.raises(Stopped):  # a request whose client left leaves the line
        with slots.hold(), slots.hold(watch):
            pass


@pytest.mark.parametrize("stream", [False, True])
def test_request_timeout_ends_a_long_answer(live_server, serve_clips, slow_answers, monkeypatch, stream):
    monkeypatch.setattr(slow_answers.settings, "request_timeout", 1.0)
    start = time.monotonic()
    body = {**ask(live_server.url, data_url(serve_clips["short"])), "max_tokens": 64, "stream": stream}
    response = post(live_server.url, body)
    assert time.monotonic() - start < 3  # 64 slow words would take 3 s
    if stream:
        assert "--request-timeout" in response.text and response.text.rstrip().endswith("data: [DONE]")
    else:
        assert response.status_code == 408 and "--request-timeout" in message(response)
    assert until(lambda: slow_answers.slots.active == 0, 5) < 1


# ----------------------------------------------------------------------------- observability, shutdown


def test_health_and_metrics(live_server, serve_clips):
    assert httpx.get(live_server.url + "/health", timeout=10).json() == {"status": "ok", "model": "tiny"}
    assert post(live_server.url, ask(live_server.url, data_url(serve_clips["av"]))).status_code == 200
    assert post(live_server.url, ask(live_server.url, data_url(serve_clips["av"]))).status_code == 200
    post(live_server.url, ask(live_server.url, "ftp://x/y"))
    text = httpx.get(live_server.url + "/metrics", timeout=10).text
    assert 'avllm_requests_total{route="chat",status="200"}' in text
    assert 'avllm_requests_total{route="chat",status="400"}' in text
    for name in ("avllm_queue_length", "avllm_running", "avllm_generated_tokens_total"):
        assert f"\n{name} " in text
    assert "avllm_time_to_first_token_seconds_bucket" in text and "avllm_request_latency_seconds_count" in text
    assert 'avllm_clips_total{result="reused"}' in text and 'avllm_clips_total{result="encoded"}' in text


SERVER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from serve_fixtures import chatty_tiny_model
    from pathlib import Path
    from avllm.serve.server import ServeSettings, serve

    model = chatty_tiny_model(Path({folder!r}))
    real = model.stream
    def slow(*a, **k):
        for piece in real(*a, **k):
            time.sleep(0.05)
            yield piece
    model.stream = slow
    serve(ServeSettings(port={port}, model="tiny", max_new_tokens=64, shutdown_timeout=20), model=model)
    """
)


def test_sigterm_lets_answers_in_flight_finish_and_exits_0(tmp_path, serve_clips):
    from avllm.serve.server import free_port

    port = free_port()
    script = SERVER.format(tests=str(Path(__file__).parent), folder=str(tmp_path), port=port)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        assert until(lambda: _up(base), 120) < 120
        body = {**ask(base, data_url(serve_clips["short"])), "max_tokens": 48, "stream": True}
        lines = []
        with httpx.stream("POST", base + CHAT, json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line and not lines:
                    proc.send_signal(signal.SIGTERM)  # mid-answer
                    time.sleep(0.3)
                    with pytest.raises(httpx.ConnectError):
                        httpx.get(base + "/health", timeout=5)  # no new connections
                if line:
                    lines.append(line)
        assert lines[-1] == "data: [DONE]" and '"finish_reason": "length"' in "".join(lines)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
