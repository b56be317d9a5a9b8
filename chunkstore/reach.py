"""Reachability: every blob a set of records needs, found by walking metadata blobs.

Every reference inside a record body or a ``META`` blob is a tagged CBOR reference (index.cbor), so
the walk needs no knowledge of trees, recipes or chunk lists. It is iterative with a seen-set: shared
subtrees are visited once (time linear in unique blobs) and a reference cycle cannot loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from chunkstore.blob import BlobType, Location
from chunkstore.errors import ChunkstoreError
from index import cbor
from index.errors import FormatError
from index.ids import Digest

__all__ = ["MAX_META_SIZE", "Reachable", "walk"]

#: Largest metadata blob plaintext decoded during a walk.
MAX_META_SIZE = 64 * 1024 * 1024


class Reachable:
    """Result of a walk: blobs found (with type) and blobs referenced but absent from the index."""

    def __init__(self) -> None:
        """Empty result."""
        self.blobs: dict[Digest, BlobType] = {}
        self.missing: dict[Digest, str] = {}
        self.damaged: dict[Digest, str] = {}


def walk(
    roots: Iterable[tuple[str, object]],
    lookup: Callable[[Digest], Location | None],
    load_meta: Callable[[Digest], bytes],
) -> Reachable:
    """Walk from ``(label, record body)`` roots; ``label`` names the record in reports."""
    result = Reachable()
    stack: list[tuple[Digest, str]] = []
    for label, body in roots:
        stack.extend((ref, label) for ref in cbor.iter_refs(body))
    while stack:
        blob_id, label = stack.pop()
        if blob_id in result.blobs or blob_id in result.missing:
            continue
        loc = lookup(blob_id)
        if loc is None:
            result.missing[blob_id] = label
            continue
        result.blobs[blob_id] = loc.entry.type
        if loc.entry.type is not BlobType.META:
            continue
        try:
            value = cbor.decode(load_meta(blob_id), max_size=MAX_META_SIZE)
        except (FormatError, ChunkstoreError) as exc:
            result.damaged[blob_id] = f"{label}: {exc}"
            continue
        stack.extend((ref, label) for ref in cbor.iter_refs(value))
    return result
