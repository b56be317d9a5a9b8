"""Tests for :mod:`chunkstore.packscan`: finding the blobs of an unencrypted pack without its header."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from chunkstore.blob import BlobType
from chunkstore.codec import BlobCodec
from chunkstore.config import RepoConfig
from chunkstore.pack import TRAILER_SIZE, PackWriter
from chunkstore.packscan import looks_like_metadata, scan_pack
from index import cbor

PLAIN = BlobCodec(RepoConfig(repo_id=bytes(32), encrypted=False), None)


def text(seed: int, n: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.choice(b"abc de") for _ in range(n))


def noise(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def pack_of(plains: list[bytes], type_: BlobType = BlobType.DATA) -> tuple[bytes, list[tuple]]:
    writer = PackWriter(PLAIN)
    for p in plains:
        writer.add(PLAIN.encode(type_, p))
    _, data, entries = writer.finish()
    return data, [(e.offset, e.length, e.id) for e in entries]


def found(data: bytes) -> list[tuple]:
    return [(b.offset, b.length, PLAIN.blob_id(b.plaintext)) for b in scan_pack(data)]


# raw and zstd-framed blobs in every order, an empty blob, a raw blob last
MIXES = [
    [text(1, 5000), noise(2, 3000), text(3, 9000), noise(4, 10), text(5, 100)],
    [noise(6, 4000), text(7, 4000), b"", text(8, 2000), noise(9, 700)],
    [noise(10, 50)],
    [text(11, 70_000), text(12, 300_000)],
]


def test_an_intact_pack_scans_to_its_header() -> None:
    for plains in MIXES:
        data, entries = pack_of(plains)
        assert found(data) == entries


def test_a_lost_header_loses_no_blob_the_encoding_delimits() -> None:
    data, entries = pack_of(MIXES[1])  # its last blob is raw
    header_start = entries[-1][0] + entries[-1][1]
    damaged = bytearray(data)
    damaged[header_start : len(data) - TRAILER_SIZE] = bytes(
        len(data) - TRAILER_SIZE - header_start
    )
    assert found(bytes(damaged)) == entries  # the trailer still says where the header starts
    # Without the trailer the last (raw) blob has no known end; the zstd blobs are still found.
    cut = found(bytes(damaged[:-3]))
    assert cut == entries[:-1]


def test_damage_inside_one_blob_costs_that_blob_and_its_raw_neighbour() -> None:
    data, entries = pack_of(MIXES[0])
    damaged = bytearray(data)
    damaged[entries[2][0] + 20] ^= 0xFF  # inside the third (zstd) blob
    got = found(bytes(damaged))
    assert entries[0] in got and entries[3] in got and entries[4] in got
    assert entries[2] not in got


def test_metadata_packs_are_told_by_their_envelopes() -> None:
    meta = [cbor.encode_envelope("tree", 1, {"nodes": [i, text(i, 500)]}) for i in range(5)]
    data, _ = pack_of(meta, BlobType.META)
    assert all(looks_like_metadata(b.plaintext) for b in scan_pack(data))
    assert not looks_like_metadata(text(1, 100)) and not looks_like_metadata(b"\xa3")


@given(st.binary(max_size=3000))
def test_garbage_never_raises(data: bytes) -> None:
    for b in scan_pack(data):
        assert 0 <= b.offset and b.offset + b.length <= len(data)
