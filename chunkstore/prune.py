"""Prune: delete what no record references, repack mostly-unused packs.

Runs under an exclusive lock. Steps, each safe to be killed after (nothing referenced is ever lost):

1. walk every record; abort if any referenced blob is missing or unreadable (pruning on a damaged
   view could delete live data: run ``check`` first);
2. classify each indexed pack: all blobs used (keep), none used (delete), partly used with more
   than ``repack_fraction`` of its bytes unused (repack), else keep. A blob indexed in several packs
   is used in one only;
3. repack: copy the used blobs' stored bytes (verified, not re-encrypted) into new packs, store them;
4. store a new index listing every kept and new pack, superseding all old index files (as many
   files as the index limits need: readers refuse oversized index files);
5. delete the old index files, then the packs no longer indexed (including unindexed leftovers).

First of all, the temporary files crashed saves left in a local repository are removed (under the
exclusive lock no save can be running).

Killed after 3: new packs are unindexed leftovers. After 4: old and new index coexist and agree on
every live blob. After 5 partially: the remaining deletions are redone by the next prune.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from chunkstore.backends import remove_temp_files
from chunkstore.backends.base import FileType, Handle
from chunkstore.blob import BlobType, PackEntry, StoredBlob
from chunkstore.check import IndexSnapshot
from chunkstore.errors import CheckFailed, UsageError
from chunkstore.pack import PackWriter
from chunkstore.packindex import IndexedPack
from chunkstore.reach import walk
from chunkstore.repository import Repository
from index.ids import Digest

__all__ = ["PruneReport", "prune", "repack_blobs"]


@dataclass(slots=True)
class PruneReport:
    """What prune did (or, in a dry run, would do)."""

    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    blobs_removed: int = 0
    bytes_freed: int = 0
    index_files_replaced: int = 0
    index_files_written: int = 0
    temp_files_removed: int = 0
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {k: getattr(self, k) for k in self.__slots__}


def prune(
    repo: Repository,
    *,
    repack_fraction: float = 0.3,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
) -> PruneReport:
    """Remove unreferenced data; the caller holds an exclusive lock (checked before every
    deletion). ``repack_fraction`` must lie in [0, 1]."""
    if not 0.0 <= repack_fraction <= 1.0:  # NaN fails too
        raise UsageError(
            f"the repack fraction must be between 0 and 1 (the share of a pack's bytes that may "
            f"be unused before it is repacked), not {repack_fraction}"
        )
    say = progress or (lambda _msg: None)
    report = PruneReport(dry_run=dry_run)
    repo.flush()
    if not dry_run:
        repo.check_lock()
        report.temp_files_removed = remove_temp_files(repo.backend, exclusive=True)
    snap = IndexSnapshot.load(repo)
    present = {Digest.from_hex(i.handle.name): i.size for i in repo.backend.list(FileType.PACK)}
    packs = {pid: p for pid, p in snap.packs.items() if present.get(pid) == p.size}
    say("finding referenced blobs")
    roots = [(f"record {r.name!r}", r.body) for _, r in repo.list_records()]
    reach = walk(roots, snap.locator(lambda pid: pid in packs), repo.load_at)
    if reach.missing or reach.damaged:
        raise CheckFailed(
            f"prune refused: {len(reach.missing)} referenced blob(s) missing (or only in missing "
            f"packs) and {len(reach.damaged)} unreadable; run 'chunkstore check --read-data' first"
        )
    # One copy of each used (type, id) is kept: the preferred one the walk chose.
    chosen = {key: loc.pack_id for key, loc in reach.blobs.items()}
    keep: list[IndexedPack] = []
    repack: list[tuple[IndexedPack, list[PackEntry]]] = []
    delete: list[IndexedPack] = []
    for pack_id, p in packs.items():
        live = [e for e in p.entries if chosen.get((e.type, e.id)) == pack_id]
        if len(live) == len(p.entries):
            keep.append(p)
        elif not live:
            delete.append(p)
        else:
            unused = sum(e.length for e in p.entries) - sum(e.length for e in live)
            if unused > repack_fraction * p.size:
                repack.append((p, live))
            else:
                keep.append(p)
    orphans = [pid for pid in present if pid not in snap.packs]
    vanished = [pid for pid in snap.packs if pid not in packs]
    if vanished:
        report.notes.append(
            f"{len(vanished)} indexed pack(s) missing or of the wrong size were dropped from the "
            "index (no record needed them)"
        )
    report.packs_deleted = len(delete) + len(orphans)
    report.packs_repacked = len(repack)
    report.blobs_removed = sum(len(p.entries) for p in delete) + sum(
        len(p.entries) - len(live) for p, live in repack
    )
    report.bytes_freed = sum(p.size for p in delete) + sum(present[o] for o in orphans)
    if dry_run:
        return report
    say(f"repacking {len(repack)} pack(s)")
    new_packs = repack_blobs(repo, repack)
    report.packs_written = len(new_packs)
    report.bytes_freed += sum(p.size for p, _ in repack) - sum(p.size for p in new_packs)
    final = keep + new_packs
    indexed_now = {p.pack_id for p in final}
    plan = repo.plan_index(final, sorted(snap.files))
    if new_packs or delete or repack or vanished or len(snap.files) > len(plan):
        say("writing the new index")
        written = [(repo.write_index_file(part), part) for part in plan]
        new_ids = {file_id for file_id, _ in written}
        for file_id in snap.files:
            if file_id not in new_ids:
                repo.check_lock()
                repo.backend.remove(Handle(FileType.INDEX, file_id.hex))
        report.index_files_replaced = len(snap.files)
        report.index_files_written = len(written)
        repo.index.rebuild(written)
    say("deleting unused packs")
    # A repack can reproduce an existing pack byte for byte (same id): never delete a pack that
    # the current index lists, whatever list it came from.
    doomed = [p.pack_id for p in delete] + [p.pack_id for p, _ in repack] + orphans
    for pid in dict.fromkeys(doomed):
        if pid not in indexed_now:
            repo.check_lock()
            repo.backend.remove(Handle(FileType.PACK, pid.hex))
    return report


def repack_blobs(
    repo: Repository,
    repack: list[tuple[IndexedPack, list[PackEntry]]],
    *,
    damaged: Collection[Digest] = (),
) -> list[IndexedPack]:
    """Copy the ``live`` blobs of each pack into new packs (stored bytes, verified first).

    The new packs are stored (after a lock check each) but not indexed: the caller indexes them.
    ``damaged``: packs whose stored bytes no longer match their name; a new pack that comes out
    byte for byte as one of them was meant to be replaces the damaged file.
    """
    writers: dict[BlobType, PackWriter] = {}
    out: list[IndexedPack] = []

    def write(writer: PackWriter) -> None:
        pack_id, data, entries = writer.finish()
        repo.check_lock()
        repo.backend.save(Handle(FileType.PACK, pack_id.hex), data, overwrite=pack_id in damaged)
        out.append(IndexedPack(pack_id, len(data), tuple(entries)))

    for p, live in repack:
        handle = Handle(FileType.PACK, p.pack_id.hex)
        for e in live:
            stored = repo.backend.load(handle, e.offset, e.length)
            repo.codec.decode(e.type, e.id, stored, e.raw_length)  # verify before copying
            writer = writers.setdefault(e.type, PackWriter(repo.codec))
            writer.add(StoredBlob(e.id, e.type, stored, e.raw_length))
            if writer.size >= repo.config.pack_size:
                write(writer)
    for writer in writers.values():
        if writer.count:
            write(writer)
    return out
