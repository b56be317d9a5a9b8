"""One tar header block and one PAX extended header, decoded as Go's ``archive/tar`` decodes them.

docker and containerd read layers with Go's ``archive/tar``, so the fields of a header are what
that reader makes of them (the merged view of an image must be what a container sees):

* numbers are GNU base-256 (first byte with the high bit set; refused outside the int64 range) or
  octal, leading and trailing NULs and spaces ignored; an empty or all-NUL field is 0;
* the format decides which fields count: ``ustar\\0`` (ustar/PAX: user and group names, device
  numbers, a 155-byte name prefix), ``ustar\\0`` with the ``tar\\0`` trailer (star: a 131-byte
  prefix, access and change times that must parse), ``ustar  \\0`` (GNU: no prefix, unless its time
  fields do not parse and the prefix area is ASCII, Go's fallback for its own pre-1.8 archives),
  anything else (V7: names, mode, ids, size, mtime and link name only);
* PAX records are ``"%d %s=%s\\n"``, parsed in linear time; a key is non-empty, and a key, a
  ``path``, ``linkpath``, ``uname`` or ``gname`` value holds no NUL (Go refuses such records).

:func:`gnu_size` reads a size field as GNU tar does, so the reader can refuse an archive whose
member boundaries the two tar implementations would put in different places.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from chunkstore.errors import UsageError

__all__ = [
    "HeaderFormat",
    "RawHeader",
    "TarError",
    "checksum_ok",
    "cstr",
    "decode_header",
    "gnu_size",
    "header_format",
    "parse_number",
    "parse_pax",
    "pax_int",
    "pax_time_ns",
    "same_for_gnu",
]

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_MAX_DIGITS = 30
_HIGH_BYTES = bytes(range(128, 256))
_OCTAL = b"01234567"
_SPACES = b" \t\n\v\f\r"
#: PAX keys whose values Go refuses to hold a NUL.
_NUL_FREE_VALUES = frozenset({b"path", b"linkpath", b"uname", b"gname"})


class TarError(UsageError):
    """The layer is not a well-formed tar archive (or exceeds a limit)."""


class HeaderFormat(Enum):
    """The header layouts Go's reader tells apart (by magic, version and trailer)."""

    V7 = "v7"
    USTAR = "ustar"  # also PAX
    STAR = "star"
    GNU = "gnu"


def cstr(data: bytes) -> bytes:
    """The bytes before the first NUL."""
    return data.partition(b"\x00")[0]


def parse_number(field: bytes, what: str) -> int:
    """A numeric header field as Go reads it (see the module docstring)."""
    if field and field[0] & 0x80:
        # GNU base-256: big-endian two's complement with the high bit as a marker.
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        if field[0] & 0x40:
            value -= 1 << (len(field) * 8 - 1)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise TarError(f"tar header field {what} does not fit in 64 bits")
        return value
    text = field.strip(b" \x00").partition(b"\x00")[0]
    if not text:
        return 0
    if text.translate(None, _OCTAL):
        raise TarError(f"tar header field {what} is not octal: {text[:24]!r}")
    value = int(text, 8)
    if value > _INT64_MAX:
        raise TarError(f"tar header field {what} does not fit in 64 bits")
    return value


def same_for_gnu(field: bytes) -> bool:
    """Whether a size field is in the form every tar writes (11 octal digits and a NUL or a
    space), which GNU tar and Go read alike without looking further."""
    return field[11] in (0, 0x20) and not field[:11].translate(None, _OCTAL)


def gnu_size(field: bytes) -> int | None:
    """A size field as GNU tar reads it (``from_header``), or None where GNU tar reports an error.

    GNU tar skips one leading NUL, then spaces; it stops at the first byte that is not an octal
    digit (which must be a NUL or a space), and knows base-256 only as a 0x80 or 0xff first byte.
    """
    pos = 1 if field[:1] == b"\x00" else 0
    while pos < len(field) and field[pos] in _SPACES:
        pos += 1
    if pos == len(field):
        return None  # "Blanks in header where numeric value expected"
    if field[pos] in (0x80, 0xFF):
        if pos > len(field) - 2:
            return None
        value = int.from_bytes(field[pos + 1 :], "big")
        return value if field[pos] == 0x80 else None  # a negative size is an error to both
    end = pos
    while end < len(field) and field[end] in _OCTAL:
        end += 1
    if end < len(field) and field[end] != 0 and field[end] not in _SPACES:
        return None
    return int(field[pos:end], 8) if end > pos else 0


def checksum_ok(block: bytes) -> bool:
    """Whether the stored checksum matches the unsigned or the (old, signed) byte sum."""
    field = block[148:156]
    if field[0] & 0x80:
        return False  # Go reads the checksum as octal only
    try:
        want = parse_number(field, "chksum")
    except TarError:
        return False
    unsigned = sum(block) - sum(field) + 0x20 * 8  # the checksum field counts as spaces
    if want == unsigned:
        return True
    high = len(block) - len(block.translate(None, _HIGH_BYTES))
    high -= len(field) - len(field.translate(None, _HIGH_BYTES))
    return want == unsigned - 256 * high


def header_format(block: bytes) -> HeaderFormat:
    """The layout of a header block whose checksum is valid."""
    magic, version = block[257:263], block[263:265]
    if magic == b"ustar\x00":
        return HeaderFormat.STAR if block[508:512] == b"tar\x00" else HeaderFormat.USTAR
    if magic == b"ustar " and version == b" \x00":
        return HeaderFormat.GNU
    return HeaderFormat.V7


@dataclass(frozen=True, slots=True)
class RawHeader:
    """The fields of one header block, before extended headers are applied."""

    typeflag: bytes
    format: HeaderFormat
    name: bytes
    linkname: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    uname: bytes = b""
    gname: bytes = b""
    devmajor: int = 0
    devminor: int = 0


def _parses(field: bytes) -> bool:
    try:
        parse_number(field, "time")
    except TarError:
        return False
    return True


def decode_header(block: bytes) -> RawHeader:
    """Decode a header block (checksum already verified) as Go's ``readHeader`` does."""
    fmt = header_format(block)
    name = cstr(block[0:100])
    uname = gname = b""
    devmajor = devminor = 0
    if fmt is not HeaderFormat.V7:
        uname, gname = cstr(block[265:297]), cstr(block[297:329])
        devmajor = parse_number(block[329:337], "devmajor")
        devminor = parse_number(block[337:345], "devminor")
        prefix = _prefix(block, fmt)
        if prefix:
            name = prefix + b"/" + name
    return RawHeader(
        typeflag=block[156:157],
        format=fmt,
        name=name,
        linkname=cstr(block[157:257]),
        mode=parse_number(block[100:108], "mode"),
        uid=parse_number(block[108:116], "uid"),
        gid=parse_number(block[116:124], "gid"),
        size=parse_number(block[124:136], "size"),
        mtime=parse_number(block[136:148], "mtime"),
        uname=uname,
        gname=gname,
        devmajor=devmajor,
        devminor=devminor,
    )


def _prefix(block: bytes, fmt: HeaderFormat) -> bytes:
    if fmt is HeaderFormat.USTAR:
        return cstr(block[345:500])
    if fmt is HeaderFormat.STAR:
        parse_number(block[476:488], "atime")
        parse_number(block[488:500], "ctime")
        return cstr(block[345:476])
    # GNU: no prefix field; Go reads the area as one when the time fields there do not parse.
    atime_ok = block[345] == 0 or _parses(block[345:357])
    ctime_ok = block[357] == 0 or _parses(block[357:369])
    if atime_ok and ctime_ok:
        return b""
    candidate = cstr(block[345:500])
    return candidate if candidate.isascii() else b""


def parse_pax(data: bytes, max_records: int) -> list[tuple[bytes, bytes]]:
    """Parse PAX records ``"%d %s=%s\\n"`` in linear time, in order (later duplicates win).

    NUL padding after the last record is accepted (GNU tar does; Go does not).
    """
    records: list[tuple[bytes, bytes]] = []
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos] == 0:
            if data[pos:].strip(b"\x00"):
                raise TarError("PAX header has data after NUL padding")
            break
        space = data.find(b" ", pos, min(n, pos + 21))
        if space <= pos:
            raise TarError("PAX record has no length")
        length_text = data[pos:space]
        if not length_text.isdigit():
            raise TarError("PAX record length is not decimal")
        length = int(length_text)
        end = pos + length
        if length < 5 or end > n or end <= space + 1 or data[end - 1] != 0x0A:
            raise TarError("PAX record length is inconsistent")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise TarError("PAX record has no key")
        if b"\x00" in key or (key in _NUL_FREE_VALUES and b"\x00" in value):
            raise TarError(f"PAX record {key[:40]!r} holds a NUL byte")
        records.append((key, value))
        if len(records) > max_records:
            raise TarError(f"more than {max_records} PAX records")
        pos = end
    return records


def pax_int(value: bytes, key: bytes) -> int:
    """A decimal PAX number (sizes, ids)."""
    if not value.isdigit() or len(value) > _MAX_DIGITS:
        raise TarError(f"PAX {key.decode('ascii', 'replace')} is not a decimal integer")
    return int(value)


def pax_time_ns(value: bytes) -> int:
    """A PAX time (``[-]seconds[.fraction]``) in nanoseconds."""
    sign = -1 if value.startswith(b"-") else 1
    body = value[1:] if sign < 0 else value
    whole, _, frac = body.partition(b".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(whole) > _MAX_DIGITS:
        raise TarError("PAX mtime is not a decimal number")
    ns = int(whole) * 1_000_000_000 + int((frac + b"000000000")[:9] or b"0")
    return sign * ns
