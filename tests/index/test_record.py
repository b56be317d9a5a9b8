"""Tests for :mod:`index.record`: the record envelope, its round trip and its validation."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from index import cbor
from index.errors import FormatError, LimitExceeded, Malformed, UnsupportedVersion
from index.record import MAX_RECORD_SIZE, RECORD_VERSION, Record
from tests.index.strategies import D1, digests

bodies = st.recursive(
    st.one_of(
        st.integers(-(2**63), 2**64 - 1),
        st.binary(max_size=40),
        st.text(max_size=20),
        st.booleans(),
        st.none(),
        digests,
    ),
    lambda c: st.one_of(
        st.lists(c, max_size=4),
        st.dictionaries(st.text(max_size=8) | st.integers(-(2**63), 2**63), c, max_size=4),
    ),
    max_leaves=15,
)
records = st.builds(
    Record,
    name=st.text(max_size=40),
    time_ns=st.integers(0, 2**64 - 1),
    type=st.sampled_from(["stream", "image"]) | st.text(max_size=10),
    body=bodies,
)


def envelope(data: Any, *, kind: str = "record", version: int = RECORD_VERSION) -> bytes:
    return cbor.encode_envelope(kind, version, data)


def fields(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": "n", "time": 5, "type": "stream", "body": None}
    d.update(overrides)
    return d


@given(records)
def test_round_trip(record: Record) -> None:
    data = record.encode()
    back = Record.decode(data)
    assert back == record
    assert type(back.time_ns) is int
    assert back.encode() == data


@given(records)
def test_refs_in_body_are_reachable(record: Record) -> None:
    """Reachability walks the envelope without knowing the record type."""
    whole = cbor.decode(record.encode(), max_size=MAX_RECORD_SIZE)
    assert Counter(cbor.iter_refs(whole)) == Counter(cbor.iter_refs(record.body))


def test_golden() -> None:
    # Hand-assembled canonical CBOR (RFC 7049 §3.9 key order: length first, then bytewise):
    # {"data": {"body": null, "name": "a", "time": 1, "type": "stream"}, "kind": "record",
    #  "version": 1}
    want = (
        "a3"
        "6464617461"  # "data"
        "a4"
        "64626f6479f6"  # "body": null
        "646e616d656161"  # "name": "a"
        "6474696d6501"  # "time": 1
        "6474797065"
        "6673747265616d"  # "type": "stream"
        "646b696e64"  # "kind"
        "667265636f7264"  # "record"
        "6776657273696f6e01"  # "version": 1
    )
    rec = Record("a", 1, "stream", None)
    assert rec.encode().hex() == want
    assert Record.decode(bytes.fromhex(want)) == rec


def test_body_refs_golden() -> None:
    rec = Record("r", 0, "stream", {"lists": [D1]})
    data = rec.encode()
    # The reference appears as tag 40434 over algorithm byte 1 and the raw digest.
    assert bytes.fromhex("d99df2582101") + D1.raw in data
    assert Record.decode(data).body == {"lists": [D1]}


BAD_FIELDS = {
    "body is a list": ["n", 5, "stream", None],
    "body is text": "record",
    "body is null": None,
    "missing body": {k: v for k, v in fields().items() if k != "body"},
    "missing name": {k: v for k, v in fields().items() if k != "name"},
    "missing time": {k: v for k, v in fields().items() if k != "time"},
    "missing type": {k: v for k, v in fields().items() if k != "type"},
    "extra field": fields(extra=1),
    "name is bytes": fields(name=b"n"),
    "name is int": fields(name=1),
    "name is null": fields(name=None),
    "name is a list": fields(name=["n"]),
    "type is bytes": fields(type=b"stream"),
    "type is int": fields(type=1),
    "type is null": fields(type=None),
    "time is negative": fields(time=-1),
    "time is very negative": fields(time=-(2**64)),
    "time is bool": fields(time=True),
    "time is false": fields(time=False),
    "time is text": fields(time="5"),
    "time is bytes": fields(time=b"\x05"),
    "time is null": fields(time=None),
    "time is a ref": fields(time=D1),
}


@pytest.mark.parametrize("data", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_malformed_fields(data: Any) -> None:
    with pytest.raises(Malformed):
        Record.decode(envelope(data))


def test_valid_edge_values() -> None:
    for name, time_ns, type_ in (("", 0, ""), ("ünï/cødé", 2**64 - 1, "image")):
        data = envelope(fields(name=name, time=time_ns, type=type_))
        assert Record.decode(data) == Record(name, time_ns, type_, None)


def test_wrong_kind() -> None:
    with pytest.raises(Malformed):
        Record.decode(envelope(fields(), kind="chunk-list"))


@pytest.mark.parametrize("version", [0, RECORD_VERSION + 1, 99])
def test_unsupported_version(version: int) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        Record.decode(envelope(fields(), version=version))
    assert f"version {version}" in str(info.value)
    assert f"version {RECORD_VERSION}" in str(info.value)


def test_size_cap() -> None:
    with pytest.raises(LimitExceeded):
        Record.decode(b"\x00" * (MAX_RECORD_SIZE + 1))


@given(st.binary(max_size=120))
def test_garbage_raises_only_format_error(data: bytes) -> None:
    try:
        Record.decode(data)
    except FormatError:
        pass


@given(records, st.integers(0, 10_000), st.integers(0, 7))
def test_bit_flips_raise_only_format_error_or_decode_canonically(
    record: Record, pos: int, bit: int
) -> None:
    data = bytearray(record.encode())
    data[pos % len(data)] ^= 1 << bit
    try:
        back = Record.decode(bytes(data))
    except FormatError:
        return
    assert back.encode() == bytes(data)
