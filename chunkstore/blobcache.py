"""A bounded, verified on-disk cache of plaintext blobs (mount chunks, registry metadata).

A mount reads the same chunks again and again (a program started twice, two tags sharing a base),
and a repository in a registry serves every tree, recipe and chunk list over the network, while a
registry round trip costs far more than a local file read; so verified plaintext blobs are kept on
disk::

    CACHE_DIR/v1/NAMESPACE/ab/abcdef0123...      one file per blob, named by its id in hex
    CACHE_DIR/v1/NAMESPACE/ab/.tmp-<random>       a put in progress (renamed into place)

``NAMESPACE`` is ``sha256`` for unencrypted repositories, whose blob ids are plain SHA-256 of the
plaintext: every such repository shares one namespace, so mounts of tags in different repositories
share chunks. Encrypted repositories name blobs with a keyed MAC; their entries live apart under
``hmac-sha256-<repo id prefix>`` (readable by the owner only, since entries are plaintext).

Rules that keep it safe:

* **Never trusted**: a hit is re-hashed with the repository's blob id function before it is
  returned; a mismatch (a flipped disk bit, a truncated file, an entry from another key) is a miss,
  and the file is deleted. Callers only :meth:`ChunkCache.put` bytes the codec has verified.
* **Atomic**: entries are written to a temporary file in the same directory, then renamed, so a
  crash leaves a whole entry or none (stray temporary files are removed at the next start).
* **Bounded**: the total size is kept under ``max_bytes`` by evicting the least recently used
  entries (down to 90% of the bound, so eviction runs in batches). Recency is tracked in memory and
  stored as the file's mtime (touched at most once a minute per entry), so a restarted mount
  rebuilds the LRU order from one directory scan. Several processes sharing the directory each
  enforce the bound over what they have seen; an entry another process evicted is simply a miss.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from index.ids import Digest

__all__ = ["CACHE_VERSION", "BlobCache", "CacheCounters", "Counters", "cache_namespace"]

#: Layout version: the first directory level, so a future layout never reads these files.
CACHE_VERSION = "v1"
_TOUCH_EVERY_NS = 60 * 1_000_000_000
_TMP = ".tmp-"

log = logging.getLogger(__name__)


class Counters(Protocol):
    """Where a cache reports what it did (``cache_corrupt``, ``cache_evictions``)."""

    def add(self, **counts: int) -> None:
        """Add to counters by name."""
        ...


@dataclass(slots=True)
class CacheCounters:
    """The counters a cache keeps when nobody else collects them (thread-safe ``add``)."""

    cache_corrupt: int = 0
    cache_evictions: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Add to counters by name."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


def cache_namespace(id_algorithm: str, repo_id: bytes) -> str:
    """The directory holding a repository's entries (shared by all unkeyed repositories)."""
    if id_algorithm == "sha256":
        return "sha256"
    return f"{id_algorithm}-{repo_id.hex()[:16]}"


class BlobCache:
    """Verified plaintext blobs on disk under a size bound, evicted least recently used first."""

    def __init__(
        self,
        root: Path,
        namespace: str,
        blob_id: Callable[[bytes], Digest],
        max_bytes: int,
        *,
        stats: Counters | None = None,
    ) -> None:
        """Open (creating) the cache under ``root``; ``blob_id`` names a plaintext blob."""
        self.dir = root / CACHE_VERSION / namespace
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._blob_id = blob_id
        self.max_bytes = max(0, max_bytes)
        self.stats: Counters = stats if stats is not None else CacheCounters()
        self._lock = threading.Lock()
        # blob hex -> (size, last use in ns); oldest first.
        self._entries: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._total = 0
        self._scan()

    @property
    def total_bytes(self) -> int:
        """Bytes held, as far as this process knows."""
        with self._lock:
            return self._total

    def __len__(self) -> int:
        """Entries held, as far as this process knows."""
        with self._lock:
            return len(self._entries)

    def __contains__(self, blob_id: object) -> bool:
        """Whether an entry is held (not verified; :meth:`get` verifies)."""
        if not isinstance(blob_id, Digest):
            return False
        with self._lock:
            return blob_id.hex in self._entries

    def _path(self, hex_id: str) -> Path:
        return self.dir / hex_id[:2] / hex_id

    def _scan(self) -> None:
        found: list[tuple[int, str, int]] = []
        with os.scandir(self.dir) as tops:
            for top in tops:
                if not top.is_dir(follow_symlinks=False) or len(top.name) != 2:
                    continue
                with os.scandir(top.path) as files:
                    for f in files:
                        if f.name.startswith(_TMP):
                            with contextlib.suppress(OSError):
                                os.unlink(f.path)
                            continue
                        try:
                            st = f.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        found.append((st.st_mtime_ns, f.name, st.st_size))
        found.sort()
        for mtime, name, size in found:
            self._entries[name] = (size, mtime)
            self._total += size
        self._evict()

    def get(self, blob_id: Digest) -> bytes | None:
        """The cached plaintext of ``blob_id`` (verified), or None."""
        hex_id = blob_id.hex
        path = self._path(hex_id)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            with self._lock:
                if (gone := self._entries.pop(hex_id, None)) is not None:
                    self._total -= gone[0]
            return None
        if self._blob_id(data) != blob_id:
            log.warning("cached blob %s is damaged; dropping it", blob_id.short)
            self._drop(hex_id)
            self.stats.add(cache_corrupt=1)
            return None
        now = time.time_ns()
        touch = False
        with self._lock:
            old = self._entries.get(hex_id)
            if old is None:
                # Written by another process since our scan: adopt it.
                self._entries[hex_id] = (len(data), now)
                self._total += len(data)
                touch = True
            else:
                self._entries[hex_id] = (old[0], now)
                self._entries.move_to_end(hex_id)
                touch = now - old[1] > _TOUCH_EVERY_NS
        if touch:
            with contextlib.suppress(OSError):
                os.utime(path, ns=(now, now))
        return data

    def put(self, blob_id: Digest, data: bytes) -> None:
        """Keep verified ``data`` of ``blob_id`` (best effort: a full disk only logs)."""
        if len(data) > self.max_bytes:
            return
        hex_id = blob_id.hex
        with self._lock:
            if hex_id in self._entries:
                return
        path = self._path(hex_id)
        tmp = path.parent / f"{_TMP}{secrets.token_hex(8)}"
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot cache blob %s: %s", blob_id.short, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return
        with self._lock:
            if hex_id not in self._entries:
                self._entries[hex_id] = (len(data), time.time_ns())
                self._total += len(data)
            self._evict()

    def _drop(self, hex_id: str) -> None:
        with self._lock:
            if (gone := self._entries.pop(hex_id, None)) is not None:
                self._total -= gone[0]
        with contextlib.suppress(OSError):
            os.unlink(self._path(hex_id))

    def _evict(self) -> None:
        """Remove least recently used entries until 90% of the bound (lock held)."""
        if self._total <= self.max_bytes:
            return
        target = self.max_bytes * 9 // 10
        evicted = 0
        while self._entries and self._total > target:
            hex_id, (size, _) = self._entries.popitem(last=False)
            self._total -= size
            evicted += 1
            with contextlib.suppress(OSError):
                os.unlink(self._path(hex_id))
        self.stats.add(cache_evictions=evicted)
