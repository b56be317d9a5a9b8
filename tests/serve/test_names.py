"""Record names as NAME:TAG, and Range headers: the pure parts of ``chunkstore serve``."""

from __future__ import annotations

import pytest

from chunkstore.serve.blobs import ByteRange, RangeNotSatisfiable, parse_range
from chunkstore.serve.names import ServedName, served_name


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("debian:bookworm", ServedName("debian", "bookworm", True)),
        ("minbase", ServedName("minbase", "latest", False)),
        ("library/debian:12.5", ServedName("library/debian", "12.5", True)),
        ("a/b/c", ServedName("a/b/c", "latest", False)),
    ],
)
def test_served_name_splits_at_the_last_colon_of_the_last_component(
    record: str, expected: ServedName
) -> None:
    assert served_name(record) == expected


@pytest.mark.parametrize(
    "record",
    ["Debian:12", "debian:", "debian:-x", "debian/:1", "x:y:z", "-a", "a" * 256, "x:" + "t" * 129],
)
def test_records_without_a_valid_name_or_tag_are_not_served(record: str) -> None:
    assert served_name(record) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", ByteRange(0, 100)),
        ("bytes=100-", ByteRange(100, 1000)),
        ("bytes=-10", ByteRange(990, 1000)),
        ("bytes=-5000", ByteRange(0, 1000)),
        ("bytes=990-5000", ByteRange(990, 1000)),
        ("bytes=0-0", ByteRange(0, 1)),
        # Ignored (the whole blob is sent), as RFC 9110 allows:
        ("bytes=0-1,5-6", None),
        ("items=0-5", None),
        ("bytes=5-1", None),
        ("bytes=a-b", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-2000", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 1000)


def test_content_range() -> None:
    assert ByteRange(0, 100).content_range(1000) == "bytes 0-99/1000"
