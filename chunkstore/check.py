"""Verification of a repository, and rebuilding its pack index from pack headers.

``check`` (structure) does, in order:

1. load every index file (name = SHA-256 of its bytes, then decode and validate);
2. compare the indexed packs with the packs present (missing pack: error; size differs: error;
   present but unindexed: a warning, it is left by an interrupted write and ``prune`` removes it);
3. read every indexed pack's header and compare it with the index;
4. load every record and walk every blob it reaches (missing or undecodable: error naming the record).

Before that, temporary files that crashed saves left in a local repository more than
:data:`~chunkstore.backends.TEMP_FILE_AGE_S` ago are removed (a check holds no lock, so younger ones
may belong to a running save).

``check --read-data`` also reads every pack whole: its SHA-256 must be its name and every blob in it
must decode and verify. Damage is reported by pack and blob, with the records that need them.

``check --rebuild-index`` is :mod:`chunkstore.reindex`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from chunkstore.backends import remove_temp_files
from chunkstore.backends.base import FileType, Handle
from chunkstore.blob import Location
from chunkstore.errors import BackendError, ChunkstoreError
from chunkstore.pack import read_pack_header
from chunkstore.packindex import IndexedPack, IndexFile
from chunkstore.reach import walk
from chunkstore.repository import Repository
from index.ids import Digest

__all__ = [
    "CheckReport",
    "IndexSnapshot",
    "check_repository",
    "load_all_index_files",
]


@dataclass(slots=True)
class CheckReport:
    """What ``check`` found. ``ok`` means no errors (warnings allowed)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    index_files: int = 0
    packs: int = 0
    blobs: int = 0
    records: int = 0
    bytes_read: int = 0
    damaged_packs: list[str] = field(default_factory=list)
    damaged_records: list[str] = field(default_factory=list)
    temp_files_removed: int = 0

    @property
    def ok(self) -> bool:
        """True when no errors were found."""
        return not self.errors

    def to_json(self) -> dict[str, object]:
        """A JSON-ready summary."""
        return {
            "ok": self.ok,
            "errors": self.errors,
            "warnings": self.warnings,
            "index_files": self.index_files,
            "packs": self.packs,
            "blobs": self.blobs,
            "records": self.records,
            "bytes_read": self.bytes_read,
            "damaged_packs": self.damaged_packs,
            "damaged_records": self.damaged_records,
            "temp_files_removed": self.temp_files_removed,
        }


def load_all_index_files(
    repo: Repository, report: CheckReport | None = None
) -> dict[Digest, IndexFile]:
    """Every index file that loads; failures are errors in ``report`` (or raised without one)."""
    out: dict[Digest, IndexFile] = {}
    for file_id in repo.index_files():
        try:
            out[file_id] = repo.load_index_file(file_id)
        except ChunkstoreError as exc:
            if report is None:
                raise
            report.errors.append(f"index file {file_id.short}: {exc}")
    return out


@dataclass(slots=True)
class IndexSnapshot:
    """Every index file, every indexed pack, and every stored copy of every blob id.

    Copies are listed newest first: index files that supersede others come before the rest, so
    after an interrupted prune or rebuild the new index's packs are preferred.
    """

    files: dict[Digest, IndexFile]
    packs: dict[Digest, IndexedPack] = field(default_factory=dict)
    copies: dict[Digest, list[Location]] = field(default_factory=dict)

    @classmethod
    def load(cls, repo: Repository, report: CheckReport | None = None) -> IndexSnapshot:
        """Load every index file (errors into ``report`` when given)."""
        snap = cls(load_all_index_files(repo, report))
        ordered = sorted(snap.files.items(), key=lambda kv: (not kv[1].supersedes, kv[0].hex))
        for _, index in ordered:
            for p in index.packs:
                snap.packs.setdefault(p.pack_id, p)
                for e in p.entries:
                    snap.copies.setdefault(e.id, []).append(Location(p.pack_id, e))
        return snap

    def locator(self, usable: Callable[[Digest], bool]) -> Callable[[Digest], list[Location]]:
        """``locations(id)``: the copies of ``id`` in packs for which ``usable`` holds."""

        def locations(blob_id: Digest) -> list[Location]:
            return [loc for loc in self.copies.get(blob_id, ()) if usable(loc.pack_id)]

        return locations


def check_repository(
    repo: Repository, *, read_data: bool = False, progress: Callable[[str], None] | None = None
) -> CheckReport:
    """Verify the repository; see the module docstring for what is checked."""
    report = CheckReport()
    say = progress or (lambda _msg: None)
    try:  # a check holds no lock: only files older than any running save are removed
        report.temp_files_removed = remove_temp_files(repo.backend, exclusive=False)
    except BackendError as exc:  # a read-only repository can still be checked
        report.warnings.append(f"temporary files left by crashed saves were not removed: {exc}")
    say("loading index files")
    snap = IndexSnapshot.load(repo, report)
    packs = snap.packs
    report.index_files = len(snap.files)
    report.blobs = len(snap.copies)
    present = {Digest.from_hex(i.handle.name): i.size for i in repo.backend.list(FileType.PACK)}
    report.packs = len(present)
    damaged: set[Digest] = set()
    for pack_id, p in sorted(packs.items()):
        if pack_id not in present:
            report.errors.append(f"pack {pack_id.short} is in the index but missing")
            damaged.add(pack_id)
        elif present[pack_id] != p.size:
            report.errors.append(
                f"pack {pack_id.short} has {present[pack_id]} bytes, the index says {p.size}"
            )
            damaged.add(pack_id)
    for pack_id in sorted(set(present) - set(packs)):
        report.warnings.append(
            f"pack {pack_id.short} is not in any index (left by an interrupted write; "
            "'chunkstore prune' removes it, 'check --rebuild-index' adopts it)"
        )
    say("reading pack headers")
    for pack_id, p in sorted(packs.items()):
        if pack_id in damaged:
            continue
        handle = Handle(FileType.PACK, pack_id.hex)
        try:
            header = read_pack_header(
                repo.codec, _reader(repo, handle), p.size, f"pack {pack_id.short}"
            )
        except ChunkstoreError as exc:
            report.errors.append(str(exc))
            damaged.add(pack_id)
            continue
        if sorted(header, key=lambda e: e.offset) != list(p.entries):
            report.errors.append(f"pack {pack_id.short}: header and index disagree")
            damaged.add(pack_id)
    if read_data:
        say("reading all pack data")
        for pack_id, p in sorted(packs.items()):
            if pack_id not in damaged:
                _read_pack(repo, pack_id, p, report, damaged)
    report.damaged_packs = sorted(d.hex for d in damaged)
    say("checking records")
    records = []
    for info in repo.backend.list(FileType.RECORD):
        rid = Digest.from_hex(info.handle.name)
        try:
            records.append((rid, repo.load_record(rid)))
        except ChunkstoreError as exc:
            report.errors.append(f"record {rid.short}: {exc}")
    report.records = len(records)
    locations = snap.locator(lambda pack_id: pack_id in present and pack_id not in damaged)
    for rid, rec in records:
        label = f"record {rec.name!r} ({rid.short})"
        result = walk([(label, rec.body)], locations, repo.load_at)
        problems = [
            f"{label}: blob {b.short} is missing (or only in missing or damaged packs)"
            for b in result.missing
        ]
        problems += [f"blob {b.short} unreadable: {why}" for b, why in result.damaged.items()]
        if problems:
            report.errors.extend(problems)
            report.damaged_records.append(rec.name)
    return report


def _reader(repo: Repository, handle: Handle) -> Callable[[int, int], bytes]:
    def read_at(offset: int, length: int) -> bytes:
        return repo.backend.load(handle, offset, length)

    return read_at


def _read_pack(
    repo: Repository, pack_id: Digest, p: IndexedPack, report: CheckReport, damaged: set[Digest]
) -> None:
    try:
        data = repo.backend.load(Handle(FileType.PACK, pack_id.hex))
    except ChunkstoreError as exc:
        report.errors.append(f"pack {pack_id.short}: {exc}")
        damaged.add(pack_id)
        return
    report.bytes_read += len(data)
    if hashlib.sha256(data).digest() != pack_id.raw:
        report.errors.append(f"pack {pack_id.short}: content does not match its name (damaged)")
        damaged.add(pack_id)
    bad = 0
    for e in p.entries:
        try:
            repo.codec.decode(e.type, e.id, data[e.offset : e.offset + e.length], e.raw_length)
        except ChunkstoreError as exc:
            bad += 1
            if bad <= 20:
                report.errors.append(f"pack {pack_id.short}: {exc}")
    if bad:
        damaged.add(pack_id)
        if bad > 20:
            report.errors.append(f"pack {pack_id.short}: {bad - 20} more damaged blobs")
