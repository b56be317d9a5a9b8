"""File-system durability helpers shared by everything that publishes files atomically."""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["fsync_dir"]

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
