"""Layer compression: media types, magic, bounded decompression, default recompression."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import zlib
from collections.abc import Callable

import pytest
import zstandard

from chunkstore.errors import UsageError
from chunkstore.images.decompress import (
    CorruptLayer,
    DecompressionLimit,
    check_magic,
    layer_compression,
    open_decompressed,
    sniff_compression,
)
from chunkstore.images.recompress import recompress
from chunkstore.registry.mediatypes import (
    DOCKER_LAYER_GZIP,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
)
from index.ids import Digest, sha256


def _payload(n: int = 300_000) -> bytes:
    """Compressible but not trivial data (text-like with some randomness)."""
    rnd = hashlib.sha256(b"seed").digest()
    parts = []
    i = 0
    while sum(map(len, parts)) < n:
        parts.append(b"line %d %s some repeated words here\n" % (i, rnd[i % 32 :].hex().encode()))
        i += 1
    return b"".join(parts)[:n]


def _factory(data: bytes) -> Callable[[], io.BytesIO]:
    return lambda: io.BytesIO(data)


def test_media_types() -> None:
    assert layer_compression(OCI_LAYER_TAR) == "none"
    assert layer_compression(OCI_LAYER_GZIP) == "gzip"
    assert layer_compression(OCI_LAYER_ZSTD) == "zstd"
    assert layer_compression(DOCKER_LAYER_GZIP) == "gzip"
    with pytest.raises(UsageError, match=r"supported:.*tar\+zstd"):
        layer_compression("application/x-foo")


def test_magic_sniffing() -> None:
    assert sniff_compression(gzip.compress(b"x")) == "gzip"
    assert sniff_compression(zstandard.compress(b"x")) == "zstd"
    assert sniff_compression(b"ustar") == "none"
    check_magic("gzip", gzip.compress(b"x"))
    with pytest.raises(CorruptLayer, match=r"declared gzip.*zstd data"):
        check_magic("gzip", zstandard.compress(b"x"))
    with pytest.raises(CorruptLayer, match=r"declared none.*gzip data"):
        check_magic("none", gzip.compress(b"x"))


def test_gzip_round_trip_multi_member() -> None:
    data = _payload()
    blob = gzip.compress(data[:1000]) + gzip.compress(data[1000:])
    with open_decompressed(io.BytesIO(blob), "gzip") as r:
        assert r.read() == data
    assert b"".join(recompress(io.BytesIO(data), "gzip")) != b""
    again = b"".join(recompress(io.BytesIO(data), "gzip"))
    assert gzip.decompress(again) == data


def test_gzip_truncated_and_trailing_garbage() -> None:
    blob = gzip.compress(_payload())
    with pytest.raises(CorruptLayer, match="truncated"):
        open_decompressed(io.BytesIO(blob[:-20]), "gzip").read()
    with pytest.raises(CorruptLayer, match="trailing data"):
        open_decompressed(io.BytesIO(blob + b"garbage!"), "gzip").read()
    with pytest.raises(CorruptLayer, match="does not decode"):
        open_decompressed(io.BytesIO(blob[:10] + b"\x07" * 200), "gzip").read()


def test_zstd_round_trip_multi_frame() -> None:
    data = _payload()
    blob = zstandard.compress(data[:5000]) + zstandard.compress(data[5000:])
    with open_decompressed(io.BytesIO(blob), "zstd") as r:
        assert r.read() == data
    again = b"".join(recompress(io.BytesIO(data), "zstd"))
    assert zstandard.ZstdDecompressor().decompressobj().decompress(again) == data


def test_none_passes_through() -> None:
    data = _payload(1000)
    assert open_decompressed(io.BytesIO(data), "none").read() == data
    assert b"".join(recompress(io.BytesIO(data), "none")) == data


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_bomb_guard_ratio(compression: str) -> None:
    zeros = bytes(32 << 20)
    blob = gzip.compress(zeros) if compression == "gzip" else zstandard.compress(zeros)
    with pytest.raises(DecompressionLimit, match="expands more than 100 times"):
        r = open_decompressed(io.BytesIO(blob), compression, max_ratio=100)  # type: ignore[arg-type]
        while r.read(1 << 20):
            pass


def test_bomb_guard_size() -> None:
    blob = gzip.compress(bytes(4 << 20))
    with pytest.raises(DecompressionLimit, match="more than 1000000 bytes"):
        open_decompressed(io.BytesIO(blob), "gzip", max_size=1_000_000).read()


def test_digest_helpers_consistent() -> None:
    data = os.urandom(100)
    assert Digest.parse(str(sha256(data))) == sha256(data)


def test_parallel_default_gzip_is_valid_deterministic_and_one_member() -> None:
    # Used when a layer's original compressor cannot be reproduced: blocks are deflated in
    # parallel but the result must be one ordinary gzip member, the same bytes every time.
    rng = random.Random(11)
    for size in (0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 12345):
        data = rng.randbytes(size // 2) + b"layer " * ((size - size // 2) // 6 + 1)
        data = data[:size]
        first = b"".join(recompress(io.BytesIO(data), "gzip"))
        assert b"".join(recompress(io.BytesIO(data), "gzip")) == first
        assert gzip.decompress(first) == data
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        assert d.decompress(first) == data and d.eof and d.unused_data == b""
