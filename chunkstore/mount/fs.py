"""The FUSE adapter: an image's merged root file system as a lazy, read-only mount (pyfuse3).

This is the only module that imports pyfuse3 and trio. It turns kernel requests into calls on the
FUSE-free core (:class:`~chunkstore.mount.reader.ExtentReader`,
:class:`~chunkstore.mount.fetch.Fetcher`) and translates every error with one :func:`to_errno`.

Inodes are assigned lazily: the root is inode 1, and an entry gets a number the first time the
kernel looks it up (or lists its directory). A directory's tree blob is fetched the first time the
directory is looked into, and kept in a small LRU by tree id, so mounting costs the same for ten
files or a million: open the repository, read the image record, serve. Hard-link group members
(the same ``hardlink`` path in their nodes) share one inode. Inodes the kernel forgets (lookup
count zero) are dropped, so memory follows what the kernel holds, not what was ever visited.

Blocking work (tree loads, chunk fetches) runs on threads (``trio.to_thread``), so one slow fetch
never stalls other requests; pyfuse3 serves up to 99 requests concurrently. Content never
changes, so attributes and entries (and missing names: negative lookups) are cached by the kernel
for an hour and files are opened with ``keep_cache``.

The mount is read-only (``ro``): every modifying request gets EROFS. Ownership and permission bits
are the image's own, checked by the kernel (``default_permissions``); ``allow_other`` lets other
users (a container runtime, a chroot as root) in. Errors: integrity or transport failures are EIO
(never wrong bytes), a missing object ENOENT; a read that cannot get its chunks within the fetch
deadline fails with EIO, and the next read tries again.

Life cycle (:func:`serve`): mount, start the FUSE loop, prove the mount answers (``stat`` of the
mount point from a thread), then report ready; run until ``fusermount3 -u`` ends the session or
SIGINT/SIGTERM arrive, then unmount and return.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import stat
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from chunkstore.errors import (
    BackendError,
    ChunkstoreError,
    IntegrityError,
    MissingObject,
    UsageError,
)
from chunkstore.metadata import parse_tree
from chunkstore.mount.fetch import Fetcher
from chunkstore.mount.reader import ExtentReader, file_size
from chunkstore.mount.stats import MountStats
from index.ids import Digest
from index.tree import Node, NodeType, Tree

__all__ = ["ImageFS", "MountOptions", "serve", "to_errno"]

log = logging.getLogger("chunkstore.mount")

_P = ParamSpec("_P")
_T = TypeVar("_T")

_TYPE_BITS = {
    NodeType.FILE: stat.S_IFREG,
    NodeType.DIRECTORY: stat.S_IFDIR,
    NodeType.SYMLINK: stat.S_IFLNK,
    NodeType.CHAR_DEVICE: stat.S_IFCHR,
    NodeType.BLOCK_DEVICE: stat.S_IFBLK,
    NodeType.FIFO: stat.S_IFIFO,
}


def to_errno(exc: BaseException) -> int:
    """The errno a failed request returns: the one mapping from chunkstore errors to FUSE."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, IntegrityError | BackendError):
        return errno.EIO  # damaged or unreachable data: never wrong bytes, never a hang
    if isinstance(exc, MissingObject):
        return errno.ENOENT
    if isinstance(exc, UsageError):
        return errno.EINVAL
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def _fuse_errors(
    fn: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Run a handler, turning any exception into ``FUSEError(to_errno(exc))``."""

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            code = to_errno(exc)
            if isinstance(exc, ChunkstoreError):
                log.warning("%s: %s", fn.__name__, exc)
            else:
                log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(code) from exc

    return wrapper


@dataclass(frozen=True, slots=True)
class MountOptions:
    """How the file system is presented to the kernel."""

    allow_other: bool = False
    fsname: str = "chunkstore"
    #: Seconds the kernel may cache attributes, entries and negative lookups.
    cache_timeout: float = 3600.0
    max_tree_cache: int = 1024

    def fuse_options(self) -> set[str]:
        """The mount options handed to libfuse."""
        opts = set(pyfuse3.default_options) | {
            "ro",
            f"fsname={self.fsname}",
            "subtype=chunkstore",
        }
        if self.allow_other:
            opts.add("allow_other")
        return opts


@dataclass(slots=True)
class _Inode:
    node: Node | None  # None: the image root
    parent: int
    key: Hashable
    lookups: int = 0


@dataclass(slots=True)
class _RootMeta:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0


@dataclass(slots=True)
class _Handles:
    next: int = 1
    open: dict[int, tuple[int, Node]] = field(default_factory=dict)


class ImageFS(pyfuse3.Operations):
    """pyfuse3 operations over one image's root tree."""

    def __init__(
        self,
        fetcher: Fetcher,
        reader: ExtentReader,
        root: Digest,
        root_meta: tuple[int, int, int, int] | None = None,
        options: MountOptions | None = None,
    ) -> None:
        """Serve the tree rooted at ``root`` (``root_meta``: the root's mode, uid, gid, mtime)."""
        super().__init__()
        self.fetcher = fetcher
        self.reader = reader
        self.stats: MountStats = fetcher.stats
        self.options = options or MountOptions()
        self._root_tree = root
        self._root_meta = _RootMeta(*root_meta) if root_meta is not None else _RootMeta()
        self._inodes: dict[int, _Inode] = {
            pyfuse3.ROOT_INODE: _Inode(None, pyfuse3.ROOT_INODE, ("root",), 1)
        }
        self._by_key: dict[Hashable, int] = {("root",): pyfuse3.ROOT_INODE}
        self._next_ino = pyfuse3.ROOT_INODE + 1
        self._trees: OrderedDict[Digest, Tree] = OrderedDict()
        self._files = _Handles()

    # ----------------------------------------------------------------- helpers
    def _load_tree(self, tree_id: Digest) -> Tree:
        tree = parse_tree(self.fetcher.get_one(tree_id), tree_id)
        self.stats.add(trees_loaded=1)
        return tree

    async def _tree(self, tree_id: Digest) -> Tree:
        tree = self._trees.get(tree_id)
        if tree is not None:
            self._trees.move_to_end(tree_id)
            return tree
        tree = await trio.to_thread.run_sync(self._load_tree, tree_id)
        self._trees[tree_id] = tree
        while len(self._trees) > self.options.max_tree_cache:
            self._trees.popitem(last=False)
        return tree

    def _entry(self, ino: int) -> _Inode:
        entry = self._inodes.get(ino)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return entry

    def _dir_tree(self, entry: _Inode) -> Digest:
        if entry.node is None:
            return self._root_tree
        if entry.node.type is not NodeType.DIRECTORY or entry.node.tree is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return entry.node.tree

    def _child(self, parent: int, node: Node) -> tuple[int, _Inode, bool]:
        """The inode of ``node`` in directory ``parent`` (made on first sight)."""
        key: Hashable
        if node.type is NodeType.FILE and node.hardlink is not None:
            key = ("hardlink", node.hardlink)
        else:
            key = (parent, node.name)
        ino = self._by_key.get(key)
        if ino is not None:
            return ino, self._inodes[ino], False
        ino = self._next_ino
        self._next_ino += 1
        entry = _Inode(node, parent, key)
        self._inodes[ino] = entry
        self._by_key[key] = ino
        return ino, entry, True

    def _drop(self, ino: int) -> None:
        entry = self._inodes.pop(ino, None)
        if entry is not None and self._by_key.get(entry.key) == ino:
            del self._by_key[entry.key]

    def _attrs(self, ino: int, entry: _Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = a.attr_timeout = self.options.cache_timeout
        a.st_blksize = 4096
        node = entry.node
        if node is None:
            m = self._root_meta
            a.st_mode = stat.S_IFDIR | m.mode
            a.st_uid, a.st_gid, mtime = m.uid, m.gid, m.mtime_ns
            a.st_nlink = 1
            a.st_size = 0
        else:
            a.st_mode = _TYPE_BITS[node.type] | node.mode
            a.st_uid, a.st_gid, mtime = node.uid, node.gid, node.mtime_ns
            # Directory link counts would need every subdirectory's tree; 1 means "unknown"
            # to find(1) and fts. A hard-link group has at least two members.
            a.st_nlink = 2 if node.hardlink is not None else 1
            if node.type is NodeType.FILE:
                a.st_size = file_size(node)
            elif node.type is NodeType.SYMLINK:
                a.st_size = len(node.target)
            else:
                a.st_size = 0
            if node.dev is not None:
                a.st_rdev = os.makedev(node.dev[0], node.dev[1])
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = mtime
        return a

    # ----------------------------------------------------------------- lookups
    @_fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """The entry ``name`` of a directory (a cached negative entry when absent)."""
        parent = self._entry(parent_inode)
        if name == b".":
            parent.lookups += 1
            return self._attrs(parent_inode, parent)
        if name == b"..":
            up = self._entry(parent.parent)
            up.lookups += 1
            return self._attrs(parent.parent, up)
        node = (await self._tree(self._dir_tree(parent))).lookup(name)
        if node is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self.options.cache_timeout
            return negative
        ino, entry, _ = self._child(parent_inode, node)
        entry.lookups += 1
        return self._attrs(ino, entry)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Drop inodes the kernel no longer holds."""
        for ino, n in inode_list:
            entry = self._inodes.get(ino)
            if entry is None or ino == pyfuse3.ROOT_INODE:
                continue
            entry.lookups -= n
            if entry.lookups <= 0:
                self._drop(ino)

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Attributes of a known inode."""
        return self._attrs(inode, self._entry(inode))

    @_fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        """A symlink's target."""
        node = self._entry(inode).node
        if node is None or node.type is not NodeType.SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    # ----------------------------------------------------------------- directories
    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        """A directory handle is its inode."""
        self._dir_tree(self._entry(inode))
        return inode

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Entries from ``start_id`` (an index into the sorted tree), with attributes."""
        tree = await self._tree(self._dir_tree(self._entry(fh)))
        nodes = tree.nodes
        for i in range(start_id, len(nodes)):
            ino, entry, fresh = self._child(fh, nodes[i])
            if not pyfuse3.readdir_reply(token, nodes[i].name, self._attrs(ino, entry), i + 1):
                if fresh:
                    self._drop(ino)
                return
            entry.lookups += 1

    async def releasedir(self, fh: int) -> None:
        """Nothing to release."""

    # ----------------------------------------------------------------- files
    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """Open a regular file for reading (content never changes: keep the page cache)."""
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self._entry(inode).node
        if node is None or node.type is not NodeType.FILE:
            raise pyfuse3.FUSEError(errno.EISDIR if node is None else errno.EINVAL)
        fh = self._files.next
        self._files.next += 1
        self._files.open[fh] = (inode, node)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        """Bytes of an open file (EIO when its chunks cannot be fetched and verified)."""
        handle = self._files.open.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        ino, node = handle
        try:
            return await trio.to_thread.run_sync(
                functools.partial(self.reader.read, node, off, size, key=ino)
            )
        except Exception as exc:
            self.stats.add(read_errors=1)
            log.warning("read of %s failed: %s", node.name.decode(errors="replace"), exc)
            raise pyfuse3.FUSEError(to_errno(exc)) from exc

    async def flush(self, fh: int) -> None:
        """Nothing to flush."""

    async def release(self, fh: int) -> None:
        """Forget the handle."""
        self._files.open.pop(fh, None)

    # ----------------------------------------------------------------- xattrs, statfs
    @_fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        """One extended attribute (ENODATA when absent)."""
        node = self._entry(inode).node
        for key, value in node.xattrs if node is not None else ():
            if key == name:
                return value
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @_fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        """Names of the extended attributes."""
        node = self._entry(inode).node
        return [k for k, _ in node.xattrs] if node is not None else []

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """A read-only file system with no free space."""
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = len(self._inodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # ----------------------------------------------------------------- read-only
    async def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = _read_only
    setxattr = _read_only
    removexattr = _read_only
    mknod = _read_only
    mkdir = _read_only
    unlink = _read_only
    rmdir = _read_only
    symlink = _read_only
    rename = _read_only
    link = _read_only
    create = _read_only
    write = _read_only


async def _signal_watch(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


async def _serve(
    ops: ImageFS,
    mountpoint: Path,
    options: MountOptions,
    on_ready: Callable[[], None],
) -> None:
    pyfuse3.init(ops, str(mountpoint), options.fuse_options())
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_signal_watch)

            async def fuse_loop() -> None:
                await pyfuse3.main()
                nursery.cancel_scope.cancel()  # unmounted or terminated: stop the watchers

            nursery.start_soon(fuse_loop)
            # The mount answers once the loop runs: prove it from a thread, then report ready.
            await trio.to_thread.run_sync(os.stat, mountpoint)
            on_ready()
    finally:
        pyfuse3.close(unmount=True)


def serve(
    ops: ImageFS,
    mountpoint: Path,
    options: MountOptions | None = None,
    *,
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """Mount ``ops`` at ``mountpoint`` and serve until unmounted or SIGINT/SIGTERM.

    ``on_ready`` is called once the mount answers requests. Must run in the main thread (signal
    handling).
    """
    if not mountpoint.is_dir():
        raise UsageError(f"mount point {mountpoint} is not a directory")
    trio.run(_serve, ops, mountpoint, options or ops.options, on_ready)
