"""Tests for :mod:`index.chunklist`: chunk lists, their entry cap, and stream record bodies."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from index import cbor
from index.chunklist import (
    CHUNK_LIST_VERSION,
    MAX_ENTRIES,
    ChunkRef,
    StreamBody,
    decode_chunk_list,
    encode_chunk_list,
)
from index.errors import FormatError, LimitExceeded, Malformed, UnsupportedVersion
from index.ids import Digest
from index.record import Record
from tests.index.strategies import D1, D2, digests

chunk_refs = st.builds(ChunkRef, digests, st.integers(1, 2**64 - 1))


def envelope(data: Any, *, kind: str = "chunk-list", version: int = CHUNK_LIST_VERSION) -> bytes:
    return cbor.encode_envelope(kind, version, data)


# ------------------------------------------------------------------------------------------------
# Chunk lists
# ------------------------------------------------------------------------------------------------


@given(st.lists(chunk_refs, max_size=40))
def test_round_trip(refs: list[ChunkRef]) -> None:
    data = encode_chunk_list(refs)
    assert decode_chunk_list(data) == refs
    assert encode_chunk_list(decode_chunk_list(data)) == data


def test_golden() -> None:
    # {"data": [[ref(D1), 5]], "kind": "chunk-list", "version": 1}, assembled by hand.
    want = (
        "a3"
        "6464617461"  # "data"
        "81"  # array(1)
        "82"  # array(2): [ref, size]
        "d99df2582101" + D1.raw.hex() + "05"  # tag 40434 over 01 || digest, then 5
        "646b696e64"  # "kind"
        "6a" + b"chunk-list".hex() + "6776657273696f6e01"  # "version": 1
    )
    assert encode_chunk_list([ChunkRef(D1, 5)]).hex() == want
    assert decode_chunk_list(bytes.fromhex(want)) == [ChunkRef(D1, 5)]


def test_order_and_duplicates_are_kept() -> None:
    refs = [ChunkRef(D2, 3), ChunkRef(D1, 1), ChunkRef(D2, 3)]
    assert decode_chunk_list(encode_chunk_list(refs)) == refs


def test_empty_list() -> None:
    assert decode_chunk_list(encode_chunk_list([])) == []


def test_max_entries_round_trips_at_worst_case_size() -> None:
    """A full list of the largest possible rows still fits the byte cap."""
    refs = [
        ChunkRef(Digest("hmac-sha256", i.to_bytes(32, "big")), 2**64 - 1)
        for i in range(MAX_ENTRIES)
    ]
    data = encode_chunk_list(refs)
    assert decode_chunk_list(data) == refs


def test_encode_refuses_more_than_max_entries() -> None:
    refs = [ChunkRef(D1, 1)] * (MAX_ENTRIES + 1)
    with pytest.raises(Malformed):
        encode_chunk_list(refs)


def test_decode_refuses_more_than_max_entries() -> None:
    data = envelope([[D1, 1]] * (MAX_ENTRIES + 1))
    # Small rows: the byte cap alone would let this through, so the entry cap must catch it.
    assert len(data) < MAX_ENTRIES * 64
    with pytest.raises(Malformed):
        decode_chunk_list(data)


def test_byte_cap() -> None:
    data = envelope([[D1, 1]] * MAX_ENTRIES + [b"x" * (MAX_ENTRIES * 64)])
    with pytest.raises(LimitExceeded):
        decode_chunk_list(data)


BAD_ROWS = {
    "data is a map": {"rows": []},
    "data is null": None,
    "data is a ref": D1,
    "row is a ref": [D1],
    "row is int": [5],
    "row is empty": [[]],
    "row has one item": [[D1]],
    "row has three items": [[D1, 5, 0]],
    "row is a map": [{"id": D1, "size": 5}],
    "id is raw bytes": [[D1.raw, 5]],
    "id is text": [[str(D1), 5]],
    "id is int": [[1, 5]],
    "size and id swapped": [[5, D1]],
    "size is zero": [[D1, 0]],
    "size is negative": [[D1, -1]],
    "size is bool": [[D1, True]],
    "size is text": [[D1, "5"]],
    "size is bytes": [[D1, b"\x05"]],
    "size is null": [[D1, None]],
    "size is a ref": [[D1, D2]],
    "bad row after good ones": [[D1, 1], [D2, 2], [D1, 0]],
}


@pytest.mark.parametrize("data", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_malformed_rows(data: Any) -> None:
    with pytest.raises(Malformed):
        decode_chunk_list(envelope(data))


def test_wrong_kind() -> None:
    with pytest.raises(Malformed):
        decode_chunk_list(envelope([[D1, 1]], kind="record"))


@pytest.mark.parametrize("version", [0, CHUNK_LIST_VERSION + 1])
def test_unsupported_version(version: int) -> None:
    with pytest.raises(UnsupportedVersion):
        decode_chunk_list(envelope([[D1, 1]], version=version))


@given(st.binary(max_size=120))
def test_garbage_raises_only_format_error(data: bytes) -> None:
    try:
        decode_chunk_list(data)
    except FormatError:
        pass


@given(st.lists(chunk_refs, min_size=1, max_size=8), st.integers(0, 10_000), st.integers(0, 7))
def test_bit_flips_raise_only_format_error_or_stay_canonical(
    refs: list[ChunkRef], pos: int, bit: int
) -> None:
    data = bytearray(encode_chunk_list(refs))
    data[pos % len(data)] ^= 1 << bit
    try:
        back = decode_chunk_list(bytes(data))
    except FormatError:
        return
    assert encode_chunk_list(back) == bytes(data)


# ------------------------------------------------------------------------------------------------
# Stream bodies
# ------------------------------------------------------------------------------------------------


@given(st.integers(0, 2**64 - 1), st.lists(digests, max_size=10))
def test_stream_body_round_trip(size: int, lists: list[Digest]) -> None:
    body = StreamBody(size, tuple(lists))
    assert StreamBody.from_cbor(body.to_cbor()) == body
    rec = Record("img", 1, "stream", body.to_cbor())
    back = Record.decode(rec.encode())
    assert StreamBody.from_cbor(back.body) == body
    assert list(cbor.iter_refs(cbor.decode(rec.encode(), max_size=1 << 20))) == lists


BAD_BODIES = {
    "not a map": [0, []],
    "null": None,
    "missing lists": {"size": 0},
    "missing size": {"lists": []},
    "extra key": {"size": 0, "lists": [], "x": 1},
    "size negative": {"size": -1, "lists": []},
    "size bool": {"size": False, "lists": []},
    "size text": {"size": "0", "lists": []},
    "lists not a list": {"size": 0, "lists": D1},
    "lists is a map": {"size": 0, "lists": {"a": D1}},
    "lists holds raw bytes": {"size": 0, "lists": [D1.raw]},
    "lists holds text": {"size": 0, "lists": [str(D1)]},
    "lists holds a nested list": {"size": 0, "lists": [[D1]]},
}


@pytest.mark.parametrize("value", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_stream_body_malformed(value: Any) -> None:
    with pytest.raises(Malformed):
        StreamBody.from_cbor(value)
