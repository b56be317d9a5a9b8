"""Repository locks: shared/exclusive conflicts, staleness, refresh, loss and cleanup."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkstore.backends.base import Backend, FileType, Handle
from chunkstore.backends.local import LocalBackend
from chunkstore.backends.memory import MemoryBackend
from chunkstore.errors import ChunkstoreError, LockConflict, Transient, UsageError
from chunkstore.lock import (
    DEFAULT_TTL_S,
    LockInfo,
    RepositoryLock,
    _default_pid_alive,
    acquire_lock,
    list_locks,
    remove_all_locks,
    remove_stale_locks,
)
from chunkstore.testing.faults import FaultyBackend
from index.cbor import decode_envelope, encode_envelope

S = 1_000_000_000
T0 = 1_700_000_000 * S
HOST = "here"
PID = 4242


class FakeClock:
    """A unix-ns clock that only moves when told to."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * S)


class FlakyBackend(FaultyBackend):
    """Saves raise ``Transient`` while ``fail_saves`` is set (no other faults)."""

    def __init__(self, inner: MemoryBackend) -> None:
        super().__init__(inner)
        self.fail_saves = False

    def save(self, handle: Handle, data: bytes, *, overwrite: bool = False) -> None:
        if self.fail_saves:
            raise Transient(f"injected failure saving {handle}")
        super().save(handle, data, overwrite=overwrite)


def _refresher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("chunkstore-lock-refresh")]


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert _refresher_threads() == []
    assert threading.active_count() == before


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend("memory:locktest")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _alive(pid: int) -> bool:
    return True


def _acquire(
    backend: Backend,
    clock: FakeClock,
    *,
    exclusive: bool,
    host: str = HOST,
    pid: int = PID,
    pid_alive: Callable[[int], bool] = _alive,
    **kwargs: Any,
) -> RepositoryLock:
    return acquire_lock(
        backend,
        exclusive=exclusive,
        clock=clock,
        host=host,
        pid=pid,
        pid_alive=pid_alive,
        **kwargs,
    )


def _write_lock(
    backend: Backend,
    *,
    host: str,
    pid: int,
    exclusive: bool,
    refreshed_ns: int,
    ttl_s: int = DEFAULT_TTL_S,
) -> Handle:
    """A lock file written by 'another process', bypassing acquire_lock."""
    handle = Handle(FileType.LOCK, secrets.token_hex(32))
    body = {
        "host": host,
        "pid": pid,
        "exclusive": exclusive,
        "created": refreshed_ns - 60 * S,
        "refreshed": refreshed_ns,
        "ttl": ttl_s,
    }
    backend.save(handle, encode_envelope("lock", 1, body))
    return handle


def _lock_names(backend: Backend) -> set[str]:
    return {f.handle.name for f in backend.list(FileType.LOCK)}


def _body(backend: Backend, handle: Handle) -> dict[str, object]:
    env = decode_envelope(backend.load(handle), kind="lock", versions=(1, 1), max_size=4096)
    assert isinstance(env.data, dict)
    return env.data


# --- file format ---------------------------------------------------------------------------------


def test_lock_file_is_an_unencrypted_lock_envelope(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    with _acquire(backend, clock, exclusive=True, ttl_s=600) as lock:
        assert lock.exclusive
        assert lock.handle.type is FileType.LOCK
        assert _body(backend, lock.handle) == {
            "host": HOST,
            "pid": PID,
            "exclusive": True,
            "created": T0,
            "refreshed": T0,
            "ttl": 600,
        }
        [info] = list_locks(backend)
        assert info == LockInfo(lock.handle, HOST, PID, True, T0, T0, 600)
        assert lock.info == info


def test_defaults_fill_in_host_pid_and_clock(backend: MemoryBackend) -> None:
    before = time.time_ns()
    with acquire_lock(backend, exclusive=False) as lock:
        info = lock.info
    assert info.pid == os.getpid()
    assert info.host  # socket.gethostname()
    assert before <= info.created_ns <= time.time_ns()
    assert info.ttl_s == DEFAULT_TTL_S


def test_lifecycle_on_a_local_directory(tmp_path: Path, clock: FakeClock) -> None:
    backend = LocalBackend(tmp_path / "repo")
    backend.create()
    with _acquire(backend, clock, exclusive=False, host="a") as first:
        with _acquire(backend, clock, exclusive=False, host="b"):
            with pytest.raises(LockConflict, match="shared lock of pid"):
                _acquire(backend, clock, exclusive=True, host="c")
        clock.advance(10)
        first.refresh()
        assert _body(backend, first.handle)["refreshed"] == T0 + 10 * S
        assert (tmp_path / "repo" / "locks" / first.handle.name).is_file()
    assert _lock_names(backend) == set()
    _acquire(backend, clock, exclusive=True, host="c").release()


# --- conflicts -----------------------------------------------------------------------------------


def test_shared_locks_coexist(backend: MemoryBackend, clock: FakeClock) -> None:
    with (
        _acquire(backend, clock, exclusive=False, host="a", pid=1) as first,
        _acquire(backend, clock, exclusive=False, host="b", pid=2) as second,
    ):
        assert _lock_names(backend) == {first.handle.name, second.handle.name}
        assert {(i.host, i.exclusive) for i in list_locks(backend)} == {("a", False), ("b", False)}
    assert _lock_names(backend) == set()


@pytest.mark.parametrize(
    ("held_exclusive", "want_exclusive"), [(True, False), (False, True), (True, True)]
)
def test_exclusive_conflicts_with_everything(
    backend: MemoryBackend, clock: FakeClock, held_exclusive: bool, want_exclusive: bool
) -> None:
    with _acquire(backend, clock, exclusive=held_exclusive, host="builder", pid=77) as held:
        clock.advance(125)
        with pytest.raises(LockConflict) as err:
            _acquire(backend, clock, exclusive=want_exclusive, host="laptop", pid=5)
        message = str(err.value)
        held_kind = "exclusive" if held_exclusive else "shared"
        want_kind = "an exclusive" if want_exclusive else "a shared"
        assert f"cannot take {want_kind} lock on the repository at memory:locktest" in message
        assert f"{held_kind} lock of pid 77 on host 'builder'" in message
        assert "created 2m05s ago" in message
        assert held.handle.name[:12] in message
        assert "wait for it to finish" in message
        assert "run 'chunkstore unlock'" in message
        # The failed attempt took its own lock file away again.
        assert _lock_names(backend) == {held.handle.name}


def test_conflict_message_counts_further_holders(backend: MemoryBackend, clock: FakeClock) -> None:
    for pid in (1, 2, 3):
        _write_lock(backend, host="other", pid=pid, exclusive=False, refreshed_ns=clock())
    with pytest.raises(LockConflict, match=r"and 2 other lock\(s\)"):
        _acquire(backend, clock, exclusive=True)
    assert len(_lock_names(backend)) == 3


def test_same_process_cannot_upgrade_a_shared_lock(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    with _acquire(backend, clock, exclusive=False), pytest.raises(LockConflict):
        _acquire(backend, clock, exclusive=True)


# --- staleness -----------------------------------------------------------------------------------


def test_lock_past_its_ttl_is_stale_and_does_not_block(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    old = _write_lock(
        backend, host="elsewhere", pid=9, exclusive=True, refreshed_ns=clock(), ttl_s=60
    )
    clock.advance(60)
    with pytest.raises(LockConflict):  # exactly at the ttl it is still valid
        _acquire(backend, clock, exclusive=False)
    clock.advance(0.001)
    with _acquire(backend, clock, exclusive=True) as lock:
        # Acquisition ignores the stale lock but does not remove it.
        assert _lock_names(backend) == {old.name, lock.handle.name}


def test_dead_process_on_this_host_does_not_block(backend: MemoryBackend, clock: FakeClock) -> None:
    dead = _write_lock(backend, host=HOST, pid=999, exclusive=True, refreshed_ns=clock())

    def alive(pid: int) -> bool:
        return pid != 999

    with _acquire(backend, clock, exclusive=True, pid_alive=alive) as lock:
        assert _lock_names(backend) == {dead.name, lock.handle.name}


def test_pid_is_only_checked_for_this_host(backend: MemoryBackend, clock: FakeClock) -> None:
    _write_lock(backend, host="elsewhere", pid=999, exclusive=True, refreshed_ns=clock())
    with pytest.raises(LockConflict, match="pid 999 on host 'elsewhere'"):
        _acquire(backend, clock, exclusive=False, pid_alive=lambda pid: False)


def test_is_stale() -> None:
    info = LockInfo(Handle(FileType.LOCK, "a" * 64), "h", 7, False, T0, T0, 10)
    assert not info.is_stale(now_ns=T0 + 10 * S, this_host="h", pid_alive=_alive)
    assert info.is_stale(now_ns=T0 + 10 * S + 1, this_host="h", pid_alive=_alive)
    assert info.is_stale(now_ns=T0, this_host="h", pid_alive=lambda pid: False)
    assert not info.is_stale(now_ns=T0, this_host="other", pid_alive=lambda pid: False)


def test_remove_stale_locks_removes_only_stale_ones(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    expired = _write_lock(
        backend, host="elsewhere", pid=1, exclusive=False, refreshed_ns=clock() - 61 * S, ttl_s=60
    )
    dead_here = _write_lock(backend, host=HOST, pid=2, exclusive=True, refreshed_ns=clock())
    live_here = _write_lock(backend, host=HOST, pid=3, exclusive=False, refreshed_ns=clock())
    # Another host's lock is never judged by pid, even if that pid does not exist here.
    live_elsewhere = _write_lock(
        backend, host="elsewhere", pid=2, exclusive=True, refreshed_ns=clock() - 59 * S, ttl_s=60
    )

    removed = remove_stale_locks(backend, clock=clock, host=HOST, pid_alive=lambda pid: pid != 2)

    assert {i.handle for i in removed} == {expired, dead_here}
    assert _lock_names(backend) == {live_here.name, live_elsewhere.name}
    assert remove_stale_locks(backend, clock=clock, host=HOST, pid_alive=lambda p: p != 2) == []


def test_live_lock_on_another_host_is_never_removed(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    with _acquire(backend, clock, exclusive=True, host="server", pid=PID) as held:
        clock.advance(DEFAULT_TTL_S - 1)
        assert (
            remove_stale_locks(backend, clock=clock, host="laptop", pid_alive=lambda pid: False)
            == []
        )
        assert _lock_names(backend) == {held.handle.name}


# --- release -------------------------------------------------------------------------------------


def test_release_removes_the_file_and_is_idempotent(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    lock = _acquire(backend, clock, exclusive=True)
    assert _lock_names(backend) == {lock.handle.name}
    lock.release()
    assert _lock_names(backend) == set()
    lock.release()
    with pytest.raises(LockConflict, match="already released"):
        lock.check()
    with pytest.raises(LockConflict, match="already released"):
        lock.refresh()
    # Another process can now lock exclusively.
    _acquire(backend, clock, exclusive=True, host="other").release()


def test_release_tolerates_a_removed_file(backend: MemoryBackend, clock: FakeClock) -> None:
    lock = _acquire(backend, clock, exclusive=False)
    assert remove_all_locks(backend) == 1
    lock.release()


def test_context_manager_releases_on_error(backend: MemoryBackend, clock: FakeClock) -> None:
    with pytest.raises(RuntimeError), _acquire(backend, clock, exclusive=True):
        raise RuntimeError("boom")
    assert _lock_names(backend) == set()


# --- refresh and check ---------------------------------------------------------------------------


def test_refresh_updates_the_refreshed_time(backend: MemoryBackend, clock: FakeClock) -> None:
    with _acquire(backend, clock, exclusive=False, ttl_s=60) as lock:
        clock.advance(30)
        lock.refresh()
        body = _body(backend, lock.handle)
        assert body["created"] == T0
        assert body["refreshed"] == T0 + 30 * S
        assert lock.info.refreshed_ns == T0 + 30 * S
        # A refreshed lock stays valid for another ttl from the refresh.
        clock.advance(59)
        lock.check()


def test_check_raises_after_a_failed_refresh(clock: FakeClock) -> None:
    inner = MemoryBackend()
    flaky = FlakyBackend(inner)
    with _acquire(flaky, clock, exclusive=False) as lock:
        lock.check()
        flaky.fail_saves = True
        with pytest.raises(LockConflict, match="refreshing it failed") as err:
            lock.refresh()
        assert isinstance(err.value.__cause__, Transient)
        flaky.fail_saves = False
        with pytest.raises(LockConflict, match=r"was lost.*stopped before committing"):
            lock.check()
        # A lost lock stays lost: a later successful write would not undo a concurrent prune.
        with pytest.raises(LockConflict, match="was lost"):
            lock.refresh()
    assert _lock_names(inner) == set()


def test_check_raises_when_the_refresh_is_overdue(backend: MemoryBackend, clock: FakeClock) -> None:
    with _acquire(backend, clock, exclusive=True, ttl_s=60) as lock:
        clock.advance(60)
        lock.check()
        clock.advance(1)
        with pytest.raises(LockConflict, match="longer than its time to live of 60s"):
            lock.check()
        # Refreshing now is too late: others may already have ignored the lock.
        with pytest.raises(LockConflict, match="was lost"):
            lock.refresh()
        assert _body(backend, lock.handle)["refreshed"] == T0


def test_refresh_notices_a_removed_lock_file(backend: MemoryBackend, clock: FakeClock) -> None:
    with _acquire(backend, clock, exclusive=False) as lock:
        remove_all_locks(backend)
        with pytest.raises(LockConflict, match="removed by someone else"):
            lock.refresh()
        assert _lock_names(backend) == set()  # not silently re-created
        with pytest.raises(LockConflict, match="was lost"):
            lock.check()


def _wait_for(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_refresher_thread_refreshes_and_stops_on_release(backend: MemoryBackend) -> None:
    lock = acquire_lock(backend, exclusive=False, ttl_s=1, refresh_interval_s=0.01)
    [thread] = _refresher_threads()
    assert thread.daemon
    created = lock.info.created_ns
    _wait_for(lambda: _body(backend, lock.handle)["refreshed"] != created)
    lock.check()
    lock.release()
    assert not thread.is_alive()
    assert _lock_names(backend) == set()


def test_refresher_thread_stops_after_a_failure() -> None:
    flaky = FlakyBackend(MemoryBackend())
    lock = acquire_lock(flaky, exclusive=False, ttl_s=1, refresh_interval_s=0.01)
    [thread] = _refresher_threads()
    flaky.fail_saves = True
    thread.join(timeout=3)
    assert not thread.is_alive()
    with pytest.raises(LockConflict, match="refreshing it failed"):
        lock.check()
    lock.release()
    assert _lock_names(flaky) == set()


# --- unreadable lock files -----------------------------------------------------------------------


def test_corrupt_lock_file_conflicts_with_a_clear_message(
    backend: MemoryBackend, clock: FakeClock
) -> None:
    bad = Handle(FileType.LOCK, secrets.token_hex(32))
    backend.save(bad, b"not cbor at all")
    for exclusive in (False, True):
        with pytest.raises(LockConflict) as err:
            _acquire(backend, clock, exclusive=exclusive)
        message = str(err.value)
        assert f"lock file {bad} cannot be read" in message
        assert "make sure no other chunkstore process uses this repository" in message
        assert "'chunkstore unlock --remove-all'" in message
    assert _lock_names(backend) == {bad.name}

    reported: list[tuple[Handle, ChunkstoreError]] = []
    assert list_locks(backend, on_invalid=lambda h, e: reported.append((h, e))) == []
    assert [h for h, _ in reported] == [bad]
    assert remove_stale_locks(backend, clock=clock, host=HOST, pid_alive=_alive) == []
    assert remove_all_locks(backend) == 1
    _acquire(backend, clock, exclusive=True).release()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encode_envelope("lock", 2, {}), "upgrade chunkstore"),
        (encode_envelope("index", 1, {}), "expected a lock object"),
        (encode_envelope("lock", 1, {"host": "h"}), "does not have the fields of a lock"),
        (
            encode_envelope(
                "lock",
                1,
                {"host": "h", "pid": -1, "exclusive": True, "created": 0, "refreshed": 0, "ttl": 9},
            ),
            "invalid pid, time or ttl",
        ),
        (b"\x00" * 5000, "more than the 4096"),
    ],
)
def test_invalid_lock_files_are_reported(
    backend: MemoryBackend, clock: FakeClock, data: bytes, reason: str
) -> None:
    backend.save(Handle(FileType.LOCK, "b" * 64), data)
    with pytest.raises(LockConflict, match=reason):
        _acquire(backend, clock, exclusive=False)


# --- retrying ------------------------------------------------------------------------------------


def test_retry_waits_until_the_holder_releases(backend: MemoryBackend, clock: FakeClock) -> None:
    held = _acquire(backend, clock, exclusive=True, host="other")
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            held.release()

    with _acquire(backend, clock, exclusive=False, retry_for_s=60, sleep=sleep) as lock:
        assert _lock_names(backend) == {lock.handle.name}
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0
    assert 1.0 <= sleeps[1] <= 2.0


def test_retry_gives_up_after_retry_for_s(backend: MemoryBackend, clock: FakeClock) -> None:
    with _acquire(backend, clock, exclusive=False, host="other") as held:
        sleeps: list[float] = []
        with pytest.raises(LockConflict, match=r"gave up after retrying for 5s"):
            _acquire(backend, clock, exclusive=True, retry_for_s=5, sleep=sleeps.append)
        assert sum(sleeps) == pytest.approx(5)
        assert _lock_names(backend) == {held.handle.name}


# --- parameters and helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl_s": 0},
        {"ttl_s": 60, "refresh_interval_s": 60},
        {"refresh_interval_s": 0},
        {"retry_for_s": -1},
    ],
)
def test_invalid_parameters(
    backend: MemoryBackend, clock: FakeClock, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(UsageError):
        _acquire(backend, clock, exclusive=False, **kwargs)
    assert _lock_names(backend) == set()


@pytest.mark.skipif(sys.platform == "win32", reason="uses os.kill(pid, 0)")
def test_default_pid_alive() -> None:
    assert _default_pid_alive(os.getpid())
    assert not _default_pid_alive(0)
    assert not _default_pid_alive(-1)
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    assert not _default_pid_alive(child.pid)
