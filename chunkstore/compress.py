"""Blob compression: zstd, kept only when it makes the blob smaller.

The compressed form is framed by one leading byte: ``0x00`` raw follows, ``0x01`` a zstd frame follows
(with its content size). Decompression is bounded by the expected plaintext length, so a hostile
frame cannot inflate past it.
"""

from __future__ import annotations

import threading

import zstandard

from index.errors import LimitExceeded, Malformed

__all__ = ["RAW", "ZSTD", "Compressor"]

RAW = 0x00
ZSTD = 0x01


class Compressor:
    """Thread-safe zstd framing (one zstd context per thread, owned by this object)."""

    def __init__(self, level: int = 3) -> None:
        """Use zstd ``level`` (1..19)."""
        self._level = level
        self._local = threading.local()

    def _cctx(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = zstandard.ZstdCompressor(level=self._level, write_content_size=True)
            self._local.c = c
        return c

    def _dctx(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = zstandard.ZstdDecompressor()
            self._local.d = d
        return d

    def compress(self, data: bytes | memoryview) -> bytes:
        """Frame ``data``: zstd when smaller, else raw."""
        z = self._cctx().compress(data)
        if len(z) < len(data):
            return bytes([ZSTD]) + z
        return bytes([RAW]) + bytes(data)

    def decompress(self, framed: bytes | memoryview, max_length: int) -> bytes:
        """Undo :meth:`compress`; the result may not exceed ``max_length`` bytes."""
        if len(framed) < 1:
            raise Malformed("empty compressed blob")
        flag = framed[0]
        body = memoryview(framed)[1:]
        if flag == RAW:
            if len(body) > max_length:
                raise LimitExceeded("raw blob longer than expected")
            return bytes(body)
        if flag != ZSTD:
            raise Malformed(f"unknown compression flag {flag}")
        try:
            params = zstandard.get_frame_parameters(body)
        except zstandard.ZstdError as exc:
            raise Malformed(f"invalid zstd frame: {exc}") from exc
        size = params.content_size
        if size <= 0:
            raise Malformed("zstd frame does not declare its content size")
        if size > max_length:
            raise LimitExceeded(
                f"zstd frame declares {size} bytes, more than the {max_length} expected"
            )
        try:
            dobj = self._dctx().decompressobj()
            out = dobj.decompress(body)
        except zstandard.ZstdError as exc:
            raise Malformed(f"invalid zstd data: {exc}") from exc
        if not dobj.eof or dobj.unused_data:
            raise Malformed("zstd frame is truncated or followed by extra bytes")
        if len(out) != size:
            raise Malformed("zstd frame size mismatch")
        return out
