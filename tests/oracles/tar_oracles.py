"""GNU tar and Go's ``archive/tar`` as oracles for :mod:`chunkstore.images.tarstream`.

``build_go_lister`` compiles ``golist/main.go`` (standard library only) with ``go build`` into a
directory of the caller's (pytest's tmp dir, with its own GOCACHE); the ``go_tar`` fixture in
``tests/conftest.py`` does it once per session. :func:`our_listing` describes what our reader makes
of an archive in the lister's terms, and :func:`check_archive` states the promise checked against
both oracles:

* an archive that Go reads to the end and GNU tar lists without error, with as many members, is
  accepted by us (the done condition of issue 17);
* whatever we accept, Go accepts with exactly the entries we report (name, type, sizes, mode,
  ids, times, link, user and group names, device numbers, xattrs, and the data of every file),
  and GNU tar lists as many members (no member can hide from one reader behind another), and
  every byte comes back from the events;
* what we refuse, we refuse with a one-line :class:`TarError`, never another exception.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from chunkstore.images.tarstream import Member, Raw, TarEntry, TarError, TarReader
from tests.producers import build_go

GOLIST_SOURCE = Path(__file__).with_name("golist") / "main.go"
TAR = shutil.which("tar")
_GO_ZERO_TIME = -62135596800  # time.Time{}.Unix(): the mtime Go reports for a global header


@dataclass(frozen=True)
class Entry:
    """One member as Go's ``archive/tar`` returns it (``data``: SHA-256 of what Read gives)."""

    name: bytes
    type: bytes
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    linkname: bytes
    uname: bytes
    gname: bytes
    devmajor: int
    devminor: int
    xattrs: tuple[tuple[bytes, bytes], ...]
    data: str | None  # None: not compared (data kept raw by us, or a PAX 1.0 sparse map)
    read: int | None


@dataclass(frozen=True)
class GoListing:
    entries: tuple[Entry, ...]
    ok: bool
    error: str
    consumed: int


class GoLister:
    """Runs the compiled lister on an archive."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def list(self, data: bytes) -> GoListing:
        proc = subprocess.run(
            [str(self.binary)], input=data, capture_output=True, check=True, timeout=60
        )
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        end = lines.pop()
        entries = tuple(
            Entry(
                name=bytes.fromhex(e["name"]),
                type=bytes([e["type"]]),
                size=e["size"],
                mode=e["mode"],
                uid=e["uid"],
                gid=e["gid"],
                mtime_ns=e["mtime_s"] * 1_000_000_000 + e["mtime_ns"],
                linkname=bytes.fromhex(e["linkname"]),
                uname=bytes.fromhex(e["uname"]),
                gname=bytes.fromhex(e["gname"]),
                devmajor=e["devmajor"],
                devminor=e["devminor"],
                xattrs=tuple((bytes.fromhex(k), bytes.fromhex(v)) for k, v in e["xattrs"]),
                data=e["data"] or None,
                read=None if e["read"] < 0 else e["read"],
            )
            for e in lines
        )
        return GoListing(entries, end["end"] == "ok", end.get("error", ""), end["consumed"])


def build_go_lister(out_dir: Path) -> GoLister | None:
    """Compile the lister into ``out_dir``; None when no Go toolchain is installed."""
    go = shutil.which("go")
    if go is None:
        return None
    binary = build_go(GOLIST_SOURCE.read_text(), out_dir, "golist")
    return GoLister(binary)


def go_testdata() -> Path | None:
    """Go's own tar test archives (``GOROOT/src/archive/tar/testdata``), if installed."""
    go = shutil.which("go")
    if go is None:
        return None
    root = subprocess.run(
        [go, "env", "GOROOT"], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    path = Path(root) / "src" / "archive" / "tar" / "testdata"
    return path if path.is_dir() else None


@dataclass(frozen=True)
class GnuListing:
    code: int
    names: list[bytes]
    stderr: str

    @property
    def resynced(self) -> bool:
        """GNU tar skipped blocks looking for a header (it saw members we might not)."""
        return "Skipping to next header" in self.stderr


def gnu_list(data: bytes) -> GnuListing:
    """``tar -tf -``: exit status and member names (one per line: names must hold no newline)."""
    assert TAR is not None
    proc = subprocess.run(
        [TAR, "--quoting-style=literal", "-tf", "-"],
        input=data,
        capture_output=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
        timeout=60,
    )
    return GnuListing(proc.returncode, proc.stdout.split(b"\n")[:-1], proc.stderr.decode("latin-1"))


def gnu_count(data: bytes) -> tuple[int, int, bool]:
    """Exit status, number of members GNU tar lists (names escaped: newlines are safe), and
    whether it resynchronised."""
    assert TAR is not None
    proc = subprocess.run(
        [TAR, "--quoting-style=escape", "-tf", "-"],
        input=data,
        capture_output=True,
        env={**os.environ, "LC_ALL": "C"},
        check=False,
        timeout=60,
    )
    resynced = b"Skipping to next header" in proc.stderr
    return proc.returncode, proc.stdout.count(b"\n"), resynced


@dataclass
class OurListing:
    entries: list[Entry] = field(default_factory=list)
    raw_entries: list[TarEntry] = field(default_factory=list)
    error: TarError | None = None
    whole: bytes = b""


#: Data of entries larger than this is not compared (the Go lister does not read it either).
MAX_DATA = 64 << 20


def _expand(entry: TarEntry, content: bytes) -> bytes | None:
    """The logical data Go's Read gives for a member whose archive data is ``content``."""
    if entry.sparse_map_in_data or max(entry.size, (entry.sparse or (0,))[0]) > MAX_DATA:
        return None
    if entry.sparse is None:
        return content
    realsize, segments = entry.sparse
    out = bytearray(realsize)
    pos = 0
    for off, length in segments:
        out[off : off + length] = content[pos : pos + length]
        pos += length
    return bytes(out)


def _go_view(entry: TarEntry, content: bytes | None) -> Entry:
    typ = entry.type
    if typ == b"\x00":
        typ = b"5" if entry.name.endswith(b"/") else b"0"
    data: bytes | None
    if entry.type == b"g" or entry.type in (b"1", b"2", b"3", b"4", b"5", b"6") or typ == b"5":
        data = b""
    elif content is None:
        data = None  # kept raw by our reader: D, V and other types
    else:
        data = _expand(entry, content)
    size = entry.sparse[0] if entry.sparse is not None else entry.size
    if entry.type == b"g":
        return Entry(
            entry.name,
            typ,
            0,
            0,
            0,
            0,
            _GO_ZERO_TIME * 10**9,
            b"",
            b"",
            b"",
            0,
            0,
            (),
            hashlib.sha256(b"").hexdigest(),
            0,
        )
    return Entry(
        name=entry.name,
        type=typ,
        size=size,
        mode=entry.mode,
        uid=entry.uid,
        gid=entry.gid,
        mtime_ns=entry.mtime_ns,
        linkname=entry.linkname,
        uname=entry.uname,
        gname=entry.gname,
        devmajor=entry.devmajor,
        devminor=entry.devminor,
        xattrs=entry.xattrs,
        data=None if data is None else hashlib.sha256(data).hexdigest(),
        read=None if data is None else len(data),
    )


def our_listing(data: bytes) -> OurListing:
    out = OurListing()
    whole = bytearray()
    try:
        for ev in TarReader(io.BytesIO(data)):
            if isinstance(ev, Raw):
                whole += ev.data
                continue
            assert isinstance(ev, Member)
            content = None
            if ev.content is not None:
                content = ev.content.read()
                whole += content
            out.raw_entries.append(ev.entry)
            out.entries.append(_go_view(ev.entry, content))
    except TarError as exc:
        out.error = exc
    out.whole = bytes(whole)
    return out


def _same(ours: Entry, go: Entry) -> bool:
    if ours.type == b"g":  # Go returns the header's name and records, nothing else
        return (ours.name, ours.type) == (go.name, go.type)
    if ours.data is None or go.data is None:
        ours = Entry(**{**ours.__dict__, "data": go.data, "read": go.read})
    return ours == go


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    members: int
    must_accept: bool


def check_archive(data: bytes, go: GoLister) -> Verdict:
    """Check the promise of the module docstring for one archive; returns what happened."""
    ours = our_listing(data)
    listing = go.list(data)
    code, count, resynced = gnu_count(data)
    go_members = sum(1 for e in listing.entries if e.type != b"g")
    must = listing.ok and code == 0 and not resynced and go_members == count
    if ours.error is not None:
        message = str(ours.error)
        assert "\n" not in message and message, f"not a one-line error: {message!r}"
        assert not must, f"both readers accept this archive, we refuse it: {message}"
        return Verdict(False, 0, must)
    assert ours.whole == data, "the events do not give back the archive"
    assert listing.ok, f"we accept an archive Go refuses ({listing.error})"
    assert len(ours.entries) == len(listing.entries), (ours.entries, listing.entries)
    for mine, theirs in zip(ours.entries, listing.entries, strict=True):
        assert _same(mine, theirs), f"\nours: {mine}\ngo:   {theirs}"
    ours_members = sum(1 for e in ours.entries if e.type != b"g")
    assert not resynced and count == ours_members, (
        f"GNU tar lists {count} members (exit {code}), we list {ours_members}"
    )
    return Verdict(True, ours_members, must)
