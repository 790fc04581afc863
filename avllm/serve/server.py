"""One server: the OpenAI-compatible API under /v1 and the Gradio UI at /, in one process.

Both faces share one ChatService, so one model in memory, one clip store and one limit on
concurrent generation. `avllm serve` and `python app.py` call `serve`; tests and benchmarks
use `BackgroundServer` to run the same app on a free port in a thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import REPO_ROOT, default_model
from ..errors import ConfigError

log = logging.getLogger("avllm.serve")

SHARED_CLIPS = REPO_ROOT.parent / "shared" / "clips"  # example clips for the UI, when present


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"  # 0.0.0.0 exposes the server to the network: the API has no authentication
    port: int = 7860
    model: str = field(default_factory=default_model)  # preset name, YAML file or checkpoint folder
    concurrency: int = 2  # answers generated at once (UI and API together); others wait in a queue
    max_upload_mb: float = 200.0  # per clip, whichever way it arrives
    max_duration: float = 600.0  # seconds per clip
    max_new_tokens: int = 1024  # the most tokens one answer may ask for
    allow_local_files: bool = False  # let API requests name files on the server (video_url: /path or file://)
    allow_remote_urls: bool = True  # let API requests name http(s) URLs, which the server fetches
    cache_size: int = 16  # encoded clips kept (LRU)
    examples_dir: str | None = str(SHARED_CLIPS)  # example clips shown under the upload box

    def check(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port {self.port}: choose a port between 1 and 65535")
        for name in ("concurrency", "max_upload_mb", "max_duration", "max_new_tokens", "cache_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be positive")


def build_service(settings: ServeSettings, model=None):  # noqa: ANN001 - an AVLLM, loaded here when None
    from ..model import AVLLM
    from .session import ChatService, Limits

    if model is None:
        start = time.perf_counter()
        model = AVLLM.load(settings.model)
        log.warning("model %s loaded in %.1f s", settings.model, time.perf_counter() - start)
    model.eval()
    limits = Limits(settings.max_upload_mb, settings.max_duration, settings.max_new_tokens)
    model_id = model.config.name if Path(settings.model).exists() else settings.model
    return ChatService(model, limits, settings.concurrency, settings.cache_size, model_id=model_id)


def build_app(settings: ServeSettings, service=None, model=None):  # noqa: ANN001
    """The FastAPI app: /v1 first, then the Gradio UI mounted at / (routes match in that order)."""
    import gradio as gr
    from fastapi import FastAPI

    from .api import build_router
    from .ui import CSS, build_ui

    settings.check()
    service = service or build_service(settings, model)
    app = FastAPI(title="avllm", description="Chat about videos: the Gradio UI at /, an OpenAI-compatible API at /v1")
    app.include_router(build_router(service, settings.allow_local_files, settings.allow_remote_urls))
    app.state.service = service
    examples = settings.examples_dir if settings.examples_dir and Path(settings.examples_dir).is_dir() else None
    demo = build_ui(service, examples, settings.concurrency)
    # Gradio refuses uploads over max_file_size with its own message; the limit here is looser so
    # a clip somewhat over the limit reaches ChatService and gets a sentence in the chat instead.
    app = gr.mount_gradio_app(
        app,
        demo,
        path="/",
        server_name=settings.host,
        server_port=settings.port,
        footer_links=["api"],
        run_history=False,
        allowed_paths=[examples] if examples else None,
        max_file_size=f"{int(4 * settings.max_upload_mb) + 1}mb",
        ssr_mode=False,
        mcp_server=False,
        css=CSS,
        show_error=False,
    )
    app.state.service = service
    return app


def serve(settings: ServeSettings, model=None) -> None:  # noqa: ANN001
    import uvicorn

    settings.check()
    app = build_app(settings, model=model)
    where = f"http://{settings.host}:{settings.port}"
    log.warning("avllm serving %s: UI at %s/ , API at %s/v1", settings.model, where, where)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


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
        self.service = self.app.state.service
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
