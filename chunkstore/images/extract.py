"""Extracting an image's merged root tree into a directory, safely (``restore NAME dir:PATH``).

::

    root tree blob -> nodes (validated) -> per directory, depth first, iteratively:
        files     O_CREAT|O_EXCL|O_NOFOLLOW under the parent's dir fd; content from the chunks,
                  loaded in batches (load_blobs), size checked; sparse maps become holes
        symlinks  symlinkat (the target is stored as is and never followed)
        hardlinks linkat to the group's first extracted member (``node.hardlink`` groups)
        fifos     mkfifoat;  devices: mknodat only with ``allow_special`` as root, else skipped
        dirs      mkdirat 0700, filled; at the end (children first) their mode, owner, mtime

Nothing is ever written outside ``dest``: every directory is opened relative to its parent's fd
with ``O_NOFOLLOW|O_DIRECTORY``, every entry is created by a single-component name relative to
that fd, and names are checked again (no ``/``, NUL, ``.`` or ``..``). Symlinks in the image (even
absolute ones or ones pointing up) are created but never traversed.

Metadata: mode (setuid and setgid removed unless ``allow_special``), mtime with nanoseconds, owner
only when running as root with ``preserve_owner``, extended attributes (``user.*`` only unless
root; failures are reported). Whatever is not restored is listed in :attr:`ExtractResult.skipped`
(entries) or :attr:`ExtractResult.warnings` (attributes): nothing is dropped silently.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from chunkstore.errors import CorruptMetadata, UsageError
from chunkstore.repository import Repository
from chunkstore.streams import read_chunk_lists
from index.chunklist import ChunkRef, StreamBody
from index.errors import FormatError
from index.ids import Digest
from index.tree import Node, NodeType, decode_tree

__all__ = ["ExtractResult", "extract_tree"]

_BATCH_CHUNKS = 64
_BATCH_BYTES = 8 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID


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


def _show(parts: Iterable[bytes]) -> str:
    return os.fsdecode(b"/".join(parts)) or "."


def _check_name(name: bytes) -> bytes:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise CorruptMetadata(f"tree holds an unsafe entry name {name!r:.80}; refusing to extract")
    return name


class _Extractor:
    def __init__(
        self,
        repo: Repository,
        root_fd: int,
        *,
        force: bool,
        allow_special: bool,
        preserve_owner: bool,
    ) -> None:
        self.repo = repo
        self.root_fd = root_fd
        self.force = force
        self.allow_special = allow_special
        self.is_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self.chown = preserve_owner and self.is_root
        self.result = ExtractResult()
        # hard-link group id -> path (components) of the member extracted first
        self.groups: dict[bytes, tuple[bytes, ...]] = {}

    # -- navigation ---------------------------------------------------------------------------

    def open_dir(self, parts: tuple[bytes, ...]) -> int:
        """Open DEST/parts, component by component, never following a symlink."""
        fd = os.dup(self.root_fd)
        try:
            for i, name in enumerate(parts):
                try:
                    nxt = os.open(_check_name(name), _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise UsageError(
                        f"cannot open {_show(parts[: i + 1])} in the destination as a directory: "
                        f"{exc.strerror}"
                    ) from None
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def load_tree(self, tree_id: Digest, parts: tuple[bytes, ...]) -> tuple[Node, ...]:
        try:
            return decode_tree(self.repo.load_blob(tree_id)).nodes
        except FormatError as exc:
            raise CorruptMetadata(
                f"tree {tree_id.short} of {_show(parts)} is invalid: {exc}; refusing to extract"
            ) from exc

    def make_room(
        self, dir_fd: int, name: bytes, parts: tuple[bytes, ...], *, is_dir: bool
    ) -> bool:
        """Clear the way for ``name``; True when a directory to reuse is already there."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if is_dir:
                return True
            raise UsageError(
                f"{_show(parts)} is a directory in the destination but not in the image; "
                "remove it or restore into an empty directory"
            )
        if not self.force:  # pragma: no cover - a non-empty destination was refused up front
            raise UsageError(f"{_show(parts)} already exists in the destination")
        os.unlink(name, dir_fd=dir_fd)
        return False

    # -- the walk -----------------------------------------------------------------------------

    def run(self, root_tree: Digest) -> None:
        # Depth first; directory metadata is applied at the very end, children before parents
        # (reverse creation order), so a read-only directory or a hard link into an
        # already-finished directory never gets in the way and mtimes stay as recorded.
        stack: list[tuple[tuple[bytes, ...], Node]] = []
        created: list[tuple[tuple[bytes, ...], Node]] = []
        self.fill(root_tree, (), stack)
        while stack:
            parts, node = stack.pop()
            assert node.tree is not None  # guaranteed for directory nodes
            created.append((parts, node))
            self.fill(node.tree, parts, stack)
        for parts, node in reversed(created):
            self.finish_dir(parts, node)

    def fill(
        self,
        tree_id: Digest,
        parts: tuple[bytes, ...],
        stack: list[tuple[tuple[bytes, ...], Node]],
    ) -> None:
        nodes = self.load_tree(tree_id, parts)
        fd = self.open_dir(parts)
        try:
            subdirs: list[tuple[tuple[bytes, ...], Node]] = []
            for node in nodes:
                name = _check_name(node.name)
                path = (*parts, name)
                if node.type == NodeType.DIRECTORY:
                    if not self.make_room(fd, name, path, is_dir=True):
                        os.mkdir(name, 0o700, dir_fd=fd)
                    self.result.dirs += 1
                    subdirs.append((path, node))
                    continue
                self.make_room(fd, name, path, is_dir=False)
                self.entry(fd, name, path, node)
            stack.extend(reversed(subdirs))
        finally:
            os.close(fd)

    def entry(self, fd: int, name: bytes, path: tuple[bytes, ...], node: Node) -> None:
        t = node.type
        if t == NodeType.FILE:
            if node.hardlink is not None:
                first = self.groups.get(node.hardlink)
                if first is not None:
                    self.link(fd, name, path, first)
                    return
                self.groups[node.hardlink] = path
            self.file(fd, name, path, node)
        elif t == NodeType.SYMLINK:
            os.symlink(node.target, name, dir_fd=fd)
            self.result.symlinks += 1
            self.owner_and_time(fd, name, path, node)
            self.xattrs_by_path(fd, name, path, node)
        elif t == NodeType.FIFO:
            os.mkfifo(name, self.mode(path, node.mode), dir_fd=fd)
            self.result.others += 1
            self.special_meta(fd, name, path, node)
        elif t in (NodeType.CHAR_DEVICE, NodeType.BLOCK_DEVICE):
            assert node.dev is not None
            kind = "character" if t == NodeType.CHAR_DEVICE else "block"
            if not (self.allow_special and self.is_root):
                need = "allow_special" if self.is_root else "root and allow_special"
                self.result.skipped.append(
                    f"{_show(path)}: {kind} device {node.dev[0]},{node.dev[1]} not created "
                    f"(needs {need})"
                )
                return
            fmt = stat.S_IFCHR if t == NodeType.CHAR_DEVICE else stat.S_IFBLK
            os.mknod(name, fmt | node.mode, os.makedev(*node.dev), dir_fd=fd)
            self.result.others += 1
            self.special_meta(fd, name, path, node)
        else:  # pragma: no cover - NodeType is closed; directories are handled by fill
            raise CorruptMetadata(f"{_show(path)} has an unexpected node type {t!r}")

    def link(self, fd: int, name: bytes, path: tuple[bytes, ...], first: tuple[bytes, ...]) -> None:
        src_fd = self.open_dir(first[:-1])
        try:
            os.link(first[-1], name, src_dir_fd=src_fd, dst_dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            raise UsageError(
                f"cannot hard-link {_show(path)} to {_show(first)}: {exc.strerror}"
            ) from None
        finally:
            os.close(src_fd)
        self.result.hardlinks += 1

    # -- content ------------------------------------------------------------------------------

    def refs(self, node: Node) -> Iterator[ChunkRef]:
        if node.chunks:
            return iter(node.chunks)
        if node.lists:
            return read_chunk_lists(self.repo, StreamBody(node.size, node.lists))
        return iter(())

    def data(self, node: Node, path: tuple[bytes, ...]) -> Iterator[bytes]:
        """The file's bytes in order, loaded in batches, sizes checked."""
        pending: list[ChunkRef] = []
        pending_bytes = total = 0

        def drain() -> Iterator[bytes]:
            got = dict(self.repo.load_blobs(r.id for r in pending))
            for r in pending:
                data = got[r.id]
                if len(data) != r.size:
                    raise CorruptMetadata(
                        f"chunk {r.id.short} of {_show(path)} has {len(data)} bytes, not {r.size}"
                    )
                yield data
            pending.clear()

        for ref in self.refs(node):
            pending.append(ref)
            pending_bytes += ref.size
            total += ref.size
            if len(pending) >= _BATCH_CHUNKS or pending_bytes >= _BATCH_BYTES:
                yield from drain()
                pending_bytes = 0
        yield from drain()
        if total != node.size:
            raise CorruptMetadata(
                f"{_show(path)}: chunks add up to {total} bytes, the tree says {node.size}"
            )

    def file(self, fd: int, name: bytes, path: tuple[bytes, ...], node: Node) -> None:
        out = os.open(name, _FILE_FLAGS, 0o600, dir_fd=fd)
        try:
            if node.sparse is None:
                for piece in self.data(node, path):
                    _write_all(out, piece, None)
            else:
                segments = iter(node.sparse.segments)
                offset, left = 0, 0
                for piece in self.data(node, path):
                    view = memoryview(piece)
                    while view:
                        while left == 0:
                            offset, left = next(segments)
                        n = min(left, len(view))
                        _write_all(out, view[:n], offset)
                        view, offset, left = view[n:], offset + n, left - n
                os.ftruncate(out, node.sparse.realsize)
            if self.chown:
                os.fchown(out, node.uid, node.gid)
            os.fchmod(out, self.mode(path, node.mode))
            self.xattrs_fd(out, path, node)
            os.utime(out, ns=(node.mtime_ns, node.mtime_ns))
        finally:
            os.close(out)
        self.result.files += 1
        self.result.bytes += node.size

    # -- metadata -----------------------------------------------------------------------------

    def mode(self, path: tuple[bytes, ...], mode: int) -> int:
        if mode & _SPECIAL_BITS and not self.allow_special:
            self.result.warnings.append(
                f"{_show(path)}: setuid/setgid bits of mode {mode:04o} removed "
                "(allow_special keeps them)"
            )
            return mode & ~_SPECIAL_BITS
        return mode

    def xattr_allowed(self, path: tuple[bytes, ...], key: bytes) -> bool:
        if self.is_root or key.startswith(b"user."):
            return True
        self.result.warnings.append(
            f"{_show(path)}: extended attribute {os.fsdecode(key)} not restored (needs root)"
        )
        return False

    def xattrs_fd(self, fd: int, path: tuple[bytes, ...], node: Node) -> None:
        for key, value in node.xattrs:
            if not self.xattr_allowed(path, key):
                continue
            try:
                os.setxattr(fd, key, value)
            except OSError as exc:
                self.result.warnings.append(
                    f"{_show(path)}: extended attribute {os.fsdecode(key)} not restored: "
                    f"{exc.strerror}"
                )

    def xattrs_by_path(self, fd: int, name: bytes, path: tuple[bytes, ...], node: Node) -> None:
        # setxattr has no dir_fd form: go through the directory's /proc fd link (the final
        # component is not followed).
        for key, value in node.xattrs:
            if not self.xattr_allowed(path, key):
                continue
            try:
                os.setxattr(
                    os.fsencode(f"/proc/self/fd/{fd}/") + name, key, value, follow_symlinks=False
                )
            except OSError as exc:
                self.result.warnings.append(
                    f"{_show(path)}: extended attribute {os.fsdecode(key)} not restored: "
                    f"{exc.strerror}"
                )

    def owner_and_time(self, fd: int, name: bytes, path: tuple[bytes, ...], node: Node) -> None:
        if self.chown:
            os.chown(name, node.uid, node.gid, dir_fd=fd, follow_symlinks=False)
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=fd, follow_symlinks=False)

    def special_meta(self, fd: int, name: bytes, path: tuple[bytes, ...], node: Node) -> None:
        """Owner, mode, xattrs and mtime of a fifo or device node just created by name."""
        if self.chown:
            os.chown(name, node.uid, node.gid, dir_fd=fd, follow_symlinks=False)
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):  # pragma: no cover - only a concurrent writer could do this
            raise UsageError(f"{_show(path)} was replaced while it was being restored")
        os.chmod(name, self.mode(path, node.mode), dir_fd=fd)
        self.xattrs_by_path(fd, name, path, node)
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=fd, follow_symlinks=False)

    def finish_dir(self, parts: tuple[bytes, ...], node: Node) -> None:
        fd = self.open_dir(parts)
        try:
            if self.chown:
                os.fchown(fd, node.uid, node.gid)
            os.fchmod(fd, self.mode(parts, node.mode))
            self.xattrs_fd(fd, parts, node)
            os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes | memoryview, offset: int | None) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


def extract_tree(
    repo: Repository,
    root_tree: Digest,
    dest: Path | str,
    *,
    force: bool = False,
    allow_special: bool = False,
    preserve_owner: bool = True,
) -> ExtractResult:
    """Extract the tree ``root_tree`` into the directory ``dest`` (created when missing).

    ``dest`` must be empty unless ``force``: then entries of the image replace files of the same
    name (never a directory by a non-directory) and other files stay. Device nodes are created
    only with ``allow_special`` when running as root; setuid/setgid bits are kept only with
    ``allow_special``; owners are set only as root with ``preserve_owner``.
    """
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileExistsError:
        raise UsageError(f"{dest} exists and is not a directory") from None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise UsageError(f"{dest} is not a directory") from None
        raise UsageError(f"cannot use {dest} as the destination: {exc.strerror}") from None
    try:
        if not force and os.listdir(root_fd):
            raise UsageError(
                f"{dest} is not empty; restore into an empty directory (or force to write over it)"
            )
        ex = _Extractor(
            repo,
            root_fd,
            force=force,
            allow_special=allow_special,
            preserve_owner=preserve_owner,
        )
        try:
            ex.run(root_tree)
        except OSError as exc:
            name = os.fsdecode(exc.filename) if isinstance(exc.filename, str | bytes) else ""
            raise UsageError(
                f"extracting into {dest} failed{f' at {name}' if name else ''}: {exc.strerror}"
            ) from exc
        return ex.result
    finally:
        os.close(root_fd)
