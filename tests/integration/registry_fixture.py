"""A real registry for integration tests: Debian's ``docker-registry`` (distribution 2.8) on loopback.

Use it from a test module with ``pytest_plugins = ["tests.integration.registry_fixture"]``. The
fixtures start ``docker-registry serve CONFIG`` on ``127.0.0.1`` at a free port with filesystem
storage in a temporary directory (deletes enabled), wait until ``/v2/`` answers, and stop it after
the session:

* ``registry`` -- anonymous access;
* ``auth_registry`` -- htpasswd basic auth for ``REGISTRY_USER``/``REGISTRY_PASSWORD``.

Tests share one registry per variant, so each should use its own repository names. The launcher
itself is :mod:`chunkstore.testing.registry_server`, shared with the benchmarks (``tools/benchlib``);
this module adapts it to pytest (a registry that cannot run here skips the test).
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chunkstore.testing import registry_server
from chunkstore.testing.registry_server import REGISTRY_BINARY, RegistryUnavailable

__all__ = [
    "REGISTRY_BINARY",
    "REGISTRY_PASSWORD",
    "REGISTRY_USER",
    "RunningRegistry",
    "auth_registry",
    "basic_header",
    "registry",
    "start_registry",
]

REGISTRY_USER = "tester"
REGISTRY_PASSWORD = "s3cret-Pa55"


@dataclass(frozen=True)
class RunningRegistry:
    """A started registry: ``host`` is ``127.0.0.1:PORT``, ``url`` is ``http://host``."""

    host: str
    url: str
    storage: Path
    user: str | None = None
    password: str | None = None


@dataclass
class _Handle:
    """A registry process and what tests see of it; ``stop()`` ends the process."""

    proc: subprocess.Popen[bytes]
    info: RunningRegistry

    def stop(self) -> None:
        registry_server.stop_process(self.proc)


def _wait_ready(proc: subprocess.Popen[bytes], url: str) -> bool:
    """Whether a (re)started registry answers at ``url`` in time."""
    return registry_server.wait_ready(proc, url)


def start_registry(root: Path, *, with_auth: bool = False) -> _Handle:
    """Start a registry storing under ``root``; the caller must ``stop()`` the handle."""
    auth = (REGISTRY_USER, REGISTRY_PASSWORD) if with_auth else None
    try:
        server = registry_server.start_registry(
            root, auth=auth, secret="chunkstore-integration-test-secret"
        )
    except RegistryUnavailable as exc:
        pytest.skip(str(exc))
    info = RunningRegistry(
        host=server.host,
        url=server.url,
        storage=server.storage,
        user=server.user,
        password=server.password,
    )
    return _Handle(server.proc, info)


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
