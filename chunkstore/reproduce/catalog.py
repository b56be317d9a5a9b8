"""Every compressor family the search knows, and whole-blob encoders built from a record.

The order of :func:`families` is the order candidates are tried in; it matters only for cost
(all candidates run side by side on the first blocks, and most drop out there).
"""

from __future__ import annotations

from collections.abc import Iterator

from chunkstore.errors import UsageError
from chunkstore.reproduce.gnu_family import GnuGzipFamily, PigzFamily
from chunkstore.reproduce.go_family import GoFlateFamily
from chunkstore.reproduce.gzipfmt import crc32, gzip_trailer, parse_gzip_header
from chunkstore.reproduce.klauspost_family import KlauspostFamily
from chunkstore.reproduce.klauspost_zstd_family import KlauspostZstdFamily
from chunkstore.reproduce.model import Candidate, Encoder, Family
from chunkstore.reproduce.zlib_family import ZlibFamily
from chunkstore.reproduce.zstd_family import ZstdFamily
from index.image import Reproduce

__all__ = ["BlobEncoder", "candidates", "families", "family", "open_blob_encoder", "reproduce_blob"]

#: At most this many candidates run on a layer's first blocks.
MAX_CANDIDATES = 64


def families(compression: str) -> list[Family]:
    """The families that write ``compression`` ("gzip" or "zstd"), most common first."""
    if compression == "zstd":
        # klauspost (skopeo, podman, buildah) frames are told apart by their header.
        return [KlauspostZstdFamily(), ZstdFamily()]
    if compression == "gzip":
        # Go (docker, buildkit, crane) and klauspost (skopeo, podman, umoci) write OS 255, GNU
        # gzip and pigz OS 3; each family rules itself out by the header, so the order only
        # decides which of two identical outputs is recorded.
        return [GoFlateFamily(), KlauspostFamily(), ZlibFamily(), GnuGzipFamily(), PigzFamily()]
    return []


def family(compression: str, name: str) -> Family:
    """The family called ``name``; ``UsageError`` if this version does not know it."""
    for fam in families(compression):
        if fam.name == name:
            return fam
    raise UsageError(
        f"the record asks for the {compression} compressor {name!r}, which this version of "
        "chunkstore cannot reproduce; use a newer chunkstore to restore this layer"
    )


class BlobEncoder:
    """A whole compressed blob from its uncompressed bytes: gzip header + deflate + trailer, or a
    zstd frame. Same interface as a family's :class:`~chunkstore.reproduce.model.Encoder`."""

    __slots__ = ("_crc", "_encoder", "_gzip", "_header", "_size")

    def __init__(self, compression: str, encoder: Encoder, header: bytes) -> None:
        """Wrap ``encoder``; for gzip, ``header`` is written first and the trailer computed."""
        self._encoder = encoder
        self._gzip = compression == "gzip"
        self._header = header
        self._crc = 0
        self._size = 0

    def compress(self, data: bytes | memoryview) -> bytes:
        """Consume ``data``; the blob bytes that are final so far."""
        out = self._encoder.compress(data)
        if self._gzip:
            self._crc = crc32(data, self._crc)
            self._size += len(data)
        if self._header:
            out, self._header = self._header + out, b""
        return out

    def finish(self) -> bytes:
        """The rest of the blob."""
        out = self._header + self._encoder.finish()
        self._header = b""
        if self._gzip:
            out += gzip_trailer(self._crc, self._size)
        return out


def candidates(compression: str, head: bytes) -> list[Candidate]:
    """Plausible settings for a blob starting with ``head``, most likely first (capped)."""
    if compression == "gzip":
        header = parse_gzip_header(head)
        if header is None:
            return []
        key = header.raw
    else:
        key = head
    out: list[Candidate] = []
    for fam in families(compression):
        out.extend(fam.candidates(key))
    return out[:MAX_CANDIDATES]


def header_of(compression: str, head: bytes) -> bytes:
    """What a record keeps of the blob's start: the gzip member header, nothing for zstd."""
    if compression != "gzip":
        return b""
    header = parse_gzip_header(head)
    return b"" if header is None else header.raw


def open_blob_encoder(compression: str, reproduce: Reproduce) -> BlobEncoder:
    """The encoder a record's ``reproduce`` describes; ``UsageError`` if it is not valid."""
    fam = family(compression, reproduce.family)
    if compression == "gzip" and parse_gzip_header(reproduce.header) is None:
        raise UsageError("the record's gzip header for a reproduced layer is malformed")
    try:
        encoder = fam.open(reproduce.params)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(
            f"the record's settings for the {reproduce.family} compressor are invalid: {exc}"
        ) from None
    return BlobEncoder(compression, encoder, reproduce.header)


def reproduce_blob(
    pieces: Iterator[bytes], compression: str, reproduce: Reproduce
) -> Iterator[bytes]:
    """The compressed blob, as pieces, from the uncompressed ``pieces``."""
    encoder = open_blob_encoder(compression, reproduce)
    for piece in pieces:
        out = encoder.compress(piece)
        if out:
            yield out
    yield encoder.finish()
