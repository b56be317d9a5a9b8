"""Go's compress/gzip + compress/flate reproduced byte for byte (chunkstore.native._goflate,
go_family).

Every expectation is Go's own output on the same bytes: a few lines over the standard library,
built with the installed ``go`` (tools/setup installs golang-go). Without ``go`` the tests skip,
except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import random
import subprocess
import tarfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkstore.native._goflate import Deflater
from chunkstore.reproduce.catalog import BlobEncoder
from chunkstore.reproduce.go_family import GoFlateFamily
from chunkstore.reproduce.gzipfmt import parse_gzip_header
from tests.producers import build_go

LEVELS = range(-2, 10)
MIB = 1 << 20

# gzips stdin at the level given (and optionally with a Name and a ModTime), in one Write.
_GO_PROGRAM = """\
package main

import (
	"compress/gzip"
	"io"
	"os"
	"strconv"
	"time"
)

func main() {
	level, _ := strconv.Atoi(os.Args[1])
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		panic(err)
	}
	zw, err := gzip.NewWriterLevel(os.Stdout, level)
	if err != nil {
		panic(err)
	}
	if len(os.Args) > 3 {
		zw.Name = os.Args[2]
		mtime, _ := strconv.ParseInt(os.Args[3], 10, 64)
		zw.ModTime = time.Unix(mtime, 0)
	}
	if _, err := zw.Write(data); err != nil {
		panic(err)
	}
	if err := zw.Close(); err != nil {
		panic(err)
	}
}
"""


@pytest.fixture(scope="session")
def go_gzip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go program, built once per session with the standard library only (no network)."""
    return build_go(_GO_PROGRAM, tmp_path_factory.mktemp("gogzip"), "gogzip")


def _go(binary: Path, level: int, data: bytes, *extra: str) -> bytes:
    return subprocess.run(
        [str(binary), str(level), *extra], input=data, capture_output=True, check=True
    ).stdout


def _pieces(data: bytes, cuts: Sequence[int]) -> Iterator[bytes]:
    pos = 0
    for cut in sorted(cuts):
        yield data[pos:cut]
        pos = cut
    yield data[pos:]


def _ours(real: bytes, level: int, pieces: Iterator[bytes]) -> bytes:
    """The blob our family makes: Go's header kept, our deflate stream, the computed trailer."""
    header = parse_gzip_header(real)
    assert header is not None
    encoder = BlobEncoder("gzip", GoFlateFamily().open({"level": level}), header.raw)
    out = [encoder.compress(piece) for piece in pieces]
    out.append(encoder.finish())
    return b"".join(out)


def _assert_same(binary: Path, level: int, data: bytes, cuts: Sequence[int] = ()) -> None:
    real = _go(binary, level, data)
    ours = _ours(real, level, _pieces(data, cuts))
    if ours != real:
        at = next((i for i, (a, b) in enumerate(zip(ours, real, strict=False)) if a != b), None)
        pytest.fail(
            f"level {level}, {len(data)} bytes in {len(cuts) + 1} pieces: ours {len(ours)} bytes, "
            f"Go's {len(real)}, first difference at {at}"
        )


@pytest.fixture(scope="session")
def layer_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A realistic layer: a tar of system files (text, binaries, compressed docs), about 6 MiB."""
    path = tmp_path_factory.mktemp("layer") / "layer.tar"
    total = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for root in ("/usr/lib/python3", "/usr/share/doc", "/usr/bin", "/usr/lib"):
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    file = Path(dirpath) / name
                    if file.is_symlink() or not file.is_file():
                        continue
                    size = file.stat().st_size
                    if size > 2 * MIB:
                        continue
                    try:
                        tar.add(file, recursive=False)
                    except OSError:
                        continue
                    total += size
                    if total > 6 * MIB:
                        break
                if total > 6 * MIB:
                    break
            if total > 6 * MIB:
                break
    data = path.read_bytes()
    assert len(data) > 4 * MIB
    return data


_SMALL = {
    "empty": b"",
    "one byte": b"x",
    "sixteen bytes": b"0123456789abcdef",
    "seventeen bytes": b"0123456789abcdefg",
    "short text": b"hello, hello, hello world\n" * 5,
    "high bytes (9-bit fixed codes)": bytes(range(250, 144, -7)) * 2,
    "random": random.Random(1).randbytes(300_000),
    "zeros": bytes(400_000),
    "repetitive": b"abcabcabd" * 50_000 + bytes(range(256)) * 400,
    "period beyond the window": random.Random(2).randbytes(33_000) * 5,
}


@pytest.mark.parametrize("level", LEVELS)
def test_small_and_synthetic_inputs(go_gzip: Path, level: int) -> None:
    for data in _SMALL.values():
        _assert_same(go_gzip, level, data)


@pytest.mark.parametrize("level", LEVELS)
def test_layer_tar(go_gzip: Path, layer_tar: bytes, level: int) -> None:
    _assert_same(go_gzip, level, layer_tar)


def test_long_stream_rebases_its_positions(go_gzip: Path, layer_tar: bytes) -> None:
    """Past 16 MiB levels 2..9 renumber their hash chains; the output must not change."""
    rnd = random.Random(3)
    data = b"".join(layer_tar[rnd.randrange(1 << 16) :] for _ in range(3))
    assert len(data) > 17 * MIB
    _assert_same(go_gzip, 4, data, cuts=[rnd.randrange(len(data)) for _ in range(20)])


@pytest.mark.parametrize("level", [-2, 0, 1, 2, 6, 9])
def test_output_does_not_depend_on_the_pieces(go_gzip: Path, layer_tar: bytes, level: int) -> None:
    rnd = random.Random(level)
    data = layer_tar[: 3 * MIB]
    # tiny pieces around window and block edges, and a few large ones
    cuts = [rnd.randrange(len(data)) for _ in range(40)]
    cuts += [k * 65535 + d for k in range(1, 40) for d in (-1, 0, 1)]
    cuts += [k * 32768 + d for k in range(1, 80) for d in (-263, -262, -1, 0)]
    _assert_same(go_gzip, level, data, cuts=[c for c in cuts if 0 <= c <= len(data)])


def _data() -> st.SearchStrategy[bytes]:
    """Bytes with structure: random runs, repeats of earlier parts, long single-byte runs."""

    def build(parts: list[tuple[int, bytes, int]]) -> bytes:
        out = bytearray()
        for kind, chunk, n in parts:
            if kind == 0 or not out:
                out += chunk
            elif kind == 1:
                start = n % len(out)
                out += out[start : start + len(chunk) * 8 + 3]
            else:
                out += chunk[:1] * (n % 3000)
        return bytes(out)

    part = st.tuples(
        st.integers(0, 2), st.binary(min_size=1, max_size=600), st.integers(0, 1 << 20)
    )
    return st.lists(part, max_size=40).map(build)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_data(), level=st.sampled_from(list(LEVELS)), seed=st.integers(0, 1 << 30))
def test_generated_inputs_and_pieces(go_gzip: Path, data: bytes, level: int, seed: int) -> None:
    rnd = random.Random(seed)
    cuts = [rnd.randrange(len(data) + 1) for _ in range(rnd.randrange(4))]
    _assert_same(go_gzip, level, data, cuts=cuts)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=70_000), level=st.sampled_from(list(LEVELS)))
def test_generated_binary(go_gzip: Path, data: bytes, level: int) -> None:
    _assert_same(go_gzip, level, data)


def test_candidates_follow_go_headers(go_gzip: Path) -> None:
    family = GoFlateFamily()
    for level in LEVELS:
        real = _go(go_gzip, level, b"some layer\n")
        found = family.candidates(real[:10])
        levels = [c.params["level"] for c in found]
        assert {c.family for c in found} == {"go-flate"}
        want = 6 if level == -1 else level
        assert want in levels, (level, levels)
        if level == 9:
            assert levels == [9]
        elif level == 1:
            assert levels == [1]
        else:
            assert levels == [6, 5, 4, 7, 8, 3, 2, 0, -2]
    # a Name and a ModTime change the header, not the candidates; the header is kept verbatim
    data = b"named layer " * 1000
    real = _go(go_gzip, 6, data, "layer.tar", "1700000000")
    header = parse_gzip_header(real)
    assert header is not None and header.fname == b"layer.tar" and header.mtime == 1700000000
    first = family.candidates(header.raw)[0]
    assert first.label == "go-flate level=6"
    assert _ours(real, 6, iter([data])) == real


def test_candidates_reject_other_producers() -> None:
    family = GoFlateFamily()
    go_default = bytes.fromhex("1f8b08000000000000ff")
    assert family.candidates(go_default)
    assert family.candidates(go_default[:9] + b"\x03") == []  # OS Unix: GNU gzip, pigz, zlib
    assert family.candidates(go_default[:8] + b"\x06\xff") == []  # an XFL Go never writes
    assert family.candidates(b"\x1f\x8b\x08\x02" + go_default[4:] + b"\x00\x00") == []  # FHCRC
    assert family.candidates(b"not gzip") == []


def test_open_validates_params() -> None:
    family = GoFlateFamily()
    for bad in ({"level": 10}, {"level": -3}, {"level": True}, {"level": "6"}, {}):
        with pytest.raises(ValueError):
            family.open(bad)
    with pytest.raises(ValueError):
        family.open({"level": 6, "extra": 1})
    assert family.open({"level": -1}).compress(b"") == b""


def test_deflater_api() -> None:
    with pytest.raises(ValueError):
        Deflater(10)
    with pytest.raises(ValueError):
        Deflater(-3)
    with pytest.raises(TypeError):
        Deflater(6).compress("text")  # type: ignore[arg-type]
    d = Deflater(6)
    assert d.level == 6
    assert Deflater(-1).level == -1
    data = b"spam and eggs " * 5000
    out = d.compress(bytearray(data[:100])) + d.compress(memoryview(data)[100:]) + d.finish()
    other = Deflater(-1)
    assert other.compress(data) + other.finish() == out
    with pytest.raises(ValueError, match="after finish"):
        d.compress(b"more")
    with pytest.raises(ValueError, match="after finish"):
        d.finish()


def test_threads_give_the_same_output(layer_tar: bytes) -> None:
    """The GIL is released while compressing; encoders in parallel threads stay independent."""
    data = layer_tar[: 2 * MIB]
    expected = {}
    for level in (1, 6):
        d = Deflater(level)
        expected[level] = d.compress(data) + d.finish()
    results: dict[tuple[int, int], bytes] = {}

    def work(level: int, slot: int) -> None:
        d = Deflater(level)
        out = [d.compress(data[i : i + 100_000]) for i in range(0, len(data), 100_000)]
        results[level, slot] = b"".join(out) + d.finish()

    threads = [threading.Thread(target=work, args=(lv, k)) for lv in (1, 6) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(out == expected[key[0]] for key, out in results.items())
    assert len(results) == 4
