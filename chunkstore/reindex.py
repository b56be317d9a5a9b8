"""``check --rebuild-index``: a new pack index from the pack headers, salvaging damaged packs.

Runs under an exclusive lock. Steps (after removing the temporary files of crashed saves):

1. load every old index file that still loads (they are the only other record of which blobs a
   pack holds);
2. read every pack's header; a readable header gives the pack's entries;
3. a pack whose header cannot be read is *salvaged*: the whole pack is read, and its blobs are
   taken from the old index (every entry verified against the pack bytes: AEAD, size and id),
   or, when no old index names them and the repository is unencrypted, found by scanning the
   pack (:mod:`chunkstore.packscan`). The blobs that verify are copied (stored bytes, not
   re-encrypted) into new packs with sound headers; the damaged pack is left in place but no
   longer indexed, so ``check`` warns about it and ``prune`` deletes it. (When every blob was
   salvaged, the new pack of an unencrypted repository can come out byte for byte as the damaged
   one was written: its bytes match the name again, and they replace the damaged file);
4. write the new index (split within the index limits), superseding every old index file, then
   delete the old files and rebuild the local cache.

Nothing referenced and readable before a rebuild is unreadable after it. When any header was
unreadable, ``CorruptPack`` is raised at the end (the index has been rewritten by then), naming
the packs and what was salvaged from each: damage is never skipped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chunkstore.backends import remove_temp_files
from chunkstore.backends.base import FileType, Handle
from chunkstore.blob import BlobType, PackEntry
from chunkstore.check import CheckReport, IndexSnapshot
from chunkstore.errors import ChunkstoreError, CorruptPack
from chunkstore.pack import read_pack_header
from chunkstore.packindex import IndexedPack
from chunkstore.packscan import looks_like_metadata, scan_pack
from chunkstore.prune import repack_blobs
from chunkstore.repository import Repository
from index.errors import FormatError
from index.ids import Digest

__all__ = ["Salvage", "rebuild_index", "salvage_pack"]


@dataclass(frozen=True, slots=True)
class Salvage:
    """The verified blobs of a pack whose header could not be read, and where they came from."""

    entries: tuple[PackEntry, ...]
    source: str  # "old index", "scan" or "nothing"
    unverified: int = 0  # entries of the old index that failed verification


def salvage_pack(repo: Repository, pack_id: Digest, known: IndexedPack | None) -> Salvage:
    """Every blob of the pack that can be found and verified without its header."""
    data = repo.backend.load(Handle(FileType.PACK, pack_id.hex))
    if known is not None and known.entries:
        good: list[PackEntry] = []
        for e in known.entries:
            stored = data[e.offset : e.offset + e.length]
            try:
                if len(stored) != e.length:
                    continue
                repo.codec.decode(e.type, e.id, stored, e.raw_length)
            except ChunkstoreError:
                continue
            good.append(e)
        if good:
            return Salvage(tuple(good), "old index", len(known.entries) - len(good))
    if repo.config.encrypted:
        return Salvage((), "nothing", len(known.entries) if known is not None else 0)
    found = scan_pack(data)
    meta = bool(found) and all(looks_like_metadata(b.plaintext) for b in found)
    type_ = BlobType.META if meta else BlobType.DATA
    entries = []
    for b in found:
        blob_id = repo.codec.blob_id(b.plaintext)
        e = PackEntry(type_, blob_id, b.offset, b.length, len(b.plaintext))
        repo.codec.decode(e.type, e.id, data[b.offset : b.offset + b.length], e.raw_length)
        entries.append(e)
    return Salvage(tuple(entries), "scan" if entries else "nothing")


def _describe(found: Salvage) -> str:
    what = (
        f"{len(found.entries)} blob(s) salvaged from the {found.source}"
        if found.entries
        else "nothing could be salvaged"
    )
    if found.unverified:
        what += f", {found.unverified} indexed blob(s) failed verification"
    return what


def rebuild_index(repo: Repository, progress: Callable[[str], None] | None = None) -> int:
    """Replace every index file by one index of every readable pack; see the module docstring.

    Returns the number of packs indexed (salvaged blobs count as the new packs holding them).
    """
    say = progress or (lambda _msg: None)
    repo.check_lock()
    remove_temp_files(repo.backend, exclusive=True)
    old = repo.index_files()
    say("loading the old index files")
    snap = IndexSnapshot.load(repo, CheckReport())  # unreadable index files are skipped
    packs: list[IndexedPack] = []
    salvaged: list[tuple[IndexedPack, list[PackEntry]]] = []
    failed: list[str] = []
    for info in repo.backend.list(FileType.PACK):
        pack_id = Digest.from_hex(info.handle.name)
        say(f"reading header of pack {pack_id.short}")

        def read_at(offset: int, length: int, handle: Handle = info.handle) -> bytes:
            return repo.backend.load(handle, offset, length)

        try:
            entries = read_pack_header(repo.codec, read_at, info.size, f"pack {pack_id.short}")
        except (ChunkstoreError, FormatError) as exc:
            say(f"salvaging pack {pack_id.short}")
            found = salvage_pack(repo, pack_id, snap.packs.get(pack_id))
            if found.entries:
                salvaged.append((IndexedPack(pack_id, info.size, found.entries), [*found.entries]))
            failed.append(f"{exc} -- {_describe(found)}")
            continue
        packs.append(IndexedPack(pack_id, info.size, tuple(entries)))
    if salvaged:
        say(f"copying the salvaged blobs of {len(salvaged)} pack(s) into new packs")
    new_packs = repack_blobs(repo, salvaged, damaged={p.pack_id for p, _ in salvaged})
    written = repo.write_index(packs + new_packs, old)
    new_ids = {file_id for file_id, _ in written}
    for file_id in old:
        if file_id not in new_ids:
            repo.check_lock()
            repo.backend.remove(Handle(FileType.INDEX, file_id.hex))
    repo.index.rebuild(written)
    if failed:
        raise CorruptPack(
            f"index rebuilt from {len(packs) + len(new_packs)} packs; {len(failed)} pack(s) with "
            "an unreadable header were salvaged into new packs or left unindexed ('chunkstore "
            "prune' deletes them): " + "; ".join(failed[:5])
        )
    return len(packs) + len(new_packs)
