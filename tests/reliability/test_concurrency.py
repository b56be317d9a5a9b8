"""Concurrent writers and readers (reliability.md D1-D5), with real processes and the registry.

Writers (``put``) hold shared locks and run side by side; ``prune`` needs an exclusive lock. The
child processes here read their input from a pipe the test controls, so the test decides exactly
when a writer is in the middle of its work: while it runs, a prune must refuse; when it is stopped
(SIGSTOP) past its lock's time to live, it must abort before committing once resumed.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.backends.local import LocalBackend
from chunkstore.chunker import ChunkerParams
from chunkstore.errors import LockConflict
from chunkstore.lock import list_locks, remove_stale_locks
from chunkstore.repository import Repository
from chunkstore.streams import iter_stream
from index.chunklist import StreamBody
from tests.integration.registry_fixture import RunningRegistry

PARAMS = ChunkerParams(1024, 4096, 16384)
PACK_SIZE = 64 * 1024
SHARED = random.Random(21).randbytes(300_000)
X = SHARED + random.Random(22).randbytes(100_000)
Y = random.Random(23).randbytes(50_000) + SHARED

# A writer whose input arrives through stdin, with a lock of the given time to live.
_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from chunkstore.backends.local import LocalBackend
    from chunkstore.lock import acquire_lock
    from chunkstore.repository import Repository
    from chunkstore.streams import store_stream
    from index.record import Record
    import time

    root, cache, name, ttl = sys.argv[1:]
    repo = Repository.open(LocalBackend(root), cache_dir=Path(cache))
    with acquire_lock(repo.backend, exclusive=False, ttl_s=int(ttl)) as lock:
        repo.lock = lock
        print("locked", flush=True)
        body, _ = store_stream(repo, sys.stdin.buffer)
        repo.save_record(Record(name, time.time_ns(), "stream", body.to_cbor()))
    print("committed", flush=True)
    """
)


@pytest.fixture
def local(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    with Repository.init(
        LocalBackend(root), cache_dir=tmp_path / "c0", chunker=PARAMS, pack_size=PACK_SIZE
    ) as repo:
        api.put(repo, "base", io.BytesIO(SHARED[:100_000]))
    return root


def writer(root: Path, cache: Path, name: str, ttl: int = 1800) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), str(cache), name, str(ttl)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"locked\n", proc.stderr.read() if proc.stderr else b""
    return proc


def finish(proc: subprocess.Popen[bytes], rest: bytes) -> tuple[int, bytes, bytes]:
    out, err = proc.communicate(rest, timeout=120)
    return proc.returncode, out, err


def restore(repo: Repository, name: str) -> bytes:
    out = io.BytesIO()
    api.get(repo, name, out)
    return out.getvalue()


def names(repo: Repository) -> list[str]:
    return sorted(str(r["name"]) for r in api.list_records(repo))


# -- D1, D2: concurrent writers ----------------------------------------------------------------------


def test_d1_d2_two_writers_with_shared_data_and_the_same_name(local: Path, tmp_path: Path) -> None:
    one = writer(local, tmp_path / "c1", "same")
    two = writer(local, tmp_path / "c2", "same")
    assert one.stdin is not None and two.stdin is not None
    one.stdin.write(X[:200_000])  # both are in the middle of their work now
    two.stdin.write(Y[:200_000])
    results = [finish(one, X[200_000:]), finish(two, Y[200_000:])]
    for code, out, err in results:
        assert code == 0, err.decode()[-2000:]
        assert out.endswith(b"committed\n")
    with Repository.open(LocalBackend(local), cache_dir=tmp_path / "c3") as repo:
        assert names(repo) == ["base", "same", "same"]  # no lost update: both records kept
        assert contents_of(repo, "same") == {X, Y}
        report = api.check(repo, read_data=True)
        assert report.ok, report.errors
        assert report.warnings == []
        assert list_locks(repo.backend) == []


def contents_of(repo: Repository, name: str) -> set[bytes]:
    """The content of every record called ``name``."""
    out = set()
    for _rid, rec in repo.list_records():
        if rec.name == name:
            out.add(b"".join(iter_stream(repo, StreamBody.from_cbor(rec.body))))
    return out


def test_d1_two_writers_on_the_registry(registry: RunningRegistry, tmp_path: Path) -> None:
    name = f"reliability/concurrent{random.getrandbits(32):08x}"
    location = f"registry:{registry.host}/{name}"
    api.init_repository(
        location, cache_dir=tmp_path / "c0", chunker=PARAMS, pack_size=PACK_SIZE
    ).close()
    errors: list[BaseException] = []

    def put(record: str, data: bytes, cache: str) -> None:
        try:
            with api.open_repository(location, cache_dir=tmp_path / cache) as repo:
                api.put(repo, record, io.BytesIO(data))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=put, args=("x", X, "c1")),
        threading.Thread(target=put, args=("x", Y, "c2")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with api.open_repository(location, cache_dir=tmp_path / "c3") as repo:
        assert names(repo) == ["x", "x"]
        assert contents_of(repo, "x") == {X, Y}
        report = api.check(repo, read_data=True)
        assert report.ok, report.errors
        assert report.warnings == []


# -- D3, D5: prune while a writer runs ---------------------------------------------------------------


def test_d3_d5_prune_refuses_while_a_writer_runs_and_a_live_lock_is_not_stale(
    local: Path, tmp_path: Path
) -> None:
    proc = writer(local, tmp_path / "c1", "new")
    assert proc.stdin is not None
    proc.stdin.write(X[:250_000])
    proc.stdin.flush()
    time.sleep(0.3)  # some packs of the writer are stored, not yet indexed
    with Repository.open(LocalBackend(local), cache_dir=tmp_path / "c2") as repo:
        with pytest.raises(LockConflict):
            api.prune(repo)
        assert remove_stale_locks(repo.backend) == []  # a live lock is never removed
    code, _out, err = finish(proc, X[250_000:])
    assert code == 0, err.decode()[-2000:]
    with Repository.open(LocalBackend(local), cache_dir=tmp_path / "c3") as repo:
        assert restore(repo, "new") == X
        api.prune(repo)
        assert restore(repo, "new") == X and restore(repo, "base") == SHARED[:100_000]
        report = api.check(repo, read_data=True)
        assert report.ok and report.warnings == []


# -- D4: a writer stopped past its lock's time to live ---------------------------------------------


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_d4_writer_stopped_past_its_ttl_aborts_before_committing(
    local: Path, tmp_path: Path
) -> None:
    proc = writer(local, tmp_path / "c1", "late", ttl=2)
    assert proc.stdin is not None
    proc.stdin.write(X[:150_000])
    proc.stdin.flush()
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        time.sleep(3.0)  # past the 2 s time to live: the lock is stale for everyone else
        with Repository.open(LocalBackend(local), cache_dir=tmp_path / "c2") as repo:
            assert len(list_locks(repo.backend)) == 1
            # Another process may now prune; the stopped writer's packs are unindexed orphans.
            api.prune(repo)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    code, out, err = finish(proc, X[150_000:])
    assert code != 0
    assert b"committed" not in out
    assert b"lock" in err and b"was lost" in err
    with Repository.open(LocalBackend(local), cache_dir=tmp_path / "c3") as repo:
        assert names(repo) == ["base"]  # nothing committed after the lock was lost
        remove_stale_locks(repo.backend)
        report = api.check(repo, read_data=True)
        assert report.ok, report.errors
        assert restore(repo, "base") == SHARED[:100_000]
