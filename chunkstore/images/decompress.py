"""Reading compressed layers: media types, magic sniffing and bounded decompression.

A layer's media type declares its compression (:func:`layer_compression`); the first bytes of the
blob must agree (:func:`check_magic`, using :func:`sniff_compression`), so a mislabelled layer is
reported as such rather than as a confusing decode error.

Decompression (:func:`open_decompressed`) streams with bounded memory and refuses decompression
bombs: output beyond ``max_size`` bytes, or more than ``max_ratio`` times the compressed bytes read
(past the first MiB), raises :class:`DecompressionLimit`. gzip is inflated with ISA-L (exact by
definition, and much faster than zlib); undecodable data raises :class:`CorruptLayer`.

Writing layers back (exact or default recompression) lives in :mod:`chunkstore.images.recompress`.
"""

from __future__ import annotations

import io
import zlib
from typing import Any, Literal, cast

import zstandard
from isal import isal_zlib

from chunkstore.errors import UsageError
from chunkstore.readable import Readable
from chunkstore.registry.mediatypes import (
    DOCKER_FOREIGN_LAYER_GZIP,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    OCI_LAYER_GZIP,
    OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    OCI_LAYER_NONDISTRIBUTABLE_TAR,
    OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
)

__all__ = [
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_SIZE",
    "LAYER_MEDIA_TYPES",
    "Compression",
    "CorruptLayer",
    "DecompressionLimit",
    "check_magic",
    "layer_compression",
    "open_decompressed",
    "sniff_compression",
]

Compression = Literal["none", "gzip", "zstd"]

#: Every layer media type understood, with its compression.
LAYER_MEDIA_TYPES: dict[str, Compression] = {
    OCI_LAYER_TAR: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDISTRIBUTABLE_TAR: "none",
    OCI_LAYER_NONDISTRIBUTABLE_GZIP: "gzip",
    OCI_LAYER_NONDISTRIBUTABLE_ZSTD: "zstd",
    DOCKER_LAYER_TAR: "none",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_FOREIGN_LAYER_GZIP: "gzip",
}

DEFAULT_MAX_SIZE = 64 << 30
DEFAULT_MAX_RATIO = 1000
_RATIO_FLOOR = 1 << 20
_READ = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class CorruptLayer(UsageError):
    """A layer's compressed bytes do not decode (or disagree with its media type)."""


class DecompressionLimit(CorruptLayer):
    """A layer decompresses to more than the size or ratio cap (a likely decompression bomb)."""


def layer_compression(media_type: str) -> Compression:
    """The compression a layer media type declares; ``UsageError`` for anything else."""
    try:
        return LAYER_MEDIA_TYPES[media_type]
    except KeyError:
        supported = ", ".join(sorted(LAYER_MEDIA_TYPES))
        raise UsageError(
            f"unsupported layer media type {media_type!r:.120}; supported: {supported}"
        ) from None


def sniff_compression(head: bytes) -> Compression:
    """The compression the first bytes of a blob show (``none`` when neither magic matches)."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "none"


def check_magic(declared: Compression, head: bytes, *, name: str = "layer") -> None:
    """Raise :class:`CorruptLayer` when ``head`` (the first bytes) contradicts ``declared``."""
    if not head:
        if declared != "none":
            raise CorruptLayer(f"{name} is empty but declared {declared}-compressed")
        return
    found = sniff_compression(head)
    if found != declared:
        shown = "uncompressed data" if found == "none" else f"{found} data"
        raise CorruptLayer(
            f"{name} is declared {declared} by its media type but holds {shown}; "
            "fix the image's manifest or re-export it"
        )


# isal's stubs declare ``error`` as an instance; it is the exception class.
_ISAL_ERROR = cast("type[Exception]", isal_zlib.error)


def _inflater() -> Any:
    """A gzip-member inflater: ISA-L's (about 2.5x zlib's speed here; inflating is exact by
    definition, so the implementation cannot change a byte), with zlib's interface."""
    return isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)


class _Decompressed(io.RawIOBase):
    """A readable stream over decompressed data with a size and ratio guard."""

    def __init__(
        self, source: Readable, compression: Compression, max_ratio: float, max_size: int
    ) -> None:
        super().__init__()
        self._source = source
        self._compression = compression
        self._max_ratio = max_ratio
        self._max_size = max_size
        self._in = 0
        self._out = 0
        self._pending = b""
        self._eof = False
        self._zobj: Any = None
        self._zstd: Any = None
        self._started = False
        if compression == "gzip":
            self._zobj = _inflater()
        elif compression == "zstd":
            dctx = zstandard.ZstdDecompressor()
            self._zstd = dctx.stream_reader(
                cast(Any, _Counting(source, self)), read_size=_READ, read_across_frames=True
            )

    def readable(self) -> bool:
        return True

    def _count_in(self, n: int) -> None:
        self._in += n

    def _guard(self, n: int) -> None:
        self._out += n
        if self._out > self._max_size:
            raise DecompressionLimit(
                f"layer decompresses to more than {self._max_size} bytes; refusing it "
                "(raise the size limit if the layer is genuine)"
            )
        if self._out > _RATIO_FLOOR and self._out > self._max_ratio * max(self._in, 1):
            raise DecompressionLimit(
                f"layer expands more than {self._max_ratio:g} times ({self._in} compressed "
                f"bytes gave {self._out}); refusing a likely decompression bomb "
                "(raise the ratio limit if the layer is genuine)"
            )

    def _gzip_more(self, want: int) -> bytes:
        obj = self._zobj
        while True:
            if obj.eof:
                rest = obj.unused_data
                if not rest:
                    rest = self._source.read(_READ)
                    self._count_in(len(rest))
                if not rest:
                    return b""
                if len(rest) < 2:
                    more = self._source.read(1)
                    self._count_in(len(more))
                    rest += more
                if not rest.startswith(_GZIP_MAGIC):
                    raise CorruptLayer(
                        "gzip layer has trailing data after its last member; it is damaged"
                    )
                obj = self._zobj = _inflater()
                data = obj.decompress(rest, want)
            elif obj.unconsumed_tail:
                data = obj.decompress(obj.unconsumed_tail, want)
            else:
                chunk = self._source.read(_READ)
                self._count_in(len(chunk))
                if not chunk:
                    raise CorruptLayer("gzip layer is truncated; re-fetch it")
                data = obj.decompress(chunk, want)
            if data:
                return bytes(data)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = len(view)
        if want == 0 or self._eof:
            return 0
        if not self._pending:
            try:
                if self._compression == "gzip":
                    self._pending = self._gzip_more(max(want, _READ))
                elif self._compression == "zstd":
                    self._pending = self._zstd.read(max(want, _READ))
                else:
                    self._pending = self._source.read(max(want, _READ))
                    self._count_in(len(self._pending))
            except (zlib.error, _ISAL_ERROR) as exc:
                raise CorruptLayer(f"gzip layer does not decode: {exc}") from exc
            except zstandard.ZstdError as exc:
                raise CorruptLayer(f"zstd layer does not decode: {exc}") from exc
            if not self._pending:
                self._eof = True
                return 0
            if self._compression != "none":
                self._guard(len(self._pending))
        n = min(want, len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()
        super().close()


class _Counting:
    """Counts the compressed bytes zstd reads, for the ratio guard."""

    def __init__(self, source: Readable, owner: _Decompressed) -> None:
        self._source = source
        self._owner = owner

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._owner._count_in(len(data))
        return data


def open_decompressed(
    stream: Readable,
    compression: Compression,
    *,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_size: int = DEFAULT_MAX_SIZE,
) -> io.BufferedReader:
    """A buffered stream of the uncompressed tar inside ``stream``.

    gzip may hold several members (as ``pigz`` and some tools write); zstd several frames.
    Output over ``max_size`` bytes, or over ``max_ratio`` times the compressed bytes once past
    1 MiB, raises :class:`DecompressionLimit`; undecodable data raises :class:`CorruptLayer`.
    A truncated gzip stream is detected here; a zstd stream cut at a frame boundary is not
    (the layer's diff_id check catches it).
    """
    if compression not in ("none", "gzip", "zstd"):
        raise UsageError(f"unknown compression {compression!r}; use none, gzip or zstd")
    return io.BufferedReader(_Decompressed(stream, compression, max_ratio, max_size), _READ)
