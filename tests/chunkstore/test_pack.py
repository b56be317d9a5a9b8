"""Tests for :mod:`chunkstore.pack`: writing packs, and reading their headers defensively."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkstore import crypto
from chunkstore.blob import BlobType, PackEntry
from chunkstore.codec import BlobCodec
from chunkstore.config import RepoConfig
from chunkstore.errors import CorruptPack
from chunkstore.pack import (
    HEADER_VERSION,
    MAX_HEADER_SIZE,
    TRAILER_SIZE,
    PackWriter,
    decode_header,
    encode_header,
    read_pack_header,
)
from index import cbor
from index.errors import FormatError
from index.ids import Digest

REPO_ID = bytes(range(200, 232))
MASTER = crypto.MasterKey(bytes(range(32)), bytes(range(32, 64)))
PLAIN = BlobCodec(RepoConfig(repo_id=REPO_ID, encrypted=False), None)
ENC = BlobCodec(RepoConfig(repo_id=REPO_ID, encrypted=True), MASTER)
CODECS = [pytest.param(PLAIN, id="plain"), pytest.param(ENC, id="encrypted")]


class Reader:
    """``read_at`` over bytes (or a virtual size) that records every request."""

    def __init__(self, data: bytes, size: int | None = None) -> None:
        self.data = data
        self.size = len(data) if size is None else size
        self.requests: list[tuple[int, int]] = []

    def __call__(self, offset: int, n: int) -> bytes:
        self.requests.append((offset, n))
        assert 0 <= offset and 0 <= n and offset + n <= self.size, "read outside the file"
        if self.size != len(self.data):  # virtual file: only its tail is real
            start = offset - (self.size - len(self.data))
            assert start >= 0, "read before the real tail of a virtual file"
            return self.data[start : start + n]
        return self.data[offset : offset + n]


def build(codec: BlobCodec, blobs: list[tuple[BlobType, bytes]]) -> tuple[Digest, bytes, list[Any]]:
    writer = PackWriter(codec)
    stored = []
    for type_, plain in blobs:
        blob = codec.encode(type_, plain)
        writer.add(blob)
        stored.append((blob, plain))
    pack_id, data, entries = writer.finish()
    # Encrypted packs shuffle their blobs (pack.py): pair each entry with the blob at its place.
    if not codec.config.encrypted:
        return pack_id, data, [(e, b, p) for e, (b, p) in zip(entries, stored, strict=True)]
    by_data = {b.data: (b, p) for b, p in stored}  # sealed blobs differ (random nonces)
    assert len(entries) == len(by_data)
    return pack_id, data, [(e, *by_data[data[e.offset : e.offset + e.length]]) for e in entries]


def trailer(header_len: int, magic: bytes = b"CSP", version: int = HEADER_VERSION) -> bytes:
    return struct.pack("<I", header_len) + magic + bytes([version])


def assemble(codec: BlobCodec, body: bytes, rows: list[list[Any]]) -> bytes:
    """A pack of ``body`` with a header listing ``rows`` verbatim (documented layout)."""
    header = codec.encode_file("pack-header", cbor.encode_envelope("pack-header", 1, rows))
    return body + header + trailer(len(header))


def read(codec: BlobCodec, data: bytes) -> list[PackEntry]:
    return read_pack_header(codec, Reader(data), len(data))


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------

blob_lists = st.lists(
    st.tuples(
        st.sampled_from(BlobType),
        st.binary(max_size=600)
        | st.builds(lambda b, n: b * n, st.binary(max_size=4), st.integers(0, 500)),
    ),
    max_size=12,
)


@pytest.mark.parametrize("codec", CODECS)
@given(blobs=blob_lists)
def test_written_entries_read_back(codec: BlobCodec, blobs: list[tuple[BlobType, bytes]]) -> None:
    pack_id, data, rows = build(codec, blobs)
    entries = [e for e, _, _ in rows]
    reader = Reader(data)
    assert read_pack_header(codec, reader, len(data)) == entries
    # The pack id is the SHA-256 of all its bytes.
    assert pack_id == Digest("sha256", hashlib.sha256(data).digest())
    # Entries are the blobs in order, at running offsets, and each slice decodes to its plaintext.
    offset = 0
    for entry, blob, plain in rows:
        assert (entry.type, entry.id, entry.offset) == (blob.type, blob.id, offset)
        assert (entry.length, entry.raw_length) == (len(blob.data), len(plain))
        stored = data[entry.offset : entry.offset + entry.length]
        assert stored == blob.data
        assert codec.decode(entry.type, entry.id, stored, entry.raw_length) == plain
        offset += entry.length
    # Trailer, parsed by hand: header length (u32 LE), "CSP", version 1.
    header_len = struct.unpack("<I", data[-8:-4])[0]
    assert data[-4:] == b"CSP\x01"
    assert offset + header_len + TRAILER_SIZE == len(data)
    # Reading the header takes two small requests, never more than the file.
    assert len(reader.requests) == 2
    assert all(o + n <= len(data) for o, n in reader.requests)


def test_writer_counts_and_resets() -> None:
    writer = PackWriter(PLAIN)
    assert (writer.size, writer.count) == (0, 0)
    a = PLAIN.encode(BlobType.DATA, b"a" * 100)
    e = writer.add(a)
    assert e == PackEntry(BlobType.DATA, a.id, 0, len(a.data), 100)
    e2 = writer.add(PLAIN.encode(BlobType.DATA, b"bb"))
    assert e2.offset == len(a.data)
    assert writer.count == 2
    assert writer.size == len(a.data) + e2.length
    _, data1, entries1 = writer.finish()
    assert len(entries1) == 2
    assert (writer.size, writer.count) == (0, 0)
    _, data2, entries2 = writer.finish()
    assert entries2 == []
    assert read(PLAIN, data2) == []
    assert data2 != data1


def test_same_blobs_same_pack_when_unencrypted() -> None:
    blobs = [(BlobType.DATA, b"x" * 50), (BlobType.DATA, b"y")]
    assert build(PLAIN, blobs)[:2] == build(PLAIN, blobs)[:2]


def test_encrypted_header_hides_ids() -> None:
    blobs = [(BlobType.META, b"tree %d" % i) for i in range(5)]
    _, data, rows = build(ENC, blobs)
    for entry, _, _ in rows:
        assert entry.id.raw not in data
        assert entry.id.raw[:8] not in data


@pytest.mark.parametrize(
    "reader_codec",
    [
        BlobCodec(
            RepoConfig(repo_id=REPO_ID, encrypted=True), crypto.MasterKey(bytes(32), bytes(32))
        ),
        BlobCodec(RepoConfig(repo_id=bytes(32), encrypted=True), MASTER),
        PLAIN,
    ],
    ids=["other-key", "other-repo", "no-key"],
)
def test_encrypted_header_unreadable_without_the_key(reader_codec: BlobCodec) -> None:
    _, data, _ = build(ENC, [(BlobType.DATA, b"secret" * 10)])
    with pytest.raises(CorruptPack):
        read(reader_codec, data)


def test_header_role_is_bound() -> None:
    """A sealed file of another role cannot stand in for a pack header."""
    body = ENC.encode(BlobType.DATA, b"x" * 10).data
    plain = cbor.encode_envelope("pack-header", 1, [[1, bytes(32), len(body), 10]])
    header = ENC.encode_file("pack-index", plain)
    data = body + header + trailer(len(header))
    with pytest.raises(CorruptPack):
        read(ENC, data)
    good = ENC.encode_file("pack-header", plain)
    assert len(read(ENC, body + good + trailer(len(good)))) == 1


# ------------------------------------------------------------------------------------------------
# Reading damaged packs
# ------------------------------------------------------------------------------------------------


@pytest.fixture(params=CODECS)
def pack(request: pytest.FixtureRequest) -> tuple[BlobCodec, bytes]:
    codec = request.param
    _, data, _ = build(codec, [(BlobType.DATA, b"a" * 300), (BlobType.DATA, bytes(range(200)))])
    return codec, data


def with_trailer(data: bytes, new: bytes) -> bytes:
    return data[:-TRAILER_SIZE] + new


@pytest.mark.parametrize("magic", [b"CSQ", b"csp", b"\x00\x00\x00", b"PSC"])
def test_bad_magic(pack: tuple[BlobCodec, bytes], magic: bytes) -> None:
    codec, data = pack
    header_len = struct.unpack("<I", data[-8:-4])[0]
    with pytest.raises(CorruptPack, match="trailer"):
        read(codec, with_trailer(data, trailer(header_len, magic=magic)))


@pytest.mark.parametrize("version", [0, 2, 7, 255])
def test_unknown_trailer_version(pack: tuple[BlobCodec, bytes], version: int) -> None:
    codec, data = pack
    header_len = struct.unpack("<I", data[-8:-4])[0]
    reader = Reader(with_trailer(data, trailer(header_len, version=version)))
    with pytest.raises(CorruptPack, match=f"version {version}") as info:
        read_pack_header(codec, reader, reader.size)
    assert str(HEADER_VERSION) in str(info.value)
    assert reader.requests == [(reader.size - TRAILER_SIZE, TRAILER_SIZE)]


@pytest.mark.parametrize("excess", [1, 2, 1000, 2**32 - 1])
def test_header_length_beyond_file(pack: tuple[BlobCodec, bytes], excess: int) -> None:
    codec, data = pack
    header_len = min(len(data) - TRAILER_SIZE + excess, 2**32 - 1)
    reader = Reader(with_trailer(data, trailer(header_len)))
    with pytest.raises(CorruptPack, match="header length"):
        read_pack_header(codec, reader, reader.size)
    assert reader.requests == [(reader.size - TRAILER_SIZE, TRAILER_SIZE)]


def test_header_length_beyond_cap_is_refused_before_reading() -> None:
    """A 1 GiB (virtual) pack whose trailer claims a 16 MiB + 1 header: only the trailer is read."""
    size = 1 << 30
    tail = trailer(MAX_HEADER_SIZE + 1)
    reader = Reader(tail, size=size)
    with pytest.raises(CorruptPack, match="header length"):
        read_pack_header(PLAIN, reader, size)
    assert reader.requests == [(size - TRAILER_SIZE, TRAILER_SIZE)]


def test_header_at_cap_is_read() -> None:
    """Exactly MAX_HEADER_SIZE is allowed through to the (failing) header decode."""
    size = 1 << 30
    tail = b"\x00" * MAX_HEADER_SIZE + trailer(MAX_HEADER_SIZE)
    reader = Reader(tail, size=size)
    with pytest.raises(CorruptPack):
        read_pack_header(PLAIN, reader, size)
    assert reader.requests[-1] == (size - TRAILER_SIZE - MAX_HEADER_SIZE, MAX_HEADER_SIZE)
    assert max(n for _, n in reader.requests) <= MAX_HEADER_SIZE


def test_truncated_pack(pack: tuple[BlobCodec, bytes]) -> None:
    codec, data = pack
    for cut in sorted({0, 1, 4, 7, 8, 9, len(data) // 2, len(data) - 8, len(data) - 1}):
        truncated = data[:cut]
        reader = Reader(truncated)
        with pytest.raises(CorruptPack):
            read_pack_header(codec, reader, len(truncated))
        assert all(o + n <= len(truncated) for o, n in reader.requests)


def test_dropped_leading_bytes(pack: tuple[BlobCodec, bytes]) -> None:
    codec, data = pack
    with pytest.raises(CorruptPack):
        read(codec, data[1:])


def test_short_reads_are_corrupt(pack: tuple[BlobCodec, bytes]) -> None:
    codec, data = pack

    def short(skip_first: bool) -> Callable[[int, int], bytes]:
        calls = [0]

        def read_at(offset: int, n: int) -> bytes:
            calls[0] += 1
            chunk = data[offset : offset + n]
            return chunk if (skip_first and calls[0] == 1) else chunk[:-1]

        return read_at

    with pytest.raises(CorruptPack, match="trailer"):
        read_pack_header(codec, short(False), len(data))
    with pytest.raises(CorruptPack, match="truncated"):
        read_pack_header(codec, short(True), len(data))


def test_every_header_byte_flip(pack: tuple[BlobCodec, bytes]) -> None:
    """Any change to the header or trailer is refused, or (unencrypted) still describes the pack."""
    codec, data = pack
    header_len = struct.unpack("<I", data[-8:-4])[0]
    start = len(data) - TRAILER_SIZE - header_len
    good = read(codec, data)
    for pos in range(start, len(data)):
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        try:
            entries = read(codec, bytes(damaged))
        except CorruptPack:
            continue
        assert codec is PLAIN
        # A header that still parses must still tile the data exactly.
        assert sum(e.length for e in entries) == sum(e.length for e in good)


# ------------------------------------------------------------------------------------------------
# Header contents
# ------------------------------------------------------------------------------------------------

ID = bytes(32)


@pytest.mark.parametrize("codec", CODECS)
def test_header_must_tile_the_data(codec: BlobCodec) -> None:
    body = b"\x00" * 100
    assert read(codec, assemble(codec, body, [[1, ID, 60, 60], [2, ID, 40, 40]]))[1].offset == 60
    for rows in (
        [[1, ID, 60, 60]],  # covers less
        [[1, ID, 60, 60], [2, ID, 41, 40]],  # runs past the data
        [[1, ID, 101, 10]],
        [],  # empty header over non-empty data
        [[1, ID, 60, 60], [2, ID, 39, 40]],
    ):
        with pytest.raises(CorruptPack):
            read(codec, assemble(codec, body, rows))


BAD_ROWS = {
    "row not a list": [5],
    "row too short": [[1, ID, 10]],
    "row too long": [[1, ID, 10, 10, 0]],
    "type 0": [[0, ID, 10, 10]],
    "type 3": [[3, ID, 10, 10]],
    "type text": [["data", ID, 10, 10]],
    "id text": [[1, "0" * 32, 10, 10]],
    "id short": [[1, ID[:31], 10, 10]],
    "id long": [[1, ID + b"\x00", 10, 10]],
    "id as ref": [[1, Digest("sha256", ID), 10, 10]],
    "length zero": [[1, ID, 0, 0], [1, ID, 10, 10]],
    "length negative": [[1, ID, -1, 10], [1, ID, 11, 10]],
    "length text": [[1, ID, "10", 10]],
    "raw_length negative": [[1, ID, 10, -1]],
    "raw_length null": [[1, ID, 10, None]],
}


@pytest.mark.parametrize("rows", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_malformed_header_rows(rows: list[Any]) -> None:
    with pytest.raises(CorruptPack):
        read(PLAIN, assemble(PLAIN, b"\x00" * 10, rows))
    with pytest.raises((CorruptPack, FormatError)):
        decode_header(cbor.encode_envelope("pack-header", 1, rows), "sha256", 10)


@pytest.mark.parametrize(
    "rows", [[[True, ID, 10, 10]], [[1, ID, 10, True]], [[1, ID, True, 1], [1, ID, 9, 9]]]
)
def test_bool_fields_are_refused(rows: list[Any]) -> None:
    with pytest.raises(CorruptPack):
        decode_header(cbor.encode_envelope("pack-header", 1, rows), "sha256", 10)


def test_header_envelope_errors() -> None:
    rows = [[1, ID, 10, 10]]
    for plain in (
        cbor.encode_envelope("pack-index", 1, rows),
        cbor.encode_envelope("pack-header", 2, rows),
        cbor.encode_envelope("pack-header", 1, {"rows": rows}),
    ):
        with pytest.raises((CorruptPack, FormatError)):
            decode_header(plain, "sha256", 10)
        header = PLAIN.encode_file("pack-header", plain)
        with pytest.raises(CorruptPack):
            read(PLAIN, b"\x00" * 10 + header + trailer(len(header)))


def test_decode_header_assigns_id_algorithm() -> None:
    plain = encode_header([PackEntry(BlobType.META, Digest("sha256", ID), 0, 10, 7)])
    (entry,) = decode_header(plain, "hmac-sha256", 10)
    assert entry == PackEntry(BlobType.META, Digest("hmac-sha256", ID), 0, 10, 7)


@given(st.binary(max_size=300), st.integers(0, 1 << 20))
def test_decode_header_garbage(data: bytes, data_size: int) -> None:
    try:
        decode_header(data, "sha256", data_size)
    except (CorruptPack, FormatError):
        pass


scalars = st.one_of(
    st.integers(-5, 2**64 - 1),
    st.binary(max_size=40),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
)


@given(
    st.lists(st.lists(scalars, min_size=3, max_size=5) | scalars, max_size=5),
    st.integers(0, 1 << 12),
)
def test_decode_header_structured_garbage(rows: list[Any], data_size: int) -> None:
    plain = cbor.encode_envelope("pack-header", 1, rows)
    try:
        entries = decode_header(plain, "sha256", data_size)
    except (CorruptPack, FormatError):
        return
    assert sum(e.length for e in entries) == data_size


@given(st.binary(max_size=200), st.integers(0, 220), st.booleans())
def test_read_pack_header_garbage(body: bytes, header_len: int, with_trailer: bool) -> None:
    """Garbage, with or without a well-formed trailer, only ever gives CorruptPack."""
    data = body + trailer(header_len) if with_trailer else body
    for codec in (PLAIN, ENC):
        reader = Reader(data)
        try:
            read_pack_header(codec, reader, len(data))
        except CorruptPack:
            pass
        assert all(o + n <= len(data) for o, n in reader.requests)
