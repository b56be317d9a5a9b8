"""Storage backends behind one small interface (see :mod:`chunkstore.backends.base`).

:func:`open_backend` turns a repository location into a backend; wrappers are composed here only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from chunkstore.backends.base import Backend, FileInfo, FileType, Handle
from chunkstore.backends.local import LocalBackend
from chunkstore.backends.memory import MemoryBackend
from chunkstore.errors import UsageError

__all__ = [
    "Backend",
    "FileInfo",
    "FileType",
    "Handle",
    "LocalBackend",
    "MemoryBackend",
    "RemoteOptions",
    "open_backend",
]


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    """How to reach a remote repository: the environment (credentials) and plain HTTP."""

    env: Mapping[str, str] = field(default_factory=dict)
    plain_http: bool = False
    #: Testing: kill the process at this commit step (``CHUNKSTORE_CRASH_AT``; see
    #: :mod:`chunkstore.testing.crashpoints`).
    crash_point: str | None = None


def open_backend(location: str | Path, remote: RemoteOptions | None = None) -> Backend:
    """A backend for ``location``: ``local:PATH``, a plain path, or ``registry:HOST[:PORT]/NAME``."""
    remote = remote or RemoteOptions()
    backend = _open_plain(str(location), remote)
    if remote.crash_point:
        from chunkstore.testing.crashpoints import ENV_VAR, CrashAtBackend, crash_point_from

        point = crash_point_from({ENV_VAR: remote.crash_point})
        if point is not None:
            return CrashAtBackend(backend, point)
    return backend


def _open_plain(text: str, remote: RemoteOptions) -> Backend:
    if text.startswith("registry:"):
        from chunkstore.backends.registry import open_registry_backend

        return open_registry_backend(text[len("registry:") :], remote)
    if text.startswith("local:"):
        text = text[len("local:") :]
    if not text:
        raise UsageError("empty repository location")
    return LocalBackend(Path(text).expanduser())
