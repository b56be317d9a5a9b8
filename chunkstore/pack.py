"""Pack files: many stored blobs, then a header describing them, then a fixed trailer.

::

    pack    = blob_0 || blob_1 || ... || blob_n-1 || header || trailer
    trailer = header_length (uint32 little-endian) || "CSP" || version (0x01)
    header  = stored file (codec, role "pack-header") of the CBOR envelope
              {"kind": "pack-header", "version": 1, "data": [[type, id, length, raw_length], ...]}

Blobs are listed in pack order and their offsets are the running sums of the lengths, so entries
can neither overlap nor leave gaps: the lengths plus header plus trailer must equal the pack size.
The header is at the end (restic's layout) so blobs stream out as they are produced. A pack's id is
the SHA-256 of all its bytes, which is also its OCI blob digest in a registry.

In an encrypted repository the blobs of a pack are written in a random order (a fresh permutation
from the OS's CSPRNG per pack), not in the order the chunker produced them, so the layout of a pack
does not follow the files' chunk sequence (RELIABILITY.md, threat model). Plain packs keep the
order of arrival, so equal inputs still give byte-identical packs.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Callable

from chunkstore.blob import BlobType, PackEntry, StoredBlob
from chunkstore.codec import BlobCodec
from chunkstore.errors import CorruptMetadata, CorruptPack
from index import cbor
from index.errors import FormatError
from index.ids import DIGEST_SIZE, Digest

__all__ = [
    "HEADER_VERSION",
    "MAX_HEADER_SIZE",
    "TRAILER_SIZE",
    "PackWriter",
    "decode_header",
    "read_pack_header",
]

HEADER_VERSION = 1
MAGIC = b"CSP"
TRAILER_SIZE = 8
#: Largest header accepted (restic uses the same cap); checked before reading it.
MAX_HEADER_SIZE = 16 * 1024 * 1024
_ROLE = "pack-header"
# A header entry is at most ~60 bytes of CBOR, so this bounds the plaintext header as well.
_MAX_HEADER_PLAIN = 4 * MAX_HEADER_SIZE


class PackWriter:
    """Accumulates stored blobs of one type class in memory and finishes them into a pack."""

    def __init__(self, codec: BlobCodec) -> None:
        """Start an empty pack."""
        self._codec = codec
        self._parts: list[bytes] = []  # joined once in finish(): appending never copies
        self._size = 0
        self._entries: list[PackEntry] = []

    @property
    def size(self) -> int:
        """Bytes of blob data so far."""
        return self._size

    @property
    def count(self) -> int:
        """Blobs so far."""
        return len(self._entries)

    @property
    def entries(self) -> list[PackEntry]:
        """Entries so far (a copy)."""
        return list(self._entries)

    def add(self, blob: StoredBlob) -> PackEntry:
        """Append a stored blob; returns its entry."""
        entry = PackEntry(blob.type, blob.id, self._size, len(blob.data), blob.raw_length)
        self._parts.append(blob.data)
        self._size += len(blob.data)
        self._entries.append(entry)
        return entry

    def finish(self) -> tuple[Digest, bytes, list[PackEntry]]:
        """Write header and trailer; returns (pack id, pack bytes, entries).

        The header is parsed back from the finished bytes before returning, so a pack is never
        handed on with a header that does not describe it.
        """
        if self._codec.config.encrypted and len(self._entries) > 1:
            self._shuffle()
        plain = encode_header(self._entries)
        header = self._codec.encode_file(_ROLE, plain)
        if len(header) > MAX_HEADER_SIZE:
            raise CorruptPack("pack header exceeds the size cap; use a smaller pack size")
        trailer = struct.pack("<I", len(header)) + MAGIC + bytes([HEADER_VERSION])
        data = b"".join([*self._parts, header, trailer])
        pack_id = Digest("sha256", hashlib.sha256(data).digest())
        parsed = read_pack_header(self._codec, lambda off, n: data[off : off + n], len(data))
        if parsed != self._entries:
            raise CorruptPack("pack header does not read back as written")
        entries, self._entries, self._parts, self._size = self._entries, [], [], 0
        return pack_id, data, entries

    def _shuffle(self) -> None:
        order = list(range(len(self._entries)))
        random.SystemRandom().shuffle(order)
        parts = [self._parts[i] for i in order]
        entries, offset = [], 0
        for i in order:
            e = self._entries[i]
            entries.append(PackEntry(e.type, e.id, offset, e.length, e.raw_length))
            offset += e.length
        self._parts, self._entries = parts, entries


def encode_header(entries: list[PackEntry]) -> bytes:
    """The plaintext header: canonical CBOR envelope listing the entries in order."""
    return cbor.encode_envelope(
        "pack-header",
        HEADER_VERSION,
        [[int(e.type), e.id.raw, e.length, e.raw_length] for e in entries],
    )


def decode_header(plain: bytes, id_algorithm: str, data_size: int) -> list[PackEntry]:
    """Parse a plaintext header whose blobs occupy the first ``data_size`` bytes of the pack."""
    env = cbor.decode_envelope(
        plain,
        kind="pack-header",
        versions=(HEADER_VERSION, HEADER_VERSION),
        max_size=_MAX_HEADER_PLAIN,
    )
    rows = env.data
    if not isinstance(rows, list):
        raise CorruptPack("pack header is not a list")
    entries: list[PackEntry] = []
    offset = 0
    for row in rows:
        if not (isinstance(row, list) and len(row) == 4):
            raise CorruptPack("pack header entry is malformed")
        type_, raw_id, length, raw_length = row
        if type(type_) is not int or type_ not in (BlobType.DATA, BlobType.META):
            raise CorruptPack("pack header entry has a bad type")
        if not isinstance(raw_id, bytes):
            raise CorruptPack("pack header entry has a bad id")
        if len(raw_id) != DIGEST_SIZE:
            raise CorruptPack("pack header entry id has the wrong length")
        if type(length) is not int or type(raw_length) is not int:
            raise CorruptPack("pack header entry lengths are not integers")
        if length <= 0 or raw_length < 0 or offset + length > data_size:
            raise CorruptPack("pack header entry lies outside the pack")
        entries.append(
            PackEntry(BlobType(type_), Digest(id_algorithm, raw_id), offset, length, raw_length)
        )
        offset += length
    if offset != data_size:
        raise CorruptPack(f"pack header covers {offset} bytes of {data_size}")
    return entries


def read_pack_header(
    codec: BlobCodec, read_at: Callable[[int, int], bytes], size: int, what: str = "pack"
) -> list[PackEntry]:
    """Read and verify the header of a pack of ``size`` bytes through ``read_at(offset, n)``."""
    if size < TRAILER_SIZE:
        raise CorruptPack(f"{what} is {size} bytes, shorter than its trailer")
    trailer = read_at(size - TRAILER_SIZE, TRAILER_SIZE)
    if len(trailer) != TRAILER_SIZE or trailer[4:7] != MAGIC:
        raise CorruptPack(f"{what} has no chunkstore pack trailer")
    if trailer[7] != HEADER_VERSION:
        raise CorruptPack(
            f"{what} has pack format version {trailer[7]}, this chunkstore reads {HEADER_VERSION}"
        )
    (header_len,) = struct.unpack("<I", trailer[:4])
    if header_len > MAX_HEADER_SIZE or header_len > size - TRAILER_SIZE:
        raise CorruptPack(f"{what} header length {header_len} exceeds the file or the cap")
    data_size = size - TRAILER_SIZE - header_len
    stored = read_at(data_size, header_len)
    if len(stored) != header_len:
        raise CorruptPack(f"{what} header is truncated")
    try:
        plain = codec.decode_file(_ROLE, stored, _MAX_HEADER_PLAIN, f"{what} header")
        return decode_header(plain, codec.config.id_algorithm, data_size)
    except (FormatError, CorruptMetadata, CorruptPack) as exc:
        raise CorruptPack(
            f"{what} header is invalid: {exc}; run 'chunkstore check --read-data'"
        ) from exc
