"""The rebuilt-layer cache: bounded, least recently used out first, only verified blobs in."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from chunkstore.serve.cache import LayerCache


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _put(cache: LayerCache, data: bytes) -> str:
    digest = _digest(data)
    spool = cache.spool(digest, len(data))
    assert spool is not None
    spool.write(data)
    spool.commit()
    return digest


def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "c", max_bytes=3000)
    blobs = [bytes([i]) * 1000 for i in range(3)]
    digests = [_put(cache, b) for b in blobs]
    for i, d in enumerate(digests):  # distinct recency, oldest first (mtime, not sleeps)
        path = cache.directory / d.removeprefix("sha256:")
        os.utime(path, ns=(i * 10**9, i * 10**9))
    hit = cache.open(digests[0], 1000)  # the oldest is used again: now the newest
    assert hit is not None
    assert hit.read() == blobs[0]
    hit.close()
    _put(cache, b"\xff" * 1000)  # 4000 > 3000: evicted down to 2700, oldest first
    assert cache.open(digests[1], 1000) is None
    assert cache.open(digests[2], 1000) is None
    kept = cache.open(digests[0], 1000)
    assert kept is not None
    kept.close()


def test_unfinished_and_oversized_blobs_are_not_kept(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "c", max_bytes=100)
    assert cache.spool(_digest(b"x" * 101), 101) is None
    spool = cache.spool(_digest(b"y"), 1)
    assert spool is not None
    spool.write(b"y")
    spool.discard()
    assert cache.open(_digest(b"y"), 1) is None
    assert list(cache.directory.iterdir()) == []
    # A stray temporary file of a crashed run is removed when the cache is opened again.
    (cache.directory / ".tmp-0123").write_bytes(b"partial")
    LayerCache(tmp_path / "c", max_bytes=100)
    assert list(cache.directory.iterdir()) == []


def test_an_entry_of_the_wrong_size_is_a_miss_and_deleted(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "c", max_bytes=1000)
    digest = _put(cache, b"z" * 10)
    assert cache.open(digest, 11) is None
    assert not (cache.directory / digest.removeprefix("sha256:")).exists()
