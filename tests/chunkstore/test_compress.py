"""Tests for :mod:`chunkstore.compress`: framing, the raw fallback and bounded decompression."""

from __future__ import annotations

import random
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from chunkstore.compress import RAW, ZSTD, Compressor
from index.errors import FormatError, LimitExceeded, Malformed

COMP = Compressor()
MIB = 1 << 20


def incompressible(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def zstd_frame(data: bytes, *, content_size: bool = True) -> bytes:
    """A zstd frame made with the zstandard library directly (not through Compressor)."""
    return zstandard.ZstdCompressor(write_content_size=content_size).compress(data)


def with_content_size(frame: bytes, size: int) -> bytes:
    """Rewrite a single-segment frame's declared content size as an 8-byte field.

    Frame header (RFC 8878 §3.1.1.1): magic(4) || descriptor(1) || [window] || [dict id] || FCS.
    Descriptor bits 7-6 give the FCS width (1/2/4/8 bytes when single-segment), bit 5 is
    Single_Segment, bits 1-0 the dictionary-id width.
    """
    desc = frame[4]
    assert desc & 0x20 and desc & 0x03 == 0, "expected a single-segment frame without dict id"
    width = (1, 2, 4, 8)[desc >> 6]
    new_desc = 0xC0 | (desc & 0x3F)  # FCS flag 3: 8-byte field
    return frame[:4] + bytes([new_desc]) + struct.pack("<Q", size) + frame[5 + width :]


# ------------------------------------------------------------------------------------------------
# Round trip and framing
# ------------------------------------------------------------------------------------------------


@given(
    st.binary(max_size=4096)
    | st.builds(lambda b, n: b * n, st.binary(max_size=8), st.integers(0, 800))
)
def test_round_trip(data: bytes) -> None:
    framed = COMP.compress(data)
    assert framed[0] in (RAW, ZSTD)
    assert len(framed) <= len(data) + 1  # never more than the flag byte of overhead
    assert COMP.decompress(framed, len(data)) == data
    assert COMP.decompress(memoryview(framed), len(data) + 100) == data


def test_compressible_uses_zstd_and_is_smaller() -> None:
    data = b"chunkstore " * 1000
    framed = COMP.compress(data)
    assert framed[0] == ZSTD
    assert len(framed) < len(data) // 10
    # The body is a standard zstd frame that records its content size.
    assert zstandard.get_frame_parameters(framed[1:]).content_size == len(data)
    assert zstandard.ZstdDecompressor().decompress(framed[1:]) == data


@pytest.mark.parametrize("n", [0, 1, 2, 16, 1000, 64 * 1024])
def test_incompressible_stays_raw(n: int) -> None:
    data = incompressible(n, seed=n)
    framed = COMP.compress(data)
    assert framed[0] == RAW
    assert framed[1:] == data
    assert COMP.decompress(framed, n) == data


def test_empty() -> None:
    assert COMP.compress(b"") == bytes([RAW])
    assert COMP.decompress(bytes([RAW]), 0) == b""


def test_compress_accepts_memoryview() -> None:
    data = b"abc" * 500
    assert COMP.compress(memoryview(data)) == COMP.compress(data)
    raw = incompressible(100)
    assert COMP.compress(memoryview(raw)) == bytes([RAW]) + raw


@pytest.mark.parametrize("level", [1, 19])
def test_levels(level: int) -> None:
    data = b"level test " * 300
    framed = Compressor(level).compress(data)
    assert framed[0] == ZSTD
    assert Compressor().decompress(framed, len(data)) == data


def test_decompresses_frames_from_other_encoders() -> None:
    data = b"x" * 5000
    assert COMP.decompress(bytes([ZSTD]) + zstd_frame(data), len(data)) == data


def test_thread_safety() -> None:
    comp = Compressor()

    def work(seed: int) -> bool:
        rnd = random.Random(seed)
        for _ in range(30):
            data = bytes([rnd.randrange(4)]) * rnd.randrange(1, 5000) + rnd.randbytes(50)
            if comp.decompress(comp.compress(data), len(data)) != data:
                return False
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(8)))


# ------------------------------------------------------------------------------------------------
# Bounded decompression
# ------------------------------------------------------------------------------------------------


def test_raw_bounded_by_max_length() -> None:
    framed = bytes([RAW]) + b"x" * 100
    assert COMP.decompress(framed, 100) == b"x" * 100
    with pytest.raises(LimitExceeded):
        COMP.decompress(framed, 99)


def test_zstd_bounded_by_max_length() -> None:
    data = b"\x00" * 1000
    framed = COMP.compress(data)
    assert COMP.decompress(framed, 1000) == data
    with pytest.raises(LimitExceeded):
        COMP.decompress(framed, 999)
    with pytest.raises(LimitExceeded):
        COMP.decompress(framed, 0)


def test_bomb_refused_by_declared_size() -> None:
    """A small frame declaring 16 MiB is refused without inflating it."""
    bomb = zstd_frame(b"\x00" * (16 * MIB))
    assert len(bomb) < 64 * 1024
    with pytest.raises(LimitExceeded):
        COMP.decompress(bytes([ZSTD]) + bomb, MIB)


def test_forged_huge_declared_size_refused() -> None:
    frame = with_content_size(zstd_frame(b"y" * 1000), 1 << 40)
    assert zstandard.get_frame_parameters(frame).content_size == 1 << 40
    with pytest.raises(LimitExceeded):
        COMP.decompress(bytes([ZSTD]) + frame, MIB)


def test_rewritten_header_helper_is_faithful() -> None:
    frame = with_content_size(zstd_frame(b"y" * 1000), 1000)
    assert COMP.decompress(bytes([ZSTD]) + frame, 1000) == b"y" * 1000


@pytest.mark.parametrize("declared", [1, 500, 999, 1001, 2000])
def test_declared_size_must_match_content(declared: int) -> None:
    """A frame lying about its size never yields more (or other) than it declared."""
    frame = with_content_size(zstd_frame(b"y" * 1000), declared)
    with pytest.raises(Malformed):
        COMP.decompress(bytes([ZSTD]) + frame, 10_000)


def test_frame_without_content_size_rejected() -> None:
    data = b"z" * 1000
    frame = zstd_frame(data, content_size=False)
    assert zstandard.get_frame_parameters(frame).content_size == zstandard.CONTENTSIZE_UNKNOWN
    with pytest.raises(FormatError):
        COMP.decompress(bytes([ZSTD]) + frame, 10 * len(data))


def test_frame_declaring_zero_rejected() -> None:
    frame = zstd_frame(b"")
    assert zstandard.get_frame_parameters(frame).content_size == 0
    with pytest.raises(FormatError):
        COMP.decompress(bytes([ZSTD]) + frame, 100)


_BUG_TRAILING = (
    "bug: chunkstore/compress.py Compressor.decompress (ZSTD branch) decodes only the first zstd "
    "frame and silently ignores bytes after it, so b'\\x01' + frame + junk is accepted"
)


@pytest.mark.parametrize("tail", [b"\x00", b"junk", b"SECOND FRAME"], ids=["nul", "junk", "text"])
def test_trailing_bytes_after_frame_rejected(tail: bytes) -> None:
    data = b"w" * 1000
    framed = COMP.compress(data)
    with pytest.raises(FormatError):
        COMP.decompress(framed + tail, len(data))


def test_second_frame_not_silently_dropped() -> None:
    data = b"v" * 1000
    framed = COMP.compress(data)
    try:
        out = COMP.decompress(framed + framed[1:], 2 * len(data))
    except FormatError:
        return
    assert out == data + data


# ------------------------------------------------------------------------------------------------
# Malformed input
# ------------------------------------------------------------------------------------------------


def test_empty_input_malformed() -> None:
    with pytest.raises(Malformed):
        COMP.decompress(b"", 10)


@pytest.mark.parametrize("flag", range(2, 256))
def test_unknown_flag_malformed(flag: int) -> None:
    with pytest.raises(Malformed, match=str(flag)):
        COMP.decompress(bytes([flag]) + b"\x00" * 16, 100)


@pytest.mark.parametrize(
    "body",
    [b"", b"\x28\xb5\x2f", b"\x28\xb5\x2f\xfd", b"not zstd at all", b"\x00" * 32],
    ids=["empty", "short-magic", "magic-only", "text", "zeros"],
)
def test_bad_zstd_body_malformed(body: bytes) -> None:
    with pytest.raises(FormatError):
        COMP.decompress(bytes([ZSTD]) + body, 1000)


def test_truncated_frames() -> None:
    data = b"truncate me " * 200
    framed = COMP.compress(data)
    assert framed[0] == ZSTD
    for cut in range(1, len(framed)):
        with pytest.raises(FormatError):
            COMP.decompress(framed[:cut], len(data))


@given(st.binary(max_size=300), st.integers(0, 1 << 20))
def test_garbage_raises_only_format_error(data: bytes, max_length: int) -> None:
    try:
        out = COMP.decompress(data, max_length)
    except FormatError:
        return
    assert len(out) <= max_length


@given(st.binary(max_size=300), st.integers(0, 1 << 20))
def test_garbage_zstd_body_raises_only_format_error(data: bytes, max_length: int) -> None:
    try:
        out = COMP.decompress(bytes([ZSTD]) + b"\x28\xb5\x2f\xfd" + data, max_length)
    except FormatError:
        return
    assert len(out) <= max_length


@given(st.integers(0, 10_000), st.integers(0, 7), st.integers(0, 3))
def test_bit_flipped_frames_raise_only_format_error(pos: int, bit: int, seed: int) -> None:
    rnd = random.Random(seed)
    data = bytes(rnd.randrange(3) for _ in range(2000))
    framed = bytearray(COMP.compress(data))
    framed[pos % len(framed)] ^= 1 << bit
    try:
        out = COMP.decompress(bytes(framed), len(data))
    except FormatError:
        return
    assert len(out) <= len(data)
