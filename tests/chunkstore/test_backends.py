"""Backends: the contract suite for each backend, then local, hook and fault specifics."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkstore.backends import TEMP_FILE_AGE_S, BackendHooks, open_backend, remove_temp_files
from chunkstore.backends import local as local_module
from chunkstore.backends.base import Backend, FileInfo, FileType, Handle
from chunkstore.backends.local import LocalBackend
from chunkstore.backends.memory import MemoryBackend
from chunkstore.errors import BackendError, NotFound, ShortRead, Transient, UsageError
from chunkstore.testing.backend_suite import BackendContract, handle_for, payload
from chunkstore.testing.faults import FaultyBackend, SimulatedCrash

# -- the contract suite against every backend ----------------------------------------------------


class TestMemoryBackendContract(BackendContract):
    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        b = MemoryBackend()
        b.create()
        yield b
        b.close()


class TestLocalBackendContract(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[Backend]:
        b = LocalBackend(tmp_path / "repo")
        b.create()
        yield b
        b.close()
        assert b.stray_files() == []
        assert not list((tmp_path / "repo").rglob(".tmp-*")), "a save left a temporary file"


class TestFaultyBackendWithoutFaultsContract(BackendContract):
    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        b = FaultyBackend(MemoryBackend())
        b.create()
        yield b
        b.close()


# -- LocalBackend specifics ----------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> LocalBackend:
    b = LocalBackend(tmp_path / "repo")
    b.create()
    return b


def _temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".tmp-*"))


def test_local_layout(repo: LocalBackend) -> None:
    root = repo.root
    assert repo.location == str(root)
    for name in ("keys", "data", "index", "records", "locks"):
        assert (root / name).is_dir()
    assert sorted(p.name for p in (root / "data").iterdir()) == [f"{i:02x}" for i in range(256)]
    pack = Handle(FileType.PACK, "ab" + "0" * 62)
    index = handle_for(FileType.INDEX, "i")
    repo.save(pack, b"pack")
    repo.save(index, b"index")
    repo.save(Handle.config(), b"config")
    assert (root / "data" / "ab" / pack.name).read_bytes() == b"pack"
    assert (root / "index" / index.name).read_bytes() == b"index"
    assert (root / "config").read_bytes() == b"config"
    assert repo.path(pack) == root / "data" / "ab" / pack.name


def test_local_create_is_idempotent_and_keeps_files(repo: LocalBackend) -> None:
    h = handle_for(FileType.KEY, "k")
    repo.save(h, b"key")
    repo.create()
    assert repo.load(h) == b"key"


def test_local_temp_file_of_a_crashed_save_is_invisible(repo: LocalBackend) -> None:
    root = repo.root
    leftovers = [
        root / "index" / ".tmp-0123abcd",
        root / "data" / "00" / ".tmp-feedbeef",
        root / "data" / ".tmp-1",
        root / ".tmp-config",
    ]
    for path in leftovers:
        path.write_bytes(b"half-written")
    for file_type in FileType:
        assert list(repo.list(file_type)) == []
    assert repo.stray_files() == []


def test_local_cleanup_removes_only_stale_temp_files(repo: LocalBackend) -> None:
    root = repo.root
    old = [root / "index" / ".tmp-old", root / "data" / "7f" / ".tmp-old", root / ".tmp-old"]
    young = root / "locks" / ".tmp-young"
    for path in [*old, young]:
        path.write_bytes(b"x")
    hour_ago = time.time() - 3600
    for path in old:
        os.utime(path, (hour_ago, hour_ago))
    kept = handle_for(FileType.INDEX, "kept")
    repo.save(kept, b"real file")
    os.utime(repo.path(kept), (hour_ago, hour_ago))

    assert repo.cleanup_temp_files(600) == 3
    assert _temp_files(root) == [young]
    assert repo.load(kept) == b"real file"
    assert repo.cleanup_temp_files(600) == 0
    assert repo.cleanup_temp_files(0, now=time.time() + 10) == 1
    assert _temp_files(root) == []
    with pytest.raises(UsageError):
        repo.cleanup_temp_files(-1)


def test_remove_temp_files_under_an_exclusive_lock_spares_only_lock_attempts(
    repo: LocalBackend,
) -> None:
    root = repo.root
    fresh = [root / "data" / "7f" / ".tmp-pack", root / "index" / ".tmp-index"]
    lock_attempt = root / "locks" / ".tmp-lock"
    old_lock = root / "locks" / ".tmp-old-lock"
    for path in [*fresh, lock_attempt, old_lock]:
        path.write_bytes(b"x")
    long_ago = time.time() - TEMP_FILE_AGE_S - 60
    os.utime(old_lock, (long_ago, long_ago))
    wrapped = FaultyBackend(FaultyBackend(repo))
    # Without the lock (check), a save may be writing them: only the old one goes.
    assert remove_temp_files(wrapped, exclusive=False) == 1
    assert _temp_files(root) == sorted([*fresh, lock_attempt])
    # Under the exclusive lock (prune) no save runs; lock files are still being attempted.
    assert remove_temp_files(wrapped, exclusive=True) == 2
    assert _temp_files(root) == [lock_attempt]
    assert remove_temp_files(MemoryBackend(), exclusive=True) == 0


def test_temp_write_hook_runs_with_the_temp_file_complete(repo: LocalBackend) -> None:
    seen: list[tuple[Handle, bytes]] = []
    hooked = LocalBackend(
        repo.root, on_temp_written=lambda h, tmp: seen.append((h, tmp.read_bytes()))
    )
    h = handle_for(FileType.PACK, "hooked")
    hooked.save(h, b"whole content")
    assert seen == [(h, b"whole content")]
    assert _temp_files(repo.root) == []


def test_local_stray_files_are_skipped_and_reported(repo: LocalBackend) -> None:
    root = repo.root
    good_index = handle_for(FileType.INDEX, "good")
    good_pack = Handle(FileType.PACK, "cd" + "1" * 62)
    repo.save(good_index, b"index")
    repo.save(good_pack, b"pack")
    strays = [
        root / "index" / "not-a-hex-name",
        root / "index" / ("A" * 64),  # upper case
        root / "index" / ("a" * 63),  # too short
        root / "data" / "ab" / ("cd" + "2" * 62),  # pack in the wrong fan-out directory
        root / "data" / ("ab" + "3" * 62),  # pack outside any fan-out directory
        root / "data" / "zz",  # not a fan-out directory
        root / "keys" / ("e" * 64),  # a directory where a key file belongs
        root / "README",  # unknown entry in the root
    ]
    for path in strays:
        if path.name in ("zz", "e" * 64):
            path.mkdir()
        else:
            path.write_bytes(b"stray")
    assert list(repo.list(FileType.INDEX)) == [FileInfo(good_index, 5)]
    assert list(repo.list(FileType.PACK)) == [FileInfo(good_pack, 4)]
    assert list(repo.list(FileType.KEY)) == []
    assert repo.stray_files() == sorted(strays)


def test_local_config_directory_is_stray(repo: LocalBackend) -> None:
    (repo.root / "config").mkdir()
    assert list(repo.list(FileType.CONFIG)) == []
    assert repo.stray_files() == [repo.root / "config"]


def test_local_save_fsyncs_file_then_directory(
    repo: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[tuple[bool, int]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((stat.S_ISDIR(st.st_mode), st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    h = handle_for(FileType.PACK, "durable")
    repo.save(h, b"durable bytes")
    final = repo.path(h)
    assert synced == [(False, final.stat().st_ino), (True, final.parent.stat().st_ino)]

    synced.clear()
    repo.remove(h)
    assert synced == [(True, final.parent.stat().st_ino)]


def test_local_refused_save_leaves_no_temp_file(repo: LocalBackend) -> None:
    h = handle_for(FileType.INDEX, "refused")
    repo.save(h, b"one")
    with pytest.raises(UsageError) as info:
        repo.save(h, b"two")
    assert str(repo.path(h)) in str(info.value)
    assert repo.load(h) == b"one"
    assert _temp_files(repo.root) == []


def test_local_disk_full_is_backend_error(
    repo: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(local_module, "_write_all", full)
    h = handle_for(FileType.PACK, "full")
    with pytest.raises(BackendError) as info:
        repo.save(h, b"data")
    assert not isinstance(info.value, NotFound)
    message = str(info.value)
    assert "ENOSPC" in message
    assert os.strerror(errno.ENOSPC) in message
    assert str(repo.path(h).parent) in message
    assert "free some space" in message
    assert _temp_files(repo.root) == []
    assert not repo.path(h).exists()


def test_local_missing_file_is_not_found_naming_the_path(repo: LocalBackend) -> None:
    h = handle_for(FileType.RECORD, "absent")
    calls: list[Callable[[], object]] = [
        lambda: repo.load(h),
        lambda: repo.stat(h),
        lambda: repo.remove(h),
    ]
    for call in calls:
        with pytest.raises(NotFound) as info:
            call()
        assert str(repo.path(h)) in str(info.value)


def test_local_directory_in_place_of_file(repo: LocalBackend) -> None:
    h = handle_for(FileType.INDEX, "dir")
    path = repo.path(h)
    path.mkdir()
    calls: list[Callable[[], object]] = [
        lambda: repo.save(h, b"x"),
        lambda: repo.save(h, b"x", overwrite=True),
        lambda: repo.load(h),
        lambda: repo.stat(h),
        lambda: repo.exists(h),
        lambda: repo.remove(h),
    ]
    for call in calls:
        with pytest.raises(BackendError) as info:
            call()
        assert not isinstance(info.value, NotFound)
        assert str(path) in str(info.value)
    assert path.is_dir()
    assert list(repo.list(FileType.INDEX)) == []
    assert repo.stray_files() == [path]
    assert _temp_files(repo.root) == []


def test_local_file_in_place_of_directory(repo: LocalBackend) -> None:
    (repo.root / "records").rmdir()
    (repo.root / "records").write_bytes(b"oops")
    h = handle_for(FileType.RECORD, "r")
    with pytest.raises(BackendError) as info:
        repo.save(h, b"x")
    assert "ENOTDIR" in str(info.value)
    with pytest.raises(BackendError):
        list(repo.list(FileType.RECORD))
    assert repo.stray_files() == [repo.root / "records"]


def test_local_uncreated_repository(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "nothing-here")
    h = handle_for(FileType.INDEX, "i")
    with pytest.raises(BackendError) as info:
        b.save(h, b"x")
    assert not isinstance(info.value, NotFound)
    assert "chunkstore init" in str(info.value)
    with pytest.raises(BackendError) as info:
        list(b.list(FileType.INDEX))
    assert not isinstance(info.value, NotFound)
    assert list(b.list(FileType.CONFIG)) == []
    with pytest.raises(NotFound):
        b.load(h)


def test_local_missing_fan_out_directory_is_recreated(repo: LocalBackend) -> None:
    (repo.root / "data" / "ab").rmdir()
    assert list(repo.list(FileType.PACK)) == []
    h = Handle(FileType.PACK, "ab" + "9" * 62)
    repo.save(h, b"pack")
    assert list(repo.list(FileType.PACK)) == [FileInfo(h, 4)]


def test_local_without_hard_links(repo: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_link)
    h = handle_for(FileType.PACK, "vfat")
    repo.save(h, b"pack")
    repo.save(h, b"pack")
    with pytest.raises(UsageError):
        repo.save(h, b"other")
    assert repo.load(h) == b"pack"
    assert _temp_files(repo.root) == []


def test_local_truncated_file_is_short_read(repo: LocalBackend) -> None:
    h = handle_for(FileType.PACK, "truncated")
    repo.save(h, b"0123456789")
    os.truncate(repo.path(h), 4)
    with pytest.raises(ShortRead) as info:
        repo.load(h, 2, 8)
    message = str(info.value)
    assert str(h) in message
    assert "wanted 8" in message
    assert "only 2 available" in message


# -- open_backend's hooks -------------------------------------------------------------------------


def test_open_backend_composes_the_callers_hooks(tmp_path: Path) -> None:
    written: list[Handle] = []
    hooks = BackendHooks(wrap=FaultyBackend, on_temp_written=lambda h, _tmp: written.append(h))
    backend = open_backend(f"local:{tmp_path / 'repo'}", hooks=hooks)
    assert isinstance(backend, FaultyBackend)
    assert isinstance(backend.inner, LocalBackend)
    backend.create()
    h = handle_for(FileType.PACK, "p")
    backend.save(h, b"pack")
    assert written == [h]
    assert backend.calls("save") == [h]
    assert type(open_backend(tmp_path / "repo")) is LocalBackend


def test_a_temp_write_hook_is_refused_for_a_registry() -> None:
    hooks = BackendHooks(on_temp_written=lambda _h, _tmp: None)
    with pytest.raises(UsageError, match="no temporary files"):
        open_backend("registry:registry.example/repo", hooks=hooks)


# -- FaultyBackend -------------------------------------------------------------------------------


@pytest.fixture
def faulty() -> FaultyBackend:
    return FaultyBackend(MemoryBackend())


def test_flip_bit(faulty: FaultyBackend) -> None:
    h = handle_for(FileType.PACK, "p")
    other = handle_for(FileType.PACK, "q")
    data = payload("p", 100)
    faulty.save(h, data)
    faulty.save(other, data)
    faulty.flip_bit(h, 5, bit=3)
    loaded = faulty.load(h)
    assert loaded[5] == data[5] ^ 0x08
    assert loaded[:5] + loaded[6:] == data[:5] + data[6:]
    assert faulty.load(h, 3, 4) == data[3:5] + bytes([data[5] ^ 0x08]) + data[6:7]
    assert faulty.load(h, 6) == data[6:]
    assert faulty.load(h, 0, 5) == data[:5]
    assert faulty.load(other) == data
    assert faulty.inner.load(h) == data

    faulty.flip_bit(FileType.PACK, 0)
    assert faulty.load(other)[0] == data[0] ^ 0x01
    assert faulty.load(h)[0] == data[0] ^ 0x01
    faulty.clear()
    assert faulty.load(h) == data


def test_truncate(faulty: FaultyBackend) -> None:
    h = handle_for(FileType.PACK, "p")
    idx = handle_for(FileType.INDEX, "i")
    faulty.save(h, b"0123456789abcdef")
    faulty.save(idx, b"0123456789abcdef")
    faulty.truncate(FileType.PACK, 10)
    assert faulty.load(h) == b"0123456789"
    assert faulty.load(h, 4) == b"456789"
    assert faulty.load(h, 8, 2) == b"89"
    with pytest.raises(ShortRead):
        faulty.load(h, 8, 3)
    with pytest.raises(ShortRead):
        faulty.load(h, 11)
    assert faulty.stat(h).size == 10
    assert list(faulty.list(FileType.PACK)) == [FileInfo(h, 10)]
    assert faulty.load(idx) == b"0123456789abcdef"
    with pytest.raises(NotFound):
        faulty.load(handle_for(FileType.PACK, "missing"))


def test_fail_once_and_fail_times(faulty: FaultyBackend) -> None:
    h = handle_for(FileType.INDEX, "i")
    other = handle_for(FileType.INDEX, "j")
    faulty.fail_once("save")
    with pytest.raises(Transient):
        faulty.save(h, b"x")
    faulty.save(h, b"x")
    faulty.save(other, b"y")

    faulty.fail_times("load", 2, h)
    assert faulty.load(other) == b"y"
    for _ in range(2):
        with pytest.raises(Transient):
            faulty.load(h)
    assert faulty.load(h) == b"x"


def test_fail_always(faulty: FaultyBackend) -> None:
    faulty.fail_always("list", FileType.LOCK, error=BackendError)
    for _ in range(3):
        with pytest.raises(BackendError) as info:
            faulty.list(FileType.LOCK)
        assert not isinstance(info.value, Transient)
    assert list(faulty.list(FileType.INDEX)) == []
    faulty.fail_always("remove")
    with pytest.raises(Transient):
        faulty.remove(handle_for(FileType.LOCK, "l"))


def test_drop_writes(faulty: FaultyBackend) -> None:
    dropped = handle_for(FileType.INDEX, "dropped")
    kept = handle_for(FileType.PACK, "kept")
    faulty.drop_writes(FileType.INDEX)
    faulty.save(dropped, b"lost")
    faulty.save(kept, b"kept")
    assert not faulty.exists(dropped)
    assert faulty.inner.load(kept) == b"kept"
    assert faulty.calls("save") == [dropped, kept]


def test_crash_after_saves(faulty: FaultyBackend) -> None:
    first = handle_for(FileType.INDEX, "1")
    second = handle_for(FileType.INDEX, "2")
    pack = handle_for(FileType.PACK, "p")
    faulty.crash_after_saves(FileType.INDEX, 2)
    faulty.save(first, b"1")
    faulty.save(pack, b"p")
    with pytest.raises(SimulatedCrash):
        try:
            faulty.save(second, b"2")
        except Exception:  # code under test cannot swallow the crash
            pytest.fail("SimulatedCrash was caught as an Exception")
    assert faulty.crashed
    assert faulty.inner.exists(first)
    assert faulty.inner.exists(pack)
    assert not faulty.inner.exists(second)
    with pytest.raises(SimulatedCrash):
        faulty.remove(first)  # cleanup after the crash cannot reach the store
    assert faulty.inner.exists(first)
    faulty.close()  # a dead process releases nothing, and does not raise

    faulty.restart()
    faulty.save(second, b"2")
    assert faulty.inner.load(second) == b"2"


def test_crash_on_first_save(faulty: FaultyBackend) -> None:
    h = handle_for(FileType.RECORD, "r")
    faulty.crash_after_saves(FileType.RECORD, 1)
    with pytest.raises(SimulatedCrash):
        faulty.save(h, b"r")
    assert not faulty.inner.exists(h)


def test_log_records_every_call(faulty: FaultyBackend) -> None:
    h = handle_for(FileType.KEY, "k")
    faulty.create()
    faulty.save(h, b"k")
    faulty.exists(h)
    faulty.load(h)
    faulty.stat(h)
    list(faulty.list(FileType.KEY))
    faulty.remove(h)
    faulty.close()
    assert faulty.log == [
        ("create", None),
        ("save", h),
        ("exists", h),
        ("load", h),
        ("stat", h),
        ("list", FileType.KEY),
        ("remove", h),
        ("close", None),
    ]
    faulty.clear_log()
    assert faulty.log == []


def test_faulty_rejects_bad_settings(faulty: FaultyBackend) -> None:
    with pytest.raises(UsageError):
        faulty.fail_once("frobnicate")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        faulty.fail_times("save", 0)
    with pytest.raises(UsageError):
        faulty.crash_after_saves(FileType.PACK, 0)
    with pytest.raises(UsageError):
        faulty.flip_bit(None, 0, bit=8)
    with pytest.raises(UsageError):
        faulty.truncate(None, -1)


def test_exit_before_save_kills_the_process(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    script = textwrap.dedent(
        f"""
        from chunkstore.backends.base import FileType
        from chunkstore.backends.local import LocalBackend
        from chunkstore.testing.backend_suite import handle_for
        from chunkstore.testing.faults import FaultyBackend

        backend = FaultyBackend(LocalBackend({str(repo)!r}), exit_before_save_of=FileType.INDEX)
        backend.create()
        backend.save(handle_for(FileType.PACK, "p"), b"pack")
        backend.save(handle_for(FileType.INDEX, "i"), b"index")
        print("still alive")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 137, result.stderr
    assert "still alive" not in result.stdout
    after = LocalBackend(repo)
    assert [i.handle for i in after.list(FileType.PACK)] == [handle_for(FileType.PACK, "p")]
    assert list(after.list(FileType.INDEX)) == []
    assert after.stray_files() == []
