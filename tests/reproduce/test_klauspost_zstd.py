"""klauspost compress/zstd 1.15.12 as containers/image uses it, reproduced byte for byte
(chunkstore.native._kpzstd, family ``klauspost-zstd``).

Expectations come from the real Go code: a small program built (GOPATH mode) over Debian's
golang-github-klauspost-compress-dev sources that drives ``zstd.NewWriter`` the way
containers/image does (the first 8 bytes with ``Write``, the rest with ``ReadFrom``), and from the
real producer, ``skopeo copy --dest-compress-format zstd``. Without go, those sources or skopeo the
tests skip, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkstore.native import _kpzstd
from chunkstore.reproduce.klauspost_zstd_family import (
    CONTAINERS_IMAGE_PREFIX,
    VERSION,
    KlauspostZstdFamily,
)
from chunkstore.reproduce.model import Encoder, ParamValue
from tests.producers import GoServer, build_go, missing, oci_image, realistic_tar, require

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
KIB = 1024
MIB = 1 << 20
GOPATH = "/usr/share/gocode"
SOURCES = Path(GOPATH, "src/github.com/klauspost/compress/zstd")

_REF_SOURCE = r"""
// kzref: zstd frames by klauspost compress/zstd, fed as containers/image feeds them.
//   kzref serve     requests: int32 level (klauspost EncoderLevel, 0: none given),
//                   int32 concurrency (0: default), uint32 length, data;
//                   replies: uint32 length, output
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
)

// chunks hands out data in pieces, as a pipe would.
type chunks struct{ d []byte }

func (c *chunks) Read(p []byte) (int, error) {
	if len(c.d) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.d[:min(len(c.d), 32768)])
	c.d = c.d[n:]
	return n, nil
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func encode(w io.Writer, level, conc int, data []byte) error {
	var opts []zstd.EOption
	if level > 0 {
		opts = append(opts, zstd.WithEncoderLevel(zstd.EncoderLevel(level)))
	}
	if conc > 0 {
		opts = append(opts, zstd.WithEncoderConcurrency(conc))
	}
	zw, err := zstd.NewWriter(w, opts...)
	if err != nil {
		return err
	}
	k := min(8, len(data))
	if k > 0 {
		if _, err := zw.Write(data[:k]); err != nil {
			return err
		}
	}
	if _, err := zw.ReadFrom(&chunks{data[k:]}); err != nil {
		return err
	}
	return zw.Close()
}

func main() {
	in := bufio.NewReaderSize(os.Stdin, 1<<20)
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	var hdr [12]byte
	for {
		if _, err := io.ReadFull(in, hdr[:]); err != nil {
			return
		}
		level := int(int32(binary.LittleEndian.Uint32(hdr[0:])))
		conc := int(int32(binary.LittleEndian.Uint32(hdr[4:])))
		data := make([]byte, binary.LittleEndian.Uint32(hdr[8:]))
		if _, err := io.ReadFull(in, data); err != nil {
			panic(err)
		}
		var buf bytes.Buffer
		if err := encode(&buf, level, conc, data); err != nil {
			panic(err)
		}
		var n [4]byte
		binary.LittleEndian.PutUint32(n[:], uint32(buf.Len()))
		out.Write(n[:])
		out.Write(buf.Bytes())
		out.Flush()
	}
}
"""


class GoReference(GoServer):
    """The Go program, kept running: one request per frame."""

    def frame(self, data: bytes, level: int = 0, concurrency: int = 0) -> bytes:
        return self.request(level, concurrency, data)


@pytest.fixture(scope="session")
def goref(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoReference]:
    if not (SOURCES / "encoder.go").is_file():
        missing("klauspost sources missing (golang-github-klauspost-compress-dev)")
    binary = build_go(_REF_SOURCE, tmp_path_factory.mktemp("kzref"), "kzref", gopath=GOPATH)
    ref = GoReference(binary, "serve")
    yield ref
    ref.close()


@pytest.fixture(scope="session")
def real_tar() -> bytes:
    data = realistic_tar(3 * MIB)
    assert len(data) > 2 * MIB
    return data


def _pieces(data: bytes, cuts: Sequence[int]) -> Iterator[bytes]:
    pos = 0
    for cut in sorted(cuts):
        yield data[pos:cut]
        pos = cut
    yield data[pos:]


def _encode(enc: Encoder, pieces: Iterator[bytes]) -> bytes:
    out = [enc.compress(piece) for piece in pieces]
    out.append(enc.finish())
    return b"".join(out)


def _mine(data: bytes, cuts: Sequence[int] = (), level: int = 2) -> bytes:
    return _encode(_kpzstd.Encoder(level), _pieces(data, cuts))


#: klauspost EncoderLevel numbers reproduced: SpeedFastest, SpeedDefault.
LEVELS = [1, 2]


def _first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def _assert_same(mine: bytes, ref: bytes, what: str) -> None:
    if mine != ref:
        at = _first_difference(mine, ref)
        pytest.fail(f"{what}: {len(mine)} vs {len(ref)} bytes, first difference at {at}")


# ------------------------------------------------------------------ fixed inputs

_RNG = random.Random(20240602)
_INPUTS = {
    "empty": b"",
    "one-byte": b"\x7f",
    "prefix-only": b"12345678",
    "prefix-and-one": b"123456789",
    "short-text": b"a zstd frame is a sequence of blocks; " * 3,
    "incompressible": _RNG.randbytes(300 * KIB),
    "repetitive": b"layer" * 40000 + bytes(200 * KIB),
    "one-value": bytes(3 * 128 * KIB + 8),
    "small-alphabet": bytes(_RNG.choice(b"ACGT") for _ in range(150 * KIB)),
    "two-symbols": bytes(_RNG.choice(b"ab") for _ in range(70 * KIB)),
}


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", sorted(_INPUTS))
def test_fixed_inputs(goref: GoReference, name: str, level: int) -> None:
    data = _INPUTS[name]
    _assert_same(_mine(data, level=level), goref.frame(data, level), name)


def test_real_tar_and_concurrency(goref: GoReference, real_tar: bytes) -> None:
    """A multi-MB layer; the Go writer's concurrency (sync or async blocks) does not matter."""
    for level in LEVELS:
        mine = _mine(real_tar, level=level)
        assert zstandard.ZstdDecompressor().decompressobj().decompress(mine) == real_tar
        for concurrency in (0, 1, 4):
            ref = goref.frame(real_tar, level, concurrency)
            _assert_same(mine, ref, f"level {level} concurrency {concurrency}")


def test_block_boundaries(goref: GoReference, real_tar: bytes) -> None:
    """Inputs ending exactly on, just before and just after a 128 KiB block."""
    for level, block in ((1, 64 * KIB), (2, 128 * KIB)):
        for size in (8 + block - 1, 8 + block, 8 + block + 1, 8 + 2 * block, 5 * block + 3):
            data = real_tar[:size]
            _assert_same(_mine(data, level=level), goref.frame(data, level), f"{size} bytes")


def test_split_points_do_not_matter(real_tar: bytes) -> None:
    data = real_tar[: 1 * MIB + 777]
    whole = _mine(data)
    rng = random.Random(7)
    for _ in range(3):
        cuts = sorted(rng.randrange(len(data)) for _ in range(rng.randrange(1, 40)))
        assert _mine(data, cuts) == whole
    assert _mine(data, list(range(40))) == whole  # byte by byte through the prefix
    # memoryview and bytearray inputs
    enc = _kpzstd.Encoder()
    out = enc.compress(memoryview(data)[:100]) + enc.compress(bytearray(data[100:]))
    assert out + enc.finish() == whole


def _mixed(draw: st.DrawFn) -> bytes:
    pieces = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=300),
                st.builds(
                    lambda b, n: b * n, st.binary(min_size=1, max_size=12), st.integers(1, 400)
                ),
                st.builds(bytes, st.integers(0, 3000)),
            ),
            max_size=40,
        )
    )
    return b"".join(pieces)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hypothesis_inputs(goref: GoReference, data: st.DataObject) -> None:
    raw = _mixed(data.draw)
    mult = data.draw(st.integers(1, 20))
    raw = raw * mult
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=5))
    level = data.draw(st.sampled_from(LEVELS))
    _assert_same(_mine(raw, cuts, level), goref.frame(raw, level), f"{len(raw)} bytes")


# ------------------------------------------------------------------ family


def test_family_candidates_from_header(real_tar: bytes) -> None:
    fam = KlauspostZstdFamily()
    frame = _mine(real_tar[: 300 * KIB])
    (cand,) = fam.candidates(frame[: 64 * KIB])
    assert cand.family == "klauspost-zstd"
    assert cand.params == {"version": VERSION, "level": "default", "prefix": 8}
    assert _encode(cand.open(), iter([real_tar[: 300 * KIB]])) == frame
    assert fam.candidates(frame[:6]) != []
    assert fam.candidates(_mine(b"abc")) != []
    # libzstd's own frames: content size / no checksum / other first block
    assert fam.candidates(zstandard.ZstdCompressor().compress(real_tar[:4096])) == []
    libz = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False)
    assert fam.candidates(libz.compressobj().compress(real_tar[: 300 * KIB])) == []
    assert fam.candidates(frame[:4] + b"\x24" + frame[5:]) == []  # content size flag
    (fast,) = fam.candidates(frame[:5] + b"\x60" + frame[6:])  # 4 MiB window
    assert fast.params == {"version": VERSION, "level": "fastest", "prefix": 8}
    assert fam.candidates(frame[:5] + b"\x70" + frame[6:]) == []  # 16 MiB: better, not done
    assert fam.candidates(frame[:6] + b"\x41\x00\x00" + frame[9:]) == []  # last block
    assert fam.candidates(frame[:6] + b"\x48\x00\x00" + frame[9:]) == []  # 9 bytes
    assert fam.candidates(b"") == []
    assert fam.candidates(b"\x1f\x8b\x08\x00\x00\x00") == []


def test_family_rejects_bad_params() -> None:
    fam = KlauspostZstdFamily()
    good: dict[str, ParamValue] = {"version": VERSION, "level": "default", "prefix": 8}
    fam.open(good)
    for key, bad in (
        ("version", "1.16.0"),
        ("level", "better"),
        ("level", 3),
        ("prefix", 0),
        ("prefix", True),
        ("prefix", "8"),
        ("prefix", 1 << 17),
    ):
        with pytest.raises(ValueError):
            fam.open({**good, key: bad})
    for kw in ({"level": 0}, {"level": 3}, {"prefix": 0}, {"prefix": -1}, {"prefix": 65537}):
        with pytest.raises(ValueError):
            _kpzstd.Encoder(**kw)


def test_encoder_errors_after_finish() -> None:
    enc = _kpzstd.Encoder()
    assert enc.level == _kpzstd.LEVEL_DEFAULT and enc.prefix == CONTAINERS_IMAGE_PREFIX
    enc.compress(b"data")
    enc.finish()
    with pytest.raises(ValueError, match="finished"):
        enc.compress(b"more")
    with pytest.raises(ValueError, match="finished"):
        enc.finish()
    with pytest.raises(TypeError):
        _kpzstd.Encoder().compress("text")  # type: ignore[arg-type]


def test_encoders_run_concurrently(real_tar: bytes) -> None:
    """The GIL is released: threads encoding at once give the same bytes as one alone."""
    data = real_tar[: 2 * MIB]
    want = _mine(data)
    got: list[bytes] = []

    def run() -> None:
        got.append(_mine(data, [len(data) // 3]))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [want] * 3


# ------------------------------------------------------------------ the real producer


def _layer_blob(layout: Path, tag: str) -> tuple[str, bytes]:
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    blobs = layout / "blobs/sha256"
    manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_text())
    (layer,) = manifest["layers"]
    return layer["mediaType"], (blobs / layer["digest"].split(":")[1]).read_bytes()


@pytest.mark.parametrize(
    ("level", "name"), [(None, "default"), (4, "default"), (1, "fastest"), (7, None)]
)
def test_skopeo_zstd_layer_reproduced(
    tmp_path: Path, real_tar: bytes, level: int | None, name: str | None
) -> None:
    """skopeo's layer is reproduced; at the levels not done (6+) the header rules us out."""
    skopeo = require("skopeo")
    layer = real_tar[: 2 * MIB + 12345]
    oci_image(tmp_path / "src", "src", [layer], [layer], LAYER_TAR)
    cmd = [skopeo, "--insecure-policy", "copy", "--quiet", "--dest-compress"]
    cmd += ["--dest-compress-format", "zstd"]
    if level is not None:
        cmd += ["--dest-compress-level", str(level)]
    cmd += [f"oci:{tmp_path / 'src'}:src", f"oci:{tmp_path / 'dst'}:dst"]
    subprocess.run(cmd, check=True, capture_output=True)
    media_type, blob = _layer_blob(tmp_path / "dst", "dst")
    assert media_type.endswith("+zstd")
    cands = KlauspostZstdFamily().candidates(blob[: 64 * KIB])
    if name is None:
        assert cands == []
        return
    assert [c.params["level"] for c in cands] == [name]
    _assert_same(_encode(cands[0].open(), _pieces(layer, [3, 100_000])), blob, "skopeo layer")
