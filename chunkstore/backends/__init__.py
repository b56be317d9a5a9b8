"""Storage backends behind one small interface (see :mod:`chunkstore.backends.base`).

:func:`open_backend` turns a repository location into a backend; a caller's :class:`BackendHooks`
(the command line's crash points) are composed here only. :func:`remove_temp_files` removes what
crashed saves left in a local repository.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from chunkstore.backends.base import Backend, FileInfo, FileType, Handle
from chunkstore.backends.local import LocalBackend
from chunkstore.backends.memory import MemoryBackend
from chunkstore.environment import Environment
from chunkstore.errors import UsageError

__all__ = [
    "TEMP_FILE_AGE_S",
    "Backend",
    "BackendHooks",
    "FileInfo",
    "FileType",
    "Handle",
    "LocalBackend",
    "MemoryBackend",
    "RemoteOptions",
    "open_backend",
    "remove_temp_files",
]

#: A temporary file older than this belongs to no running save (a lock's time to live).
TEMP_FILE_AGE_S = 1800.0


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    """How to reach a remote repository: the environment (credentials) and plain HTTP.

    The environment holds passwords: it is kept as an :class:`~chunkstore.environment.Environment`
    (any mapping given is copied into one) and left out of the ``repr``, so neither this object
    nor a traceback rendered with its local variables can print a secret.
    """

    env: Mapping[str, str] = field(default_factory=Environment, repr=False)
    plain_http: bool = False

    def __post_init__(self) -> None:
        """Keep the environment only in its never-printing form."""
        if not isinstance(self.env, Environment):
            object.__setattr__(self, "env", Environment(self.env))


@dataclass(frozen=True, slots=True)
class BackendHooks:
    """What a caller adds to the backend :func:`open_backend` opens (none by default).

    ``wrap`` gets the opened backend and returns the one to use (a wrapper that keeps the
    original as ``inner``). ``on_temp_written(handle, tmp)`` runs inside a local repository's
    save once its temporary file is written and fsynced (see
    :class:`~chunkstore.backends.local.LocalBackend`); a registry has no temporary files and
    refuses it. The command line composes its ``CHUNKSTORE_CRASH_AT`` crash points from these.
    """

    wrap: Callable[[Backend], Backend] | None = None
    on_temp_written: Callable[[Handle, Path], None] | None = None


def open_backend(
    location: str | Path, remote: RemoteOptions | None = None, hooks: BackendHooks | None = None
) -> Backend:
    """A backend for ``location``: ``local:PATH``, a plain path, or ``registry:HOST[:PORT]/NAME``."""
    hooks = hooks or BackendHooks()
    backend = _open_plain(str(location), remote or RemoteOptions(), hooks.on_temp_written)
    return hooks.wrap(backend) if hooks.wrap is not None else backend


def _open_plain(
    text: str, remote: RemoteOptions, on_temp_written: Callable[[Handle, Path], None] | None
) -> Backend:
    if text.startswith("registry:"):
        if on_temp_written is not None:
            raise UsageError(
                f"{text}: a registry repository has no temporary files to hook; "
                "use a local repository"
            )
        from chunkstore.backends.registry import open_registry_backend

        return open_registry_backend(text[len("registry:") :], remote)
    if text.startswith("local:"):
        text = text[len("local:") :]
    if not text:
        raise UsageError("empty repository location")
    return LocalBackend(Path(text).expanduser(), on_temp_written=on_temp_written)


def remove_temp_files(backend: Backend, *, exclusive: bool) -> int:
    """Remove the temporary files crashed saves left in a local repository; returns how many.

    ``exclusive``: the caller holds the exclusive lock (``prune``, ``check --rebuild-index``), so
    no save can be running and every temporary file is stale, except in ``locks/``, where other
    processes write their lock files while they try to acquire one. Without it (``check``) only
    files older than :data:`TEMP_FILE_AGE_S` go. Backends without temporary files (a registry,
    memory) and wrappers around them have nothing to remove.
    """
    inner: object = backend
    while not isinstance(inner, LocalBackend):
        inner = getattr(inner, "inner", None)
        if inner is None:
            return 0
    removed = 0
    if exclusive:
        removed += inner.cleanup_temp_files(0, skip=(FileType.LOCK,))
    return removed + inner.cleanup_temp_files(TEMP_FILE_AGE_S)
