"""libzstd's streaming compressor (the ``zstd`` tool, containers/image's C zstd, python-zstandard).

A zstd layer is one frame; its header says whether a checksum and the content size are written.
The streaming API's output does not depend on how the input is split, and it differs from the
one-shot API's (different block decisions), so only streaming producers are matched.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import zstandard

from chunkstore.reproduce.model import Candidate, Encoder, ParamValue

__all__ = ["ZstdFamily"]

_LEVEL_ORDER = (3, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19)


class _ZstdEncoder:
    __slots__ = ("_obj",)

    def __init__(self, level: int, checksum: bool, content_size: int) -> None:
        cctx = zstandard.ZstdCompressor(
            level=level, write_checksum=checksum, write_content_size=content_size >= 0
        )
        self._obj = cctx.compressobj(size=content_size)

    def compress(self, data: bytes | memoryview) -> bytes:
        return bytes(self._obj.compress(data))

    def finish(self) -> bytes:
        return bytes(self._obj.flush())


class ZstdFamily:
    """libzstd streaming compression at levels 1..19, settings read from the frame header."""

    name = "zstd"

    def candidates(self, header: bytes) -> list[Candidate]:
        """Levels 3, 1, 2, 4..19 with the frame header's checksum flag and content size.

        ``header`` is the start of the compressed blob (the frame header, at least 18 bytes when
        the blob has them).
        """
        try:
            frame = zstandard.get_frame_parameters(header)
        except zstandard.ZstdError:
            return []
        size = frame.content_size
        content_size = -1 if size == zstandard.CONTENTSIZE_UNKNOWN else int(size)
        out = []
        for level in _LEVEL_ORDER:
            params: dict[str, ParamValue] = {
                "level": level,
                "checksum": bool(frame.has_checksum),
                "content_size": content_size,
            }
            out.append(Candidate(self.name, params, functools.partial(self.open, params)))
        return out

    def open(self, params: Mapping[str, ParamValue]) -> Encoder:
        """A streaming encoder; ``content_size`` -1 means the frame does not state the size."""
        level, checksum, size = params["level"], params["checksum"], params["content_size"]
        if type(level) is not int or not 1 <= level <= 22:
            raise ValueError(f"zstd level {level!r} is out of range")
        if type(checksum) is not bool or type(size) is not int or size < -1:
            raise ValueError("zstd checksum must be a bool and content_size an int >= -1")
        return _ZstdEncoder(level, checksum, size)
