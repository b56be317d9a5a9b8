"""Blob bytes as served: byte ranges, and layers rebuilt exactly and verified before they end.

A layer comes from :func:`chunkstore.images.restore.layer_blob` (kept chunks verified one by one,
a rebuilt tar checked against its diff_id, then the recorded compressor), so it starts flowing
with the first rebuilt piece. The whole blob is hashed as it is made, and the last piece of what
is sent is held back until the blob's size and digest are known to be right: a mismatch raises
:class:`~chunkstore.errors.IntegrityError` before the response is complete, so the server aborts
the connection and the client never holds a complete wrong blob. A range that ends before the
blob does is made the same way: the rest of the blob is still made and hashed before the range's
last piece goes out (compressed streams cannot be entered in the middle).

With a :class:`~chunkstore.serve.cache.LayerCache`, every blob made whole (for a full response
or a range) is kept once verified, and later requests read it from disk, hashed again as they
are sent under the same rule; :class:`~chunkstore.serve.builds.SharedBuilds` makes concurrent
requests for one layer share one rebuild.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from chunkstore.errors import IntegrityError
from chunkstore.images.restore import layer_blob
from chunkstore.repository import Repository
from chunkstore.serve.builds import SharedBuilds
from chunkstore.serve.cache import LayerCache, Spool
from index.image import LayerEntry

__all__ = ["ByteRange", "RangeNotSatisfiable", "layer_pieces", "parse_range"]

_PIECE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``start`` to ``end`` (exclusive) of a blob."""

    start: int
    end: int

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` header value of this range of a ``size``-byte blob."""
        return f"bytes {self.start}-{self.end - 1}/{size}"


class RangeNotSatisfiable(Exception):
    """The ``Range`` header asks for nothing inside the blob (HTTP 416)."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range a ``Range`` header asks of a ``size``-byte blob; None for the whole blob.

    Headers this server does not take (several ranges, other units, malformed) are ignored, as
    RFC 9110 allows: the whole blob is sent. :class:`RangeNotSatisfiable` when the range starts
    at or after the end (or a suffix range asks for zero bytes).
    """
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(0, size - suffix), size)
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if last != "" and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise RangeNotSatisfiable
    return ByteRange(start, end)


def layer_pieces(
    repo: Repository,
    layer: LayerEntry,
    want: ByteRange | None,
    cache: LayerCache | None = None,
    builds: SharedBuilds | None = None,
) -> Iterator[bytes]:
    """Bytes of ``layer``'s blob (all, or ``want``), the last piece only once the blob is verified.

    With a ``cache``, a cached blob is read from disk (and hashed again); otherwise, with
    ``builds`` (over the same cache), the blob comes from the one build of it that every request
    shares, else it is rebuilt here (and, with a cache only, written to it and committed there
    once verified). Raises
    :class:`IntegrityError` (before that last piece) when the blob does not have the layer's
    size and digest; a cached blob that does not is deleted first.
    """
    cached = cache.open(layer.digest, layer.size) if cache is not None else None
    if cached is not None:
        with cached:
            try:
                yield from _verified(_read_pieces(cached), layer, want, None, "cached")
            except IntegrityError:
                assert cache is not None
                cache.drop(layer.digest)
                raise
        return
    followed = builds.follow(layer) if builds is not None else None
    if followed is not None:
        with contextlib.closing(followed):
            yield from _verified(followed, layer, want, None, "rebuilt")
        return
    spool = None
    if cache is not None and builds is None:
        spool = cache.spool(layer.digest, layer.size)
    try:
        yield from _verified(layer_blob(repo, layer), layer, want, spool, "rebuilt")
    finally:
        if spool is not None:
            spool.discard()  # nothing when it was committed


def _read_pieces(f: IO[bytes]) -> Iterator[bytes]:
    while piece := f.read(_PIECE_BYTES):
        yield piece


def _verified(
    pieces: Iterable[bytes],
    layer: LayerEntry,
    want: ByteRange | None,
    spool: Spool | None,
    how: str,
) -> Iterator[bytes]:
    start, end = (0, layer.size) if want is None else (want.start, want.end)
    algorithm, _, _ = layer.digest.partition(":")
    h = hashlib.new(algorithm)  # the record holds a parsed OCI digest: sha256 or sha512
    offset = 0
    held: bytes | None = None
    for piece in pieces:
        h.update(piece)
        if spool is not None:
            spool.write(piece)
        lo, hi = offset, offset + len(piece)
        offset = hi
        if hi <= start or lo >= end:
            continue
        part = piece[max(0, start - lo) : min(len(piece), end - lo)]
        if held is not None:
            yield held
        held = part
    digest = f"{algorithm}:{h.hexdigest()}"
    if offset != layer.size or digest != layer.digest:
        raise IntegrityError(
            f"layer {layer.digest} was {how} as {offset} bytes hashing to {digest} (the "
            f"manifest says {layer.size} bytes); nothing more is sent: run 'chunkstore check "
            "--read-data'"
        )
    if spool is not None:
        spool.commit()
    if held is not None:
        yield held
