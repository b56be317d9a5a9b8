"""The repository: blobs in packs, the pack index, records, keys and config over one Backend.

Write path (restic's ordering, so a crash never leaves a reference to missing data)::

    save_blob -> (dedup by type and id) -> codec.encode -> check it decodes to the plaintext
              -> PackWriter of its type class
    pack full or flush() -> (uploader thread) finish the pack -> backend.save(pack)
    flush() -> index file listing the stored packs -> backend.save(index) -> merge into IndexDB
    save_record() -> flush() first, then the record file

Read path: ``lookup`` (IndexDB, or the packs stored since the last index file) -> ranged
``backend.load`` -> ``codec.decode`` (verified). ``load_blobs`` groups reads per pack and coalesces
neighbouring ranges. Only this layer sees pack offsets. The IndexDB is a cache: when a read by id
(``load_blob``, ``load_blobs``) fails where the cache pointed, the cache is rebuilt from the index
files (once per open repository) and the read retried where they point, so a damaged cache entry
costs a re-read of the index, never the read.
"""

from __future__ import annotations

import bisect
import getpass
import hashlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from chunkstore import crypto
from chunkstore.backends.base import Backend, FileType, Handle
from chunkstore.blob import BlobType, Location, StoredBlob
from chunkstore.blobcache import BlobCache
from chunkstore.chunker import ChunkerParams, GearTable
from chunkstore.codec import BlobCodec
from chunkstore.config import DEFAULT_PACK_SIZE, RepoConfig
from chunkstore.errors import (
    ChunkstoreError,
    CorruptBlob,
    CorruptMetadata,
    IntegrityError,
    MissingObject,
    NotFound,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedFormat,
    UsageError,
    WrongPassword,
)
from chunkstore.indexdb import IndexDB
from chunkstore.pack import PackWriter
from chunkstore.packindex import (
    IndexedPack,
    IndexFile,
    IndexLimits,
    decode_index,
    encode_index,
    split_index,
)
from chunkstore.pins import check_pins
from chunkstore.ranges import coalesce
from index.errors import FormatError, LimitExceeded, UnsupportedVersion
from index.ids import Digest
from index.record import MAX_RECORD_SIZE, Record

__all__ = [
    "META_CACHE_BYTES",
    "LockCheck",
    "PasswordSource",
    "Repository",
    "SaveResult",
]

log = logging.getLogger("chunkstore")

#: A password, or a function that produces one when (and only when) it is needed.
PasswordSource = bytes | Callable[[], bytes] | None
#: Bound of the on-disk metadata cache of a remote repository (least recently used go first).
META_CACHE_BYTES = 512 << 20
#: Files (index files, records) loaded at once when a repository needs all of them.
_LOAD_WORKERS = 8
#: Bytes of neighbouring metadata read with a metadata blob a remote repository's cache lacks.
META_WINDOW = 2 << 20
_Key = tuple[BlobType, Digest]
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


def _format_errors(what: str, exc: FormatError) -> Exception:
    if isinstance(exc, UnsupportedVersion):
        return UnsupportedFormat(f"{what}: {exc}")
    return CorruptMetadata(f"{what} is invalid: {exc}")


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
        self.index_limits = index_limits or IndexLimits()
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
        self._mutex = threading.RLock()
        self._writers = {
            BlobType.DATA: PackWriter(self.codec),
            BlobType.META: PackWriter(self.codec),
        }
        # Blobs are keyed by (type, id): see indexdb.py for why the type matters.
        self._open: set[_Key] = set()  # in an open pack, or finished and not yet stored
        self._unindexed: dict[_Key, Location] = {}
        self._just_indexed: set[_Key] = set()  # keys of the last index file this process wrote
        self._unstored = 0  # packs finished but not yet stored (guarded by _stored)
        self._stored = threading.Condition(self._mutex)
        self._unindexed_packs: list[IndexedPack] = []
        self.lock: LockCheck | None = None
        # Finished packs are verified and stored by background threads, so that sealing,
        # verification and storage overlap with chunking. A backend with latency (a registry)
        # asks for several (``upload_concurrency``); the queue bounds memory to 2 packs more
        # than the uploads in progress.
        self._upload_threads = max(1, int(getattr(backend, "upload_concurrency", 1)))
        self._uploads: queue.Queue[PackWriter | None] | None = (
            queue.Queue(maxsize=self._upload_threads + 1) if background_uploads else None
        )
        self._uploaders: list[threading.Thread] = []
        self._upload_error: BaseException | None = None
        self.stats = {"packs_written": 0, "index_files_written": 0, "bytes_written": 0}
        # Metadata blobs (trees, recipes, chunk lists) of a remote repository are kept on local
        # disk, verified on every hit: browsing, restoring and mounting re-read them often, and
        # each read from a registry is a round trip. The backend asks for it (``cache_metadata``).
        self.meta_cache: BlobCache | None = None
        # Metadata locations per pack, sorted by offset (for _meta_window), built on first use.
        self._meta_by_pack: dict[Digest, tuple[list[int], list[Location]]] | None = None
        self._cache_rebuilt = False  # the IndexDB was rebuilt from the index files (see _heal)
        if getattr(backend, "cache_metadata", False):
            self.meta_cache = BlobCache(
                self.cache_dir, "meta", self.codec.blob_id, META_CACHE_BYTES
            )

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
        master: crypto.MasterKey | None = None
        gear: str | None = None
        if keys_from is not None:
            if keys_from.config.encrypted != (password is not None):
                raise UsageError(
                    "a repository made with the keys of an encrypted repository must be encrypted "
                    "too (and one made from an unencrypted repository must not be): "
                    + ("give a password" if keys_from.config.encrypted else "drop --encrypt")
                )
            master = keys_from._master
            chunker = keys_from.config.chunker
            gear = keys_from.config.gear  # same key and kind: the same table, the same cuts
        elif password is not None:
            master = crypto.MasterKey.generate()
        try:
            backend.stat(Handle.config())
        except NotFound:
            pass
        else:
            raise RepositoryExists(f"a repository already exists at {backend.location}")
        config = RepoConfig.new(
            os.urandom(32),
            encrypted=password is not None,
            chunker=chunker or ChunkerParams(),
            pack_size=pack_size,
            compression_level=compression_level,
            gear=gear,
        )
        backend.create()
        if master is not None and password is not None:
            cls._write_key(backend, master, password, config.repo_id, kdf)
        # The config is written last: a repository without config does not exist yet.
        backend.save(Handle.config(), config.encode(master.mac if master else None))
        return cls(backend, config, master, cache_dir, created=True, index_limits=index_limits)

    @property
    def gear_table(self) -> GearTable:
        """The chunker's gear table: keyed by the MAC key when the config says so."""
        if self.config.gear == "keyed":
            if self._master is None:  # RepoConfig refuses a keyed table without encryption
                raise UsageError("a keyed chunker table needs the repository's key")
            return GearTable.keyed(self._master.mac)
        return GearTable.standard()

    @staticmethod
    def _write_key(
        backend: Backend,
        master: crypto.MasterKey,
        password: bytes,
        repo_id: bytes,
        kdf: crypto.KdfParams,
    ) -> Digest:
        data = crypto.create_key_file(
            master,
            password,
            repo_id,
            params=kdf,
            host=socket.gethostname(),
            user=getpass.getuser(),
            created_ns=time.time_ns(),
        )
        key_id = Digest("sha256", hashlib.sha256(data).digest())
        backend.save(Handle(FileType.KEY, key_id.hex), data)
        return key_id

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
        try:
            raw = backend.load(Handle.config())
        except NotFound:
            raise RepositoryNotFound(
                f"no chunkstore repository at {backend.location}; create one with 'chunkstore init'"
            ) from None
        try:
            config = RepoConfig.decode(raw)
        except FormatError as exc:
            raise _format_errors(f"repository config at {backend.location}", exc) from exc
        master = None
        if config.encrypted:
            if password is None:
                raise WrongPassword("this repository is encrypted: a password is required")
            pw = password() if callable(password) else password
            master = cls._open_key(backend, config, pw)
            if not RepoConfig.verify_mac(raw, master.mac):
                raise CorruptMetadata(
                    "the repository config fails its MAC: it was altered; restore it from a copy"
                )
        repo = cls(backend, config, master, cache_dir, index_limits=index_limits)
        repo.sync_index()
        return repo

    @staticmethod
    def _open_key(backend: Backend, config: RepoConfig, password: bytes) -> crypto.MasterKey:
        keys = sorted(backend.list(FileType.KEY), key=lambda f: f.handle.name)
        if not keys:
            raise WrongPassword("the repository is encrypted but has no key files")
        for info in keys:
            if info.size > 64 * 1024:
                continue
            try:
                return crypto.open_key_file(backend.load(info.handle), password, config.repo_id)
            except WrongPassword:
                continue
        raise WrongPassword("wrong password, or the key file is damaged")

    def add_key(self, password: bytes, kdf: crypto.KdfParams = crypto.KDF_FLOOR) -> Digest:
        """Add a key file opening this repository with ``password``."""
        if self._master is None:
            raise UsageError("an unencrypted repository has no keys")
        return self._write_key(self.backend, self._master, password, self.config.repo_id, kdf)

    def check_lock(self) -> None:
        """Raise ``LockConflict`` if a lock was taken for this repository and has been lost.

        Called before every commit step and before every deletion (prune, index rebuild).
        """
        if self.lock is not None:
            self.lock.check()

    def close(self) -> None:
        """Stop the uploader and close the index cache (does not flush: call :meth:`flush`)."""
        if self._uploads is not None:
            for _ in self._uploaders:
                self._uploads.put(None)
            for thread in self._uploaders:
                thread.join()
            self._uploaders = []
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
        try:
            return decode_index(plain, self.config.id_algorithm, max_size=cap)
        except FormatError as exc:
            raise _format_errors(f"index file {file_id.short}", exc) from exc

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
        with self._mutex:
            self._meta_by_pack = None
        return len(loaded)

    def _heal(self, blob_id: Digest, failed: Location | None, exc: ChunkstoreError) -> Location:
        """Where the index files put ``blob_id``, when reading it where the cache said failed.

        ``failed`` is the location that failed (None: the cache did not know the blob) and
        ``exc`` the failure, raised again unless the index files name another location. The
        cache is rebuilt once per open repository: after that it says what the index files say.
        """
        with self._mutex:
            if not self._cache_rebuilt:
                self._cache_rebuilt = True
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

        Packs stored but not yet listed in an index file are included.
        """
        types = (type_,) if type_ is not None else (BlobType.DATA, BlobType.META)
        with self._mutex:
            for t in types:
                loc = self._unindexed.get((t, blob_id))
                if loc is not None:
                    return loc
        return self.index.lookup(blob_id, type_)

    def locations(self, blob_id: Digest) -> list[Location]:
        """Every stored copy of ``blob_id``, metadata first (the form ``reach.walk`` takes)."""
        return [loc for t in (BlobType.META, BlobType.DATA) if (loc := self.lookup(blob_id, t))]

    def has_blob(self, blob_id: Digest, type_: BlobType | None = None) -> bool:
        """Whether a blob of that type (any when None) is stored or on its way into a pack."""
        types = (type_,) if type_ is not None else (BlobType.DATA, BlobType.META)
        with self._mutex:
            if any((t, blob_id) in self._open or (t, blob_id) in self._unindexed for t in types):
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
        key = (prepared.type, prepared.id)
        with self._mutex:
            # The LMDB index was consulted by prepare_blob; here only what this process added
            # since (open packs, stored packs, the last index file written) can have changed.
            if key in self._open or key in self._unindexed or key in self._just_indexed:
                return False
            writer = self._writers[prepared.type]
            writer.add(prepared)
            self._open.add(key)
            finished = self._finish(prepared.type) if writer.size >= self.config.pack_size else None
        if finished is not None:
            self._submit(finished)
        if len(self._unindexed) >= self.index_limits.max_blobs:
            with self._mutex:
                self._write_index()
        return True

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

    def _finish(self, type_: BlobType) -> PackWriter:
        # Called under the mutex: hands the full writer over (it is finished by the uploader, off
        # the writers' critical path) and starts a new one. The pack counts as unstored until
        # _store_pack has run, so a reader waiting for it (_flush_packs) cannot slip through.
        self._unstored += 1
        writer, self._writers[type_] = self._writers[type_], PackWriter(self.codec)
        return writer

    def _submit(self, finished: PackWriter) -> None:
        if self._uploads is None:
            self._store_pack(finished)
            return
        self._raise_upload_error()
        while len(self._uploaders) < self._upload_threads:
            thread = threading.Thread(
                target=self._upload_loop,
                name=f"chunkstore-pack-upload-{len(self._uploaders)}",
                daemon=True,
            )
            thread.start()
            self._uploaders.append(thread)
        self._uploads.put(finished)

    def _upload_loop(self) -> None:
        assert self._uploads is not None
        while True:
            item = self._uploads.get()
            try:
                if item is None:
                    return
                self._store_pack(item)
            except BaseException as exc:  # handed to the writer thread at its next step
                self._upload_error = exc
            finally:
                self._uploads.task_done()

    def _raise_upload_error(self) -> None:
        if self._upload_error is not None:
            raise self._upload_error

    def _drain_uploads(self) -> None:
        with self._stored:
            self._stored.wait_for(lambda: self._unstored == 0)
        self._raise_upload_error()

    def _store_pack(self, writer: PackWriter) -> None:
        entries = writer.entries
        try:
            if self._upload_error is not None:
                raise self._upload_error  # an earlier pack failed: store nothing more
            pack_id, data, entries = writer.finish()
            self.backend.save(Handle(FileType.PACK, pack_id.hex), data)
            with self._mutex:
                self.stats["packs_written"] += 1
                self.stats["bytes_written"] += len(data)
                for e in entries:
                    self._unindexed[(e.type, e.id)] = Location(pack_id, e)
                    self._open.discard((e.type, e.id))
                self._unindexed_packs.append(IndexedPack(pack_id, len(data), tuple(entries)))
        except BaseException:
            # The pack is lost: forget its blobs so that a later save stores them again.
            with self._mutex:
                for e in entries:
                    self._open.discard((e.type, e.id))
            raise
        finally:
            with self._stored:
                self._unstored -= 1
                self._stored.notify_all()

    def _flush_packs(self) -> None:
        with self._mutex:
            finished = [self._finish(t) for t, w in self._writers.items() if w.count]
        for item in finished:
            self._submit(item)
        self._drain_uploads()

    def _write_index(self) -> None:
        if not self._unindexed_packs:
            return
        self.write_index(self._unindexed_packs)
        self._unindexed_packs = []
        self._just_indexed, self._unindexed = set(self._unindexed), {}

    def write_index(
        self, packs: Iterable[IndexedPack], supersedes: Iterable[Digest] = ()
    ) -> list[tuple[Digest, IndexFile]]:
        """Store ``packs`` (already stored) as index files within :attr:`index_limits`.

        Each file supersedes ``supersedes``; returns the files written, in order.
        """
        return [(self.write_index_file(part), part) for part in self.plan_index(packs, supersedes)]

    def plan_index(
        self, packs: Iterable[IndexedPack], supersedes: Iterable[Digest] = ()
    ) -> list[IndexFile]:
        """The index files :meth:`write_index` would write (nothing is encoded or written)."""
        try:
            return split_index(list(packs), list(supersedes), self.index_limits)
        except LimitExceeded as exc:
            raise ChunkstoreError(
                f"cannot write the pack index: {exc}; nothing was written"
            ) from exc

    def write_index_file(self, index: IndexFile) -> Digest:
        """Store one index file (its packs must already be stored) and merge it locally.

        An index larger than readers accept (:attr:`index_limits`) is refused before anything is
        written: use :meth:`write_index`, which splits.
        """
        plain = encode_index(index)
        if len(plain) > self.index_limits.max_bytes:
            raise ChunkstoreError(
                f"refusing to write an index file of {len(plain)} bytes: readers accept at most "
                f"{self.index_limits.max_bytes}; nothing was written (split it with write_index)"
            )
        if self.lock is not None:
            self.lock.check()
        file_id = self.save_file(FileType.INDEX, "pack-index", plain)
        self.index.add_file(file_id, index)
        self.stats["index_files_written"] += 1
        return file_id

    def flush(self) -> None:
        """Store open packs, then an index file listing every stored pack not yet indexed."""
        self._flush_packs()
        with self._mutex:
            self._write_index()

    def save_file(self, file_type: FileType, role: str, plaintext: bytes) -> Digest:
        """Encode and store a whole file named by the SHA-256 of its stored bytes."""
        stored = self.codec.encode_file(role, plaintext)
        file_id = Digest("sha256", hashlib.sha256(stored).digest())
        self.backend.save(Handle(file_type, file_id.hex), stored)
        return file_id

    def load_file(self, handle: Handle, role: str, max_length: int) -> bytes:
        """Load a whole file, check its name (SHA-256 of the bytes), then decode it."""
        stored = self.backend.load(handle)
        if hashlib.sha256(stored).hexdigest() != handle.name:
            raise CorruptMetadata(
                f"{handle} does not match its name (damaged); run 'chunkstore check --read-data'"
            )
        return self.codec.decode_file(role, stored, max_length, str(handle))

    # ----------------------------------------------------------------- read
    def _locate(self, blob_id: Digest) -> Location:
        with self._mutex:
            pending = any((t, blob_id) in self._open for t in BlobType)
        if pending:
            # Still in memory or uploading: store its pack first so there is one read path.
            self._flush_packs()
        loc = self.lookup(blob_id)
        if loc is None:
            raise MissingObject(
                f"blob {blob_id.short} is not in the index; run 'chunkstore check' "
                "(and 'chunkstore check --rebuild-index' if packs hold it)"
            )
        return loc

    def load_blob(self, blob_id: Digest) -> bytes:
        """Load and verify one blob."""
        loc: Location | None = None
        try:
            loc = self._locate(blob_id)
            return self.load_at(loc)
        except (IntegrityError, MissingObject) as exc:
            return self.load_at(self._heal(blob_id, loc, exc))

    def _cached(self, loc: Location) -> bytes | None:
        if self.meta_cache is None or loc.entry.type is not BlobType.META:
            return None
        return self.meta_cache.get(loc.entry.id)

    def _meta_window(self, loc: Location) -> tuple[int, int, list[Location]]:
        """Metadata blobs stored near ``loc`` in its pack, and the byte span they cover.

        Trees, recipes and chunk lists of one backup sit next to each other in metadata packs, so
        the first directory a mount or a browse opens is followed by its neighbours: reading them
        in the same ranged request turns dozens of round trips into one. Only for a repository
        with a metadata cache (a remote one), where the neighbours are kept.
        """
        with self._mutex:
            if self._meta_by_pack is None:
                by_pack: dict[Digest, list[Location]] = {}
                for known in self.index:
                    if known.entry.type is BlobType.META:
                        by_pack.setdefault(known.pack_id, []).append(known)
                self._meta_by_pack = {
                    pack: ([x.entry.offset for x in locs], locs)
                    for pack, locs in (
                        (p, sorted(v, key=lambda x: x.entry.offset)) for p, v in by_pack.items()
                    )
                }
            offsets, locs = self._meta_by_pack.get(loc.pack_id, ([], []))
        lo = max(0, loc.entry.offset - META_WINDOW // 4)
        hi = loc.entry.offset + META_WINDOW
        first, last = bisect.bisect_left(offsets, lo), bisect.bisect_right(offsets, hi)
        return lo, hi, [n for n in locs[first:last] if n.entry.offset + n.entry.length <= hi]

    def load_at(self, loc: Location, stored: bytes | None = None) -> bytes:
        """Load and verify the blob at ``loc`` (``stored``: its bytes if already read)."""
        if stored is None and (hit := self._cached(loc)) is not None:
            return hit
        if stored is None and self.meta_cache is not None and loc.entry.type is BlobType.META:
            return self.load_many([loc])[loc.entry.id]  # with its neighbours (load_blobs)
        plain = self._load_at(loc, stored)
        if self.meta_cache is not None and loc.entry.type is BlobType.META:
            self.meta_cache.put(loc.entry.id, plain)
        return plain

    def _load_at(self, loc: Location, stored: bytes | None) -> bytes:
        e = loc.entry
        handle = Handle(FileType.PACK, loc.pack_id.hex)
        for attempt in (1, 2):
            if stored is None or attempt == 2:
                stored = self.backend.load(handle, e.offset, e.length)
            try:
                plain = self.codec.decode(e.type, e.id, stored, e.raw_length)
            except IntegrityError as exc:
                if attempt == 2:
                    raise CorruptBlob(
                        f"{exc} (pack {loc.pack_id.short}); run 'chunkstore check --read-data'"
                    ) from exc
                log.warning("blob %s failed verification, reading it again", e.id.short)
                continue
            if attempt == 2:
                log.warning("blob %s verified on the second attempt", e.id.short)
            return plain
        raise AssertionError("unreachable")

    def load_blobs(
        self, ids: Iterable[Digest], *, max_gap: int = 1 << 20, heal: bool = True
    ) -> Iterator[tuple[Digest, bytes]]:
        """Load many blobs, one coalesced read per neighbourhood in each pack.

        Yields ``(id, plaintext)`` grouped by pack (not in the input order); each id once.
        ``heal``: a blob that fails where the index cache put it is looked up again in the index
        files (see :meth:`_heal`); a caller that re-reads the index itself (the mount's fetcher,
        which counts its re-reads) passes False and gets the failure.
        """
        per_pack: dict[Digest, list[tuple[int, int, Location]]] = {}
        wanted = dict.fromkeys(ids)
        extra: set[Digest] = set()  # neighbours read only to be cached (see _meta_window)
        windows: dict[Digest, list[tuple[int, int]]] = {}
        for blob_id in wanted:
            try:
                loc = self._locate(blob_id)
            except MissingObject as exc:
                if not heal:
                    raise
                loc = self._heal(blob_id, None, exc)
            if (hit := self._cached(loc)) is not None:
                yield blob_id, hit
                continue
            reads = per_pack.setdefault(loc.pack_id, [])
            reads.append((loc.entry.offset, loc.entry.length, loc))
            if self.meta_cache is None or loc.entry.type is not BlobType.META:
                continue
            spans = windows.setdefault(loc.pack_id, [])
            if any(lo <= loc.entry.offset < hi for lo, hi in spans):
                continue  # its neighbours are already being read
            lo, hi, near = self._meta_window(loc)
            spans.append((lo, hi))
            for n in near:
                if n.entry.id not in wanted and n.entry.id not in extra:
                    if n.entry.id not in self.meta_cache:
                        extra.add(n.entry.id)
                        reads.append((n.entry.offset, n.entry.length, n))
        for pack_id, reads in per_pack.items():
            handle = Handle(FileType.PACK, pack_id.hex)
            for span in coalesce(reads, max_gap=max_gap):
                buf: bytes | None = None
                try:
                    buf = self.backend.load(handle, span.offset, span.length)
                except (IntegrityError, MissingObject) as exc:  # the cache named a bad range?
                    failure: ChunkstoreError = exc
                for off, length, loc in span.items:
                    piece = (
                        None if buf is None else buf[off - span.offset : off - span.offset + length]
                    )
                    if loc.entry.id in extra:
                        try:
                            if piece is not None:
                                self.load_at(loc, piece)  # verified, then cached
                        except IntegrityError as exc:  # nobody asked for it: its reader will see
                            log.warning("neighbouring metadata blob not cached: %s", exc)
                        continue
                    try:
                        if piece is None:
                            raise failure
                        plain = self.load_at(loc, piece)  # verified
                    except (IntegrityError, MissingObject) as exc:
                        if not heal:
                            raise
                        plain = self.load_at(self._heal(loc.entry.id, loc, exc))
                    yield loc.entry.id, plain

    def load_many(self, locs: list[Location]) -> dict[Digest, bytes]:
        """The verified plaintext of blobs at ``locs`` (coalesced reads), by id; for walks."""
        return dict(self.load_blobs(loc.entry.id for loc in locs))

    # ----------------------------------------------------------------- records
    def save_record(self, record: Record) -> Digest:
        """Flush all data and metadata, then store the record (written last)."""
        self.flush()
        if self.lock is not None:
            self.lock.check()
        return self.save_file(FileType.RECORD, "record", record.encode())

    def load_record(self, record_id: Digest) -> Record:
        """Load and verify one record."""
        plain = self.load_file(Handle(FileType.RECORD, record_id.hex), "record", MAX_RECORD_SIZE)
        try:
            return Record.decode(plain)
        except FormatError as exc:
            raise _format_errors(f"record {record_id.short}", exc) from exc

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
        try:
            return record_id, decode(record.body)
        except FormatError as exc:
            raise _format_errors(f"record {record_id.short} body", exc) from exc

    def remove_record(self, record_id: Digest) -> None:
        """Delete a record (its data stays until ``prune``)."""
        self.backend.remove(Handle(FileType.RECORD, record_id.hex))
