"""Extracting an image's merged root tree into a directory, safely (``restore NAME dir:PATH``).

::

    root tree -> directories depth first; each directory's subtrees loaded in one batched read
        dirs      mkdirat 0700, opened relative to the parent's fd; when everything inside is
                  done (children first), their mode, owner, xattrs, mtime, then closed
        symlinks  symlinkat (the target is stored as is and never followed)
        fifos     mkfifoat;  devices: mknodat only with ``allow_special`` as root, else skipped
        files     gathered into groups (small files together, up to 4 MiB / 256 files / 32 dirs;
                  a large file alone) and handed to worker threads: one load_blobs per group
                  (pack-grouped, coalesced reads; every chunk decompressed and verified against
                  its id), then O_CREAT|O_EXCL|O_NOFOLLOW under the parent's dir fd, written,
                  size checked; sparse maps become holes
        hardlinks linkat to the group's first member once that member is written

The walk (tree decoding, directories, links) runs in the calling thread while the workers read,
verify and write file content: zstd, SHA-256 and the file system calls release the GIL. At most
``2 * workers`` groups are in flight, which bounds memory and open directory descriptors.

Nothing is ever written outside ``dest``: every directory is opened relative to its parent's fd
with ``O_NOFOLLOW|O_DIRECTORY``, every entry is created by a single-component name relative to
that fd, and names are checked again (no ``/``, NUL, ``.`` or ``..``). Symlinks in the image (even
absolute ones or ones pointing up) are created but never traversed.

Metadata (extract_attrs.py): mode (setuid and setgid removed unless ``allow_special``), mtime
with nanoseconds, owner only when running as root with ``preserve_owner``, extended attributes
(``user.*`` only unless root; failures are reported). Whatever is not restored is listed in
:attr:`ExtractResult.skipped` (entries) or :attr:`ExtractResult.warnings` (attributes): nothing
is dropped silently. File content is read through ``streams.verified_chunks``.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from chunkstore.errors import CorruptMetadata, UsageError
from chunkstore.images.extract_attrs import (
    ExtractResult,
    Options,
    restored_mode,
    show,
    write_all,
    write_sparse,
    xattrs_by_path,
    xattrs_fd,
)
from chunkstore.metadata import parse_tree
from chunkstore.repository import Repository
from chunkstore.streams import read_chunk_lists, verified_chunks
from index.chunklist import ChunkRef, StreamBody
from index.ids import Digest
from index.tree import Node, NodeType

__all__ = ["DEFAULT_WORKERS", "ExtractResult", "extract_tree"]

#: Worker threads writing file content (more contend for the GIL with the walk: measured).
DEFAULT_WORKERS = 2
_GROUP_BYTES = 4 << 20  # a group of small files; a file this large is a group of its own
_GROUP_FILES = 256
_GROUP_DIRS = 32
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_Parts = tuple[bytes, ...]


def _check_name(name: bytes) -> bytes:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise CorruptMetadata(f"tree holds an unsafe entry name {name!r:.80}; refusing to extract")
    return name


class _DirRef:
    """An open directory of the destination, shared by everything that still writes into it.

    The walk holds one reference while it fills the directory, each subdirectory one on its
    parent until it is finished itself, each file group one per file and each waiting hard link
    one. All are taken and released in the walk's thread (workers only use the fd while their
    group holds it). The last release applies the directory's own metadata (mode, owner,
    xattrs, mtime: after every entry inside it exists, children before parents), then closes it.
    """

    __slots__ = ("_refs", "ex", "fd", "node", "parent", "parts")

    def __init__(
        self,
        ex: _Extractor,
        fd: int,
        parts: _Parts,
        node: Node | None,
        parent: _DirRef | None,
    ) -> None:
        self.ex = ex
        self.fd = fd
        self.parts = parts
        self.node = node  # None for the destination itself (its metadata is the caller's)
        self.parent = parent
        self._refs = 1
        ex.live.add(self)

    def acquire(self) -> None:
        self._refs += 1

    def release(self) -> None:
        self._refs -= 1
        if self._refs:
            return
        self.ex.live.discard(self)
        try:
            if self.node is not None:
                self.ex.finish_dir(self.fd, self.parts, self.node)
        finally:
            os.close(self.fd)
        if self.parent is not None:
            self.parent.release()


@dataclass(slots=True)
class _FileJob:
    """One regular file to create in the directory ``dir``."""

    dir: _DirRef
    name: bytes
    path: _Parts
    node: Node


@dataclass(slots=True)
class _Group:
    """Files written together by one worker: their chunks are loaded in one batch."""

    files: list[_FileJob] = field(default_factory=list)
    dirs: set[int] = field(default_factory=set)
    bytes: int = 0


@dataclass(slots=True)
class _LinkSet:
    """A hard-link group: its first member, and the members waiting for it to be written."""

    first: _Parts
    done: bool = False
    waiting: list[tuple[_DirRef, bytes, _Parts]] = field(default_factory=list)


class _Extractor:
    def __init__(
        self,
        repo: Repository,
        root_fd: int,
        *,
        force: bool,
        allow_special: bool,
        preserve_owner: bool,
        workers: int,
    ) -> None:
        self.repo = repo
        self.root_fd = root_fd
        self.force = force
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self.opts = Options(allow_special, is_root, preserve_owner and is_root)
        self.workers = max(1, workers)
        self.result = ExtractResult()
        self.live: set[_DirRef] = set()
        # hard-link group id -> its first member and the members waiting for it
        self.linksets: dict[bytes, _LinkSet] = {}
        self.group = _Group()
        self.inflight: deque[tuple[Future[ExtractResult], _Group]] = deque()

    # -- navigation ---------------------------------------------------------------------------

    def open_dir(self, parts: _Parts) -> int:
        """Open DEST/parts, component by component, never following a symlink."""
        fd = os.dup(self.root_fd)
        try:
            for i, name in enumerate(parts):
                fd = _open_sub(fd, name, parts[: i + 1], close_parent=True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def decode(self, data: bytes, tree_id: Digest, parts: _Parts) -> tuple[Node, ...]:
        return parse_tree(data, tree_id, where=show(parts), hint="; refusing to extract").nodes

    def make_room(self, dir_fd: int, name: bytes, parts: _Parts, *, is_dir: bool) -> bool:
        """Clear the way for ``name``; True when a directory to reuse is already there."""
        if not self.force:
            # The destination was empty and every directory in it was created by this walk:
            # nothing can be in the way (O_EXCL and mkdir refuse what a concurrent writer adds).
            return False
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if is_dir:
                return True
            raise UsageError(
                f"{show(parts)} is a directory in the destination but not in the image; "
                "remove it or restore into an empty directory"
            )
        os.unlink(name, dir_fd=dir_fd)
        return False

    # -- the walk -----------------------------------------------------------------------------

    def run(self, root_tree: Digest) -> None:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="chunkstore-extract")
        try:
            self.walk(root_tree, pool)
            self.submit(pool)
            while self.inflight:
                self.collect()
            if any(ls.waiting for ls in self.linksets.values()):  # pragma: no cover - defensive
                raise CorruptMetadata("a hard link's first member was never written")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            # Only after a failure: close what is still open, without finishing it.
            for ref in list(self.live):
                os.close(ref.fd)
            self.live.clear()

    def walk(self, root_tree: Digest, pool: ThreadPoolExecutor) -> None:
        """Depth first; each directory's subtrees are loaded together (one batched read)."""
        trees = _TreeCache(self.repo)
        trees.want([root_tree])
        root = _DirRef(self, os.dup(self.root_fd), (), None, None)
        # (parent, parts, node): directories created but not yet filled
        stack: list[tuple[_DirRef, _Parts, Node]] = []
        self.fill(root, root_tree, stack, trees, pool)
        while stack:
            parent, parts, node = stack.pop()
            assert node.tree is not None  # guaranteed for directory nodes
            fd = _open_sub(parent.fd, parts[-1], parts, close_parent=False)
            ref = _DirRef(self, fd, parts, node, parent)
            self.fill(ref, node.tree, stack, trees, pool)

    def fill(
        self,
        ref: _DirRef,
        tree_id: Digest,
        stack: list[tuple[_DirRef, _Parts, Node]],
        trees: _TreeCache,
        pool: ThreadPoolExecutor,
    ) -> None:
        """Create the entries of one directory; its subdirectories go on ``stack``."""
        try:
            subdirs: list[tuple[_DirRef, _Parts, Node]] = []
            for node in self.decode(trees.take(tree_id), tree_id, ref.parts):
                name = _check_name(node.name)
                path = (*ref.parts, name)
                if node.type == NodeType.DIRECTORY:
                    assert node.tree is not None  # guaranteed for directory nodes
                    if not self.make_room(ref.fd, name, path, is_dir=True):
                        os.mkdir(name, 0o700, dir_fd=ref.fd)
                    self.result.dirs += 1
                    ref.acquire()  # released when the subdirectory is finished
                    subdirs.append((ref, path, node))
                    continue
                self.make_room(ref.fd, name, path, is_dir=False)
                if node.type == NodeType.FILE:
                    self.file_entry(ref, name, path, node, pool)
                else:
                    self.entry(ref.fd, name, path, node)
            trees.want([node.tree for _, _, node in subdirs if node.tree is not None])
            stack.extend(reversed(subdirs))
        finally:
            ref.release()

    def file_entry(
        self, ref: _DirRef, name: bytes, path: _Parts, node: Node, pool: ThreadPoolExecutor
    ) -> None:
        if node.hardlink is not None:
            linkset = self.linksets.get(node.hardlink)
            if linkset is not None:
                if linkset.done:
                    self.link(ref.fd, name, path, linkset.first)
                else:
                    ref.acquire()  # released once the link exists
                    linkset.waiting.append((ref, name, path))
                return
            self.linksets[node.hardlink] = _LinkSet(path)
        if node.size >= _GROUP_BYTES or node.lists:
            self.submit(pool)  # keep the current group of small files apart
        group = self.group
        ref.acquire()
        group.files.append(_FileJob(ref, name, path, node))
        group.dirs.add(ref.fd)
        group.bytes += node.size
        if (
            group.bytes >= _GROUP_BYTES
            or node.lists
            or len(group.files) >= _GROUP_FILES
            or len(group.dirs) >= _GROUP_DIRS
        ):
            self.submit(pool)

    def submit(self, pool: ThreadPoolExecutor) -> None:
        """Hand the current group to a worker, first waiting while too many are in flight."""
        group, self.group = self.group, _Group()
        if not group.files:
            return
        while len(self.inflight) >= 2 * self.workers:
            self.collect()
        writer = _GroupWriter(self.repo, self.opts, group)
        self.inflight.append((pool.submit(writer.run), group))

    def collect(self) -> None:
        """Wait for the oldest group; then make the hard links that were waiting for it."""
        future, group = self.inflight[0]
        part = future.result()  # a worker's error is raised here
        self.inflight.popleft()
        self.result.merge(part)
        for job in group.files:
            if job.node.hardlink is None:
                continue
            linkset = self.linksets[job.node.hardlink]
            if linkset.first != job.path:
                continue
            linkset.done = True
            waiting, linkset.waiting = linkset.waiting, []
            for ref, name, path in waiting:
                try:
                    self.link(ref.fd, name, path, linkset.first)
                finally:
                    ref.release()
        for job in group.files:
            job.dir.release()

    def entry(self, fd: int, name: bytes, path: _Parts, node: Node) -> None:
        t = node.type
        if t == NodeType.SYMLINK:
            os.symlink(node.target, name, dir_fd=fd)
            self.result.symlinks += 1
            self.owner_and_time(fd, name, node)
            xattrs_by_path(fd, name, path, node, self.opts, self.result)
        elif t == NodeType.FIFO:
            os.mkfifo(name, restored_mode(path, node.mode, self.opts, self.result), dir_fd=fd)
            self.result.others += 1
            self.special_meta(fd, name, path, node)
        elif t in (NodeType.CHAR_DEVICE, NodeType.BLOCK_DEVICE):
            assert node.dev is not None
            kind = "character" if t == NodeType.CHAR_DEVICE else "block"
            if not (self.opts.allow_special and self.opts.is_root):
                need = "allow_special" if self.opts.is_root else "root and allow_special"
                self.result.skipped.append(
                    f"{show(path)}: {kind} device {node.dev[0]},{node.dev[1]} not created "
                    f"(needs {need})"
                )
                return
            fmt = stat.S_IFCHR if t == NodeType.CHAR_DEVICE else stat.S_IFBLK
            os.mknod(name, fmt | node.mode, os.makedev(*node.dev), dir_fd=fd)
            self.result.others += 1
            self.special_meta(fd, name, path, node)
        else:  # pragma: no cover - NodeType is closed; files and directories are handled above
            raise CorruptMetadata(f"{show(path)} has an unexpected node type {t!r}")

    def link(self, fd: int, name: bytes, path: _Parts, first: _Parts) -> None:
        src_fd = self.open_dir(first[:-1])
        try:
            os.link(first[-1], name, src_dir_fd=src_fd, dst_dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            raise UsageError(
                f"cannot hard-link {show(path)} to {show(first)}: {exc.strerror}"
            ) from None
        finally:
            os.close(src_fd)
        self.result.hardlinks += 1

    # -- metadata -----------------------------------------------------------------------------

    def owner_and_time(self, fd: int, name: bytes, node: Node) -> None:
        if self.opts.chown:
            os.chown(name, node.uid, node.gid, dir_fd=fd, follow_symlinks=False)
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=fd, follow_symlinks=False)

    def special_meta(self, fd: int, name: bytes, path: _Parts, node: Node) -> None:
        """Owner, mode, xattrs and mtime of a fifo or device node just created by name."""
        if self.opts.chown:
            os.chown(name, node.uid, node.gid, dir_fd=fd, follow_symlinks=False)
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):  # pragma: no cover - only a concurrent writer could do this
            raise UsageError(f"{show(path)} was replaced while it was being restored")
        os.chmod(name, restored_mode(path, node.mode, self.opts, self.result), dir_fd=fd)
        xattrs_by_path(fd, name, path, node, self.opts, self.result)
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=fd, follow_symlinks=False)

    def finish_dir(self, fd: int, parts: _Parts, node: Node) -> None:
        """A directory's own metadata, once everything inside it exists."""
        if self.opts.chown:
            os.fchown(fd, node.uid, node.gid)
        os.fchmod(fd, restored_mode(parts, node.mode, self.opts, self.result))
        xattrs_fd(fd, parts, node, self.opts, self.result)
        os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))


def _open_sub(fd: int, name: bytes, parts: _Parts, *, close_parent: bool) -> int:
    """Open the directory ``name`` under ``fd`` without following a symlink."""
    try:
        nxt = os.open(_check_name(name), _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        raise UsageError(
            f"cannot open {show(parts)} in the destination as a directory: {exc.strerror}"
        ) from None
    if close_parent:
        os.close(fd)
    return nxt


class _TreeCache:
    """Tree blobs loaded ahead of the walk, one batched read per directory's subtrees.

    Identical subtrees share one blob: it is kept until its last use.
    """

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.blobs: dict[Digest, bytes] = {}
        self.uses: dict[Digest, int] = {}

    def want(self, ids: list[Digest]) -> None:
        """Load the trees ``ids`` (each verified against its id), one use per occurrence."""
        missing = [i for i in ids if i not in self.blobs]
        if missing:
            self.blobs.update(self.repo.load_blobs(missing))
        for i in ids:
            self.uses[i] = self.uses.get(i, 0) + 1

    def take(self, tree_id: Digest) -> bytes:
        """A tree wanted earlier; forgotten after its last use."""
        data = self.blobs[tree_id]
        self.uses[tree_id] -= 1
        if not self.uses[tree_id]:
            del self.blobs[tree_id], self.uses[tree_id]
        return data


class _GroupWriter:
    """Writes one group of files (in a worker thread); returns what it did."""

    def __init__(self, repo: Repository, opts: Options, group: _Group) -> None:
        self.repo = repo
        self.opts = opts
        self.group = group
        self.result = ExtractResult()

    def run(self) -> ExtractResult:
        files = self.group.files
        if len(files) == 1 and (files[0].node.lists or files[0].node.size >= _GROUP_BYTES):
            job = files[0]
            node = job.node
            refs: Iterable[ChunkRef] = (
                read_chunk_lists(self.repo, StreamBody(node.size, node.lists))
                if node.lists
                else node.chunks
            )
            self.write(job, self.chunks(job, refs, None))
        else:
            ids = [ref.id for job in files for ref in job.node.chunks]
            got = dict(self.repo.load_blobs(ids)) if ids else {}
            for job in files:
                self.write(job, self.chunks(job, job.node.chunks, got))
        return self.result

    def chunks(
        self, job: _FileJob, refs: Iterable[ChunkRef], got: dict[Digest, bytes] | None
    ) -> Iterator[bytes]:
        """The file's verified chunks in order: from ``got``, or read in batches of 8 MiB."""
        return verified_chunks(
            self.repo,
            refs,
            size=job.node.size,
            what=show(job.path),
            listed_by="chunk list" if job.node.lists else "tree",
            sized_by="tree",
            loaded=got,
        )

    def write(self, job: _FileJob, pieces: Iterator[bytes]) -> None:
        node = job.node
        out = os.open(job.name, _FILE_FLAGS, 0o600, dir_fd=job.dir.fd)
        try:
            if node.sparse is None:
                for piece in pieces:
                    write_all(out, piece, None)
            else:
                write_sparse(out, node, pieces)
            if self.opts.chown:
                os.fchown(out, node.uid, node.gid)
            os.fchmod(out, restored_mode(job.path, node.mode, self.opts, self.result))
            xattrs_fd(out, job.path, node, self.opts, self.result)
            os.utime(out, ns=(node.mtime_ns, node.mtime_ns))
        finally:
            os.close(out)
        self.result.files += 1
        self.result.bytes += node.size


def extract_tree(
    repo: Repository,
    root_tree: Digest,
    dest: Path | str,
    *,
    force: bool = False,
    allow_special: bool = False,
    preserve_owner: bool = True,
    workers: int = DEFAULT_WORKERS,
) -> ExtractResult:
    """Extract the tree ``root_tree`` into the directory ``dest`` (created when missing).

    ``dest`` must be empty unless ``force``: then entries of the image replace files of the same
    name (never a directory by a non-directory) and other files stay. Device nodes are created
    only with ``allow_special`` when running as root; setuid/setgid bits are kept only with
    ``allow_special``; owners are set only as root with ``preserve_owner``. File content is
    read, verified and written by ``workers`` threads.
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
            workers=workers,
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
