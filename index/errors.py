"""Errors raised while decoding or validating chunkstore formats.

The tree is deliberately small and context-free (no I/O, no repository knowledge)::

    FormatError                 any bytes that are not a valid chunkstore object
    ├── Malformed               wrong structure, type, length or value
    ├── UnsupportedVersion      a version this code does not read (too old or too new)
    └── LimitExceeded           a size, count or depth cap was hit before any large allocation

The engine (``chunkstore``) wraps these in its own errors, adding which blob or file was being read.
"""

from __future__ import annotations

__all__ = ["FormatError", "LimitExceeded", "Malformed", "UnsupportedVersion"]


class FormatError(Exception):
    """Bytes that do not decode to a valid chunkstore object."""


class Malformed(FormatError):
    """The structure, a type, a length or a value is wrong."""


class UnsupportedVersion(FormatError):
    """The object's format version is outside what this code reads."""

    def __init__(self, kind: str, found: int, supported: tuple[int, int]) -> None:
        """Name the object kind, the version found and the supported range."""
        lo, hi = supported
        want = f"{lo}" if lo == hi else f"{lo}..{hi}"
        super().__init__(
            f"{kind} has format version {found}, this chunkstore reads version {want}; "
            + (
                "upgrade chunkstore to read it"
                if found > hi
                else "this data predates the supported format and cannot be read"
            )
        )
        self.kind = kind
        self.found = found
        self.supported = supported


class LimitExceeded(FormatError):
    """A size, count or depth cap was exceeded; raised before allocating."""
