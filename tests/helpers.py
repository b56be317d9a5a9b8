"""Helpers shared by the tests: a small-chunk repository in memory or on disk.

One place says how a test repository is made (``new_repo``), instead of a copy per test module.
Small chunks (1, 4 and 16 KiB) make a few hundred kilobytes of test data cut into many chunks.
"""

from __future__ import annotations

from pathlib import Path

from chunkstore import api
from chunkstore.backends.base import Backend
from chunkstore.backends.memory import MemoryBackend
from chunkstore.chunker import ChunkerParams
from chunkstore.repository import Repository

__all__ = ["SMALL_CHUNKS", "SMALL_PACK_SIZE", "new_repo"]

#: Chunk sizes of test repositories: min 1 KiB, average 4 KiB, max 16 KiB.
SMALL_CHUNKS = ChunkerParams(1024, 4096, 16384)
#: Pack size of in-memory test repositories: a few chunks fill a pack.
SMALL_PACK_SIZE = 64 * 1024


def new_repo(tmp: Path, backend: Backend | None = None, *, on_disk: bool = False) -> Repository:
    """A fresh repository with :data:`SMALL_CHUNKS`.

    By default it lives in ``backend`` (a new :class:`MemoryBackend` when None) with its cache in
    ``tmp`` and packs of :data:`SMALL_PACK_SIZE`. With ``on_disk`` it is a local repository
    ``tmp/repo`` made by :func:`chunkstore.api.init_repository` (default pack size), its cache in
    ``tmp/cache``.
    """
    if on_disk:
        if backend is not None:
            raise ValueError("on_disk repositories make their own backend")
        return api.init_repository(tmp / "repo", cache_dir=tmp / "cache", chunker=SMALL_CHUNKS)
    return Repository.init(
        backend or MemoryBackend(), cache_dir=tmp, chunker=SMALL_CHUNKS, pack_size=SMALL_PACK_SIZE
    )
