"""Crash points (C1-C4, C6): a real process killed with ``os._exit(137)`` at every commit step.

For each point of :data:`chunkstore.testing.crashpoints.CRASH_POINTS` a child process runs ``put``
or ``prune`` on a copy of one local repository, with ``CHUNKSTORE_CRASH_AT`` naming the point, and
dies there. The parent then does what the next process would: removes the dead process's stale
lock (without force), runs ``check`` (clean: orphans are warnings only), restores every record,
runs the interrupted command again, prunes, and expects ``check --read-data`` to be clean with no
warning and no temporary file left behind. The ``*-temp`` points die inside a save, with the pack's
``.tmp-`` file written: only the cleanup of the next ``prune`` removes it.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.backends.base import FileType
from chunkstore.backends.local import LocalBackend
from chunkstore.chunker import ChunkerParams
from chunkstore.errors import UsageError
from chunkstore.lock import list_locks, remove_stale_locks
from chunkstore.repository import Repository
from chunkstore.streams import store_stream
from chunkstore.testing.crashpoints import CRASH_POINTS, ENV_VAR, crash_point_from
from index.record import Record

PARAMS = ChunkerParams(1024, 4096, 16384)
PACK_SIZE = 64 * 1024
A = random.Random(11).randbytes(200_000)
B = random.Random(12).randbytes(200_000)
C = random.Random(13).randbytes(50_000)
NEW = A[:100_000] + random.Random(14).randbytes(150_000)


def _child_args(command: str, root: Path, cache: Path, source: Path) -> list[str]:
    """The real command line, killed by the CLI's own CHUNKSTORE_CRASH_AT hook."""
    base = [sys.executable, "-m", "chunkstore", "--repo", str(root), "--cache-dir", str(cache)]
    if command == "put":
        return [*base, "put", "new", str(source)]
    return [*base, "prune", "--repack-fraction", "0"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with records b and c live and a forgotten (prune deletes and repacks)."""
    root = tmp_path_factory.mktemp("crash-template")
    with Repository.init(
        LocalBackend(root / "repo"), cache_dir=root / "cache", chunker=PARAMS, pack_size=PACK_SIZE
    ) as repo:
        body_a, _ = store_stream(repo, io.BytesIO(A))
        body_b, _ = store_stream(repo, io.BytesIO(B))
        now = time.time_ns()
        repo.save_record(Record("a", now, "stream", body_a.to_cbor()))
        repo.save_record(Record("b", now + 1, "stream", body_b.to_cbor()))
        api.put(repo, "c", io.BytesIO(C))
        api.forget(repo, "a")
        plan = api.prune(repo, dry_run=True, repack_fraction=0.0)
        assert plan.packs_repacked >= 1 and plan.packs_deleted >= 2
    (root / "new.bin").write_bytes(NEW)
    return root


def restore(repo: Repository, name: str) -> bytes:
    out = io.BytesIO()
    api.get(repo, name, out)
    return out.getvalue()


def test_crash_point_names_are_checked() -> None:
    assert crash_point_from({}) is None
    assert crash_point_from({ENV_VAR: "index"}) is CRASH_POINTS["index"]
    with pytest.raises(UsageError, match="unknown crash point"):
        crash_point_from({ENV_VAR: "nowhere"})


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_killed_at_every_commit_step_recovers(point: str, template: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(template / "repo", root)
    before = {
        t: {i.handle for i in LocalBackend(root).list(t)}
        for t in (FileType.PACK, FileType.INDEX, FileType.RECORD)
    }
    command = CRASH_POINTS[point].command
    child = subprocess.run(
        _child_args(command, root, tmp_path / "c1", template / "new.bin"),
        capture_output=True,
        timeout=120,
        check=False,
        env={**_env(), ENV_VAR: point},
    )
    assert child.returncode == 137, child.stderr.decode()[-2000:]
    assert b"not killed" not in child.stdout

    backend = LocalBackend(root)
    after = {t: {i.handle for i in backend.list(t)} for t in before}
    temps = [p for p in root.rglob("*") if p.name.startswith(".tmp-")]
    if CRASH_POINTS[point].op == "temp":
        # Died inside the save: a whole pack in its temporary file, never published.
        assert [p.parent.parent.name for p in temps] == ["data"]
        assert temps[0].read_bytes()[-4:-1] == b"CSP"  # a whole pack, trailer included
        assert after[FileType.PACK] == before[FileType.PACK]
    else:
        assert temps == []
    if CRASH_POINTS[point].command == "put":
        assert after[FileType.RECORD] == before[FileType.RECORD]  # no record without its data
        if point in ("pack", "pack-2", "pack-temp", "index"):
            assert after[FileType.INDEX] == before[FileType.INDEX]
    # The dead writer's lock is stale (its pid is gone): removable without force.
    locks = list_locks(backend)
    assert len(locks) == 1
    assert [i.handle for i in remove_stale_locks(backend)] == [locks[0].handle]

    with Repository.open(backend, cache_dir=tmp_path / "c2") as repo:
        report = api.check(repo)
        assert report.ok, report.errors
        assert all("not in any index" in w for w in report.warnings)
        assert restore(repo, "b") == B and restore(repo, "c") == C
        if CRASH_POINTS[point].command == "put":
            api.put(repo, "new", io.BytesIO(NEW))
        api.prune(repo, repack_fraction=0.0)  # the interrupted prune, or the orphans' cleanup
        report = api.check(repo, read_data=True)
        assert report.ok, report.errors
        assert report.warnings == []
        assert restore(repo, "b") == B and restore(repo, "c") == C
        if CRASH_POINTS[point].command == "put":
            assert restore(repo, "new") == NEW
    assert not [p for p in root.rglob("*") if p.name.startswith(".tmp-")]  # C6


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != ENV_VAR}
