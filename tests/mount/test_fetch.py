"""Fetcher: coalesced, de-duplicated, verified fetches with a deadline; damage stays local."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from chunkstore.blob import BlobType, Location
from chunkstore.blobcache import BlobCache
from chunkstore.errors import IntegrityError, Transient
from chunkstore.mount.fetch import Fetcher, FetchPolicy
from index.ids import Digest
from tests.mount.conftest import ImageRepo, open_gated


def test_get_coalesces_and_caches(image_repo: ImageRepo, tmp_path: Path) -> None:
    repo, gated = image_repo.open(tmp_path)
    refs = image_repo.chunks(repo, "usr/lib/big.bin")
    assert len(refs) > 20
    cache = BlobCache(tmp_path / "chunks", "sha256", repo.codec.blob_id, 1 << 30)
    fetcher = Fetcher(repo, cache)
    try:
        before = gated.pack_loads
        got = fetcher.get([r.id for r in refs])
        assert (
            b"".join(got[r.id] for r in refs) == (image_repo.src / "usr/lib/big.bin").read_bytes()
        )
        # Neighbouring chunks travel in one coalesced read.
        assert gated.pack_loads - before == fetcher.stats.requests < len(refs) // 4
        assert fetcher.stats.chunks_fetched == len({r.id for r in refs})
        # A waiting read is answered before the disk cache is written: let the workers finish.
        assert fetcher.wait_idle(10)
        loads = gated.pack_loads
        again = Fetcher(repo, cache)  # a second mount sharing the cache
        assert again.get([r.id for r in refs]) == got
        assert gated.pack_loads == loads and again.stats.cache_hits == len(got)
        again.close()
    finally:
        fetcher.close()
        repo.close()


def test_a_fetch_consults_the_pack_index_once_per_blob(
    image_repo: ImageRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, gated = image_repo.open(tmp_path)
    refs = image_repo.chunks(repo, "usr/lib/big.bin")
    ids = list(dict.fromkeys(r.id for r in refs))
    consulted: Counter[Digest] = Counter()
    lookup = repo.index.lookup

    def counting(blob_id: Digest, type_: BlobType | None = None) -> Location | None:
        consulted[blob_id] += 1
        return lookup(blob_id, type_)

    monkeypatch.setattr(repo.index, "lookup", counting)
    # Spans small enough that the blobs travel in several planned reads.
    fetcher = Fetcher(repo, policy=FetchPolicy(max_span=64 << 10))
    try:
        before = gated.pack_loads
        got = fetcher.get(ids)
        assert set(got) == set(ids)
        assert consulted == Counter(ids)  # once each: the reads reuse the planner's locations
        assert 1 < gated.pack_loads - before == fetcher.stats.requests < len(ids)
    finally:
        fetcher.close()
        repo.close()


def test_in_flight_fetches_are_shared(image_repo: ImageRepo, tmp_path: Path) -> None:
    repo, gated = image_repo.open(tmp_path)
    refs = image_repo.chunks(repo, "usr/lib/big.bin")[:3]
    fetcher = Fetcher(repo)
    before = gated.pack_loads
    gated.gate.clear()
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(fetcher.get([r.id for r in refs])))
        for _ in range(4)
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        gated.gate.set()
        for t in threads:
            t.join(10)
        assert len(results) == 4 and all(r == results[0] for r in results)
        assert gated.pack_loads - before == 1
    finally:
        gated.gate.set()
        fetcher.close()
        repo.close()


def test_deadline_gives_an_error_in_time_and_a_later_read_recovers(
    image_repo: ImageRepo, tmp_path: Path
) -> None:
    repo, gated = image_repo.open(tmp_path)
    ref = image_repo.chunks(repo, "usr/lib/big.bin")[5]
    fetcher = Fetcher(repo, policy=FetchPolicy(deadline=0.5))
    gated.gate.clear()  # the backend hangs
    try:
        start = time.monotonic()
        with pytest.raises(Transient, match="deadline"):
            fetcher.get([ref.id])
        assert time.monotonic() - start < 2.0
        assert fetcher.stats.fetch_timeouts == 1
        gated.gate.set()  # the backend is back
        assert len(fetcher.get_one(ref.id)) == ref.size
    finally:
        gated.gate.set()
        fetcher.close()
        repo.close()


def test_corrupt_chunk_fails_alone_and_is_never_cached(
    image_repo: ImageRepo, tmp_path: Path
) -> None:
    shutil.copytree(image_repo.path, tmp_path / "repo")
    repo, _ = open_gated(tmp_path / "repo", tmp_path / "index-cache")
    refs = image_repo.chunks(repo, "usr/lib/big.bin")
    victim = refs[10]
    loc = repo.lookup(victim.id)
    assert loc is not None
    pack = tmp_path / "repo" / "data" / loc.pack_id.hex[:2] / loc.pack_id.hex
    raw = bytearray(pack.read_bytes())
    raw[loc.entry.offset + loc.entry.length // 2] ^= 0x55
    pack.write_bytes(bytes(raw))
    cache = BlobCache(tmp_path / "chunks", "sha256", repo.codec.blob_id, 1 << 30)
    fetcher = Fetcher(repo, cache)
    try:
        with pytest.raises(IntegrityError):
            fetcher.get([r.id for r in refs])
        assert victim.id not in cache
        others = [r.id for r in refs if r.id != victim.id]
        got = fetcher.get(others)  # every other chunk of the same read still loads
        assert len(got) == len(set(others))
        with pytest.raises(IntegrityError):  # and the damaged one fails again, not cached
            fetcher.get_one(victim.id)
    finally:
        fetcher.close()
        repo.close()
