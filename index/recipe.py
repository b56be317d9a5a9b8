"""Layer recipes: everything needed to rebuild an uncompressed layer tar bit for bit.

A layer tar is a sequence of *raw* bytes (header blocks of every kind, PAX and GNU extension data,
padding, end-of-archive blocks, trailing bytes) and *content* (the data of regular files). The recipe
keeps the raw bytes verbatim and the content as chunk references, as a list of operations:

    [0, bstr]                   raw bytes, at most MAX_RAW_OP bytes per operation
    [1, size, [[ref, n], ...]]  content of ``size`` bytes: its chunks inline (at most 1024)
    [2, size, [ref, ...]]       content whose chunk list lives in chunk-list blobs (index/chunklist)

Operations are grouped into *part* blobs ``{"kind": "recipe-part", "version": 1, "data": [op...]}``.
A part ends after an operation whose encoding hashes to a value below a threshold (about one in 64)
once the part holds PART_MIN bytes, or when it reaches PART_MAX bytes: boundaries depend on content,
so a layer rebuilt with a few changed files shares most parts with the old one.

The recipe root ``{"kind": "layer-recipe", "version": 1, "data": {"diff_id": bstr 32,
"parts": [ref, ...], "size": uint}}`` names the parts in order. Rebuilding means concatenating the
operations' bytes; the result's SHA-256 must equal ``diff_id``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from index import cbor
from index.chunklist import ChunkRef
from index.errors import Malformed
from index.ids import Digest

__all__ = [
    "INLINE_CHUNKS",
    "MAX_RAW_OP",
    "PART_MAX",
    "PART_MIN",
    "RECIPE_VERSION",
    "Content",
    "ContentLists",
    "Raw",
    "RecipeBuilder",
    "RecipeRoot",
    "decode_part",
]

RECIPE_VERSION = 1
MAX_RAW_OP = 64 * 1024
INLINE_CHUNKS = 1024
PART_MIN = 16 * 1024
PART_MAX = 256 * 1024
_MAX_PART_SIZE = 4 * PART_MAX + MAX_RAW_OP
#: Largest layer-recipe root accepted (its part list).
_MAX_ROOT_SIZE = 16 * 1024 * 1024
_CUT_BELOW = 4  # first hash byte below this ends a part: 4/256 = 1 in 64


@dataclass(frozen=True, slots=True)
class Raw:
    """Verbatim bytes."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Content:
    """File content given by its chunks."""

    size: int
    chunks: tuple[ChunkRef, ...]


@dataclass(frozen=True, slots=True)
class ContentLists:
    """File content given by chunk-list blobs (large files)."""

    size: int
    lists: tuple[Digest, ...]


Op = Raw | Content | ContentLists


def _op_cbor(op: Op) -> list[Any]:
    if isinstance(op, Raw):
        return [0, op.data]
    if isinstance(op, Content):
        return [1, op.size, [[c.id, c.size] for c in op.chunks]]
    return [2, op.size, list(op.lists)]


def _head(major: int, n: int) -> bytes:
    # Shortest-form CBOR head, as canonical encoding requires.
    if n < 24:
        return bytes([major << 5 | n])
    if n < 1 << 8:
        return bytes([major << 5 | 24, n])
    if n < 1 << 16:
        return bytes([major << 5 | 25]) + n.to_bytes(2, "big")
    if n < 1 << 32:
        return bytes([major << 5 | 26]) + n.to_bytes(4, "big")
    return bytes([major << 5 | 27]) + n.to_bytes(8, "big")


_REF_HEAD = _head(6, cbor.REF_TAG) + _head(2, 33)
_ALG = {"sha256": b"\x01", "hmac-sha256": b"\x02"}


def _ref(d: Digest) -> bytes:
    return _REF_HEAD + _ALG[d.algorithm] + d.raw


def _encode_op(op: Op) -> bytes:
    """Canonical CBOR of one operation, written directly for the three fixed shapes.

    Equal to ``cbor.encode(_op_cbor(op))`` (a test checks it); much cheaper on the ingest path,
    where every file of every layer produces one operation.
    """
    if isinstance(op, Raw):
        return b"\x82\x00" + _head(2, len(op.data)) + op.data
    if isinstance(op, Content):
        rows = b"".join(b"\x82" + _ref(c.id) + _head(0, c.size) for c in op.chunks)
        return b"\x83\x01" + _head(0, op.size) + _head(4, len(op.chunks)) + rows
    refs = b"".join(_ref(d) for d in op.lists)
    return b"\x83\x02" + _head(0, op.size) + _head(4, len(op.lists)) + refs


_PART_TAIL = (
    cbor.encode("kind")
    + cbor.encode("recipe-part")
    + cbor.encode("version")
    + _head(0, RECIPE_VERSION)
)


def _encode_part(encoded_ops: list[bytes]) -> bytes:
    """Canonical CBOR envelope of a part from its already encoded operations.

    Map keys in canonical order: "data", "kind", "version".
    """
    return (
        b"\xa3"
        + cbor.encode("data")
        + _head(4, len(encoded_ops))
        + b"".join(encoded_ops)
        + _PART_TAIL
    )


def _uint(v: object, what: str) -> int:
    if type(v) is not int or v < 0:
        raise Malformed(f"recipe {what} is not an unsigned integer")
    return v


def _op_from(value: object) -> Op:
    if not isinstance(value, list) or not value:
        raise Malformed("recipe operation is not a list")
    kind = value[0]
    if kind == 0 and len(value) == 2 and isinstance(value[1], bytes):
        if not value[1] or len(value[1]) > MAX_RAW_OP:
            raise Malformed("recipe raw operation is empty or too large")
        return Raw(value[1])
    if kind in (1, 2) and len(value) == 3 and isinstance(value[2], list):
        size = _uint(value[1], "content size")
        if kind == 1:
            rows = value[2]
            if len(rows) > INLINE_CHUNKS:
                raise Malformed("recipe content has too many inline chunks")
            chunks = []
            for row in rows:
                if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], Digest)):
                    raise Malformed("recipe chunk row is malformed")
                n = _uint(row[1], "chunk size")
                if n == 0:
                    raise Malformed("recipe chunk size is zero")
                chunks.append(ChunkRef(row[0], n))
            if sum(c.size for c in chunks) != size:
                raise Malformed("recipe chunk sizes do not add up to the content size")
            return Content(size, tuple(chunks))
        if not value[2] or not all(isinstance(x, Digest) for x in value[2]):
            raise Malformed("recipe chunk-list references are malformed")
        return ContentLists(size, tuple(value[2]))
    raise Malformed("unknown recipe operation")


def decode_part(data: bytes) -> list[Op]:
    """Parse one recipe part blob."""
    env = cbor.decode_envelope(
        data, kind="recipe-part", versions=(RECIPE_VERSION, RECIPE_VERSION), max_size=_MAX_PART_SIZE
    )
    if not isinstance(env.data, list) or not env.data:
        raise Malformed("recipe part is not a non-empty list")
    return [_op_from(v) for v in env.data]


@dataclass(frozen=True, slots=True)
class RecipeRoot:
    """The recipe of one layer: its parts, total size and diff_id."""

    size: int
    diff_id: Digest
    parts: tuple[Digest, ...]

    def encode(self) -> bytes:
        """Canonical CBOR envelope."""
        return cbor.encode_envelope(
            "layer-recipe",
            RECIPE_VERSION,
            {"diff_id": self.diff_id.raw, "parts": list(self.parts), "size": self.size},
        )

    @classmethod
    def decode(cls, data: bytes) -> RecipeRoot:
        """Parse and validate."""
        env = cbor.decode_envelope(
            data,
            kind="layer-recipe",
            versions=(RECIPE_VERSION, RECIPE_VERSION),
            max_size=_MAX_ROOT_SIZE,
        )
        d = env.data
        if not isinstance(d, dict) or set(d) != {"diff_id", "parts", "size"}:
            raise Malformed("layer recipe fields are not the expected set")
        if not isinstance(d["diff_id"], bytes) or len(d["diff_id"]) != 32:
            raise Malformed("layer recipe diff_id is not 32 bytes")
        parts = d["parts"]
        if not isinstance(parts, list) or not all(isinstance(p, Digest) for p in parts):
            raise Malformed("layer recipe parts are not references")
        return cls(_uint(d["size"], "size"), Digest("sha256", d["diff_id"]), tuple(parts))


class RecipeBuilder:
    """Collects operations in order and cuts them into part blobs through ``save``.

    ``save(part_bytes) -> Digest`` stores one part (as a metadata blob) and returns its id.
    """

    def __init__(self, save: Callable[[bytes], Digest]) -> None:
        """Start an empty recipe."""
        self._save = save
        self._ops: list[bytes] = []  # encoded operations of the current part
        self._part_size = 0
        self._parts: list[Digest] = []
        self._raw = bytearray()
        self.size = 0

    def raw(self, data: bytes) -> None:
        """Append verbatim bytes (merged with neighbouring raw bytes)."""
        self._raw += data
        self.size += len(data)
        while len(self._raw) >= MAX_RAW_OP:
            self._push(Raw(bytes(self._raw[:MAX_RAW_OP])))
            del self._raw[:MAX_RAW_OP]

    def content(self, op: Content | ContentLists) -> None:
        """Append file content given by chunks or chunk lists."""
        self._flush_raw()
        self.size += op.size
        self._push(op)

    def _flush_raw(self) -> None:
        if self._raw:
            self._push(Raw(bytes(self._raw)))
            self._raw.clear()

    def _push(self, op: Op) -> None:
        encoded = _encode_op(op)
        self._ops.append(encoded)
        self._part_size += len(encoded)
        cut = hashlib.sha256(encoded).digest()[0] < _CUT_BELOW and self._part_size >= PART_MIN
        if cut or self._part_size >= PART_MAX:
            self._cut()

    def _cut(self) -> None:
        if self._ops:
            self._parts.append(self._save(_encode_part(self._ops)))
            self._ops, self._part_size = [], 0

    def finish(self, diff_id: Digest) -> RecipeRoot:
        """Store the last part and return the root (to be stored by the caller)."""
        self._flush_raw()
        self._cut()
        return RecipeRoot(self.size, diff_id, tuple(self._parts))
