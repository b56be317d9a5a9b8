"""The storage interface: named files of bytes, nothing more.

A backend knows file types and names, never packs, blobs or encryption (restic's ``Backend``,
desync's ``Store``). Every implementation passes ``chunkstore.testing.backend_suite``.

Contracts:

* ``save(handle, data)`` is atomic: readers see the whole file or none of it. Saving a content-named
  handle twice with the same bytes is harmless. Saving over a different existing file is refused with
  ``UsageError`` unless ``overwrite=True`` (only locks are ever overwritten, to refresh them).
* ``load(handle, offset, length)`` returns exactly ``length`` bytes (all from ``offset`` when ``length``
  is None), raises ``NotFound`` for a missing file and ``ShortRead`` when the file is too short.
* ``list(file_type)`` yields each file of that type once, in no particular order.
* ``remove(handle)`` deletes the file; removing a missing file raises ``NotFound``.
* Native errors are translated here: a missing file is ``NotFound``, a retryable failure ``Transient``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from chunkstore.errors import UsageError

__all__ = ["Backend", "FileInfo", "FileType", "Handle"]


class FileType(StrEnum):
    """The kinds of files a repository holds; the value is the local directory name."""

    CONFIG = "config"
    KEY = "keys"
    PACK = "data"
    INDEX = "index"
    RECORD = "records"
    LOCK = "locks"


_NAME = re.compile(r"\A[0-9a-f]{64}\Z")


@dataclass(frozen=True, slots=True, order=True)
class Handle:
    """A file's type and name. Every name except the config's is 64 lower-case hex digits."""

    type: FileType
    name: str

    def __post_init__(self) -> None:
        """Refuse names that are not 64 hex digits (so a name can never be a path)."""
        if self.type is FileType.CONFIG:
            if self.name != "config":
                raise UsageError("the config file is always named 'config'")
        elif not _NAME.match(self.name):
            raise UsageError(f"invalid {self.type.value} file name {self.name!r:.80}")

    @classmethod
    def config(cls) -> Handle:
        """The repository's config file."""
        return cls(FileType.CONFIG, "config")

    def __str__(self) -> str:
        """``type/name``, for messages."""
        return f"{self.type.value}/{self.name}"


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A listed file and its size in bytes."""

    handle: Handle
    size: int


class Backend(Protocol):
    """Where repository files live. See the module docstring for the contracts."""

    @property
    def location(self) -> str:
        """A human-readable location, for messages."""
        ...

    def create(self) -> None:
        """Prepare an empty repository location (directories etc.); idempotent."""
        ...

    def exists(self, handle: Handle) -> bool:
        """Whether the file exists."""
        ...

    def save(self, handle: Handle, data: bytes, *, overwrite: bool = False) -> None:
        """Store ``data`` atomically under ``handle``."""
        ...

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        """Return exactly ``length`` bytes from ``offset`` (the rest of the file when None)."""
        ...

    def stat(self, handle: Handle) -> FileInfo:
        """Size of the file; ``NotFound`` if missing."""
        ...

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        """Every file of ``file_type``, each once."""
        ...

    def remove(self, handle: Handle) -> None:
        """Delete the file; ``NotFound`` if missing."""
        ...

    def close(self) -> None:
        """Release resources (connections, file handles)."""
        ...
