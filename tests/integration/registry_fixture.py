"""A real registry for integration tests: Debian's ``docker-registry`` (distribution 2.8) on loopback.

Use it from a test module with ``pytest_plugins = ["tests.integration.registry_fixture"]``. The
fixtures start ``docker-registry serve CONFIG`` on ``127.0.0.1`` at a free port with filesystem
storage in a temporary directory (deletes enabled), wait until ``/v2/`` answers, and stop it after
the session:

* ``registry`` -- anonymous access;
* ``auth_registry`` -- htpasswd basic auth for ``REGISTRY_USER``/``REGISTRY_PASSWORD``.

Tests share one registry per variant, so each should use its own repository names.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

__all__ = [
    "REGISTRY_BINARY",
    "REGISTRY_PASSWORD",
    "REGISTRY_USER",
    "RunningRegistry",
    "auth_registry",
    "registry",
    "start_registry",
]

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
REGISTRY_USER = "tester"
REGISTRY_PASSWORD = "s3cret-Pa55"
_STARTUP_SECONDS = 15.0


@dataclass(frozen=True)
class RunningRegistry:
    """A started registry: ``host`` is ``127.0.0.1:PORT``, ``url`` is ``http://host``."""

    host: str
    url: str
    storage: Path
    user: str | None = None
    password: str | None = None


def _free_port() -> int:
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
    bcrypt = pytest.importorskip("bcrypt", reason="needs htpasswd (apache2-utils) or bcrypt")
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{user}:{hashed}"


def _config(root: Path, port: int, htpasswd: Path | None) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: error",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root / 'data'}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: chunkstore-integration-test-secret",
    ]
    if htpasswd is not None:
        lines += [
            "auth:",
            "  htpasswd:",
            "    realm: chunkstore-test",
            f"    path: {htpasswd}",
        ]
    return "\n".join(lines) + "\n"


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> bool:
    deadline = time.monotonic() + _STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            status = httpx.get(f"{url}/v2/", timeout=1.0).status_code
        except httpx.TransportError:
            status = 0
        if status in (200, 401):
            return True
        time.sleep(0.05)
    return False


@dataclass
class _Handle:
    proc: subprocess.Popen[bytes]
    info: RunningRegistry

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_registry(root: Path, *, with_auth: bool = False) -> _Handle:
    """Start a registry storing under ``root``; the caller must ``stop()`` the handle."""
    if not REGISTRY_BINARY.exists():
        pytest.skip(f"{REGISTRY_BINARY} is missing (apt-get install docker-registry)")
    root.mkdir(parents=True, exist_ok=True)
    htpasswd = None
    if with_auth:
        htpasswd = root / "htpasswd"
        htpasswd.write_text(_htpasswd_line(REGISTRY_USER, REGISTRY_PASSWORD) + "\n")
    for _attempt in range(3):  # the free port may be taken between probing and binding
        port = _free_port()
        config = root / "config.yml"
        config.write_text(_config(root, port, htpasswd))
        log = (root / "registry.log").open("ab")
        proc = subprocess.Popen(
            [str(REGISTRY_BINARY), "serve", str(config)], stdout=log, stderr=log
        )
        log.close()
        url = f"http://127.0.0.1:{port}"
        if _wait_ready(proc, url):
            info = RunningRegistry(
                host=f"127.0.0.1:{port}",
                url=url,
                storage=root / "data",
                user=REGISTRY_USER if with_auth else None,
                password=REGISTRY_PASSWORD if with_auth else None,
            )
            return _Handle(proc, info)
        _Handle(proc, RunningRegistry("", "", root)).stop()
    log_text = (root / "registry.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"docker-registry did not start; its log ends with:\n{log_text}")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """An anonymous registry on 127.0.0.1 for the whole session."""
    handle = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield handle.info
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A registry on 127.0.0.1 requiring basic auth (``REGISTRY_USER``/``REGISTRY_PASSWORD``)."""
    handle = start_registry(tmp_path_factory.mktemp("auth-registry"), with_auth=True)
    try:
        yield handle.info
    finally:
        handle.stop()


def basic_header(user: str, password: str) -> str:
    """An ``Authorization`` value, for tests that talk to the registry without the client."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
