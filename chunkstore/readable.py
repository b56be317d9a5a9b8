"""The one protocol for "something to read bytes from" (files, blob readers, decompressors)."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Readable"]


class Readable(Protocol):
    """Anything with a binary ``read``."""

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (all remaining when negative); ``b""`` at the end."""
        ...
