"""Tests for :mod:`chunkstore.indexdb`: the LMDB cache of the merged pack index."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from chunkstore.blob import BlobType, Location, PackEntry
from chunkstore.indexdb import IndexDB
from chunkstore.packindex import IndexedPack, IndexFile
from index.ids import Digest

MAP_SIZE = 1 << 26


def did(n: int, algorithm: str = "sha256") -> Digest:
    return Digest(algorithm, n.to_bytes(32, "big"))


def pack(pack_n: int, blob_ns: list[int], algorithm: str = "sha256") -> IndexedPack:
    entries = []
    offset = 0
    for i, n in enumerate(blob_ns):
        type_ = BlobType.META if n % 2 else BlobType.DATA
        entries.append(PackEntry(type_, did(n, algorithm), offset, 10 + i, 100 + n))
        offset += 10 + i
    return IndexedPack(did(1000 + pack_n), offset + 50, tuple(entries))


F1, F2, F3 = did(9001), did(9002), did(9003)
FILES = {
    F1: IndexFile((pack(1, [1, 2, 3]), pack(2, [4]))),
    F2: IndexFile((pack(3, [5, 6]),)),
    F3: IndexFile((pack(4, [7, 8, 9]),)),
}


def locations(index: IndexFile) -> dict[Digest, Location]:
    return {e.id: Location(p.pack_id, e) for p in index.packs for e in p.entries}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "index"


@pytest.fixture
def db(db_path: Path) -> Iterator[IndexDB]:
    d = IndexDB(db_path, "sha256", map_size=MAP_SIZE)
    yield d
    d.close()


class Loader:
    def __init__(self, files: dict[Digest, IndexFile]) -> None:
        self.files = files
        self.calls: list[Digest] = []

    def __call__(self, file_id: Digest) -> IndexFile:
        self.calls.append(file_id)
        return self.files[file_id]


def raw_put(path: Path, db_name: bytes, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=4)
    try:
        with env.begin(write=True) as txn:
            txn.put(key, value, db=env.open_db(db_name, txn=txn))
    finally:
        env.close()


# ------------------------------------------------------------------------------------------------
# Merging and lookups
# ------------------------------------------------------------------------------------------------


def test_empty(db: IndexDB) -> None:
    assert len(db) == 0
    assert list(db) == []
    assert db.lookup(did(1)) is None
    assert did(1) not in db
    assert db.packs() == {}
    assert db.merged_files() == set()


def test_add_file_and_lookup(db: IndexDB) -> None:
    db.add_file(F1, FILES[F1])
    expected = locations(FILES[F1])
    for blob_id, loc in expected.items():
        assert db.lookup(blob_id) == loc
        assert blob_id in db
    assert db.lookup(did(5)) is None
    assert did(5) not in db
    assert len(db) == len(expected) == 4
    assert sorted(db, key=lambda loc: loc.entry.id) == sorted(
        expected.values(), key=lambda loc: loc.entry.id
    )
    assert db.merged_files() == {F1}


def test_pack_sizes(db: IndexDB) -> None:
    db.add_file(F1, FILES[F1])
    db.add_file(F2, FILES[F2])
    want = {p.pack_id: p.size for f in (F1, F2) for p in FILES[f].packs}
    assert db.packs() == want
    for pack_id, size in want.items():
        assert db.pack_size(pack_id) == size
    assert db.pack_size(did(1004)) is None


def test_large_values_round_trip(db: IndexDB) -> None:
    """Offsets use the full u64, lengths the full u32."""
    entry = PackEntry(BlobType.META, did(42), 2**64 - 2**32, 2**32 - 1, 2**32 - 1)
    big = IndexFile((IndexedPack(did(77), 2**64 - 1, (entry,)),))
    db.add_file(F1, big)
    assert db.lookup(did(42)) == Location(did(77), entry)
    assert db.pack_size(did(77)) == 2**64 - 1


def test_lookup_returns_the_queried_algorithm(db_path: Path) -> None:
    db = IndexDB(db_path, "hmac-sha256", map_size=MAP_SIZE)
    try:
        index = IndexFile((pack(1, [1, 2], "hmac-sha256"),))
        db.add_file(F1, index)
        loc = db.lookup(did(1, "hmac-sha256"))
        assert loc is not None and loc.entry.id == did(1, "hmac-sha256")
        assert loc.pack_id.algorithm == "sha256"
        assert {loc.entry.id for loc in db} == {did(1, "hmac-sha256"), did(2, "hmac-sha256")}
    finally:
        db.close()


def test_blob_in_two_packs_keeps_first(db: IndexDB) -> None:
    first = IndexFile((pack(1, [1]),))
    second = IndexFile((pack(2, [1]),))
    db.add_file(F1, first)
    db.add_file(F2, second)
    loc = db.lookup(did(1))
    assert loc is not None and loc.pack_id == did(1001)
    assert len(db) == 1
    assert db.packs().keys() == {did(1001), did(1002)}


# ------------------------------------------------------------------------------------------------
# Sync
# ------------------------------------------------------------------------------------------------


def test_sync_merges_only_new_files(db: IndexDB) -> None:
    load = Loader(FILES)
    assert db.sync([F1], load) == 1
    assert load.calls == [F1]
    assert db.sync([F1, F2], load) == 1
    assert load.calls == [F1, F2]
    assert db.sync([F2, F1], load) == 0
    assert load.calls == [F1, F2]
    assert db.merged_files() == {F1, F2}
    for f in (F1, F2):
        for blob_id, loc in locations(FILES[f]).items():
            assert db.lookup(blob_id) == loc


def test_sync_rebuilds_when_a_merged_file_disappears(db: IndexDB) -> None:
    load = Loader(FILES)
    db.sync([F1, F2], load)
    load.calls.clear()
    assert db.sync([F2, F3], load) == 2
    assert sorted(load.calls) == sorted([F2, F3])
    assert db.merged_files() == {F2, F3}
    for blob_id in locations(FILES[F1]):
        assert db.lookup(blob_id) is None
    for f in (F2, F3):
        for blob_id, loc in locations(FILES[f]).items():
            assert db.lookup(blob_id) == loc
    assert len(db) == len(locations(FILES[F2])) + len(locations(FILES[F3]))
    assert set(db.packs()) == {p.pack_id for f in (F2, F3) for p in FILES[f].packs}


def test_sync_to_nothing_clears(db: IndexDB) -> None:
    db.sync([F1], Loader(FILES))
    assert db.sync([], Loader(FILES)) == 0
    assert len(db) == 0
    assert db.packs() == {}
    assert db.merged_files() == set()


def test_rebuild(db: IndexDB) -> None:
    db.sync([F1, F2], Loader(FILES))
    db.rebuild([(F3, FILES[F3])])
    assert db.merged_files() == {F3}
    assert set(locations(FILES[F3])) == {loc.entry.id for loc in db}


def test_failed_load_keeps_earlier_merges(db: IndexDB) -> None:
    def load(file_id: Digest) -> IndexFile:
        if file_id == F2:
            raise OSError("backend down")
        return FILES[file_id]

    with pytest.raises(OSError):
        db.sync([F1, F2], load)
    assert db.merged_files() == {F1}  # F2 is retried next time, F1 is not reloaded
    load2 = Loader(FILES)
    assert db.sync([F1, F2], load2) == 1
    assert load2.calls == [F2]


# ------------------------------------------------------------------------------------------------
# Persistence and damage
# ------------------------------------------------------------------------------------------------


def test_reopen_persists(db_path: Path) -> None:
    db = IndexDB(db_path, "sha256", map_size=MAP_SIZE)
    db.sync([F1, F2], Loader(FILES))
    db.close()
    db = IndexDB(db_path, "sha256", map_size=MAP_SIZE)
    try:
        assert db.merged_files() == {F1, F2}
        for f in (F1, F2):
            for blob_id, loc in locations(FILES[f]).items():
                assert db.lookup(blob_id) == loc
        load = Loader(FILES)
        assert db.sync([F1, F2], load) == 0
        assert load.calls == []
    finally:
        db.close()


def test_other_schema_version_is_dropped(db_path: Path) -> None:
    db = IndexDB(db_path, "sha256", map_size=MAP_SIZE)
    db.sync([F1], Loader(FILES))
    db.close()
    raw_put(db_path, b"meta", b"version", b"0")
    db = IndexDB(db_path, "sha256", map_size=MAP_SIZE)
    try:
        assert db.merged_files() == set()
        assert len(db) == 0
        assert db.sync([F1], Loader(FILES)) == 1
    finally:
        db.close()


ENTRY = struct.Struct("<32sQIIB")


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"garbage",
        ENTRY.pack(bytes(32), 0, 10, 10, 1)[:-1],  # one byte short
        ENTRY.pack(bytes(32), 0, 10, 10, 1) + b"\x00",  # one byte long
        ENTRY.pack(bytes(32), 0, 10, 10, 0),  # unknown type 0
        ENTRY.pack(bytes(32), 0, 10, 10, 3),  # unknown type 3
        ENTRY.pack(bytes(32), 0, 0, 10, 1),  # zero length
    ],
    ids=["empty", "text", "short", "long", "type0", "type3", "zero-length"],
)
def test_corrupted_value_is_absent(db_path: Path, value: bytes) -> None:
    db = IndexDB(db_path, "sha256", map_size=MAP_SIZE)
    db.add_file(F1, FILES[F1])
    db.close()
    victim = did(2)
    victim_type = locations(FILES[F1])[victim].entry.type
    raw_put(db_path, b"blobs", victim.raw + bytes([victim_type]), value)
    db = IndexDB(db_path, "sha256", map_size=MAP_SIZE)
    try:
        assert db.lookup(victim) is None
        assert victim not in db
        assert victim not in {loc.entry.id for loc in db}
        others = {k: v for k, v in locations(FILES[F1]).items() if k != victim}
        for blob_id, loc in others.items():
            assert db.lookup(blob_id) == loc
        assert {loc.entry.id for loc in db} == set(others)
    finally:
        db.close()


def test_valid_raw_value_is_read_as_documented(db_path: Path) -> None:
    """The documented layout: key id || type u8; value pack id || offset u64 || length u32 ||
    raw_length u32 || type u8."""
    db = IndexDB(db_path, "sha256", map_size=MAP_SIZE)
    db.close()
    value = did(77).raw + struct.pack("<QIIB", 123, 45, 67, 2)
    raw_put(db_path, b"blobs", did(5).raw + bytes([BlobType.META]), value)
    db = IndexDB(db_path, "sha256", map_size=MAP_SIZE)
    try:
        assert db.lookup(did(5)) == Location(did(77), PackEntry(BlobType.META, did(5), 123, 45, 67))
    finally:
        db.close()


def test_corrupted_pack_size_is_absent(db_path: Path) -> None:
    db = IndexDB(db_path, "sha256", map_size=MAP_SIZE)
    db.add_file(F1, FILES[F1])
    db.close()
    victim = FILES[F1].packs[0].pack_id
    raw_put(db_path, b"packs", victim.raw, b"\x01\x02\x03")
    db = IndexDB(db_path, "sha256", map_size=MAP_SIZE)
    try:
        assert db.pack_size(victim) is None
        assert victim not in db.packs()
        other = FILES[F1].packs[1]
        assert db.packs() == {other.pack_id: other.size}
    finally:
        db.close()
