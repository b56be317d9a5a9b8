"""The packer: blobs into packs, packs stored by upload threads, stored packs into index files.

Write path (restic's ordering, so a crash never leaves a reference to missing data)::

    add(prepared blob) -> PackWriter of its type class (data and metadata never share a pack)
    pack full or flush_packs() -> (uploader thread) finish the pack -> backend.save(pack)
    flush() -> index file listing the stored packs -> backend.save(index) -> merge into IndexDB

Until an index file lists them, the blobs of stored packs are known here (:meth:`Packer.stored`),
and blobs of packs not yet stored are :meth:`Packer.pending`: the repository's lookups ask both
before its index cache. The ``Repository`` facade (repository.py) owns one packer.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterable

from chunkstore.backends.base import Backend, FileType, Handle
from chunkstore.blob import BlobType, Location, StoredBlob
from chunkstore.codec import BlobCodec
from chunkstore.errors import ChunkstoreError
from chunkstore.indexdb import IndexDB
from chunkstore.pack import PackWriter
from chunkstore.packindex import IndexedPack, IndexFile, IndexLimits, encode_index, split_index
from index.errors import LimitExceeded
from index.ids import Digest

__all__ = ["Packer"]

_Key = tuple[BlobType, Digest]


class Packer:
    """Open packs per blob type, their upload threads, and the stored packs not yet indexed.

    Thread-safe: any number of threads may :meth:`add`; packs are finished and stored by
    background threads, so that sealing, verification and storage overlap with chunking.
    """

    def __init__(
        self,
        backend: Backend,
        codec: BlobCodec,
        index: IndexDB,
        *,
        pack_size: int,
        index_limits: IndexLimits,
        check_lock: Callable[[], None],
        background_uploads: bool = True,
    ) -> None:
        """Pack for ``backend``; ``check_lock`` is called before each index file is written."""
        self.backend = backend
        self.codec = codec
        self.index = index
        self.pack_size = pack_size
        self.index_limits = index_limits
        self._check_lock = check_lock
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
        # A backend with latency (a registry) asks for several uploads (``upload_concurrency``);
        # the queue bounds memory to 2 packs more than the uploads in progress.
        self._upload_threads = max(1, int(getattr(backend, "upload_concurrency", 1)))
        self._uploads: queue.Queue[PackWriter | None] | None = (
            queue.Queue(maxsize=self._upload_threads + 1) if background_uploads else None
        )
        self._uploaders: list[threading.Thread] = []
        self._upload_error: BaseException | None = None
        self.stats = {"packs_written": 0, "index_files_written": 0, "bytes_written": 0}

    # ----------------------------------------------------------------- what is on its way
    def pending(self, blob_id: Digest) -> bool:
        """Whether a blob of either type is in an open pack or one not yet stored."""
        with self._mutex:
            return any((t, blob_id) in self._open for t in BlobType)

    def stored(self, type_: BlobType, blob_id: Digest) -> Location | None:
        """Where a blob is in a pack this process stored that no index file lists yet."""
        with self._mutex:
            return self._unindexed.get((type_, blob_id))

    def holds(self, type_: BlobType, blob_id: Digest) -> bool:
        """Whether a blob is pending or stored and not yet indexed."""
        key = (type_, blob_id)
        with self._mutex:
            return key in self._open or key in self._unindexed

    # ----------------------------------------------------------------- adding
    def add(self, prepared: StoredBlob) -> bool:
        """Add a prepared blob to its pack; returns whether it was new."""
        key = (prepared.type, prepared.id)
        with self._mutex:
            # The LMDB index was consulted when the blob was prepared; here only what this
            # process added since (open packs, stored packs, the last index file) can have changed.
            if key in self._open or key in self._unindexed or key in self._just_indexed:
                return False
            writer = self._writers[prepared.type]
            writer.add(prepared)
            self._open.add(key)
            finished = self._finish(prepared.type) if writer.size >= self.pack_size else None
        if finished is not None:
            self._submit(finished)
        if len(self._unindexed) >= self.index_limits.max_blobs:
            with self._mutex:
                self._write_index()
        return True

    def flush_packs(self) -> None:
        """Finish the open packs and wait until every finished pack is stored."""
        with self._mutex:
            finished = [self._finish(t) for t, w in self._writers.items() if w.count]
        for item in finished:
            self._submit(item)
        self._drain_uploads()

    def flush(self) -> None:
        """Store open packs, then an index file listing every stored pack not yet indexed."""
        self.flush_packs()
        with self._mutex:
            self._write_index()

    def close(self) -> None:
        """Stop the upload threads (does not flush)."""
        if self._uploads is not None:
            for _ in self._uploaders:
                self._uploads.put(None)
            for thread in self._uploaders:
                thread.join()
            self._uploaders = []

    # ----------------------------------------------------------------- uploads
    def _finish(self, type_: BlobType) -> PackWriter:
        # Called under the mutex: hands the full writer over (it is finished by the uploader, off
        # the writers' critical path) and starts a new one. The pack counts as unstored until
        # _store_pack has run, so a reader waiting for it (flush_packs) cannot slip through.
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

    # ----------------------------------------------------------------- index files
    def _write_index(self) -> None:
        if not self._unindexed_packs:
            return
        self.write_index(self._unindexed_packs)
        self._unindexed_packs = []
        self._just_indexed, self._unindexed = set(self._unindexed), {}

    def write_index(
        self, packs: Iterable[IndexedPack], supersedes: Iterable[Digest] = ()
    ) -> list[tuple[Digest, IndexFile]]:
        """Store ``packs`` (already stored) as index files within :attr:`index_limits`."""
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
        """Store one index file (its packs must already be stored) and merge it locally."""
        plain = encode_index(index)
        if len(plain) > self.index_limits.max_bytes:
            raise ChunkstoreError(
                f"refusing to write an index file of {len(plain)} bytes: readers accept at most "
                f"{self.index_limits.max_bytes}; nothing was written (split it with write_index)"
            )
        self._check_lock()
        file_id = self.save_file(FileType.INDEX, "pack-index", plain)
        self.index.add_file(file_id, index)
        self.stats["index_files_written"] += 1
        return file_id

    def save_file(self, file_type: FileType, role: str, plaintext: bytes) -> Digest:
        """Encode and store a whole file named by the SHA-256 of its stored bytes."""
        stored = self.codec.encode_file(role, plaintext)
        file_id = Digest("sha256", hashlib.sha256(stored).digest())
        self.backend.save(Handle(file_type, file_id.hex), stored)
        return file_id
