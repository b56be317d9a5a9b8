"""Concurrent requests for one layer share one rebuild (no timing: the build is held at a gate)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore.errors import IntegrityError
from chunkstore.repository import Repository
from chunkstore.serve.builds import SharedBuilds
from chunkstore.serve.cache import LayerCache
from index.ids import sha256
from index.image import LayerEntry
from tests.helpers import new_repo

DATA = bytes(range(256)) * 8192  # 2 MiB


def _layer(data: bytes) -> LayerEntry:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return LayerEntry(
        digest, "application/x-test", len(data), digest, len(data), sha256(b"r"), "none"
    )


def test_followers_share_one_build_and_the_cache_serves_the_next(tmp_path: Path) -> None:
    gate = threading.Event()
    calls: list[int] = []

    def make(repo: Repository, layer: LayerEntry) -> Iterator[bytes]:
        calls.append(1)
        yield DATA[: 1 << 20]
        gate.wait()
        yield DATA[1 << 20 :]

    cache = LayerCache(tmp_path / "c", 1 << 30)
    with new_repo(tmp_path) as repo:
        builds = SharedBuilds(repo, cache, make)
        layer = _layer(DATA)
        first = builds.follow(layer)
        assert first is not None
        head = next(first)  # the build wrote its first piece and waits at the gate
        second = builds.follow(layer)  # so this one joins the running build
        assert second is not None
        gate.set()
        assert head + b"".join(first) == DATA
        assert b"".join(second) == DATA
        assert (builds.started, len(calls)) == (1, 1)
        third = builds.follow(layer)  # the build is over: its cache entry is read
        assert third is not None
        assert b"".join(third) == DATA
        assert (builds.started, len(calls)) == (1, 1)


def test_a_build_that_does_not_match_fails_every_follower_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    gate = threading.Event()

    def make(repo: Repository, layer: LayerEntry) -> Iterator[bytes]:
        yield DATA[: 1 << 20]
        gate.wait()
        yield b"\0" * (len(DATA) - (1 << 20))  # the right size, the wrong bytes

    cache = LayerCache(tmp_path / "c", 1 << 30)
    with new_repo(tmp_path) as repo:
        builds = SharedBuilds(repo, cache, make)
        layer = _layer(DATA)
        first = builds.follow(layer)
        assert first is not None
        next(first)
        second = builds.follow(layer)
        assert second is not None
        gate.set()
        for follower in (first, second):
            with pytest.raises(IntegrityError, match="hashing to"):
                b"".join(follower)
        assert cache.open(layer.digest, layer.size) is None
        assert list(cache.directory.iterdir()) == []
