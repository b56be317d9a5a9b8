"""A bounded, streaming tar reader that keeps every byte, for bit-exact layer recipes.

A layer tar is read as a sequence of events:

* :class:`Raw`: bytes that are not regular-file content: header blocks (ustar, GNU, PAX extended
  and global headers with their data, GNU long names and links, old GNU sparse extension blocks),
  the padding after content, the end-of-archive blocks and any trailing bytes after them;
* :class:`Member`: one archive member, parsed, with ``content``, a reader over its data bytes
  (regular files, contiguous files and GNU sparse files) that must be consumed before the next
  event (an unconsumed reader raises :class:`TarError`: nothing is ever skipped silently).

Concatenating every ``Raw`` and every member's content in order gives back the input exactly.

The parser trusts nothing: every header's checksum is verified, numeric fields must be octal or
GNU base-256, PAX data and GNU long names are capped before they are read (see :class:`Limits`),
PAX records are parsed in linear time and a PAX ``size`` overrides the ustar size exactly as GNU tar
does (no smuggled entries). A stream that ends inside a member or before its end-of-archive blocks
raises :class:`TarError`. Names are bytes: nothing here decodes, normalises or resolves paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from chunkstore.errors import UsageError

__all__ = [
    "BLOCK",
    "CONTENT_TYPES",
    "HEADER_ONLY_TYPES",
    "ZERO_SIZE_TYPES",
    "Limits",
    "Member",
    "Raw",
    "TarEntry",
    "TarError",
    "TarReader",
]

BLOCK = 512
#: Member types whose data is file content (chunked); all other data is kept raw.
CONTENT_TYPES = frozenset({b"0", b"\x00", b"7", b"S"})
#: Types that carry no data, whatever their size field says (GNU tar and Go agree on these).
HEADER_ONLY_TYPES = frozenset({b"1", b"5"})
#: Types that must have size 0: GNU tar skips data after them, Go does not, so a non-zero size
#: could hide a member from one of them. Such archives are refused.
ZERO_SIZE_TYPES = frozenset({b"2", b"3", b"4", b"6"})
#: The global PAX keys that apply to members (others are kept verbatim but have no effect).
_GLOBAL_KEYS = frozenset(
    {b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime", b"uname", b"gname"}
)
_MAX_DIGITS = 30
_HIGH_BYTES = bytes(range(128, 256))
_META_TYPES = frozenset({b"x", b"g", b"L", b"K", b"X"})


class TarError(UsageError):
    """The layer is not a well-formed tar archive (or exceeds a limit)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps applied before anything is allocated."""

    max_pax_size: int = 1 << 20
    max_pax_records: int = 10_000
    max_long_name: int = 64 * 1024
    max_sparse_blocks: int = 100_000
    max_members: int = 10_000_000
    #: Extension headers (PAX, GNU long names) before one member, in total.
    max_extension_total: int = 4 << 20


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One member, with PAX and GNU extensions applied."""

    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: bytes = b""
    uname: bytes = b""
    gname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    #: Logical size and (offset, length) data segments of a sparse file, else None.
    sparse: tuple[int, tuple[tuple[int, int], ...]] | None = None
    pax: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False)

    @property
    def data_size(self) -> int:
        """Bytes of data that follow the header in the archive."""
        return 0 if self.type in HEADER_ONLY_TYPES else self.size

    @property
    def is_content(self) -> bool:
        """Whether the data is file content (chunked and deduplicated)."""
        return self.type in CONTENT_TYPES


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes kept verbatim in the recipe."""

    data: bytes


@dataclass(slots=True)
class Member:
    """A member and a reader over its content (None when it has no content data)."""

    entry: TarEntry
    content: _ContentReader | None


class _ContentReader:
    """Reads exactly ``size`` bytes of member data from the underlying stream."""

    def __init__(self, reader: TarReader, size: int) -> None:
        self._reader = reader
        self.remaining = size

    def read(self, n: int = -1) -> bytes:
        if self.remaining <= 0 or n == 0:
            return b""
        if n < 0 or n > self.remaining:
            n = self.remaining
        data = self._reader._read_some(n)
        self.remaining -= len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        view = memoryview(buf)
        n = min(len(view), self.remaining)
        if n <= 0:
            return 0
        got = self._reader._readinto(view[:n])
        self.remaining -= got
        return got


def _parse_number(field_: bytes, what: str) -> int:
    if field_ and field_[0] & 0x80:
        # GNU base-256: big-endian two's complement with the high bit as a marker.
        value = int.from_bytes(bytes([field_[0] & 0x7F]) + field_[1:], "big")
        if field_[0] & 0x40:
            value -= 1 << (len(field_) * 8 - 1)
        return value
    text = field_.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    if text.translate(None, b"01234567"):
        raise TarError(f"tar header field {what} is not octal: {text[:24]!r}")
    return int(text, 8)


def _checksum_ok(block: bytes) -> bool:
    stored = block[148:156]
    try:
        want = _parse_number(stored, "chksum")
    except TarError:
        return False
    blanked = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(blanked)
    if want == unsigned:
        return True
    # Some old tars summed signed bytes: the same sum minus 256 per byte above 127.
    high = len(blanked) - len(blanked.translate(None, _HIGH_BYTES))
    return want == unsigned - 256 * high


def _cstr(data: bytes) -> bytes:
    return data.split(b"\x00", 1)[0]


def parse_pax(data: bytes, limits: Limits) -> list[tuple[bytes, bytes]]:
    """Parse PAX records ``"%d %s=%s\\n"`` in linear time; later duplicates win when applied."""
    records: list[tuple[bytes, bytes]] = []
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos] == 0:  # some writers pad PAX data with NULs
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
        if length < 5 or end > n or data[end - 1] != 0x0A:
            raise TarError("PAX record length is inconsistent")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise TarError("PAX record has no key")
        records.append((key, value))
        if len(records) > limits.max_pax_records:
            raise TarError(f"more than {limits.max_pax_records} PAX records")
        pos = end
    return records


def _pax_int(value: bytes, key: bytes) -> int:
    if not value.isdigit() or len(value) > _MAX_DIGITS:
        raise TarError(f"PAX {key.decode('ascii', 'replace')} is not a decimal integer")
    return int(value)


def _pax_time_ns(value: bytes) -> int:
    sign = -1 if value.startswith(b"-") else 1
    body = value[1:] if sign < 0 else value
    whole, _, frac = body.partition(b".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(whole) > _MAX_DIGITS:
        raise TarError("PAX mtime is not a decimal number")
    ns = int(whole) * 1_000_000_000 + int((frac + b"000000000")[:9] or b"0")
    return sign * ns


class TarReader:
    """Iterate a tar stream as :class:`Raw` and :class:`Member` events."""

    def __init__(self, stream: BinaryIO, limits: Limits | None = None) -> None:
        """Read from ``stream`` (any object with ``read``)."""
        self._stream = stream
        self._limits = limits or Limits()
        self.offset = 0

    # -- low-level reads ---------------------------------------------------------------
    def _read_some(self, n: int) -> bytes:
        data = self._stream.read(n)
        if not data:
            raise TarError(f"tar stream truncated at byte {self.offset} (inside a member)")
        self.offset += len(data)
        return bytes(data)

    def _readinto(self, view: memoryview) -> int:
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            got = readinto(view)
            if not got:
                raise TarError(f"tar stream truncated at byte {self.offset} (inside a member)")
        else:
            data = self._read_some(len(view))
            got = len(data)
            view[:got] = data
            self.offset -= got
        self.offset += got
        return int(got)

    def _read_exact(self, n: int, what: str) -> bytes:
        parts = []
        left = n
        while left:
            data = self._stream.read(min(left, 1 << 20))
            if not data:
                raise TarError(f"tar stream truncated at byte {self.offset} ({what})")
            parts.append(bytes(data))
            left -= len(data)
            self.offset += len(data)
        return b"".join(parts)

    def _read_block_or_eof(self) -> bytes:
        data = self._stream.read(BLOCK)
        if not data:
            return b""
        data = bytes(data)
        while len(data) < BLOCK:
            more = self._stream.read(BLOCK - len(data))
            if not more:
                raise TarError(f"tar stream truncated at byte {self.offset + len(data)}")
            data += bytes(more)
        self.offset += BLOCK
        return data

    def _padded(self, size: int) -> int:
        return -size % BLOCK

    # -- iteration ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[Raw | Member]:
        """Yield events until the end of the stream (see the module docstring)."""
        limits = self._limits
        raw = bytearray()
        pax: dict[bytes, bytes] = {}
        pax_list: list[tuple[bytes, bytes]] = []
        global_pax: dict[bytes, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        members = 0
        extension_bytes = 0
        while True:
            block = self._read_block_or_eof()
            if not block:
                raise TarError(
                    f"tar stream ends at byte {self.offset} without end-of-archive blocks"
                )
            if block == bytes(BLOCK):
                # End of archive: a second zero block must follow; everything after is trailer.
                raw += block
                second = self._read_block_or_eof()
                if second != bytes(BLOCK):
                    raise TarError(f"tar stream has a lone zero block at byte {self.offset}")
                raw += second
                while True:
                    rest = self._stream.read(1 << 20)
                    if not rest:
                        break
                    self.offset += len(rest)
                    raw += rest
                    if len(raw) >= 1 << 20:
                        yield Raw(bytes(raw))
                        raw.clear()
                if raw:
                    yield Raw(bytes(raw))
                return
            if not _checksum_ok(block):
                raise TarError(f"tar header at byte {self.offset - BLOCK} has a bad checksum")
            raw += block
            typeflag = block[156:157]
            size = _parse_number(block[124:136], "size")
            if size < 0:
                raise TarError(f"negative size in tar header at byte {self.offset - BLOCK}")
            if typeflag in _META_TYPES:
                cap = limits.max_long_name if typeflag in (b"L", b"K") else limits.max_pax_size
                if size > cap:
                    raise TarError(
                        f"tar {typeflag.decode()!r} header of {size} bytes exceeds the {cap}-byte cap"
                    )
                extension_bytes += size
                if extension_bytes > limits.max_extension_total:
                    raise TarError(
                        f"more than {limits.max_extension_total} bytes of extension headers "
                        f"before one member (at byte {self.offset})"
                    )
                data = self._read_exact(size, "extended header")
                raw += data
                raw += self._read_exact(self._padded(size), "padding")
                if typeflag in (b"x", b"X"):
                    records = parse_pax(data, limits)
                    pax_list.extend(records)
                    pax.update(records)
                elif typeflag == b"g":
                    global_pax.update(
                        (k, v) for k, v in parse_pax(data, limits) if k in _GLOBAL_KEYS
                    )
                elif typeflag == b"L":
                    long_name = _cstr(data)
                else:
                    long_link = _cstr(data)
                continue
            extension_bytes = 0
            members += 1
            if typeflag in ZERO_SIZE_TYPES and size:
                raise TarError(
                    f"tar member at byte {self.offset - BLOCK} of type {typeflag.decode()!r} has "
                    f"size {size}: tar implementations disagree on such archives, refusing it"
                )
            if members > limits.max_members:
                raise TarError(f"more than {limits.max_members} tar members")
            merged = {**global_pax, **pax}
            if typeflag in HEADER_ONLY_TYPES and _pax_int(merged.get(b"size", b"0"), b"size"):
                # GNU tar skips PAX-sized data after a hard link or directory; Go and Python's
                # tarfile do not: the next block would be a member for one and data for the
                # other (an entry smuggled past one parser). Refused, like ZERO_SIZE_TYPES.
                raise TarError(
                    f"tar member at byte {self.offset - BLOCK} of type {typeflag.decode()!r} has "
                    "a PAX size: tar implementations disagree on such archives, refusing it"
                )
            sparse = None
            if typeflag == b"S":
                sparse, ext = self._old_gnu_sparse(block)
                raw += ext
            entry = self._entry(
                block, typeflag, size, merged, long_name, long_link, sparse, tuple(pax_list)
            )
            pax, pax_list, long_name, long_link = {}, [], None, None
            if raw:
                yield Raw(bytes(raw))
                raw.clear()
            data_size = entry.data_size
            if entry.is_content:
                reader = _ContentReader(self, data_size)
                yield Member(entry, reader)
                if reader.remaining:
                    raise TarError(
                        "member content was not consumed before the next event (caller bug)"
                    )
            else:
                yield Member(entry, None)
                left = data_size
                while left:  # data of other types is kept raw, read in bounded pieces
                    piece = self._read_exact(min(left, 1 << 20), "member data")
                    left -= len(piece)
                    raw += piece
                    if len(raw) >= 1 << 20:
                        yield Raw(bytes(raw))
                        raw.clear()
            raw += self._read_exact(self._padded(data_size), "padding")

    def _old_gnu_sparse(
        self, block: bytes
    ) -> tuple[tuple[int, tuple[tuple[int, int], ...]], bytes]:
        segments: list[tuple[int, int]] = []

        def take(area: bytes, count: int) -> None:
            for i in range(count):
                off = _parse_number(area[i * 24 : i * 24 + 12], "sparse offset")
                length = _parse_number(area[i * 24 + 12 : i * 24 + 24], "sparse length")
                if off or length:
                    segments.append((off, length))

        take(block[386 : 386 + 4 * 24], 4)
        is_extended = block[482]
        realsize = _parse_number(block[483:495], "realsize")
        ext = bytearray()
        blocks = 0
        while is_extended:
            blocks += 1
            if blocks > self._limits.max_sparse_blocks:
                raise TarError("too many GNU sparse extension blocks")
            eb = self._read_exact(BLOCK, "sparse extension block")
            ext += eb
            take(eb[: 21 * 24], 21)
            is_extended = eb[504]
        return (realsize, tuple(segments)), bytes(ext)

    def _entry(
        self,
        block: bytes,
        typeflag: bytes,
        size: int,
        pax: dict[bytes, bytes],
        long_name: bytes | None,
        long_link: bytes | None,
        sparse: tuple[int, tuple[tuple[int, int], ...]] | None,
        pax_records: tuple[tuple[bytes, bytes], ...],
    ) -> TarEntry:
        name = _cstr(block[0:100])
        if block[257:263] == b"ustar\x00":
            prefix = _cstr(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        if long_name is not None:
            name = long_name
        linkname = long_link if long_link is not None else _cstr(block[157:257])
        mode = _parse_number(block[100:108], "mode")
        uid = _parse_number(block[108:116], "uid")
        gid = _parse_number(block[116:124], "gid")
        mtime_ns = _parse_number(block[136:148], "mtime") * 1_000_000_000
        uname, gname = _cstr(block[265:297]), _cstr(block[297:329])
        devmajor = devminor = 0
        if block[257:262] == b"ustar":
            devmajor = _parse_number(block[329:337], "devmajor")
            devminor = _parse_number(block[337:345], "devminor")
        xattrs: list[tuple[bytes, bytes]] = []
        for key, value in pax.items():
            if key == b"path":
                name = value
            elif key == b"linkpath":
                linkname = value
            elif key == b"size":
                size = _pax_int(value, key)
            elif key == b"uid":
                uid = _pax_int(value, key)
            elif key == b"gid":
                gid = _pax_int(value, key)
            elif key == b"mtime":
                mtime_ns = _pax_time_ns(value)
            elif key == b"uname":
                uname = value
            elif key == b"gname":
                gname = value
            elif key.startswith(b"SCHILY.xattr."):
                xattrs.append((key[len(b"SCHILY.xattr.") :], value))
        if b"GNU.sparse.realsize" in pax or b"GNU.sparse.size" in pax:
            real = pax.get(b"GNU.sparse.realsize", pax.get(b"GNU.sparse.size", b"0"))
            sparse = (_pax_int(real, b"GNU.sparse.realsize"), ())
            if b"GNU.sparse.name" in pax:
                name = pax[b"GNU.sparse.name"]
        return TarEntry(
            name=name,
            type=typeflag,
            mode=mode,
            uid=uid,
            gid=gid,
            size=size,
            mtime_ns=mtime_ns,
            linkname=linkname,
            uname=uname,
            gname=gname,
            devmajor=devmajor,
            devminor=devminor,
            xattrs=tuple(sorted(xattrs)),
            sparse=sparse,
            pax=pax_records,
        )
