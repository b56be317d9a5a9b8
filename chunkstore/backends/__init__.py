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


def open_backend(location: str | Path, remote: RemoteOptions | None = None) -> Backend:
    """A backend for ``location``: ``local:PATH``, a plain path, or ``registry:HOST[:PORT]/NAME``."""
    text = str(location)
    if text.startswith("registry:"):
        from chunkstore.backends.registry import open_registry_backend

        return open_registry_backend(text[len("registry:") :], remote or RemoteOptions())
    if text.startswith("local:"):
        text = text[len("local:") :]
    if not text:
        raise UsageError("empty repository location")
    return LocalBackend(Path(text).expanduser())
