"""Counters of a mount's work, written as JSON by ``chunkstore mount --stats FILE`` on exit.

Every counter is a plain integer updated under one lock (reads, fetch threads and the prefetcher
update them concurrently). ``bytes_fetched`` counts stored (compressed, sealed) bytes asked of the
repository for chunks, ``plain_bytes_fetched`` the verified plaintext they decoded to,
``requests`` the ranged reads issued (one per coalesced group of neighbouring chunks in a pack),
``bytes_served`` what FUSE ``read`` calls returned, ``index_resyncs`` how often a blob missing
from the index or its pack made the mount re-read the repository's index files.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields

__all__ = ["MountStats"]


@dataclass(slots=True)
class MountStats:
    """Counters of one mount (thread-safe through :meth:`add`)."""

    bytes_fetched: int = 0
    plain_bytes_fetched: int = 0
    requests: int = 0
    chunks_fetched: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    memory_hits: int = 0
    cache_evictions: int = 0
    cache_corrupt: int = 0
    fetch_errors: int = 0
    fetch_timeouts: int = 0
    prefetched_chunks: int = 0
    reads: int = 0
    bytes_served: int = 0
    read_errors: int = 0
    trees_loaded: int = 0
    index_resyncs: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Add to counters by name (unknown names raise ``AttributeError``)."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def to_json(self) -> dict[str, int]:
        """The counters as a JSON-ready mapping."""
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_lock"}
