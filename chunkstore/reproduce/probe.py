"""Finding the compressor of a layer while the backup reads it: no second pass over the layer.

The backup reads each compressed layer blob once; a :class:`ReproductionProbe` sees both sides of
that read: the *original* compressed bytes as they arrive (:meth:`ReproductionProbe.original`)
and the *plain* bytes they decompress to (:meth:`ReproductionProbe.plain`). In its own thread it
runs every plausible candidate (:func:`chunkstore.reproduce.catalog.candidates`, chosen from the
gzip header or zstd frame header) over the plain bytes and compares each one's output with the
original, dropping a candidate at its first differing byte. Most drop out on the first block; a
survivor is then checked to the last byte of the blob, so when the backup ends, exactness is known.

Order is causal: the decompressor reads compressed bytes before it yields the plain bytes they
hold, and both are fed from the same thread, so a single ordered queue gives the worker every
original byte a correct candidate can have produced. Candidate output beyond the original bytes
received so far waits in the candidate's ``pending`` buffer.

The queue is bounded (``max_queued`` bytes): if the survivors compress more slowly than the backup
reads, the reader waits, so memory stays bounded. The compressors release the GIL (zlib, libzstd
and chunkstore's native families), so the probe runs beside tar parsing on another core.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from chunkstore.readable import Readable
from chunkstore.reproduce import catalog
from chunkstore.reproduce.model import Candidate
from index.image import Reproduce

__all__ = ["ProbeResult", "ReproductionProbe", "TeeReader"]

_END = b""  # the end marker in the queue (empty data is never queued otherwise)
_CONVERGE_STEP = 32 << 10  # plain bytes fed at a time while several candidates live
_PREFIX_LIMIT = 16 << 20  # plain bytes kept for a survivor's faster encoder to restart on


class TeeReader:
    """A reader that hands a copy of every read to ``sink`` (the probe's feeding methods)."""

    def __init__(self, raw: Readable, sink: Callable[[bytes], None]) -> None:
        """Wrap ``raw``."""
        self._raw = raw
        self._sink = sink

    def read(self, n: int = -1) -> bytes:
        """Read from the wrapped stream and pass the bytes on."""
        data = self._raw.read(n)
        if data:
            self._sink(data)
        return data

    def close(self) -> None:
        """Close the wrapped stream if it can be closed."""
        close = getattr(self._raw, "close", None)
        if close is not None:
            close()


@dataclass(slots=True)
class _Live:
    candidate: Candidate
    encoder: catalog.BlobEncoder
    pos: int = 0  # original bytes matched so far
    pending: bytearray = field(default_factory=bytearray)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What the probe found: the reproduction, or None, and how many settings it tried."""

    reproduce: Reproduce | None
    tried: int
    #: Compressed bytes fed to the probe: the whole blob when the backup read it to its end.
    original_size: int


class ReproductionProbe:
    """Runs the candidate compressors of one layer blob beside the backup's read of it.

    Feed :meth:`original` and :meth:`plain` from one thread, in the order the bytes were read,
    then call :meth:`result` (which waits for the worker). Use as a context manager, so that the
    worker stops if the backup fails half-way.
    """

    def __init__(
        self,
        compression: str,
        *,
        max_queued: int = 32 << 20,
        candidates: list[Candidate] | None = None,
    ) -> None:
        """Probe a blob compressed with ``compression`` ("gzip" or "zstd").

        ``candidates`` replaces the catalog's choice (tests); by default it is made from the
        blob's header once the first plain bytes arrive.
        """
        self._compression = compression
        self._fixed = candidates
        self._queue: queue.Queue[tuple[bool, bytes]] = queue.Queue()
        self._room = threading.Semaphore(max(1, max_queued >> 16))
        self._stop = threading.Event()
        self._dead = False  # set by the worker once no candidate is left (feeding may stop)
        self._original_size = 0  # every original byte fed, even after the worker gave up
        self._error: BaseException | None = None
        self._result: ProbeResult | None = None
        self._thread = threading.Thread(target=self._run, name="chunkstore-probe", daemon=True)
        self._thread.start()

    # -- feeding (the reader's thread) -------------------------------------------------------

    def original(self, data: bytes) -> None:
        """Compressed bytes of the blob, as read, in order."""
        self._original_size += len(data)
        self._put(True, data)

    def plain(self, data: bytes) -> None:
        """Decompressed bytes, as produced, in order."""
        self._put(False, data)

    def _put(self, is_original: bool, data: bytes) -> None:
        if self._dead or not data:
            return
        # One permit per started 64 KiB: back-pressure by bytes, not by item count.
        permits = max(1, (len(data) + 0xFFFF) >> 16)
        for _ in range(permits):
            while not self._room.acquire(timeout=0.1):
                if self._stop.is_set() or self._dead:
                    return
        self._queue.put((is_original, bytes(data)))

    def result(self) -> ProbeResult:
        """Wait for the worker and return what it found (the feeding must be complete)."""
        self._queue.put((True, _END))
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        if self._result.original_size != self._original_size:
            return ProbeResult(None, self._result.tried, self._original_size)
        return self._result

    def __enter__(self) -> ReproductionProbe:
        """Use as a context manager."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the worker if :meth:`result` was not called."""
        if self._thread.is_alive():
            self._stop.set()
            self._queue.put((True, _END))
            self._thread.join()

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._result = self._work()
        except BaseException as exc:  # handed to result()
            self._error = exc
        finally:
            self._dead = True

    def _release(self, data: bytes) -> None:
        for _ in range(max(1, (len(data) + 0xFFFF) >> 16)):
            self._room.release()

    def _work(self) -> ProbeResult:
        original = bytearray()
        base = 0  # offset in the blob of original[0]
        received = 0
        live: list[_Live] | None = None
        tried = 0
        header = b""  # the gzip member header kept in the record (empty for zstd)
        # The plain bytes so far, kept while several candidates live (at most _PREFIX_LIMIT), so
        # that a lone survivor with a faster encoder can restart on it; None once past that.
        prefix: bytearray | None = bytearray()

        def start() -> list[_Live]:
            nonlocal tried, header
            head = bytes(original[: 1 << 16])
            cands = (
                self._fixed
                if self._fixed is not None
                else catalog.candidates(self._compression, head)
            )
            tried = len(cands)
            header = catalog.header_of(self._compression, head)
            return [
                _Live(c, catalog.BlobEncoder(self._compression, c.open(), header)) for c in cands
            ]

        def check(item: _Live, out: bytes) -> bool:
            """Compare ``out`` (and what was pending) with the original; False on a mismatch."""
            if out:
                item.pending += out
            n = min(len(item.pending), received - item.pos)
            if n > 0:
                at = item.pos - base
                if original[at : at + n] != item.pending[:n]:
                    return False
                del item.pending[:n]
                item.pos += n
            return True

        def go_fast(item: _Live, plain: bytearray) -> _Live:
            """The survivor's faster encoder, restarted on ``plain`` (the whole input so far)."""
            assert item.candidate.open_fast is not None and base == 0
            fast = _Live(
                item.candidate,
                catalog.BlobEncoder(self._compression, item.candidate.open_fast(), header),
            )
            return fast if check(fast, fast.encoder.compress(memoryview(plain))) else item

        while True:
            is_original, data = self._queue.get()
            if not data or self._stop.is_set():  # the end marker, or stopped
                break
            self._release(data)
            if live is not None and not live:
                continue  # every candidate failed: drain and ignore
            if is_original:
                original += data
                received += len(data)
                if live is not None:
                    live = [item for item in live if check(item, b"")]
            else:
                if live is None:
                    live = start()
                if prefix is not None:
                    prefix += data
                    if len(prefix) > _PREFIX_LIMIT:
                        prefix = None
                # While several candidates live, feed them small pieces: most wrong ones differ
                # within their first block, and stop costing anything there.
                view = memoryview(data)
                at = 0
                while at < len(data) and live:
                    step = _CONVERGE_STEP if len(live) > 1 else len(data) - at
                    piece = view[at : at + step]
                    at += len(piece)
                    live = [item for item in live if check(item, item.encoder.compress(piece))]
                    if len(live) == 1 and prefix is not None:
                        if live[0].candidate.open_fast is not None:
                            done = len(prefix) - (len(data) - at)  # plain bytes fed so far
                            live = [go_fast(live[0], prefix[:done])]
                        prefix = None
            if live and prefix is None:
                low = min(item.pos for item in live)
                if low - base > 1 << 20:
                    del original[: low - base]
                    base = low
            elif live is not None and not live:
                self._dead = True
                original.clear()
        if self._stop.is_set():
            return ProbeResult(None, tried, received)
        if live is None:  # no plain bytes at all: start now, on an empty input
            live = start()
        found = [
            item
            for item in live
            if check(item, item.encoder.finish()) and not item.pending and item.pos == received
        ]
        if not found:
            return ProbeResult(None, tried, received)
        best = found[0].candidate
        return ProbeResult(Reproduce(best.family, dict(best.params), header), tried, received)
