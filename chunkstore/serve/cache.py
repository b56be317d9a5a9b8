"""A bounded on-disk cache of rebuilt layer blobs, so that a repeated pull runs at disk speed.

::

    DIR/sha256/<hex>            one finished, verified layer blob per file, named by its digest
    DIR/sha256/.tmp-<random>    a blob being rebuilt (renamed into place once verified)

Rules: an entry is put only after the blob hashed to its digest as it was rebuilt (the caller,
:func:`chunkstore.serve.blobs.layer_pieces`, commits it then), and it is **never trusted**: a hit
is hashed again while it is sent, and a mismatch deletes the entry and aborts the response. The
total size is kept under ``max_bytes`` by deleting the least recently used entries (recency is
the file's mtime, touched on every hit) down to 90% of the bound after each put; a blob larger
than the bound is not cached. Entries are plaintext layers, so the directories are made
owner-only (an encrypted repository's layers are readable by its owner only, as with the mount's
chunk cache). Stray temporary files are removed when the cache is opened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import IO

__all__ = ["LayerCache", "Spool"]

log = logging.getLogger(__name__)

_TMP = ".tmp-"


class Spool:
    """A blob being written into the cache; :meth:`commit` publishes it, :meth:`discard` drops it."""

    def __init__(self, cache: LayerCache, hex_id: str) -> None:
        """A new temporary file in ``cache`` for the blob named ``hex_id``."""
        self._cache = cache
        self._hex = hex_id
        self._tmp = cache.directory / f"{_TMP}{secrets.token_hex(8)}"
        self._file: IO[bytes] | None = open(self._tmp, "xb")  # closed by commit/discard

    @property
    def path(self) -> Path:
        """The temporary file (readers may follow it while it is written)."""
        return self._tmp

    def write(self, piece: bytes) -> None:
        """Append ``piece`` (flushed to the file, so that a reader of :attr:`path` sees it)."""
        if self._file is not None:
            self._file.write(piece)
            self._file.flush()

    def commit(self) -> None:
        """Publish the (verified) blob and keep the cache under its bound."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        os.replace(self._tmp, self._cache.directory / self._hex)
        self._cache.evict()

    def discard(self) -> None:
        """Drop an unfinished blob (nothing when it was committed)."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


class LayerCache:
    """Rebuilt layer blobs under ``root``, at most about ``max_bytes`` in all."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        """Open (or make) the cache; stray temporary files of a crashed run are removed."""
        self.directory = root / "sha256"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.mkdir(mode=0o700, exist_ok=True)
        for entry in os.scandir(self.directory):
            if entry.name.startswith(_TMP):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    @staticmethod
    def _hex(digest: str) -> str | None:
        algorithm, _, hex_id = digest.partition(":")
        return hex_id if algorithm == "sha256" else None

    def open(self, digest: str, size: int) -> IO[bytes] | None:
        """The cached blob ``digest`` for reading (its recency updated), or None on a miss.

        The caller must hash what it reads (:meth:`drop` the entry on a mismatch).
        """
        hex_id = self._hex(digest)
        if hex_id is None:
            return None
        path = self.directory / hex_id
        try:
            f = open(path, "rb")  # returned to the caller
        except FileNotFoundError:
            return None
        if os.fstat(f.fileno()).st_size != size:
            f.close()
            self.drop(digest)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return f

    def spool(self, digest: str, size: int) -> Spool | None:
        """A :class:`Spool` for the blob ``digest`` of ``size`` bytes, or None if it is not kept."""
        hex_id = self._hex(digest)
        if hex_id is None or size > self.max_bytes:
            return None
        return Spool(self, hex_id)

    def drop(self, digest: str) -> None:
        """Delete the entry of ``digest`` (a hit that did not verify)."""
        hex_id = self._hex(digest)
        if hex_id is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / hex_id).unlink()

    def evict(self) -> None:
        """Delete the least recently used entries until the cache is within its bound."""
        with self._lock:
            entries = []
            for entry in os.scandir(self.directory):
                if entry.name.startswith(_TMP):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    entries.append((st.st_mtime_ns, st.st_size, entry.path))
            total = sum(size for _, size, _ in entries)
            if total <= self.max_bytes:
                return
            target = self.max_bytes * 9 // 10
            for _, size, path in sorted(entries):
                if total <= target:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    log.info("layer cache: evicted %s (%d bytes)", os.path.basename(path), size)
                total -= size
