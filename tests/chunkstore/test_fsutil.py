"""Atomic publication of local files (fsutil.atomic_file) and every writer that uses it: the file
is fsynced, renamed into place, and then its directory is fsynced (else a power cut can lose the
rename); a failure leaves neither the final name nor a temporary file."""

from __future__ import annotations

import json
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from chunkstore.cli import main
from chunkstore.fsutil import atomic_file, write_file_atomically
from chunkstore.images.docker_archive import write_docker_archive
from index.ids import sha256

Synced = list[tuple[bool, int]]


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> Iterator[Synced]:
    """Every fsync as (is a directory, inode), in order."""
    calls: Synced = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        st = os.fstat(fd)
        calls.append((stat.S_ISDIR(st.st_mode), st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    yield calls


def durable(path: Path, calls: Synced) -> bool:
    """``path`` was fsynced as a file, and its directory after it."""
    file_sync = (False, path.stat().st_ino)
    dir_sync = (True, path.parent.stat().st_ino)
    return file_sync in calls and dir_sync in calls[calls.index(file_sync) :]


def test_atomic_file_syncs_file_then_directory(tmp_path: Path, synced: Synced) -> None:
    target = tmp_path / "out.bin"
    write_file_atomically(target, b"payload")
    assert target.read_bytes() == b"payload"
    assert synced == [(False, target.stat().st_ino), (True, tmp_path.stat().st_ino)]
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_file_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half")
        raise RuntimeError("the writer failed")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target, tmp=tmp_path / "t.part") as f:
        f.write(b"new")
        raise RuntimeError("again")
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]


def test_get_output_is_durable(tmp_path: Path, synced: Synced) -> None:
    env = {"CHUNKSTORE_CACHE": str(tmp_path / "cache"), "CHUNKSTORE_PASSWORD": None}
    run = CliRunner()
    repo = ["--repo", str(tmp_path / "repo")]
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(50_000))
    assert run.invoke(main, [*repo, "init"], env=env).exit_code == 0
    assert run.invoke(main, [*repo, "put", "a", str(source)], env=env).exit_code == 0
    out = tmp_path / "outdir" / "a.bin"
    out.parent.mkdir()
    synced.clear()
    result = run.invoke(main, [*repo, "get", "a", "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == source.read_bytes()
    assert durable(out, synced)
    assert sorted(out.parent.iterdir()) == [out]


def test_docker_archive_target_is_durable(tmp_path: Path, synced: Synced) -> None:
    layer = b"\0" * (2 * tarfile.BLOCKSIZE)  # an empty tar
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [str(sha256(layer))]},
        }
    ).encode()
    path = tmp_path / "image.tar"
    write_docker_archive(path, config, [(sha256(layer), iter([layer]))], ["example.com/a:1"])
    assert durable(path, synced)
    assert sorted(tmp_path.iterdir()) == [path]


def test_mount_stats_file_is_durable(
    tmp_path: Path, synced: Synced, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chunkstore.mount import run as mount_run

    class Stats:
        def to_json(self) -> dict[str, int]:
            return {"requests": 3}

    def fake_mount_image(*args: Any, **kwargs: Any) -> Stats:
        return Stats()

    monkeypatch.setattr(mount_run, "mount_image", fake_mount_image)
    env = {"CHUNKSTORE_CACHE": str(tmp_path / "cache"), "CHUNKSTORE_PASSWORD": None}
    repo = ["--repo", str(tmp_path / "repo")]
    run = CliRunner()
    assert run.invoke(main, [*repo, "init"], env=env).exit_code == 0
    stats = tmp_path / "stats" / "s.json"
    stats.parent.mkdir()
    synced.clear()
    result = run.invoke(
        main, [*repo, "mount", "img", str(tmp_path / "mnt"), "--stats", str(stats)], env=env
    )
    assert result.exit_code == 0, result.output
    assert json.loads(stats.read_text()) == {"requests": 3}
    assert durable(stats, synced)
    assert sorted(stats.parent.iterdir()) == [stats]
