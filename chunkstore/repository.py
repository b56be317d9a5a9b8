"""The repository: blobs in packs, the pack index, records, keys and config over one Backend.

This is the facade; the roles live in their own modules:

* ``keys.py``: creating a repository, opening it (config, password, key files), adding keys;
* ``packer.py``: the write path (restic's ordering, so a crash never leaves a reference to
  missing data) -- packs filled per blob type, stored by upload threads, then index files;
  ``save_record`` flushes all of it before the record file is written;
* ``readplan.py``: which located blobs travel together in one ranged read.

Read path: ``plan_reads`` locates each blob once (IndexDB, or the packs stored since the last index
file) and groups them per pack; ``load_group`` reads a group with one ranged ``backend.load`` and
decodes every blob in it (``codec.decode`` verifies). ``load_blob`` and ``load_blobs`` do both.
Only this layer sees pack offsets: ``lookup`` and ``locations`` give them to the maintenance
commands (check, prune, reachability), no reader needs them. Metadata comes typed
(``load_tree``, ``load_chunk_list``, ``load_recipe``, ``load_recipe_part``), its format errors
translated in one place (metadata.py). The IndexDB is a cache: when a read by id fails where the
cache pointed, the cache is rebuilt from the index files (once per open repository) and the read
retried where they point, so a damaged cache entry costs a re-read of the index, never the read.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from chunkstore import crypto, keys
from chunkstore.backends.base import Backend, FileType, Handle
from chunkstore.blob import BlobType, Location, StoredBlob
from chunkstore.blobcache import BlobCache
from chunkstore.blobreader import BlobReader
from chunkstore.chunker import ChunkerParams, GearTable
from chunkstore.codec import BlobCodec
from chunkstore.config import DEFAULT_PACK_SIZE, RepoConfig
from chunkstore.errors import (
    ChunkstoreError,
    CorruptMetadata,
    MissingObject,
    UsageError,
)
from chunkstore.indexdb import IndexDB
from chunkstore.keys import PasswordSource
from chunkstore.metadata import (
    RecipeOp,
    format_errors,
    parse_chunk_list,
    parse_recipe,
    parse_recipe_part,
    parse_tree,
)
from chunkstore.packer import Packer
from chunkstore.packindex import IndexedPack, IndexFile, IndexLimits, decode_index
from chunkstore.pins import check_pins
from chunkstore.readplan import MetaWindows, ReadGroup, ReadPlan
from index.chunklist import ChunkRef
from index.ids import Digest
from index.recipe import RecipeRoot
from index.record import MAX_RECORD_SIZE, Record
from index.tree import Tree

__all__ = [
    "META_CACHE_BYTES",
    "LockCheck",
    "PasswordSource",
    "ReadGroup",
    "ReadPlan",
    "Repository",
    "SaveResult",
]

log = logging.getLogger("chunkstore")

#: Bound of the on-disk metadata cache of a remote repository (least recently used go first).
META_CACHE_BYTES = 512 << 20
#: Files (index files, records) loaded at once when a repository needs all of them.
_LOAD_WORKERS = 8
#: Largest coalesced read of ``load_blobs``.
_MAX_SPAN = 64 << 20
_T = TypeVar("_T")


class LockCheck(Protocol):
    """What the repository needs of a held lock: a check before each commit step."""

    def check(self) -> None:
        """Raise if the lock was lost."""
        ...


@dataclass(frozen=True, slots=True)
class SaveResult:
    """Outcome of saving one blob."""

    id: Digest
    new: bool
    raw_length: int
    stored_length: int


class Repository:
    """An open repository. Thread-safe for concurrent ``save_blob``/``load_blob`` calls."""

    def __init__(
        self,
        backend: Backend,
        config: RepoConfig,
        master: crypto.MasterKey | None,
        cache_dir: Path,
        *,
        verify_packs: bool = True,
        background_uploads: bool = True,
        created: bool = False,
        index_limits: IndexLimits | None = None,
    ) -> None:
        """Use :meth:`open` or :meth:`init` instead of calling this directly.

        ``index_limits``: the size of index files this process reads and writes (the format's
        caps by default; tests scale them down).
        """
        self.backend = backend
        self.config = config
        self.codec = BlobCodec(config, master)
        self._master = master
        self.cache_dir = cache_dir / config.repo_id.hex()
        # Refuse an unencrypted repository where an encrypted one was used (see pins.py).
        pinned = check_pins(
            cache_dir, backend.location, config.repo_id, config.encrypted, created=created
        )
        #: What the user should know about this repository's pins (also logged as warnings).
        self.notices: list[str] = list(pinned.notices)
        if config.encrypted and config.gear == "standard":
            self.notices.append(
                "this encrypted repository cuts chunks with the public FastCDC table (config"
                f" version {config.version}, made before format 2 or from such a repository's"
                " keys): the sizes of its packs and blobs can reveal which known files it holds"
                " (SPEC.md section 8); a repository made with 'init --encrypt' now uses a table"
                " derived from its key"
            )
        for notice in self.notices:
            log.warning("%s", notice)
        self.index = IndexDB(self.cache_dir / "index", config.id_algorithm)
        self._verify_packs = verify_packs
        self._mutex = threading.Lock()
        self.lock: LockCheck | None = None
        self.packer = Packer(
            backend,
            self.codec,
            self.index,
            pack_size=config.pack_size,
            index_limits=index_limits or IndexLimits(),
            check_lock=self.check_lock,
            background_uploads=background_uploads,
        )
        self.stats = self.packer.stats
        # Metadata blobs (trees, recipes, chunk lists) of a remote repository are kept on local
        # disk, verified on every hit: browsing, restoring and mounting re-read them often, and
        # each read from a registry is a round trip. The backend asks for it (``cache_metadata``).
        self.meta_cache: BlobCache | None = None
        self._windows: MetaWindows | None = None
        self._cache_rebuilt = False  # the IndexDB was rebuilt from the index files (see _heal)
        if getattr(backend, "cache_metadata", False):
            self.meta_cache = BlobCache(
                self.cache_dir, "meta", self.codec.blob_id, META_CACHE_BYTES
            )
            self._windows = MetaWindows(lambda: iter(self.index))
        self.reader = BlobReader(
            backend,
            self.codec,
            locate=self._locate,
            heal=self._heal,
            meta_cache=self.meta_cache,
            windows=self._windows,
        )

    @property
    def index_limits(self) -> IndexLimits:
        """The size of index files this process reads and writes."""
        return self.packer.index_limits

    @index_limits.setter
    def index_limits(self, limits: IndexLimits) -> None:
        self.packer.index_limits = limits

    # ----------------------------------------------------------------- create / open
    @classmethod
    def init(
        cls,
        backend: Backend,
        *,
        cache_dir: Path,
        password: bytes | None = None,
        chunker: ChunkerParams | None = None,
        pack_size: int = DEFAULT_PACK_SIZE,
        compression_level: int = 3,
        kdf: crypto.KdfParams = crypto.KDF_FLOOR,
        keys_from: Repository | None = None,
        index_limits: IndexLimits | None = None,
    ) -> Repository:
        """Create a repository (encrypted when ``password`` is given) and open it.

        ``keys_from``: an open repository whose master key and chunker parameters the new one
        takes, so both name blobs alike and ``copy`` can move records between them (the new
        repository is encrypted exactly when that one is).
        """
        config, master = keys.create(
            backend,
            password=password,
            chunker=chunker,
            pack_size=pack_size,
            compression_level=compression_level,
            kdf=kdf,
            keys_from=(keys_from.config, keys_from._master) if keys_from is not None else None,
        )
        return cls(backend, config, master, cache_dir, created=True, index_limits=index_limits)

    @classmethod
    def open(
        cls,
        backend: Backend,
        *,
        cache_dir: Path,
        password: PasswordSource = None,
        index_limits: IndexLimits | None = None,
    ) -> Repository:
        """Open an existing repository; the password is asked for only if it is encrypted."""
        config, master = keys.load(backend, password)
        repo = cls(backend, config, master, cache_dir, index_limits=index_limits)
        repo.sync_index()
        return repo

    @property
    def gear_table(self) -> GearTable:
        """The chunker's gear table: keyed by the MAC key when the config says so."""
        return keys.gear_table(self.config, self._master)

    def add_key(self, password: bytes, kdf: crypto.KdfParams = crypto.KDF_FLOOR) -> Digest:
        """Add a key file opening this repository with ``password``."""
        if self._master is None:
            raise UsageError("an unencrypted repository has no keys")
        return keys.write_key(self.backend, self._master, password, self.config.repo_id, kdf)

    def check_lock(self) -> None:
        """Raise ``LockConflict`` if a lock was taken for this repository and has been lost.

        Called before every commit step and before every deletion (prune, index rebuild).
        """
        if self.lock is not None:
            self.lock.check()

    def close(self) -> None:
        """Stop the uploader and close the index cache (does not flush: call :meth:`flush`)."""
        self.packer.close()
        self.index.close()
        self.backend.close()

    def __enter__(self) -> Repository:
        """Context manager: close on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the repository."""
        self.close()

    # ----------------------------------------------------------------- index
    def index_files(self) -> list[Digest]:
        """Ids of the index files present in the backend."""
        return [Digest.from_hex(i.handle.name) for i in self.backend.list(FileType.INDEX)]

    def load_index_file(self, file_id: Digest) -> IndexFile:
        """Load, verify and parse one index file."""
        cap = self.index_limits.max_bytes
        plain = self.load_file(Handle(FileType.INDEX, file_id.hex), "pack-index", cap)
        with format_errors(f"index file {file_id.short}"):
            return decode_index(plain, self.config.id_algorithm, max_size=cap)

    def _load_all(self, fn: Callable[[Digest], _T], ids: list[Digest]) -> dict[Digest, _T]:
        """``fn`` of every id, loaded concurrently: against a registry each load is a round
        trip, and opening a repository or finding a record needs all of them."""
        if len(ids) < 2:
            return {i: fn(i) for i in ids}
        with ThreadPoolExecutor(max_workers=_LOAD_WORKERS) as pool:
            return dict(zip(ids, pool.map(fn, ids), strict=True))

    def sync_index(self) -> int:
        """Merge new index files into the local cache; returns how many were merged."""
        listed = self.index_files()
        known = self.index.merged_files()
        # IndexDB.sync merges the files it lacks in sorted order (all of them if one it merged is
        # gone). They are loaded concurrently a window at a time, each dropped once merged: memory
        # stays a few index files, not the whole index (tools/scale_sim.py; 800 bytes per blob).
        order = sorted(set(listed))
        if not known - set(listed):
            order = [f for f in order if f not in known]
        at = {f: i for i, f in enumerate(order)}
        window: dict[Digest, IndexFile] = {}

        def load(file_id: Digest) -> IndexFile:
            if file_id not in window and file_id in at:
                start = at[file_id]
                window.update(self._load_all(self.load_index_file, order[start : start + 8]))
            return window.pop(file_id, None) or self.load_index_file(file_id)

        return self.index.sync(listed, load)

    def rebuild_index_cache(self) -> int:
        """Drop the local index cache and merge every index file again; returns how many."""
        listed = sorted(self.index_files(), key=lambda d: d.hex)
        loaded = self._load_all(self.load_index_file, listed)
        self.index.rebuild(loaded.items())
        if self._windows is not None:
            self._windows.reset()
        return len(loaded)

    def _heal(self, blob_id: Digest, failed: Location | None, exc: ChunkstoreError) -> Location:
        """Where the index files put ``blob_id``, when reading it where the cache said failed.

        ``failed`` is the location that failed (None: the cache did not know the blob) and
        ``exc`` the failure, raised again unless the index files name another location. The
        cache is rebuilt once per open repository: after that it says what the index files say.
        """
        with self._mutex:
            rebuild, self._cache_rebuilt = not self._cache_rebuilt, True
            if rebuild:
                log.warning(
                    "reading blob %s failed (%s); rebuilding the local index cache from the "
                    "index files in case it is damaged",
                    blob_id.short,
                    exc,
                )
                self.rebuild_index_cache()
        loc = self.lookup(blob_id, failed.entry.type if failed is not None else None)
        if loc is None or loc == failed:
            raise exc
        log.warning(
            "blob %s: the local index cache was wrong; read where the index says", blob_id.short
        )
        return loc

    def lookup(self, blob_id: Digest, type_: BlobType | None = None) -> Location | None:
        """Where a stored blob of ``type_`` is (any type when None; equal ids are equal bytes).

        Packs stored but not yet listed in an index file are included. For maintenance (check,
        prune, reachability): readers use :meth:`plan_reads` or the ``load_*`` methods.
        """
        types = (type_,) if type_ is not None else (BlobType.DATA, BlobType.META)
        for t in types:
            loc = self.packer.stored(t, blob_id)
            if loc is not None:
                return loc
        return self.index.lookup(blob_id, type_)

    def locations(self, blob_id: Digest) -> list[Location]:
        """Every stored copy of ``blob_id``, metadata first (the form ``reach.walk`` takes)."""
        return [loc for t in (BlobType.META, BlobType.DATA) if (loc := self.lookup(blob_id, t))]

    def has_blob(self, blob_id: Digest, type_: BlobType | None = None) -> bool:
        """Whether a blob of that type (any when None) is stored or on its way into a pack."""
        types = (type_,) if type_ is not None else (BlobType.DATA, BlobType.META)
        if any(self.packer.holds(t, blob_id) for t in types):
            return True
        return any(self.index.contains(blob_id, t) for t in types)

    # ----------------------------------------------------------------- write
    def prepare_blob(self, type_: BlobType, data: bytes | memoryview) -> StoredBlob | Digest:
        """Hash and, if not yet stored, encode a blob (safe to run in worker threads).

        Returns the id alone when the blob is already known, else the stored form to pass to
        :meth:`add_prepared`.
        """
        blob_id = self.codec.blob_id(data)
        if self.has_blob(blob_id, type_):
            return blob_id
        stored = self.codec.encode(type_, data, blob_id)
        if self._verify_packs:
            self.codec.verify_encoding(stored, data)
        return stored

    def add_prepared(self, prepared: StoredBlob | Digest) -> bool:
        """Add a prepared blob to its pack; returns whether it was new."""
        if isinstance(prepared, Digest):
            return False
        return self.packer.add(prepared)

    def save_blob(self, type_: BlobType, data: bytes | memoryview) -> SaveResult:
        """Store a blob unless an identical one is already stored."""
        prepared = self.prepare_blob(type_, data)
        new = self.add_prepared(prepared)
        if self.meta_cache is not None and type_ is BlobType.META:
            # What this process writes it will soon read (a registry tag's walk, browsing):
            # keep it so that no read goes back over the network.
            blob_id = prepared if isinstance(prepared, Digest) else prepared.id
            self.meta_cache.put(blob_id, bytes(data))
        if isinstance(prepared, Digest):
            return SaveResult(prepared, False, len(data), 0)
        return SaveResult(prepared.id, new, len(data), len(prepared.data) if new else 0)

    def write_index(
        self, packs: Iterable[IndexedPack], supersedes: Iterable[Digest] = ()
    ) -> list[tuple[Digest, IndexFile]]:
        """Store ``packs`` (already stored) as index files within :attr:`index_limits`.

        Each file supersedes ``supersedes``; returns the files written, in order.
        """
        return self.packer.write_index(packs, supersedes)

    def plan_index(
        self, packs: Iterable[IndexedPack], supersedes: Iterable[Digest] = ()
    ) -> list[IndexFile]:
        """The index files :meth:`write_index` would write (nothing is encoded or written)."""
        return self.packer.plan_index(packs, supersedes)

    def write_index_file(self, index: IndexFile) -> Digest:
        """Store one index file (its packs must already be stored) and merge it locally.

        An index larger than readers accept (:attr:`index_limits`) is refused before anything is
        written: use :meth:`write_index`, which splits.
        """
        return self.packer.write_index_file(index)

    def flush(self) -> None:
        """Store open packs, then an index file listing every stored pack not yet indexed."""
        self.packer.flush()

    def save_file(self, file_type: FileType, role: str, plaintext: bytes) -> Digest:
        """Encode and store a whole file named by the SHA-256 of its stored bytes."""
        return self.packer.save_file(file_type, role, plaintext)

    def load_file(self, handle: Handle, role: str, max_length: int) -> bytes:
        """Load a whole file, check its name (SHA-256 of the bytes), then decode it."""
        stored = self.backend.load(handle)
        if hashlib.sha256(stored).hexdigest() != handle.name:
            raise CorruptMetadata(
                f"{handle} does not match its name (damaged); run 'chunkstore check --read-data'"
            )
        return self.codec.decode_file(role, stored, max_length, str(handle))

    # ----------------------------------------------------------------- read
    def _locate(self, blob_id: Digest) -> Location | None:
        if self.packer.pending(blob_id):
            # Still in memory or uploading: store its pack first so there is one read path.
            self.packer.flush_packs()
        return self.lookup(blob_id)

    def load_blob(self, blob_id: Digest) -> bytes:
        """Load and verify one blob."""
        return self.reader.load_blob(blob_id)

    def load_at(self, loc: Location, stored: bytes | None = None) -> bytes:
        """Load and verify the blob at ``loc`` (``stored``: its bytes if already read)."""
        return self.reader.load_at(loc, stored)

    def plan_reads(
        self,
        ids: Iterable[Digest],
        *,
        max_gap: int = 1 << 20,
        max_span: int = _MAX_SPAN,
        heal: bool = True,
    ) -> ReadPlan:
        """Locate each blob once and group them into reads for :meth:`load_group`.

        Neighbours in a pack at most ``max_gap`` bytes apart share a read of at most ``max_span``
        bytes. ``heal``: a blob the index cache does not know is looked up in the index files
        (see :meth:`_heal`; ``MissingObject`` if they do not know it either); without it, such
        blobs are listed in :attr:`ReadPlan.missing` (the mount re-reads the index itself).
        """
        return self.reader.plan(ids, max_gap=max_gap, max_span=max_span, heal=heal)

    def load_group(self, group: ReadGroup, *, heal: bool = True) -> Iterator[tuple[Digest, bytes]]:
        """Read one group of :meth:`plan_reads` (one ranged read); yields ``(id, plaintext)``.

        Every blob is verified; neighbours read only to be cached are kept, not yielded.
        ``heal``: a blob that fails where the index cache put it is looked up again in the index
        files; without it the failure is raised.
        """
        return self.reader.load_group(group, heal=heal)

    def load_blobs(
        self, ids: Iterable[Digest], *, max_gap: int = 1 << 20, heal: bool = True
    ) -> Iterator[tuple[Digest, bytes]]:
        """Load many blobs, one coalesced read per neighbourhood in each pack.

        Yields ``(id, plaintext)`` grouped by pack (not in the input order); each id once.
        ``heal``: see :meth:`plan_reads` and :meth:`load_group`; without it a blob the index
        does not know raises ``MissingObject`` before anything is read.
        """
        return self.reader.load_blobs(ids, max_gap=max_gap, max_span=_MAX_SPAN, heal=heal)

    def load_many(self, locs: list[Location]) -> dict[Digest, bytes]:
        """The verified plaintext of blobs at ``locs`` (coalesced reads), by id; for walks."""
        return dict(self.load_blobs(loc.entry.id for loc in locs))

    # ----------------------------------------------------------------- typed metadata
    def load_tree(self, tree_id: Digest) -> Tree:
        """The tree blob ``tree_id``, decoded (``CorruptMetadata`` if it is not a tree)."""
        return parse_tree(self.load_blob(tree_id), tree_id)

    def load_chunk_list(self, list_id: Digest) -> list[ChunkRef]:
        """The chunk refs of the chunk-list blob ``list_id``."""
        return parse_chunk_list(self.load_blob(list_id), list_id)

    def load_recipe(self, recipe_id: Digest) -> RecipeRoot:
        """The root of the layer recipe ``recipe_id``."""
        return parse_recipe(self.load_blob(recipe_id), recipe_id)

    def load_recipe_part(self, part_id: Digest) -> list[RecipeOp]:
        """The operations of the recipe part ``part_id``."""
        return parse_recipe_part(self.load_blob(part_id), part_id)

    # ----------------------------------------------------------------- records
    def save_record(self, record: Record) -> Digest:
        """Flush all data and metadata, then store the record (written last)."""
        self.flush()
        self.check_lock()
        return self.save_file(FileType.RECORD, "record", record.encode())

    def load_record(self, record_id: Digest) -> Record:
        """Load and verify one record."""
        plain = self.load_file(Handle(FileType.RECORD, record_id.hex), "record", MAX_RECORD_SIZE)
        with format_errors(f"record {record_id.short}"):
            return Record.decode(plain)

    def list_records(self) -> list[tuple[Digest, Record]]:
        """Every record, oldest first."""
        ids = [Digest.from_hex(info.handle.name) for info in self.backend.list(FileType.RECORD)]
        out = list(self._load_all(self.load_record, ids).items())
        return sorted(out, key=lambda r: (r[1].time_ns, r[0].hex))

    def find_record(self, name: str) -> tuple[Digest, Record]:
        """The newest record named ``name`` (or whose id starts with ``name``)."""
        records = self.list_records()
        named = [r for r in records if r[1].name == name]
        if not named and len(name) >= 6:
            named = [r for r in records if r[0].hex.startswith(name)]
        if not named:
            raise MissingObject(f"no record named {name!r}; 'chunkstore ls' lists them")
        return named[-1]

    def find_body(self, name: str, type_: str, decode: Callable[[Any], _T]) -> tuple[Digest, _T]:
        """The newest record ``name``, which must be of ``type_``, with its body decoded."""
        record_id, record = self.find_record(name)
        if record.type != type_:
            raise UsageError(f"record {name!r} is a {record.type}, not a {type_}")
        with format_errors(f"record {record_id.short} body"):
            return record_id, decode(record.body)

    def remove_record(self, record_id: Digest) -> None:
        """Delete a record (its data stays until ``prune``)."""
        self.backend.remove(Handle(FileType.RECORD, record_id.hex))
