"""ExtentReader: reads at any offset equal the source, sparse files, readahead."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from chunkstore.blob import BlobType
from chunkstore.errors import UsageError
from chunkstore.mount.fetch import Fetcher
from chunkstore.mount.reader import ExtentReader, file_size
from index.chunklist import ChunkRef
from index.tree import Node, NodeType, SparseMap
from tests.mount.conftest import ImageRepo


def test_random_reads_match_the_source(image_repo: ImageRepo, tmp_path: Path) -> None:
    repo, _ = image_repo.open(tmp_path)
    fetcher = Fetcher(repo)
    reader = ExtentReader(fetcher, readahead=0)
    rng = random.Random(5)
    try:
        for path in ("usr/lib/big.bin", "usr/share/text.txt", "etc/hello.txt"):
            node = image_repo.node(repo, path)
            want = (image_repo.src / path).read_bytes()
            assert reader.read(node, 0, len(want) + 100, key=path) == want
            for _ in range(50):
                off = rng.randrange(0, len(want) + 10)
                n = rng.randrange(0, 70_000)
                assert reader.read(node, off, n, key=path) == want[off : off + n]
        assert fetcher.stats.bytes_served > 0 and fetcher.stats.reads > 100
        with pytest.raises(UsageError):
            reader.read(image_repo.node(repo, "usr"), 0, 10)
    finally:
        fetcher.close()
        repo.close()


def test_sequential_reads_fetch_ahead(image_repo: ImageRepo, tmp_path: Path) -> None:
    repo, _ = image_repo.open(tmp_path)
    fetcher = Fetcher(repo)
    reader = ExtentReader(fetcher, readahead=16)
    try:
        node = image_repo.node(repo, "usr/lib/big.bin")
        refs = image_repo.chunks(repo, "usr/lib/big.bin")
        want = (image_repo.src / "usr/lib/big.bin").read_bytes()
        got = b"".join(reader.read(node, off, 8192, key=1) for off in range(0, 40_960, 8192))
        assert got == want[:40_960]
        assert fetcher.wait_idle(10)
        ahead = reader.layout(node, 1).extents.locate(40_959) + 4
        assert fetcher.cached(refs[ahead].id) is not None  # fetched before anyone asked
    finally:
        fetcher.close()
        repo.close()


def test_sparse_file_reads_zeros_in_holes(image_repo: ImageRepo, tmp_path: Path) -> None:
    repo, _ = image_repo.open(tmp_path)
    a, b = b"A" * 5000, b"B" * 3000
    ids = [repo.save_blob(BlobType.DATA, d).id for d in (a, b)]
    repo.flush()
    node = Node(
        name=b"sparse",
        type=NodeType.FILE,
        mode=0o644,
        uid=0,
        gid=0,
        mtime_ns=0,
        size=8000,
        chunks=(ChunkRef(ids[0], 5000), ChunkRef(ids[1], 3000)),
        sparse=SparseMap(100_000, ((10_000, 5000), (50_000, 3000))),
    )
    want = bytes(10_000) + a + bytes(35_000) + b + bytes(47_000)
    assert file_size(node) == 100_000
    fetcher = Fetcher(repo)
    reader = ExtentReader(fetcher)
    try:
        assert reader.read(node, 0, 200_000, key="s") == want
        for off, n in ((9_990, 20), (14_990, 40), (49_000, 5000), (99_990, 100), (0, 5)):
            assert reader.read(node, off, n, key="s") == want[off : off + n]
    finally:
        fetcher.close()
        repo.close()
