"""The merged pack index, cached in a local LMDB database for O(1) lookups.

The database is only a cache: it is always rebuildable from the repository's index files, and it is
rebuilt whenever an index file it had merged has disappeared (prune, rebuild-index). It records which
index files it has merged, so opening a repository merges only new ones.

Layout (one LMDB environment per repository, under the cache directory)::

    db "blobs":  blob id raw (32) || type u8 -> pack id raw (32) || offset u64 || length u32 ||
                                               raw_length u32 || type u8  (little-endian)

Blobs are keyed by id *and* type: a metadata blob whose bytes equal a stored data chunk is still
stored (and found) as metadata, so reachability never stops at a data blob by mistake.
    db "packs":  pack id raw (32)       -> size u64
    db "files":  index file id raw (32) -> b""
    db "meta":   b"version"             -> b"1"

LMDB runs with ``sync=True`` and without ``writemap``/``map_async`` (a crash can then lose at most
the last transaction, never corrupt the database). A value that does not parse is treated as absent.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import lmdb

from chunkstore.blob import BlobType, Location, PackEntry
from chunkstore.packindex import IndexFile
from index.ids import Digest

__all__ = ["IndexDB"]

_ENTRY = struct.Struct("<32sQIIB")
_PACK = struct.Struct("<Q")
_SCHEMA = b"2"


class IndexDB:
    """LMDB-backed merged pack index of one repository."""

    def __init__(self, path: Path, id_algorithm: str, *, map_size: int = 1 << 34) -> None:
        """Open (creating) the database directory ``path``."""
        path.mkdir(parents=True, exist_ok=True)
        self._alg = id_algorithm
        self._env = lmdb.open(
            str(path), map_size=map_size, max_dbs=4, sync=True, writemap=False, map_async=False
        )
        self._blobs = self._env.open_db(b"blobs")
        self._packs = self._env.open_db(b"packs")
        self._files = self._env.open_db(b"files")
        self._meta = self._env.open_db(b"meta")
        with self._env.begin(write=True) as txn:
            if txn.get(b"version", db=self._meta) != _SCHEMA:
                self._clear(txn)
                txn.put(b"version", _SCHEMA, db=self._meta)

    def close(self) -> None:
        """Close the environment."""
        self._env.close()

    def _clear(self, txn: lmdb.Transaction) -> None:
        for db in (self._blobs, self._packs, self._files):
            txn.drop(db, delete=False)

    def merged_files(self) -> set[Digest]:
        """Index files already merged."""
        with self._env.begin() as txn:
            return {Digest("sha256", bytes(k)) for k, _ in txn.cursor(db=self._files)}

    def sync(self, listed: Iterable[Digest], load: Callable[[Digest], IndexFile]) -> int:
        """Bring the cache in line with the index files ``listed``; returns files merged.

        If a merged file is no longer listed, everything is rebuilt from the listed files.
        """
        listed_set = set(listed)
        merged = self.merged_files()
        if merged - listed_set:
            with self._env.begin(write=True) as txn:
                self._clear(txn)
            merged = set()
        todo = sorted(listed_set - merged)
        for file_id in todo:
            self.add_file(file_id, load(file_id))
        return len(todo)

    def add_file(self, file_id: Digest, index: IndexFile) -> None:
        """Merge one index file in a single transaction."""
        with self._env.begin(write=True) as txn:
            for pack in index.packs:
                txn.put(pack.pack_id.raw, _PACK.pack(pack.size), db=self._packs)
                for e in pack.entries:
                    value = _ENTRY.pack(pack.pack_id.raw, e.offset, e.length, e.raw_length, e.type)
                    key = e.id.raw + bytes([e.type])
                    txn.put(key, value, db=self._blobs, overwrite=False)
            txn.put(file_id.raw, b"", db=self._files)

    def rebuild(self, files: Iterable[tuple[Digest, IndexFile]]) -> None:
        """Drop everything and merge ``files``."""
        with self._env.begin(write=True) as txn:
            self._clear(txn)
        for file_id, index in files:
            self.add_file(file_id, index)

    def lookup(self, blob_id: Digest, type_: BlobType | None = None) -> Location | None:
        """Where a blob of ``type_`` is stored (any type when None: equal ids mean equal bytes)."""
        types = (type_,) if type_ is not None else (BlobType.DATA, BlobType.META)
        with self._env.begin() as txn:
            for t in types:
                loc = self._decode(blob_id, t, txn.get(blob_id.raw + bytes([t]), db=self._blobs))
                if loc is not None:
                    return loc
        return None

    def _decode(self, blob_id: Digest, type_: int, value: bytes | None) -> Location | None:
        if value is None or len(value) != _ENTRY.size:
            return None
        pack, offset, length, raw_length, stored_type = _ENTRY.unpack(value)
        if stored_type != type_ or stored_type not in (BlobType.DATA, BlobType.META) or not length:
            return None
        entry = PackEntry(BlobType(stored_type), blob_id, offset, length, raw_length)
        return Location(Digest("sha256", pack), entry)

    def __contains__(self, blob_id: Digest) -> bool:
        """Whether a blob of any type is indexed."""
        return self.lookup(blob_id) is not None

    def contains(self, blob_id: Digest, type_: BlobType) -> bool:
        """Whether a blob of that type is indexed."""
        return self.lookup(blob_id, type_) is not None

    def pack_size(self, pack_id: Digest) -> int | None:
        """Size of an indexed pack."""
        with self._env.begin() as txn:
            value = txn.get(pack_id.raw, db=self._packs)
        return None if value is None or len(value) != _PACK.size else _PACK.unpack(value)[0]

    def packs(self) -> dict[Digest, int]:
        """Every indexed pack and its size."""
        with self._env.begin() as txn:
            return {
                Digest("sha256", bytes(k)): _PACK.unpack(v)[0]
                for k, v in txn.cursor(db=self._packs)
                if len(v) == _PACK.size
            }

    def __iter__(self) -> Iterator[Location]:
        """Every indexed blob's location."""
        with self._env.begin() as txn:
            for k, v in txn.cursor(db=self._blobs):
                key = bytes(k)
                if len(key) != 33:
                    continue
                loc = self._decode(Digest(self._alg, key[:32]), key[32], bytes(v))
                if loc is not None:
                    yield loc

    def __len__(self) -> int:
        """Number of indexed blobs."""
        with self._env.begin() as txn:
            return int(txn.stat(self._blobs)["entries"])
