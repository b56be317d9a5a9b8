"""File-system durability helpers shared by everything that publishes files atomically.

:func:`atomic_file` is the one way a local file is published: the bytes go to a temporary file in
the same directory, which is flushed and fsynced, renamed over the final name, and then the
directory is fsynced (without that last step a power cut can lose the rename). On any failure
the temporary file is removed and the final name is untouched.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_file", "fsync_dir", "write_file_atomically"]

# File systems that cannot fsync a directory say so with one of these; there is nothing to do.
_NO_DIR_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF})


def fsync_dir(path: Path) -> None:
    """Make the directory entries of ``path`` durable (a no-op where the platform cannot).

    Raises ``OSError`` for real failures; callers translate it into their own errors.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_SYNC:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path, *, tmp: Path | None = None) -> Iterator[BinaryIO]:
    """A binary file to write that appears under ``path`` only once complete and durable.

    ``tmp``: the temporary name (in the same directory; default ``.<name>.<random>.tmp``).
    Raises ``OSError`` for file-system failures; callers translate it into their own errors.
    """
    path = Path(path)
    if tmp is None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        try:
            os.unlink(tmp)
        except OSError:  # gone after the rename; a leftover never masks the real outcome
            pass


def write_file_atomically(path: Path, data: bytes) -> None:
    """Publish ``data`` under ``path`` with :func:`atomic_file`."""
    with atomic_file(path) as f:
        f.write(data)
