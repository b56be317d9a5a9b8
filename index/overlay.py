"""Merging OCI image layers into one root, then emitting one tree blob per directory.

An image is a stack of layer tarballs; the container sees their union. The rules (OCI image-spec
``layer.md``), applied layer by layer:

* Entries apply in tar order; a later entry replaces an earlier one with the same path. A
  non-directory replacing a directory removes the subtree; a directory replacing a directory keeps
  the children and takes the new metadata.
* A whiteout file ``dir/.wh.NAME`` deletes ``dir/NAME`` (and its subtree) from *lower* layers and
  is not itself shown. ``dir/.wh..wh..opq`` makes ``dir`` opaque: everything lower layers put under
  it is removed, entries of the same layer stay. Whiteouts never hide entries of their own layer,
  so each layer's whiteouts are applied first, then its other entries. Other ``.wh..wh.`` names
  (AUFS metadata) are ignored.
* An entry that only *removes* (``LayerEntry.removes``: what docker and containerd do with a
  PAX global header, whose name they remove like any existing path before "creating" it) deletes
  what its path names, in tar order, entries of its own layer included.
* Parent directories missing from a tar are created implicitly (mode 0o755, uid/gid 0, mtime 0).
  A path whose parent exists as a non-directory (for instance a symlink) is refused (or, with
  ``on_refused``, left out of the view: see :meth:`Overlay.apply_layer`).
* A hard link takes its target's node (content and metadata: they share an inode); both carry
  ``hardlink`` = the group id, the normalised path of the group's first member. When the tree is
  built, groups left with one member lose the field, and a group whose first member was removed is
  renamed after its smallest remaining path, so the output depends only on the merged content.

Paths are normalised the way tar readers see them: leading ``./`` and ``/`` stripped, repeated
``/`` collapsed, a trailing ``/`` dropped, ``.`` components dropped; ``..`` components are refused.

:func:`build_trees` then encodes every directory bottom-up (iteratively, no recursion) with
:func:`index.tree.encode_tree` and hands each blob to a ``save`` callback that stores it and
returns its id; unchanged directories give identical blobs, so they deduplicate across images.
Everything is in memory; an image has at most a few hundred thousand entries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from index.chunklist import ChunkRef
from index.errors import Malformed
from index.ids import Digest
from index.tree import Node, NodeType, SparseMap, check_name, encode_tree

__all__ = [
    "OPAQUE",
    "WHITEOUT_PREFIX",
    "LayerEntry",
    "MergedDir",
    "Overlay",
    "OverlayStats",
    "build_trees",
    "normalize_path",
]

#: Name prefix of a whiteout file.
WHITEOUT_PREFIX = b".wh."
#: Name of the opaque-directory marker.
OPAQUE = b".wh..wh..opq"
_META_PREFIX = b".wh..wh."
# Directory nodes are kept with a placeholder tree id until build_trees knows the real one.
_PLACEHOLDER = Digest("sha256", bytes(32))
_IMPLICIT_NAME = b"_"


@dataclass(frozen=True, slots=True)
class LayerEntry:
    """One tar entry of a layer, already chunked.

    ``path`` is as found in the tar. For a hard link set ``is_hardlink`` and ``link_target`` (a path
    in the image); every other field of a hard-link entry is ignored. ``mode`` holds permission
    bits only (<= 0o7777).
    """

    path: bytes
    type: NodeType = NodeType.FILE
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    target: bytes = b""
    dev: tuple[int, int] | None = None
    size: int = 0
    chunks: tuple[ChunkRef, ...] = ()
    lists: tuple[Digest, ...] = ()
    sparse: SparseMap | None = None
    is_hardlink: bool = False
    link_target: bytes = b""
    #: Removes what ``path`` names (creating its missing parents) and adds nothing.
    removes: bool = False


@dataclass(slots=True)
class MergedDir:
    """A directory of the merged image: its metadata and its children by name."""

    meta: Node
    children: dict[bytes, MergedDir | Node] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OverlayStats:
    """Counts over the merged image (the root counts as a directory; a hard-link group's bytes
    count once)."""

    files: int
    dirs: int
    symlinks: int
    others: int
    bytes: int


def _split(path: bytes) -> tuple[bytes, ...]:
    if not isinstance(path, bytes):
        raise Malformed("layer entry path must be bytes")
    if not path:
        raise Malformed("empty path in layer")
    if b"\0" in path:
        raise Malformed(f"path {path!r:.80} contains NUL")
    parts = tuple(p for p in path.split(b"/") if p not in (b"", b"."))
    if b".." in parts:
        raise Malformed(f"path {path!r:.80} has a '..' component")
    return parts


def _checked_parts(path: bytes) -> tuple[bytes, ...]:
    """The components of a layer entry's path, whiteout names checked."""
    parts = _split(path)
    for p in parts[:-1]:
        if _is_whiteout(p):
            raise Malformed(f"whiteout name {p!r:.80} used as a directory")
    if parts and parts[-1] == WHITEOUT_PREFIX:
        raise Malformed(f"whiteout {b'/'.join(parts)!r:.80} names nothing")
    return parts


def normalize_path(path: bytes) -> bytes:
    """Normalise a tar path (see the module docstring); the root (``.``, ``./``, ``/``) is ``b""``."""
    return b"/".join(_split(path))


def _implicit_dir() -> MergedDir:
    return MergedDir(Node(_IMPLICIT_NAME, NodeType.DIRECTORY, 0o755, 0, 0, 0, tree=_PLACEHOLDER))


def _is_whiteout(name: bytes) -> bool:
    return name.startswith(WHITEOUT_PREFIX)


class Overlay:
    """The merged root of an image, built by applying layers bottom to top.

    After :meth:`apply_layer` raised :class:`Malformed` the overlay's state is unspecified; an
    entry left out through ``on_refused`` may have created implicit parent directories only.
    """

    def __init__(self) -> None:
        """Start from an empty root directory with implicit metadata."""
        self.root = _implicit_dir()

    # -- navigation --------------------------------------------------------------------------

    def _find_dir(self, parts: tuple[bytes, ...]) -> MergedDir | None:
        d = self.root
        for p in parts:
            child = d.children.get(p)
            if not isinstance(child, MergedDir):
                return None
            d = child
        return d

    def _lookup(self, parts: tuple[bytes, ...]) -> MergedDir | Node | None:
        if not parts:
            return self.root
        parent = self._find_dir(parts[:-1])
        return None if parent is None else parent.children.get(parts[-1])

    def _ensure_dir(self, parts: tuple[bytes, ...]) -> MergedDir:
        d = self.root
        for i, p in enumerate(parts):
            child = d.children.get(p)
            if child is None:
                child = d.children[p] = _implicit_dir()
            elif not isinstance(child, MergedDir):
                where = b"/".join(parts[: i + 1])
                raise Malformed(
                    f"{where!r:.80} is a {child.type.name.lower()}, not a directory, "
                    "but a layer entry lies below it"
                )
            d = child
        return d

    # -- layers -------------------------------------------------------------------------------

    def apply_layer(
        self,
        entries: Iterable[LayerEntry],
        on_refused: Callable[[LayerEntry, Malformed], None] | None = None,
    ) -> None:
        """Apply one layer: its whiteouts against the lower layers, then its entries in order.

        An entry the merged view cannot hold (a bad path, a hard link to nothing, a path below a
        non-directory, an invalid field) raises :class:`Malformed`; with ``on_refused`` it is
        left out instead and handed to ``on_refused`` with the reason, and the layer goes on.
        """

        def refuse(e: LayerEntry, exc: Malformed) -> None:
            if on_refused is None:
                raise exc
            on_refused(e, exc)

        items: list[tuple[tuple[bytes, ...], LayerEntry]] = []
        for e in entries:
            try:
                items.append((_checked_parts(e.path), e))
            except Malformed as exc:
                refuse(e, exc)
        # Pass 1: whiteouts, which only ever see lower layers.
        for parts, _ in items:
            if not parts or not _is_whiteout(parts[-1]):
                continue
            name = parts[-1]
            d = self._find_dir(parts[:-1])
            if d is None:
                continue
            if name == OPAQUE:
                d.children.clear()
            elif not name.startswith(_META_PREFIX):
                d.children.pop(name[len(WHITEOUT_PREFIX) :], None)
        # Pass 2: everything else, in order.
        for parts, e in items:
            try:
                if parts and _is_whiteout(parts[-1]):
                    self._ensure_dir(parts[:-1])
                else:
                    self._add(parts, e)
            except Malformed as exc:
                refuse(e, exc)

    def _add(self, parts: tuple[bytes, ...], e: LayerEntry) -> None:
        if e.removes:
            if parts:
                self._ensure_dir(parts[:-1]).children.pop(parts[-1], None)
            return
        if e.is_hardlink:
            if not parts:
                raise Malformed("the root cannot be a hard link")
            tparts = _split(e.link_target)
            tpath = b"/".join(tparts)
            target = self._lookup(tparts)
            if target is None:
                raise Malformed(
                    f"hard link {b'/'.join(parts)!r:.80} points to {tpath!r:.80}, "
                    "which does not exist"
                )
            if isinstance(target, MergedDir):
                raise Malformed(f"hard link to the directory {tpath!r:.80}")
            node = target
            if node.type == NodeType.FILE:
                group = node.hardlink if node.hardlink is not None else tpath
                node = dataclasses.replace(node, hardlink=group)
                self._lookup_parent(tparts).children[tparts[-1]] = dataclasses.replace(
                    target, hardlink=group
                )
            self._put(parts, dataclasses.replace(node, name=parts[-1]))
            return
        name = parts[-1] if parts else _IMPLICIT_NAME
        if e.type == NodeType.DIRECTORY:
            meta = Node(
                name,
                NodeType.DIRECTORY,
                e.mode,
                e.uid,
                e.gid,
                e.mtime_ns,
                e.xattrs,
                tree=_PLACEHOLDER,
            )
            if not parts:
                self.root.meta = meta
                return
            parent = self._ensure_dir(parts[:-1])
            existing = parent.children.get(name)
            if isinstance(existing, MergedDir):
                existing.meta = meta
            else:
                parent.children[name] = MergedDir(meta)
            return
        if not parts:
            raise Malformed("the root must be a directory")
        node = Node(
            name,
            e.type,
            e.mode,
            e.uid,
            e.gid,
            e.mtime_ns,
            e.xattrs,
            target=e.target,
            dev=e.dev,
            size=e.size,
            chunks=e.chunks,
            lists=e.lists,
            sparse=e.sparse,
        )
        self._put(parts, node)

    def _lookup_parent(self, parts: tuple[bytes, ...]) -> MergedDir:
        d = self._find_dir(parts[:-1])
        if d is None:  # pragma: no cover - callers looked the path up first
            raise Malformed("parent directory vanished")
        return d

    def _put(self, parts: tuple[bytes, ...], node: Node) -> None:
        self._ensure_dir(parts[:-1]).children[parts[-1]] = node

    # -- output -------------------------------------------------------------------------------

    def build_trees(self, save: Callable[[bytes], Digest]) -> Digest:
        """Encode and save every directory's tree blob; return the root tree id."""
        return build_trees(self.root, save)

    def stats(self) -> OverlayStats:
        """Counts of files, directories, symlinks, other nodes, and file bytes."""
        files = dirs = symlinks = others = total = 0
        groups: set[Node] = set()
        stack = [self.root]
        while stack:
            d = stack.pop()
            dirs += 1
            for child in d.children.values():
                if isinstance(child, MergedDir):
                    stack.append(child)
                elif child.type == NodeType.FILE:
                    files += 1
                    if child.hardlink is None:
                        total += child.size
                    elif (key := _group_key(child)) not in groups:
                        total += child.size
                        groups.add(key)
                elif child.type == NodeType.SYMLINK:
                    symlinks += 1
                else:
                    others += 1
        return OverlayStats(files, dirs, symlinks, others, total)


def _group_key(node: Node) -> Node:
    # Members of one hard-link group are the same node under different names. Keying by the whole
    # node keeps apart two groups that happen to carry the same id (the first member was replaced
    # and the new file at that path was linked again).
    return dataclasses.replace(node, name=_IMPLICIT_NAME)


def _hardlink_groups(root: MergedDir) -> dict[Node, bytes | None]:
    """Map each hard-link group under ``root`` to its canonical id (None: fewer than 2 members)."""
    members: dict[Node, list[bytes]] = {}
    stack: list[tuple[MergedDir, bytes]] = [(root, b"")]
    while stack:
        d, prefix = stack.pop()
        for name, child in d.children.items():
            path = prefix + name
            if isinstance(child, MergedDir):
                stack.append((child, path + b"/"))
            elif child.hardlink is not None:
                members.setdefault(_group_key(child), []).append(path)
    out: dict[Node, bytes | None] = {}
    for key, paths in members.items():
        if len(paths) < 2:
            out[key] = None
        elif key.hardlink in paths:
            out[key] = key.hardlink
        else:
            out[key] = min(paths)
    return out


def build_trees(root: MergedDir, save: Callable[[bytes], Digest]) -> Digest:
    """Encode every directory under ``root`` bottom-up, ``save`` each tree blob, return the root's id.

    Children are saved before their parents; iteration uses an explicit stack, so depth is only
    bounded by memory.
    """
    groups = _hardlink_groups(root)
    ids: dict[int, Digest] = {}
    # Post-order: a directory is pushed once unexpanded, then again (expanded) above its children.
    stack: list[tuple[MergedDir, bool]] = [(root, False)]
    while stack:
        d, expanded = stack.pop()
        if not expanded:
            stack.append((d, True))
            stack.extend((c, False) for c in d.children.values() if isinstance(c, MergedDir))
            continue
        nodes: list[Node] = []
        for name, child in d.children.items():
            if isinstance(child, MergedDir):
                tree_id = ids.pop(id(child))
                nodes.append(dataclasses.replace(child.meta, name=check_name(name), tree=tree_id))
            elif child.hardlink is not None:
                gid = groups[_group_key(child)]
                nodes.append(
                    child if gid == child.hardlink else dataclasses.replace(child, hardlink=gid)
                )
            else:
                nodes.append(child)
        ids[id(d)] = save(encode_tree(nodes))
    return ids[id(root)]
