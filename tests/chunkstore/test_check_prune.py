"""check (structure and --read-data), rebuild-index and prune (delete, repack, refusals, locks)."""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore import prune as prune_module
from chunkstore import reindex as reindex_module
from chunkstore.backends.base import Backend, FileType, Handle
from chunkstore.backends.local import LocalBackend
from chunkstore.backends.memory import MemoryBackend
from chunkstore.blob import BlobType, Location
from chunkstore.check import IndexSnapshot
from chunkstore.chunker import Chunker, ChunkerParams
from chunkstore.errors import (
    CheckFailed,
    ChunkstoreError,
    CorruptBlob,
    CorruptPack,
    LockConflict,
    MissingObject,
    UsageError,
)
from chunkstore.lock import acquire_lock, list_locks
from chunkstore.packindex import IndexFile, IndexLimits, encode_index
from chunkstore.repository import Repository
from chunkstore.streams import read_chunk_lists, store_stream
from chunkstore.testing.faults import FaultyBackend, SimulatedCrash
from index.chunklist import ChunkRef, StreamBody, encode_chunk_list
from index.ids import Digest, sha256
from index.record import Record

PARAMS = ChunkerParams(1024, 4096, 16384)
PACK_SIZE = 64 * 1024
A = random.Random(1).randbytes(200_000)
B = random.Random(2).randbytes(200_000)


def init(backend: Backend, cache: Path) -> Repository:
    return Repository.init(backend, cache_dir=cache, chunker=PARAMS, pack_size=PACK_SIZE)


def restore(repo: Repository, name: str) -> bytes:
    out = io.BytesIO()
    api.get(repo, name, out)
    return out.getvalue()


def snapshot(backend: Backend) -> dict[Handle, bytes]:
    return {
        info.handle: backend.load(info.handle)
        for t in FileType
        if t is not FileType.CONFIG
        for info in backend.list(t)
    }


def pack_bytes(backend: Backend) -> int:
    return sum(i.size for i in backend.list(FileType.PACK))


def locations(repo: Repository, name: str) -> tuple[list[Location], list[Location]]:
    """(data blob locations, chunk-list blob locations) of the newest record ``name``."""
    _, rec = repo.find_record(name)
    body = StreamBody.from_cbor(rec.body)
    lists = [repo.lookup(i) for i in body.lists]
    chunks = [repo.lookup(r.id) for r in read_chunk_lists(repo, body)]
    assert all(loc is not None for loc in lists + chunks)
    return chunks, lists  # type: ignore[return-value]


@pytest.fixture
def separate(tmp_path: Path) -> Iterator[Repository]:
    """Records 'a' and 'b' with disjoint data, each in its own packs (one put each)."""
    repo = init(MemoryBackend(), tmp_path / "cache")
    api.put(repo, "a", io.BytesIO(A))
    api.put(repo, "b", io.BytesIO(B))
    yield repo
    repo.close()


def mixed(backend: Backend, cache: Path) -> Repository:
    """Records 'a' and 'b' stored before one flush, so some packs hold blobs of both."""
    repo = init(backend, cache)
    body_a, _ = store_stream(repo, io.BytesIO(A))
    body_b, _ = store_stream(repo, io.BytesIO(B))
    now = time.time_ns()
    repo.save_record(Record("a", now, "stream", body_a.to_cbor()))
    repo.save_record(Record("b", now + 1, "stream", body_b.to_cbor()))
    return repo


# -- check -----------------------------------------------------------------------------------------


def test_check_clean_repository(separate: Repository) -> None:
    report = api.check(separate)
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.records == 2
    assert report.index_files == len(separate.index_files()) == 2
    assert report.packs == len(list(separate.backend.list(FileType.PACK))) >= 6
    assert report.blobs == len(separate.index)
    assert report.bytes_read == 0
    full = api.check(separate, read_data=True)
    assert full.ok and full.warnings == []
    assert full.bytes_read == pack_bytes(separate.backend)
    assert full.damaged_packs == [] and full.damaged_records == []
    assert full.to_json()["ok"] is True


def test_unindexed_pack_is_a_warning_and_rebuild_index_adopts_it(
    separate: Repository, tmp_path: Path
) -> None:
    inner = separate.backend
    packs_before = {i.handle for i in inner.list(FileType.PACK)}
    faulty = FaultyBackend(inner)
    writer = Repository.open(faulty, cache_dir=tmp_path / "writer")
    c = random.Random(3).randbytes(30_000)
    blob = writer.save_blob(BlobType.DATA, c).id
    faulty.crash_after_saves(FileType.INDEX, 1)
    with pytest.raises(SimulatedCrash):
        writer.flush()
    writer.close()
    (leftover,) = {i.handle for i in inner.list(FileType.PACK)} - packs_before
    report = api.check(separate, read_data=True)
    assert report.ok, report.errors
    assert len(report.warnings) == 1
    assert leftover.name[:12] in report.warnings[0]
    assert "not in any index" in report.warnings[0]

    assert api.rebuild_index(separate) == len(list(inner.list(FileType.PACK)))
    after = api.check(separate, read_data=True)
    assert after.ok and after.warnings == []
    assert after.index_files == 1
    assert separate.load_blob(blob) == c
    assert restore(separate, "a") == A and restore(separate, "b") == B


def test_missing_chunk_list_pack_is_an_error_naming_pack_and_record(separate: Repository) -> None:
    _, lists = locations(separate, "a")
    pack = lists[0].pack_id
    separate.backend.remove(Handle(FileType.PACK, pack.hex))
    report = api.check(separate)
    assert not report.ok
    assert f"pack {pack.short} is in the index but missing" in report.errors
    assert any("'a'" in e for e in report.errors)
    assert not any("'b'" in e for e in report.errors)
    assert restore(separate, "b") == B


def test_missing_data_pack_names_the_record(separate: Repository) -> None:
    chunks, _ = locations(separate, "a")
    pack = chunks[0].pack_id
    separate.backend.remove(Handle(FileType.PACK, pack.hex))
    report = api.check(separate)
    assert f"pack {pack.short} is in the index but missing" in report.errors
    assert report.damaged_records == ["a"]
    assert any("'a'" in e for e in report.errors)


def test_read_data_finds_flipped_bit_on_disk(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    repo = init(backend, tmp_path / "cache")
    api.put(repo, "a", io.BytesIO(A))
    api.put(repo, "b", io.BytesIO(B))
    chunks, _ = locations(repo, "a")
    victim = chunks[len(chunks) // 2]
    path = backend.path(Handle(FileType.PACK, victim.pack_id.hex))
    raw = bytearray(path.read_bytes())
    raw[victim.entry.offset + victim.entry.length // 2] ^= 0x10
    path.write_bytes(bytes(raw))

    assert api.check(repo).ok  # headers and sizes are intact
    report = api.check(repo, read_data=True)
    assert not report.ok
    assert report.damaged_packs == [victim.pack_id.hex]
    assert report.damaged_records == ["a"]
    assert any(victim.pack_id.short in e and "does not match its name" in e for e in report.errors)
    assert any(victim.entry.id.short in e for e in report.errors)
    assert any("'a'" in e and "damaged packs" in e for e in report.errors)
    assert restore(repo, "b") == B
    with pytest.raises(CorruptBlob, match=victim.pack_id.short):
        restore(repo, "a")
    repo.close()


def test_rebuild_index_after_index_files_were_deleted(separate: Repository, tmp_path: Path) -> None:
    backend = separate.backend
    separate.close()
    for info in list(backend.list(FileType.INDEX)):
        backend.remove(info.handle)
    repo = Repository.open(backend, cache_dir=tmp_path / "cache")
    assert len(repo.index) == 0  # the cache noticed its index files are gone
    with pytest.raises(MissingObject):
        restore(repo, "a")
    assert not api.check(repo).ok
    n = api.rebuild_index(repo)
    assert n == len(list(backend.list(FileType.PACK)))
    assert restore(repo, "a") == A and restore(repo, "b") == B
    report = api.check(repo, read_data=True)
    assert report.ok and report.warnings == [] and report.index_files == 1
    assert list_locks(backend) == []
    with Repository.open(backend, cache_dir=tmp_path / "fresh") as again:
        assert restore(again, "b") == B


def test_rebuild_index_reports_unreadable_packs(separate: Repository) -> None:
    backend = separate.backend
    chunks, _ = locations(separate, "a")
    handle = Handle(FileType.PACK, chunks[0].pack_id.hex)
    raw = backend.load(handle)
    backend.remove(handle)
    backend.save(handle, raw[:-3])  # the trailer is cut off
    with pytest.raises(CorruptPack, match=chunks[0].pack_id.short):
        api.rebuild_index(separate)
    assert list_locks(backend) == []
    # The blobs were intact: the old index named them, they verified and now live in a new pack.
    assert restore(separate, "a") == A and restore(separate, "b") == B
    report = api.check(separate, read_data=True)
    assert report.ok, report.errors
    # All its blobs were salvaged in order: the new pack is the damaged one as it was written.
    assert report.warnings == []
    assert backend.load(handle) == raw


def damage_header(backend: Backend, pack_id: Digest) -> None:
    """Make the pack's header unreadable (its first byte), leaving every blob intact."""
    handle = Handle(FileType.PACK, pack_id.hex)
    raw = bytearray(backend.load(handle))
    header_len = int.from_bytes(raw[-8:-4], "little")
    raw[len(raw) - 8 - header_len] ^= 0x55
    backend.remove(handle)
    backend.save(handle, bytes(raw))


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_rebuild_index_keeps_the_blobs_of_a_pack_whose_header_is_damaged(
    encrypted: bool, tmp_path: Path
) -> None:
    backend = MemoryBackend()
    repo = Repository.init(
        backend,
        cache_dir=tmp_path / "c",
        password=b"pw" if encrypted else None,
        chunker=PARAMS,
        pack_size=PACK_SIZE,
    )
    api.put(repo, "a", io.BytesIO(A))
    api.put(repo, "b", io.BytesIO(B))
    chunks, lists = locations(repo, "a")
    victims = {chunks[len(chunks) // 2].pack_id, lists[0].pack_id}  # a data and a metadata pack
    for pack_id in victims:
        damage_header(backend, pack_id)
    assert restore(repo, "a") == A  # readable through the index before the rebuild ...
    with pytest.raises(CorruptPack, match="salvaged from the old index") as err:
        api.rebuild_index(repo)
    assert all(v.short in str(err.value) for v in victims)
    assert restore(repo, "a") == A and restore(repo, "b") == B  # ... and after it
    report = api.check(repo, read_data=True)
    assert report.ok, report.errors
    # A damaged pack is left unindexed (prune deletes it), or was rewritten as it had been written.
    for w in report.warnings:
        assert "not in any index" in w and any(v.short in w for v in victims), w
    api.prune(repo)
    assert api.check(repo, read_data=True).warnings == []
    with Repository.open(
        backend, cache_dir=tmp_path / "fresh", password=b"pw" if encrypted else None
    ) as again:
        assert restore(again, "a") == A
    repo.close()


# Compressible text with incompressible stretches: packs hold zstd-framed and raw blobs.
WORDS = [
    bytes(random.Random(i).choices(range(97, 123), k=random.Random(i).randint(2, 9)))
    for i in range(300)
]
MIXED = b"".join(
    b" ".join(random.Random(i).choices(WORDS, k=1200))
    + (random.Random(i).randbytes(6000) if i % 3 == 0 else b"")
    for i in range(12)
)


def test_rebuild_index_scans_a_damaged_pack_when_no_index_names_its_blobs(tmp_path: Path) -> None:
    backend = MemoryBackend()
    repo = init(backend, tmp_path / "c")
    api.put(repo, "m", io.BytesIO(MIXED))
    api.put(repo, "b", io.BytesIO(B))
    chunks, lists = locations(repo, "m")
    victims = {c.pack_id for c in chunks} | {lists[0].pack_id}
    flags = {backend.load(Handle(FileType.PACK, c.pack_id.hex), c.entry.offset, 1) for c in chunks}
    assert flags == {b"\x00", b"\x01"}  # raw and zstd-framed blobs
    for pack_id in victims:
        damage_header(backend, pack_id)
    for info in list(backend.list(FileType.INDEX)):
        backend.remove(info.handle)  # no old index can help
    repo.close()
    repo = Repository.open(backend, cache_dir=tmp_path / "c2")
    with pytest.raises(CorruptPack, match="salvaged from the scan"):
        api.rebuild_index(repo)
    assert restore(repo, "m") == MIXED and restore(repo, "b") == B
    report = api.check(repo, read_data=True)
    assert report.ok, report.errors
    assert all("not in any index" in w for w in report.warnings)
    repo.close()


def test_rebuild_index_of_an_encrypted_pack_needs_the_old_index(tmp_path: Path) -> None:
    backend = MemoryBackend()
    repo = Repository.init(
        backend, cache_dir=tmp_path / "c", password=b"pw", chunker=PARAMS, pack_size=PACK_SIZE
    )
    api.put(repo, "a", io.BytesIO(A))
    chunks, _ = locations(repo, "a")
    damage_header(backend, chunks[0].pack_id)
    for info in list(backend.list(FileType.INDEX)):
        backend.remove(info.handle)
    with pytest.raises(CorruptPack, match="nothing could be salvaged"):
        api.rebuild_index(repo)
    assert not api.check(repo).ok  # reported, never silently dropped
    # The damaged pack is still there, for whatever better tool may come.
    assert backend.exists(Handle(FileType.PACK, chunks[0].pack_id.hex))
    repo.close()


# -- prune -----------------------------------------------------------------------------------------


def test_prune_removes_unreferenced_data(separate: Repository) -> None:
    backend = separate.backend
    chunks_a, lists_a = locations(separate, "a")
    packs_a = {loc.pack_id for loc in chunks_a + lists_a}
    before = pack_bytes(backend)
    assert api.forget(separate, "a")
    report = api.prune(separate)
    assert report.packs_deleted == len(packs_a) and report.packs_repacked == 0
    assert report.blobs_removed == len({loc.entry.id for loc in chunks_a + lists_a})
    assert report.bytes_freed == before - pack_bytes(backend) > len(A) // 2
    present = {Digest.from_hex(i.handle.name) for i in backend.list(FileType.PACK)}
    assert present.isdisjoint(packs_a)
    assert all(separate.lookup(loc.entry.id) is None for loc in chunks_a)
    assert restore(separate, "b") == B
    report = api.check(separate, read_data=True)
    assert report.ok and report.warnings == [] and report.index_files == 1
    # Nothing left to do.
    again = api.prune(separate)
    assert again.packs_deleted == again.packs_repacked == again.bytes_freed == 0
    assert list_locks(backend) == []


def test_prune_repacks_partly_used_packs(tmp_path: Path) -> None:
    repo = mixed(MemoryBackend(), tmp_path / "cache")
    backend = repo.backend
    chunks_a, lists_a = locations(repo, "a")
    chunks_b, lists_b = locations(repo, "b")
    only_a = {loc.entry.id for loc in chunks_a + lists_a} - {
        loc.entry.id for loc in chunks_b + lists_b
    }
    shared_packs = {loc.pack_id for loc in chunks_a + lists_a} & {
        loc.pack_id for loc in chunks_b + lists_b
    }
    assert shared_packs  # the boundary data pack and the chunk-list pack
    before = pack_bytes(backend)
    api.forget(repo, "a")

    # With a high threshold partly used packs are kept as they are.
    kept = api.prune(repo, repack_fraction=1.0)
    assert kept.packs_repacked == 0 and kept.packs_deleted > 0
    present = {Digest.from_hex(i.handle.name) for i in backend.list(FileType.PACK)}
    assert shared_packs <= present

    report = api.prune(repo, repack_fraction=0.0)
    assert report.packs_repacked == len(shared_packs)
    assert report.packs_written >= 1 and report.packs_deleted == 0
    present = {Digest.from_hex(i.handle.name) for i in backend.list(FileType.PACK)}
    assert present.isdisjoint(shared_packs)
    assert pack_bytes(backend) == before - kept.bytes_freed - report.bytes_freed
    assert all(repo.lookup(b) is None for b in only_a)
    assert restore(repo, "b") == B
    check = api.check(repo, read_data=True)
    assert check.ok and check.warnings == []
    assert check.blobs == len({loc.entry.id for loc in chunks_b + lists_b})
    repo.close()


def test_prune_refuses_when_a_chunk_list_is_missing(separate: Repository) -> None:
    _, lists = locations(separate, "b")
    separate.backend.remove(Handle(FileType.PACK, lists[0].pack_id.hex))
    api.forget(separate, "a")
    before = snapshot(separate.backend)
    with pytest.raises(CheckFailed, match="prune refused"):
        api.prune(separate)
    assert snapshot(separate.backend) == before


def test_prune_refuses_when_a_referenced_blob_is_not_indexed(separate: Repository) -> None:
    chunks, _ = locations(separate, "b")
    separate.backend.remove(Handle(FileType.PACK, chunks[0].pack_id.hex))
    api.rebuild_index(separate)  # the index no longer knows the lost blobs
    assert separate.lookup(chunks[0].entry.id) is None
    api.forget(separate, "a")
    before = snapshot(separate.backend)
    with pytest.raises(CheckFailed, match="referenced blob"):
        api.prune(separate)
    assert snapshot(separate.backend) == before


def two_copies(tmp_path: Path) -> tuple[Repository, Location]:
    """Record 'a' whose middle chunk two writers (who did not see each other) both stored; the
    copy of writer 1 ('a') is then lost, writer 2's copy (record 'a2', already forgotten) is not.
    """
    backend = MemoryBackend()
    init(backend, tmp_path / "w1").close()
    w1 = Repository.open(backend, cache_dir=tmp_path / "w1")
    w2 = Repository.open(backend, cache_dir=tmp_path / "w2")
    api.put(w1, "a", io.BytesIO(A))
    api.put(w2, "a2", io.BytesIO(random.Random(5).randbytes(30_000) + A))
    chunks, _ = locations(w1, "a")
    victim = chunks[len(chunks) // 2]
    copy = w2.lookup(victim.entry.id)
    w2.close()
    assert copy is not None and copy.pack_id != victim.pack_id
    backend.remove(Handle(FileType.PACK, victim.pack_id.hex))
    api.forget(w1, "a2")
    return w1, victim


def test_a_lost_pack_is_recovered_from_another_copy_by_rebuild_index(tmp_path: Path) -> None:
    repo, victim = two_copies(tmp_path)
    report = api.check(repo)
    assert f"pack {victim.pack_id.short} is in the index but missing" in report.errors
    api.rebuild_index(repo)
    assert restore(repo, "a") == A
    assert api.check(repo, read_data=True).ok
    repo.close()


def test_prune_keeps_the_surviving_copy_when_a_referenced_pack_is_missing(tmp_path: Path) -> None:
    repo, victim = two_copies(tmp_path)
    report = api.prune(repo)
    assert any("dropped from the index" in n for n in report.notes)
    assert restore(repo, "a") == A
    final = api.check(repo, read_data=True)
    assert final.ok, final.errors
    assert not any(victim.pack_id.short in w for w in final.warnings)
    repo.close()


def test_prune_refuses_when_a_referenced_blob_has_no_copy_left(tmp_path: Path) -> None:
    repo, victim = two_copies(tmp_path)
    copies = IndexSnapshot.load(repo).copies[victim.entry.id]
    assert len(copies) == 2
    for loc in copies:
        if repo.backend.exists(Handle(FileType.PACK, loc.pack_id.hex)):
            repo.backend.remove(Handle(FileType.PACK, loc.pack_id.hex))
    api.rebuild_index(repo)  # the index now lacks the blob entirely
    before = snapshot(repo.backend)
    with pytest.raises(CheckFailed):
        api.prune(repo)
    assert snapshot(repo.backend) == before
    repo.close()


def test_chunk_list_equal_to_stored_data_keeps_its_chunks(tmp_path: Path) -> None:
    victim = random.Random(5).randbytes(40_000)
    repo = init(MemoryBackend(), tmp_path / "cache")
    # A file that happens to hold exactly the chunk list the victim stream will get (in an
    # unencrypted repository anyone who knows the victim's content can compute it).
    refs = [ChunkRef(sha256(c), len(c)) for c in Chunker(PARAMS).chunk_bytes(victim)]
    crafted = encode_chunk_list(refs)
    api.put(repo, "crafted", io.BytesIO(crafted))
    api.put(repo, "victim", io.BytesIO(victim))
    assert api.check(repo, read_data=True).ok
    try:
        api.prune(repo)
        assert restore(repo, "victim") == victim
    finally:
        repo.close()


def test_prune_dry_run_changes_nothing(tmp_path: Path) -> None:
    repo = mixed(MemoryBackend(), tmp_path / "cache")
    api.forget(repo, "a")
    before = snapshot(repo.backend)
    dry = api.prune(repo, dry_run=True, repack_fraction=0.0)
    assert dry.dry_run and dry.packs_deleted > 0 and dry.packs_repacked > 0
    assert snapshot(repo.backend) == before
    real = api.prune(repo, repack_fraction=0.0)
    assert (dry.packs_deleted, dry.packs_repacked, dry.blobs_removed) == (
        real.packs_deleted,
        real.packs_repacked,
        real.blobs_removed,
    )
    assert snapshot(repo.backend) != before
    repo.close()


# Index files scaled down: a few kB instead of 256 MiB, so a handful of packs needs several files.
SMALL_INDEX = IndexLimits(max_bytes=2048, max_blobs=10_000)


def index_plaintext_sizes(repo: Repository) -> list[int]:
    return [len(encode_index(repo.load_index_file(f))) for f in repo.index_files()]


@pytest.mark.parametrize("rewrite", ["prune", "rebuild-index"])
def test_rewritten_index_files_stay_within_the_readers_cap(rewrite: str, tmp_path: Path) -> None:
    backend = MemoryBackend()
    repo = Repository.init(
        backend,
        cache_dir=tmp_path / "c0",
        chunker=PARAMS,
        pack_size=PACK_SIZE,
        index_limits=SMALL_INDEX,
    )
    api.put(repo, "a", io.BytesIO(A))
    api.put(repo, "b", io.BytesIO(B))
    api.put(repo, "c", io.BytesIO(A[:50_000] + B[:50_000]))
    blobs = len(repo.index)
    # One index file for every blob would need several times the cap.
    assert blobs * 50 > 2 * SMALL_INDEX.max_bytes
    if rewrite == "prune":
        api.forget(repo, "c")
        report = api.prune(repo, repack_fraction=0.0)
        assert report.index_files_written > 1
    else:
        api.rebuild_index(repo)
    sizes = index_plaintext_sizes(repo)
    assert len(sizes) > 1 and max(sizes) <= SMALL_INDEX.max_bytes
    # Every new file supersedes every old one, so they are all preferred to any leftover.
    assert len({repo.load_index_file(f).supersedes for f in repo.index_files()}) == 1
    repo.close()
    # A reader with the same cap opens the repository and reads everything.
    with Repository.open(backend, cache_dir=tmp_path / "c1", index_limits=SMALL_INDEX) as again:
        assert restore(again, "a") == A and restore(again, "b") == B
        report_check = api.check(again, read_data=True)
        assert report_check.ok and report_check.warnings == [], report_check.errors
        # Nothing to do: the split index is not rewritten again.
        assert api.prune(again).index_files_written == 0


def test_an_index_file_over_the_cap_is_refused_before_anything_is_written(
    separate: Repository,
) -> None:
    snap = IndexSnapshot.load(separate)
    whole = IndexFile(tuple(snap.packs.values()))
    separate.index_limits = IndexLimits(max_bytes=len(encode_index(whole)) - 1)
    before = snapshot(separate.backend)
    with pytest.raises(ChunkstoreError, match="readers accept at most"):
        separate.write_index_file(whole)
    assert snapshot(separate.backend) == before
    parts = separate.write_index(whole.packs)
    assert len(parts) == 2


def test_check_and_prune_remove_the_temp_files_of_crashed_saves(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    repo = init(backend, tmp_path / "cache")
    api.put(repo, "a", io.BytesIO(A))
    old, young = backend.root / "data" / "00" / ".tmp-old", backend.root / "index" / ".tmp-young"
    for path in (old, young):
        path.write_bytes(bytes(PACK_SIZE))
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    report = api.check(repo)
    assert report.temp_files_removed == 1 and report.ok
    assert not old.exists() and young.exists()  # a running save may still be writing it
    assert api.prune(repo, dry_run=True).temp_files_removed == 0 and young.exists()
    assert api.prune(repo).temp_files_removed == 1  # the exclusive lock: no save is running
    assert not young.exists()
    assert restore(repo, "a") == A
    repo.close()


class LostOnceIndexed:
    """A held lock that is lost (as by a missed refresh) once a new index file is stored."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.before = set(backend.list(FileType.INDEX))

    def check(self) -> None:
        if set(self.backend.list(FileType.INDEX)) - self.before:
            raise LockConflict("the lock was lost: its refresh is overdue")


class Lost:
    def check(self) -> None:
        raise LockConflict("the lock was lost: its refresh is overdue")


def test_prune_checks_its_lock_before_deleting_anything(tmp_path: Path) -> None:
    # Only orphan packs to delete (no index to rewrite): the lock is still checked first.
    repo = init(MemoryBackend(), tmp_path / "cache")
    api.put(repo, "a", io.BytesIO(A))
    faulty = FaultyBackend(repo.backend)
    writer = Repository.open(faulty, cache_dir=tmp_path / "writer")
    writer.save_blob(BlobType.DATA, random.Random(3).randbytes(30_000))
    faulty.crash_after_saves(FileType.INDEX, 1)
    with pytest.raises(SimulatedCrash):
        writer.flush()  # leaves an orphan pack
    writer.close()
    before = snapshot(repo.backend)
    repo.lock = Lost()
    with pytest.raises(LockConflict):
        prune_module.prune(repo)
    assert snapshot(repo.backend) == before
    repo.lock = None
    assert api.prune(repo).packs_deleted == 1

    # With an index to rewrite: lost after the new index is stored, before any deletion.
    api.put(repo, "b", io.BytesIO(B))
    api.forget(repo, "a")
    packs = set(repo.backend.list(FileType.PACK))
    old_index = set(repo.backend.list(FileType.INDEX))
    repo.lock = LostOnceIndexed(repo.backend)
    with pytest.raises(LockConflict):
        prune_module.prune(repo)
    assert set(repo.backend.list(FileType.PACK)) == packs  # nothing deleted
    assert old_index <= set(repo.backend.list(FileType.INDEX))
    repo.lock = None
    assert restore(repo, "b") == B
    assert api.prune(repo).packs_deleted > 0 and api.check(repo, read_data=True).ok
    repo.close()


def test_rebuild_index_checks_its_lock_before_deleting_index_files(separate: Repository) -> None:
    old_index = set(separate.backend.list(FileType.INDEX))
    separate.lock = LostOnceIndexed(separate.backend)
    with pytest.raises(LockConflict):
        reindex_module.rebuild_index(separate)
    assert old_index <= set(separate.backend.list(FileType.INDEX))
    separate.lock = None


@pytest.mark.parametrize("fraction", [-0.1, 1.01, 30.0, float("nan"), float("inf")])
def test_repack_fraction_out_of_range_is_a_usage_error(
    separate: Repository, fraction: float
) -> None:
    api.forget(separate, "a")
    before = snapshot(separate.backend)
    with pytest.raises(UsageError, match="between 0 and 1"):
        api.prune(separate, repack_fraction=fraction)
    assert snapshot(separate.backend) == before
    assert list_locks(separate.backend) == []


def test_forget_of_a_name_nothing_has_is_an_error(separate: Repository) -> None:
    (rid, _), _ = separate.list_records()
    for name in ("nosuch", rid.hex[:12], rid.hex):  # an id (prefix) is not a name
        with pytest.raises(MissingObject, match="no record named"):
            api.forget(separate, name)
    assert [r.name for _, r in separate.list_records()] == ["a", "b"]


def test_prune_needs_an_exclusive_lock(separate: Repository) -> None:
    backend = separate.backend
    api.forget(separate, "a")
    # A live writer: another process on this host (our parent, alive) holds a shared lock.
    other = acquire_lock(backend, exclusive=False, pid=os.getppid())
    before = snapshot(backend)
    try:
        with pytest.raises(LockConflict, match="shared lock"):
            api.prune(separate)
        with pytest.raises(LockConflict):
            api.rebuild_index(separate)
        assert snapshot(backend) == before
    finally:
        other.release()
    assert api.prune(separate).packs_deleted > 0
    assert restore(separate, "b") == B
