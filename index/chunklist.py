"""Byte streams as lists of chunks.

A stream is stored as content chunks (``DATA`` blobs) plus one or more chunk-list ``META`` blobs::

    {"kind": "chunk-list", "version": 1, "data": [[ref, size], ...]}    at most MAX_ENTRIES rows

and a record body ``{"size": uint, "lists": [ref, ...]}`` naming the lists in order. Keeping lists in
bounded blobs keeps every metadata object small whatever the stream size, and lets equal runs of
chunks deduplicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from index import cbor
from index.errors import Malformed
from index.ids import Digest

__all__ = [
    "CHUNK_LIST_VERSION",
    "MAX_ENTRIES",
    "ChunkRef",
    "StreamBody",
    "decode_chunk_list",
    "encode_chunk_list",
]

CHUNK_LIST_VERSION = 1
MAX_ENTRIES = 8192
_MAX_LIST_SIZE = MAX_ENTRIES * 64 + 64


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk of a stream: its blob id and plaintext size."""

    id: Digest
    size: int


def encode_chunk_list(refs: list[ChunkRef]) -> bytes:
    """Canonical CBOR of one chunk list (at most :data:`MAX_ENTRIES`)."""
    if len(refs) > MAX_ENTRIES:
        raise Malformed(f"chunk list of {len(refs)} entries exceeds {MAX_ENTRIES}")
    return cbor.encode_envelope("chunk-list", CHUNK_LIST_VERSION, [[r.id, r.size] for r in refs])


def decode_chunk_list(data: bytes) -> list[ChunkRef]:
    """Parse and validate one chunk list."""
    env = cbor.decode_envelope(
        data,
        kind="chunk-list",
        versions=(CHUNK_LIST_VERSION, CHUNK_LIST_VERSION),
        max_size=_MAX_LIST_SIZE,
    )
    rows = env.data
    if not isinstance(rows, list) or len(rows) > MAX_ENTRIES:
        raise Malformed("chunk list is not a list of at most MAX_ENTRIES rows")
    out: list[ChunkRef] = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], Digest)):
            raise Malformed("chunk list row is malformed")
        size = row[1]
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise Malformed("chunk size must be a positive integer")
        out.append(ChunkRef(row[0], size))
    return out


@dataclass(frozen=True, slots=True)
class StreamBody:
    """A ``stream`` record body: total size and chunk-list blob ids in order."""

    size: int
    lists: tuple[Digest, ...]

    def to_cbor(self) -> dict[str, Any]:
        """The record body value."""
        return {"size": self.size, "lists": list(self.lists)}

    @classmethod
    def from_cbor(cls, value: Any) -> StreamBody:
        """Validate a record body."""
        if not isinstance(value, dict) or set(value) != {"size", "lists"}:
            raise Malformed("stream body must have exactly 'size' and 'lists'")
        size, lists = value["size"], value["lists"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise Malformed("stream size must be an unsigned integer")
        if not isinstance(lists, list) or not all(isinstance(x, Digest) for x in lists):
            raise Malformed("stream lists must be blob references")
        return cls(size, tuple(lists))
