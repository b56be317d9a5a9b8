"""klauspost's zstd (github.com/klauspost/compress/zstd), as containers/image drives it.

skopeo, podman and buildah write ``--dest-compress-format zstd`` layers with
``zstd.NewWriter(w)`` (or ``zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level))`` when a
level is given) and copy the layer into it with ``io.Copy`` from the reader that peeked at the
first 8 bytes to detect compression: those 8 bytes are written first, and ``ReadFrom`` then flushes
them as a block of their own before cutting the rest into 128 KiB blocks. The encoder is native
(:mod:`chunkstore.native._kpzstd`), written from how the Go package works, and exact for
klauspost/compress **1.15.12** (Debian bookworm's skopeo 1.9.3) at ``SpeedDefault`` (no
``--dest-compress-level``, or levels 3..5: 128 KiB blocks, 8 MiB window) and ``SpeedFastest``
(levels below 3: 64 KiB blocks, 4 MiB window, blocks of only literals stored raw). Levels 6 and up
(``SpeedBetterCompression``, ``SpeedBestCompression``) are not reproduced. The output does not
depend on the writer's concurrency.

Header: the frame has the checksum flag, no content size and no dictionary (FHD 0x04), the
level's window descriptor (0x68 default, 0x60 fastest; 0x70 and 0x78 are the levels not done),
and its first block is a raw block of the 1..8 peeked bytes that is not the last one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from chunkstore.native import _kpzstd
from chunkstore.reproduce.model import Candidate, Encoder, ParamValue

__all__ = ["CONTAINERS_IMAGE_PREFIX", "VERSION", "KlauspostZstdFamily"]

#: The klauspost/compress generation this encoder reproduces (recorded in ``params["version"]``).
VERSION = "1.15.12"
#: Bytes containers/image writes before ``ReadFrom`` (its compression-detection peek).
CONTAINERS_IMAGE_PREFIX = 8

_MAGIC = b"\x28\xb5\x2f\xfd"
#: Frame header descriptor: checksum flag only (no single segment, content size or dictionary).
_FHD = 0x04
#: klauspost's EncoderLevel numbers by the name recorded in params, with their window descriptor.
_LEVELS = {"default": (_kpzstd.LEVEL_DEFAULT, 0x68), "fastest": (_kpzstd.LEVEL_FASTEST, 0x60)}


class KlauspostZstdFamily:
    """klauspost compress/zstd 1.15.12 streaming frames as containers/image writes them."""

    name = "klauspost-zstd"

    def candidates(self, header: bytes) -> list[Candidate]:
        """The level the window descriptor names, unless the frame header or first block rule
        klauspost out."""
        if len(header) < 6 or header[:4] != _MAGIC or header[4] != _FHD:
            return []
        out = []
        for level, (_, window) in _LEVELS.items():
            if header[5] != window:
                continue
            if len(header) >= 9:
                block = int.from_bytes(header[6:9], "little")
                # raw (type 0), not last, holding the 1..8 bytes written before ReadFrom
                if block & 7 != 0 or not 1 <= block >> 3 <= CONTAINERS_IMAGE_PREFIX:
                    continue
            params: dict[str, ParamValue] = {
                "version": VERSION,
                "level": level,
                "prefix": CONTAINERS_IMAGE_PREFIX,
            }
            out.append(Candidate(self.name, params, functools.partial(self.open, params)))
        return out

    def open(self, params: Mapping[str, ParamValue]) -> Encoder:
        """An encoder for recorded params; ``ValueError`` if this version cannot make it."""
        version, level, prefix = params.get("version"), params.get("level"), params.get("prefix")
        if version != VERSION:
            raise ValueError(f"klauspost zstd version {version!r} is not reproducible here")
        if not isinstance(level, str) or level not in _LEVELS:
            raise ValueError(f"klauspost zstd level {level!r} is not reproducible here")
        if type(prefix) is not int or not 1 <= prefix <= 64 * 1024:
            raise ValueError(f"klauspost zstd prefix {prefix!r} must be an int in 1..65536")
        return _kpzstd.Encoder(_LEVELS[level][0], prefix)
