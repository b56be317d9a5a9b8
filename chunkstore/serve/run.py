"""Running the server: the listening socket, uvicorn, the ready call, graceful shutdown.

uvicorn was chosen over hypercorn by ``tools/bench_asgi_servers.py`` (a 100 MB response made
in a worker thread, 1 MiB pieces, loopback, 2-core VM, five rounds each): time to first byte
alike (median 8.2 ms against 6.9 ms), throughput 546 against 404 MB/s median; it also takes a
socket bound beforehand, so port 0 (a free port) is known before the ready line.

SIGINT and SIGTERM stop the server gracefully: it stops accepting, lets running responses finish
for up to ``graceful_timeout_s`` seconds, then closes the rest, and :func:`serve` returns
normally (uvicorn's own handlers would re-raise the signal after the shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import signal
import socket
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from chunkstore.errors import UsageError
from chunkstore.repository import Repository
from chunkstore.serve.app import RegistryApp
from chunkstore.serve.cache import LayerCache
from chunkstore.serve.catalog import CatalogSource

__all__ = ["ServeConfig", "is_loopback", "parse_listen", "serve"]

DEFAULT_PORT = 5000


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Where and how to serve."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: A request line per request on stderr (uvicorn's access log).
    access_log: bool = True
    #: Seconds running responses get to finish after SIGINT/SIGTERM.
    graceful_timeout_s: float = 10.0
    #: Records are listed again when the catalog is older than this (new backups show up).
    catalog_max_age_s: float = 1.0
    #: Where rebuilt layers are kept (None: nowhere), and the bound of their total size.
    cache_dir: Path | None = None
    cache_bytes: int = 2 << 30


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``HOST`` or ``:PORT`` (port 0: any free port)."""
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    host = host or "127.0.0.1"
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"--listen {text!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self._on_ready()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def serve(
    repo: Repository, config: ServeConfig, on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve ``repo``'s images until SIGINT/SIGTERM; ``on_ready(url)`` once requests are taken."""
    catalog = CatalogSource(repo, max_age_s=config.catalog_max_age_s)
    catalog.current()  # the records are read before the ready line (and errors raised here)
    cache = None
    if config.cache_dir is not None and config.cache_bytes > 0:
        cache = LayerCache(config.cache_dir, config.cache_bytes)
    app = RegistryApp(repo, catalog, cache=cache)
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    # uvicorn's logging, but its request lines on stderr: stdout carries the ready line (JSON).
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    uv_config = uvicorn.Config(
        app,
        log_config=log_config,
        interface="asgi3",
        lifespan="off",
        access_log=config.access_log,
        log_level="info" if config.access_log else "warning",
        timeout_graceful_shutdown=int(config.graceful_timeout_s),
        server_header=False,
    )
    server = _Server(uv_config, lambda: on_ready(url) if on_ready is not None else None)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
