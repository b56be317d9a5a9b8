"""BlobCache: verified hits, corrupt entries are misses, LRU eviction, restarts."""

from __future__ import annotations

import os
import time
from pathlib import Path

from chunkstore.blobcache import CACHE_VERSION, BlobCache, cache_namespace
from chunkstore.hashing import BlobHasher
from index.ids import Digest

HASH = BlobHasher("sha256")


def blob(n: int, size: int = 1000) -> tuple[Digest, bytes]:
    data = n.to_bytes(4, "big") * (size // 4)
    return HASH(data), data


def test_put_get_and_layout(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, "sha256", HASH, 1 << 20)
    bid, data = blob(1)
    assert cache.get(bid) is None
    cache.put(bid, data)
    assert cache.get(bid) == data
    assert (tmp_path / CACHE_VERSION / "sha256" / bid.hex[:2] / bid.hex).read_bytes() == data
    assert bid in cache and len(cache) == 1 and cache.total_bytes == len(data)


def test_corrupt_entry_is_a_miss_and_is_deleted(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, "sha256", HASH, 1 << 20)
    bid, data = blob(2)
    cache.put(bid, data)
    path = cache.dir / bid.hex[:2] / bid.hex
    path.write_bytes(b"X" + data[1:])
    assert cache.get(bid) is None
    assert not path.exists() and bid not in cache
    assert cache.stats.cache_corrupt == 1
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data[:10])  # truncated by a crash of something else
    assert cache.get(bid) is None


def test_evicts_least_recently_used_within_bound(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, "sha256", HASH, 10_000)
    blobs = [blob(i) for i in range(9)]
    for bid, data in blobs:
        cache.put(bid, data)
    assert cache.get(blobs[0][0]) == blobs[0][1]  # now the most recently used
    for bid, data in (blob(100), blob(101), blob(102)):
        cache.put(bid, data)
    assert cache.total_bytes <= 10_000
    assert cache.stats.cache_evictions > 0
    assert blobs[0][0] in cache and blobs[1][0] not in cache
    on_disk = sum(f.stat().st_size for f in cache.dir.rglob("*") if f.is_file())
    assert on_disk == cache.total_bytes
    for bid, data in blobs:  # whatever survived is still correct
        got = cache.get(bid)
        assert got is None or got == data


def test_restart_rebuilds_order_and_drops_temporaries(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, "sha256", HASH, 1 << 20)
    old, new = blob(1), blob(2)
    cache.put(*old)
    cache.put(*new)
    past = time.time_ns() - 10**12
    os.utime(cache.dir / old[0].hex[:2] / old[0].hex, ns=(past, past))
    stray = cache.dir / new[0].hex[:2] / ".tmp-deadbeef"
    stray.write_bytes(b"partial")
    again = BlobCache(tmp_path, "sha256", HASH, 1500)  # room for one: the older one goes
    assert not stray.exists()
    assert old[0] not in again and again.get(new[0]) == new[1]


def test_oversized_blob_is_not_cached(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, "sha256", HASH, 100)
    bid, data = blob(3)
    cache.put(bid, data)
    assert bid not in cache and cache.get(bid) is None


def test_namespaces() -> None:
    assert cache_namespace("sha256", b"\x01" * 32) == "sha256"
    assert cache_namespace("hmac-sha256", b"\x01" * 32) == "hmac-sha256-" + "01" * 8
