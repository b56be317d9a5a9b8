"""Crash points: kill the process (``os._exit(137)``) at a named commit step.

A crash point names the command it belongs to and the backend call it stops before (or, for the
``*-temp`` points of a local repository, the save it stops inside):

=====================  =========  ===========================================================
name                   command    the process dies right before ...
=====================  =========  ===========================================================
``pack``               put        the first pack is stored (nothing of the put is stored)
``pack-2``             put        the second pack is stored (one orphan pack)
``pack-temp``          put        the first pack is published: its ``.tmp-`` file is written and
                                  fsynced under the pack directory, not yet linked
``index``              put        the index file is stored (every pack stored, none indexed)
``record``             put        the record is stored (packs and index stored)
``prune-pack``         prune      the first repacked pack is stored
``prune-pack-temp``    prune      the first repacked pack is published (its ``.tmp-`` file is left)
``prune-index``        prune      the new, superseding index file is stored
``prune-delete-index`` prune      the first old index file is deleted
``prune-delete-pack``  prune      the first unused pack is deleted
``prune-delete-pack-2`` prune     the second unused pack is deleted
=====================  =========  ===========================================================

:class:`CrashAtBackend` wraps any backend and kills the process at its point (run it in a child
process); a ``temp`` point needs the backend's cooperation: :func:`crash_in_temp_write` is the
hook a :class:`~chunkstore.backends.local.LocalBackend` calls once a temporary file is written.
:func:`crash_point_from` reads the point from an environment mapping (``CHUNKSTORE_CRASH_AT``),
for a caller that owns the environment (the CLI, a test's child process); nothing in this module
reads ``os.environ`` itself. :func:`crash_hooks` turns a point into the
:class:`~chunkstore.backends.BackendHooks` the command line passes to ``open_backend``: the
production path never imports this module.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chunkstore.backends import BackendHooks
from chunkstore.backends.base import Backend, FileType, Handle
from chunkstore.errors import UsageError
from chunkstore.testing.faults import FaultyBackend

__all__ = [
    "CRASH_POINTS",
    "ENV_VAR",
    "CrashAtBackend",
    "CrashPoint",
    "crash_hooks",
    "crash_in_temp_write",
    "crash_point_from",
]

#: The environment variable naming a crash point.
ENV_VAR = "CHUNKSTORE_CRASH_AT"


@dataclass(frozen=True, slots=True)
class CrashPoint:
    """Die before the ``n``-th ``op`` of a file of ``file_type`` while running ``command``.

    ``op`` ``"temp"``: die inside the ``n``-th save, once its temporary file is written.
    """

    name: str
    command: Literal["put", "prune"]
    op: Literal["save", "remove", "temp"]
    file_type: FileType
    n: int


CRASH_POINTS: dict[str, CrashPoint] = {
    p.name: p
    for p in (
        CrashPoint("pack", "put", "save", FileType.PACK, 1),
        CrashPoint("pack-2", "put", "save", FileType.PACK, 2),
        CrashPoint("pack-temp", "put", "temp", FileType.PACK, 1),
        CrashPoint("index", "put", "save", FileType.INDEX, 1),
        CrashPoint("record", "put", "save", FileType.RECORD, 1),
        CrashPoint("prune-pack", "prune", "save", FileType.PACK, 1),
        CrashPoint("prune-pack-temp", "prune", "temp", FileType.PACK, 1),
        CrashPoint("prune-index", "prune", "save", FileType.INDEX, 1),
        CrashPoint("prune-delete-index", "prune", "remove", FileType.INDEX, 1),
        CrashPoint("prune-delete-pack", "prune", "remove", FileType.PACK, 1),
        CrashPoint("prune-delete-pack-2", "prune", "remove", FileType.PACK, 2),
    )
}


def crash_point_from(env: Mapping[str, str]) -> CrashPoint | None:
    """The crash point ``env[ENV_VAR]`` names (None when unset); ``UsageError`` when unknown."""
    name = env.get(ENV_VAR)
    if not name:
        return None
    point = CRASH_POINTS.get(name)
    if point is None:
        raise UsageError(f"unknown crash point {name!r}; expected one of {sorted(CRASH_POINTS)}")
    return point


def crash_in_temp_write(
    point: CrashPoint, *, exit_code: int = 137
) -> Callable[[Handle, Path], None]:
    """A ``LocalBackend(on_temp_written=...)`` hook that dies at a ``temp`` crash point."""
    if point.op != "temp":
        raise UsageError(f"crash point {point.name!r} is not inside a temporary file write")
    lock = threading.Lock()
    countdown = [point.n]

    def hook(handle: Handle, tmp: Path) -> None:
        if handle.type is not point.file_type:
            return
        with lock:
            countdown[0] -= 1
            if countdown[0] == 0:
                os._exit(exit_code)

    return hook


def crash_hooks(point: CrashPoint, *, exit_code: int = 137) -> BackendHooks:
    """The backend hooks that die at ``point``: a wrapper, or a local save's temp-write hook."""
    if point.op == "temp":
        return BackendHooks(on_temp_written=crash_in_temp_write(point, exit_code=exit_code))
    return BackendHooks(wrap=lambda backend: CrashAtBackend(backend, point, exit_code=exit_code))


class CrashAtBackend(FaultyBackend):
    """A backend that calls ``os._exit(exit_code)`` when it reaches ``point``."""

    def __init__(self, inner: Backend, point: CrashPoint, *, exit_code: int = 137) -> None:
        """Wrap ``inner``; every call before the crash point passes through unchanged."""
        super().__init__(inner)
        self.point = point
        self._countdown = point.n
        self._code = exit_code

    def _tick(self, op: str, handle: Handle) -> None:
        if op != self.point.op or handle.type is not self.point.file_type:
            return
        with self._lock:
            self._countdown -= 1
            if self._countdown == 0:
                os._exit(self._code)

    def save(self, handle: Handle, data: bytes, *, overwrite: bool = False) -> None:
        """Save, or die first when this save is the crash point."""
        self._tick("save", handle)
        super().save(handle, data, overwrite=overwrite)

    def remove(self, handle: Handle) -> None:
        """Remove, or die first when this remove is the crash point."""
        self._tick("remove", handle)
        super().remove(handle)
