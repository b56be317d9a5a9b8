"""gzip members (RFC 1952): parsing the header a producer wrote, and writing the trailer."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from isal import isal_zlib

__all__ = ["GzipHeader", "gzip_trailer", "parse_gzip_header"]

#: OS byte values producers write: 0 FAT (Java), 3 Unix (GNU gzip, pigz, zlib's gzwrite, Node),
#: 255 unknown (Go, klauspost, Python's gzip module).
OS_FAT = 0
OS_UNIX = 3
OS_UNKNOWN = 255


@dataclass(frozen=True, slots=True)
class GzipHeader:
    """The fields of a gzip member header."""

    mtime: int
    xfl: int
    os: int
    flags: int
    fname: bytes | None
    fcomment: bytes | None
    fextra: bytes | None
    header_crc: bool
    length: int
    raw: bytes

    @property
    def level_hint(self) -> int:
        """The level XFL suggests (zlib's convention): 2 means 9, 4 means 1, anything else 6."""
        return {2: 9, 4: 1}.get(self.xfl, 6)


def parse_gzip_header(head: bytes) -> GzipHeader | None:
    """Parse the gzip member header at the start of ``head``; None if absent or incomplete."""
    b = head
    if len(b) < 10 or b[:3] != b"\x1f\x8b\x08":
        return None
    flags = b[3]
    if flags & 0xE0:
        return None
    (mtime,) = struct.unpack_from("<I", b, 4)
    pos = 10
    fextra = fname = fcomment = None
    if flags & 0x04:
        if len(b) < pos + 2:
            return None
        (xlen,) = struct.unpack_from("<H", b, pos)
        if len(b) < pos + 2 + xlen:
            return None
        fextra = bytes(b[pos + 2 : pos + 2 + xlen])
        pos += 2 + xlen
    for bit in (0x08, 0x10):
        if flags & bit:
            end = b.find(b"\x00", pos)
            if end < 0:
                return None
            if bit == 0x08:
                fname = bytes(b[pos:end])
            else:
                fcomment = bytes(b[pos:end])
            pos = end + 1
    if flags & 0x02:
        if len(b) < pos + 2:
            return None
        pos += 2
    return GzipHeader(
        mtime=mtime,
        xfl=b[8],
        os=b[9],
        flags=flags,
        fname=fname,
        fcomment=fcomment,
        fextra=fextra,
        header_crc=bool(flags & 0x02),
        length=pos,
        raw=bytes(b[:pos]),
    )


def gzip_trailer(crc: int, size: int) -> bytes:
    """The 8-byte member trailer: CRC-32 and size modulo 2**32 of the uncompressed data."""
    return struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


def crc32(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC-32 as gzip uses it (ISA-L's, several times faster than zlib's; both release the GIL)."""
    return isal_zlib.crc32(data, crc)
