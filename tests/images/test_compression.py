"""Layer compression: media types, magic, bounded decompression and bit-exact reproduction."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from chunkstore.errors import UsageError
from chunkstore.images.decompress import (
    DOCKER_LAYER_GZIP,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    CorruptLayer,
    DecompressionLimit,
    check_magic,
    layer_compression,
    open_decompressed,
    sniff_compression,
)
from chunkstore.images.recompress import (
    DEFAULT_GZIP_LEVEL,
    Reproduction,
    detect_gzip_params,
    find_reproduction,
    recompress,
)
from index.ids import Digest, sha256

CORPUS = Path("/var/tmp/chunkstore-corpus/oci")


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
    assert b"".join(recompress(io.BytesIO(data), None, "gzip")) != b""
    again = b"".join(recompress(io.BytesIO(data), None, "gzip"))
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
    again = b"".join(recompress(io.BytesIO(data), None, "zstd"))
    assert zstandard.ZstdDecompressor().decompressobj().decompress(again) == data


def test_none_passes_through() -> None:
    data = _payload(1000)
    assert open_decompressed(io.BytesIO(data), "none").read() == data
    assert b"".join(recompress(io.BytesIO(data), None, "none")) == data


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


def test_detect_gzip_params() -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="layer.tar", mode="wb", fileobj=buf, mtime=1234, compresslevel=9):
        pass
    head = detect_gzip_params(buf.getvalue())
    assert head is not None
    assert (head.mtime, head.xfl, head.fname, head.level_hint) == (1234, 2, b"layer.tar", 9)
    assert detect_gzip_params(b"not gzip at all") is None


@pytest.mark.parametrize("level", [1, 6, 9])
def test_gzip_reproduction_found(level: int) -> None:
    data = _payload()
    buf = io.BytesIO()
    with gzip.GzipFile(
        filename="x.tar", mode="wb", fileobj=buf, mtime=99, compresslevel=level
    ) as g:
        g.write(data)
    blob = buf.getvalue()
    rep = find_reproduction(
        _factory(data), sha256(blob), len(blob), "gzip", compressed_prefix=blob[: 1 << 20]
    )
    assert rep is not None
    assert rep.level == level
    assert b"".join(recompress(io.BytesIO(data), rep, "gzip")) == blob
    assert Reproduction.from_dict(rep.to_dict()) == rep


def test_gzip_reproduction_without_prefix() -> None:
    data = _payload(50_000)
    blob = b"".join(recompress(io.BytesIO(data), None, "gzip"))
    rep = find_reproduction(_factory(data), sha256(blob), len(blob), "gzip")
    assert rep is not None and rep.level == DEFAULT_GZIP_LEVEL
    other = gzip.compress(data, compresslevel=1, mtime=5)
    assert find_reproduction(_factory(data), sha256(other), len(other), "gzip") is None


def test_gzip_reproduction_not_found() -> None:
    data = _payload()
    comp = zlib.compressobj(6, zlib.DEFLATED, 31, 8, zlib.Z_FILTERED)
    blob = comp.compress(data) + comp.flush()
    rep = find_reproduction(_factory(data), sha256(blob), len(blob), "gzip", compressed_prefix=blob)
    assert rep is None


@pytest.mark.parametrize(
    ("level", "checksum", "content_size"),
    [(1, False, False), (3, True, True), (7, False, True), (19, True, False)],
)
def test_zstd_reproduction_found(level: int, checksum: bool, content_size: bool) -> None:
    data = _payload(100_000)
    cctx = zstandard.ZstdCompressor(
        level=level, write_checksum=checksum, write_content_size=content_size
    )
    blob = b"".join(cctx.read_to_iter(io.BytesIO(data), size=len(data) if content_size else -1))
    rep = find_reproduction(
        _factory(data), sha256(blob), len(blob), "zstd", compressed_prefix=blob[: 1 << 20]
    )
    assert rep is not None
    assert (rep.level, rep.checksum, rep.content_size is not None) == (
        level,
        checksum,
        content_size,
    )
    assert b"".join(recompress(io.BytesIO(data), rep, "zstd")) == blob
    assert Reproduction.from_dict(rep.to_dict()) == rep


def test_reproduction_record_rejects_garbage() -> None:
    with pytest.raises(UsageError, match="malformed"):
        Reproduction.from_dict({"compression": "gzip", "level": 6})
    with pytest.raises(UsageError, match="malformed"):
        Reproduction.from_dict({"compression": "lz4", "level": 1})


@pytest.mark.integration
@pytest.mark.skipif(not CORPUS.is_dir(), reason="image corpus not built (tools/build_corpus)")
def test_go_made_corpus_layer_not_reproduced() -> None:
    from chunkstore.images.oci_layout import OCILayout

    layout = OCILayout(CORPUS)
    image = layout.resolve("bookworm-minbase")[0]
    layer = image.layers[0]
    with layout.open_blob(layer) as r:
        prefix = r.read(1 << 20)

    def tar_stream() -> io.BufferedReader:
        return open_decompressed(open(layout.blob_path(layer.digest), "rb"), "gzip")

    assert (
        find_reproduction(
            tar_stream,
            layer.digest,
            layer.size,
            "gzip",
            compressed_prefix=prefix,
        )
        is None
    )


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
        first = b"".join(recompress(io.BytesIO(data), None, "gzip"))
        assert b"".join(recompress(io.BytesIO(data), None, "gzip")) == first
        assert gzip.decompress(first) == data
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        assert d.decompress(first) == data and d.eof and d.unused_data == b""
