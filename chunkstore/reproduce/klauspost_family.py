"""klauspost's deflate (github.com/klauspost/compress/flate), alone or in pgzip's parallel blocks.

This is the gzip of most Go container tooling: containers/image (skopeo, podman, buildah, CRI-O)
and umoci compress layers with ``github.com/klauspost/pgzip`` over klauspost's flate. The encoder
is native (:mod:`chunkstore.native._kpflate`), written from how those packages work, and exact for
klauspost/compress **1.15.12** with pgzip **1.2.5** (the versions Debian bookworm's skopeo 1.9.3
and umoci 0.4.7 are built with; the flate code is what decides the bytes, pgzip only cuts blocks).

What the producers use, checked on their output:

* containers/image ``--dest-compress``: ``pgzip.NewWriterLevel(w, level)`` without
  ``SetConcurrency``: 1 MiB blocks, level -1 (klauspost's default, the same as 5) unless
  ``--dest-compress-level`` says otherwise;
* umoci (``repack``, ``insert``, ``raw add-layer``): ``pgzip.NewWriter`` with
  ``SetConcurrency(256 KiB, ...)``: level -1, 256 KiB blocks.

pgzip cuts the input into blocks of exactly ``block_size`` bytes; each is compressed by a fresh
flate writer primed with the last 16 KiB of the previous block and ends with a sync flush; the
remainder (possibly empty) is also closed. The output does not depend on pgzip's block count.

``block_size`` 0 means no pgzip: one flate stream, as ``github.com/klauspost/compress/gzip``
writes it (its ``StatelessCompression``, level -3, depends on the caller's write sizes and is not
covered).

Headers: pgzip and klauspost's gzip write OS 255, XFL 2 at level 9, 4 at level 1, 0 otherwise,
and MTIME ``uint32(ModTime.Unix())``, which for the zero ``time.Time`` nobody sets is 0x886E0900
(Go's standard library writes 0 there instead): a header with that MTIME comes from klauspost.
"""

from __future__ import annotations

from collections.abc import Mapping

from chunkstore.native import _kpflate
from chunkstore.reproduce.gzipfmt import OS_UNKNOWN, parse_gzip_header
from chunkstore.reproduce.model import Candidate, Encoder, ParamValue

__all__ = [
    "CONTAINERS_IMAGE_BLOCK",
    "KLAUSPOST_MTIME",
    "UMOCI_BLOCK",
    "VERSION",
    "KlauspostFamily",
]

#: The klauspost/compress generation this encoder reproduces (recorded in ``params["version"]``).
VERSION = "1.15.12"
#: Versions whose output :mod:`chunkstore.native._kpflate` is known to reproduce.
_VERSIONS = frozenset({VERSION})

#: MTIME of a klauspost (pgzip or gzip) header when the writer's ModTime was never set.
KLAUSPOST_MTIME = 0x886E0900
#: pgzip's default block size: containers/image (skopeo, podman, buildah).
CONTAINERS_IMAGE_BLOCK = 1 << 20
#: umoci's block size.
UMOCI_BLOCK = 256 << 10

_MIN_BLOCK = _kpflate.PGZIP_TAIL + 1
_MAX_BLOCK = 1 << 30

#: Header flags either writer may set (FEXTRA, FNAME, FCOMMENT); never FTEXT or FHCRC.
_ALLOWED_FLAGS = 0x04 | 0x08 | 0x10

#: Levels each XFL allows, likeliest first (-1, the default, stands for 5 too: same output).
_LEVELS_BY_XFL: dict[int, tuple[int, ...]] = {
    2: (9,),
    4: (1,),
    0: (-1, 6, 7, 8, 4, 3, 2, 0, -2),
}

#: Levels tried for a single klauspost flate stream (klauspost's gzip), from the XFL list's head.
_SINGLE_STREAM_LEVELS = 3


class _Native:
    """A :mod:`chunkstore.native._kpflate` encoder behind the :class:`Encoder` protocol."""

    __slots__ = ("_enc",)

    def __init__(self, enc: _kpflate.PgzipDeflater | _kpflate.Deflater) -> None:
        self._enc = enc

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._enc.compress(data)

    def finish(self) -> bytes:
        return self._enc.finish()


def _params(level: int, block_size: int) -> dict[str, ParamValue]:
    return {"level": level, "block_size": block_size, "version": VERSION}


class KlauspostFamily:
    """pgzip 1.2.5 over klauspost/compress 1.15.12 flate, or that flate alone."""

    name = "klauspost-pgzip"

    def candidates(self, header: bytes) -> list[Candidate]:
        """Settings for an OS-255 header, likeliest first.

        With klauspost's zero-time MTIME: containers/image's default (1 MiB blocks), umoci's
        (256 KiB), the other levels XFL allows at 1 MiB, then a single stream (klauspost's gzip)
        at the likeliest levels. With any other MTIME (set by the caller) the single stream comes
        first, then the two tools' defaults.
        """
        parsed = parse_gzip_header(header)
        if parsed is None or parsed.os != OS_UNKNOWN or parsed.flags & ~_ALLOWED_FLAGS:
            return []
        levels = _LEVELS_BY_XFL.get(parsed.xfl, ())
        if not levels:
            return []
        first = levels[0]
        pgzip = [_params(first, CONTAINERS_IMAGE_BLOCK), _params(first, UMOCI_BLOCK)]
        pgzip += [_params(lv, CONTAINERS_IMAGE_BLOCK) for lv in levels[1:]]
        single = [_params(lv, 0) for lv in levels[:_SINGLE_STREAM_LEVELS]]
        if parsed.mtime == KLAUSPOST_MTIME:
            settings = pgzip + single
        else:
            settings = single + pgzip[:2]
        return [self._candidate(p) for p in settings]

    def _candidate(self, params: dict[str, ParamValue]) -> Candidate:
        def opener() -> Encoder:
            # One thread while probing: it codes as the input comes, each 64 KiB window's bytes
            # final at once, so a wrong candidate drops out early and holds no block buffer.
            return self._open(params, threads=1)

        def fast() -> Encoder:
            return self._open(params, threads=0)

        threaded = params["block_size"] != 0
        return Candidate(self.name, params, opener, fast if threaded else None)

    def open(self, params: Mapping[str, ParamValue]) -> Encoder:
        """An encoder for ``{"level": -2..9, "block_size": 0 | 16385.., "version": "1.15.12"}``.

        ``ValueError`` for unknown keys, values out of range or a version this build does not
        reproduce.
        """
        return self._open(params, threads=0)

    @staticmethod
    def _open(params: Mapping[str, ParamValue], *, threads: int) -> Encoder:
        unknown = set(params) - {"level", "block_size", "version"}
        if unknown:
            raise ValueError(f"unknown klauspost-pgzip settings: {sorted(unknown)}")
        version = params["version"]
        if version not in _VERSIONS:
            raise ValueError(f"klauspost/compress version {version!r} is not reproduced")
        level, block = params["level"], params["block_size"]
        if type(level) is not int or not -2 <= level <= 9:
            raise ValueError(f"level must be an integer in -2..9, not {level!r}")
        if type(block) is not int or not (block == 0 or _MIN_BLOCK <= block <= _MAX_BLOCK):
            raise ValueError(
                f"block_size must be 0 (one stream) or {_MIN_BLOCK}..{_MAX_BLOCK}, not {block!r}"
            )
        if block == 0:
            return _Native(_kpflate.Deflater(level))
        return _Native(_kpflate.PgzipDeflater(level, block, threads))
