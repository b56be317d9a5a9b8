"""Fault injection: a backend wrapper that misbehaves on purpose, for reliability tests.

:class:`FaultyBackend` wraps any backend and, for chosen files, can

* flip one bit of loaded data (a silently corrupted disk block): :meth:`FaultyBackend.flip_bit`;
* make a file look shorter than it is (a truncated upload): :meth:`FaultyBackend.truncate`;
* fail the next N calls of an operation, or every call, with ``Transient`` (or another
  ``BackendError``): :meth:`FaultyBackend.fail_times`, :meth:`~FaultyBackend.fail_once`,
  :meth:`~FaultyBackend.fail_always`;
* drop writes, reporting success while storing nothing (a lying cache):
  :meth:`~FaultyBackend.drop_writes`;
* crash before the n-th save of a file type: :meth:`FaultyBackend.crash_after_saves` raises
  :class:`SimulatedCrash`, a ``BaseException`` so that ``except Exception`` in the code under test
  cannot swallow it. From then on the wrapper is "dead": every call raises ``SimulatedCrash`` again,
  so ``finally`` blocks and context managers cannot tidy the store as a killed process could not.
  Tests then inspect :attr:`FaultyBackend.inner` to see what a real crash would have left.

For a crash of the whole process, ``FaultyBackend(inner, exit_before_save_of=FileType.INDEX)``
calls ``os._exit(137)`` right before the first index save (run it in a subprocess).

A target is a :class:`Handle` (that file), a :class:`FileType` (every file of that type) or
``None`` (every file). Every call is recorded in :attr:`FaultyBackend.log` as ``(op, target)``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Literal, cast, get_args

from chunkstore.backends.base import Backend, FileInfo, FileType, Handle
from chunkstore.errors import BackendError, ShortRead, Transient, UsageError

__all__ = ["FaultyBackend", "LogEntry", "Op", "SimulatedCrash", "Target"]

Op = Literal["create", "exists", "save", "load", "stat", "list", "remove", "close"]
Target = Handle | FileType | None
LogEntry = tuple[Op, Handle | FileType | None]

_OPS: frozenset[str] = frozenset(get_args(Op))


class SimulatedCrash(BaseException):
    """The process "died"; a ``BaseException`` so that ``except Exception`` cannot catch it."""


class _Failure:
    """A rule: fail calls of ``op`` on ``target``, ``remaining`` more times (None: always)."""

    __slots__ = ("error", "op", "remaining", "target")

    def __init__(
        self, op: Op, target: Target, remaining: int | None, error: type[BackendError]
    ) -> None:
        self.op = op
        self.target = target
        self.remaining = remaining
        self.error = error


def _matches(target: Target, obj: Handle | FileType | None) -> bool:
    """Whether a rule's ``target`` covers ``obj`` (a handle, or a file type for ``list``)."""
    if target is None:
        return True
    if isinstance(target, Handle):
        return obj == target
    if isinstance(obj, Handle):
        return obj.type is target
    return obj is target


def _check_op(op: str) -> Op:
    """``op`` if it names a backend operation, else ``UsageError``."""
    if op not in _OPS:
        raise UsageError(f"unknown backend operation {op!r}; expected one of {sorted(_OPS)}")
    return cast(Op, op)


class FaultyBackend:
    """Wraps a backend and injects the faults configured on it; thread-safe."""

    __slots__ = (
        "_crash_countdown",
        "_dead",
        "_drops",
        "_exit_before_save_of",
        "_exit_code",
        "_failures",
        "_flips",
        "_inner",
        "_lock",
        "_log",
        "_truncations",
    )

    def __init__(
        self,
        inner: Backend,
        *,
        exit_before_save_of: FileType | None = None,
        exit_code: int = 137,
    ) -> None:
        """Wrap ``inner`` with no faults; optionally kill the process before a save of a type."""
        self._inner = inner
        self._exit_before_save_of = exit_before_save_of
        self._exit_code = exit_code
        self._lock = threading.Lock()
        self._log: list[LogEntry] = []
        self._flips: list[tuple[Target, int, int]] = []
        self._truncations: list[tuple[Target, int]] = []
        self._failures: list[_Failure] = []
        self._drops: list[Target] = []
        self._crash_countdown: dict[FileType, int] = {}
        self._dead = False

    # -- inspection --------------------------------------------------------------------------------

    @property
    def inner(self) -> Backend:
        """The wrapped backend, to inspect what was really stored."""
        return self._inner

    @property
    def location(self) -> str:
        """The wrapped backend's location."""
        return self._inner.location

    @property
    def log(self) -> list[LogEntry]:
        """A copy of the calls made so far, as ``(op, handle or file type or None)``."""
        with self._lock:
            return list(self._log)

    def calls(self, op: Op) -> list[Handle | FileType | None]:
        """The targets of the logged calls of ``op``, in order."""
        _check_op(op)
        return [target for logged_op, target in self.log if logged_op == op]

    def clear_log(self) -> None:
        """Forget the calls logged so far."""
        with self._lock:
            self._log.clear()

    @property
    def crashed(self) -> bool:
        """Whether a simulated crash has happened (and :meth:`restart` was not called since)."""
        with self._lock:
            return self._dead

    # -- configuring faults ------------------------------------------------------------------------

    def flip_bit(self, target: Target, offset: int, bit: int = 0) -> None:
        """Invert bit ``bit`` of the byte at file offset ``offset`` in every load that covers it."""
        if offset < 0 or not 0 <= bit < 8:
            raise UsageError(f"flip_bit needs offset >= 0 and 0 <= bit < 8, not {offset}, {bit}")
        with self._lock:
            self._flips.append((target, offset, bit))

    def truncate(self, target: Target, size: int) -> None:
        """Make matching files look at most ``size`` bytes long to load, stat and list."""
        if size < 0:
            raise UsageError(f"truncate needs size >= 0, not {size}")
        with self._lock:
            self._truncations.append((target, size))

    def fail_times(
        self,
        op: Op,
        n: int,
        target: Target = None,
        *,
        error: type[BackendError] = Transient,
    ) -> None:
        """Make the next ``n`` calls of ``op`` on ``target`` raise ``error`` (``Transient``)."""
        if n < 1:
            raise UsageError(f"fail_times needs n >= 1, not {n}")
        with self._lock:
            self._failures.append(_Failure(_check_op(op), target, n, error))

    def fail_once(
        self, op: Op, target: Target = None, *, error: type[BackendError] = Transient
    ) -> None:
        """Make the next call of ``op`` on ``target`` raise ``error`` (``Transient``)."""
        self.fail_times(op, 1, target, error=error)

    def fail_always(
        self, op: Op, target: Target = None, *, error: type[BackendError] = Transient
    ) -> None:
        """Make every call of ``op`` on ``target`` raise ``error`` (``Transient``)."""
        with self._lock:
            self._failures.append(_Failure(_check_op(op), target, None, error))

    def drop_writes(self, target: Target = None) -> None:
        """Make saves of ``target`` report success without storing anything."""
        with self._lock:
            self._drops.append(target)

    def crash_after_saves(self, file_type: FileType, n: int) -> None:
        """Raise :class:`SimulatedCrash` on the ``n``-th save of ``file_type`` from now, before it
        reaches the wrapped backend (so ``n - 1`` saves of that type complete).
        """
        if n < 1:
            raise UsageError(f"crash_after_saves needs n >= 1, not {n}")
        with self._lock:
            self._crash_countdown[file_type] = n

    def clear(self) -> None:
        """Remove every configured fault (the log and the crashed state stay)."""
        with self._lock:
            self._flips.clear()
            self._truncations.clear()
            self._failures.clear()
            self._drops.clear()
            self._crash_countdown.clear()

    def restart(self) -> None:
        """Come back to life after a simulated crash, as a new process would (faults stay)."""
        with self._lock:
            self._dead = False

    # -- the Backend protocol ----------------------------------------------------------------------

    def create(self) -> None:
        """Create the location (subject to ``create`` faults)."""
        self._enter("create", None)
        self._inner.create()

    def exists(self, handle: Handle) -> bool:
        """Whether the file exists (subject to ``exists`` faults)."""
        self._enter("exists", handle)
        return self._inner.exists(handle)

    def save(self, handle: Handle, data: bytes, *, overwrite: bool = False) -> None:
        """Save, unless a crash point, failure or dropped write intervenes."""
        self._enter("save", handle)
        with self._lock:
            dropped = any(_matches(t, handle) for t in self._drops)
        if not dropped:
            self._inner.save(handle, data, overwrite=overwrite)

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        """Load, as if matching files were truncated, then flip the configured bits."""
        self._enter("load", handle)
        if offset < 0 or (length is not None and length < 0):
            raise UsageError(f"cannot load {handle}: offset {offset}, length {length}")
        limit = self._limit(handle)
        if limit is None:
            data = self._inner.load(handle, offset, length)
        else:
            size = min(limit, self._inner.stat(handle).size)
            available = max(size - offset, 0)
            wanted = available if length is None else length
            if offset > size or wanted > available:
                raise ShortRead(
                    f"{handle} in {self.location} is too short (simulated truncation to {size} "
                    f"bytes): wanted {wanted} bytes at offset {offset}, only {available} available"
                )
            data = self._inner.load(handle, offset, wanted)
        with self._lock:
            flips = [(o, b) for t, o, b in self._flips if _matches(t, handle)]
        if not flips:
            return data
        buf = bytearray(data)
        for file_offset, bit in flips:
            i = file_offset - offset
            if 0 <= i < len(buf):
                buf[i] ^= 1 << bit
        return bytes(buf)

    def stat(self, handle: Handle) -> FileInfo:
        """Stat, reporting the truncated size of truncated files."""
        self._enter("stat", handle)
        return self._clip(self._inner.stat(handle))

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        """List (failures are raised at the call, not at the first iteration)."""
        self._enter("list", file_type)
        return (self._clip(info) for info in self._inner.list(file_type))

    def remove(self, handle: Handle) -> None:
        """Remove (subject to ``remove`` faults)."""
        self._enter("remove", handle)
        self._inner.remove(handle)

    def close(self) -> None:
        """Close the wrapped backend; after a crash, do nothing (the process is gone)."""
        with self._lock:
            if self._dead:
                return
            self._log.append(("close", None))
        self._inner.close()

    # -- internals ---------------------------------------------------------------------------------

    def _enter(self, op: Op, obj: Handle | FileType | None) -> None:
        """Log the call and apply the exit hook, crash point and failure rules for it."""
        with self._lock:
            if self._dead:
                raise SimulatedCrash(f"{op} {obj}: the backend already crashed (simulated)")
            self._log.append((op, obj))
            if op == "save" and isinstance(obj, Handle):
                if self._exit_before_save_of is obj.type:
                    os._exit(self._exit_code)
                countdown = self._crash_countdown.get(obj.type)
                if countdown is not None:
                    if countdown <= 1:
                        del self._crash_countdown[obj.type]
                        self._dead = True
                        raise SimulatedCrash(f"simulated crash before saving {obj}")
                    self._crash_countdown[obj.type] = countdown - 1
            for rule in self._failures:
                if rule.op != op or not _matches(rule.target, obj):
                    continue
                if rule.remaining is not None:
                    if rule.remaining <= 0:
                        continue
                    rule.remaining -= 1
                raise rule.error(f"simulated failure of {op} {obj} in {self._inner.location}")

    def _limit(self, handle: Handle) -> int | None:
        """The smallest truncation size configured for ``handle``, or None."""
        with self._lock:
            sizes = [size for t, size in self._truncations if _matches(t, handle)]
        return min(sizes) if sizes else None

    def _clip(self, info: FileInfo) -> FileInfo:
        """``info`` with its size cut to a configured truncation."""
        limit = self._limit(info.handle)
        if limit is None or info.size <= limit:
            return info
        return FileInfo(info.handle, limit)
