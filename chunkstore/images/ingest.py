"""Layer ingest: an uncompressed layer tar -> deduplicated chunks, a recipe, and its members.

    tar stream -> HashingReader (diff_id) -> TarReader events
        Raw                -> recipe raw bytes
        Member + content   -> ChunkStorer.submit (chunked now; hashed, compressed and stored by
                              workers, in batches spanning small files) -> recipe content op
        Member             -> the member list (for the merged tree)
    recipe parts and root  -> META blobs

Recipe operations and members wait in an ordered queue until their files' chunks are stored, then
are emitted in tar order. Memory stays bounded: content is streamed through the chunker, at most
``2 * workers + 1`` batches are in flight, the queue is capped (MAX_QUEUED_RAW, MAX_QUEUED_OPS),
raw bytes are cut into recipe parts as they come, and only the member list (metadata, a few hundred
bytes a member) is kept.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from chunkstore.blob import BlobType
from chunkstore.images.tarstream import Limits, Member, Raw, TarEntry, TarReader
from chunkstore.repository import Repository
from chunkstore.streams import ChunkStorer, Pending, StoreStats
from index.chunklist import MAX_ENTRIES, ChunkRef, encode_chunk_list
from index.ids import Digest
from index.recipe import INLINE_CHUNKS, Content, ContentLists, RecipeBuilder

__all__ = ["HashingReader", "IngestedLayer", "IngestedMember", "ReadAhead", "ingest_layer"]


class HashingReader:
    """Passes reads through while computing the SHA-256 and size of everything read."""

    def __init__(self, raw: BinaryIO) -> None:
        """Wrap ``raw``."""
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        """Read and hash."""
        data = self._raw.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        """Read into ``buf`` and hash."""
        view = memoryview(buf)
        data = self._raw.read(len(view))
        view[: len(data)] = data
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def digest(self) -> Digest:
        """SHA-256 of what was read so far."""
        return Digest("sha256", self._hash.digest())


class ReadAhead:
    """Reads (decompresses) and hashes a stream in a thread, ahead of the consumer.

    Decompression and SHA-256 release the GIL, so they overlap with tar parsing and chunking in
    the main thread. At most ``depth`` blocks of ``block`` bytes wait in the queue. Errors of the
    underlying stream are raised to the consumer where it reads. Use as a context manager: leaving
    stops and joins the thread (the stream may then be closed by its owner).
    """

    def __init__(self, raw: BinaryIO, *, block: int = 1 << 20, depth: int = 4) -> None:
        """Start reading ``raw`` in a thread."""
        self._raw = raw
        self._block = block
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._hash = hashlib.sha256()
        self._produced = 0
        self._buf = b""
        self._pos = 0
        self._eof = False
        self.size = 0
        self._thread = threading.Thread(target=self._run, name="chunkstore-readahead", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = bytes(self._raw.read(self._block))
                self._hash.update(data)
                self._produced += len(data)
                if not self._put(data) or not data:
                    return
        except BaseException as exc:  # handed to the consumer
            self._put(exc)

    def __enter__(self) -> ReadAhead:
        """Use as a context manager."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop and join the thread."""
        self._stop.set()
        self._thread.join()

    def _fill(self) -> bool:
        """Make unread bytes available; False at the end of the stream."""
        if self._pos < len(self._buf):
            return True
        if self._eof:
            return False
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        if not item:
            self._eof = True
            return False
        self._buf, self._pos = item, 0
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when ``n`` < 0); b"" at the end."""
        if n < 0:
            parts = []
            while self._fill():
                parts.append(self._buf[self._pos :])
                self._pos = len(self._buf)
            data = b"".join(parts)
        else:
            if n == 0 or not self._fill():
                return b""
            data = self._buf[self._pos : self._pos + n]
            self._pos += len(data)
        self.size += len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        """Read into ``buf`` (possibly short); 0 at the end."""
        view = memoryview(buf).cast("B")
        if not len(view) or not self._fill():
            return 0
        n = min(len(view), len(self._buf) - self._pos)
        view[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        self.size += n
        return n

    def digest(self) -> Digest:
        """SHA-256 of the whole stream; only once it has been read to its end."""
        if not self._eof or self._pos < len(self._buf) or self._produced != self.size:
            raise AssertionError("digest of a stream not read to its end")  # internal invariant
        self._thread.join()
        return Digest("sha256", self._hash.digest())


@dataclass(frozen=True, slots=True)
class IngestedMember:
    """A tar member and, for content members, its chunks (inline or as chunk lists)."""

    entry: TarEntry
    chunks: tuple[ChunkRef, ...] = ()
    lists: tuple[Digest, ...] = ()


@dataclass(slots=True)
class IngestedLayer:
    """Result of ingesting one layer."""

    recipe: Digest
    diff_id: Digest
    size: int
    members: list[IngestedMember] = field(default_factory=list)
    stats: StoreStats = field(default_factory=StoreStats)


#: Queued raw bytes and operations after which ingest waits for the oldest pending file; keeps
#: memory bounded when many content-less members follow a file whose batch is not yet sent.
MAX_QUEUED_RAW = 8 << 20
MAX_QUEUED_OPS = 1 << 16


def ingest_layer(
    repo: Repository,
    tar_stream: BinaryIO,
    *,
    storer: ChunkStorer,
    limits: Limits | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestedLayer:
    """Store one uncompressed layer tar; returns its recipe id, diff_id and members.

    Files are chunked as they are read but not waited for: their chunks go to the storer's
    workers in batches shared by consecutive small files, while the recipe operations and
    members wait in an ordered queue until their files' refs are known. Everything is emitted in
    tar order, so the recipe, the member list and the blobs stored are as with one file at a time.
    """
    with ReadAhead(tar_stream) as hashing:
        return _ingest(repo, hashing, storer, limits, progress)


def _ingest(
    repo: Repository,
    hashing: ReadAhead,
    storer: ChunkStorer,
    limits: Limits | None,
    progress: Callable[[int], None] | None,
) -> IngestedLayer:
    recipe = RecipeBuilder(lambda part: repo.save_blob(BlobType.META, part).id)
    members: list[IngestedMember] = []
    # Ordered queue: raw bytes, members without content, (entry, pending content).
    queue: deque[bytes | IngestedMember | tuple[TarEntry, Pending]] = deque()
    queued_raw = 0

    def emit_ready() -> None:
        nonlocal queued_raw
        while queue:
            op = queue[0]
            if isinstance(op, bytes):
                recipe.raw(op)
                queued_raw -= len(op)
            elif isinstance(op, IngestedMember):
                members.append(op)
            else:
                entry, pending = op
                if not pending.done:
                    return
                _emit_content(repo, recipe, members, entry, pending)
            queue.popleft()

    def wait_front() -> None:
        for op in queue:
            if isinstance(op, tuple):
                storer.wait(op[1])
                break
        emit_ready()

    try:
        for event in TarReader(hashing, limits):  # type: ignore[arg-type]
            if isinstance(event, Raw):
                queue.append(event.data)
                queued_raw += len(event.data)
            else:
                assert isinstance(event, Member)
                if event.content is None:
                    queue.append(IngestedMember(event.entry))
                else:
                    pending = storer.submit(event.content)  # type: ignore[arg-type]
                    if progress is not None:
                        progress(pending.size)
                    queue.append((event.entry, pending))
            emit_ready()
            if queued_raw > MAX_QUEUED_RAW or len(queue) > MAX_QUEUED_OPS:
                wait_front()
        storer.drain()
        emit_ready()
    except BaseException:
        storer.discard()
        raise
    if queue:
        raise AssertionError("ingest queue not empty after drain")  # internal invariant
    diff_id = hashing.digest()
    root = recipe.finish(diff_id)
    if root.size != hashing.size:
        raise AssertionError("recipe size differs from the bytes read")  # internal invariant
    recipe_id = repo.save_blob(BlobType.META, root.encode()).id
    return IngestedLayer(recipe_id, diff_id, hashing.size, members, storer.stats)


def _emit_content(
    repo: Repository,
    recipe: RecipeBuilder,
    members: list[IngestedMember],
    entry: TarEntry,
    pending: Pending,
) -> None:
    refs, size = pending.refs, pending.size
    if len(refs) <= INLINE_CHUNKS:
        recipe.content(Content(size, tuple(refs)))
        members.append(IngestedMember(entry, chunks=tuple(refs)))
    else:
        lists = tuple(
            repo.save_blob(BlobType.META, encode_chunk_list(refs[i : i + MAX_ENTRIES])).id
            for i in range(0, len(refs), MAX_ENTRIES)
        )
        recipe.content(ContentLists(size, lists))
        members.append(IngestedMember(entry, lists=lists))
