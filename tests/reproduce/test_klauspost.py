"""klauspost pgzip 1.2.5 / compress 1.15.12 reproduced byte for byte (chunkstore.native._kpflate).

Expectations come from the real Go code: a small program built (GOPATH mode) over Debian's
golang-github-klauspost-{compress,pgzip}-dev sources, and the real producers, ``skopeo copy
--dest-compress`` and ``umoci repack``. Without go, those sources, skopeo or umoci the tests
skip, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import shutil
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkstore.native import _kpflate
from chunkstore.reproduce.catalog import BlobEncoder
from chunkstore.reproduce.gzipfmt import parse_gzip_header
from chunkstore.reproduce.klauspost_family import (
    CONTAINERS_IMAGE_BLOCK,
    KLAUSPOST_MTIME,
    UMOCI_BLOCK,
    VERSION,
    KlauspostFamily,
)
from chunkstore.reproduce.model import Candidate, Encoder, ParamValue
from tests.producers import GoServer, build_go, missing, oci_image, require

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
KIB = 1024
MIB = 1 << 20
GOPATH = "/usr/share/gocode"
SOURCES = Path(GOPATH, "src/github.com/klauspost")
LEVELS = list(range(-2, 10))
#: 0 is one flate stream (klauspost's gzip); the rest are pgzip block sizes.
BLOCKS = [CONTAINERS_IMAGE_BLOCK, UMOCI_BLOCK, 64 * KIB, 0]

_REF_SOURCE = r"""
// kpref: gzip by klauspost pgzip (or one klauspost flate stream, raw, for block size 0).
//   kpref LEVEL BLOCKSIZE < in > out        one-shot
//   kpref serve                             requests: int32 level, int32 block size,
//                                           uint32 length, data; replies: uint32 length, output
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"strconv"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/pgzip"
)

func encode(w io.Writer, level, bs int, data []byte) error {
	if bs == 0 {
		fw, err := flate.NewWriter(w, level)
		if err != nil {
			return err
		}
		if _, err := fw.Write(data); err != nil {
			return err
		}
		return fw.Close()
	}
	zw, err := pgzip.NewWriterLevel(w, level)
	if err != nil {
		return err
	}
	if err := zw.SetConcurrency(bs, 4); err != nil {
		return err
	}
	if _, err := zw.Write(data); err != nil {
		return err
	}
	return zw.Close()
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "serve" {
		in := bufio.NewReaderSize(os.Stdin, 1<<20)
		out := bufio.NewWriterSize(os.Stdout, 1<<20)
		var hdr [12]byte
		for {
			if _, err := io.ReadFull(in, hdr[:]); err != nil {
				return
			}
			level := int(int32(binary.LittleEndian.Uint32(hdr[0:])))
			bs := int(int32(binary.LittleEndian.Uint32(hdr[4:])))
			data := make([]byte, binary.LittleEndian.Uint32(hdr[8:]))
			if _, err := io.ReadFull(in, data); err != nil {
				panic(err)
			}
			var buf bytes.Buffer
			if err := encode(&buf, level, bs, data); err != nil {
				panic(err)
			}
			var n [4]byte
			binary.LittleEndian.PutUint32(n[:], uint32(buf.Len()))
			out.Write(n[:])
			out.Write(buf.Bytes())
			out.Flush()
		}
	}
	level, _ := strconv.Atoi(os.Args[1])
	bs, _ := strconv.Atoi(os.Args[2])
	data, err := io.ReadAll(bufio.NewReaderSize(os.Stdin, 1<<20))
	if err != nil {
		panic(err)
	}
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	if err := encode(out, level, bs, data); err != nil {
		panic(err)
	}
	if err := out.Flush(); err != nil {
		panic(err)
	}
}
"""


class GoReference(GoServer):
    """The Go program, kept running: one request per encoding."""

    def gzip(self, data: bytes, level: int, block: int) -> bytes:
        """pgzip's whole gzip member (block > 0) or klauspost flate's raw stream (block 0)."""
        return self.request(level, block, data)

    def body(self, data: bytes, level: int, block: int) -> bytes:
        """The raw deflate stream (what an encoder of the family produces)."""
        out = self.gzip(data, level, block)
        return out if block == 0 else out[10:-8]


@pytest.fixture(scope="session")
def goref(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoReference]:
    if not (SOURCES / "pgzip/gzip.go").is_file() or not (SOURCES / "compress/flate").is_dir():
        missing(
            "klauspost sources missing (golang-github-klauspost-compress-dev, "
            "golang-github-klauspost-pgzip-dev)"
        )
    binary = build_go(_REF_SOURCE, tmp_path_factory.mktemp("kpref"), "kpref", gopath=GOPATH)
    ref = GoReference(binary, "serve")
    yield ref
    ref.close()


def _files_tar(limit: int) -> bytes:
    """A tar of real files under /usr/share (text, binaries, compressed) up to about limit bytes."""
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root in ("/usr/share/common-licenses", "/usr/share/doc", "/usr/share/perl5"):
            for path in sorted(Path(root).rglob("*")):
                if total >= limit:
                    break
                if path.is_symlink() or not path.is_file():
                    continue
                try:
                    size = path.stat().st_size
                    if size > 512 * KIB:
                        continue
                    tar.add(str(path), recursive=False)
                except OSError:
                    continue
                total += size + 512
    return buf.getvalue()


@pytest.fixture(scope="session")
def real_tar() -> bytes:
    data = _files_tar(4 * MIB)
    assert len(data) > 2 * MIB
    return data


def _encode(
    enc: Encoder | _kpflate.PgzipDeflater | _kpflate.Deflater, pieces: Iterator[bytes]
) -> bytes:
    out = [enc.compress(piece) for piece in pieces]
    out.append(enc.finish())
    return b"".join(out)


def _pieces(data: bytes, cuts: Sequence[int]) -> Iterator[bytes]:
    pos = 0
    for cut in sorted(cuts):
        yield data[pos:cut]
        pos = cut
    yield data[pos:]


def _mine(data: bytes, level: int, block: int, cuts: Sequence[int] = (), threads: int = 1) -> bytes:
    if block == 0:
        return _encode(_kpflate.Deflater(level), _pieces(data, cuts))
    return _encode(_kpflate.PgzipDeflater(level, block, threads), _pieces(data, cuts))


def _first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def _assert_same(mine: bytes, ref: bytes, what: str) -> None:
    if mine != ref:
        at = _first_difference(mine, ref)
        pytest.fail(f"{what}: {len(mine)} vs {len(ref)} bytes, first difference at {at}")


# ------------------------------------------------------------------ fixed inputs, every setting

_RNG = random.Random(20240601)
_INPUTS = {
    "empty": b"",
    "one-byte": b"\x7f",
    "short-text": b"a deflate stream is a sequence of blocks; " * 3,
    "incompressible": _RNG.randbytes(300 * KIB),
    "repetitive": b"layer" * 40000 + bytes(200 * KIB),
    "small-alphabet": bytes(_RNG.choice(b"ACGT") for _ in range(150 * KIB)),
}


@pytest.mark.parametrize("name", sorted(_INPUTS))
def test_small_inputs_every_level_and_block_size(goref: GoReference, name: str) -> None:
    data = _INPUTS[name]
    for level in LEVELS:
        for block in BLOCKS:
            _assert_same(
                _mine(data, level, block), goref.body(data, level, block), f"{name} {level} {block}"
            )


@pytest.mark.parametrize("level", LEVELS)
def test_real_tar_every_block_size(goref: GoReference, real_tar: bytes, level: int) -> None:
    for block in BLOCKS:
        ref = goref.body(real_tar, level, block)
        _assert_same(_mine(real_tar, level, block), ref, f"tar level {level} block {block}")


def test_blocks_on_exact_boundaries(goref: GoReference, real_tar: bytes) -> None:
    """A multiple of the block size ends with an empty closed block (dictionary only)."""
    for level in (-1, 1, 9, 0, -2):
        for block in (64 * KIB, UMOCI_BLOCK):
            data = real_tar[: 3 * block]
            _assert_same(_mine(data, level, block), goref.body(data, level, block), f"{level}")
    data = real_tar[: 16 * KIB + 1]  # the smallest block pgzip allows, filled exactly
    _assert_same(_mine(data, 5, 16 * KIB + 1), goref.body(data, 5, 16 * KIB + 1), "min block")


def test_split_points_and_threads_do_not_matter(goref: GoReference, real_tar: bytes) -> None:
    rng = random.Random(5)
    for level, block in ((-1, CONTAINERS_IMAGE_BLOCK), (-1, UMOCI_BLOCK), (9, 64 * KIB), (2, 0)):
        ref = goref.body(real_tar, level, block)
        for threads in (1, 2, 3):
            cuts = [rng.randint(0, len(real_tar)) for _ in range(rng.randint(1, 40))]
            cuts += [block * 2, block * 2 + 1]  # a cut on and just after a block boundary
            _assert_same(
                _mine(real_tar, level, block, cuts, threads), ref, f"{level} {block} {threads}"
            )
    enc = _kpflate.PgzipDeflater(-1, 64 * KIB, 2)
    cut = 300 * KIB
    out = b"".join(enc.compress(real_tar[i : min(i + 1000, cut)]) for i in range(0, cut, 1000))
    out += enc.compress(real_tar[cut:MIB]) + enc.finish()
    _assert_same(out, goref.body(real_tar[:MIB], -1, 64 * KIB), "1000-byte pieces")


@st.composite
def _structured(draw: st.DrawFn) -> bytes:
    """Inputs with matches at every distance scale, runs, noise and text."""
    parts = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=3000),
                st.builds(
                    lambda b, n: b * n, st.binary(min_size=1, max_size=9), st.integers(1, 3000)
                ),
                st.builds(bytes, st.integers(0, 70000)),
                st.builds(
                    lambda seed, n: random.Random(seed).randbytes(n),
                    st.integers(),
                    st.integers(0, 40000),
                ),
                st.sampled_from(list(_INPUTS.values())).map(lambda b: b[:50000]),
            ),
            max_size=12,
        )
    )
    data = b"".join(parts)
    if draw(st.booleans()) and data:  # reuse earlier bytes further on: long-distance matches
        start = draw(st.integers(0, len(data) - 1))
        data += data[start : start + draw(st.integers(0, 40000))]
    return data


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_hypothesis_inputs(goref: GoReference, data: st.DataObject) -> None:
    payload = data.draw(_structured())
    level = data.draw(st.sampled_from(LEVELS))
    block = data.draw(st.sampled_from([0, 16 * KIB + 1, 20000, 64 * KIB, UMOCI_BLOCK]))
    cuts = data.draw(st.lists(st.integers(0, len(payload)), max_size=6))
    _assert_same(
        _mine(payload, level, block, cuts), goref.body(payload, level, block), "hypothesis"
    )


def test_uniform_window_at_level_9(goref: GoReference) -> None:
    """64 KiB of one byte: klauspost's 16-bit literal counts wrap to 0 in its level 9 cost model."""
    data = b"\x00" * (66 * KIB) + b"\x01\x00" * 3000
    for block in (MIB,):
        _assert_same(_mine(data, 9, block), goref.body(data, 9, block), f"block {block}")


# ------------------------------------------------------------------ the family


def _reproduce(candidate: Candidate, header: bytes, plain: bytes) -> bytes:
    blob = BlobEncoder("gzip", candidate.open(), header)
    return _encode(blob, _pieces(plain, [len(plain) // 3, len(plain) // 2]))


def test_family_reproduces_whole_gzip_members(goref: GoReference, real_tar: bytes) -> None:
    family = KlauspostFamily()
    data = real_tar[: 3 * MIB]
    for level, block in ((-1, CONTAINERS_IMAGE_BLOCK), (-1, UMOCI_BLOCK), (9, MIB), (1, MIB)):
        blob = goref.gzip(data, level, block)
        header = parse_gzip_header(blob)
        assert header is not None and header.mtime == KLAUSPOST_MTIME
        matches = [
            c for c in family.candidates(header.raw) if _reproduce(c, header.raw, data) == blob
        ]
        assert matches and dict(matches[0].params) == {
            "level": level,
            "block_size": block,
            "version": VERSION,
        }
        restored = family.open(matches[0].params)  # as a restore opens it from the record
        assert _encode(BlobEncoder("gzip", restored, header.raw), iter([data])) == blob


def test_candidates_from_header() -> None:
    family = KlauspostFamily()
    pgzip_default = b"\x1f\x8b\x08\x00\x00\x09\x6e\x88\x00\xff"
    got = [dict(c.params) for c in family.candidates(pgzip_default)]
    assert got[0] == {"level": -1, "block_size": CONTAINERS_IMAGE_BLOCK, "version": VERSION}
    assert got[1] == {"level": -1, "block_size": UMOCI_BLOCK, "version": VERSION}
    assert {p["level"] for p in got} == {-2, -1, 0, 2, 3, 4, 6, 7, 8}
    assert len(got) <= 14 and len({tuple(sorted(p.items())) for p in got}) == len(got)
    best = [dict(c.params) for c in family.candidates(pgzip_default[:8] + b"\x02\xff")]
    assert [(p["level"], p["block_size"]) for p in best] == [(9, MIB), (9, UMOCI_BLOCK), (9, 0)]
    fast = family.candidates(pgzip_default[:8] + b"\x04\xff")
    assert {c.params["level"] for c in fast} == {1}
    # another MTIME: a caller set ModTime, a single stream (klauspost's gzip) comes first
    other = [dict(c.params) for c in family.candidates(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")]
    assert other[0]["block_size"] == 0 and other[-1]["block_size"] == UMOCI_BLOCK
    # ruled out: another OS, FHCRC or FTEXT, an XFL klauspost never writes, no gzip at all
    assert family.candidates(pgzip_default[:9] + b"\x03") == []
    assert family.candidates(b"\x1f\x8b\x08\x02" + pgzip_default[4:] + b"\x00\x00") == []
    assert family.candidates(b"\x1f\x8b\x08\x01" + pgzip_default[4:]) == []
    assert family.candidates(pgzip_default[:8] + b"\x06\xff") == []
    assert family.candidates(b"") == []
    named = b"\x1f\x8b\x08\x08" + pgzip_default[4:] + b"layer.tar\x00"
    assert family.candidates(named)


def test_family_rejects_bad_params() -> None:
    family = KlauspostFamily()
    good: dict[str, ParamValue] = {"level": -1, "block_size": MIB, "version": VERSION}
    family.open(good)
    family.open({**good, "block_size": 0})
    bads: list[dict[str, ParamValue]] = [
        {**good, "level": 10},
        {**good, "level": -3},
        {**good, "level": True},
        {**good, "block_size": 16 * KIB},
        {**good, "block_size": "1M"},
        {**good, "version": "1.17.4"},
        {**good, "threads": 2},
        {"level": -1, "block_size": MIB},
    ]
    for bad in bads:
        with pytest.raises((ValueError, KeyError)):
            family.open(bad)


def test_encoder_errors_and_state() -> None:
    for args in ((10, MIB), (-3, MIB), (5, 16 * KIB), (5, -1), (5, MIB, -1), (5, MIB, 65)):
        with pytest.raises(ValueError):
            _kpflate.PgzipDeflater(*args)
    with pytest.raises(ValueError):
        _kpflate.Deflater(11)
    with pytest.raises(TypeError):
        _kpflate.PgzipDeflater(-1, MIB).compress("text")  # type: ignore[arg-type]
    enc = _kpflate.PgzipDeflater(7, 64 * KIB, 2)
    assert (enc.level, enc.block_size, enc.threads) == (7, 64 * KIB, 2)
    assert enc.compress(bytearray(b"abc")) == b""
    assert enc.finish().endswith(b"\x00\x00\xff\xff\x03\x00")
    with pytest.raises(ValueError, match="finished"):
        enc.compress(b"x")
    with pytest.raises(ValueError, match="finished"):
        enc.finish()
    flat = _kpflate.Deflater(-1)
    first = flat.compress(memoryview(b"hello " * 4))
    flushed = flat.flush()
    assert flushed.endswith(b"\x00\x00\xff\xff")
    assert zlib.decompress(first + flushed + flat.finish(), -15) == b"hello " * 4
    with pytest.raises(ValueError, match="finished"):
        flat.finish()


def test_single_thread_output_comes_within_the_block(goref: GoReference, real_tar: bytes) -> None:
    """One thread codes as the input comes: each full 64 KiB window's bytes are final at once
    (what the probe needs to drop a wrong candidate early), and they are pgzip's bytes."""
    enc = _kpflate.PgzipDeflater(-1, MIB, 1)
    early = enc.compress(real_tar[: 200 * KIB])
    assert early
    rest = enc.compress(real_tar[200 * KIB : 3 * MIB]) + enc.finish()
    _assert_same(early + rest, goref.body(real_tar[: 3 * MIB], -1, MIB), "streamed")
    batched = _kpflate.PgzipDeflater(-1, MIB, 2)
    assert batched.compress(real_tar[: MIB + 1]) == b""  # waits for two whole blocks


def test_output_inflates_and_threads_run_concurrently(real_tar: bytes) -> None:
    """Plain sanity without Go: the streams inflate, and encoders in several Python threads
    (each releasing the GIL) give the same bytes as one after the other."""
    data = real_tar[: 2 * MIB]
    expected = {lv: _mine(data, lv, UMOCI_BLOCK) for lv in (-1, 1, 9)}
    for lv, body in expected.items():
        assert zlib.decompress(body, -15) == data, lv
    results: dict[int, bytes] = {}

    def run(lv: int) -> None:
        results[lv] = _mine(data, lv, UMOCI_BLOCK, cuts=[12345, MIB], threads=2)

    workers = [threading.Thread(target=run, args=(lv,)) for lv in expected]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert results == expected


# ------------------------------------------------------------------ the real producers


def _rootfs(root: Path, limit: int) -> None:
    """Copy real files (about `limit` bytes) under root."""
    total = 0
    for src in sorted(Path("/usr/share/doc").rglob("*")):
        if total >= limit:
            break
        if src.is_symlink() or not src.is_file():
            continue
        dst = root / src.relative_to("/usr/share")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        total += src.stat().st_size


def _oci_layers(layout: Path, tag: str) -> list[Path]:
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            digest = desc["digest"].split(":")[1]
            manifest = json.loads((layout / "blobs/sha256" / digest).read_text())
            return [
                layout / "blobs/sha256" / lay["digest"].split(":")[1] for lay in manifest["layers"]
            ]
    raise AssertionError(f"no {tag} in {layout}")


def _assert_reproduced(blob: bytes, expect: tuple[int, int]) -> None:
    header = parse_gzip_header(blob)
    assert header is not None
    plain = gzip.decompress(blob)
    for cand in KlauspostFamily().candidates(header.raw):
        if _reproduce(cand, header.raw, plain) == blob:
            assert (cand.params["level"], cand.params["block_size"]) == expect
            return
    pytest.fail(f"no candidate reproduces the {len(blob)}-byte layer")


def test_umoci_repack_layer_reproduced(tmp_path: Path) -> None:
    umoci = require("umoci")
    layout, bundle = tmp_path / "layout", tmp_path / "bundle"

    def run(*args: str) -> None:
        subprocess.run([umoci, *args], check=True, capture_output=True)

    run("init", "--layout", str(layout))
    run("new", "--image", f"{layout}:t")
    run("unpack", "--rootless", "--image", f"{layout}:t", str(bundle))
    _rootfs(bundle / "rootfs", 1536 * KIB)  # several 256 KiB blocks
    run("repack", "--image", f"{layout}:t", str(bundle))
    blob = _oci_layers(layout, "t")[-1].read_bytes()
    assert len(gzip.decompress(blob)) > 4 * UMOCI_BLOCK
    _assert_reproduced(blob, (-1, UMOCI_BLOCK))


@pytest.mark.parametrize("level", [None, 9])
def test_skopeo_dest_compress_layer_reproduced(
    tmp_path: Path, real_tar: bytes, level: int | None
) -> None:
    skopeo = require("skopeo")
    layer = real_tar[: 2 * MIB + 12345]  # whatever the bytes: two full 1 MiB blocks and a tail
    oci_image(tmp_path / "src", "src", [layer], [layer], LAYER_TAR)
    cmd = [skopeo, "--insecure-policy", "copy", "--quiet", "--dest-compress"]
    if level is not None:
        cmd += ["--dest-compress-level", str(level)]
    cmd += [f"oci:{tmp_path / 'src'}:src", f"oci:{tmp_path / 'dst'}:dst"]
    subprocess.run(cmd, check=True, capture_output=True)
    blob = _oci_layers(tmp_path / "dst", "dst")[0].read_bytes()
    assert gzip.decompress(blob) == layer
    _assert_reproduced(blob, (-1 if level is None else level, CONTAINERS_IMAGE_BLOCK))
