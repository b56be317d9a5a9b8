"""reach.walk: every reachable blob found, metadata read level by level in batches."""

from __future__ import annotations

from pathlib import Path

from chunkstore.backends.memory import MemoryBackend
from chunkstore.blob import BlobType, Location
from chunkstore.chunker import ChunkerParams
from chunkstore.reach import walk
from chunkstore.repository import Repository
from index import cbor
from index.ids import Digest


def test_walk_reads_each_level_in_one_batch_and_finds_everything(tmp_path: Path) -> None:
    repo = Repository.init(
        MemoryBackend(), cache_dir=tmp_path, chunker=ChunkerParams(1024, 4096, 16384)
    )
    chunks = [repo.save_blob(BlobType.DATA, f"chunk {i}".encode()).id for i in range(20)]
    leaves = [
        repo.save_blob(BlobType.META, cbor.encode({"c": chunks[i : i + 5], "n": i})).id
        for i in range(0, 20, 5)
    ]
    mid = [repo.save_blob(BlobType.META, cbor.encode({"l": leaves[i : i + 2]})).id for i in (0, 2)]
    repo.flush()
    singles: list[Location] = []
    batches: list[int] = []

    def one(loc: Location) -> bytes:
        singles.append(loc)
        return repo.load_at(loc)

    def many(locs: list[Location]) -> dict[Digest, bytes]:
        batches.append(len(locs))
        return repo.load_many(locs)

    reach = walk([("root", {"m": mid})], repo.locations, one, many)
    assert not reach.missing and not reach.damaged
    assert {i for t, i in reach.blobs if t is BlobType.DATA} == set(chunks)
    assert {i for t, i in reach.blobs if t is BlobType.META} == set(mid) | set(leaves)
    assert batches == [2, 4] and singles == []  # two levels of metadata, one read each
    # Without a batch loader the same blobs are found one read at a time.
    assert walk([("root", {"m": mid})], repo.locations, repo.load_at).blobs == reach.blobs
    repo.close()
