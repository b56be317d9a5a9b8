"""Fetch scheduling: cache first, then coalesced, concurrent, deadline-bounded repository reads.

A FUSE read needs a handful of blobs (chunks, or the tree and chunk-list blobs that describe the
file system). :meth:`Fetcher.get` finds each one in this order::

    memory LRU (hot chunks, a few MiB)  ->  on-disk BlobCache (verified on read)
        ->  in-flight fetch of the same id (joined, never issued twice)
        ->  new fetch: ``Repository.plan_reads`` locates each id once and groups them per pack,
            neighbours within ``max_gap`` coalesced into reads of at most ``max_span`` bytes;
            each group is one ``Repository.load_group`` call = one ranged read, on a worker thread

Repository calls block (a registry read is an HTTP request), so they run on daemon worker threads:
demand fetches and readahead on ``workers`` threads, profile prefetch on ``background_workers``
threads of their own so a long replay never queues in front of a read. Every blob the repository
returns is verified by the codec against its id; only then is it handed to the waiting reads,
kept in the memory LRU and written to the disk cache.

Failure behaviour:

* **Deadline**: a caller waits at most ``deadline`` seconds for its blobs, then gets
  :class:`~chunkstore.errors.Transient` (EIO at the FUSE boundary), even if the backend hangs
  forever. The abandoned fetch is forgotten, so the next read issues a fresh one (and succeeds once
  the backend is back); a late result still lands in the caches.
* **Integrity**: when a coalesced read fails verification, its blobs are fetched again one by one,
  so one damaged chunk fails only the reads that need it; the damaged one is never cached.
* Transport failures fail the whole group (retrying blob by blob would only multiply the wait).
* **A moved blob**: the mount takes no repository lock, so a prune may repack the blobs it reads
  into new packs and delete the old ones. A blob the index does not know, or whose pack is gone
  (``MissingObject``, which includes ``NotFound``), makes the worker merge the repository's
  current index files (:meth:`Repository.sync_index`) and plan the rest of its group again,
  once; only then is it an error. This runs on the worker, inside the reader's deadline.

Only blob ids are used here: where a blob sits in which pack, and which blobs are neighbours, stays
inside the repository (``plan_reads`` decides, ``load_group`` reads); the pack index is consulted
once per blob per fetch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from chunkstore.blobcache import BlobCache
from chunkstore.errors import IntegrityError, MissingObject, Transient, UsageError
from chunkstore.mount.stats import MountStats
from chunkstore.repository import ReadGroup, Repository
from index.ids import Digest

__all__ = ["DEFAULT_DEADLINE", "FetchPolicy", "Fetcher"]

#: Seconds a read waits for its blobs before it fails with EIO.
DEFAULT_DEADLINE = 30.0

log = logging.getLogger("chunkstore.mount")


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Tunables: threads, coalescing, memory and the per-read deadline."""

    workers: int = 8
    background_workers: int = 2
    deadline: float = DEFAULT_DEADLINE
    #: Neighbouring blobs in a pack separated by at most this many bytes are read together.
    max_gap: int = 256 << 10
    #: Largest coalesced read for demand fetches and readahead.
    max_span: int = 4 << 20
    #: Largest coalesced read for profile prefetch ("big batches").
    prefetch_span: int = 32 << 20
    #: Plaintext bytes kept in the memory LRU.
    memory_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        """Refuse values that cannot work."""
        if self.workers < 1 or self.background_workers < 1:
            raise UsageError("fetch needs at least one worker thread of each kind")
        if not self.deadline > 0:
            raise UsageError(f"the fetch deadline must be positive, not {self.deadline}")


class _MemoryLRU:
    """Recently used plaintext blobs, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._items: OrderedDict[Digest, bytes] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, blob_id: Digest) -> bytes | None:
        with self._lock:
            data = self._items.get(blob_id)
            if data is not None:
                self._items.move_to_end(blob_id)
            return data

    def __contains__(self, blob_id: Digest) -> bool:
        with self._lock:
            return blob_id in self._items

    def put(self, blob_id: Digest, data: bytes) -> None:
        if len(data) > self._max:
            return
        with self._lock:
            if blob_id in self._items:
                self._items.move_to_end(blob_id)
                return
            self._items[blob_id] = data
            self._total += len(data)
            while self._total > self._max:
                _, old = self._items.popitem(last=False)
                self._total -= len(old)


#: A planned read, blobs the index did not know (to look up again), or None (stop).
_Job = ReadGroup | tuple[Digest, ...] | None


class Fetcher:
    """Thread-safe blob fetching for the mount: caches, coalescing, concurrency, deadlines."""

    def __init__(
        self,
        repo: Repository,
        cache: BlobCache | None = None,
        policy: FetchPolicy | None = None,
        *,
        stats: MountStats | None = None,
        on_touch: Callable[[Digest], None] | None = None,
    ) -> None:
        """Start the worker threads (daemons: a hung backend never blocks process exit).

        ``on_touch`` is called with every blob id :meth:`get` is asked for, in order (a profile
        recorder); prefetches are not reported.
        """
        self.repo = repo
        self.cache = cache
        self.policy = policy or FetchPolicy()
        self.stats = stats if stats is not None else MountStats()
        self._memory = _MemoryLRU(self.policy.memory_bytes)
        self._on_touch = on_touch
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._inflight: dict[Digest, Future[bytes]] = {}
        self._demand: queue.Queue[_Job] = queue.Queue()
        self._background: queue.Queue[_Job] = queue.Queue()
        self._busy = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._worker, args=(q,), name=f"fetch-{n}-{i}", daemon=True)
            for q, n, count in (
                (self._demand, "demand", self.policy.workers),
                (self._background, "prefetch", self.policy.background_workers),
            )
            for i in range(count)
        ]
        for t in self._threads:
            t.start()

    # ----------------------------------------------------------------- public
    def cached(self, blob_id: Digest) -> bytes | None:
        """The blob from memory or the disk cache, without fetching."""
        data = self._memory.get(blob_id)
        if data is not None:
            self.stats.add(memory_hits=1)
            return data
        if self.cache is not None:
            data = self.cache.get(blob_id)
            if data is not None:
                self._memory.put(blob_id, data)
            self.stats.add(**{"cache_hits" if data is not None else "cache_misses": 1})
        return data

    def get(self, ids: Sequence[Digest]) -> dict[Digest, bytes]:
        """The verified plaintext of every blob in ``ids``, within the deadline.

        Raises :class:`Transient` when the deadline passes, or the error of a failed fetch
        (``IntegrityError``, ``MissingObject``, ``BackendError``).
        """
        start = time.monotonic()
        out: dict[Digest, bytes] = {}
        waits: dict[Digest, Future[bytes]] = {}
        new: list[Digest] = []
        for blob_id in dict.fromkeys(ids):
            if self._on_touch is not None:
                self._on_touch(blob_id)
            data = self.cached(blob_id)
            if data is not None:
                out[blob_id] = data
                continue
            fut, fresh = self._claim(blob_id)
            waits[blob_id] = fut
            if fresh:
                new.append(blob_id)
        if new:
            self._schedule(new, self._demand, self.policy.max_span)
        end = start + self.policy.deadline
        for blob_id, fut in waits.items():
            try:
                out[blob_id] = fut.result(timeout=max(0.0, end - time.monotonic()))
            except FutureTimeout:
                self._abandon(waits)
                self.stats.add(fetch_timeouts=1)
                raise Transient(
                    f"fetching blob {blob_id.short} took longer than the "
                    f"{self.policy.deadline:g} s deadline; the repository is slow or unreachable"
                ) from None
        return out

    def get_one(self, blob_id: Digest) -> bytes:
        """One blob (see :meth:`get`)."""
        return self.get([blob_id])[blob_id]

    def prefetch(self, ids: Iterable[Digest], *, urgent: bool = False) -> int:
        """Fetch ``ids`` in the background into the caches; returns how many were scheduled.

        ``urgent`` (readahead) uses the demand threads and normal spans; otherwise (profile
        replay) the background threads and big spans.
        """
        new: list[Digest] = []
        for blob_id in dict.fromkeys(ids):
            if blob_id in self._memory or (self.cache is not None and blob_id in self.cache):
                continue
            _, fresh = self._claim(blob_id)
            if fresh:
                new.append(blob_id)
        if new:
            if urgent:
                self._schedule(new, self._demand, self.policy.max_span)
            else:
                self._schedule(new, self._background, self.policy.prefetch_span)
                self.stats.add(prefetched_chunks=len(new))
        return len(new)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no fetch is queued or running (for tests and the end of a prefetch)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if not self._inflight and self._busy == 0:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        """Stop the workers (running fetches are abandoned, not waited for)."""
        self._closed = True
        for _ in range(self.policy.workers):
            self._demand.put(None)
        for _ in range(self.policy.background_workers):
            self._background.put(None)

    # ----------------------------------------------------------------- scheduling
    def _claim(self, blob_id: Digest) -> tuple[Future[bytes], bool]:
        with self._lock:
            fut = self._inflight.get(blob_id)
            if fut is not None:
                return fut, False
            fut = Future()
            self._inflight[blob_id] = fut
            return fut, True

    def _abandon(self, waits: dict[Digest, Future[bytes]]) -> None:
        with self._lock:
            for blob_id, fut in waits.items():
                if not fut.done() and self._inflight.get(blob_id) is fut:
                    del self._inflight[blob_id]

    def _settle(self, blob_id: Digest, data: bytes | None, exc: BaseException | None) -> None:
        with self._lock:
            fut = self._inflight.pop(blob_id, None)
        if fut is None:
            # Abandoned after its deadline: keep a late success, drop a late failure.
            fut = Future()
        if exc is not None:
            fut.set_exception(exc)
            return
        assert data is not None
        fut.set_result(data)
        self._memory.put(blob_id, data)
        if self.cache is not None:
            self.cache.put(blob_id, data)

    def _schedule(self, ids: list[Digest], q: queue.Queue[_Job], max_span: int) -> None:
        """Have the repository plan the reads of ``ids``; queue one job per planned read."""
        try:
            plan = self.repo.plan_reads(
                ids, max_gap=self.policy.max_gap, max_span=max_span, heal=False
            )
        except Exception as exc:  # a broken index cache: fail these blobs, not the mount
            for blob_id in ids:
                self._settle(blob_id, None, exc)
            return
        for group in plan.groups:
            q.put(group)
        if plan.missing:  # not in the index this mount knows: a worker re-reads it (see _run)
            q.put(tuple(plan.missing))

    # ----------------------------------------------------------------- workers
    def _worker(self, q: queue.Queue[_Job]) -> None:
        while True:
            job = q.get()
            if job is None or self._closed:
                return
            with self._lock:
                self._busy += 1
            try:
                self._run(job)
            except BaseException as exc:  # never let a worker die silently
                log.error("fetch worker failed: %s", exc)
            finally:
                with self._lock:
                    self._busy -= 1

    def _run(self, job: ReadGroup | tuple[Digest, ...], *, resynced: bool = False) -> None:
        """Read a planned group, or (a tuple) blobs the index did not know when planning."""
        ids = job.ids if isinstance(job, ReadGroup) else job
        done: set[Digest] = set()
        self.stats.add(requests=1, bytes_fetched=job.length if isinstance(job, ReadGroup) else 0)
        try:
            if not isinstance(job, ReadGroup):
                others = f" and {len(job) - 1} other(s)" if len(job) > 1 else ""
                raise MissingObject(
                    f"blob {job[0].short}{others} is not in the index; run 'chunkstore check' "
                    "(and 'chunkstore check --rebuild-index' if packs hold it)"
                )
            # heal=False: this worker re-reads the index itself (below), and counts it.
            for blob_id, data in self.repo.load_group(job, heal=False):
                done.add(blob_id)
                self.stats.add(chunks_fetched=1, plain_bytes_fetched=len(data))
                self._settle(blob_id, data, None)
        except Exception as exc:
            rest = [i for i in ids if i not in done]
            if isinstance(exc, MissingObject) and not resynced and self._resync_index(exc):
                # A prune may have moved these blobs to other packs: plan them again, once.
                self._replan(rest)
                return
            if isinstance(exc, IntegrityError) and len(rest) > 1:
                log.warning(
                    "a read of %d blobs failed verification; reading them one by one", len(rest)
                )
                for blob_id in rest:
                    self._run_one(blob_id)
                return
            log.warning("fetch of %d blob(s) failed: %s", len(rest), exc)
            self.stats.add(fetch_errors=len(rest))
            for blob_id in rest:
                self._settle(blob_id, None, exc)

    def _replan(self, ids: list[Digest]) -> None:
        """Read ``ids`` where the index merged since says they are (no further re-read)."""
        try:
            plan = self.repo.plan_reads(
                ids, max_gap=self.policy.max_gap, max_span=self.policy.max_span, heal=False
            )
        except Exception as exc:
            log.warning("fetch of %d blob(s) failed: %s", len(ids), exc)
            self.stats.add(fetch_errors=len(ids))
            for blob_id in ids:
                self._settle(blob_id, None, exc)
            return
        jobs: list[ReadGroup | tuple[Digest, ...]] = list(plan.groups)
        if plan.missing:
            jobs.append(tuple(plan.missing))
        for job in jobs:
            self._run(job, resynced=True)

    def _resync_index(self, cause: Exception) -> bool:
        """Merge the index files published since the mount opened the repository."""
        with self._sync_lock:
            try:
                merged = self.repo.sync_index()
            except Exception as exc:
                log.warning("re-reading the repository index after %r failed: %s", cause, exc)
                return False
        log.info("re-read the repository index (%d new file(s)) after: %s", merged, cause)
        self.stats.add(index_resyncs=1)
        return True

    def _run_one(self, blob_id: Digest) -> None:
        self.stats.add(requests=1)
        try:
            data = self.repo.load_blob(blob_id)
        except Exception as exc:
            log.warning("blob %s: %s", blob_id.short, exc)
            self.stats.add(fetch_errors=1)
            self._settle(blob_id, None, exc)
            return
        self.stats.add(chunks_fetched=1, plain_bytes_fetched=len(data))
        self._settle(blob_id, data, None)
