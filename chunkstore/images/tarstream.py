"""A bounded, streaming tar reader that keeps every byte, for bit-exact layer recipes.

A layer tar is read as a sequence of events:

* :class:`Raw`: bytes that are not regular-file content: header blocks (ustar, GNU, PAX extended
  and global headers with their data, GNU long names and links, old GNU sparse extension blocks),
  the data of other members, the padding after data, the end-of-archive blocks and any trailing
  bytes after them;
* :class:`Member`: one archive member, parsed, with ``content``, a reader over its data bytes
  (regular files, contiguous files and GNU sparse files) that must be consumed before the next
  event (an unconsumed reader raises :class:`TarError`: nothing is ever skipped silently). A PAX
  global header is a member too (type ``g``, no content), as Go's ``archive/tar`` returns it.

Concatenating every ``Raw`` and every member's content in order gives back the input exactly.

Members are what Go's ``archive/tar`` (the reader of docker and containerd) makes of the archive
(see :mod:`chunkstore.images.tarfields` for single headers): the last of repeated extended
headers before a member wins (a later PAX ``x`` header replaces an earlier one whole, a later GNU
long name or link replaces an earlier one); an empty PAX value or an empty GNU long name leaves the
header's own field; a GNU long name or link wins over a PAX ``path`` or ``linkpath``; PAX global
records do not apply to the members that follow (a global header discards the extended headers
before it). The archive may end with two zero blocks (anything after them is trailing data), with
one, or right after a member (Go and GNU tar accept all three).

The parser trusts nothing: every header's checksum is verified, extension data are capped before
they are read (see :class:`Limits`), PAX records are parsed in linear time, and an archive on whose
member boundaries GNU tar and Go disagree is refused, so no entry can be smuggled past one of them:
a size field they read differently, a PAX ``size`` in a global header, a PAX ``size`` before a
global header, a Solaris ``X`` header, a size on a symlink, device, FIFO or a directory written as
a regular file with a trailing slash, a PAX size on a hard link or directory. A stream that ends
inside a header, a member or its padding raises :class:`TarError`, as does a zero block followed
by anything but a second one. Names are bytes: nothing here decodes, normalises or resolves paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from chunkstore.images.tarfields import (
    HeaderFormat,
    RawHeader,
    TarError,
    checksum_ok,
    cstr,
    decode_header,
    gnu_size,
    parse_number,
    parse_pax,
    pax_int,
    pax_time_ns,
    same_for_gnu,
)

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
_ZERO = bytes(BLOCK)
#: Member types whose data is file content (chunked); all other data is kept raw.
CONTENT_TYPES = frozenset({b"0", b"\x00", b"7", b"S"})
#: Types that carry no data, whatever their ustar size field says (GNU tar and Go agree on these).
HEADER_ONLY_TYPES = frozenset({b"1", b"5"})
#: Types that must have size 0: GNU tar skips data after them, Go does not, so a non-zero size
#: could hide a member from one of them. Such archives are refused.
ZERO_SIZE_TYPES = frozenset({b"2", b"3", b"4", b"6"})
#: Extended headers that describe the next member.
_EXTENSION_TYPES = frozenset({b"x", b"L", b"K"})
_SPARSE_PREFIX = b"GNU.sparse."


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
    #: Bytes of data in the archive (for sparse files: the data segments, not the real size).
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
    #: A PAX 1.0 sparse file: its map is at the start of its data (``sparse`` has no segments).
    sparse_map_in_data: bool = False
    pax: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False)

    @property
    def data_size(self) -> int:
        """Bytes of data that follow the header in the archive."""
        return 0 if self.type in HEADER_ONLY_TYPES else self.size

    @property
    def is_content(self) -> bool:
        """Whether the data is file content (chunked and deduplicated)."""
        return self.type in CONTENT_TYPES

    @property
    def is_directory(self) -> bool:
        """A directory: type ``5``, or an old-style regular file (type NUL) whose name ends with
        ``/`` (Go and GNU tar read it as a directory; the reader refuses one with data)."""
        return self.type == b"5" or (self.type == b"\x00" and self.name.endswith(b"/"))


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


@dataclass(slots=True)
class _Pending:
    """Extended headers read since the last member, waiting for the member they describe."""

    pax: list[tuple[bytes, bytes]] = field(default_factory=list)
    long_name: bytes = b""
    long_link: bytes = b""
    size: int = 0

    def pax_size(self) -> bool:
        """Whether the pending PAX records set a size."""
        return any(k == b"size" and v for k, v in self.pax)


def _sparse_map(
    pax: dict[bytes, bytes], records: list[tuple[bytes, bytes]]
) -> tuple[bool, list[tuple[int, int]]] | None:
    """A PAX GNU sparse file's version and map, as Go finds them (None: not sparse).

    Returns ``(map_in_data, segments)``: version 1.0 keeps its map in the data.
    """
    major, minor = pax.get(b"GNU.sparse.major", b""), pax.get(b"GNU.sparse.minor", b"")
    pairs = [v for k, v in records if k in (b"GNU.sparse.offset", b"GNU.sparse.numbytes")]
    if major == b"0" and minor in (b"0", b"1"):
        in_data = False
    elif major == b"1" and minor == b"0":
        return True, []
    elif major or minor:
        return None  # an unknown version: Go reads the member as a regular file
    elif pairs or pax.get(b"GNU.sparse.map"):
        in_data = False
    else:
        return None
    assert not in_data
    if pairs:  # version 0.0: offset and numbytes records alternate
        keys = [k for k, _ in records if k in (b"GNU.sparse.offset", b"GNU.sparse.numbytes")]
        expected = [b"GNU.sparse.offset", b"GNU.sparse.numbytes"] * (len(keys) // 2 + 1)
        if keys != expected[: len(keys)] or any(b"," in v for v in pairs):
            raise TarError("PAX sparse offset and numbytes records are out of order")
        text = b",".join(pairs)
    else:
        text = pax.get(b"GNU.sparse.map", b"")
    fields = text.split(b",") if text else []
    count = pax_int(pax.get(b"GNU.sparse.numblocks", b""), b"GNU.sparse.numblocks")
    if len(fields) != 2 * count:
        raise TarError("PAX sparse map does not hold GNU.sparse.numblocks segments")
    numbers = [pax_int(f, b"GNU.sparse.map") for f in fields]
    return False, list(zip(numbers[0::2], numbers[1::2], strict=True))


def _check_sparse(realsize: int, segments: list[tuple[int, int]], data_size: int) -> None:
    end = 0
    for off, length in segments:
        if off < end or off + length > realsize:
            raise TarError("GNU sparse map has overlapping or out-of-range segments")
        end = off + length
    if sum(length for _, length in segments) != data_size:
        raise TarError("GNU sparse map does not match the member's data size")


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

    def _read_block_or_eof(self, what: str) -> bytes:
        """A whole block, or b"" at the end of the stream; a partial block is an error."""
        data = self._stream.read(BLOCK)
        if not data:
            return b""
        data = bytes(data)
        while len(data) < BLOCK:
            more = self._stream.read(BLOCK - len(data))
            if not more:
                raise TarError(f"tar stream ends at byte {self.offset + len(data)} inside {what}")
            data += bytes(more)
        self.offset += BLOCK
        return data

    def _padded(self, size: int) -> int:
        return -size % BLOCK

    def _trailer(self) -> Iterator[bytes]:
        """Everything after the end-of-archive blocks, in bounded pieces."""
        while rest := self._stream.read(1 << 20):
            self.offset += len(rest)
            yield bytes(rest)

    # -- iteration ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[Raw | Member]:
        """Yield events until the end of the stream (see the module docstring)."""
        limits = self._limits
        raw = bytearray()
        pending = _Pending()
        members = 0
        while True:
            block = self._read_block_or_eof("a header block")
            if not block:
                if not self.offset:
                    raise TarError("the tar stream is empty")  # GNU tar refuses it too
                break  # the archive ends without end-of-archive blocks
            if block == _ZERO:
                raw += block
                second = self._read_block_or_eof("the second end-of-archive block")
                if second and second != _ZERO:
                    raise TarError(
                        f"tar stream has a lone zero block at byte {self.offset - 2 * BLOCK}"
                    )
                raw += second
                if second:
                    for piece in self._trailer():
                        raw += piece
                        if len(raw) >= 1 << 20:
                            yield Raw(bytes(raw))
                            raw.clear()
                break
            where = self.offset - BLOCK
            if not checksum_ok(block):
                raise TarError(f"tar header at byte {where} has a bad checksum")
            raw += block
            header = decode_header(block)
            typeflag = header.typeflag
            if header.size < 0:
                raise TarError(f"negative size in tar header at byte {where}")
            size_field = block[124:136]
            if not same_for_gnu(size_field) and gnu_size(size_field) != header.size:
                raise TarError(
                    f"tar header at byte {where} has a size field that GNU tar and Go read "
                    "differently: refusing it"
                )
            if typeflag == b"X":
                raise TarError(
                    f"tar header at byte {where} is a Solaris extended header (type 'X'): GNU "
                    "tar applies it to the next member, Go reads it as a member; refusing it"
                )
            if typeflag in _EXTENSION_TYPES or typeflag == b"g":
                data = self._extension_data(header, pending)
                raw += data
                raw += self._read_exact(self._padded(len(data)), "padding")
                if typeflag == b"x":
                    pending.pax = parse_pax(data, limits.max_pax_records)
                elif typeflag == b"L":
                    pending.long_name = cstr(data)
                elif typeflag == b"K":
                    pending.long_link = cstr(data)
                else:
                    entry = self._global(header, data, pending, where)
                    pending = _Pending()
                    members = self._count(members)
                    yield Raw(bytes(raw))
                    raw.clear()
                    yield Member(entry, None)
                continue
            members = self._count(members)
            entry, ext = self._member(block, header, pending, where)
            raw += ext
            pending = _Pending()
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
        if raw:
            yield Raw(bytes(raw))

    def _count(self, members: int) -> int:
        if members >= self._limits.max_members:
            raise TarError(f"more than {self._limits.max_members} tar members")
        return members + 1

    def _extension_data(self, header: RawHeader, pending: _Pending) -> bytes:
        """The data of an extended header, capped before it is read."""
        limits = self._limits
        typeflag, size = header.typeflag, header.size
        cap = limits.max_long_name if typeflag in (b"L", b"K") else limits.max_pax_size
        if size > cap:
            raise TarError(
                f"tar {typeflag.decode()!r} header of {size} bytes exceeds the {cap}-byte cap"
            )
        pending.size += size
        if pending.size > limits.max_extension_total:
            raise TarError(
                f"more than {limits.max_extension_total} bytes of extension headers "
                f"before one member (at byte {self.offset})"
            )
        return self._read_exact(size, "extended header")

    def _global(self, header: RawHeader, data: bytes, pending: _Pending, where: int) -> TarEntry:
        """A PAX global header, as the member Go returns for it."""
        records = parse_pax(data, self._limits.max_pax_records)
        if any(k == b"size" for k, _ in records):
            raise TarError(
                f"PAX global header at byte {where} sets a size: GNU tar applies it to the "
                "members that follow, Go does not; refusing it"
            )
        if pending.pax_size():
            raise TarError(
                f"a PAX size is followed by a global header at byte {where}: GNU tar applies "
                "it to the next member, Go drops it; refusing it"
            )
        path = dict(records).get(b"path", b"")
        return TarEntry(
            name=path or header.name,
            type=b"g",
            mode=0,
            uid=0,
            gid=0,
            size=0,
            mtime_ns=0,
            pax=tuple(records),
        )

    def _member(
        self, block: bytes, header: RawHeader, pending: _Pending, where: int
    ) -> tuple[TarEntry, bytes]:
        """The member a header describes, with its pending extended headers applied; also the
        old GNU sparse extension blocks read after the header."""
        typeflag = header.typeflag
        pax = dict(pending.pax)
        name, linkname, size = header.name, header.linkname, header.size
        uid, gid, mtime_ns = header.uid, header.gid, header.mtime * 1_000_000_000
        uname, gname = header.uname, header.gname
        xattrs: list[tuple[bytes, bytes]] = []
        for key, value in pax.items():
            if key.startswith(b"SCHILY.xattr."):
                xattrs.append((key[len(b"SCHILY.xattr.") :], value))
            elif not value:
                continue  # an empty value keeps the header's own field (as Go does)
            elif key == b"path":
                name = value
            elif key == b"linkpath":
                linkname = value
            elif key == b"size":
                size = pax_int(value, key)
            elif key == b"uid":
                uid = pax_int(value, key)
            elif key == b"gid":
                gid = pax_int(value, key)
            elif key == b"mtime":
                mtime_ns = pax_time_ns(value)
            elif key == b"uname":
                uname = value
            elif key == b"gname":
                gname = value
        if pending.long_name:
            name = pending.long_name
        if pending.long_link:
            linkname = pending.long_link
        self._check_size(typeflag, name, size, bool(pax.get(b"size")), where)
        sparse: tuple[int, tuple[tuple[int, int], ...]] | None = None
        in_data = False
        ext = b""
        if typeflag == b"S":
            if header.format is not HeaderFormat.GNU:
                raise TarError(f"old GNU sparse member at byte {where} is not in GNU format")
            realsize, segments, ext = self._old_gnu_sparse(block)
            _check_sparse(realsize, segments, size)
            sparse = (realsize, tuple(segments))
        elif any(k.startswith(_SPARSE_PREFIX) for k in pax):
            found = _sparse_map(pax, pending.pax)
            if found is not None and (typeflag in HEADER_ONLY_TYPES | ZERO_SIZE_TYPES):
                raise TarError(f"tar member at byte {where} of type {typeflag!r} has a sparse map")
            if found is not None:
                in_data, segments = found
                if sparse_name := pax.get(b"GNU.sparse.name", b""):
                    name = sparse_name
                real = pax.get(b"GNU.sparse.size", b"") or pax.get(b"GNU.sparse.realsize", b"")
                realsize = pax_int(real, b"GNU.sparse.size") if real else size
                if not in_data:
                    _check_sparse(realsize, segments, size)
                sparse = (realsize, tuple(segments))
        entry = TarEntry(
            name=name,
            type=typeflag,
            mode=header.mode,
            uid=uid,
            gid=gid,
            size=size,
            mtime_ns=mtime_ns,
            linkname=linkname,
            uname=uname,
            gname=gname,
            devmajor=header.devmajor,
            devminor=header.devminor,
            xattrs=tuple(sorted(xattrs)),
            sparse=sparse,
            sparse_map_in_data=in_data,
            pax=tuple(pending.pax),
        )
        return entry, ext

    def _check_size(
        self, typeflag: bytes, name: bytes, size: int, from_pax: bool, where: int
    ) -> None:
        """Refuse a size on whose meaning GNU tar and Go disagree (an entry could hide in it)."""
        if not size:
            return
        if typeflag in ZERO_SIZE_TYPES or (typeflag == b"\x00" and name.endswith(b"/")):
            what = (
                "a directory written as a file" if typeflag == b"\x00" else repr(typeflag.decode())
            )
            raise TarError(
                f"tar member at byte {where} ({what}) has size {size}: tar implementations "
                "disagree on such archives, refusing it"
            )
        if typeflag in HEADER_ONLY_TYPES and from_pax:
            # GNU tar skips PAX-sized data after a hard link or directory; Go and Python's
            # tarfile do not: the next block would be a member for one and data for the
            # other (an entry smuggled past one parser). Refused, like ZERO_SIZE_TYPES.
            raise TarError(
                f"tar member at byte {where} of type {typeflag.decode()!r} has "
                "a PAX size: tar implementations disagree on such archives, refusing it"
            )

    def _old_gnu_sparse(self, block: bytes) -> tuple[int, list[tuple[int, int]], bytes]:
        """Realsize, segments and extension blocks of an old GNU sparse member (as Go reads
        them: an area's entries end at the first whose offset starts with a NUL)."""
        segments: list[tuple[int, int]] = []

        def take(area: bytes, count: int) -> None:
            for i in range(count):
                entry = area[i * 24 : i * 24 + 24]
                if entry[0] == 0:
                    break
                off = parse_number(entry[:12], "sparse offset")
                length = parse_number(entry[12:], "sparse length")
                if off < 0 or length < 0:
                    raise TarError("GNU sparse map has a negative offset or length")
                segments.append((off, length))

        take(block[386 : 386 + 4 * 24], 4)
        is_extended = block[482]
        realsize = parse_number(block[483:495], "realsize")
        if realsize < 0:
            raise TarError("GNU sparse member has a negative real size")
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
        return realsize, segments, bytes(ext)
