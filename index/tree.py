"""Directory trees: one content-addressed ``META`` blob per directory, restic style.

A directory is stored as a *tree blob* listing its entries (nodes); a subdirectory is a node that
references the subdirectory's own tree blob by id. Because a tree's id depends only on its content,
a directory whose content did not change between two image tags encodes to the same bytes, gets the
same id and is stored once; a change deep in the tree only produces new tree blobs on the path from
the changed directory up to the root. ::

    {"kind": "tree", "version": 1, "data": {"nodes": [node, ...]}}

Nodes are sorted by name (bytewise) and names are unique. A node is a CBOR map; optional keys are
omitted when empty, so equal nodes always give equal bytes:

=============  ==============================================================================
``name``       bstr: one path component (non-empty, no ``/`` or NUL, not ``.`` or ``..``)
``type``       uint: 0 regular file, 1 directory, 2 symlink, 3 char device, 4 block device, 5 fifo
``mode``       uint <= 0o7777: permission bits plus setuid, setgid and sticky
``uid``/``gid``  uint
``mtime``      int: nanoseconds since the epoch (signed 64-bit)
``xattrs``     optional ``[[name bstr, value bstr], ...]`` sorted by name, names unique
``target``     symlink only, required: the link target (bstr, non-empty)
``dev``        char/block devices only, required: ``[major, minor]``
``size``       regular files only, required: bytes held by the chunks
``chunks``     regular files: ``[[ref, size > 0], ...]``, at most :data:`INLINE_CHUNKS` rows whose
               sizes sum to ``size``; or
``lists``      regular files: ``[ref, ...]`` naming chunk-list ``META`` blobs
               (:mod:`index.chunklist`) for bigger files. Writers inline iff the file has at most
               :data:`INLINE_CHUNKS` chunks; an empty file has neither key.
``hardlink``   regular files, optional: normalised path (relative to the image root) of the first
               member of the file's hard-link group; every member carries the same value
``sparse``     regular files, optional: ``[realsize, [[offset, length], ...]]`` (GNU sparse map):
               the chunks hold only the data segments, so the lengths sum to ``size``
``tree``       directories only, required: reference to the subdirectory's tree blob
=============  ==============================================================================

Every blob reference (chunks, lists, tree) is a tagged :class:`~index.ids.Digest` so reachability
walks find them without knowing the tree format.

:class:`Extents` maps byte offsets of a file to its chunks (binary search over cumulative sizes),
which is what a lazy reader needs to serve ``read(offset, length)``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import accumulate, pairwise
from typing import Any

from index import cbor
from index.chunklist import ChunkRef
from index.errors import LimitExceeded, Malformed
from index.ids import Digest

__all__ = [
    "INLINE_CHUNKS",
    "MAX_NODES",
    "MAX_TREE_SIZE",
    "TREE_VERSION",
    "Extents",
    "Node",
    "NodeType",
    "SparseMap",
    "Tree",
    "check_name",
    "check_path",
    "decode_tree",
    "encode_tree",
]

TREE_VERSION = 1
#: Most chunk rows stored inline in a file node; bigger files use chunk-list blobs.
INLINE_CHUNKS = 1024
#: Largest encoded tree blob accepted (checked before parsing).
MAX_TREE_SIZE = 64 * 1024 * 1024
#: Most nodes in one tree (checked before any node is built).
MAX_NODES = 1_000_000

_U64 = 1 << 64
_I64 = 1 << 63
_NODE_KEYS = frozenset(
    {
        "name",
        "type",
        "mode",
        "uid",
        "gid",
        "mtime",
        "xattrs",
        "target",
        "dev",
        "size",
        "chunks",
        "lists",
        "hardlink",
        "sparse",
        "tree",
    }
)
_REQUIRED_KEYS = ("name", "type", "mode", "uid", "gid", "mtime")


class NodeType(IntEnum):
    """The kind of a tree node (its CBOR ``type`` value)."""

    FILE = 0
    DIRECTORY = 1
    SYMLINK = 2
    CHAR_DEVICE = 3
    BLOCK_DEVICE = 4
    FIFO = 5


def _is_uint(v: Any, limit: int = _U64) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < limit


def _uint(v: Any, what: str, limit: int = _U64) -> int:
    if not _is_uint(v, limit):
        raise Malformed(f"{what} must be an unsigned integer below {limit}")
    return int(v)


def check_name(name: Any) -> bytes:
    """Validate one path component: non-empty bytes, no ``/`` or NUL, not ``.`` or ``..``."""
    if not isinstance(name, bytes):
        raise Malformed("node name must be a byte string")
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise Malformed(f"invalid node name {name!r:.80}")
    return name


def check_path(path: Any) -> bytes:
    """Validate a normalised relative path: components joined by single ``/`` (see check_name)."""
    if not isinstance(path, bytes) or not path:
        raise Malformed("path must be a non-empty byte string")
    for part in path.split(b"/"):
        try:
            check_name(part)
        except Malformed:
            raise Malformed(f"path {path!r:.80} is not normalised") from None
    return path


@dataclass(frozen=True, slots=True)
class SparseMap:
    """A GNU sparse map: the file's real size and its data segments ``(offset, length)``.

    Segments are in offset order, do not overlap and end at or before ``realsize``. The file's
    chunks hold only the segments' bytes, concatenated.
    """

    realsize: int
    segments: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        """Validate (raises :class:`Malformed`)."""
        _uint(self.realsize, "sparse realsize")
        if not isinstance(self.segments, tuple):
            raise Malformed("sparse segments must be a tuple")
        end = 0
        for seg in self.segments:
            if not (isinstance(seg, tuple) and len(seg) == 2):
                raise Malformed("sparse segment must be (offset, length)")
            off = _uint(seg[0], "sparse offset")
            length = _uint(seg[1], "sparse length")
            if off < end:
                raise Malformed("sparse segments overlap or are out of order")
            end = off + length
            if end > self.realsize:
                raise Malformed("sparse segment ends past the real size")

    @property
    def data_size(self) -> int:
        """Total bytes in data segments."""
        return sum(length for _, length in self.segments)

    def to_cbor(self) -> list[Any]:
        """``[realsize, [[offset, length], ...]]``."""
        return [self.realsize, [[o, n] for o, n in self.segments]]

    @classmethod
    def from_cbor(cls, value: Any) -> SparseMap:
        """Parse and validate."""
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], list)):
            raise Malformed("sparse must be [realsize, [[offset, length], ...]]")
        segs: list[tuple[int, int]] = []
        for seg in value[1]:
            if not (isinstance(seg, list) and len(seg) == 2):
                raise Malformed("sparse segment must be [offset, length]")
            segs.append((seg[0], seg[1]))
        return cls(value[0], tuple(segs))


@dataclass(frozen=True, slots=True)
class Node:
    """One directory entry. Construction validates every field (raises :class:`Malformed`)."""

    name: bytes
    type: NodeType
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    target: bytes = b""
    dev: tuple[int, int] | None = None
    size: int = 0
    chunks: tuple[ChunkRef, ...] = ()
    lists: tuple[Digest, ...] = ()
    hardlink: bytes | None = None
    sparse: SparseMap | None = None
    tree: Digest | None = None

    def __post_init__(self) -> None:
        """Validate the fields and the rules tying them to the node type."""
        check_name(self.name)
        if not _is_uint(self.type) or self.type not in NodeType._value2member_map_:
            raise Malformed(f"unknown node type {self.type!r:.20}")
        object.__setattr__(self, "type", NodeType(self.type))
        _uint(self.mode, "mode", 0o10000)
        _uint(self.uid, "uid")
        _uint(self.gid, "gid")
        if not (isinstance(self.mtime_ns, int) and not isinstance(self.mtime_ns, bool)):
            raise Malformed("mtime must be an integer")
        if not -_I64 <= self.mtime_ns < _I64:
            raise Malformed("mtime is outside the signed 64-bit range")
        self._check_xattrs()
        t = self.type
        # Type-specific fields: each must be present for its type and default for every other.
        if t == NodeType.SYMLINK:
            if not isinstance(self.target, bytes) or not self.target:
                raise Malformed("a symlink needs a non-empty byte-string target")
        elif self.target != b"":
            raise Malformed("only symlinks have a target")
        if t in (NodeType.CHAR_DEVICE, NodeType.BLOCK_DEVICE):
            dev = self.dev
            if not (isinstance(dev, tuple) and len(dev) == 2):
                raise Malformed("a device node needs dev = (major, minor)")
            _uint(dev[0], "device major")
            _uint(dev[1], "device minor")
        elif self.dev is not None:
            raise Malformed("only device nodes have dev")
        if t == NodeType.DIRECTORY:
            if not isinstance(self.tree, Digest):
                raise Malformed("a directory node needs a tree reference")
        elif self.tree is not None:
            raise Malformed("only directories have a tree")
        if t == NodeType.FILE:
            self._check_file()
        elif (
            self.size != 0
            or self.chunks
            or self.lists
            or self.hardlink is not None
            or self.sparse is not None
        ):
            raise Malformed("only regular files have size, chunks, lists, hardlink or sparse")

    def _check_xattrs(self) -> None:
        if not isinstance(self.xattrs, tuple):
            raise Malformed("xattrs must be a tuple of (name, value) pairs")
        prev: bytes | None = None
        for pair in self.xattrs:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise Malformed("xattr must be a (name, value) pair")
            name, value = pair
            if not isinstance(name, bytes) or not name or not isinstance(value, bytes):
                raise Malformed("xattr name must be non-empty bytes and its value bytes")
            if prev is not None and name <= prev:
                raise Malformed("xattrs must be sorted by name without duplicates")
            prev = name

    def _check_file(self) -> None:
        size = _uint(self.size, "size")
        if not isinstance(self.chunks, tuple) or not isinstance(self.lists, tuple):
            raise Malformed("chunks and lists must be tuples")
        if self.chunks and self.lists:
            raise Malformed("a file has either inline chunks or chunk lists, not both")
        if len(self.chunks) > INLINE_CHUNKS:
            raise Malformed(f"more than {INLINE_CHUNKS} inline chunks; use chunk lists")
        total = 0
        for ref in self.chunks:
            if not isinstance(ref, ChunkRef) or not isinstance(ref.id, Digest):
                raise Malformed("chunks must be ChunkRef values")
            total += _uint(ref.size, "chunk size")
            if ref.size == 0:
                raise Malformed("chunk size must be positive")
        if self.chunks and total != size:
            raise Malformed(f"chunk sizes sum to {total}, not the file size {size}")
        if not all(isinstance(x, Digest) for x in self.lists):
            raise Malformed("lists must be blob references")
        if size == 0 and (self.chunks or self.lists):
            raise Malformed("an empty file has no chunks or lists")
        if size > 0 and not (self.chunks or self.lists):
            raise Malformed("a non-empty file needs chunks or lists")
        if self.hardlink is not None:
            check_path(self.hardlink)
        if self.sparse is not None:
            if not isinstance(self.sparse, SparseMap):
                raise Malformed("sparse must be a SparseMap")
            if self.sparse.data_size != size:
                raise Malformed("sparse data segments do not add up to the file size")

    def to_cbor(self) -> dict[str, Any]:
        """The node's CBOR map, optional keys omitted when empty."""
        d: dict[str, Any] = {
            "name": self.name,
            "type": int(self.type),
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "mtime": self.mtime_ns,
        }
        if self.xattrs:
            d["xattrs"] = [[k, v] for k, v in self.xattrs]
        t = self.type
        if t == NodeType.SYMLINK:
            d["target"] = self.target
        elif t in (NodeType.CHAR_DEVICE, NodeType.BLOCK_DEVICE):
            assert self.dev is not None  # guaranteed by __post_init__
            d["dev"] = [self.dev[0], self.dev[1]]
        elif t == NodeType.DIRECTORY:
            d["tree"] = self.tree
        elif t == NodeType.FILE:
            d["size"] = self.size
            if self.chunks:
                d["chunks"] = [[r.id, r.size] for r in self.chunks]
            if self.lists:
                d["lists"] = list(self.lists)
            if self.hardlink is not None:
                d["hardlink"] = self.hardlink
            if self.sparse is not None:
                d["sparse"] = self.sparse.to_cbor()
        return d

    @classmethod
    def from_cbor(cls, value: Any) -> Node:
        """Parse and validate one node map (raises :class:`Malformed`)."""
        if not isinstance(value, dict):
            raise Malformed("node must be a map")
        keys = set(value)
        unknown = keys - _NODE_KEYS
        if unknown:
            raise Malformed(f"unknown node keys: {sorted(map(repr, unknown))}"[:200])
        missing = [k for k in _REQUIRED_KEYS if k not in keys]
        if missing:
            raise Malformed(f"node lacks {', '.join(missing)}")
        t = value["type"]
        if not _is_uint(t) or t not in NodeType._value2member_map_:
            raise Malformed(f"unknown node type {t!r:.20}")
        ntype = NodeType(t)
        # Keys that belong to another type are refused here; absent required ones in __post_init__.
        allowed = set(_REQUIRED_KEYS) | {"xattrs"}
        allowed |= {
            NodeType.FILE: {"size", "chunks", "lists", "hardlink", "sparse"},
            NodeType.DIRECTORY: {"tree"},
            NodeType.SYMLINK: {"target"},
            NodeType.CHAR_DEVICE: {"dev"},
            NodeType.BLOCK_DEVICE: {"dev"},
            NodeType.FIFO: set(),
        }[ntype]
        if keys - allowed:
            raise Malformed(f"keys {sorted(keys - allowed)} are not allowed on a {ntype.name}")
        if ntype == NodeType.FILE and "size" not in keys:
            raise Malformed("a regular file node needs a size")
        kwargs: dict[str, Any] = {}
        xattrs = value.get("xattrs")
        if xattrs is not None:
            if not isinstance(xattrs, list) or not xattrs:
                raise Malformed("xattrs must be a non-empty list when present")
            pairs = []
            for pair in xattrs:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise Malformed("xattr must be [name, value]")
                pairs.append((pair[0], pair[1]))
            kwargs["xattrs"] = tuple(pairs)
        if "target" in value:
            kwargs["target"] = value["target"]
        if "dev" in value:
            dev = value["dev"]
            if not (isinstance(dev, list) and len(dev) == 2):
                raise Malformed("dev must be [major, minor]")
            kwargs["dev"] = (dev[0], dev[1])
        if "size" in value:
            kwargs["size"] = value["size"]
        if "chunks" in value:
            rows = value["chunks"]
            if not isinstance(rows, list) or not rows:
                raise Malformed("chunks must be a non-empty list when present")
            if len(rows) > INLINE_CHUNKS:
                raise Malformed(f"more than {INLINE_CHUNKS} inline chunks")
            refs = []
            for row in rows:
                if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], Digest)):
                    raise Malformed("chunk row must be [ref, size]")
                refs.append(ChunkRef(row[0], row[1]))
            kwargs["chunks"] = tuple(refs)
        if "lists" in value:
            lists = value["lists"]
            if not isinstance(lists, list) or not lists:
                raise Malformed("lists must be a non-empty list when present")
            kwargs["lists"] = tuple(lists)
        if "hardlink" in value:
            kwargs["hardlink"] = value["hardlink"]
        if "sparse" in value:
            kwargs["sparse"] = SparseMap.from_cbor(value["sparse"])
        if "tree" in value:
            kwargs["tree"] = value["tree"]
        return cls(
            name=value["name"],
            type=ntype,
            mode=value["mode"],
            uid=value["uid"],
            gid=value["gid"],
            mtime_ns=value["mtime"],
            **kwargs,
        )


def _sort_key(node: Node) -> bytes:
    return node.name


@dataclass(frozen=True, slots=True)
class Tree:
    """A decoded directory: nodes sorted by name, names unique."""

    nodes: tuple[Node, ...]

    def __post_init__(self) -> None:
        """Require strictly ascending names."""
        if len(self.nodes) > MAX_NODES:
            raise LimitExceeded(f"tree of {len(self.nodes)} nodes exceeds {MAX_NODES}")
        prev: bytes | None = None
        for node in self.nodes:
            if not isinstance(node, Node):
                raise Malformed("tree nodes must be Node values")
            if prev is not None and node.name <= prev:
                raise Malformed("tree nodes must be sorted by name without duplicates")
            prev = node.name

    def lookup(self, name: bytes) -> Node | None:
        """The node called ``name``, by binary search, or None."""
        i = bisect.bisect_left(self.nodes, name, key=_sort_key)
        if i < len(self.nodes) and self.nodes[i].name == name:
            return self.nodes[i]
        return None

    def encode(self) -> bytes:
        """The canonical tree blob."""
        return encode_tree(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        """Nodes in name order."""
        return iter(self.nodes)

    def __len__(self) -> int:
        """Number of nodes."""
        return len(self.nodes)


def encode_tree(nodes: Iterable[Node]) -> bytes:
    """Encode a directory's nodes (any order) as a canonical tree blob; duplicates are refused."""
    ordered = sorted(nodes, key=_sort_key)
    if len(ordered) > MAX_NODES:
        raise LimitExceeded(f"tree of {len(ordered)} nodes exceeds {MAX_NODES}")
    for a, b in pairwise(ordered):
        if a.name == b.name:
            raise Malformed(f"duplicate node name {a.name!r:.80}")
    data = cbor.encode_envelope("tree", TREE_VERSION, {"nodes": [n.to_cbor() for n in ordered]})
    if len(data) > MAX_TREE_SIZE:
        raise LimitExceeded(f"tree blob of {len(data)} bytes exceeds {MAX_TREE_SIZE}")
    return data


def decode_tree(data: bytes) -> Tree:
    """Parse and validate a tree blob (raises Malformed, LimitExceeded or UnsupportedVersion)."""
    env = cbor.decode_envelope(
        data, kind="tree", versions=(TREE_VERSION, TREE_VERSION), max_size=MAX_TREE_SIZE
    )
    body = env.data
    if not isinstance(body, dict) or set(body) != {"nodes"}:
        raise Malformed("tree data must be exactly {'nodes': [...]}")
    rows = body["nodes"]
    if not isinstance(rows, list):
        raise Malformed("tree nodes must be a list")
    if len(rows) > MAX_NODES:
        raise LimitExceeded(f"tree of {len(rows)} nodes exceeds {MAX_NODES}")
    return Tree(tuple(Node.from_cbor(row) for row in rows))


class Extents:
    """Byte offsets of a chunked file mapped to its chunks (bisect over cumulative sizes)."""

    __slots__ = ("_ends", "_sizes")

    def __init__(self, refs: Sequence[ChunkRef]) -> None:
        """Index ``refs`` in order; chunk sizes must be non-negative."""
        sizes = [r.size for r in refs]
        if any(s < 0 for s in sizes):
            raise ValueError("chunk sizes must be non-negative")
        self._sizes = sizes
        self._ends = list(accumulate(sizes))

    @property
    def size(self) -> int:
        """Total bytes."""
        return self._ends[-1] if self._ends else 0

    def __len__(self) -> int:
        """Number of chunks."""
        return len(self._sizes)

    def start(self, index: int) -> int:
        """Offset of the first byte of chunk ``index``."""
        return self._ends[index] - self._sizes[index]

    def locate(self, offset: int) -> int:
        """Index of the chunk holding byte ``offset`` (ValueError outside ``[0, size)``)."""
        if not 0 <= offset < self.size:
            raise ValueError(f"offset {offset} outside [0, {self.size})")
        return bisect.bisect_right(self._ends, offset)

    def span(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """``(chunk index, offset in chunk, bytes)`` pieces covering a read, in order.

        The read is clipped at end of file (a read at or past it returns ``[]``), like ``read(2)``.
        """
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        end = min(offset + length, self.size)
        out: list[tuple[int, int, int]] = []
        if offset >= end:
            return out
        i = self.locate(offset)
        pos = offset
        while pos < end:
            start = self._ends[i] - self._sizes[i]
            n = min(self._ends[i], end) - pos
            if n > 0:
                out.append((i, pos - start, n))
            pos += n
            i += 1
        return out
