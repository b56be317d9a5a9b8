"""Repository: create/open, passwords and keys, blob save/load, flush ordering, the index cache."""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest

from chunkstore import api
from chunkstore.backends.base import Backend, FileType, Handle
from chunkstore.backends.local import LocalBackend
from chunkstore.backends.memory import MemoryBackend
from chunkstore.blob import BlobType
from chunkstore.chunker import ChunkerParams
from chunkstore.config import RepoConfig
from chunkstore.errors import (
    CorruptBlob,
    CorruptMetadata,
    MissingObject,
    NotFound,
    RepositoryExists,
    RepositoryNotFound,
    UsageError,
    WrongPassword,
)
from chunkstore.packindex import IndexLimits
from chunkstore.repository import Repository
from chunkstore.testing.faults import FaultyBackend
from index import cbor
from index.ids import Digest
from index.record import Record

PARAMS = ChunkerParams(1024, 4096, 16384)
PACK_SIZE = 64 * 1024
PASSWORD = b"correct horse battery staple"


def data(seed: int, n: int) -> bytes:
    """``n`` deterministic incompressible bytes."""
    return random.Random(seed).randbytes(n)


def init(backend: Backend, cache: Path, password: bytes | None = None) -> Repository:
    return Repository.init(
        backend, cache_dir=cache, password=password, chunker=PARAMS, pack_size=PACK_SIZE
    )


def snapshot(backend: Backend) -> dict[Handle, bytes]:
    """Every file of a backend and its bytes."""
    out: dict[Handle, bytes] = {}
    for t in FileType:
        if t is FileType.CONFIG:
            continue
        for info in backend.list(t):
            out[info.handle] = backend.load(info.handle)
    try:
        out[Handle.config()] = backend.load(Handle.config())
    except NotFound:
        pass
    return out


def tree(root: Path) -> dict[str, bytes]:
    """Every file under a directory (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


BackendFactory = Callable[[Path], Backend]


def _memory(_: Path) -> Backend:
    return MemoryBackend()


def _local(tmp: Path) -> Backend:
    return LocalBackend(tmp / "repo")


BACKENDS = [pytest.param(_memory, id="memory"), pytest.param(_local, id="local")]


def reopen_backend(backend: Backend) -> Backend:
    """A second handle on the same storage (a new LocalBackend, or the same MemoryBackend)."""
    if isinstance(backend, LocalBackend):
        return LocalBackend(backend.root)
    return backend


# -- create / open -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", BACKENDS)
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_init_then_open_round_trip(make: BackendFactory, encrypted: bool, tmp_path: Path) -> None:
    backend = make(tmp_path)
    password = PASSWORD if encrypted else None
    payload = data(1, 5000)
    with init(backend, tmp_path / "cache", password) as repo:
        assert repo.config.encrypted is encrypted
        blob = repo.save_blob(BlobType.DATA, payload)
        assert blob.new
        rid = repo.save_record(Record("r", 1, "stream", {"x": blob.id}))
        config = repo.config

    keys = list(backend.list(FileType.KEY))
    assert len(keys) == (1 if encrypted else 0)
    packs = [backend.load(i.handle) for i in backend.list(FileType.PACK)]
    assert len(packs) == 1
    # Incompressible data is stored raw in a plain repository, and never in the clear otherwise.
    assert (payload[:64] in packs[0]) is (not encrypted)

    # A fresh cache forces the index to be read from the backend.
    with Repository.open(
        reopen_backend(backend), cache_dir=tmp_path / "cache2", password=password
    ) as again:
        assert again.config == config
        assert again.load_blob(blob.id) == payload
        assert again.load_record(rid) == Record("r", 1, "stream", {"x": blob.id})


def test_password_source_is_called_only_for_encrypted_repositories(tmp_path: Path) -> None:
    backend = MemoryBackend()
    init(backend, tmp_path / "c").close()

    def never() -> bytes:
        raise AssertionError("password asked for an unencrypted repository")

    Repository.open(backend, cache_dir=tmp_path / "c", password=never).close()

    enc = MemoryBackend()
    init(enc, tmp_path / "e", PASSWORD).close()
    calls: list[int] = []

    def source() -> bytes:
        calls.append(1)
        return PASSWORD

    Repository.open(enc, cache_dir=tmp_path / "e", password=source).close()
    assert calls == [1]
    with pytest.raises(WrongPassword, match="password is required"):
        Repository.open(enc, cache_dir=tmp_path / "e", password=None)


@pytest.mark.parametrize("make", BACKENDS)
def test_init_over_existing_repository_is_refused(make: BackendFactory, tmp_path: Path) -> None:
    backend = make(tmp_path)
    init(backend, tmp_path / "cache").close()
    before = snapshot(backend)
    with pytest.raises(RepositoryExists):
        init(reopen_backend(backend), tmp_path / "cache")
    assert snapshot(backend) == before


def test_open_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFound, match="chunkstore init"):
        Repository.open(LocalBackend(tmp_path / "nothing"), cache_dir=tmp_path / "c")
    with pytest.raises(RepositoryNotFound):
        Repository.open(MemoryBackend(), cache_dir=tmp_path / "c")
    assert not (tmp_path / "nothing").exists()


def test_wrong_password_writes_nothing(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    with init(backend, tmp_path / "cache", PASSWORD) as repo:
        repo.save_blob(BlobType.DATA, data(2, 3000))
        repo.flush()
    before = tree(backend.root)
    faulty = FaultyBackend(LocalBackend(backend.root))
    cache = tmp_path / "other-cache"
    with pytest.raises(WrongPassword, match="wrong password"):
        Repository.open(faulty, cache_dir=cache, password=b"not the password")
    assert tree(backend.root) == before
    assert [op for op, _ in faulty.log if op in ("save", "remove", "create")] == []
    assert not cache.exists() or not any(cache.rglob("*"))


def test_add_key_then_open_with_either_password(tmp_path: Path) -> None:
    backend = MemoryBackend()
    with init(backend, tmp_path / "c", PASSWORD) as repo:
        blob = repo.save_blob(BlobType.DATA, data(3, 2000)).id
        repo.flush()
        key_id = repo.add_key(b"second password")
    names = sorted(i.handle.name for i in backend.list(FileType.KEY))
    assert len(names) == 2 and key_id.hex in names
    with Repository.open(backend, cache_dir=tmp_path / "c2", password=b"second password") as r:
        assert r.load_blob(blob) == data(3, 2000)
    with pytest.raises(WrongPassword):
        Repository.open(backend, cache_dir=tmp_path / "c3", password=b"third")


def test_add_key_refused_without_encryption(tmp_path: Path) -> None:
    with init(MemoryBackend(), tmp_path) as repo, pytest.raises(UsageError):
        repo.add_key(b"pw")


def test_config_mac_tamper_is_detected(tmp_path: Path) -> None:
    backend = MemoryBackend()
    init(backend, tmp_path / "c", PASSWORD).close()
    raw = backend.load(Handle.config())
    env = cbor.decode_envelope(raw, kind="config", versions=(1, 2), max_size=1 << 16)
    body = dict(env.data)
    assert body["pack_size"] == PACK_SIZE
    body["pack_size"] = 2 * PACK_SIZE  # keep the old MAC
    tampered = cbor.encode_envelope("config", env.version, body)
    assert RepoConfig.decode(tampered).pack_size == 2 * PACK_SIZE  # still well-formed
    backend.save(Handle.config(), tampered, overwrite=True)
    with pytest.raises(CorruptMetadata, match="MAC"):
        Repository.open(backend, cache_dir=tmp_path / "c2", password=PASSWORD)


def test_encryption_mode_is_pinned_per_repository_id(tmp_path: Path) -> None:
    backend = MemoryBackend()
    cache = tmp_path / "cache"
    with init(backend, cache, PASSWORD) as repo:
        config = repo.config
    Repository.open(backend, cache_dir=cache, password=PASSWORD).close()
    # Swap in an unencrypted config with the same id (an attacker cannot forge the MAC, so they
    # drop encryption instead).
    plain = RepoConfig(repo_id=config.repo_id, encrypted=False, chunker=PARAMS, pack_size=PACK_SIZE)
    backend.save(Handle.config(), plain.encode(), overwrite=True)
    with pytest.raises(CorruptMetadata, match="was encrypted when last used"):
        Repository.open(backend, cache_dir=cache, password=PASSWORD)
    with pytest.raises(CorruptMetadata):
        Repository.open(backend, cache_dir=cache)


# -- saving and loading blobs ----------------------------------------------------------------------


def test_save_blob_deduplicates(tmp_path: Path) -> None:
    backend = FaultyBackend(MemoryBackend())
    with init(backend, tmp_path) as repo:
        payload = data(4, 6000)
        first = repo.save_blob(BlobType.DATA, payload)
        second = repo.save_blob(BlobType.DATA, payload)
        assert first.new and not second.new
        assert first.id == second.id
        assert first.stored_length > 0 and second.stored_length == 0
        repo.flush()
        third = repo.save_blob(BlobType.DATA, payload)  # now found in the index
        assert not third.new and third.id == first.id
        repo.flush()
    packs = list(backend.inner.list(FileType.PACK))
    assert len(packs) == 1
    assert packs[0].size < 2 * len(payload)
    saved = [h.type for h in backend.calls("save") if isinstance(h, Handle)]
    assert saved == [FileType.CONFIG, FileType.PACK, FileType.INDEX]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_load_blob_round_trip_both_types(encrypted: bool, tmp_path: Path) -> None:
    backend = MemoryBackend()
    blobs = {
        BlobType.DATA: [data(10 + i, 500 + 700 * i) for i in range(5)],
        BlobType.META: [b"meta %d " % i * (50 + i) for i in range(5)],
    }
    with init(backend, tmp_path, PASSWORD if encrypted else None) as repo:
        ids = {t: [repo.save_blob(t, b).id for b in bs] for t, bs in blobs.items()}
        repo.flush()
        for t, bs in blobs.items():
            for blob_id, b in zip(ids[t], bs, strict=True):
                assert repo.load_blob(blob_id) == b
                loc = repo.lookup(blob_id)
                assert loc is not None and loc.entry.type is t
                assert loc.entry.raw_length == len(b)
        # Data and metadata never share a pack.
        data_packs = {repo.lookup(i).pack_id for i in ids[BlobType.DATA]}  # type: ignore[union-attr]
        meta_packs = {repo.lookup(i).pack_id for i in ids[BlobType.META]}  # type: ignore[union-attr]
        assert data_packs.isdisjoint(meta_packs)


def test_load_blob_unknown_id(tmp_path: Path) -> None:
    with init(MemoryBackend(), tmp_path) as repo:
        with pytest.raises(MissingObject, match="not in the index"):
            repo.load_blob(Digest("sha256", b"\x01" * 32))


def test_load_blobs_coalesces_reads(tmp_path: Path) -> None:
    backend = FaultyBackend(MemoryBackend())
    payloads = [data(100 + i, 1000 + 97 * i) for i in range(60)]
    with init(backend, tmp_path) as repo:
        ids = [repo.save_blob(BlobType.DATA, p).id for p in payloads]
        repo.flush()
        packs = {repo.lookup(i).pack_id for i in ids}  # type: ignore[union-attr]
        assert len(packs) >= 2
        backend.clear_log()
        asked = ids + ids[::3]  # duplicates are returned once
        got = list(repo.load_blobs(reversed(asked)))
        pack_loads = [h for h in backend.calls("load") if isinstance(h, Handle)]
        assert all(h.type is FileType.PACK for h in pack_loads)
        assert len(pack_loads) == len(packs) < len(ids)
        assert sorted(i for i, _ in got) == sorted(ids)
        by_id = dict(got)
        assert all(by_id[i] == p for i, p in zip(ids, payloads, strict=True))

        # With no gap allowed between reads, reads of adjacent blobs still merge.
        backend.clear_log()
        assert dict(repo.load_blobs(ids[:10], max_gap=0)) == dict(
            zip(ids[:10], payloads[:10], strict=True)
        )
        assert len(backend.calls("load")) < 10


def test_blobs_in_open_packs_are_loadable(tmp_path: Path) -> None:
    backend = FaultyBackend(MemoryBackend())
    with init(backend, tmp_path) as repo:
        a = repo.save_blob(BlobType.DATA, data(5, 2000)).id
        b = repo.save_blob(BlobType.META, b"m" * 300).id
        assert repo.has_blob(a) and repo.has_blob(b)
        assert list(backend.inner.list(FileType.PACK)) == []
        assert repo.load_blob(a) == data(5, 2000)
        assert dict(repo.load_blobs([b, a])) == {a: data(5, 2000), b: b"m" * 300}
        # Loading wrote the packs (one read path) but no index yet.
        assert list(backend.inner.list(FileType.INDEX)) == []
        repo.flush()
    with Repository.open(backend.inner, cache_dir=tmp_path / "fresh") as again:
        assert again.load_blob(a) == data(5, 2000)
        assert again.load_blob(b) == b"m" * 300


def test_flush_writes_packs_then_index_and_records_last(tmp_path: Path) -> None:
    backend = FaultyBackend(MemoryBackend())
    with init(backend, tmp_path) as repo:
        backend.clear_log()
        ids = [repo.save_blob(BlobType.DATA, data(200 + i, 9000)).id for i in range(15)]
        ids.append(repo.save_blob(BlobType.META, b"list" * 50).id)
        # Full packs may already have left, but nothing is indexed before flush.
        assert all(h.type is FileType.PACK for h in backend.calls("save"))  # type: ignore[union-attr]
        rid = repo.save_record(Record("r", 1, "stream", {"lists": ids}))
        saves = [h for h in backend.calls("save") if isinstance(h, Handle)]
        types = [h.type for h in saves]
        assert types[-1] is FileType.RECORD and saves[-1].name == rid.hex
        assert types[-2] is FileType.INDEX
        assert set(types[:-2]) == {FileType.PACK} and len(types) >= 4
        index = repo.load_index_file(Digest.from_hex(saves[-2].name))
        assert {p.pack_id.hex for p in index.packs} == {h.name for h in saves[:-2]}
        assert {e.id for p in index.packs for e in p.entries} == set(ids)
        assert repo.stats["packs_written"] == len(saves) - 2
        assert repo.stats["index_files_written"] == 1


def test_flush_with_nothing_pending_writes_nothing(tmp_path: Path) -> None:
    backend = FaultyBackend(MemoryBackend())
    with init(backend, tmp_path) as repo:
        backend.clear_log()
        repo.flush()
        repo.save_blob(BlobType.DATA, b"abc")
        repo.flush()
        n = len(backend.calls("save"))
        repo.flush()
        assert len(backend.calls("save")) == n == 2


def test_index_rotation(tmp_path: Path) -> None:
    backend = FaultyBackend(MemoryBackend())
    payloads = [data(300 + i, 3000) for i in range(63)]
    with Repository.init(
        backend,
        cache_dir=tmp_path / "c",
        chunker=PARAMS,
        pack_size=PACK_SIZE,
        index_limits=IndexLimits(max_blobs=8),
    ) as repo:
        backend.clear_log()
        ids: list[Digest] = []
        previous = -1  # position of the previous index save in the log
        for round_ in range(3):
            batch = payloads[round_ * 21 : round_ * 21 + 20]
            ids += [repo.save_blob(BlobType.DATA, p).id for p in batch]
            # Loading an unflushed blob stores its pack first (one read path), so more than
            # max_blobs stored blobs now wait for an index file ...
            assert repo.load_blob(ids[-1]) == batch[-1]
            saves = [h for h in backend.calls("save") if isinstance(h, Handle)]
            assert [h.type for h in saves].count(FileType.INDEX) == round_
            # ... and the next save writes one, long before any flush.
            ids.append(repo.save_blob(BlobType.DATA, payloads[round_ * 21 + 20]).id)
            saves = [h for h in backend.calls("save") if isinstance(h, Handle)]
            assert [h.type for h in saves].count(FileType.INDEX) == round_ + 1
            assert saves[-1].type is FileType.INDEX
            # The rotated index lists exactly the packs stored since the previous index file.
            since = saves[previous + 1 : -1]
            assert len(since) == 1 and since[0].type is FileType.PACK
            index = repo.load_index_file(Digest.from_hex(saves[-1].name))
            assert [p.pack_id.hex for p in index.packs] == [since[0].name]
            assert len(index.packs[0].entries) in (20, 21)
            previous = len(saves) - 1
        repo.flush()
    with Repository.open(backend.inner, cache_dir=tmp_path / "fresh") as again:
        assert len(again.index_files()) == 4
        assert len(again.index) == len(ids) == 63
        assert all(again.load_blob(i) == p for i, p in zip(ids, payloads, strict=True))


def test_load_blob_while_another_thread_fills_its_pack(tmp_path: Path) -> None:
    repo = init(MemoryBackend(), tmp_path)
    x = data(30, 3000)
    xid = repo.save_blob(BlobType.DATA, x).id  # returned: x is saved (in an open pack)
    submit = repo.packer._submit
    parked, go = threading.Event(), threading.Event()

    def slow_submit(finished: Any) -> None:
        # The pack holding x is finished; this thread is descheduled before queueing it.
        parked.set()
        go.wait(2)
        submit(finished)

    repo.packer._submit = slow_submit  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def fill() -> None:
        try:
            repo.save_blob(BlobType.DATA, data(31, PACK_SIZE + 100))
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=fill)
    writer.start()
    try:
        assert parked.wait(10)
        got = repo.load_blob(xid)
    finally:
        go.set()
        writer.join()
        repo.close()
    assert errors == []
    assert got == x


# -- the local index cache -------------------------------------------------------------------------


def test_reopen_uses_cache_and_sync_merges_other_writers(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    init(LocalBackend(root), tmp_path / "a").close()
    a = Repository.open(LocalBackend(root), cache_dir=tmp_path / "a")
    b = Repository.open(LocalBackend(root), cache_dir=tmp_path / "b")
    try:
        xa = a.save_blob(BlobType.DATA, data(7, 4000)).id
        a.flush()
        xb = b.save_blob(BlobType.DATA, data(8, 4000)).id
        b.flush()
        assert b.lookup(xa) is None and a.lookup(xb) is None
        assert a.sync_index() == 1
        assert b.sync_index() == 1
        assert a.load_blob(xb) == data(8, 4000)
        assert b.load_blob(xa) == data(7, 4000)
        assert not a.save_blob(BlobType.DATA, data(8, 4000)).new
        assert a.sync_index() == 0
    finally:
        a.close()

    # Reopening with a warm cache reads no index file at all.
    faulty = FaultyBackend(LocalBackend(root))
    with Repository.open(faulty, cache_dir=tmp_path / "a") as again:
        assert [h for h in faulty.calls("load") if isinstance(h, Handle)] == [Handle.config()]
        assert again.load_blob(xb) == data(8, 4000)
    try:
        xc = b.save_blob(BlobType.DATA, data(9, 4000)).id
        b.flush()
    finally:
        b.close()
    faulty = FaultyBackend(LocalBackend(root))
    with Repository.open(faulty, cache_dir=tmp_path / "a") as again:
        loaded = [h for h in faulty.calls("load") if isinstance(h, Handle)]
        assert [h.type for h in loaded] == [FileType.CONFIG, FileType.INDEX]
        assert again.load_blob(xc) == data(9, 4000)


def test_cache_is_rebuilt_when_an_index_file_disappears(tmp_path: Path) -> None:
    backend = MemoryBackend()
    with init(backend, tmp_path) as repo:
        x = repo.save_blob(BlobType.DATA, b"x" * 3000).id
        repo.flush()
        y = repo.save_blob(BlobType.DATA, b"y" * 3000).id
        repo.flush()
        files = {
            f: {e.id for p in repo.load_index_file(f).packs for e in p.entries}
            for f in repo.index_files()
        }
    (gone,) = [f for f, ids in files.items() if x in ids]
    backend.remove(Handle(FileType.INDEX, gone.hex))
    with Repository.open(backend, cache_dir=tmp_path) as repo:
        assert repo.lookup(x) is None
        assert repo.load_blob(y) == b"y" * 3000


def _write_blob_entry(cache: Path, repo_id: bytes, key: Digest, value: bytes) -> None:
    env = lmdb.open(str(cache / repo_id.hex() / "index"), max_dbs=4)
    try:
        db = env.open_db(b"blobs")
        with env.begin(write=True) as txn:
            txn.put(key.raw + bytes([BlobType.DATA]), value, db=db)
    finally:
        env.close()


def _read_blob_entry(cache: Path, repo_id: bytes, key: Digest) -> bytes:
    env = lmdb.open(str(cache / repo_id.hex() / "index"), max_dbs=4, readonly=True)
    try:
        db = env.open_db(b"blobs", create=False)
        with env.begin() as txn:
            value = txn.get(key.raw + bytes([BlobType.DATA]), db=db)
    finally:
        env.close()
    assert value is not None
    return bytes(value)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_corrupt_cache_entry_never_serves_wrong_bytes(encrypted: bool, tmp_path: Path) -> None:
    """A damaged LMDB entry is a cache miss: the index files are read again and the read works."""
    backend = MemoryBackend()
    cache = tmp_path / "cache"
    x, y = data(20, 3000), data(21, 3000)
    with init(backend, cache, PASSWORD if encrypted else None) as repo:
        ix = repo.save_blob(BlobType.DATA, x).id
        iy = repo.save_blob(BlobType.DATA, y).id
        repo.flush()
        repo_id = repo.config.repo_id
    pw = PASSWORD if encrypted else None
    right = _read_blob_entry(cache, repo_id, ix)
    damaged = {
        # A well-formed entry pointing at another blob's bytes: verification catches it.
        "another blob": _read_blob_entry(cache, repo_id, iy),
        # Garbage of the wrong size is treated as absent.
        "garbage": b"garbage",
        # Random bytes of the right size point to a pack that does not exist (or a bad range).
        "random": hashlib.sha256(b"z").digest() + bytes(range(25)),
    }
    for what, value in damaged.items():
        _write_blob_entry(cache, repo_id, ix, value)
        with Repository.open(backend, cache_dir=cache, password=pw) as repo:
            assert repo.load_blob(ix) == x, what
            assert repo.load_blob(iy) == y
        assert _read_blob_entry(cache, repo_id, ix) == right  # the cache was rebuilt
        _write_blob_entry(cache, repo_id, ix, value)
        with Repository.open(backend, cache_dir=cache, password=pw) as repo:
            # A caller that re-reads the index itself (the mount) gets the failure instead.
            with pytest.raises((CorruptBlob, MissingObject)):
                dict(repo.load_blobs([ix], heal=False))
            assert dict(repo.load_blobs([iy, ix])) == {ix: x, iy: y}, what


def test_a_damaged_cache_entry_does_not_fail_get(tmp_path: Path) -> None:
    backend = MemoryBackend()
    cache = tmp_path / "cache"
    payload = data(22, 100_000)
    with init(backend, cache) as repo:
        api.put(repo, "f", io.BytesIO(payload))
        repo_id = repo.config.repo_id
        chunks = [loc.entry.id for loc in repo.index if loc.entry.type is BlobType.DATA]
        first, other = chunks[0], chunks[1]
    _write_blob_entry(cache, repo_id, first, _read_blob_entry(cache, repo_id, other))
    with Repository.open(backend, cache_dir=cache) as repo:
        out = io.BytesIO()
        api.get(repo, "f", out)
        assert out.getvalue() == payload


def test_real_damage_still_fails_after_one_rebuild_of_the_cache(tmp_path: Path) -> None:
    inner = MemoryBackend()
    cache = tmp_path / "cache"
    x, y = data(23, 3000), data(24, 3000)
    with init(inner, cache) as repo:
        ix = repo.save_blob(BlobType.DATA, x).id
        iy = repo.save_blob(BlobType.DATA, y).id
        repo.flush()
    backend = FaultyBackend(inner)
    (pack,) = [i.handle for i in inner.list(FileType.PACK)]
    backend.flip_bit(pack, 40)  # inside x or y, on every read
    with Repository.open(backend, cache_dir=cache) as repo:
        backend.clear_log()
        with pytest.raises(CorruptBlob, match=pack.name[:12]):
            for blob_id in (ix, iy):
                repo.load_blob(blob_id)
        with pytest.raises(CorruptBlob):
            for blob_id in (ix, iy):
                repo.load_blob(blob_id)
        # The index files were listed again once, not on every failure.
        assert backend.calls("list").count(FileType.INDEX) == 1


def test_record_round_trip_and_listing(tmp_path: Path) -> None:
    with init(MemoryBackend(), tmp_path) as repo:
        blob = repo.save_blob(BlobType.META, b"body").id
        now = time.time_ns()
        r1 = repo.save_record(Record("one", now, "stream", {"lists": [blob], "size": 4}))
        r2 = repo.save_record(Record("two", now + 1, "stream", {"lists": [], "size": 0}))
        r3 = repo.save_record(Record("one", now + 2, "stream", {"lists": [], "size": 0}))
        assert [rid for rid, _ in repo.list_records()] == [r1, r2, r3]
        assert repo.find_record("one")[0] == r3
        assert repo.find_record(r2.hex[:10])[0] == r2
        with pytest.raises(MissingObject, match="no record named"):
            repo.find_record("three")
        repo.remove_record(r3)
        assert repo.find_record("one")[0] == r1


class _SlowConcurrentBackend(MemoryBackend):
    """Pack saves take a while; records how many run at once."""

    upload_concurrency = 3

    def __init__(self) -> None:
        super().__init__()
        self._gate = threading.Lock()
        self.running = 0
        self.peak = 0

    def save(self, handle: Handle, data: bytes, *, overwrite: bool = False) -> None:
        if handle.type is FileType.PACK:
            with self._gate:
                self.running += 1
                self.peak = max(self.peak, self.running)
            time.sleep(0.05)
            with self._gate:
                self.running -= 1
        super().save(handle, data, overwrite=overwrite)


def test_backend_upload_concurrency_overlaps_pack_uploads(tmp_path: Path) -> None:
    backend = _SlowConcurrentBackend()
    repo = Repository.init(
        backend, cache_dir=tmp_path, chunker=ChunkerParams(1024, 4096, 16384), pack_size=64 << 10
    )
    rnd = random.Random(5)
    blobs = [rnd.randbytes(8000) for _ in range(200)]
    ids = [repo.save_blob(BlobType.DATA, b).id for b in blobs]
    repo.flush()
    assert backend.peak >= 2, backend.peak  # several packs were in flight at once
    assert [repo.load_blob(i) for i in ids] == blobs
    repo.close()


class _CountingRemote(MemoryBackend):
    """A backend that asks for a metadata cache and counts pack reads."""

    cache_metadata = True

    def __init__(self) -> None:
        super().__init__()
        self.pack_loads = 0

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        if handle.type is FileType.PACK:
            self.pack_loads += 1
        return super().load(handle, offset, length)


def test_remote_metadata_is_cached_on_disk_and_verified(tmp_path: Path) -> None:
    backend = _CountingRemote()
    repo = Repository.init(backend, cache_dir=tmp_path, chunker=ChunkerParams(1024, 4096, 16384))
    meta = repo.save_blob(BlobType.META, b"a tree blob" * 100).id
    data = repo.save_blob(BlobType.DATA, b"a chunk" * 100).id
    repo.flush()
    repo.close()
    again = Repository.open(backend, cache_dir=tmp_path / "other")  # another machine
    assert again.meta_cache is not None
    backend.pack_loads = 0
    assert again.load_blob(meta) == b"a tree blob" * 100
    assert backend.pack_loads == 1
    assert again.load_blob(meta) == b"a tree blob" * 100
    assert dict(again.load_blobs([meta])) == {meta: b"a tree blob" * 100}
    assert backend.pack_loads == 1  # served from the cache, no round trip
    assert again.load_blob(data) == b"a chunk" * 100
    assert backend.pack_loads == 2  # data chunks are not kept (the mount has its own cache)
    # A damaged cache entry is a miss: fetched again, verified, never returned as is.
    (entry,) = [p for p in (tmp_path / "other").rglob(meta.hex) if p.is_file()]
    entry.write_bytes(b"garbage")
    assert again.load_blob(meta) == b"a tree blob" * 100
    assert backend.pack_loads == 3
    again.close()


def test_remote_metadata_written_is_read_back_without_a_round_trip(tmp_path: Path) -> None:
    backend = _CountingRemote()
    repo = Repository.init(backend, cache_dir=tmp_path, chunker=ChunkerParams(1024, 4096, 16384))
    meta = repo.save_blob(BlobType.META, b"a recipe" * 50).id
    repo.flush()
    backend.pack_loads = 0
    assert repo.load_blob(meta) == b"a recipe" * 50
    assert backend.pack_loads == 0
    repo.close()


def test_remote_metadata_neighbours_come_in_the_same_read(tmp_path: Path) -> None:
    backend = _CountingRemote()
    repo = Repository.init(backend, cache_dir=tmp_path, chunker=ChunkerParams(1024, 4096, 16384))
    trees = [repo.save_blob(BlobType.META, f"tree {i}".encode() * 40).id for i in range(30)]
    repo.flush()
    repo.close()
    other = Repository.open(backend, cache_dir=tmp_path / "other")  # cold cache
    backend.pack_loads = 0
    assert other.load_blob(trees[10]) == b"tree 10" * 40
    assert backend.pack_loads == 1
    assert [other.load_blob(t) for t in trees] == [f"tree {i}".encode() * 40 for i in range(30)]
    assert backend.pack_loads == 1  # every neighbour came with the first read, verified
    other.close()
