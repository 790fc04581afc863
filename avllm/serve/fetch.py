"""Where a request's clip may come from besides its own bytes: a fetched URL, or a local file.

Fetching guards against server-side request forgery the way the servers people trust do:
* the host is resolved once and every address it resolves to must be public (no loopback,
  private, link-local, multicast, reserved or cloud-metadata address); the connection goes to
  that checked address, so a DNS answer that changes between check and use cannot slip by;
* each redirect hop is a new connection and goes through the same check (and the domain list);
* `allowed_media_domains`, when set, limits fetches to those domains and their subdomains;
* one deadline covers the whole fetch (a drip-fed answer cannot hold a request), and the bytes
  are counted as they stream to a temporary file, the fetch aborted past the upload limit.
A refused URL gets one message per rule, whatever the target would have answered.

Local files are read only from ServeSettings.allowed_local_media_path, after resolving `..`,
`%2e%2e` and symlinks, and only regular files (never a FIFO or a device).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import tempfile
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import anyio
import httpcore

from ..errors import AVLLMError
from .session import UploadTooLarge
from .settings import ServeSettings

MAX_REDIRECTS = 5
MAX_URL = 8192  # characters of a URL to fetch (data: URLs have their own limit, the body size)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchRefused(AVLLMError):
    """A URL this server will not fetch, or could not fetch (the API answers 400)."""


def address_rule(address: str) -> str | None:
    """Why an address may not be fetched from (the rule's name), or None for a public address."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6:
        embedded = (
            ip.ipv4_mapped or ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        )
        if embedded is not None:
            return address_rule(str(embedded))
    for rule in ("loopback", "unspecified", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{rule}"):
            return rule.replace("_", "-")
    return None if ip.is_global else "non-public"


class GuardedBackend(httpcore.AnyIOBackend):
    """httpcore's network backend, connecting only to checked addresses."""

    def __init__(self, allow_private: bool):
        self.allow_private = allow_private

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kwargs):  # noqa: ANN003, ANN201
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise FetchRefused(f"the host {host[:100]} could not be resolved") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise FetchRefused(f"the host {host[:100]} could not be resolved")
        if not self.allow_private:
            for address in addresses:
                rule = address_rule(address)
                if rule:
                    raise FetchRefused(
                        f"the host {host[:100]} is a {rule} address; this server fetches only from public addresses"
                    )
        return await super().connect_tcp(addresses[0], port, timeout, **kwargs)


class Fetcher:
    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.domains = tuple(d.lower().strip(".") for d in settings.allowed_media_domains)

    def check_url(self, url: str) -> None:
        if len(url) > MAX_URL:
            raise FetchRefused(f"the URL is {len(url)} characters long, over {MAX_URL}")
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise FetchRefused(f"the URL is malformed ({exc})") from None
        if parts.scheme not in ("http", "https") or not host:
            raise FetchRefused("the URL must be http(s)://HOST/...")
        if any(ord(c) < 33 or ord(c) == 127 for c in url):
            raise FetchRefused("the URL holds spaces or control characters")
        if self.domains and not any(host == d or host.endswith("." + d) for d in self.domains):
            raise FetchRefused(f"{host[:100]} is not among this server's allowed media domains")

    async def fetch(self, url: str, deadline: float) -> Path:
        """The URL's body in a temporary file (the caller deletes it); FetchRefused or UploadTooLarge."""
        if not self.settings.allow_remote_urls:
            raise FetchRefused("fetching URLs is turned off on this server; send the clip as a data: URL (base64)")
        limit = int(self.settings.max_upload_mb * 2**20)
        fd, name = tempfile.mkstemp(prefix="avllm-fetch-")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                with anyio.fail_after(max(0.0, min(self.settings.fetch_timeout, deadline - anyio.current_time()))):
                    await self._get(url, out, limit)
        except TimeoutError:
            path.unlink(missing_ok=True)
            raise FetchRefused(f"the fetch took longer than this server's {self.settings.fetch_timeout:g} s") from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    async def _get(self, url: str, out, limit: int) -> None:  # noqa: ANN001 - a binary file
        backend = GuardedBackend(self.settings.fetch_private_hosts)
        context = ssl.create_default_context()
        async with httpcore.AsyncConnectionPool(ssl_context=context, network_backend=backend, retries=0) as pool:
            for _ in range(MAX_REDIRECTS + 1):
                self.check_url(url)
                try:
                    async with pool.stream("GET", url, headers=HEADERS) as response:
                        location = next((v for k, v in response.headers if k.lower() == b"location"), None)
                        if response.status in (301, 302, 303, 307, 308) and location:
                            url = urljoin(url, location.decode("latin-1"))
                            continue
                        if response.status != 200:
                            raise FetchRefused(f"the server answered HTTP {response.status}")
                        size = 0
                        async for chunk in response.aiter_stream():
                            size += len(chunk)
                            if size > limit:
                                raise UploadTooLarge(
                                    f"the clip is over this server's limit of {self.settings.max_upload_mb:g} MiB; "
                                    "cut or re-encode it smaller"
                                )
                            out.write(chunk)
                        return
                except httpcore.UnsupportedProtocol:
                    raise FetchRefused("the URL must be http(s)://HOST/...") from None
                except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException, ssl.SSLError) as exc:
                    raise FetchRefused(f"the connection failed ({type(exc).__name__})") from None
            raise FetchRefused(f"more than {MAX_REDIRECTS} redirects")


HEADERS = {"Accept-Encoding": "identity", "User-Agent": "avllm"}  # identity: the bytes counted are the bytes kept


def local_file(value: str, settings: ServeSettings) -> Path:
    """A local path or file:// URL, resolved (symlinks, `..`) and inside the allowed folder."""
    if not settings.allow_local_files or not settings.allowed_local_media_path:
        raise FetchRefused(
            "local file paths are turned off on this server; send the clip as a data: URL (base64), or start "
            "the server with --allow-local-files --allowed-local-media-path DIR"
        )
    try:
        raw = unquote(urlsplit(value).path) if value.startswith("file:") else value
        if not Path(raw).is_absolute():
            raise FetchRefused(f"{raw[:200]}: give an absolute path on the server")
        root = Path(settings.allowed_local_media_path).resolve()
        path = Path(raw).resolve()
    except (ValueError, OSError, RuntimeError) as exc:  # a NUL byte, a symlink loop
        raise FetchRefused(f"the path is not usable ({type(exc).__name__})") from None
    if not path.is_relative_to(root):
        raise FetchRefused(f"{raw[:200]}: outside the folder this server reads clips from ({root})")
    if not path.is_file():
        raise FetchRefused(f"{raw[:200]}: no such file in {root}")
    return path
