"""Tests for :mod:`chunkstore.chunker`: FastCDC cuts, streaming equivalence, parameters, vectors.

The central property: :meth:`Chunker.chunks` over a stream, whatever sizes its reads return and
whatever the buffer size, cuts exactly where FastCDC cuts the whole input held in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkstore.chunker import MAX_CHUNK_SIZE, Chunker, ChunkerParams
from chunkstore.errors import UsageError
from index.errors import Malformed

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable

    from _typeshed import WriteableBuffer

KIB = 1024
MIB = 1024 * KIB

#: Small sizes so that short inputs hold many chunks.
SMALL = ChunkerParams(min_size=64, avg_size=256, max_size=1024)
#: Mid sizes for the multi-MiB tests.
MID = ChunkerParams(min_size=1 * KIB, avg_size=4 * KIB, max_size=16 * KIB)

VECTOR_FILE = Path(__file__).resolve().parent.parent / "data" / "chunker_vector.txt"

PROPERTY_SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


class ShortReads(io.RawIOBase):
    """A readable raw stream over ``data`` whose reads return 1..``max_read`` bytes at random."""

    def __init__(self, data: bytes, max_read: int, seed: int) -> None:
        super().__init__()
        self._data = memoryview(data)
        self._pos = 0
        self._max_read = max_read
        self._rng = random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        target = memoryview(buffer).cast("B")
        n = min(len(target), self._rng.randint(1, self._max_read), len(self._data) - self._pos)
        target[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class ReadOnly:
    """A stream with only ``read`` (no ``readinto``), returning short reads as well."""

    def __init__(self, data: bytes, max_read: int, seed: int) -> None:
        self._data = data
        self._pos = 0
        self._max_read = max_read
        self._rng = random.Random(seed)

    def read(self, size: int = -1) -> bytes:
        n = self._rng.randint(1, self._max_read)
        if size >= 0:
            n = min(n, size)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out


class Generated(io.RawIOBase):
    """``total`` bytes made by copying windows of a random pool at shifting offsets (cheap)."""

    def __init__(self, total: int, seed: int) -> None:
        super().__init__()
        self._pool = memoryview(random.Random(seed).randbytes(2 * MIB))
        self._left = total
        self._count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        target = memoryview(buffer).cast("B")
        n = min(len(target), self._left, MIB)
        start = (self._count * 104_729) % MIB  # a prime stride: windows rarely line up
        target[:n] = self._pool[start : start + n]
        self._count += 1
        self._left -= n
        return n


def as_binary(stream: object) -> BinaryIO:
    """The test streams are duck-typed binary streams."""
    return cast("BinaryIO", stream)


def lengths(chunks: Iterable[bytes]) -> list[int]:
    return [len(c) for c in chunks]


def cut_offsets(sizes: Iterable[int]) -> list[int]:
    """End offsets of consecutive chunks of the given sizes."""
    out: list[int] = []
    total = 0
    for size in sizes:
        total += size
        out.append(total)
    return out


def counter_stream(n: int, label: bytes = b"chunkstore-test-vector") -> bytes:
    """The first ``n`` bytes of SHA-256 counter mode: block i = sha256(label + i as u64be)."""
    blocks = (hashlib.sha256(label + i.to_bytes(8, "big")).digest() for i in range((n + 31) // 32))
    return b"".join(blocks)[:n]


@st.composite
def chunker_params(draw: st.DrawFn) -> ChunkerParams:
    max_size = draw(st.integers(1024, 16 * KIB))
    avg_size = draw(st.integers(256, max_size))
    min_size = draw(st.integers(64, avg_size))
    return ChunkerParams(min_size, avg_size, max_size)


@st.composite
def inputs(draw: st.DrawFn, max_part: int = 24 * KIB) -> bytes:
    """Random runs mixed with constant runs (those force max_size cuts) and raw Hypothesis bytes."""
    parts: list[bytes] = []
    for kind, size, seed in draw(
        st.lists(
            st.tuples(
                st.sampled_from(["random", "constant", "raw"]),
                st.integers(0, max_part),
                st.integers(0, 2**32),
            ),
            max_size=6,
        )
    ):
        if kind == "random":
            parts.append(random.Random(seed).randbytes(size))
        elif kind == "constant":
            parts.append(bytes([seed % 256]) * size)
        else:
            parts.append(draw(st.binary(max_size=min(size, 2 * KIB))))
    return b"".join(parts)


# ------------------------------------------------------------------------------------------------
# Basic invariants
# ------------------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(data=inputs(), params=chunker_params())
def test_chunks_concatenate_and_respect_bounds(data: bytes, params: ChunkerParams) -> None:
    chunker = Chunker(params)
    chunks = list(chunker.chunk_bytes(data))
    assert b"".join(chunks) == data
    assert all(type(c) is bytes for c in chunks)
    assert all(params.min_size <= len(c) <= params.max_size for c in chunks[:-1])
    if chunks:
        assert 0 < len(chunks[-1]) <= params.max_size
    assert list(chunker.chunks(io.BytesIO(data))) == chunks


def test_empty_input_yields_nothing() -> None:
    chunker = Chunker(SMALL)
    assert list(chunker.chunk_bytes(b"")) == []
    assert list(chunker.chunks(io.BytesIO(b""))) == []
    assert list(chunker.chunks(as_binary(ShortReads(b"", 5, 0)))) == []
    assert list(chunker.chunks(as_binary(ReadOnly(b"", 5, 0)))) == []


def test_input_shorter_than_min_size_is_one_chunk() -> None:
    chunker = Chunker(SMALL)
    assert list(chunker.chunk_bytes(b"x" * 10)) == [b"x" * 10]
    assert list(chunker.chunks(io.BytesIO(b"x" * 10))) == [b"x" * 10]


def test_constant_input_is_cut_at_max_size() -> None:
    data = bytes(10 * SMALL.max_size + 5)
    assert lengths(Chunker(SMALL).chunk_bytes(data)) == [SMALL.max_size] * 10 + [5]


def test_chunk_bytes_accepts_bytearray_and_memoryviews() -> None:
    data = random.Random(1).randbytes(20 * KIB)
    chunker = Chunker(SMALL)
    expected = list(chunker.chunk_bytes(data))
    assert list(chunker.chunk_bytes(bytearray(data))) == expected
    assert list(chunker.chunk_bytes(memoryview(data))) == expected
    assert list(chunker.chunk_bytes(memoryview(data).cast("B", (4, 5 * KIB)))) == expected
    with pytest.raises(UsageError, match="contiguous"):
        list(chunker.chunk_bytes(memoryview(data)[::2]))


# ------------------------------------------------------------------------------------------------
# Streaming gives the same cuts as chunking the whole input
# ------------------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    data=inputs(),
    params=chunker_params(),
    max_read=st.sampled_from([1, 3, 64, 1000, 5000, 70_000]),
    buffer_size=st.sampled_from([1, 1024, 3 * KIB, 40 * KIB, 8 * MIB]),
    seed=st.integers(0, 2**32),
    use_readinto=st.booleans(),
)
def test_streaming_matches_whole_input(
    data: bytes,
    params: ChunkerParams,
    max_read: int,
    buffer_size: int,
    seed: int,
    use_readinto: bool,
) -> None:
    if max_read == 1:
        data = data[: 8 * KIB]  # one byte per read is slow in Python
    chunker = Chunker(params, buffer_size=buffer_size)
    expected = list(chunker.chunk_bytes(data))
    stream = ShortReads(data, max_read, seed) if use_readinto else ReadOnly(data, max_read, seed)
    assert list(chunker.chunks(as_binary(stream))) == expected


def test_small_buffer_size_is_raised_to_twice_max_size() -> None:
    assert Chunker(SMALL, buffer_size=1).buffer_size == 2 * SMALL.max_size
    assert Chunker(SMALL, buffer_size=10 * KIB).buffer_size == 10 * KIB
    assert Chunker(ChunkerParams()).buffer_size == 8 * MIB


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_buffer_ending_exactly_at_a_content_cut(delta: int) -> None:
    # Buffer sizes that end the first fill exactly on (or one byte around) a content cut: the
    # chunk ending at the end of the buffer must be carried over and chunked again, not emitted.
    data = random.Random(7).randbytes(200 * KIB)
    chunker = Chunker(SMALL)
    expected = list(chunker.chunk_bytes(data))
    cuts = [c for c in cut_offsets(lengths(expected)) if c >= 2 * SMALL.max_size + 1]
    for cut in cuts[:40]:
        streamed = Chunker(SMALL, buffer_size=cut + delta).chunks(io.BytesIO(data))
        assert list(streamed) == expected, cut + delta


@pytest.mark.parametrize("extra", [0, 1, 100])
def test_buffer_ending_exactly_at_a_max_size_cut(extra: int) -> None:
    # Constant data is cut every max_size bytes; with a buffer of exactly 2 * max_size every
    # fill ends on a forced max_size cut, which is final.
    data = bytes(9 * SMALL.max_size + extra) + random.Random(3).randbytes(5 * KIB)
    chunker = Chunker(SMALL, buffer_size=2 * SMALL.max_size)
    assert list(chunker.chunks(io.BytesIO(data))) == list(chunker.chunk_bytes(data))


def test_chunks_are_independent_copies() -> None:
    data = random.Random(11).randbytes(64 * KIB)
    chunks = list(Chunker(SMALL, buffer_size=1).chunks(as_binary(ShortReads(data, 500, 1))))
    assert b"".join(chunks) == data
    assert all(type(c) is bytes for c in chunks)


def test_abandoning_the_iterator_is_clean() -> None:
    data = random.Random(12).randbytes(64 * KIB)
    it = cast("Generator[bytes, None, None]", Chunker(SMALL).chunks(io.BytesIO(data)))
    first = next(it)
    it.close()  # releases the buffer views; a failure would surface as an unraisable error
    assert data.startswith(first)
    for chunk in Chunker(SMALL).chunks(io.BytesIO(data)):
        assert data.startswith(chunk)
        break


def test_stream_errors_are_usage_errors() -> None:
    class NonBlocking(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: WriteableBuffer) -> None:
            return None

    class Text:
        def read(self, size: int = -1) -> str:
            return "text"

    class Liar:
        def readinto(self, buffer: WriteableBuffer) -> int:
            return len(memoryview(buffer)) + 1

    chunker = Chunker(SMALL)
    with pytest.raises(UsageError, match="non-blocking"):
        list(chunker.chunks(as_binary(NonBlocking())))
    with pytest.raises(UsageError, match="binary mode"):
        list(chunker.chunks(as_binary(Text())))
    with pytest.raises(UsageError, match="invalid count"):
        list(chunker.chunks(as_binary(Liar())))


# ------------------------------------------------------------------------------------------------
# Content-defined: cuts survive insertions
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "inserted"), [(1, 1), (2, 7), (3, 100), (4, 1000), (5, 5000)])
def test_prefix_insertion_only_moves_the_first_cuts(seed: int, inserted: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(4 * MIB)
    prefix = rng.randbytes(inserted)
    chunker = Chunker(MID)
    old = cut_offsets(lengths(chunker.chunk_bytes(data)))
    new = cut_offsets(lengths(chunker.chunk_bytes(prefix + data)))
    shifted = [c + inserted for c in old]
    # Once one cut coincides, every later cut does: find where the two cut lists resynchronise.
    resync = next(i for i, cut in enumerate(new) if cut in set(shifted))
    assert resync <= 3, f"cuts resynchronised only after {resync} chunks"
    assert new[resync:] == shifted[shifted.index(new[resync]) :]
    survivors = len(set(shifted) & set(new))
    assert survivors >= 0.9 * len(old)


def test_insertion_in_the_middle_only_moves_nearby_cuts() -> None:
    rng = random.Random(21)
    data = rng.randbytes(2 * MIB)
    at, inserted = MIB + 12_345, rng.randbytes(300)
    chunker = Chunker(MID)
    old = cut_offsets(lengths(chunker.chunk_bytes(data)))
    new = cut_offsets(lengths(chunker.chunk_bytes(data[:at] + inserted + data[at:])))
    before = [c for c in old if c < at]
    assert new[: len(before)] == before
    later_old = [c + len(inserted) for c in old if c > at + MID.max_size]
    assert set(later_old) <= set(new)


# ------------------------------------------------------------------------------------------------
# Parameters
# ------------------------------------------------------------------------------------------------


def test_default_params() -> None:
    p = ChunkerParams()
    assert (p.min_size, p.avg_size, p.max_size) == (16 * KIB, 64 * KIB, 256 * KIB)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.min_size = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("min_size", "avg_size", "max_size", "match"),
    [
        (63, 256, 1024, "min_size must be at least 64"),
        (64, 255, 1024, "avg_size must be at least 256"),
        (64, 256, 1023, "max_size must be at least 1024"),
        (64, 256, MAX_CHUNK_SIZE + 1, "max_size must be at most"),
        (2048, 1024, 4096, "min_size <= avg_size <= max_size"),
        (64, 8192, 4096, "min_size <= avg_size <= max_size"),
        (0, 0, 0, "min_size <= avg_size <= max_size|at least"),
        (-1, 256, 1024, "min_size must be at least 64"),
        (1024.0, 4096, 16384, "min_size must be an integer"),
        (1024, "4096", 16384, "avg_size must be an integer"),
        (1024, 4096, True, "max_size must be an integer"),
        (1024, 4096, None, "max_size must be an integer"),
    ],
)
def test_invalid_params_are_usage_errors(
    min_size: object, avg_size: object, max_size: object, match: str
) -> None:
    with pytest.raises(UsageError, match=match) as info:
        ChunkerParams(min_size, avg_size, max_size)  # type: ignore[arg-type]
    assert f"max_size={max_size!r}" in str(info.value)


def test_extreme_valid_params_chunk() -> None:
    data = random.Random(5).randbytes(300 * KIB)
    for params in (
        ChunkerParams(64, 256, 1024),
        ChunkerParams(1024, 1024, 1024),
        ChunkerParams(64, MAX_CHUNK_SIZE, MAX_CHUNK_SIZE),
    ):
        chunks = list(Chunker(params).chunk_bytes(data))
        assert b"".join(chunks) == data
        assert all(len(c) <= params.max_size for c in chunks)


def test_cbor_round_trip() -> None:
    p = ChunkerParams(1024, 4096, 16384)
    assert p.to_cbor() == {"min": 1024, "avg": 4096, "max": 16384}
    assert ChunkerParams.from_cbor(p.to_cbor()) == p
    assert ChunkerParams.from_cbor(ChunkerParams().to_cbor()) == ChunkerParams()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (None, "must be a map"),
        ([1024, 4096, 16384], "must be a map"),
        ({"min": 1024, "avg": 4096}, "missing: max"),
        ({"min": 1024, "avg": 4096, "max": 16384, "fat": 0}, "unexpected: 'fat'"),
        ({"min": 1024, "avg": 4096, "max": 16384, 1: 2}, "unexpected: 1"),
        ({"min": 1024, "avg": 4096.0, "max": 16384}, "'avg' must be an integer"),
        ({"min": 1024, "avg": 4096, "max": True}, "'max' must be an integer"),
        ({"min": "1024", "avg": 4096, "max": 16384}, "'min' must be an integer"),
        ({"min": 8192, "avg": 4096, "max": 16384}, "invalid chunker parameters"),
        ({"min": 1024, "avg": 4096, "max": 2**40}, "invalid chunker parameters"),
    ],
)
def test_from_cbor_rejects_malformed(value: object, match: str) -> None:
    with pytest.raises(Malformed, match=match):
        ChunkerParams.from_cbor(value)


@pytest.mark.parametrize("buffer_size", [0, -1, 1.5, True, "8M"])
def test_invalid_buffer_size(buffer_size: object) -> None:
    with pytest.raises(UsageError, match="buffer_size"):
        Chunker(SMALL, buffer_size=buffer_size)  # type: ignore[arg-type]


def test_params_must_be_chunker_params() -> None:
    with pytest.raises(UsageError, match="ChunkerParams"):
        Chunker({"min": 64, "avg": 256, "max": 1024})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# The compiled FastCDC is required, but only when a Chunker is made
# ------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=300_000),
    sizes=st.sampled_from([(64, 256, 1024), (1024, 4096, 16384), (2048, 2048, 2048)]),
)
def test_standard_table_cuts_exactly_as_the_fastcdc_package(
    data: bytes, sizes: tuple[int, int, int]
) -> None:
    from fastcdc.fastcdc_cy import chunk_generator

    params = ChunkerParams(*sizes)
    expected = [
        bytes(data[c.offset : c.offset + c.length])
        for c in chunk_generator(memoryview(data), *sizes, False, None)
    ]
    assert list(Chunker(params).chunk_bytes(data)) == expected


def test_importing_and_chunking_do_not_need_fastcdc() -> None:
    code = (
        "import sys; sys.modules['fastcdc'] = None; sys.modules['fastcdc.fastcdc_cy'] = None\n"
        "import chunkstore.chunker as c\n"
        "print(sum(map(len, c.Chunker(c.ChunkerParams()).chunk_bytes(bytes(300_000)))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "300000"


# ------------------------------------------------------------------------------------------------
# Golden vector
# ------------------------------------------------------------------------------------------------

VECTOR_INPUT_SIZE = 1 * MIB
VECTOR_INPUT_SHA256 = "0731728cdb53f465970209d7c665698970fdad32a5cb8a39fdc755c40534e800"
VECTOR_PARAMS = ChunkerParams(min_size=16384, avg_size=65536, max_size=262144)
#: (offset, length, sha256 of the chunk) for VECTOR_INPUT_SIZE bytes of ``counter_stream``.
VECTOR = [
    (0, 55038, "4624ce082df314b693bea8bc4a1483e8f499996f26bcdfe35c4bb3d89177641d"),
    (55038, 73181, "155a445e97da233694170338b3e3dcf6089ef9e52e41d605f4bf94c267d59d1a"),
    (128219, 61616, "02084ecb3ae13764a62dd7470ced5e9164a59d428cf7864fcdbf3926d8cd7297"),
    (189835, 91748, "72b9305b9ddb95bad8debb47170711a5e0d071521069bd03c948de2ecdac486c"),
    (281583, 126627, "94d47d3c7c674849529f6c5d35a559090302e6d3bf5d76918d63fe26ac9f9226"),
    (408210, 62910, "7e76f254d52ed52721b4bb8328b1cb332d6530ae0604dc28d7e23bdf32bcc374"),
    (471120, 40241, "bc784004723d7d14db0c9a0276b7e83f470b986ce45e83aeff5d311611e3254a"),
    (511361, 18946, "9e181072529e640d8edda0e27f768513ef6b0d2f1cf04c45630a50de9ba98221"),
    (530307, 39097, "6abb699074d1d0fcd0a5689fb14952bf906470bff41b064f25f6ef780b22198c"),
    (569404, 46961, "e92385e8cc4ad0b9b74f7d52451986034d55590fe0ccffe2b0014a574483bd1a"),
    (616365, 42327, "8b2233a27a0d129c6c558ffc812c5f99efb8fe02cfb7ef50fa55d6b7a4f1d08a"),
    (658692, 90857, "c7e9434e16d6acf524334eda0ba0de3a274aae637e1eacbc632626ecce3a0cae"),
    (749549, 50513, "aa4ebd65d6b2449363c29ef1c2b4828bae7c4c8f19130e2811a7cff6f15e3ee4"),
    (800062, 44569, "0607cf67deb2d824c586bb416c6320d5f05879137697e501f2502b7ca71d3670"),
    (844631, 50200, "ef80644086ef7dfc6d47f44856bfe91da710a835991726852485de0d67697934"),
    (894831, 78039, "735a13c035615ad4df52708bf221aa8bb88829292b71b2b1c29df8465e17b542"),
    (972870, 55026, "644a4aa85a6ffbf6a3aceb42ccfc52820822587a7874a6362f12737516f38ef2"),
    (1027896, 20680, "9ead0c0f46b0a4b2055ff174e58042ac245925744919168a624bf2c57e3a8731"),
]


def table(chunks: Iterable[bytes]) -> list[tuple[int, int, str]]:
    rows: list[tuple[int, int, str]] = []
    offset = 0
    for chunk in chunks:
        rows.append((offset, len(chunk), hashlib.sha256(chunk).hexdigest()))
        offset += len(chunk)
    return rows


def test_golden_vector() -> None:
    data = counter_stream(VECTOR_INPUT_SIZE)
    assert hashlib.sha256(data).hexdigest() == VECTOR_INPUT_SHA256
    chunker = Chunker(VECTOR_PARAMS)
    assert table(chunker.chunk_bytes(data)) == VECTOR
    streamed = Chunker(VECTOR_PARAMS, buffer_size=1).chunks(as_binary(ShortReads(data, 9000, 0)))
    assert table(streamed) == VECTOR


def test_golden_vector_file_matches() -> None:
    lines = VECTOR_FILE.read_text(encoding="ascii").splitlines()
    assert lines[0].startswith("# ")
    assert VECTOR_INPUT_SHA256 in lines[0]
    assert "min=16384 avg=65536 max=262144" in lines[0]
    rows = [line.split() for line in lines[1:]]
    assert [(int(o), int(n), h) for o, n, h in rows] == VECTOR


# ------------------------------------------------------------------------------------------------
# Bounded memory
# ------------------------------------------------------------------------------------------------


def test_memory_stays_bounded_on_a_long_stream() -> None:
    total = 256 * MIB
    buffer_size = 4 * MIB
    params = ChunkerParams()
    chunker = Chunker(params, buffer_size=buffer_size)
    stream = Generated(total, seed=99)
    seen = count = short = 0
    tracemalloc.start()
    try:
        for chunk in chunker.chunks(as_binary(stream)):
            seen += len(chunk)
            count += 1
            short += len(chunk) < params.max_size
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen == total
    assert short >= 0.9 * count, "expected content-defined cuts, not max_size cuts"
    assert peak < 3 * buffer_size, f"peak traced memory {peak} bytes"
