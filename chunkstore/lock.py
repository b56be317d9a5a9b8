"""Repository locks: who may write to a repository at the same time.

Locks follow restic's design (design doc §Locks). Operations that only *add* files to a repository
(backup, copy) take a **shared** lock and may run side by side; operations that *delete or rewrite*
files (``prune``, ``check --rebuild-index``) take an **exclusive** lock, which excludes every other
lock, shared or exclusive.

A lock is a small file ``locks/<64 random hex digits>`` holding the unencrypted envelope
``encode_envelope("lock", 1, {...})`` with the holder's host name and pid, whether the lock is
exclusive, when it was created and last refreshed (unix nanoseconds) and its time to live in
seconds. It holds nothing secret.

Backends offer no compare-and-swap, so acquisition is optimistic: write our own lock file first,
then list every lock file. If another lock conflicts with ours, remove ours again and either retry
(``retry_for_s``) or raise :class:`~chunkstore.errors.LockConflict`. Two processes racing may both
back off, but they can never both proceed. A lock file that does not decode conflicts with
everything: nobody can tell what it protects.

A lock is **stale**, and then neither conflicts nor is needed, when it was not refreshed within its
time to live, or when it belongs to a process on this host that no longer exists. Acquisition
ignores stale locks without removing them; :func:`remove_stale_locks` (``chunkstore unlock``)
removes them. (Two machines or containers with the same host name but separate pid namespaces
defeat the pid test, as in restic.)

While held, a :class:`RepositoryLock` is refreshed by a daemon thread every ``refresh_interval_s``
(rewriting the file with ``overwrite=True``). A refresh that fails, that finds the lock file gone,
or that comes later than the time to live means other processes may already consider the lock
stale; the lock is then *lost*, and :meth:`RepositoryLock.check` raises. Writers call ``check()``
right before committing an index or a record, so a lost lock cancels the operation instead of
racing a concurrent prune.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from chunkstore.backends.base import Backend, FileType, Handle
from chunkstore.errors import (
    ChunkstoreError,
    CorruptMetadata,
    LockConflict,
    NotFound,
    UnsupportedFormat,
    UsageError,
)
from index.cbor import decode_envelope, encode_envelope
from index.errors import FormatError, UnsupportedVersion

__all__ = [
    "DEFAULT_TTL_S",
    "LockInfo",
    "RepositoryLock",
    "acquire_lock",
    "list_locks",
    "remove_all_locks",
    "remove_stale_locks",
]

#: How long a lock stays valid without a refresh (restic uses 30 minutes as well).
DEFAULT_TTL_S = 1800

_KIND = "lock"
_VERSION = 1
_MAX_SIZE = 4096
_FIELDS = frozenset({"host", "pid", "exclusive", "created", "refreshed", "ttl"})
_NS_PER_S = 1_000_000_000
# Backoff between acquisition attempts: doubles from the first to the last value, with jitter so
# two processes that keep colliding drift apart.
_RETRY_FIRST_S = 1.0
_RETRY_MAX_S = 30.0
_UNLOCK_HINT = "wait for it to finish, or if that process is gone run 'chunkstore unlock'"
_REMOVE_ALL_HINT = (
    "make sure no other chunkstore process uses this repository, "
    "then run 'chunkstore unlock --remove-all'"
)

# Called with each lock file that cannot be read and the reason.
_OnInvalid = Callable[[Handle, ChunkstoreError], None]


def _default_pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host; unsure means yes."""
    if pid <= 0:
        return False  # never a real process; os.kill would signal a process group
    if sys.platform == "win32":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class LockInfo:
    """The contents of one lock file."""

    handle: Handle
    host: str
    pid: int
    exclusive: bool
    created_ns: int
    refreshed_ns: int
    ttl_s: int

    def is_stale(self, *, now_ns: int, this_host: str, pid_alive: Callable[[int], bool]) -> bool:
        """Not refreshed within its time to live, or held by a dead process on this host."""
        if self.refreshed_ns + self.ttl_s * _NS_PER_S < now_ns:
            return True
        return self.host == this_host and not pid_alive(self.pid)

    def describe(self, now_ns: int) -> str:
        """A one-line description for messages, e.g. ``exclusive lock of pid 7 on host 'a' ...``."""
        kind = "exclusive" if self.exclusive else "shared"
        return (
            f"{kind} lock of pid {self.pid} on host {self.host!r:.80}, created "
            f"{_age(now_ns - self.created_ns)} ago, refreshed {_age(now_ns - self.refreshed_ns)} "
            f"ago ({self.handle.type.value}/{self.handle.name[:12]})"
        )


def _age(ns: int) -> str:
    seconds = ns // _NS_PER_S
    if seconds < 0:
        return "0s (clock skew?)"
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 86400}d{seconds // 3600 % 24:02d}h"


def _encode(info: LockInfo) -> bytes:
    return encode_envelope(
        _KIND,
        _VERSION,
        {
            "host": info.host,
            "pid": info.pid,
            "exclusive": info.exclusive,
            "created": info.created_ns,
            "refreshed": info.refreshed_ns,
            "ttl": info.ttl_s,
        },
    )


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _decode(handle: Handle, data: bytes) -> LockInfo:
    """Decode a lock file; ``CorruptMetadata`` or ``UnsupportedFormat`` when it is not valid."""
    try:
        body = decode_envelope(
            data, kind=_KIND, versions=(_VERSION, _VERSION), max_size=_MAX_SIZE
        ).data
    except UnsupportedVersion as exc:
        raise UnsupportedFormat(f"lock file {handle}: {exc}") from exc
    except FormatError as exc:
        raise CorruptMetadata(f"lock file {handle} is not a valid lock: {exc}") from exc
    if not isinstance(body, dict) or set(body) != _FIELDS:
        raise CorruptMetadata(f"lock file {handle} does not have the fields of a lock")
    host, pid, exclusive = body["host"], body["pid"], body["exclusive"]
    created, refreshed, ttl = body["created"], body["refreshed"], body["ttl"]
    if not isinstance(host, str) or not isinstance(exclusive, bool):
        raise CorruptMetadata(f"lock file {handle} has a host or exclusive field of the wrong type")
    if not all(_is_uint(v) for v in (pid, created, refreshed, ttl)) or ttl == 0:
        raise CorruptMetadata(f"lock file {handle} has an invalid pid, time or ttl")
    return LockInfo(handle, host, pid, exclusive, created, refreshed, ttl)


def _read_locks(
    backend: Backend,
) -> tuple[list[LockInfo], list[tuple[Handle, ChunkstoreError]]]:
    """Every lock file: the valid ones (sorted by creation) and the unreadable ones."""
    valid: list[LockInfo] = []
    invalid: list[tuple[Handle, ChunkstoreError]] = []
    for file in backend.list(FileType.LOCK):
        if file.size > _MAX_SIZE:
            invalid.append(
                (
                    file.handle,
                    CorruptMetadata(
                        f"lock file {file.handle} is {file.size} bytes, "
                        f"more than the {_MAX_SIZE} a lock may have"
                    ),
                )
            )
            continue
        try:
            data = backend.load(file.handle)
        except NotFound:
            continue  # released between listing and loading
        try:
            valid.append(_decode(file.handle, data))
        except (CorruptMetadata, UnsupportedFormat) as exc:
            invalid.append((file.handle, exc))
    valid.sort(key=lambda info: (info.created_ns, info.handle))
    invalid.sort(key=lambda item: item[0])
    return valid, invalid


def _remove_if_present(backend: Backend, handle: Handle) -> bool:
    try:
        backend.remove(handle)
    except NotFound:
        return False
    return True


class RepositoryLock:
    """A held lock; refreshed in the background until :meth:`release` (or the ``with`` block ends).

    Obtain one from :func:`acquire_lock`. All methods are safe to call from any thread.
    """

    __slots__ = (
        "_backend",
        "_clock",
        "_info",
        "_interval_s",
        "_lost",
        "_mutex",
        "_released",
        "_stop",
        "_thread",
    )

    def __init__(
        self,
        backend: Backend,
        info: LockInfo,
        *,
        refresh_interval_s: float,
        clock: Callable[[], int],
    ) -> None:
        """Wrap an already written lock file; :func:`acquire_lock` calls this, then ``_start``."""
        self._backend = backend
        self._info = info
        self._interval_s = refresh_interval_s
        self._clock = clock
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._lost: str | None = None
        self._released = False
        self._thread = threading.Thread(
            target=self._run, name=f"chunkstore-lock-refresh-{info.handle.name[:8]}", daemon=True
        )

    def _start(self) -> None:
        self._thread.start()

    @property
    def handle(self) -> Handle:
        """The lock file."""
        return self._info.handle

    @property
    def exclusive(self) -> bool:
        """Whether this is an exclusive lock."""
        return self._info.exclusive

    @property
    def info(self) -> LockInfo:
        """The lock as last successfully written."""
        with self._mutex:
            return self._info

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.refresh()
            except Exception:
                return  # refresh() recorded why; check() reports it
            if self._stop.is_set():
                return

    def _describe_loss(self) -> str:
        return (
            f"the {'exclusive' if self._info.exclusive else 'shared'} lock {self._info.handle} "
            f"on {self._backend.location} was lost: {self._lost}; another process may now be "
            f"changing the repository, so this operation was stopped before committing anything; "
            f"run it again"
        )

    def _overdue_reason(self, now_ns: int) -> str | None:
        deadline = self._info.refreshed_ns + self._info.ttl_s * _NS_PER_S
        if now_ns <= deadline:
            return None
        return (
            f"it was last refreshed {_age(now_ns - self._info.refreshed_ns)} ago, longer than its "
            f"time to live of {self._info.ttl_s}s (was the machine suspended or the storage slow?)"
        )

    def refresh(self) -> None:
        """Rewrite the lock file with the current time; ``LockConflict`` if the lock is lost."""
        with self._mutex:
            if self._released:
                raise LockConflict(f"the lock {self._info.handle} was already released")
            if self._lost is not None:
                raise LockConflict(self._describe_loss())
            now = self._clock()
            overdue = self._overdue_reason(now)
            if overdue is not None:
                self._lost = overdue
                raise LockConflict(self._describe_loss())
            fresh = LockInfo(
                self._info.handle,
                self._info.host,
                self._info.pid,
                self._info.exclusive,
                self._info.created_ns,
                now,
                self._info.ttl_s,
            )
            try:
                present = self._backend.exists(fresh.handle)
                if present:
                    self._backend.save(fresh.handle, _encode(fresh), overwrite=True)
            except Exception as exc:
                self._lost = f"refreshing it failed ({type(exc).__name__}: {exc})"
                raise LockConflict(self._describe_loss()) from exc
            if not present:
                self._lost = (
                    "its file was removed by someone else (was 'chunkstore unlock' run, "
                    "or did another host consider it stale?)"
                )
                raise LockConflict(self._describe_loss())
            self._info = fresh

    def check(self) -> None:
        """Raise ``LockConflict`` unless the lock is still held and its refresh is not overdue."""
        with self._mutex:
            if self._released:
                raise LockConflict(f"the lock {self._info.handle} was already released")
            if self._lost is None:
                self._lost = self._overdue_reason(self._clock())
            if self._lost is not None:
                raise LockConflict(self._describe_loss())

    def release(self) -> None:
        """Stop refreshing and remove the lock file (a missing file is fine); idempotent."""
        with self._mutex:
            if self._released:
                return
            self._released = True  # no refresh writes the file after this point
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        _remove_if_present(self._backend, self._info.handle)

    def __enter__(self) -> RepositoryLock:
        """The lock itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release the lock; exceptions propagate."""
        self.release()

    def __repr__(self) -> str:
        """Kind and file, for debugging."""
        kind = "exclusive" if self._info.exclusive else "shared"
        return f"<RepositoryLock {kind} {self._info.handle}>"


def _conflict_message(
    backend: Backend,
    ours: LockInfo,
    holders: list[LockInfo],
    invalid: list[tuple[Handle, ChunkstoreError]],
    now_ns: int,
) -> str | None:
    wanted = "an exclusive" if ours.exclusive else "a shared"
    if holders:
        more = f" and {len(holders) - 1} other lock(s)" if len(holders) > 1 else ""
        return (
            f"cannot take {wanted} lock on the repository at {backend.location}: it is held "
            f"by the {holders[0].describe(now_ns)}{more}; {_UNLOCK_HINT} "
            f"(a lock not refreshed for its time to live, {holders[0].ttl_s}s, is ignored)"
        )
    if invalid:
        handle, error = invalid[0]
        more = f" and {len(invalid) - 1} other unreadable lock file(s)" if len(invalid) > 1 else ""
        return (
            f"cannot take {wanted} lock on the repository at {backend.location}: lock file "
            f"{handle}{more} cannot be read ({error}); {_REMOVE_ALL_HINT}"
        )
    return None


def _find_conflict(
    backend: Backend,
    ours: LockInfo,
    *,
    clock: Callable[[], int],
    pid_alive: Callable[[int], bool],
) -> str | None:
    valid, invalid = _read_locks(backend)
    now = clock()
    holders = [
        other
        for other in valid
        if other.handle != ours.handle
        and (ours.exclusive or other.exclusive)
        and not other.is_stale(now_ns=now, this_host=ours.host, pid_alive=pid_alive)
    ]
    invalid = [(h, e) for h, e in invalid if h != ours.handle]
    return _conflict_message(backend, ours, holders, invalid, now)


def acquire_lock(
    backend: Backend,
    *,
    exclusive: bool,
    ttl_s: int = DEFAULT_TTL_S,
    refresh_interval_s: float | None = None,
    clock: Callable[[], int] = time.time_ns,
    host: str | None = None,
    pid: int | None = None,
    pid_alive: Callable[[int], bool] = _default_pid_alive,
    retry_for_s: float = 0.0,
    sleep: Callable[[float], object] = time.sleep,
) -> RepositoryLock:
    """Take a shared or exclusive lock on the repository, refreshed until released.

    ``refresh_interval_s`` defaults to a sixth of ``ttl_s``. While another process holds a
    conflicting lock, retry with growing pauses for up to ``retry_for_s`` seconds, then raise
    ``LockConflict`` naming the holder. ``clock`` (unix ns), ``host``, ``pid``, ``pid_alive`` and
    ``sleep`` exist for tests.
    """
    if ttl_s <= 0:
        raise UsageError(f"a lock's time to live must be positive, not {ttl_s}s")
    interval = ttl_s / 6 if refresh_interval_s is None else refresh_interval_s
    if not 0 < interval < ttl_s:
        raise UsageError(
            f"the lock refresh interval ({interval}s) must be positive and shorter than the "
            f"time to live ({ttl_s}s)"
        )
    if retry_for_s < 0:
        raise UsageError(f"the lock retry time must not be negative, not {retry_for_s}s")
    host = socket.gethostname() if host is None else host
    pid = os.getpid() if pid is None else pid
    started = time.monotonic()
    slept = 0.0
    pause = _RETRY_FIRST_S
    while True:
        now = clock()
        ours = LockInfo(
            Handle(FileType.LOCK, secrets.token_hex(32)), host, pid, exclusive, now, now, ttl_s
        )
        backend.save(ours.handle, _encode(ours))
        try:
            conflict = _find_conflict(backend, ours, clock=clock, pid_alive=pid_alive)
        except BaseException:
            try:
                _remove_if_present(backend, ours.handle)
            except ChunkstoreError:
                pass  # report the original failure; a dead process's lock goes stale anyway
            raise
        if conflict is None:
            lock = RepositoryLock(backend, ours, refresh_interval_s=interval, clock=clock)
            lock._start()
            return lock
        _remove_if_present(backend, ours.handle)
        remaining = retry_for_s - max(slept, time.monotonic() - started)
        if remaining <= 0:
            if retry_for_s > 0:
                conflict += f" (gave up after retrying for {retry_for_s:g}s)"
            raise LockConflict(conflict)
        delay = min(pause * random.uniform(0.5, 1.0), remaining)
        sleep(delay)
        slept += delay
        pause = min(pause * 2, _RETRY_MAX_S)


def list_locks(backend: Backend, *, on_invalid: _OnInvalid | None = None) -> list[LockInfo]:
    """Every readable lock, oldest first. Unreadable lock files go to ``on_invalid``, if given."""
    valid, invalid = _read_locks(backend)
    if on_invalid is not None:
        for handle, error in invalid:
            on_invalid(handle, error)
    return valid


def remove_stale_locks(
    backend: Backend,
    *,
    clock: Callable[[], int] = time.time_ns,
    host: str | None = None,
    pid_alive: Callable[[int], bool] = _default_pid_alive,
    on_invalid: _OnInvalid | None = None,
) -> list[LockInfo]:
    """Remove the stale locks (see the module docstring) and return them; others stay.

    Unreadable lock files are kept (use :func:`remove_all_locks`) and passed to ``on_invalid``.
    """
    this_host = socket.gethostname() if host is None else host
    now = clock()
    removed: list[LockInfo] = []
    for info in list_locks(backend, on_invalid=on_invalid):
        if info.is_stale(now_ns=now, this_host=this_host, pid_alive=pid_alive):
            if _remove_if_present(backend, info.handle):
                removed.append(info)
    return removed


def remove_all_locks(backend: Backend) -> int:
    """Remove every lock file, readable or not, and return how many were removed.

    Only safe when no other chunkstore process uses the repository.
    """
    return sum(_remove_if_present(backend, file.handle) for file in backend.list(FileType.LOCK))
