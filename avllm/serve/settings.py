"""Every setting of `avllm serve` in one dataclass: the CLI's flags take their defaults from it,
and the server, the API and the UI read their limits from it. Imports nothing heavy.

How to run a server safely in front of users is in docs/api.md.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ENGINES, default_model
from ..errors import ConfigError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


@dataclass
class ServeSettings:
    # where it listens, what it serves
    host: str = "127.0.0.1"  # a non-loopback address (0.0.0.0) exposes the server: set api_keys and ui_auth
    port: int = 7860
    model: str = field(default_factory=default_model)  # preset name, YAML file or checkpoint folder
    examples_dir: str | None = None  # folder of example clips shown under the UI's upload box
    # who may use it
    api_keys: tuple[str, ...] = ()  # any of these as `Authorization: Bearer KEY` opens /v1 and /metrics
    ui_auth: str | None = None  # "user:pass", or a file of such lines: Gradio's login for the UI
    allowed_hosts: tuple[str, ...] = ()  # Host header names accepted; () = loopback names on a loopback bind
    # where clips may come from
    allow_remote_urls: bool = True  # fetch http(s) video_url values (public addresses only)
    allowed_media_domains: tuple[str, ...] = ()  # when set, fetch only from these domains (and their subdomains)
    fetch_private_hosts: bool = False  # let fetches reach loopback and private addresses (tests, closed networks)
    fetch_timeout: float = 30.0  # seconds for a whole fetch, redirects included
    allow_local_files: bool = False  # video_url may name a file on the server, under allowed_local_media_path
    allowed_local_media_path: str | None = None  # the one folder local files may come from
    # limits
    max_upload_mb: float = 200.0  # MiB per clip, whichever way it arrives
    max_duration: float = 600.0  # seconds per clip
    max_new_tokens: int = 1024  # the most tokens one answer may ask for
    max_frames: int = 64  # the most frames a request may ask for
    max_prompt_tokens: int | None = None  # None: the model's context minus max_new_tokens
    concurrency: int = 2  # answers (and clip encodings) running at once, UI and API together
    max_queue: int = 8  # requests waiting for a slot; past that the API answers 429
    request_timeout: float = 300.0  # seconds an answer may take, waiting included
    shutdown_timeout: float = 30.0  # on SIGTERM, seconds to let answers in flight finish
    cache_size: int = 16  # encoded clips kept (LRU)
    threads: int | None = None  # torch's CPU threads; None: OMP_NUM_THREADS, else the cores the load leaves idle
    engine: str = "auto"  # what generates answers: torch, llama.cpp, or auto (llama.cpp where it can run)

    def check(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port {self.port}: choose a port between 1 and 65535")
        positive = ("concurrency", "max_upload_mb", "max_duration", "max_new_tokens", "max_frames", "cache_size")
        for name in (*positive, "request_timeout", "fetch_timeout", "shutdown_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be positive")
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue {self.max_queue}: must be 0 or more")
        if self.threads is not None and self.threads <= 0:
            raise ConfigError(f"--threads {self.threads}: must be positive")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine {self.engine}: use one of {', '.join(ENGINES)}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens <= 0:
            raise ConfigError(f"--max-prompt-tokens {self.max_prompt_tokens}: must be positive")
        if any(not key.strip() for key in self.api_keys):
            raise ConfigError("--api-key: a key may not be empty")
        if self.allow_local_files != bool(self.allowed_local_media_path):
            raise ConfigError(
                "--allow-local-files and --allowed-local-media-path DIR go together: local files are read "
                "only from that one folder"
            )
        if self.allowed_local_media_path and not Path(self.allowed_local_media_path).is_dir():
            raise ConfigError(f"--allowed-local-media-path {self.allowed_local_media_path}: no such folder")
        if self.examples_dir and not Path(self.examples_dir).is_dir():
            raise ConfigError(f"--examples {self.examples_dir}: no such folder")
        if self.ui_auth:
            ui_logins(self.ui_auth)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def host_names(self) -> tuple[str, ...]:
        """Host header names accepted: the given ones, loopback names on a loopback bind, else any ("*")."""
        if self.allowed_hosts:
            return self.allowed_hosts
        return LOOPBACK_NAMES if self.loopback else ("*",)

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: a clip at the limit in base64 (a third larger) and 1 MiB of JSON around it."""
        return int(self.max_upload_mb * 2**20 * 4 / 3) + 2**20

    def warnings(self) -> list[str]:
        """One line per setting that leaves the server open to anyone who can reach it."""
        out = []
        if not self.loopback and not self.api_keys:
            out.append(
                f"--host {self.host} is reachable from other machines and /v1 needs no key: "
                "set --api-key (or AVLLM_API_KEY)"
            )
        if not self.loopback and not self.ui_auth:
            out.append(f"--host {self.host}: the UI at / needs no login: set --ui-auth user:pass")
        return out


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def env_api_keys() -> tuple[str, ...]:
    """AVLLM_API_KEY, several keys separated by commas."""
    return tuple(k.strip() for k in os.environ.get("AVLLM_API_KEY", "").split(",") if k.strip())


def ui_logins(spec: str) -> list[tuple[str, str]]:
    """`user:pass`, or a file with one `user:pass` per line, as (user, password) pairs."""
    path = Path(spec)
    lines = path.read_text().splitlines() if ":" not in spec and path.is_file() else [spec]
    pairs = [tuple(line.strip().split(":", 1)) for line in lines if line.strip() and not line.startswith("#")]
    if not pairs or any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
        raise ConfigError(f"--ui-auth {spec}: give user:pass, or a file with one user:pass per line")
    return pairs
