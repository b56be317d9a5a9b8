"""Tests for :mod:`chunkstore.packindex`: index file round trips and validation on load."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkstore.blob import BlobType, PackEntry
from chunkstore.packindex import (
    INDEX_VERSION,
    MAX_INDEX_SIZE,
    IndexedPack,
    IndexFile,
    IndexLimits,
    decode_index,
    encode_index,
    encoded_index_size,
    split_index,
)
from index import cbor
from index.errors import FormatError, LimitExceeded, Malformed, UnsupportedVersion
from index.ids import Digest

ALGS = ["sha256", "hmac-sha256"]
ID = bytes(32)
PID = bytes(range(32))
raw32 = st.binary(min_size=32, max_size=32)


@st.composite
def indexed_packs(draw: st.DrawFn, algorithm: str) -> IndexedPack:
    n = draw(st.integers(0, 6))
    entries = []
    offset = 0
    for _ in range(n):
        offset += draw(st.integers(0, 50))  # gaps are allowed, overlaps are not
        length = draw(st.integers(1, 2**32))
        entries.append(
            PackEntry(
                draw(st.sampled_from(BlobType)),
                Digest(algorithm, draw(raw32)),
                offset,
                length,
                draw(st.integers(0, 2**32)),
            )
        )
        offset += length
    size = offset + draw(st.integers(0, 1000))
    return IndexedPack(Digest("sha256", draw(raw32)), size, tuple(entries))


@st.composite
def index_files(draw: st.DrawFn) -> tuple[str, IndexFile]:
    algorithm = draw(st.sampled_from(ALGS))
    packs = draw(st.lists(indexed_packs(algorithm), max_size=5))
    supersedes = draw(st.lists(st.builds(Digest, st.just("sha256"), raw32), max_size=4))
    return algorithm, IndexFile(tuple(packs), tuple(supersedes))


@given(index_files())
def test_round_trip(case: tuple[str, IndexFile]) -> None:
    algorithm, index = case
    plain = encode_index(index)
    back = decode_index(plain, algorithm)
    assert back == index
    assert encode_index(back) == plain


@given(index_files())
def test_encoded_size_is_computed_exactly(case: tuple[str, IndexFile]) -> None:
    _, index = case
    assert encoded_index_size(index) == len(encode_index(index))


def many_packs(n: int, blobs: int, seed: int = 0) -> list[IndexedPack]:
    """``n`` packs of ``blobs`` entries each, with offsets and lengths of every CBOR width."""
    packs = []
    for i in range(n):
        entries, offset = [], 0
        for j in range(blobs):
            length = (1, 30, 300, 70_000, 5_000_000_000)[(i + j + seed) % 5]
            entries.append(PackEntry(BlobType.DATA, Digest("sha256", ID), offset, length, j))
            offset += length
        packs.append(
            IndexedPack(Digest("sha256", bytes([i % 256]) * 32), offset + 8, tuple(entries))
        )
    return packs


def test_encoded_size_of_large_counts() -> None:
    sup = [Digest("sha256", bytes([i]) * 32) for i in range(30)]
    for n, blobs in ((0, 0), (23, 1), (24, 30), (300, 2)):
        index = IndexFile(tuple(many_packs(n, blobs)), tuple(sup[: n % 31]))
        assert encoded_index_size(index) == len(encode_index(index))


@pytest.mark.parametrize(("max_bytes", "max_blobs"), [(4096, 10_000), (100_000, 25), (2500, 7)])
def test_split_index_stays_within_the_limits(max_bytes: int, max_blobs: int) -> None:
    packs = many_packs(60, 6)
    sup = [Digest("sha256", bytes([i]) * 32) for i in range(5)]
    limits = IndexLimits(max_bytes=max_bytes, max_blobs=max_blobs)
    parts = split_index(packs, sup, limits)
    assert len(parts) > 1
    assert [p for part in parts for p in part.packs] == packs  # in order, none split or lost
    for part in parts:
        assert part.supersedes == tuple(sup)
        plain = encode_index(part)
        assert len(plain) <= max_bytes
        assert decode_index(plain, "sha256", max_size=max_bytes) == part
        assert sum(len(p.entries) for p in part.packs) <= max(max_blobs, 6)
    # Nothing is split that need not be.
    assert split_index(packs[:1], sup, limits) == [IndexFile((packs[0],), tuple(sup))]
    assert split_index([], sup, limits) == [IndexFile((), tuple(sup))]


def test_split_index_refuses_a_pack_no_file_can_hold() -> None:
    (big,) = many_packs(1, 100)
    with pytest.raises(LimitExceeded, match="index"):
        split_index([big], [], IndexLimits(max_bytes=1000))


def test_readers_refuse_more_than_their_cap() -> None:
    plain = encode_index(IndexFile(tuple(many_packs(10, 10))))
    with pytest.raises(LimitExceeded):
        decode_index(plain, "sha256", max_size=len(plain) - 1)
    assert decode_index(plain, "sha256", max_size=len(plain)).packs


def test_layout() -> None:
    entry = PackEntry(BlobType.META, Digest("hmac-sha256", ID), 8, 20, 30)
    index = IndexFile((IndexedPack(Digest("sha256", PID), 100, (entry,)),), (Digest("sha256", ID),))
    value = cbor.decode(encode_index(index), max_size=1 << 20)
    assert value == {
        "kind": "pack-index",
        "version": INDEX_VERSION,
        "data": {"packs": [[PID, 100, [[2, ID, 8, 20, 30]]]], "supersedes": [ID]},
    }


def test_supersedes_carried() -> None:
    old = (Digest("sha256", b"\x01" * 32), Digest("sha256", b"\x02" * 32))
    index = IndexFile((), old)
    assert decode_index(encode_index(index), "sha256").supersedes == old
    assert decode_index(encode_index(IndexFile(())), "sha256").supersedes == ()


def test_ids_take_the_given_algorithm() -> None:
    entry = PackEntry(BlobType.DATA, Digest("sha256", ID), 0, 10, 10)
    index = IndexFile((IndexedPack(Digest("sha256", PID), 10, (entry,)),), (Digest("sha256", ID),))
    back = decode_index(encode_index(index), "hmac-sha256")
    (pack,) = back.packs
    assert pack.entries[0].id == Digest("hmac-sha256", ID)
    assert pack.pack_id.algorithm == "sha256"  # pack and index-file ids are always content ids
    assert back.supersedes[0].algorithm == "sha256"


def envelope(data: Any, kind: str = "pack-index", version: int = INDEX_VERSION) -> bytes:
    return cbor.encode_envelope(kind, version, data)


def one_pack(entries: list[Any], size: Any = 100, pack_id: Any = PID) -> bytes:
    return envelope({"packs": [[pack_id, size, entries]], "supersedes": []})


def test_edge_ranges_accepted() -> None:
    rows = [[1, ID, 0, 50, 0], [2, ID, 50, 50, 7]]  # touching, ending exactly at the pack size
    (pack,) = decode_index(one_pack(rows, size=100), "sha256").packs
    assert [(e.offset, e.length) for e in pack.entries] == [(0, 50), (50, 50)]
    assert decode_index(one_pack([], size=0), "sha256").packs[0].size == 0


BAD_ENTRIES = {
    "negative offset": [[1, ID, -1, 10, 10]],
    "negative length": [[1, ID, 0, -10, 10]],
    "negative raw length": [[1, ID, 0, 10, -1]],
    "zero length": [[1, ID, 0, 0, 0]],
    "overlap": [[1, ID, 0, 10, 10], [1, ID, 5, 10, 10]],
    "same range twice": [[1, ID, 0, 10, 10], [1, ID, 0, 10, 10]],
    "contained": [[1, ID, 0, 50, 10], [1, ID, 10, 5, 10]],
    "out of order": [[1, ID, 50, 10, 10], [1, ID, 0, 10, 10]],
    "past pack end": [[1, ID, 95, 10, 10]],
    "starts at pack end": [[1, ID, 100, 1, 10]],
    "starts past pack end": [[1, ID, 1000, 1, 1]],
    "offset+length overflows u64": [[1, ID, 2**64 - 1, 2**64 - 1, 1]],
    "type 0": [[0, ID, 0, 10, 10]],
    "type 3": [[3, ID, 0, 10, 10]],
    "type bool": [[True, ID, 0, 10, 10]],
    "type text": [["data", ID, 0, 10, 10]],
    "type negative": [[-1, ID, 0, 10, 10]],
    "offset bool": [[1, ID, False, 10, 10]],
    "length bool": [[1, ID, 0, True, 10]],
    "raw length text": [[1, ID, 0, 10, "10"]],
    "id short": [[1, ID[:31], 0, 10, 10]],
    "id long": [[1, ID + b"\x00", 0, 10, 10]],
    "id text": [[1, ID.hex(), 0, 10, 10]],
    "id as ref": [[1, Digest("sha256", ID), 0, 10, 10]],
    "row too short": [[1, ID, 0, 10]],
    "row too long": [[1, ID, 0, 10, 10, 0]],
    "row not a list": [{"type": 1}],
}


@pytest.mark.parametrize("entries", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_bad_entries_are_malformed(entries: list[Any]) -> None:
    with pytest.raises(Malformed):
        decode_index(one_pack(entries), "sha256")


BAD_BODIES = {
    "body a list": [],
    "body null": None,
    "missing supersedes": {"packs": []},
    "missing packs": {"supersedes": []},
    "extra key": {"packs": [], "supersedes": [], "x": 0},
    "packs not a list": {"packs": {}, "supersedes": []},
    "supersedes not a list": {"packs": [], "supersedes": ID},
    "pack row too short": {"packs": [[PID, 100]], "supersedes": []},
    "pack row too long": {"packs": [[PID, 100, [], 0]], "supersedes": []},
    "pack row not a list": {"packs": [PID], "supersedes": []},
    "entries not a list": {"packs": [[PID, 100, {}]], "supersedes": []},
    "pack id short": {"packs": [[PID[:31], 100, []]], "supersedes": []},
    "pack id long": {"packs": [[PID + b"\x00", 100, []]], "supersedes": []},
    "pack id as ref": {"packs": [[Digest("sha256", PID), 100, []]], "supersedes": []},
    "pack size negative": {"packs": [[PID, -1, []]], "supersedes": []},
    "pack size bool": {"packs": [[PID, True, []]], "supersedes": []},
    "pack size text": {"packs": [[PID, "100", []]], "supersedes": []},
    "supersedes id short": {"packs": [], "supersedes": [ID[:31]]},
    "supersedes id long": {"packs": [], "supersedes": [ID + b"\x00"]},
    "supersedes id text": {"packs": [], "supersedes": [ID.hex()]},
    "supersedes id as ref": {"packs": [], "supersedes": [Digest("sha256", ID)]},
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies_are_malformed(body: Any) -> None:
    with pytest.raises(Malformed):
        decode_index(envelope(body), "sha256")


def test_ranges_are_checked_per_pack() -> None:
    """Offsets restart in each pack, and each pack's entries must fit that pack's size."""
    a = [PID, 10, [[1, ID, 0, 10, 10]]]
    b = [ID, 10, [[1, ID, 0, 10, 10]]]
    assert len(decode_index(envelope({"packs": [a, b], "supersedes": []}), "sha256").packs) == 2
    small = [ID, 5, [[1, ID, 0, 10, 10]]]
    with pytest.raises(Malformed):
        decode_index(envelope({"packs": [a, small], "supersedes": []}), "sha256")


def test_envelope_errors() -> None:
    body = {"packs": [], "supersedes": []}
    with pytest.raises(Malformed):
        decode_index(envelope(body, kind="pack-header"), "sha256")
    for version in (0, INDEX_VERSION + 1):
        with pytest.raises(UnsupportedVersion):
            decode_index(envelope(body, version=version), "sha256")


def test_size_cap() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return MAX_INDEX_SIZE + 1

    with pytest.raises(LimitExceeded):
        decode_index(Huge(b"\xa0"), "sha256")


@given(st.binary(max_size=200))
def test_garbage_raises_only_format_error(data: bytes) -> None:
    try:
        decode_index(data, "sha256")
    except FormatError:
        pass


@given(index_files(), st.integers(0, 10**6), st.integers(0, 7))
def test_bit_flips_raise_only_format_error_or_stay_valid(
    case: tuple[str, IndexFile], pos: int, bit: int
) -> None:
    algorithm, index = case
    plain = bytearray(encode_index(index))
    plain[pos % len(plain)] ^= 1 << bit
    try:
        back = decode_index(bytes(plain), algorithm)
    except FormatError:
        return
    for pack in back.packs:
        end = 0
        for e in pack.entries:
            assert e.offset >= end and e.length > 0
            end = e.offset + e.length
        assert end <= pack.size
