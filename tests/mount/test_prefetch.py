"""Profiles: record what a run touched, replay it into a cold cache in few big reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chunkstore.blobcache import BlobCache
from chunkstore.errors import UsageError
from chunkstore.mount.fetch import Fetcher
from chunkstore.mount.prefetch import ProfileRecorder, read_profile, replay_profile
from chunkstore.mount.reader import ExtentReader
from tests.mount.conftest import ImageRepo


def test_record_then_prefetch_round_trip(image_repo: ImageRepo, tmp_path: Path) -> None:
    repo, gated = image_repo.open(tmp_path)
    profile = tmp_path / "profile.jsonl"
    node = image_repo.node(repo, "usr/lib/big.bin")
    recorder = ProfileRecorder(profile)
    fetcher = Fetcher(repo, on_touch=recorder.touch)
    reader = ExtentReader(fetcher, readahead=0)
    try:
        for off in (200_000, 0, 200_000, 150_000):
            reader.read(node, off, 20_000, key=1)
    finally:
        fetcher.close()
        recorder.close()
    lines = profile.read_text().splitlines()
    assert json.loads(lines[0]) == {"format": "chunkstore-profile", "version": 1}
    ids = read_profile(profile, "sha256")
    assert len(ids) == len(lines) - 1 == len(recorder)  # first touch only
    refs = image_repo.chunks(repo, "usr/lib/big.bin")
    first = reader.layout(node).extents.locate(200_000)
    assert ids[0] == refs[first].id  # in touch order
    assert read_profile(profile, "hmac-sha256") == []

    cache = BlobCache(tmp_path / "chunks", "sha256", repo.codec.blob_id, 1 << 30)
    cold = Fetcher(repo, cache)
    try:
        before = gated.pack_loads
        replay_profile(cold, ids).join(10)
        assert cold.wait_idle(10)
        assert all(i in cache for i in ids)
        assert gated.pack_loads - before == cold.stats.requests == 1  # one big coalesced read
        assert cold.stats.prefetched_chunks == len(ids)
        warm = ExtentReader(cold, readahead=0)
        assert (
            warm.read(node, 200_000, 20_000)
            == (image_repo.src / "usr/lib/big.bin").read_bytes()[200_000:220_000]
        )
        assert gated.pack_loads - before == 1
    finally:
        cold.close()
        repo.close()


def test_bad_profiles_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "p"
    p.write_text('{"format": "something-else"}\n')
    with pytest.raises(UsageError, match="not a chunkstore profile"):
        read_profile(p)
    p.write_text('{"format": "chunkstore-profile", "version": 9}\n')
    with pytest.raises(UsageError, match="version 9"):
        read_profile(p)
    p.write_text('{"format": "chunkstore-profile", "version": 1}\n{"id": "md5:00"}\n')
    with pytest.raises(UsageError, match="algorithm:hex"):
        read_profile(p)
    p.write_text("")
    with pytest.raises(UsageError):
        read_profile(p)
