"""Streams: chunk -> blobs -> chunk lists and back; dedup, list splitting, size checks."""

from __future__ import annotations

import io
import math
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkstore import streams as streams_module
from chunkstore.backends.base import FileType
from chunkstore.blob import BlobType
from chunkstore.chunker import Chunker
from chunkstore.errors import CorruptMetadata
from chunkstore.repository import Repository
from chunkstore.streams import iter_stream, read_chunk_lists, store_stream
from index.chunklist import ChunkRef, StreamBody, decode_chunk_list, encode_chunk_list
from tests.helpers import SMALL_CHUNKS, new_repo


def data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    r = new_repo(tmp_path)
    yield r
    r.close()


def restore(repo: Repository, body: StreamBody) -> bytes:
    return b"".join(iter_stream(repo, body))


@settings(max_examples=40)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=3000),
            st.integers(0, 255).map(lambda b: bytes([b]) * 5000),  # compressible runs
        ),
        max_size=6,
    ).map(b"".join)
)
def test_round_trip_small_streams(payload: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp, new_repo(Path(tmp)) as repo:
        body, stats = store_stream(repo, io.BytesIO(payload))
        assert body.size == stats.bytes_in == len(payload)
        assert (stats.chunks == 0) is (payload == b"")
        chunks = list(iter_stream(repo, body))
        assert b"".join(chunks) == payload
        assert all(0 < len(c) <= SMALL_CHUNKS.max_size for c in chunks)
        # Also after a flush, through a fresh cache.
        repo.flush()
        with Repository.open(repo.backend, cache_dir=Path(tmp) / "again") as again:
            assert restore(again, body) == payload


def test_empty_stream(repo: Repository) -> None:
    body, stats = store_stream(repo, io.BytesIO(b""))
    assert body == StreamBody(0, ())
    assert stats.chunks == stats.new_chunks == stats.bytes_in == 0
    assert list(iter_stream(repo, body)) == []


def test_large_stream_with_repeats_dedups(repo: Repository) -> None:
    blocks = [data(i, 64 * 1024) for i in range(8)]
    rng = random.Random(99)
    payload = b"".join(blocks[rng.randrange(8)] for _ in range(40)) + data(100, 12345)
    assert len(payload) > 2_500_000
    seen: list[int] = []
    body, stats = store_stream(repo, io.BytesIO(payload), workers=2, progress=seen.append)
    assert sum(seen) == len(payload) and len(seen) == stats.chunks
    assert stats.bytes_in == len(payload)
    # Each distinct block is stored about once: far less than the input is new.
    assert stats.new_bytes < len(payload) // 3
    assert stats.new_chunks < stats.chunks // 2
    assert 0 < stats.stored_bytes <= stats.new_bytes + 64 * stats.new_chunks
    repo.flush()
    assert restore(repo, body) == payload
    stored = sum(i.size for i in repo.backend.list(FileType.PACK))
    assert stored < len(payload) // 3


def test_second_store_is_fully_deduplicated(repo: Repository) -> None:
    payload = data(7, 300_000)
    body1, stats1 = store_stream(repo, io.BytesIO(payload))
    assert stats1.new_chunks == stats1.chunks > 20
    assert stats1.new_bytes == len(payload)
    repo.flush()
    packs = sorted(i.handle.name for i in repo.backend.list(FileType.PACK))
    body2, stats2 = store_stream(repo, io.BytesIO(payload))
    assert body2 == body1
    assert stats2.new_chunks == 0 and stats2.new_bytes == 0 and stats2.stored_bytes == 0
    assert stats2.chunks == stats1.chunks
    repo.flush()
    assert sorted(i.handle.name for i in repo.backend.list(FileType.PACK)) == packs
    # An edit in the middle only adds chunks near the edit.
    edited = payload[:150_000] + b"EDIT" + payload[150_000:]
    body3, stats3 = store_stream(repo, io.BytesIO(edited))
    assert 0 < stats3.new_chunks <= 4
    repo.flush()
    assert restore(repo, body3) == edited


def test_chunk_lists_split_at_max_entries(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = data(8, 200_000)
    n_chunks = sum(1 for _ in Chunker(SMALL_CHUNKS).chunk_bytes(payload))
    assert n_chunks > 20
    monkeypatch.setattr(streams_module, "MAX_ENTRIES", 7)
    body, stats = store_stream(repo, io.BytesIO(payload))
    assert stats.chunks == n_chunks
    assert len(body.lists) == math.ceil(n_chunks / 7)
    sizes = [len(decode_chunk_list(repo.load_blob(i))) for i in body.lists]
    assert sizes[:-1] == [7] * (len(sizes) - 1) and 1 <= sizes[-1] <= 7
    for list_id in body.lists:
        loc = repo.lookup(list_id)
        assert loc is not None and loc.entry.type is BlobType.META
    refs = list(read_chunk_lists(repo, body))
    assert sum(r.size for r in refs) == len(payload)
    assert restore(repo, body) == payload


def test_chunk_count_multiple_of_max_entries_has_no_empty_list(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    candidates = (data(seed, 120_000) for seed in range(9, 60))
    counted = ((p, sum(1 for _ in Chunker(SMALL_CHUNKS).chunk_bytes(p))) for p in candidates)
    payload, n_chunks, divisor = next(
        (p, n, d) for p, n in counted for d in range(3, n // 2 + 1) if n % d == 0
    )
    monkeypatch.setattr(streams_module, "MAX_ENTRIES", divisor)
    body, _ = store_stream(repo, io.BytesIO(payload))
    assert len(body.lists) == n_chunks // divisor
    assert all(len(decode_chunk_list(repo.load_blob(i))) == divisor for i in body.lists)
    assert restore(repo, body) == payload


def test_body_size_mismatch_is_detected(repo: Repository) -> None:
    payload = data(10, 50_000)
    body, _ = store_stream(repo, io.BytesIO(payload))
    for wrong in (len(payload) - 1, len(payload) + 1):
        with pytest.raises(CorruptMetadata, match=f"record says {wrong}"):
            restore(repo, StreamBody(wrong, body.lists))


def test_chunk_size_mismatch_in_list_is_detected(repo: Repository) -> None:
    payload = data(11, 50_000)
    body, _ = store_stream(repo, io.BytesIO(payload))
    refs = list(read_chunk_lists(repo, body))
    bad = [ChunkRef(refs[0].id, refs[0].size + 1), *refs[1:]]
    bad_list = repo.save_blob(BlobType.META, encode_chunk_list(bad)).id
    with pytest.raises(CorruptMetadata, match=f"list says {refs[0].size + 1}"):
        restore(repo, StreamBody(len(payload) + 1, (bad_list,)))


def test_chunk_list_that_does_not_decode_is_corrupt_metadata(repo: Repository) -> None:
    not_a_list = repo.save_blob(BlobType.META, b"\xa0").id  # an empty CBOR map
    with pytest.raises(CorruptMetadata, match=f"chunk list {not_a_list.short}"):
        restore(repo, StreamBody(0, (not_a_list,)))
