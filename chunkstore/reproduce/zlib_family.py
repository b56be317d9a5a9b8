"""zlib's deflate at any level, memory level, window and strategy: Python's ``zlib``/``gzip``,
Java's ``GZIPOutputStream``, Node's ``zlib.gzip`` and tools built on them (jib, most Python tools).

The encoder is zlib itself (CPython's binding releases the GIL while it compresses), so the output
is exact for the zlib this machine has; every zlib since 1.2 writes the same deflate stream for the
same settings.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Mapping

from chunkstore.reproduce.gzipfmt import parse_gzip_header
from chunkstore.reproduce.model import Candidate, Encoder, ParamValue

__all__ = ["ZlibFamily"]

_STRATEGIES = {
    "default": zlib.Z_DEFAULT_STRATEGY,
    "filtered": zlib.Z_FILTERED,
    "huffman": zlib.Z_HUFFMAN_ONLY,
    "rle": zlib.Z_RLE,
    "fixed": zlib.Z_FIXED,
}


class _ZlibEncoder:
    __slots__ = ("_comp",)

    def __init__(self, level: int, mem_level: int, wbits: int, strategy: int) -> None:
        self._comp = zlib.compressobj(level, zlib.DEFLATED, -wbits, mem_level, strategy)

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._comp.compress(data)

    def finish(self) -> bytes:
        return self._comp.flush(zlib.Z_FINISH)


class ZlibFamily:
    """zlib deflate behind a gzip header (the header is kept verbatim, whatever wrote it)."""

    name = "zlib"

    def candidates(self, header: bytes) -> list[Candidate]:
        """Levels 1..9, the one XFL hints first, memory level 8 then 9; default window."""
        parsed = parse_gzip_header(header)
        if parsed is None:
            return []
        hint = parsed.level_hint
        levels = [hint, *[lv for lv in (6, 9, 1, 5, 4, 7, 8, 3, 2) if lv != hint]]
        out = []
        for mem_level in (8, 9):
            for level in levels:
                params: dict[str, ParamValue] = {
                    "level": level,
                    "mem_level": mem_level,
                    "wbits": 15,
                    "strategy": "default",
                }
                out.append(Candidate(self.name, params, functools.partial(self.open, params)))
        return out

    def open(self, params: Mapping[str, ParamValue]) -> Encoder:
        """A zlib raw-deflate encoder; ``ValueError`` on settings zlib does not have."""
        level, mem_level, wbits = params["level"], params["mem_level"], params["wbits"]
        strategy = params["strategy"]
        if not all(type(v) is int for v in (level, mem_level, wbits)):
            raise ValueError("zlib level, mem_level and wbits must be integers")
        assert isinstance(level, int) and isinstance(mem_level, int) and isinstance(wbits, int)
        if not (0 <= level <= 9 and 1 <= mem_level <= 9 and 9 <= wbits <= 15):
            raise ValueError(f"zlib settings out of range: {dict(params)}")
        if strategy not in _STRATEGIES:
            raise ValueError(f"unknown zlib strategy {strategy!r}")
        return _ZlibEncoder(level, mem_level, wbits, _STRATEGIES[str(strategy)])
