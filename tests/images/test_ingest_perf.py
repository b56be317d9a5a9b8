"""Pipelined ingest: files share worker batches, yet everything is emitted in tar order."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
import threading
from pathlib import Path

import pytest

import chunkstore.images.ingest as ingest_mod
from chunkstore.images.ingest import ReadAhead, ingest_layer
from chunkstore.images.rebuild import rebuild_layer
from chunkstore.streams import ChunkStorer
from index.chunklist import ChunkRef
from tests.helpers import new_repo


def payloads(n: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        size = rnd.choice([0, 10, 700, 5000, 40_000, 300_000])
        out.append(rnd.randbytes(size) if i % 3 else bytes([i % 7]) * size)
    return out


def many_files_tar(files: list[bytes], dirs_after: int = 0) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, data in enumerate(files):
            info = tarfile.TarInfo(f"f/{i:05d}")
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        for i in range(dirs_after):
            info = tarfile.TarInfo(f"d/{i:05d}")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    return buf.getvalue()


def test_submit_matches_store_one_at_a_time(tmp_path: Path) -> None:
    data = payloads(60)
    seq_repo, pipe_repo = new_repo(tmp_path / "a"), new_repo(tmp_path / "b")
    seq: list[list[ChunkRef]] = []
    with ChunkStorer(seq_repo, workers=2) as storer:
        for d in data:
            refs: list[ChunkRef] = []
            assert storer.store(io.BytesIO(d), refs.append) == len(d)
            seq.append(refs)
        seq_stats = storer.stats
    with ChunkStorer(pipe_repo, workers=2) as storer:
        handles = [storer.submit(io.BytesIO(d)) for d in data]
        assert [h.size for h in handles] == [len(d) for d in data]
        storer.drain()
        assert all(h.done for h in handles)
        assert [h.refs for h in handles] == seq
        assert storer.stats == seq_stats


def test_inflight_batches_are_bounded(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    with ChunkStorer(repo, workers=1) as storer:
        for d in payloads(80, seed=2):
            storer.submit(io.BytesIO(d))
            assert len(storer._inflight) <= 3
        storer.drain()
        assert not storer._inflight


def test_wait_completes_a_handle_in_order(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    with ChunkStorer(repo, workers=2) as storer:
        first = storer.submit(io.BytesIO(b"a" * 5000))
        second = storer.submit(io.BytesIO(b"b" * 5000))
        empty = storer.submit(io.BytesIO(b""))
        assert empty.done and empty.refs == []
        storer.wait(first)
        assert first.done and sum(r.size for r in first.refs) == 5000
        storer.wait(second)
        assert second.done


@pytest.mark.parametrize("cap", [None, 3])
def test_pipelined_ingest_is_exact_and_ordered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cap: int | None
) -> None:
    if cap is not None:
        monkeypatch.setattr(ingest_mod, "MAX_QUEUED_OPS", cap)
    files = payloads(120, seed=3)
    tar = many_files_tar(files, dirs_after=50)
    repo = new_repo(tmp_path)
    with ChunkStorer(repo, workers=2) as storer:
        layer = ingest_layer(repo, io.BytesIO(tar), storer=storer)
    assert layer.diff_id.hex == hashlib.sha256(tar).hexdigest()
    assert layer.size == len(tar)
    names = [m.entry.name for m in layer.members]
    assert names == [f"f/{i:05d}".encode() for i in range(len(files))] + [
        f"d/{i:05d}/".encode() for i in range(50)
    ]
    assert b"".join(rebuild_layer(repo, layer.recipe)) == tar
    # The same layer again in a fresh repository gives the same recipe (deterministic).
    repo2 = new_repo(tmp_path / "again")
    with ChunkStorer(repo2, workers=1) as storer:
        assert ingest_layer(repo2, io.BytesIO(tar), storer=storer).recipe == layer.recipe


class Failing(io.RawIOBase):
    def __init__(self, data: bytes, fail_at: int) -> None:
        self._data, self._pos, self._fail_at = data, 0, fail_at

    def read(self, n: int = -1) -> bytes:
        if self._pos >= self._fail_at:
            raise OSError("disk on fire")
        n = len(self._data) if n < 0 else n
        out = self._data[self._pos : min(self._pos + n, self._fail_at)]
        self._pos += len(out)
        return out


def readahead_threads() -> int:
    return sum(t.name == "chunkstore-readahead" for t in threading.enumerate())


def test_read_errors_reach_the_caller_and_the_thread_stops(tmp_path: Path) -> None:
    tar = many_files_tar(payloads(40, seed=4))
    repo = new_repo(tmp_path)
    with ChunkStorer(repo, workers=2) as storer:
        with pytest.raises(OSError, match="disk on fire"):
            ingest_layer(repo, Failing(tar, len(tar) // 2), storer=storer)  # type: ignore[arg-type]
        assert readahead_threads() == 0
        # The storer is still usable after the failure.
        layer = ingest_layer(repo, io.BytesIO(tar), storer=storer)
    assert b"".join(rebuild_layer(repo, layer.recipe)) == tar


def test_readahead_hashes_everything() -> None:
    data = random.Random(5).randbytes(300_000)
    with ReadAhead(io.BytesIO(data), block=7000, depth=2) as r:
        got = bytearray()
        buf = bytearray(4096)
        while True:
            piece = r.read(513)
            n = r.readinto(buf)
            got += piece + buf[:n]
            if not piece and not n:
                break
        assert r.read() == b""
        assert bytes(got) == data and r.size == len(data)
        assert r.digest().hex == hashlib.sha256(data).hexdigest()


def test_readahead_stops_when_abandoned() -> None:
    with ReadAhead(io.BytesIO(bytes(10 << 20)), block=1 << 16, depth=1) as r:
        r.read(10)
        with pytest.raises(AssertionError):
            r.digest()
    assert readahead_threads() == 0
