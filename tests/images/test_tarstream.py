"""Tests for :mod:`chunkstore.images.tarstream`: bit-exact events, GNU tar parity, hostile input.

The contract (the module docstring): concatenating every ``Raw`` and every member's content in
order gives back the input exactly; hostile input raises :class:`TarError` quickly, without
reading or allocating much; a PAX ``size`` overrides the ustar size as GNU tar does.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import stat
import subprocess
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkstore.errors import UsageError
from chunkstore.images.tarstream import BLOCK, Limits, Member, Raw, TarEntry, TarError, TarReader

TAR = shutil.which("tar") or "/usr/bin/tar"
MiB = 1 << 20


# -- helpers ---------------------------------------------------------------------------------


class ShortReads:
    """A stream returning 1..n bytes per read (seeded), optionally without ``readinto``."""

    def __init__(self, data: bytes, seed: int = 0) -> None:
        self._buf = io.BytesIO(data)
        self._rng = random.Random(seed)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return self._buf.read()
        if n == 0:
            return b""
        return self._buf.read(self._rng.randint(1, n))


class ShortReadsInto(ShortReads):
    def readinto(self, view: memoryview) -> int:
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


class Overrun(Exception):  # a test sentinel, deliberately not a TarError
    """Raised by a budgeted stream when the reader reads too much or too long."""


class Budgeted:
    """``prefix`` then ``filler`` forever; raises :class:`Overrun` past a byte or time budget."""

    def __init__(
        self,
        prefix: bytes,
        filler: bytes = bytes(BLOCK),
        max_bytes: int = 2 * MiB,
        max_seconds: float = 5.0,
        total: int | None = None,
    ) -> None:
        self._prefix = prefix
        self._filler = filler
        self.max_bytes = max_bytes
        self.deadline = time.monotonic() + max_seconds
        self.total = total  # None: endless
        self.pos = 0

    def _byte(self, i: int) -> int:
        if i < len(self._prefix):
            return self._prefix[i]
        return self._filler[(i - len(self._prefix)) % len(self._filler)]

    def read(self, n: int = -1) -> bytes:
        if time.monotonic() > self.deadline:
            raise Overrun(f"time budget exceeded after {self.pos} bytes")
        if n is None or n < 0:
            n = 1 << 16
        if self.total is not None:
            n = min(n, self.total - self.pos)
        if n <= 0:
            return b""
        if self.pos + n > self.max_bytes:
            raise Overrun(f"read past the {self.max_bytes}-byte budget")
        start = self.pos
        self.pos += n
        if start >= len(self._prefix):
            f = self._filler
            off = (start - len(self._prefix)) % len(f)
            reps = (off + n) // len(f) + 1
            return (f * reps)[off : off + n]
        return bytes(self._byte(i) for i in range(start, start + n))


def run_with_watchdog(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Run ``fn`` in a daemon thread; fail if it takes longer than ``timeout``; re-raise."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"tar reader still running after {timeout} s (hang)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def consume(
    stream: Any, limits: Limits | None = None, seed: int | None = None
) -> tuple[bytes, list[TarEntry]]:
    """Iterate all events; return the reassembled bytes and the entries."""
    out = bytearray()
    entries: list[TarEntry] = []
    rng = random.Random(seed) if seed is not None else None
    for ev in TarReader(stream, limits):
        if isinstance(ev, Raw):
            assert isinstance(ev.data, bytes)
            assert ev.data, "empty Raw event"
            out += ev.data
            continue
        assert isinstance(ev, Member)
        entries.append(ev.entry)
        if ev.content is None:
            assert not ev.entry.is_content
            continue
        assert ev.entry.is_content
        got = 0
        while True:
            if rng is None:
                chunk = ev.content.read()
            elif rng.random() < 0.5:
                chunk = ev.content.read(rng.randint(1, 4096))
            else:
                buf = bytearray(rng.randint(1, 4096))
                n = ev.content.readinto(buf)
                chunk = bytes(buf[:n])
            if not chunk:
                break
            got += len(chunk)
            out += chunk
        assert got == ev.entry.data_size
    return bytes(out), entries


def assert_round_trip(data: bytes, limits: Limits | None = None) -> list[TarEntry]:
    """Bit-exact reassembly through a BytesIO and through short-reading streams."""
    whole, entries = consume(io.BytesIO(data), limits)
    assert whole == data
    for seed, cls in ((1, ShortReads), (2, ShortReadsInto)):
        again, entries2 = consume(cls(data, seed), limits, seed=seed)
        assert again == data
        assert entries2 == entries
    return entries


def names(entries: list[TarEntry]) -> list[bytes]:
    return [e.name for e in entries]


def gnu_tar_list(data: bytes) -> list[bytes]:
    """Member names as GNU tar lists them (raw bytes, no quoting)."""
    proc = subprocess.run(
        [TAR, "--quoting-style=literal", "-tf", "-"],
        input=data,
        capture_output=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split(b"\n")[:-1]


def hdr(
    name: bytes,
    typ: bytes = b"0",
    size: int = 0,
    linkname: bytes = b"",
    *,
    size_field: bytes | None = None,
    magic: bytes = b"ustar\x0000",
    extra: dict[int, bytes] | None = None,
    checksum: bool = True,
) -> bytes:
    """A hand-built header block with a correct checksum (unless ``checksum`` is False)."""
    b = bytearray(BLOCK)
    b[0 : len(name)] = name
    b[100:108] = b"0000644\x00"
    b[108:116] = b"0001750\x00"
    b[116:124] = b"0001750\x00"
    b[124:136] = size_field if size_field is not None else b"%011o\x00" % size
    b[136:148] = b"14000000000\x00"
    b[156:157] = typ
    b[157 : 157 + len(linkname)] = linkname
    b[257:265] = magic
    for off, value in (extra or {}).items():
        b[off : off + len(value)] = value
    b[148:156] = b" " * 8
    if checksum:
        b[148:156] = b"%06o\x00 " % sum(b)
    return bytes(b)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def rec(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def pax(records: bytes, typ: bytes = b"x") -> bytes:
    return hdr(b"PaxHeaders/x", typ, len(records)) + pad(records)


EOA = bytes(2 * BLOCK)


def py_tar(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def ti(name: str, **kw: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    return info


# -- 1. bit-exact round trip: Python tarfile -------------------------------------------------


FORMATS = {
    "ustar": tarfile.USTAR_FORMAT,
    "gnu": tarfile.GNU_FORMAT,
    "pax": tarfile.PAX_FORMAT,
}


def _sample_members(fmt: int) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    long_ok = fmt != tarfile.USTAR_FORMAT
    out: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for size in (0, 1, 511, 512, 513, 1024, 5000, 3 * BLOCK):
        data = bytes(random.Random(size).randbytes(size))
        out.append((ti(f"files/f{size}", size=size, mtime=1_700_000_000), data))
    out.append((ti("dir", type=tarfile.DIRTYPE, mode=0o755), None))
    out.append((ti("sym", type=tarfile.SYMTYPE, linkname="files/f1"), None))
    out.append((ti("hard", type=tarfile.LNKTYPE, linkname="files/f1"), None))
    out.append((ti("fifo", type=tarfile.FIFOTYPE), None))
    out.append((ti("chr", type=tarfile.CHRTYPE, devmajor=1, devminor=3), None))
    out.append((ti("c" * 90 + "/" + "d" * 90, size=3), b"abc"))  # ustar prefix split
    if long_ok:
        out.append((ti("L" * 150, size=4), b"long"))
        out.append((ti("/".join(["n" * 60] * 5), size=5), b"longr"))  # > 255 bytes
        out.append((ti("longlink", type=tarfile.SYMTYPE, linkname="t" * 300), None))
        out.append((ti("longhard", type=tarfile.LNKTYPE, linkname="L" * 150), None))
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_tarfile_archives_round_trip(fmt: str) -> None:
    members = _sample_members(FORMATS[fmt])
    data = py_tar(members, FORMATS[fmt])
    entries = assert_round_trip(data)
    assert len(entries) == len(members)
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8") as tf:
        infos = tf.getmembers()
    for entry, info in zip(entries, infos, strict=True):
        assert entry.name.rstrip(b"/") == info.name.encode()
        assert entry.linkname == info.linkname.encode()
        assert entry.size == info.size
    f5000 = entries[6]
    assert f5000.name == b"files/f5000" and f5000.size == 5000 and f5000.is_content
    assert entries[-1 if fmt == "ustar" else -5].name == b"c" * 90 + b"/" + b"d" * 90


def test_gnu_base256_uid_gid_and_negative_mtime() -> None:
    info = ti("big", size=2, uid=2**40, gid=2**33 + 5, mtime=-1000)
    data = py_tar([(info, b"hi")], tarfile.GNU_FORMAT)
    assert data[108] & 0x80 and data[116] & 0x80 and data[136] & 0x80  # really base-256
    (entry,) = assert_round_trip(data)
    assert (entry.uid, entry.gid, entry.mtime_ns) == (2**40, 2**33 + 5, -1000 * 10**9)


def test_pax_nanosecond_mtime_uid_and_xattrs() -> None:
    info = ti("ns", size=1, uid=2**40)
    info.pax_headers = {
        "mtime": "1700000000.123456789",
        "SCHILY.xattr.user.b": "2",
        "SCHILY.xattr.user.a": "x=y z\n1",
    }
    data = py_tar([(info, b"z")], tarfile.PAX_FORMAT)
    (entry,) = assert_round_trip(data)
    assert entry.mtime_ns == 1_700_000_000_123_456_789
    assert entry.uid == 2**40
    assert entry.xattrs == ((b"user.a", b"x=y z\n1"), (b"user.b", b"2"))
    assert (b"mtime", b"1700000000.123456789") in entry.pax


def test_pax_global_headers_are_members_that_apply_to_nothing() -> None:
    """As in Go's archive/tar (docker, containerd): a global header is returned as a member of
    its own (named by its ``path`` record, else its header), and its records change no member."""
    g = rec(b"uname", b"globaluser") + rec(b"comment", b"hello")
    data = (
        pax(g, b"g")
        + hdr(b"a", size=3)
        + pad(b"abc")
        + pax(rec(b"uname", b"local"))
        + hdr(b"b")
        + pax(rec(b"path", b"named-global"), b"g")
        + hdr(b"c")
        + EOA
    )
    entries = assert_round_trip(data)
    assert [(e.type, e.name) for e in entries] == [
        (b"g", b"PaxHeaders/x"),
        (b"0", b"a"),
        (b"0", b"b"),
        (b"g", b"named-global"),
        (b"0", b"c"),
    ]
    assert [e.uname for e in entries] == [b"", b"", b"local", b"", b""]
    assert entries[0].pax == ((b"uname", b"globaluser"), (b"comment", b"hello"))
    assert names(entries)[1:3] == gnu_tar_list(data)[:2]  # GNU tar lists no global header


def test_repeated_extended_headers_the_last_wins() -> None:
    """A later PAX header replaces an earlier one whole (Go and GNU tar), a later GNU long name
    an earlier one; a GNU long name wins over a PAX path (Go)."""
    data = (
        pax(rec(b"path", b"first") + rec(b"size", b"512") + rec(b"uname", b"u1"))
        + pax(rec(b"linkpath", b"lp"))
        + hdr(b"n", b"2", 0, b"t")
        + hdr(b"././@LongLink", b"L", 6)
        + pad(b"first\x00")
        + hdr(b"././@LongLink", b"L", 7)
        + pad(b"second\x00")
        + pax(rec(b"path", b"from-pax"))
        + hdr(b"m")
        + EOA
    )
    entries = assert_round_trip(data)
    assert [(e.name, e.linkname, e.uname) for e in entries] == [
        (b"n", b"lp", b""),
        (b"second", b"", b""),
    ]


def test_empty_extension_values_keep_the_header_fields() -> None:
    data = (
        pax(rec(b"path", b"") + rec(b"size", b"") + rec(b"uid", b""))
        + hdr(b"f", size=3)
        + pad(b"abc")
        + hdr(b"././@LongLink", b"L", 1)
        + pad(b"\x00")
        + hdr(b"g-name")
        + EOA
    )
    entries = assert_round_trip(data)
    assert [(e.name, e.size, e.uid) for e in entries] == [(b"f", 3, 0o1750), (b"g-name", 0, 0o1750)]


@pytest.mark.parametrize(
    ("offset", "field", "value"),
    [
        (108, bytes(8), 0),  # uid all NUL
        (116, b"        ", 0),  # gid all spaces
        (100, b"\x00\x00\x00644\x00", 0o644),  # mode with leading NULs
        (136, bytes(12), 0),  # mtime all NUL
        (124, bytes(12), 0),  # size all NUL
        (329, bytes(8), 0),  # devmajor all NUL
    ],
)
def test_empty_or_nul_numeric_fields_are_zero(offset: int, field: bytes, value: int) -> None:
    (entry,) = assert_round_trip(hdr(b"f", extra={offset: field}) + EOA)
    got = {100: entry.mode, 108: entry.uid, 116: entry.gid, 124: entry.size}
    got |= {136: entry.mtime_ns // 10**9, 329: entry.devmajor}
    assert got[offset] == value


@pytest.mark.parametrize(
    "size_field",
    [
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x001000",  # Go: 512, GNU tar: 0
        b" " * 12,  # Go: 0, GNU tar: an error (and a resynchronisation)
        b"\x81" + bytes(11),  # base-256 GNU tar does not know
    ],
)
def test_size_fields_that_gnu_tar_and_go_read_differently_are_refused(size_field: bytes) -> None:
    data = hdr(b"a", size_field=size_field) + hdr(b"b") + bytes(BLOCK) + EOA
    expect_tar_error(io.BytesIO(data))


def test_gnu_incremental_directory_keeps_its_dumpdir_raw() -> None:
    dumpdir = b"Yfoo\x00Nbar\x00\x00"
    data = hdr(b"dir/", b"D", len(dumpdir)) + pad(dumpdir) + hdr(b"dir/foo", size=1) + pad(b"x")
    entries = assert_round_trip(data + EOA)
    assert [(e.type, e.name, e.is_directory, e.is_content) for e in entries] == [
        (b"D", b"dir/", False, False),
        (b"0", b"dir/foo", False, True),
    ]
    assert names(entries) == gnu_tar_list(data)


@pytest.mark.parametrize("size", [0, 1])
def test_old_style_directory_with_a_trailing_slash(size: int) -> None:
    """Type NUL with a name ending in '/' is a directory to Go and GNU tar; GNU tar skips a
    size's worth of data after it, Go does not: sized ones are refused."""
    data = hdr(b"d/", b"\x00", size) + (pad(b"x") if size else b"") + hdr(b"after") + EOA
    if size:
        expect_tar_error(io.BytesIO(data))
        return
    entries = assert_round_trip(data)
    assert entries[0].is_directory and entries[0].data_size == 0


def test_solaris_extended_header_is_refused() -> None:
    records = rec(b"path", b"solaris")
    data = hdr(b"PaxHeaders/x", b"X", len(records)) + pad(records) + hdr(b"f") + EOA
    assert "Solaris" in str(expect_tar_error(io.BytesIO(data)))


def test_pax_size_before_a_global_header_is_refused() -> None:
    data = pax(rec(b"size", b"512")) + pax(rec(b"comment", b"c"), b"g") + hdr(b"f") + hdr(b"x")
    assert "global" in str(expect_tar_error(io.BytesIO(data + EOA)))
    # other records before a global header are dropped, as Go does
    data = pax(rec(b"path", b"dropped")) + pax(rec(b"comment", b"c"), b"g") + hdr(b"f") + EOA
    assert names(assert_round_trip(data)) == [b"PaxHeaders/x", b"f"]


@pytest.mark.parametrize("trailer", [b"", bytes(BLOCK * 7), b"garbage after the end", b"\x00" * 3])
def test_trailing_bytes_after_end_of_archive_are_kept(trailer: bytes) -> None:
    data = py_tar([(ti("x", size=3), b"abc")], tarfile.PAX_FORMAT) + trailer
    (entry,) = assert_round_trip(data)
    assert entry.name == b"x"


def test_large_trailer_is_streamed_in_bounded_raw_events() -> None:
    data = py_tar([(ti("x", size=3), b"abc")], tarfile.GNU_FORMAT) + os.urandom(3 * MiB + 7)
    sizes = []
    for ev in TarReader(io.BytesIO(data)):
        if isinstance(ev, Raw):
            sizes.append(len(ev.data))
        elif ev.content is not None:
            ev.content.read()
    assert sum(sizes) + 3 == len(data)
    assert max(sizes) <= 2 * MiB


# -- 1b. bit-exact round trip: GNU tar -------------------------------------------------------


def _populate(root: Path, *, long_names: bool) -> None:
    root.mkdir()
    (root / "d" / "sub").mkdir(parents=True)
    for size in (0, 1, 100, 511, 512, 513, 1024, 10_000, 20 * BLOCK):
        (root / "d" / f"f{size}").write_bytes(random.Random(size).randbytes(size))
    os.symlink("f1", root / "d" / "sym")
    os.link(root / "d" / "f100", root / "d" / "hard")
    os.mkfifo(root / "fifo")
    try:
        os.mknod(root / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, OSError):
        pass
    os.utime(root / "d" / "f1", ns=(1_600_000_000_987_654_321, 1_700_000_000_123_456_789))
    bad = os.fsencode(str(root)) + b"/caf\xe9-\xff.bin"
    with open(bad, "wb") as f:
        f.write(b"latin-1 name")
    try:
        os.setxattr(root / "d" / "f1", b"user.color", b"blue\x00\xffbinary")
        os.setxattr(root / "d" / "f100", b"user.x", b"y" * 300)
    except OSError:
        pass
    if long_names:
        deep = root / ("a" * 120) / ("b" * 120)
        deep.mkdir(parents=True)
        (deep / ("c" * 120)).write_bytes(b"deep")  # > 255 bytes
        os.symlink("t" * 200 + "/" + "u" * 200, root / "longlink")
        os.link(deep / ("c" * 120), root / ("h" * 150))


@pytest.fixture(scope="module")
def gnu_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    base = tmp_path_factory.mktemp("gnutar")
    _populate(base / "long", long_names=True)
    _populate(base / "short", long_names=False)
    sparse = base / "sparse"
    sparse.mkdir()
    with open(sparse / "holes", "wb") as f:
        f.truncate(10 * MiB)
        f.seek(0, os.SEEK_END)
        f.write(b"x\n")
    with open(sparse / "holes2", "wb") as f:
        f.write(b"head")
        for i in range(1, 40):  # many segments: old GNU extension blocks, big maps
            f.seek(i * 65536)
            f.write(b"seg%d" % i)
        f.truncate(40 * 65536)
    (sparse / "plain").write_bytes(b"plain file")

    def run(name: str, src: str, *args: str) -> bytes:
        out = base / f"{name}.tar"
        subprocess.run(
            [TAR, *args, "-cf", str(out), "-C", str(base / src), "."],
            check=True,
            capture_output=True,
            env={**os.environ, "LC_ALL": "C"},
            timeout=60,
        )
        return out.read_bytes()

    archives = {
        "gnu": run("gnu", "long", "--format=gnu"),
        "oldgnu": run("oldgnu", "long", "--format=oldgnu"),
        "posix": run("posix", "long", "--format=posix"),
        "posix-xattrs": run("posix-xattrs", "long", "--format=posix", "--xattrs"),
        "ustar": run("ustar", "short", "--format=ustar"),
        "gnu-sparse": run("gnu-sparse", "sparse", "--format=gnu", "--sparse"),
        "oldgnu-sparse": run("oldgnu-sparse", "sparse", "--format=oldgnu", "--sparse"),
        "gnu-blocking-1": run("gnu-b1", "short", "--format=gnu", "--blocking-factor=1"),
    }
    for version in ("0.0", "0.1", "1.0"):
        archives[f"posix-sparse-{version}"] = run(
            f"posix-sparse-{version}",
            "sparse",
            "--format=posix",
            "--sparse",
            f"--sparse-version={version}",
        )
    return archives


GNU_ARCHIVES = [
    "gnu",
    "oldgnu",
    "posix",
    "posix-xattrs",
    "ustar",
    "gnu-sparse",
    "oldgnu-sparse",
    "gnu-blocking-1",
    "posix-sparse-0.0",
    "posix-sparse-0.1",
    "posix-sparse-1.0",
]


@pytest.mark.parametrize("which", GNU_ARCHIVES)
def test_gnu_tar_archives_round_trip_and_match_tar_listing(
    gnu_archives: dict[str, bytes], which: str
) -> None:
    data = gnu_archives[which]
    if which != "gnu-blocking-1":
        assert len(data) % 10240 == 0  # default blocking factor pads past the end blocks
    entries = assert_round_trip(data)
    assert names(entries) == gnu_tar_list(data)
    for trailer in (b"\x00" * 4096, b"junk" * 300):
        assert_round_trip(data + trailer)


def test_gnu_tar_details(gnu_archives: dict[str, bytes]) -> None:
    by_name = {e.name: e for e in consume(io.BytesIO(gnu_archives["posix-xattrs"]))[1]}
    f1 = by_name[b"./d/f1"]
    assert dict(f1.xattrs)[b"user.color"] == b"blue\x00\xffbinary"
    assert dict(by_name[b"./d/f100"].xattrs)[b"user.x"] == b"y" * 300
    assert by_name[b"./caf\xe9-\xff.bin"].size == len(b"latin-1 name")
    assert by_name[b"./longlink"].linkname == b"t" * 200 + b"/" + b"u" * 200
    deep = b"./" + b"a" * 120 + b"/" + b"b" * 120 + b"/" + b"c" * 120
    assert by_name[deep].size == 4
    assert by_name[b"./" + b"h" * 150].type == b"1"
    assert by_name[b"./" + b"h" * 150].linkname == deep
    assert by_name[b"./d/sym"].type == b"2"
    assert by_name[b"./fifo"].type == b"6"
    if b"./chr" in by_name:
        assert (by_name[b"./chr"].devmajor, by_name[b"./chr"].devminor) == (1, 3)
    # GNU format: long names via L/K headers and base-256 never needed, same names.
    gnu = {e.name: e for e in consume(io.BytesIO(gnu_archives["gnu"]))[1]}
    assert deep in gnu and gnu[b"./longlink"].linkname == by_name[b"./longlink"].linkname


@pytest.mark.parametrize(
    "which",
    ["gnu-sparse", "oldgnu-sparse", "posix-sparse-0.0", "posix-sparse-0.1", "posix-sparse-1.0"],
)
def test_sparse_members_are_recognised(gnu_archives: dict[str, bytes], which: str) -> None:
    data = gnu_archives[which]
    entries = {e.name: e for e in consume(io.BytesIO(data))[1]}
    holes = entries[b"./holes"]
    assert holes.sparse is not None
    assert holes.sparse[0] == 10 * MiB + 2
    assert holes.data_size < 64 * 1024  # the holes are not in the archive
    holes2 = entries[b"./holes2"]
    assert holes2.sparse is not None and holes2.sparse[0] == 40 * 65536
    if which in ("gnu-sparse", "oldgnu-sparse"):
        assert holes.type == b"S"
        assert len(holes2.sparse[1]) >= 39  # segments from the extension blocks
    assert entries[b"./plain"].sparse is None


# -- 2. hypothesis: random members written with tarfile --------------------------------------

_component = st.text(alphabet="abcé_-", min_size=1, max_size=120)
_names = st.lists(_component, min_size=1, max_size=4).map("/".join)


@st.composite
def _members(draw: st.DrawFn) -> tuple[int, list[tuple[tarfile.TarInfo, bytes | None]]]:
    fmt = draw(st.sampled_from(list(FORMATS.values())))
    out: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["file", "file", "dir", "symlink", "hardlink"]))
        name = draw(_names)
        link = draw(_names) if kind in ("symlink", "hardlink") else ""
        if fmt == tarfile.USTAR_FORMAT and (len(name.encode()) > 100 or len(link.encode()) > 100):
            name, link = name.encode()[:90].decode("utf-8", "ignore") or "x", link[:40]
        info = tarfile.TarInfo(name)
        info.mtime = draw(st.integers(0, 2**33 - 1))
        data = None
        if kind == "file":
            data = (
                draw(st.binary(max_size=5000))
                if draw(st.booleans())
                else bytes(draw(st.sampled_from([0, 512, 1024, 4096])))
            )
            info.size = len(data)
        else:
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
            }[kind]
            info.linkname = link
        if fmt == tarfile.PAX_FORMAT:
            info.pax_headers = draw(
                st.dictionaries(
                    st.sampled_from(
                        ["SCHILY.xattr.user.x", "SCHILY.xattr.user.y", "comment", "foo.bar"]
                    ),
                    st.text(alphabet="ab= \n\u00e9", max_size=30),
                    max_size=3,
                )
            )
        out.append((info, data))
    return fmt, out


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(_members())
def test_hypothesis_tarfile_archives(case: tuple[int, list[Any]]) -> None:
    fmt, members = case
    data = py_tar(members, fmt)
    entries = assert_round_trip(data)
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8") as tf:
        infos = tf.getmembers()
    assert len(entries) == len(infos) == len(members)
    for entry, info in zip(entries, infos, strict=True):
        assert entry.name.rstrip(b"/") == info.name.encode()
        assert entry.type == info.type
        assert entry.size == info.size
        assert entry.linkname == info.linkname.encode()
        assert entry.mtime_ns == info.mtime * 10**9
        want = sorted(
            (k[len("SCHILY.xattr.") :].encode(), v.encode())
            for k, v in info.pax_headers.items()
            if k.startswith("SCHILY.xattr.")
        )
        assert list(entry.xattrs) == want
    # 3. differential: GNU tar lists the same names, in order
    assert names(entries) == gnu_tar_list(data)


# -- 3. differential vs GNU tar on crafted archives ------------------------------------------


def _smuggling_archive() -> bytes:
    inner = hdr(b"smuggled", size=0) + hdr(b"smuggled2", size=0)
    content = pad(inner + b"\x01" * (1000 - len(inner)))
    return (
        pax(rec(b"size", b"1000"))
        + hdr(b"carrier", size=0)  # ustar size 0, PAX size 1000
        + content
        + hdr(b"after", size=0)
        + EOA
    )


def test_pax_size_overrides_ustar_size_no_smuggled_entries(tmp_path: Path) -> None:
    """E8: the 1000 bytes are content of ``carrier``, never parsed as headers."""
    data = _smuggling_archive()
    entries = assert_round_trip(data)
    assert names(entries) == [b"carrier", b"after"]
    assert entries[0].size == entries[0].data_size == 1000
    assert names(entries) == gnu_tar_list(data)


def test_pax_size_smaller_than_ustar_size(tmp_path: Path) -> None:
    data = (
        pax(rec(b"size", b"0"))
        + hdr(b"carrier", size=BLOCK)
        + hdr(b"hidden-or-not", size=0)
        + hdr(b"after")
        + EOA
    )
    entries = assert_round_trip(data)
    assert names(entries) == gnu_tar_list(data)
    assert names(entries) == [b"carrier", b"hidden-or-not", b"after"]


def test_global_pax_size_is_refused(tmp_path: Path) -> None:
    """GNU tar applies a global size to the members that follow, Go does not: refused."""
    data = (
        pax(rec(b"size", b"512"), b"g")
        + hdr(b"f")
        + hdr(b"smuggled")
        + hdr(b"after")
        + bytes(BLOCK)
        + EOA
    )
    assert gnu_tar_list(data) == [b"f", b"after"]
    err = expect_tar_error(io.BytesIO(data))
    assert "global" in str(err)


@pytest.mark.parametrize("typ", [b"1", b"5"])
def test_size_of_hardlinks_and_directories_is_ignored_like_gnu_tar(typ: bytes) -> None:
    data = hdr(b"m", typ, BLOCK, b"x") + hdr(b"next") + hdr(b"after") + EOA
    entries = assert_round_trip(data)
    assert names(entries) == gnu_tar_list(data) == [b"m", b"next", b"after"]
    assert entries[0].data_size == 0


@pytest.mark.parametrize("typ", [b"2", b"3", b"4", b"6"])
def test_sized_symlinks_and_devices_are_refused(typ: bytes) -> None:
    # GNU tar skips a size's worth of data after these types, Go (docker, containerd) does not:
    # a header hidden there would be a member for one and not the other. Refused outright.
    data = hdr(b"m", typ, BLOCK, b"x") + hdr(b"smuggled") + hdr(b"after") + EOA
    err = expect_tar_error(io.BytesIO(data))
    assert "disagree" in str(err)


def test_gnu_long_name_and_pax_path_precedence(tmp_path: Path) -> None:
    long_name = b"L" * 300
    data = (
        hdr(b"././@LongLink", b"L", len(long_name) + 1)
        + pad(long_name + b"\x00")
        + hdr(b"././@LongLink", b"K", 201)
        + pad(b"k" * 200 + b"\x00")
        + hdr(b"short", b"2", 0, b"shortlink")
        + pax(rec(b"path", b"from-pax") + rec(b"linkpath", b"pax-link"))
        + hdr(b"ustar-name", b"2", 0, b"x")
        + EOA
    )
    entries = assert_round_trip(data)
    assert entries[0].name == long_name and entries[0].linkname == b"k" * 200
    assert entries[1].name == b"from-pax" and entries[1].linkname == b"pax-link"
    assert names(entries) == gnu_tar_list(data)


# -- 4. hostile input --------------------------------------------------------------------------


def expect_tar_error(stream: Any, limits: Limits | None = None, timeout: float = 10.0) -> TarError:
    def go() -> None:
        consume(stream, limits)

    with pytest.raises(TarError) as info:
        run_with_watchdog(go, timeout)
    assert isinstance(info.value, UsageError)
    return info.value


_GOOD = py_tar([(ti("a", size=700), b"A" * 700), (ti("b", size=5), b"bbbbb")], tarfile.USTAR_FORMAT)
# layout: hdr a [0,512) content [512,1212) pad [1212,1536) hdr b [1536,2048) content [2048,2053)
# pad [2053,2560) end blocks [2560,3584) blocking padding up to 10240


@pytest.mark.parametrize(
    ("cut", "where"),
    [
        (1, "inside the first header"),
        (300, "inside the first header"),
        (512, "right after the first header"),
        (900, "inside content"),
        (1212, "right after the content"),
        (1300, "inside padding"),
        (1536 + 100, "inside the second header"),
        (2560 + 100, "inside the first end-of-archive block"),
        (2560 + 700, "inside the second end-of-archive block"),
    ],
)
def test_truncated_streams(cut: int, where: str) -> None:
    expect_tar_error(io.BytesIO(_GOOD[:cut]))
    expect_tar_error(ShortReads(_GOOD[:cut], cut))


@pytest.mark.parametrize(
    ("cut", "where"),
    [(2560, "missing end-of-archive blocks"), (2560 + 512, "only one end-of-archive block")],
)
def test_missing_or_partial_end_of_archive_is_kept(cut: int, where: str) -> None:
    """Go and GNU tar accept an archive that ends after its last member or one zero block."""
    assert names(assert_round_trip(_GOOD[:cut])) == [b"a", b"b"] == gnu_tar_list(_GOOD[:cut])


def test_zero_block_followed_by_a_header_is_refused() -> None:
    expect_tar_error(io.BytesIO(_GOOD[:2560] + bytes(BLOCK) + _GOOD[1536:2560]))


def test_empty_stream() -> None:
    expect_tar_error(io.BytesIO(b""))  # GNU tar refuses it too


def test_minimal_archive_is_two_zero_blocks() -> None:
    assert assert_round_trip(EOA) == []


def test_lone_zero_block_followed_by_garbage() -> None:
    expect_tar_error(io.BytesIO(_GOOD[:2560] + bytes(BLOCK) + b"garbage!" * 64))
    expect_tar_error(io.BytesIO(bytes(BLOCK) + hdr(b"x") + EOA))


def test_bad_checksum() -> None:
    bad = bytearray(_GOOD)
    bad[5] ^= 0x01
    expect_tar_error(io.BytesIO(bytes(bad)))
    expect_tar_error(io.BytesIO(hdr(b"x", checksum=False) + EOA))


def test_signed_checksum_is_accepted() -> None:
    # Historic writers summed signed chars; a name byte >= 0x80 makes the two sums differ.
    block = bytearray(hdr(b"\xe9t\xe9"))
    block[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in block)
    block[148:156] = b"%06o\x00 " % signed
    entries = assert_round_trip(bytes(block) + EOA)
    assert names(entries) == [b"\xe9t\xe9"]


@pytest.mark.parametrize(
    ("offset", "field"),
    [(124, b"0000000001x\x00"), (100, b"06-4\x00\x00\x00\x00"), (108, b"abc\x00\x00\x00\x00\x00")],
)
def test_non_octal_numeric_fields(offset: int, field: bytes) -> None:
    expect_tar_error(io.BytesIO(hdr(b"x", extra={offset: field}) + EOA))


def test_negative_base256_size() -> None:
    minus_one = b"\xff" * 12
    err = expect_tar_error(io.BytesIO(hdr(b"x", size_field=minus_one) + EOA))
    assert "negative" in str(err)
    minus_big = b"\xc0" + bytes(11)
    expect_tar_error(io.BytesIO(hdr(b"x", size_field=minus_big) + EOA))


def test_pax_header_claiming_2_pow_40_bytes_fails_before_reading() -> None:
    """E7: the cap is checked before the data is read or allocated."""
    size = b"\x80" + (2**40).to_bytes(11, "big")
    stream = Budgeted(hdr(b"PaxHeaders/x", b"x", size_field=size), max_bytes=2 * MiB)
    err = expect_tar_error(stream)
    assert stream.pos < 2 * MiB
    assert "cap" in str(err)
    # Same for a global header and a GNU long name / link
    for typ in (b"g", b"L", b"K"):
        stream = Budgeted(hdr(b"x", typ, size_field=size), max_bytes=2 * MiB)
        expect_tar_error(stream)
        assert stream.pos < 2 * MiB


def test_pax_header_just_over_the_cap() -> None:
    limits = Limits(max_pax_size=1000)
    records = rec(b"comment", b"c" * 1000)
    stream = Budgeted(pax(records) + hdr(b"a") + EOA, max_bytes=BLOCK + 1)
    expect_tar_error(stream, limits)


def test_gnu_long_name_over_the_cap() -> None:
    for size in (64 * 1024 + 1, 10**9):
        stream = Budgeted(hdr(b"././@LongLink", b"L", size), filler=b"n", max_bytes=2 * MiB)
        expect_tar_error(stream)
        assert stream.pos <= BLOCK
    small = Limits(max_long_name=100)
    data = hdr(b"././@LongLink", b"L", 101) + pad(b"n" * 100 + b"\x00") + hdr(b"x") + EOA
    expect_tar_error(io.BytesIO(data), small)
    ok = hdr(b"././@LongLink", b"L", 100) + pad(b"n" * 99 + b"\x00") + hdr(b"x") + EOA
    assert names(assert_round_trip(ok, small)) == [b"n" * 99]


@pytest.mark.parametrize(
    "records",
    [
        b"99 path=a\n",  # longer than the data
        b"10 path=ab\n",  # does not end where it says (no newline at the end)
        b"3 a\n",  # shorter than possible
        b"path=a\n",  # no length
        b" 9 path=a\n",
        b"9x path=a\n",
        b"12 path\n\n\n\n\n",  # no '='
        b"11 =nokey\n\n",
        b"-9 path=\n",
        b"9 path=a\n" + b"\x00" * 5 + b"x",  # data after NUL padding
        b"1" * 100 + b" path=a\n",  # length too long to be a length
    ],
)
def test_malformed_pax_records(records: bytes) -> None:
    expect_tar_error(io.BytesIO(pax(records) + hdr(b"x") + EOA))


def test_pax_nul_padding_is_accepted() -> None:
    data = pax(rec(b"path", b"padded") + b"\x00" * 20) + hdr(b"x") + EOA
    assert names(assert_round_trip(data)) == [b"padded"]


@pytest.mark.parametrize(
    "record",
    [
        rec(b"size", b"12a"),
        rec(b"size", b"-5"),
        rec(b"uid", b"0x10"),
        rec(b"mtime", b"12:30"),
        rec(b"mtime", b"-"),
        rec(b"mtime", b"1.2.3"),
        rec(b"GNU.sparse.major", b"0")
        + rec(b"GNU.sparse.minor", b"1")
        + rec(b"GNU.sparse.numblocks", b"0")
        + rec(b"GNU.sparse.realsize", b"lots"),
        rec(b"GNU.sparse.numblocks", b"1") + rec(b"GNU.sparse.map", b"0,x"),
        rec(b"GNU.sparse.numblocks", b"2") + rec(b"GNU.sparse.map", b"0,0"),
        rec(b"path", b"nul\x00in-path"),
    ],
)
def test_bad_pax_numbers(record: bytes) -> None:
    expect_tar_error(io.BytesIO(pax(record) + hdr(b"x") + EOA))


@pytest.mark.parametrize("key", [b"size", b"uid", b"mtime", b"GNU.sparse.realsize"])
def test_pax_numbers_with_thousands_of_digits(key: bytes) -> None:
    sparse = rec(b"GNU.sparse.major", b"0") + rec(b"GNU.sparse.minor", b"1")
    extra = sparse + rec(b"GNU.sparse.numblocks", b"0") if key.startswith(b"GNU.") else b""
    expect_tar_error(io.BytesIO(pax(extra + rec(key, b"1" * 5000)) + hdr(b"x") + EOA))


@pytest.mark.parametrize(
    "blob",
    [
        b"1 " * (MiB // 2),  # pathological: every record claims length 1
        rec(b"a", b"b") * (MiB // len(rec(b"a", b"b"))),  # huge number of tiny records
        b"20 " + b"9" * (MiB - 3),  # one long digit run
        b"1048576 " + b"k" * (MiB - 8),  # one record with no '=' and no newline
    ],
)
def test_pathological_pax_blobs_are_rejected_in_linear_time(blob: bytes) -> None:
    """E9: no quadratic scanning of 1 MiB of PAX data."""
    data = pax(blob[:MiB]) + hdr(b"x") + EOA
    start = time.monotonic()
    expect_tar_error(io.BytesIO(data), timeout=10)
    assert time.monotonic() - start < 2


def test_many_tiny_pax_records_parse_in_linear_time() -> None:
    one = rec(b"a", b"b")
    blob = one * (MiB // len(one))
    data = pax(blob) + hdr(b"x") + EOA
    limits = Limits(max_pax_records=10**6)
    start = time.monotonic()
    entries = run_with_watchdog(lambda: consume(io.BytesIO(data), limits)[1])
    assert time.monotonic() - start < 2
    assert len(entries[0].pax) == len(blob) // len(one)


def test_too_many_members() -> None:
    four = b"".join(hdr(b"m%d" % i) for i in range(4)) + EOA
    expect_tar_error(io.BytesIO(four), Limits(max_members=3))
    three = b"".join(hdr(b"m%d" % i) for i in range(3)) + EOA
    assert len(assert_round_trip(three, Limits(max_members=3))) == 3
    # extension headers are not members
    with_pax = pax(rec(b"path", b"p")) + three
    assert len(assert_round_trip(with_pax, Limits(max_members=3))) == 3


def test_endless_member_stream_hits_max_members() -> None:
    stream = Budgeted(b"", filler=hdr(b"m"), max_bytes=2 * MiB)
    expect_tar_error(stream, Limits(max_members=100))
    assert stream.pos < 2 * MiB


def test_huge_content_size_on_a_truncated_stream() -> None:
    # Content is streamed to the caller, never buffered; truncation is an error.
    stream = Budgeted(
        hdr(b"big", size_field=b"77777777777\x00"), total=BLOCK + 4 * MiB, max_bytes=8 * MiB
    )
    expect_tar_error(stream)


def _old_gnu_sparse_header(
    extended: bool, segments: tuple[tuple[int, int], ...] = (), realsize: int = 1000
) -> bytes:
    extra: dict[int, bytes] = {}
    for i, (off, length) in enumerate(segments):
        extra[386 + i * 24] = b"%011o\x00" % off
        extra[386 + i * 24 + 12] = b"%011o\x00" % length
    extra[482] = b"\x01" if extended else b"\x00"
    extra[483] = b"%011o\x00" % realsize
    return hdr(b"sparse", b"S", sum(n for _, n in segments), magic=b"ustar  \x00", extra=extra)


def test_old_gnu_sparse_with_too_many_segments() -> None:
    ext = bytearray(BLOCK)
    for i in range(21):
        ext[i * 24 : i * 24 + 24] = b"%011o\x00%011o\x00" % (i * 1024 + 1024, 1)
    ext[504] = 1
    stream = Budgeted(_old_gnu_sparse_header(True, ((0, 1),)), filler=bytes(ext))
    expect_tar_error(stream, Limits(max_sparse_blocks=50))
    assert stream.pos < 64 * 1024


def test_old_gnu_sparse_endless_empty_extension_blocks() -> None:
    ext = bytearray(BLOCK)
    ext[504] = 1
    stream = Budgeted(_old_gnu_sparse_header(True), filler=bytes(ext), max_bytes=2 * MiB)
    expect_tar_error(stream, Limits(max_sparse_blocks=10))


def test_old_gnu_sparse_bad_extension_number() -> None:
    ext = bytearray(BLOCK)
    ext[0:12] = b"0000000012z\x00"
    data = _old_gnu_sparse_header(True) + bytes(ext) + EOA
    expect_tar_error(io.BytesIO(data))
    expect_tar_error(io.BytesIO(_old_gnu_sparse_header(True)))  # extension block missing


def test_non_content_member_data_is_not_buffered_whole() -> None:
    stream = Budgeted(
        hdr(b"dumpdir", b"D", size_field=b"77777777777\x00"),
        total=BLOCK + 24 * MiB,
        max_bytes=32 * MiB,
    )

    def drain() -> None:  # discard every event: only the reader's own memory is measured
        for _ in TarReader(stream):
            pass

    tracemalloc.start()
    try:
        with pytest.raises(TarError):
            run_with_watchdog(drain, 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"peak {peak} bytes while reading a 24 MiB truncated member"


def test_global_pax_records_do_not_make_members_quadratic() -> None:
    parts = []
    for g in range(10):
        blob = b"".join(rec(b"k%d.%d" % (g, i), b"v") for i in range(10_000))
        parts.append(pax(blob, b"g"))
    parts += [hdr(b"m%d" % i) for i in range(2000)]
    data = b"".join(parts) + EOA
    stream = Budgeted(data, total=len(data), max_bytes=len(data) + 1, max_seconds=2.0)
    _, entries = run_with_watchdog(lambda: consume(stream), timeout=20)
    assert [e.type for e in entries] == [b"g"] * 10 + [b"0"] * 2000


def test_endless_extension_headers_are_bounded() -> None:
    blob = rec(b"comment", b"c" * (512 * 1024 - 20))
    stream = Budgeted(b"", filler=pax(blob), max_bytes=16 * MiB)
    expect_tar_error(stream, timeout=30)


# -- fuzzing -----------------------------------------------------------------------------------


def _parse_outcome(data: bytes) -> None:
    try:
        whole, _ = consume(io.BytesIO(data))
    except TarError:
        return
    assert whole == data


@settings(max_examples=200)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_raise_tar_error_or_parse(data: bytes) -> None:
    run_with_watchdog(lambda: _parse_outcome(data), timeout=10)


@settings(max_examples=60)
@given(
    st.lists(st.binary(min_size=1, max_size=4), max_size=10).map(b"".join),
    st.booleans(),
)
def test_arbitrary_bytes_after_a_valid_header(tail: bytes, zero_block: bool) -> None:
    data = hdr(b"x", size=len(tail)) + tail + (bytes(BLOCK) if zero_block else b"")
    run_with_watchdog(lambda: _parse_outcome(data), timeout=10)


_FUZZ_BASE = (
    pax(rec(b"path", b"p" * 120) + rec(b"SCHILY.xattr.user.a", b"v") + rec(b"mtime", b"1.5"))
    + hdr(b"a", size=600)
    + pad(b"A" * 600)
    + hdr(b"././@LongLink", b"L", 151)
    + pad(b"l" * 150 + b"\x00")
    + hdr(b"s", b"2", 0, b"target")
    + _old_gnu_sparse_header(False, ((0, 3), (4096, 3)), 8192)
    + pad(b"abcdef")
    + EOA
)
_FUZZ_HEADERS = [0, 1024, 2560, 3584, 4096]  # offsets of the header blocks above


@settings(max_examples=300)
@given(
    st.sampled_from(_FUZZ_HEADERS),
    st.lists(st.tuples(st.integers(0, BLOCK - 1), st.integers(0, 255)), min_size=1, max_size=6),
    st.booleans(),
    st.integers(0, 4),
)
def test_mutated_headers_with_fixed_checksums(
    base: int, edits: list[tuple[int, int]], fix: bool, chop_blocks: int
) -> None:
    """Header fields get corrupted but the checksum still matches, so they are really parsed."""
    data = bytearray(_FUZZ_BASE)
    for off, value in edits:
        data[base + off] = value
    if fix:
        block = data[base : base + BLOCK]
        block[148:156] = b" " * 8
        data[base + 148 : base + 156] = b"%06o\x00 " % sum(block)
    if chop_blocks:
        del data[len(data) - chop_blocks * 333 :]
    run_with_watchdog(lambda: _parse_outcome(bytes(data)), timeout=10)


#: Where _FUZZ_BASE may end: after the PAX header (it describes nothing), after a member, after
#: the GNU long name, after the first end-of-archive block (Go and GNU tar accept these ends).
_FUZZ_ENDS = frozenset({1024, 2560, 3584, 4096, 5120, 5632})


@settings(max_examples=100)
@given(st.data())
def test_every_strict_prefix_of_an_archive_is_an_error_or_ends_it(data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(_FUZZ_BASE) - 1))
    seed = data.draw(st.integers(0, 3))
    if cut in _FUZZ_ENDS:
        assert_round_trip(_FUZZ_BASE[:cut])
        return
    expect_tar_error(io.BytesIO(_FUZZ_BASE[:cut]))
    expect_tar_error(ShortReadsInto(_FUZZ_BASE[:cut], seed))


@pytest.mark.parametrize("cut", sorted(_FUZZ_ENDS))
def test_prefixes_that_end_the_archive(cut: int) -> None:
    assert_round_trip(_FUZZ_BASE[:cut])


def test_fuzz_base_is_valid() -> None:
    entries = assert_round_trip(_FUZZ_BASE)
    assert names(entries) == [b"p" * 120, b"l" * 150, b"sparse"]
    assert entries[2].sparse == (8192, ((0, 3), (4096, 3)))
    assert entries[0].mtime_ns == 1_500_000_000


# -- 5. content reader semantics -------------------------------------------------------------


def _events(data: bytes, stream: Any = None) -> Iterator[Raw | Member]:
    return iter(TarReader(stream if stream is not None else io.BytesIO(data)))


def test_unconsumed_content_raises() -> None:
    events = _events(_GOOD)
    assert isinstance(next(events), Raw)
    member = next(events)
    assert isinstance(member, Member) and member.content is not None
    with pytest.raises(TarError, match="not consumed"):
        next(events)


def test_partially_consumed_content_raises() -> None:
    events = _events(_GOOD)
    next(events)
    member = next(events)
    assert isinstance(member, Member) and member.content is not None
    assert member.content.read(100) == b"A" * 100
    with pytest.raises(TarError):
        next(events)


@pytest.mark.parametrize("stream_cls", [io.BytesIO, ShortReads, ShortReadsInto])
def test_readinto_and_read_sizes(stream_cls: Any) -> None:
    stream = stream_cls(_GOOD) if stream_cls is io.BytesIO else stream_cls(_GOOD, 7)
    got: dict[bytes, bytes] = {}
    for ev in _events(_GOOD, stream):
        if isinstance(ev, Member):
            assert ev.content is not None
            buf = bytearray(10_000)
            parts = []
            while True:
                n = ev.content.readinto(memoryview(buf)[:333])
                if not n:
                    break
                parts.append(bytes(buf[:n]))
            assert ev.content.readinto(buf) == 0
            assert ev.content.read() == b""
            assert ev.content.read(10) == b""
            got[ev.entry.name] = b"".join(parts)
    assert got == {b"a": b"A" * 700, b"b": b"bbbbb"}


def test_readinto_never_reads_past_the_member() -> None:
    for ev in _events(_GOOD):
        if isinstance(ev, Member):
            assert ev.content is not None
            buf = bytearray(1 << 16)
            total = 0
            while n := ev.content.readinto(buf):
                total += n
            assert total == ev.entry.size
            assert ev.content.remaining == 0


def test_read_zero_bytes() -> None:
    for ev in _events(_GOOD):
        if isinstance(ev, Member):
            assert ev.content is not None
            assert ev.content.read(0) == b""
            ev.content.read()


def test_members_without_content_yield_none() -> None:
    data = py_tar(
        [
            (ti("d", type=tarfile.DIRTYPE), None),
            (ti("s", type=tarfile.SYMTYPE, linkname="t"), None),
            (ti("h", type=tarfile.LNKTYPE, linkname="d"), None),
            (ti("f", type=tarfile.FIFOTYPE), None),
            (ti("e", size=0), b""),
        ],
        tarfile.GNU_FORMAT,
    )
    seen = []
    for ev in _events(data):
        if isinstance(ev, Member):
            seen.append((ev.entry.type, ev.content is None))
            if ev.content is not None:
                assert ev.content.read() == b""
    assert seen == [(b"5", True), (b"2", True), (b"1", True), (b"6", True), (b"0", False)]


def test_raw_events_cover_headers_and_padding() -> None:
    events = list(
        ev if not isinstance(ev, Member) or ev.content is None else (ev, ev.content.read())
        for ev in _events(_GOOD)
    )
    kinds = [type(ev[0] if isinstance(ev, tuple) else ev).__name__ for ev in events]
    assert kinds == ["Raw", "Member", "Raw", "Member", "Raw"]
    assert events[0].data == _GOOD[:BLOCK]  # type: ignore[union-attr]
    assert events[2].data == _GOOD[1212:2048]  # type: ignore[union-attr]
    assert events[4].data == _GOOD[2053:]  # type: ignore[union-attr]


def test_tar_error_is_a_usage_error() -> None:
    assert issubclass(TarError, UsageError)
