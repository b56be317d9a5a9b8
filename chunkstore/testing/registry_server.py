"""A real registry for tests and benchmarks: Debian's ``docker-registry`` (distribution 2.8).

One launcher serves the integration tests' fixture (``tests/integration/registry_fixture.py``) and
the benchmarks (``tools/benchlib``): :func:`start_registry` writes a configuration with filesystem
storage under a directory of the caller's (deletes enabled, upload purging off), starts
``docker-registry serve`` on ``127.0.0.1`` at a free port (or on a given address, optionally
inside a command prefix such as ``ip netns exec NS``), waits until ``/v2/`` answers, and returns a
:class:`RegistryServer` that the caller must :meth:`~RegistryServer.stop`.

Layout under ``root``: ``config.yml``, ``data/`` (the storage), ``registry.log`` (its output,
and the access log when asked for), ``htpasswd`` (with basic auth).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "REGISTRY_BINARY",
    "RegistryServer",
    "RegistryUnavailable",
    "free_port",
    "registry_config",
    "start_registry",
    "stop_process",
    "wait_ready",
]

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
_STARTUP_SECONDS = 15.0
_SECRET = "chunkstore-test-registry-secret"


class RegistryUnavailable(RuntimeError):
    """The registry cannot run here (its binary, or a way to hash an htpasswd, is missing)."""


@dataclass
class RegistryServer:
    """A started registry: ``host`` is ``ADDR:PORT``, ``url`` is ``http://host``."""

    proc: subprocess.Popen[bytes]
    root: Path
    host: str
    user: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}"

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.host.rsplit(":", 1)[1])

    @property
    def storage(self) -> Path:
        """The filesystem storage root."""
        return self.root / "data"

    @property
    def config(self) -> Path:
        """Its configuration file."""
        return self.root / "config.yml"

    @property
    def log_path(self) -> Path:
        """Where its output (and access log) goes."""
        return self.root / "registry.log"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the registry process so far (0 once it is gone)."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Terminate it (kill after 10 s) and reap it."""
        stop_process(self.proc)

    def __enter__(self) -> RegistryServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _htpasswd_line(user: str, password: str) -> str:
    tool = shutil.which("htpasswd")
    if tool is not None:
        done = subprocess.run(
            [tool, "-Bbn", user, password], capture_output=True, text=True, check=True
        )
        return done.stdout.strip()
    try:
        import bcrypt  # type: ignore[import-not-found]
    except ImportError:
        raise RegistryUnavailable("needs htpasswd (apache2-utils) or bcrypt") from None
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{user}:{hashed}"


def registry_config(
    data: Path,
    addr: str,
    *,
    access_log: bool = False,
    htpasswd: Path | None = None,
    secret: str = _SECRET,
) -> str:
    """The ``config.yml`` text: filesystem storage at ``data``, listening on ``addr``."""
    lines = [
        "version: 0.1",
        "log:",
        "  level: error",
        "  accesslog:",
        f"    disabled: {'false' if access_log else 'true'}",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {data}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: {addr}",
        f"  secret: {secret}",
    ]
    if htpasswd is not None:
        lines += [
            "auth:",
            "  htpasswd:",
            "    realm: chunkstore-test",
            f"    path: {htpasswd}",
        ]
    return "\n".join(lines) + "\n"


def _status(url: str) -> int:
    """The HTTP status of ``GET url/v2/`` (0 when nothing answers)."""
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=1.0)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen[Any], url: str, timeout: float = _STARTUP_SECONDS) -> bool:
    """Whether ``url/v2/`` answers 200 or 401 within ``timeout`` s while ``proc`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        status = _status(url)
        if status in (200, 401):
            return True
        time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate ``proc``, kill it after 10 s, and reap it."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_registry(
    root: Path,
    *,
    auth: tuple[str, str] | None = None,
    access_log: bool = False,
    listen: str | None = None,
    prefix: Sequence[str] = (),
    binary: Path = REGISTRY_BINARY,
    secret: str = _SECRET,
    startup_seconds: float = _STARTUP_SECONDS,
) -> RegistryServer:
    """Start a registry storing under ``root / "data"``; the caller must ``stop()`` it.

    ``auth`` (user, password) requires htpasswd basic auth; ``access_log`` logs every request to
    ``registry.log``; ``listen`` (``ADDR:PORT``) replaces the free loopback port, and ``prefix``
    runs the binary through a command such as ``ip netns exec NS``. Raises
    :class:`RegistryUnavailable` when it cannot run here, ``RuntimeError`` when it does not start.
    """
    if not binary.exists():
        raise RegistryUnavailable(f"{binary} is missing (apt-get install docker-registry)")
    root.mkdir(parents=True, exist_ok=True)
    htpasswd = None
    if auth is not None:
        htpasswd = root / "htpasswd"
        htpasswd.write_text(_htpasswd_line(*auth) + "\n")
    attempts = 1 if listen is not None else 3  # a free port may be taken before it is bound
    for _attempt in range(attempts):
        host = listen if listen is not None else f"127.0.0.1:{free_port()}"
        config = root / "config.yml"
        config.write_text(
            registry_config(
                root / "data", host, access_log=access_log, htpasswd=htpasswd, secret=secret
            )
        )
        with (root / "registry.log").open("ab") as log:
            proc = subprocess.Popen(
                [*prefix, str(binary), "serve", str(config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        server = RegistryServer(
            proc,
            root,
            host,
            user=auth[0] if auth else None,
            password=auth[1] if auth else None,
        )
        if wait_ready(proc, server.url, startup_seconds):
            return server
        server.stop()
    tail = ""
    with contextlib.suppress(OSError):
        tail = (root / "registry.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"docker-registry did not start; its log ends with:\n{tail}")
