"""One server: the OpenAI-compatible API under /v1 and the Gradio UI at /, in one process.

Both faces share one ChatService, so one model in memory, one clip store and one limit on
concurrent generation. `avllm serve` and `python app.py` call `serve`; tests and benchmarks
use `BackgroundServer` to run the same app on a free port in a thread.
"""

from __future__ import annotations

import hmac
import logging
import signal
import socket
import threading
import time
from pathlib import Path

from .settings import ServeSettings, ui_logins

log = logging.getLogger("avllm.serve")


def build_service(settings: ServeSettings, model=None):  # noqa: ANN001 - an AVLLM, loaded here when None
    from .session import ChatService

    if model is None:
        start = time.perf_counter()
        model = load_outside_openmp(settings.model, settings.engine)
        log.warning("model %s loaded in %.1f s", settings.model, time.perf_counter() - start)
    model.eval()
    model_id = model.config.name if Path(settings.model).exists() else settings.model
    return ChatService(model, settings, model_id=model_id)


def load_outside_openmp(spec: str, engine: str = "torch"):  # noqa: ANN201 - an AVLLM
    """The model for answering, loaded with torch on this thread alone. Every answer runs in a
    thread of its own; had this thread started an OpenMP team, each answer's team would come on
    top of it, and libgomp, managing more threads than cores, stops spin-waiting: a step's few
    hundred small operations each pay a wake-up (decoding.py, docs/performance.md)."""
    import torch

    from ..model import AVLLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return AVLLM.load(spec, merge_lora=True, engine=engine)
    finally:
        torch.set_num_threads(threads)  # for the answers' threads; no team starts here


def ui_login(spec: str):  # noqa: ANN201 - Gradio's auth callable
    """Gradio's login check for `--ui-auth`: every password compared in constant time."""
    logins = ui_logins(spec)

    def check(user: str, password: str) -> bool:
        found = False
        for name, secret in logins:
            found |= hmac.compare_digest(name.encode(), user.encode()) & hmac.compare_digest(
                secret.encode(), password.encode()
            )
        return found

    return check


def build_app(settings: ServeSettings, service=None, model=None):  # noqa: ANN001
    """The app: /health, /metrics and /v1 first, then the Gradio UI mounted at / (routes match in
    that order), all behind the Guard middleware (Host, API key, origin, content type, body size)."""
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.responses import Response

    from .api import build_router
    from .security import Guard
    from .ui import CSS, build_ui

    settings.check()
    service = service or build_service(settings, model)
    app = FastAPI(title="avllm", description="Chat about videos: the Gradio UI at /, an OpenAI-compatible API at /v1")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": service.model_id}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.include_router(build_router(service, settings))
    demo = build_ui(service, settings.examples_dir)
    # Gradio refuses uploads over max_file_size with its own message; the limit here is looser so
    # a clip somewhat over the limit reaches ChatService and gets a sentence in the chat instead.
    upload_mb = int(2 * settings.max_upload_mb) + 1
    app = gr.mount_gradio_app(
        app,
        demo,
        path="/",
        server_name=settings.host,
        server_port=settings.port,
        footer_links=["api"],
        run_history=False,
        allowed_paths=[settings.examples_dir] if settings.examples_dir else None,
        max_file_size=f"{upload_mb}mb",
        auth=ui_login(settings.ui_auth) if settings.ui_auth else None,
        ssr_mode=False,
        mcp_server=False,
        css=CSS,
        show_error=False,
    )
    # mount_gradio_app leaves this unset, and then Gradio skips its check that a file a client
    # names was uploaded through Gradio: any file on the server could be read through the UI's API.
    demo.has_launched = True
    app.state.service = service
    return Guard(app, settings, service.metrics, upload_limit=upload_mb * 2**20 + 2**20)


def serve(settings: ServeSettings, model=None) -> None:  # noqa: ANN001
    """Serve until SIGTERM or Ctrl-C. On SIGTERM it stops taking connections, lets the answers in
    flight finish (up to shutdown_timeout) and returns, so the process exits 0."""
    import uvicorn

    settings.check()
    for line in settings.warnings():
        log.warning("warning: %s", line)
    app = build_app(settings, model=model)
    where = f"http://{settings.host}:{settings.port}"
    log.warning("avllm serving %s: UI at %s/ , API at %s/v1", settings.model, where, where)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
    )
    # uvicorn catches SIGTERM, shuts down gracefully, then raises it again: handled, it ends here.
    signal.signal(signal.SIGTERM, lambda *_: log.warning("avllm stopped (SIGTERM)"))
    uvicorn.Server(config).run()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BackgroundServer:
    """The app served by uvicorn in a daemon thread (tests, benchmarks): `with BackgroundServer(...) as s:`."""

    def __init__(self, settings: ServeSettings, model=None, service=None):  # noqa: ANN001
        import uvicorn

        if not settings.port:  # 0: any free port
            settings.port = free_port(settings.host)
        self.settings = settings
        self.app = build_app(settings, service=service, model=model)
        self.service = self.app.app.state.service
        config = uvicorn.Config(
            self.app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
        )  # open event streams would hold it up
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="avllm-server")
        self.url = f"http://{settings.host}:{settings.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
