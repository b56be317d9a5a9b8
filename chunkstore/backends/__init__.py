"""Storage backends behind one small interface (see :mod:`chunkstore.backends.base`).

:func:`open_backend` turns a repository location into a backend; wrappers are composed here only.
"""

from __future__ import annotations

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
    "open_backend",
]


def open_backend(location: str | Path) -> Backend:
    """A backend for ``location``: ``local:PATH`` or a plain path (``registry:`` comes later)."""
    text = str(location)
    if text.startswith("local:"):
        text = text[len("local:") :]
    elif text.startswith("registry:"):
        raise UsageError("registry repositories are not supported by this version yet")
    if not text:
        raise UsageError("empty repository location")
    return LocalBackend(Path(text).expanduser())
