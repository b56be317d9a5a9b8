"""A backend over a local directory, laid out like a restic repository.

::

    root/config                  the repository config
    root/keys/<name>             key files
    root/data/<nn>/<name>        packs, fanned out by the first two hex digits of the name
    root/index/<name>            index files
    root/records/<name>          records
    root/locks/<name>            locks

Saves are atomic and durable: the bytes go to a temporary file named ``.tmp-<random hex>`` in the
target directory, the file is fsynced, published under its final name, and the directory is fsynced.
Publishing uses ``os.link``, which fails if the final name exists, so a save never silently replaces
a different file: an existing file with identical bytes makes the save a no-op, different bytes are
refused with ``UsageError`` (only ``overwrite=True`` uses ``os.replace``). A crash leaves at most
a ``.tmp-`` file behind; listings ignore such files and :meth:`LocalBackend.cleanup_temp_files`
removes them (``prune``, ``check`` and ``check --rebuild-index`` call it through
:func:`chunkstore.backends.remove_temp_files`). Other unexpected entries are skipped by listings too, but
:meth:`LocalBackend.stray_files` reports them so ``check`` can tell the user.

Native errors are translated: a missing file is ``NotFound``; any other ``OSError`` (no space, I/O
error, permission denied, a directory where a file should be) is ``BackendError`` naming the path
and the system's reason.
"""

from __future__ import annotations

import builtins
import errno
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

from chunkstore.backends.base import FileInfo, FileType, Handle
from chunkstore.errors import BackendError, NotFound, ShortRead, UsageError
from chunkstore.fsutil import fsync_dir

__all__ = ["LocalBackend"]

_TEMP_PREFIX = ".tmp-"
_NAME = re.compile(r"\A[0-9a-f]{64}\Z")
_FANOUT = re.compile(r"\A[0-9a-f]{2}\Z")
_CHUNK = 1 << 20
_FILE_MODE = 0o600
# Errors that mean "this filesystem cannot make hard links"; saves then fall back to a rename.
_NO_LINK = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV})
# Errors from fsync on a directory that only mean "not supported here".
_HINTS: Mapping[int, str] = MappingProxyType(
    {
        errno.ENOSPC: "free some space on that filesystem and retry",
        errno.EDQUOT: "the disk quota is exhausted; free some space and retry",
        errno.EACCES: "check the permissions of the repository directory",
        errno.EPERM: "check the permissions of the repository directory",
        errno.EROFS: "the filesystem is read-only; remount it read-write or use another location",
        errno.EIO: "the storage device reported an I/O error; check the disk and its logs",
        errno.EISDIR: "a directory is in the way; move it aside (run 'chunkstore check')",
        errno.ENOTDIR: "a file is in place of a directory; move it aside (run 'chunkstore check')",
    }
)


def _error(exc: OSError, action: str, path: Path) -> BackendError:
    """Translate ``exc`` from ``action`` on ``path`` into a chunkstore error."""
    code = exc.errno
    if code == errno.ENOENT:
        return NotFound(f"cannot {action} {path}: it does not exist")
    reason = os.strerror(code) if code is not None else str(exc)
    name = errno.errorcode.get(code, "?") if code is not None else "?"
    hint = _HINTS.get(code, "check the storage and retry") if code is not None else "retry"
    return BackendError(f"cannot {action} {path}: {reason} ({name}); {hint}")


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:_CHUNK])
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    """Make the directory entries of ``path`` durable (where the platform supports it)."""
    try:
        fsync_dir(path)
    except OSError as exc:
        raise _error(exc, "fsync directory", path) from exc


def _same_content(path: Path, data: bytes) -> bool:
    """Whether the regular file at ``path`` holds exactly ``data`` (size first, then bytes)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise BackendError(
                    f"{path} is not a regular file; move it aside (run 'chunkstore check')"
                )
            if st.st_size != len(data):
                return False
            view = memoryview(data)
            pos = 0
            while True:
                block = f.read(_CHUNK)
                if not block:
                    return pos == len(data)
                if view[pos : pos + len(block)] != block:
                    return False
                pos += len(block)
    except OSError as exc:
        raise _error(exc, "read existing file", path) from exc


class LocalBackend:
    """Repository files in a directory tree on a local (or locally mounted) filesystem."""

    __slots__ = ("_on_temp_written", "_root")

    def __init__(
        self, root: Path | str, *, on_temp_written: Callable[[Handle, Path], None] | None = None
    ) -> None:
        """Use the directory ``root``; nothing is touched until a method is called.

        ``on_temp_written(handle, tmp)`` runs when a save's temporary file is written and
        fsynced, right before it is published (testing: the ``*-temp`` crash points).
        """
        self._root = Path(root)
        self._on_temp_written = on_temp_written

    @property
    def root(self) -> Path:
        """The repository directory."""
        return self._root

    @property
    def location(self) -> str:
        """The repository directory, as a string."""
        return str(self._root)

    def path(self, handle: Handle) -> Path:
        """Where the file named by ``handle`` lives (whether or not it exists)."""
        if handle.type is FileType.CONFIG:
            return self._root / "config"
        if handle.type is FileType.PACK:
            return self._root / FileType.PACK.value / handle.name[:2] / handle.name
        return self._root / handle.type.value / handle.name

    def create(self) -> None:
        """Make the directory layout (including the 256 pack subdirectories); idempotent."""
        dirs = [self._root / t.value for t in FileType if t is not FileType.CONFIG]
        dirs += [self._root / FileType.PACK.value / f"{i:02x}" for i in range(256)]
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            for d in dirs:
                d.mkdir(exist_ok=True)
        except OSError as exc:
            raise _error(exc, "create repository directory in", self._root) from exc
        _fsync_dir(self._root / FileType.PACK.value)
        _fsync_dir(self._root)

    def exists(self, handle: Handle) -> bool:
        """Whether the file exists; ``BackendError`` if something other than a file is there."""
        path = self.path(handle)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _error(exc, "stat", path) from exc
        if not stat.S_ISREG(st.st_mode):
            raise self._not_regular(path)
        return True

    def save(self, handle: Handle, data: bytes, *, overwrite: bool = False) -> None:
        """Store ``data`` atomically and durably under ``handle``."""
        final = self.path(handle)
        tmp = self._write_temp(handle, final.parent, data)
        try:
            if self._on_temp_written is not None:
                self._on_temp_written(handle, tmp)
            if overwrite:
                try:
                    os.replace(tmp, final)
                except OSError as exc:
                    raise _error(exc, "replace", final) from exc
            else:
                self._publish(handle, tmp, final, data)
        finally:
            # Gone after a replace or rename; a leftover after a failure is harmless (listings
            # skip it, cleanup_temp_files removes it), so cleanup never masks the real outcome.
            try:
                os.unlink(tmp)
            except OSError:
                pass
        _fsync_dir(final.parent)

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        """Exactly ``length`` bytes from ``offset`` (the rest of the file when None)."""
        if offset < 0:
            raise UsageError(f"cannot load {handle}: offset {offset} is negative")
        if length is not None and length < 0:
            raise UsageError(f"cannot load {handle}: length {length} is negative")
        path = self.path(handle)
        try:
            with open(path, "rb", buffering=0) as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise self._not_regular(path)
                available = max(st.st_size - offset, 0)
                wanted = available if length is None else length
                if offset > st.st_size or wanted > available:
                    raise self._short(handle, path, offset, wanted, available)
                buf = bytearray(wanted)
                view = memoryview(buf)
                f.seek(offset)
                got = 0
                while got < wanted:
                    n = f.readinto(view[got : got + _CHUNK])
                    if not n:
                        # The file shrank after fstat (truncated under us).
                        raise self._short(handle, path, offset, wanted, got)
                    got += n
                return bytes(buf)
        except OSError as exc:
            raise _error(exc, "read", path) from exc

    def stat(self, handle: Handle) -> FileInfo:
        """The file's size; ``NotFound`` if missing."""
        path = self.path(handle)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise _error(exc, "stat", path) from exc
        if not stat.S_ISREG(st.st_mode):
            raise self._not_regular(path)
        return FileInfo(handle, st.st_size)

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        """Every valid file of ``file_type``, each once; stray and temporary files are skipped.

        A missing type directory is a ``BackendError`` (not an empty listing), so a damaged or
        uncreated repository can never look empty to ``prune``.
        """
        for _, info in self._scan(file_type):
            if info is not None:
                yield info

    def remove(self, handle: Handle) -> None:
        """Delete the file and make the deletion durable; ``NotFound`` if missing."""
        path = self.path(handle)
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                raise self._not_regular(path)
            os.unlink(path)
        except OSError as exc:
            raise _error(exc, "remove", path) from exc
        _fsync_dir(path.parent)

    def close(self) -> None:
        """Nothing to release: no file stays open between calls."""

    def stray_files(self) -> builtins.list[Path]:
        """Entries that listings skip because they are not valid repository files.

        Reports badly named files, packs in the wrong fan-out directory, directories where files
        belong, files where directories belong and unknown entries in the root. Temporary
        ``.tmp-`` files are not reported: a save may be writing them right now, and
        :meth:`cleanup_temp_files` removes the stale ones.
        """
        known = {t.value for t in FileType}
        strays: builtins.list[Path] = []
        try:
            with os.scandir(self._root) as it:
                entries = builtins.list(it)
        except OSError as exc:
            raise _error(exc, "list", self._root) from exc
        for entry in entries:
            if entry.name.startswith(_TEMP_PREFIX):
                continue
            if entry.name not in known:
                strays.append(Path(entry.path))
            elif entry.name == "config":
                if not entry.is_file():
                    strays.append(Path(entry.path))
            elif not entry.is_dir():
                strays.append(Path(entry.path))
        for file_type in FileType:
            if file_type is FileType.CONFIG:
                continue
            if not (self._root / file_type.value).is_dir():
                continue
            strays += [path for path, info in self._scan(file_type) if info is None]
        return sorted(strays)

    def cleanup_temp_files(
        self,
        older_than_seconds: float,
        *,
        now: float | None = None,
        skip: Collection[FileType] = (),
    ) -> int:
        """Remove ``.tmp-`` files last modified more than ``older_than_seconds`` ago.

        Such files are left by saves interrupted by a crash. Younger ones are kept because a save
        may still be writing them. The directories of the file types in ``skip`` are left alone
        (the config's temporary files live in the root). Returns how many files were removed.
        """
        if older_than_seconds < 0:
            raise UsageError(f"older_than_seconds must be >= 0, not {older_than_seconds}")
        cutoff = (time.time() if now is None else now) - older_than_seconds
        types = [t for t in FileType if t not in skip]
        dirs = [self._root / t.value for t in types if t is not FileType.CONFIG]
        if FileType.CONFIG in types:
            dirs.append(self._root)
        data = self._root / FileType.PACK.value
        try:
            if FileType.PACK in types:
                with os.scandir(data) as it:
                    dirs += [Path(e.path) for e in it if _FANOUT.match(e.name) and e.is_dir()]
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _error(exc, "list", data) from exc
        removed = 0
        for directory in dirs:
            removed_here = 0
            try:
                with os.scandir(directory) as it:
                    entries = [e for e in it if e.name.startswith(_TEMP_PREFIX)]
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _error(exc, "list", directory) from exc
            for entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                        continue
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue  # removed concurrently, or its save just published it
                except OSError as exc:
                    raise _error(exc, "remove temporary file", Path(entry.path)) from exc
                removed_here += 1
            if removed_here:
                _fsync_dir(directory)
                removed += removed_here
        return removed

    # -- internals ---------------------------------------------------------------------------------

    def _write_temp(self, handle: Handle, directory: Path, data: bytes) -> Path:
        """Write and fsync ``data`` into a new temporary file in ``directory``; return its path."""
        tmp = directory / f"{_TEMP_PREFIX}{secrets.token_hex(16)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(tmp, flags, _FILE_MODE)
        except FileNotFoundError:
            if handle.type is FileType.PACK and directory.parent.is_dir():
                # A fan-out directory removed by hand: recreate it rather than fail.
                try:
                    directory.mkdir(exist_ok=True)
                    fd = os.open(tmp, flags, _FILE_MODE)
                except OSError as exc:
                    raise _error(exc, "create temporary file", tmp) from exc
            else:
                raise BackendError(
                    f"cannot save {handle}: directory {directory} does not exist; is "
                    f"{self._root} a repository? Create it first ('chunkstore init')"
                ) from None
        except OSError as exc:
            raise _error(exc, "create temporary file", tmp) from exc
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise _error(exc, "write temporary file", tmp) from exc
            raise
        return tmp

    def _publish(self, handle: Handle, tmp: Path, final: Path, data: bytes) -> None:
        """Give ``tmp`` the name ``final`` unless a file is there; accept an identical one."""
        try:
            os.link(tmp, final)
            return
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise _error(exc, "publish", final) from exc
            # No hard links on this filesystem: check, then rename. Only a concurrent save of the
            # same name can slip between the two, and names are content digests, so it would store
            # the same bytes.
            if not os.path.lexists(final):
                try:
                    os.rename(tmp, final)
                except OSError as exc2:
                    raise _error(exc2, "publish", final) from exc2
                return
        if _same_content(final, data):
            return
        raise UsageError(
            f"{handle} already exists at {final} with different content; refusing to overwrite "
            f"it. If the existing file is damaged, run 'chunkstore check' and move it aside"
        )

    def _scan(self, file_type: FileType) -> Iterator[tuple[Path, FileInfo | None]]:
        """Entries of ``file_type``'s directory: ``(path, info)``, ``info`` None for strays."""
        if file_type is FileType.CONFIG:
            path = self._root / "config"
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise _error(exc, "stat", path) from exc
            if stat.S_ISREG(st.st_mode):
                yield path, FileInfo(Handle.config(), st.st_size)
            return
        top = self._root / file_type.value
        if file_type is not FileType.PACK:
            yield from self._scan_dir(file_type, top, None)
            return
        for entry in self._entries(file_type, top):
            if entry.name.startswith(_TEMP_PREFIX):
                continue
            if _FANOUT.match(entry.name) and entry.is_dir():
                yield from self._scan_dir(file_type, Path(entry.path), entry.name)
            else:
                yield Path(entry.path), None

    def _scan_dir(
        self, file_type: FileType, directory: Path, prefix: str | None
    ) -> Iterator[tuple[Path, FileInfo | None]]:
        """Files in one directory; names must be valid (and start with ``prefix`` if given)."""
        for entry in self._entries(file_type, directory):
            name = entry.name
            if name.startswith(_TEMP_PREFIX):
                continue
            path = Path(entry.path)
            if not _NAME.match(name) or (prefix is not None and not name.startswith(prefix)):
                yield path, None
                continue
            try:
                if not entry.is_file():
                    yield path, None
                    continue
                size = entry.stat().st_size
            except FileNotFoundError:
                continue  # removed while we listed
            except OSError as exc:
                raise _error(exc, "stat", path) from exc
            yield path, FileInfo(Handle(file_type, name), size)

    def _entries(self, file_type: FileType, directory: Path) -> builtins.list[os.DirEntry[str]]:
        """The entries of ``directory``; a missing type directory is an error."""
        try:
            with os.scandir(directory) as it:
                return builtins.list(it)
        except FileNotFoundError as exc:
            if directory.parent != self._root:
                return []  # a missing pack fan-out directory just holds no packs
            raise BackendError(
                f"cannot list {file_type.value} files: directory {directory} does not exist; "
                f"the repository at {self._root} is damaged or was never created"
            ) from exc
        except OSError as exc:
            raise _error(exc, "list", directory) from exc

    def _not_regular(self, path: Path) -> BackendError:
        """The error for a non-file (e.g. a directory) where a repository file belongs."""
        return BackendError(
            f"{path} is not a regular file; move it aside and run 'chunkstore check'"
        )

    def _short(
        self, handle: Handle, path: Path, offset: int, wanted: int, available: int
    ) -> ShortRead:
        """The error for a file too short for the requested range."""
        return ShortRead(
            f"{handle} at {path} is too short: wanted {wanted} bytes at offset {offset}, only "
            f"{available} available; the file is truncated or damaged, run 'chunkstore check'"
        )
