"""The reproduction probe: candidates recognised from one read, exactness to the last byte."""

from __future__ import annotations

import gzip
import io
import random
import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkstore.reproduce import catalog
from chunkstore.reproduce.gzipfmt import parse_gzip_header
from chunkstore.reproduce.model import Candidate, Encoder
from chunkstore.reproduce.probe import ProbeResult, ReproductionProbe


def _payload(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(400)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
        if rng.random() < 0.01:
            out += rng.randbytes(200)
    return bytes(out[:n])


def _run(blob: bytes, plain: bytes, compression: str, *, piece: int = 65536) -> ProbeResult:
    """Feed the probe as a backup does: compressed bytes, then what they decompress to."""
    d = (
        zlib.decompressobj(31)
        if compression == "gzip"
        else zstandard.ZstdDecompressor().decompressobj()
    )
    with ReproductionProbe(compression) as probe:
        for i in range(0, len(blob), piece):
            part = blob[i : i + piece]
            probe.original(part)
            out = d.decompress(part)
            if out:
                probe.plain(out)
        return probe.result()


def _roundtrip(result: ProbeResult, plain: bytes, compression: str) -> bytes:
    assert result.reproduce is not None
    pieces = iter([plain[i : i + 100_000] for i in range(0, len(plain), 100_000)])
    return b"".join(catalog.reproduce_blob(pieces, compression, result.reproduce))


@pytest.mark.parametrize("level", [1, 5, 6, 9])
def test_python_gzip_is_reproduced(level: int) -> None:
    plain = _payload(700_000, level)
    buf = io.BytesIO()
    with gzip.GzipFile(
        filename="x.tar", mode="wb", fileobj=buf, mtime=99, compresslevel=level
    ) as g:
        g.write(plain)
    blob = buf.getvalue()
    result = _run(blob, plain, "gzip")
    assert result.reproduce is not None
    assert result.reproduce.family == "zlib"
    assert result.reproduce.params["level"] == level
    assert result.original_size == len(blob)
    assert _roundtrip(result, plain, "gzip") == blob


def test_unknown_gzip_settings_are_not_claimed() -> None:
    plain = _payload(300_000)
    comp = zlib.compressobj(6, zlib.DEFLATED, 31, 8, zlib.Z_FILTERED)
    blob = comp.compress(plain) + comp.flush()
    result = _run(blob, plain, "gzip")
    assert result.reproduce is None
    assert result.tried > 0


def test_a_difference_in_the_last_byte_is_caught() -> None:
    plain = _payload(200_000)
    blob = bytearray(gzip.compress(plain, compresslevel=6, mtime=0))
    # The gzip trailer's ISIZE is not checked by a lenient reader; flip a CRC byte instead and
    # feed the plain bytes ourselves: the only difference is in the very last bytes.
    blob[-6] ^= 0xFF
    with ReproductionProbe("gzip") as probe:
        probe.original(bytes(blob))
        probe.plain(plain)
        assert probe.result().reproduce is None


@pytest.mark.parametrize(
    ("level", "checksum", "content_size"),
    [(1, False, False), (3, True, True), (7, False, True), (19, True, False)],
)
def test_zstd_streaming_is_reproduced(level: int, checksum: bool, content_size: bool) -> None:
    plain = _payload(400_000, level)
    cctx = zstandard.ZstdCompressor(
        level=level, write_checksum=checksum, write_content_size=content_size
    )
    size = len(plain) if content_size else -1
    blob = b"".join(cctx.read_to_iter(io.BytesIO(plain), size=size))
    result = _run(blob, plain, "zstd")
    assert result.reproduce is not None
    assert result.reproduce.params == {
        "level": level,
        "checksum": checksum,
        "content_size": size,
    }
    assert _roundtrip(result, plain, "zstd") == blob


def test_empty_layer() -> None:
    blob = gzip.compress(b"", compresslevel=9, mtime=0)
    result = _run(blob, b"", "gzip")
    assert result.reproduce is not None
    assert _roundtrip(result, b"", "gzip") == blob


@settings(max_examples=25, deadline=None)
@given(
    plain=st.binary(max_size=50_000),
    level=st.integers(1, 9),
    piece=st.integers(1, 70_000),
)
def test_any_input_any_feeding(plain: bytes, level: int, piece: int) -> None:
    blob = gzip.compress(plain, compresslevel=level, mtime=0)
    result = _run(blob, plain, "gzip", piece=piece)
    assert result.reproduce is not None
    assert _roundtrip(result, plain, "gzip") == blob


def test_gzip_header_fields() -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="layer.tar", mode="wb", fileobj=buf, mtime=1234, compresslevel=9):
        pass
    head = parse_gzip_header(buf.getvalue())
    assert head is not None
    assert (head.mtime, head.xfl, head.fname, head.level_hint) == (1234, 2, b"layer.tar", 9)
    assert parse_gzip_header(b"not gzip at all") is None


def test_probe_stops_cleanly_when_abandoned() -> None:
    probe = ReproductionProbe("gzip")
    with probe:
        probe.original(gzip.compress(b"x" * 1000))
    assert not probe._thread.is_alive()


def test_a_record_naming_an_unknown_family_is_refused_not_guessed() -> None:
    from chunkstore.errors import UsageError
    from index.image import Reproduce

    header = bytes.fromhex("1f8b08000000000000ff")
    with pytest.raises(UsageError, match=r"'go-flate-1\.27'.*newer chunkstore"):
        catalog.open_blob_encoder("gzip", Reproduce("go-flate-1.27", {"level": 6}, header))
    with pytest.raises(UsageError, match="settings for the go-flate compressor are invalid"):
        catalog.open_blob_encoder("gzip", Reproduce("go-flate", {"level": 42}, header))
    with pytest.raises(UsageError, match="header"):
        catalog.open_blob_encoder("gzip", Reproduce("go-flate", {"level": 6}, b"\x1f\x8b"))
    with pytest.raises(UsageError, match="settings for the klauspost-pgzip compressor"):
        catalog.open_blob_encoder(
            "gzip",
            Reproduce(
                "klauspost-pgzip", {"level": 6, "block_size": 1 << 20, "version": "9.9"}, header
            ),
        )


class _Counting:
    """An encoder wrapper that counts the plain bytes it was given."""

    def __init__(self, inner: Encoder, fed: list[int]) -> None:
        self._inner = inner
        self._fed = fed

    def compress(self, data: bytes | memoryview) -> bytes:
        self._fed[0] += len(data)
        return self._inner.compress(data)

    def finish(self) -> bytes:
        return self._inner.finish()


def _zlib_candidate(level: int, fed: list[int], **fast: object) -> Candidate:
    fam = catalog.family("gzip", "zlib")
    params = {"level": level, "mem_level": 8, "strategy": "default", "wbits": 15}
    return Candidate("zlib", params, lambda: _Counting(fam.open(params), fed), **fast)  # type: ignore[arg-type]


def _gzip(plain: bytes, level: int) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=level) as g:
        g.write(plain)
    return buf.getvalue()


def test_wrong_candidates_stop_costing_within_their_first_block() -> None:
    # Fed in 4 MiB pieces, a wrong candidate still sees only a few small steps of the layer.
    plain = _payload(6 << 20, 3)
    blob = _gzip(plain, 6)
    wrong, right = [0], [0]
    cands = [_zlib_candidate(1, wrong), _zlib_candidate(6, right)]
    d = zlib.decompressobj(31)
    with ReproductionProbe("gzip", candidates=cands) as probe:
        for i in range(0, len(blob), 4 << 20):
            probe.original(blob[i : i + (4 << 20)])
            probe.plain(d.decompress(blob[i : i + (4 << 20)]))
        result = probe.result()
    assert result.reproduce is not None and result.reproduce.params["level"] == 6
    assert right[0] == len(plain)
    assert 0 < wrong[0] <= 256 << 10


@pytest.mark.parametrize("fast_is_right", [True, False])
def test_a_lone_survivor_restarts_on_its_fast_encoder(fast_is_right: bool) -> None:
    plain = _payload(3 << 20, 4)
    blob = _gzip(plain, 6)
    slow, fast, wrong = [0], [0], [0]
    fast_cand = _zlib_candidate(6 if fast_is_right else 5, fast)
    cands = [_zlib_candidate(1, wrong), _zlib_candidate(6, slow, open_fast=fast_cand.open)]
    result = _feed(blob, cands)
    assert result.reproduce is not None and result.reproduce.params["level"] == 6
    if fast_is_right:
        # The survivor ran its slow encoder only until the wrong one dropped out.
        assert fast[0] == len(plain)
        assert slow[0] < len(plain) // 2
    else:
        # A fast encoder that disagrees is dropped at once and the slow one goes on.
        assert slow[0] == len(plain)
        assert fast[0] < len(plain)


def _feed(blob: bytes, cands: list[Candidate], piece: int = 1 << 20) -> ProbeResult:
    d = zlib.decompressobj(31)
    with ReproductionProbe("gzip", candidates=cands) as probe:
        for i in range(0, len(blob), piece):
            probe.original(blob[i : i + piece])
            probe.plain(d.decompress(blob[i : i + piece]))
        return probe.result()


def test_klauspost_pgzip_candidates_offer_a_threaded_encoder() -> None:
    header = bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF])
    cands = catalog.candidates("gzip", header)
    pgzip = [c for c in cands if c.family == "klauspost-pgzip"]
    assert pgzip and all((c.open_fast is not None) == (c.params["block_size"] != 0) for c in pgzip)
