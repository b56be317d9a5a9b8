"""Go's standard library ``compress/gzip`` over ``compress/flate``: BuildKit (docker build,
buildx), docker's legacy builder and ``docker save``, go-containerregistry (crane, ko, kaniko).

The encoder is :mod:`chunkstore.native._goflate`, a C re-implementation of Go's flate encoder of
the go1.7 to go1.26 generation (Go 1.27 changed the encoded output, golang/go#75532), verified byte
for byte against Go 1.19's. Its output is what Go writes when the layer is written and the writer
closed in one go (or in Writes that keep its window full, such as io.Copy's 32 KiB ones), and it
does not depend on how our caller cuts the input. Go's own output almost never depends on its Write
sizes either. The exception: when a Write ends just so, Go slides its window one position early, and
a match at that one position reaching back more than 32506 bytes is lost; such a layer cannot be
rebuilt. (archive/tar streaming real trees into the writer gave identical output in our checks.)

Go's gzip header: flags 0 unless Name, Comment or Extra were set, MTIME 0 unless ModTime was set,
XFL 2 at BestCompression (9), 4 at BestSpeed (1), else 0, and OS 255 unless the caller changed it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from chunkstore.native._goflate import Deflater
from chunkstore.reproduce.gzipfmt import OS_UNKNOWN, parse_gzip_header
from chunkstore.reproduce.model import Candidate, Encoder, ParamValue

__all__ = ["GoFlateFamily"]

#: The levels XFL=0 allows, most likely first: DefaultCompression (recorded as 6), then the
#: levels a caller is likelier to set, then stored and Huffman-only.
_XFL0_LEVELS = (6, 5, 4, 7, 8, 3, 2, 0, -2)

#: FTEXT and FHCRC: Go's writer sets only FEXTRA, FNAME and FCOMMENT.
_NEVER_FLAGS = 0x01 | 0x02


class GoFlateFamily:
    """Go's ``compress/flate`` behind a Go gzip header (the header is kept verbatim)."""

    name = "go-flate"

    def candidates(self, header: bytes) -> list[Candidate]:
        """The levels Go's header allows: XFL 2 means 9, XFL 4 means 1, XFL 0 any other level.

        ``[]`` for an OS byte other than 255 (Go writes 255 unless the caller overrides it), and
        for an XFL or flags Go never writes (FTEXT, FHCRC).
        """
        parsed = parse_gzip_header(header)
        if parsed is None or parsed.os != OS_UNKNOWN or parsed.flags & _NEVER_FLAGS:
            return []
        levels: tuple[int, ...]
        if parsed.xfl == 2:
            levels = (9,)
        elif parsed.xfl == 4:
            levels = (1,)
        elif parsed.xfl == 0:
            levels = _XFL0_LEVELS
        else:
            return []
        out = []
        for level in levels:
            params: dict[str, ParamValue] = {"level": level}
            out.append(Candidate(self.name, params, functools.partial(self.open, params)))
        return out

    def open(self, params: Mapping[str, ParamValue]) -> Encoder:
        """A Go flate encoder for ``{"level": -2..9}`` (-1 is Go's default, the same as 6)."""
        if set(params) != {"level"}:
            raise ValueError(f"go-flate takes exactly one parameter, level: {dict(params)}")
        level = params["level"]
        if type(level) is not int or not -2 <= level <= 9:
            raise ValueError(f"go-flate level must be an integer in -2..9, not {level!r}")
        return Deflater(level)
