"""What an extraction writes into each entry besides its name, and what it reports.

File content (sparse maps become holes), mode (setuid and setgid removed unless ``allow_special``),
extended attributes (``user.*`` only unless root; failures reported); owners and times are set by
the walk (extract.py). Called from the walk and from the worker threads, each with its own
:class:`ExtractResult`, which lists whatever is not restored: nothing is dropped silently.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from index.tree import Node

__all__ = [
    "ExtractResult",
    "Options",
    "restored_mode",
    "show",
    "write_all",
    "write_sparse",
    "xattrs_by_path",
    "xattrs_fd",
]

_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID
_Parts = tuple[bytes, ...]


@dataclass(slots=True)
class ExtractResult:
    """What an extraction wrote, and what it could not."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    others: int = 0
    bytes: int = 0
    #: Entries not created, as ``"path: reason"``.
    skipped: list[str] = field(default_factory=list)
    #: Attributes not restored (owners, xattrs, special mode bits), as ``"path: what"``.
    warnings: list[str] = field(default_factory=list)

    def merge(self, other: ExtractResult) -> None:
        """Add ``other``'s counts and messages to this result."""
        self.files += other.files
        self.dirs += other.dirs
        self.symlinks += other.symlinks
        self.hardlinks += other.hardlinks
        self.others += other.others
        self.bytes += other.bytes
        self.skipped += other.skipped
        self.warnings += other.warnings


@dataclass(frozen=True, slots=True)
class Options:
    """What the caller allows and what this process may do."""

    #: Device nodes (as root) and setuid/setgid bits.
    allow_special: bool
    is_root: bool
    #: Owners are set (root, and the caller asked to preserve them).
    chown: bool


def show(parts: Iterable[bytes]) -> str:
    """A path inside the destination for messages (``.`` for the destination itself)."""
    return os.fsdecode(b"/".join(parts)) or "."


def write_sparse(out: int, node: Node, pieces: Iterator[bytes]) -> None:
    """Write a sparse file's data segments where its map puts them; the rest stays holes."""
    assert node.sparse is not None
    segments = iter(node.sparse.segments)
    offset, left = 0, 0
    for piece in pieces:
        view = memoryview(piece)
        while view:
            while left == 0:
                offset, left = next(segments)
            n = min(left, len(view))
            write_all(out, view[:n], offset)
            view, offset, left = view[n:], offset + n, left - n
    os.ftruncate(out, node.sparse.realsize)


def restored_mode(path: _Parts, mode: int, opts: Options, res: ExtractResult) -> int:
    """``mode`` as restored: setuid/setgid removed (and reported) unless ``allow_special``."""
    if mode & _SPECIAL_BITS and not opts.allow_special:
        res.warnings.append(
            f"{show(path)}: setuid/setgid bits of mode {mode:04o} removed "
            "(allow_special keeps them)"
        )
        return mode & ~_SPECIAL_BITS
    return mode


def _xattr_allowed(path: _Parts, key: bytes, opts: Options, res: ExtractResult) -> bool:
    if opts.is_root or key.startswith(b"user."):
        return True
    res.warnings.append(
        f"{show(path)}: extended attribute {os.fsdecode(key)} not restored (needs root)"
    )
    return False


def xattrs_fd(fd: int, path: _Parts, node: Node, opts: Options, res: ExtractResult) -> None:
    """Set the node's extended attributes on the open file ``fd`` (failures reported)."""
    for key, value in node.xattrs:
        if not _xattr_allowed(path, key, opts, res):
            continue
        try:
            os.setxattr(fd, key, value)
        except OSError as exc:
            res.warnings.append(
                f"{show(path)}: extended attribute {os.fsdecode(key)} not restored: {exc.strerror}"
            )


def xattrs_by_path(
    fd: int, name: bytes, path: _Parts, node: Node, opts: Options, res: ExtractResult
) -> None:
    """Set the node's extended attributes on ``name`` in the directory ``fd`` (not followed)."""
    # setxattr has no dir_fd form: go through the directory's /proc fd link (the final
    # component is not followed).
    for key, value in node.xattrs:
        if not _xattr_allowed(path, key, opts, res):
            continue
        try:
            os.setxattr(
                os.fsencode(f"/proc/self/fd/{fd}/") + name, key, value, follow_symlinks=False
            )
        except OSError as exc:
            res.warnings.append(
                f"{show(path)}: extended attribute {os.fsdecode(key)} not restored: {exc.strerror}"
            )


def write_all(fd: int, data: bytes | memoryview, offset: int | None) -> None:
    """Write all of ``data`` at the file position, or at ``offset`` when given."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n
