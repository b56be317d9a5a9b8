"""A backend that keeps every file in a dictionary, for unit tests and dry runs.

It honours the same contracts as the on-disk backend (see :mod:`chunkstore.backends.base`): saves
are all-or-nothing, an identical re-save is harmless, a different re-save is refused unless
``overwrite=True``, loads return exactly the bytes asked for or raise ``ShortRead``, and missing
files raise ``NotFound``. A lock makes it safe to share between threads. Nothing survives the
process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from chunkstore.backends.base import FileInfo, FileType, Handle
from chunkstore.errors import NotFound, ShortRead, UsageError

__all__ = ["MemoryBackend"]


class MemoryBackend:
    """Files held in memory, keyed by handle; thread-safe."""

    __slots__ = ("_files", "_location", "_lock")

    def __init__(self, location: str = "memory:") -> None:
        """``location`` only names the backend in messages."""
        self._location = location
        self._files: dict[Handle, bytes] = {}
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        """The name given at construction (``memory:`` by default)."""
        return self._location

    def create(self) -> None:
        """Nothing to prepare: a dictionary is always ready."""

    def exists(self, handle: Handle) -> bool:
        """Whether a file is stored under ``handle``."""
        with self._lock:
            return handle in self._files

    def save(self, handle: Handle, data: bytes, *, overwrite: bool = False) -> None:
        """Store a copy of ``data``; refuse to replace different bytes unless ``overwrite``."""
        data = bytes(data)
        with self._lock:
            existing = self._files.get(handle)
            if existing is not None and not overwrite:
                if existing == data:
                    return
                raise UsageError(
                    f"{handle} already exists in {self._location} with different content "
                    f"({len(existing)} bytes stored, {len(data)} offered); refusing to overwrite it"
                )
            self._files[handle] = data

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        """Exactly ``length`` bytes from ``offset`` (the rest of the file when None)."""
        if offset < 0:
            raise UsageError(f"cannot load {handle}: offset {offset} is negative")
        if length is not None and length < 0:
            raise UsageError(f"cannot load {handle}: length {length} is negative")
        with self._lock:
            data = self._files.get(handle)
        if data is None:
            raise NotFound(f"{handle} does not exist in {self._location}")
        available = max(len(data) - offset, 0)
        wanted = available if length is None else length
        if offset > len(data) or wanted > available:
            raise ShortRead(
                f"{handle} in {self._location} is too short: wanted {wanted} bytes at offset "
                f"{offset}, only {available} available (file size {len(data)})"
            )
        return data[offset : offset + wanted]

    def stat(self, handle: Handle) -> FileInfo:
        """The file's size; ``NotFound`` if missing."""
        with self._lock:
            data = self._files.get(handle)
        if data is None:
            raise NotFound(f"{handle} does not exist in {self._location}")
        return FileInfo(handle, len(data))

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        """Every file of ``file_type`` as of the call, each once."""
        with self._lock:
            infos = [FileInfo(h, len(d)) for h, d in self._files.items() if h.type is file_type]
        yield from infos

    def remove(self, handle: Handle) -> None:
        """Delete the file; ``NotFound`` if missing."""
        with self._lock:
            if self._files.pop(handle, None) is None:
                raise NotFound(f"cannot remove {handle}: it does not exist in {self._location}")

    def close(self) -> None:
        """Nothing to release; the files stay readable."""
