"""Who may talk to the server, and how much they may send: one ASGI middleware in front of the
API, the UI and /metrics.

In order, for every HTTP request (`/health` needs only the Host check):
* the Host header must name this server (ServeSettings.host_names): a web page cannot reach a
  server on 127.0.0.1 by pointing its own domain name there (DNS rebinding);
* with API keys set, /v1 and /metrics need `Authorization: Bearer KEY` (401 otherwise), each key
  compared in constant time;
* a POST from a browser of another origin is refused (403), and the JSON routes (the API, Gradio's
  call/queue routes) take only `application/json` (415): a web page can send neither without
  the server's CORS consent, so it cannot drive the server from the user's browser;
* the body is counted as it is read, chunked or not, and refused (413) past the limit, so a huge
  body never reaches memory.
It also counts the answered requests by route and status for /metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from .metrics import Metrics
from .settings import ServeSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD = "/gradio_api/upload"
JSON_ROUTES = ("/v1/", "/gradio_api/call/", "/gradio_api/queue/join", "/gradio_api/run/")
KINDS = {401: "invalid_request_error", 403: "invalid_request_error", 413: "request_too_large"}


class BodyTooLarge(Exception):
    """Raised into the app when the body passes the limit; the middleware has answered 413 already."""


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    """An OpenAI-style error object; ASCII-escaped, so no client text can break its encoding."""
    kind = KINDS.get(status, "invalid_request_error" if status < 500 else "server_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


async def send_error(
    send: Send, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> None:
    """An error answered before the body was read: the connection closes after it, rather than
    reading the rest of the body to keep the connection alive."""
    body = error_body(status, message, code)
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head.append((b"connection", b"close"))
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def route_group(path: str) -> str:
    """A few fixed labels for /metrics (never the raw path: that would let clients add series)."""
    if path.startswith("/v1/chat/"):
        return "chat"
    if path.startswith("/v1/"):
        return "v1"
    if path in ("/health", "/metrics"):
        return path[1:]
    return "ui"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class Guard:
    def __init__(self, app: ASGIApp, settings: ServeSettings, metrics: Metrics, upload_limit: int):
        self.app = app
        self.hosts = {h.lower() for h in settings.host_names}
        self.keys = [digest(k) for k in settings.api_keys]
        self.body_limit = settings.max_body_bytes
        self.upload_limit = upload_limit
        self.metrics = metrics

    def host_ok(self, host: str) -> bool:
        if "*" in self.hosts:
            return True
        name = host.lower()
        name = name.rsplit(":", 1)[0] if not name.endswith("]") and name.count(":") == 1 else name
        return name in self.hosts or (name.startswith("[") and name.rsplit(":", 1)[0] in self.hosts)

    def key_ok(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        given = digest(token.strip())
        found = False
        for key in self.keys:  # every key compared, in constant time
            found |= hmac.compare_digest(given, key)
        return scheme.lower() == "bearer" and found

    def refusal(self, scope: Scope, headers: Headers) -> tuple[int, str, str | None, dict[str, str]] | None:
        """(status, message, code, headers) when the request may not go on."""
        path, method = scope["path"], scope.get("method", "GET")
        if not self.host_ok(headers.get("host", "")):
            return 400, "invalid Host header; start the server with --allowed-hosts NAME", "invalid_host", {}
        if path == "/health":
            return None
        if self.keys and (path.startswith("/v1/") or path == "/metrics"):
            auth = headers.get("authorization", "")
            if not auth:
                return 401, "no API key: send it as `Authorization: Bearer KEY`", "invalid_api_key", BEARER
            if not self.key_ok(auth):
                return 401, "incorrect API key provided", "invalid_api_key", BEARER
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            origin = headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
                return 403, f"cross-origin request from {origin[:100]} refused", "cross_origin", {}
            if path.startswith(JSON_ROUTES):
                kind = headers.get("content-type", "").split(";")[0].strip().lower()
                if kind != "application/json":
                    return 415, f"send the body as application/json, not {kind[:100] or 'no content type'}", None, {}
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit(path):
            return 413, too_large(self.limit(path)), "request_too_large", {}
        return None

    def limit(self, path: str) -> int:
        return self.upload_limit if path == UPLOAD else self.body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if scope["type"] == "websocket":
            if not self.host_ok(headers.get("host", "")):
                return await send({"type": "websocket.close", "code": 1008})
            return await self.app(scope, receive, send)
        status = [0]
        route = route_group(scope["path"])

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            if not answered[0]:
                await send(message)

        refused = self.refusal(scope, headers)
        answered = [False]
        if refused:
            code, text, err, extra = refused
            await send_error(counted_send, code, text, err, extra)
        else:
            limit, seen = self.limit(scope["path"]), [0]

            async def counted_receive() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > limit:
                        if not status[0]:
                            await send_error(counted_send, 413, too_large(limit), "request_too_large")
                        answered[0] = True
                        raise BodyTooLarge
                return message

            try:
                await self.app(scope, counted_receive, counted_send)
            except BodyTooLarge:
                pass
            except Exception:
                if not answered[0]:
                    raise
        self.metrics.requests.labels(route, str(status[0] or 499)).inc()


BEARER = {"WWW-Authenticate": "Bearer"}


def too_large(limit: int) -> str:
    return (
        f"the request body is over this server's limit of {limit / 2**20:.1f} MiB "
        "(a clip at the upload limit, in base64, with its JSON); cut or re-encode the clip smaller"
    )
