"""The contract between the reproduction search and the compressor families.

A *family* is one real-world compressor implementation (Go's standard library ``compress/flate``,
klauspost's ``compress/flate`` under ``pgzip``, GNU gzip's deflate, pigz, zlib, libzstd). It knows
two things:

* which settings are plausible for a blob, given its gzip header (:meth:`Family.candidates`);
* how to make a *streaming encoder* for one setting (:meth:`Candidate.open`).

An encoder turns the uncompressed layer (fed in pieces of any size) into the bytes of the
compressed *body*: for gzip the raw deflate stream between the member header and the CRC-32/ISIZE
trailer (the header is kept verbatim in the reproduction, the trailer is computed), for zstd the
whole frame. Its output must not depend on how the input is split across :meth:`Encoder.compress`
calls, and bytes it has returned are final: the search compares them with the original as they
come, and drops a candidate at its first differing byte.

``params`` is what a restore needs to rebuild the same encoder: plain JSON-able values only (ints,
strings, bools), stored in the image record (SPEC.md section 9c).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from index.image import Reproduce

__all__ = ["Candidate", "Encoder", "Family", "ParamValue"]

ParamValue = int | str | bool


class Encoder(Protocol):
    """A streaming compressor of one family at one setting."""

    def compress(self, data: bytes | memoryview) -> bytes:
        """Consume ``data``; return the output bytes that are final so far (maybe none)."""
        ...

    def finish(self) -> bytes:
        """End the stream; return the remaining output. The encoder cannot be used after."""
        ...


@dataclass(frozen=True, slots=True)
class Candidate:
    """One setting of one family: enough to open an encoder, and to record it."""

    family: str
    params: Mapping[str, ParamValue]
    open: Callable[[], Encoder] = field(compare=False, repr=False)
    #: An encoder with the same output that may use more threads and buffer more (pgzip blocks
    #: compressed at once): the search opens it for the lone survivor and feeds it from the start.
    open_fast: Callable[[], Encoder] | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        """Short human text, e.g. ``go-flate level=6`` (as the record's :attr:`Reproduce.label`)."""
        return Reproduce(self.family, dict(self.params)).label


class Family(Protocol):
    """A compressor implementation that the search knows how to imitate."""

    #: Stable name stored in image records (``reproduce.family``), e.g. ``"go-flate"``.
    name: str

    def candidates(self, header: bytes) -> list[Candidate]:
        """Plausible settings, most likely first, for a blob whose gzip member header is ``header``.

        For gzip families ``header`` is the verbatim gzip member header (RFC 1952, up to the first
        deflate byte); for zstd it is the start of the frame (its header). Return ``[]`` when the
        header rules the family out (an OS byte, XFL or flags this family never writes).
        """
        ...

    def open(self, params: Mapping[str, ParamValue]) -> Encoder:
        """An encoder for recorded ``params``; ``ValueError`` if they are not valid for it."""
        ...
