"""Storing and reading byte streams: chunker -> blobs -> chunk lists, and back.

Store pipeline (bounded memory whatever the stream size)::

    main thread:  chunker.chunks(stream) -> batches of ~1 MiB of chunks -> the pool
    workers:      per chunk: blob id (SHA-256/HMAC), dedup check, zstd, seal, verify
                  (all of these release the GIL)
    main thread:  in order: add_prepared -> packs; every MAX_ENTRIES refs -> a chunk-list blob
    uploader:     finish full packs, store them (repository.py)

At most ``2 * workers + 1`` batches are in flight, so memory stays at a few MiB plus the chunker
buffer and the packs being filled and stored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from chunkstore.blob import BlobType, StoredBlob
from chunkstore.chunker import Chunker
from chunkstore.errors import CorruptMetadata
from chunkstore.repository import Repository
from index.chunklist import MAX_ENTRIES, ChunkRef, StreamBody, decode_chunk_list, encode_chunk_list
from index.errors import FormatError
from index.ids import Digest

__all__ = [
    "BATCH_BYTES",
    "ChunkStorer",
    "StoreStats",
    "iter_stream",
    "read_chunk_lists",
    "store_stream",
]

#: Bytes of chunks handed to a worker at once.
BATCH_BYTES = 1 << 20


@dataclass(slots=True)
class StoreStats:
    """Counters of one store operation."""

    bytes_in: int = 0
    chunks: int = 0
    new_chunks: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0


class ChunkStorer:
    """Stores streams as deduplicated chunks with a pool of worker threads (a context manager).

    One storer serves any number of streams one after another (all files of a layer), so the
    pool and the chunker's buffer are set up once.
    """

    def __init__(
        self,
        repo: Repository,
        *,
        workers: int = 2,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Prepare a pool of ``workers`` threads for ``repo``."""
        self._repo = repo
        self._workers = max(1, workers)
        self._progress = progress
        self._chunker = Chunker(repo.config.chunker)
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="chunkstore")
        self.stats = StoreStats()

    def __enter__(self) -> ChunkStorer:
        """Use as a context manager."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the workers."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _prepare(self, batch: list[bytes]) -> list[StoredBlob | Digest]:
        return [self._repo.prepare_blob(BlobType.DATA, chunk) for chunk in batch]

    def _finish(
        self, prepared: StoredBlob | Digest, size: int, emit: Callable[[ChunkRef], None]
    ) -> None:
        stats = self.stats
        new = self._repo.add_prepared(prepared)
        blob_id = prepared if isinstance(prepared, Digest) else prepared.id
        stats.chunks += 1
        if new and isinstance(prepared, StoredBlob):
            stats.new_chunks += 1
            stats.new_bytes += size
            stats.stored_bytes += len(prepared.data)
        emit(ChunkRef(blob_id, size))
        if self._progress is not None:
            self._progress(size)

    def store(self, stream: BinaryIO, emit: Callable[[ChunkRef], None]) -> int:
        """Chunk and store ``stream``; ``emit`` gets each chunk's ref in order. Returns the size.

        Chunks go to the workers in batches of about BATCH_BYTES, so per-task overhead (futures,
        thread hand-offs) stays small next to hashing and compressing a batch; a small file is
        one batch.
        """
        inflight: deque[tuple[Future[list[StoredBlob | Digest]], list[int]]] = deque()
        batch: list[bytes] = []
        batch_bytes = total = 0

        def drain() -> None:
            fut, sizes = inflight.popleft()
            for prepared, size in zip(fut.result(), sizes, strict=True):
                self._finish(prepared, size, emit)

        for chunk in self._chunker.chunks(stream):
            total += len(chunk)
            batch.append(chunk)
            batch_bytes += len(chunk)
            if batch_bytes >= BATCH_BYTES:
                inflight.append((self._pool.submit(self._prepare, batch), [len(c) for c in batch]))
                batch, batch_bytes = [], 0
                if len(inflight) > 2 * self._workers:
                    drain()
        if batch:
            inflight.append((self._pool.submit(self._prepare, batch), [len(c) for c in batch]))
        while inflight:
            drain()
        self.stats.bytes_in += total
        return total


def store_stream(
    repo: Repository,
    stream: BinaryIO,
    *,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> tuple[StreamBody, StoreStats]:
    """Chunk, deduplicate and store ``stream``; returns its body (not yet in any record)."""
    refs: list[ChunkRef] = []
    lists: list[Digest] = []

    def emit(ref: ChunkRef) -> None:
        refs.append(ref)
        if len(refs) == MAX_ENTRIES:
            lists.append(repo.save_blob(BlobType.META, encode_chunk_list(refs)).id)
            refs.clear()

    with ChunkStorer(repo, workers=workers, progress=progress) as storer:
        size = storer.store(stream, emit)
    if refs:
        lists.append(repo.save_blob(BlobType.META, encode_chunk_list(refs)).id)
    return StreamBody(size, tuple(lists)), storer.stats


def read_chunk_lists(repo: Repository, body: StreamBody) -> Iterator[ChunkRef]:
    """The stream's chunk refs in order."""
    for list_id in body.lists:
        try:
            yield from decode_chunk_list(repo.load_blob(list_id))
        except FormatError as exc:
            raise CorruptMetadata(f"chunk list {list_id.short} is invalid: {exc}") from exc


def iter_stream(repo: Repository, body: StreamBody, *, batch: int = 64) -> Iterator[bytes]:
    """The stream's bytes, chunk by chunk, each chunk verified; fetched in pack-grouped batches."""
    total = 0
    pending: list[ChunkRef] = []

    def drain() -> Iterator[bytes]:
        got = dict(repo.load_blobs(r.id for r in pending))
        for r in pending:
            data = got[r.id]
            if len(data) != r.size:
                raise CorruptMetadata(
                    f"chunk {r.id.short} has {len(data)} bytes, list says {r.size}"
                )
            yield data
        pending.clear()

    for ref in read_chunk_lists(repo, body):
        pending.append(ref)
        total += ref.size
        if len(pending) >= batch:
            yield from drain()
    yield from drain()
    if total != body.size:
        raise CorruptMetadata(f"stream chunks add up to {total} bytes, the record says {body.size}")
