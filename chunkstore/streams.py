"""Storing and reading byte streams: chunker -> blobs -> chunk lists, and back.

Streams are read back by :func:`verified_chunks`, the one verified chunk stream (``iter_stream``,
``browse.read_file`` and the extraction of a ``dir:`` target use it).

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
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from chunkstore.blob import BlobType, StoredBlob
from chunkstore.chunker import Chunker
from chunkstore.errors import CorruptMetadata
from chunkstore.readable import Readable
from chunkstore.repository import Repository
from index.chunklist import MAX_ENTRIES, ChunkRef, StreamBody, encode_chunk_list
from index.ids import Digest

__all__ = [
    "BATCH_BYTES",
    "READ_BATCH_BYTES",
    "ChunkStorer",
    "Pending",
    "StoreStats",
    "iter_stream",
    "read_chunk_lists",
    "store_stream",
    "store_with",
    "verified_chunks",
]


#: Bytes of chunks handed to a worker at once.
BATCH_BYTES = 1 << 20
#: Bytes of chunks a verified read loads at once (pack-grouped, coalesced reads).
READ_BATCH_BYTES = 8 << 20


@dataclass(slots=True)
class StoreStats:
    """Counters of one store operation."""

    bytes_in: int = 0
    chunks: int = 0
    new_chunks: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0


class Pending:
    """A stream handed to :meth:`ChunkStorer.submit` whose chunks may still be in the workers.

    ``size`` is known at once (the stream was read); ``refs`` (or the ``emit`` callback given to
    ``submit``) fill in submission order as the workers' batches are finished, and ``done``
    turns true when every chunk of the stream has been added to the repository.
    """

    __slots__ = ("_emit", "_outstanding", "_sealed", "refs", "size")

    def __init__(self, emit: Callable[[ChunkRef], None] | None) -> None:
        """A handle whose refs go to ``emit``, or to ``refs`` when it is None."""
        self.size = 0
        self.refs: list[ChunkRef] = []
        self._emit = emit if emit is not None else self.refs.append
        self._outstanding = 0
        self._sealed = False

    @property
    def done(self) -> bool:
        """Whether all chunks of the stream are stored and their refs emitted."""
        return self._sealed and self._outstanding == 0


class ChunkStorer:
    """Stores streams as deduplicated chunks with a pool of worker threads (a context manager).

    One storer serves any number of streams one after another (all files of a layer), so the
    pool and the chunker's buffer are set up once. :meth:`submit` chunks a stream and returns
    without waiting for the workers: the chunks of consecutive small files share batches of
    about BATCH_BYTES, so the workers hash and compress while the caller reads on. Batches are
    finished (``add_prepared``, refs emitted) strictly in submission order, so the repository
    sees the same blob order as with one stream at a time. :meth:`store` is the synchronous form.
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
        self._chunker = Chunker(repo.config.chunker, gear=repo.gear_table)
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="chunkstore")
        self.stats = StoreStats()
        # The batch being filled: chunks, and the handle each belongs to.
        self._batch: list[bytes] = []
        self._owners: list[Pending] = []
        self._batch_bytes = 0
        self._inflight: deque[
            tuple[Future[list[StoredBlob | Digest]], list[int], list[Pending]]
        ] = deque()

    def __enter__(self) -> ChunkStorer:
        """Use as a context manager."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the workers (work not yet drained is dropped)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.discard()

    def _prepare(self, batch: list[bytes]) -> list[StoredBlob | Digest]:
        return [self._repo.prepare_blob(BlobType.DATA, chunk) for chunk in batch]

    def _finish(self, prepared: StoredBlob | Digest, size: int, owner: Pending) -> None:
        stats = self.stats
        new = self._repo.add_prepared(prepared)
        blob_id = prepared if isinstance(prepared, Digest) else prepared.id
        stats.chunks += 1
        if new and isinstance(prepared, StoredBlob):
            stats.new_chunks += 1
            stats.new_bytes += size
            stats.stored_bytes += len(prepared.data)
        owner._emit(ChunkRef(blob_id, size))
        owner._outstanding -= 1
        if self._progress is not None:
            self._progress(size)

    def _send(self) -> None:
        """Hand the batch being filled to the workers."""
        batch, owners = self._batch, self._owners
        self._batch, self._owners, self._batch_bytes = [], [], 0
        self._inflight.append(
            (self._pool.submit(self._prepare, batch), [len(c) for c in batch], owners)
        )

    def _complete_one(self) -> None:
        """Wait for the oldest in-flight batch and finish its chunks in order."""
        fut, sizes, owners = self._inflight.popleft()
        for prepared, size, owner in zip(fut.result(), sizes, owners, strict=True):
            self._finish(prepared, size, owner)

    def poll(self) -> None:
        """Finish the in-flight batches that are already done (in order), without waiting."""
        while self._inflight and self._inflight[0][0].done():
            self._complete_one()

    def submit(self, stream: BinaryIO, emit: Callable[[ChunkRef], None] | None = None) -> Pending:
        """Chunk ``stream`` (read to its end now) and queue its chunks; returns its handle.

        The chunks' refs go to ``emit`` (or the handle's ``refs``) in order as batches complete,
        during this or later calls of :meth:`submit`, :meth:`poll`, :meth:`wait` or
        :meth:`drain`. At most ``2 * workers + 1`` batches are in flight (bounded memory).
        """
        handle = Pending(emit)
        total = 0
        limit = 2 * self._workers
        for chunk in self._chunker.chunks(stream):
            n = len(chunk)
            total += n
            self._batch.append(chunk)
            self._owners.append(handle)
            handle._outstanding += 1
            self._batch_bytes += n
            if self._batch_bytes >= BATCH_BYTES:
                self._send()
                while len(self._inflight) > limit:
                    self._complete_one()
                self.poll()
        handle.size = total
        handle._sealed = True
        self.stats.bytes_in += total
        return handle

    def wait(self, handle: Pending) -> None:
        """Finish batches in order until ``handle`` is done (sending a partial batch if need be)."""
        while not handle.done:
            if not self._inflight:
                if not self._batch:
                    raise AssertionError("pending stream has no queued chunks")  # invariant
                self._send()
            self._complete_one()

    def drain(self) -> None:
        """Send the partial batch and finish everything in flight, in order."""
        if self._batch:
            self._send()
        while self._inflight:
            self._complete_one()

    def discard(self) -> None:
        """Drop queued and in-flight batches (after a failure); their handles never complete.

        Nothing reaches the repository for them: workers only hash and encode, and blobs are
        added in the main thread when a batch is finished.
        """
        for fut, _, _ in self._inflight:
            fut.cancel()
        self._inflight.clear()
        self._batch, self._owners, self._batch_bytes = [], [], 0

    def store(self, stream: BinaryIO, emit: Callable[[ChunkRef], None]) -> int:
        """Chunk and store ``stream``; ``emit`` gets each chunk's ref in order. Returns the size.

        Waits until the stream's chunks (and those of streams submitted before) are stored.
        """
        handle = self.submit(stream, emit)
        self.wait(handle)
        return handle.size


def store_stream(
    repo: Repository,
    stream: BinaryIO,
    *,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> tuple[StreamBody, StoreStats]:
    """Chunk, deduplicate and store ``stream``; returns its body (not yet in any record)."""
    with ChunkStorer(repo, workers=workers, progress=progress) as storer:
        body = store_with(repo, storer, stream)
    return body, storer.stats


def store_with(repo: Repository, storer: ChunkStorer, stream: Readable) -> StreamBody:
    """Chunk, deduplicate and store ``stream`` with an existing ``storer``; returns its body.

    The chunk refs are written as chunk-list blobs of at most MAX_ENTRIES refs each.
    """
    refs: list[ChunkRef] = []
    lists: list[Digest] = []

    def emit(ref: ChunkRef) -> None:
        refs.append(ref)
        if len(refs) == MAX_ENTRIES:
            lists.append(repo.save_blob(BlobType.META, encode_chunk_list(refs)).id)
            refs.clear()

    size = storer.store(stream, emit)  # type: ignore[arg-type]
    if refs:
        lists.append(repo.save_blob(BlobType.META, encode_chunk_list(refs)).id)
    return StreamBody(size, tuple(lists))


def read_chunk_lists(repo: Repository, body: StreamBody) -> Iterator[ChunkRef]:
    """The stream's chunk refs in order."""
    for list_id in body.lists:
        yield from repo.load_chunk_list(list_id)


def verified_chunks(
    repo: Repository,
    refs: Iterable[ChunkRef],
    *,
    size: int,
    what: str,
    listed_by: str = "chunk list",
    sized_by: str = "record",
    loaded: Mapping[Digest, bytes] | None = None,
    batch_bytes: int = READ_BATCH_BYTES,
) -> Iterator[bytes]:
    """The chunks of ``refs`` in order, each verified, sized as its ref says, adding up to ``size``.

    Chunks come from ``loaded`` when given (a caller that read several streams' chunks at once),
    else from pack-grouped, coalesced reads of about ``batch_bytes`` at a time; either way every
    chunk was decoded against its id by the repository. ``what`` names the stream in errors,
    ``listed_by`` what gave the chunk sizes and ``sized_by`` what gave the total.
    """
    total = 0
    pending: list[ChunkRef] = []
    pending_bytes = 0

    def drain() -> Iterator[bytes]:
        got = loaded if loaded is not None else dict(repo.load_blobs(r.id for r in pending))
        for r in pending:
            data = got[r.id]
            if len(data) != r.size:
                raise CorruptMetadata(
                    f"chunk {r.id.short} of {what} has {len(data)} bytes, not {r.size}: "
                    f"the {listed_by} says {r.size} bytes"
                )
            yield data
        pending.clear()

    for ref in refs:
        pending.append(ref)
        pending_bytes += ref.size
        total += ref.size
        if pending_bytes >= batch_bytes:
            yield from drain()
            pending_bytes = 0
    yield from drain()
    if total != size:
        raise CorruptMetadata(f"{what}: chunks add up to {total} bytes, the {sized_by} says {size}")


def iter_stream(repo: Repository, body: StreamBody) -> Iterator[bytes]:
    """The stream's bytes, chunk by chunk, each chunk verified; fetched in pack-grouped batches."""
    return verified_chunks(repo, read_chunk_lists(repo, body), size=body.size, what="stream")
