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
    """Result of a walk: blobs found, blobs referenced but absent, metadata that did not load."""

    def __init__(self) -> None:
        """Empty result."""
        self.blobs: dict[tuple[BlobType, Digest], Location] = {}
        self.missing: dict[Digest, str] = {}
        self.damaged: dict[Digest, str] = {}

    def used(self, blob_type: BlobType, blob_id: Digest) -> bool:
        """Whether the walk reached that blob."""
        return (blob_type, blob_id) in self.blobs


def walk(
    roots: Iterable[tuple[str, object]],
    locations: Callable[[Digest], list[Location]],
    load_meta: Callable[[Location], bytes],
    load_many: Callable[[list[Location]], dict[Digest, bytes]] | None = None,
) -> Reachable:
    """Walk from ``(label, record body)`` roots; ``label`` names the record in reports.

    ``locations(id)`` lists every stored copy of an id (a data chunk and a metadata blob may share
    one), first the preferred one. The first copy of each type is the one used, and the walk
    descends into the metadata copy (read with ``load_meta``), so a metadata blob can never hide
    behind an equal data chunk. The walk goes level by level; with ``load_many`` each level's
    metadata blobs are read in one call (coalesced reads: few round trips to a registry), and
    ``load_meta`` is used alone only to name the blob when a batch fails.
    """
    result = Reachable()
    seen: set[Digest] = set()
    stack: list[tuple[Digest, str]] = []
    for label, body in roots:
        stack.extend((ref, label) for ref in cbor.iter_refs(body))
    while stack:
        level: list[tuple[Digest, str, Location]] = []
        for blob_id, label in stack:
            if blob_id in seen:
                continue
            seen.add(blob_id)
            locs = locations(blob_id)
            if not locs:
                result.missing[blob_id] = label
                continue
            for loc in locs:
                result.blobs.setdefault((loc.entry.type, blob_id), loc)
            meta = result.blobs.get((BlobType.META, blob_id))
            if meta is not None:
                level.append((blob_id, label, meta))
        stack = []
        loaded: dict[Digest, bytes] = {}
        if load_many is not None and len(level) > 1:
            try:
                loaded = load_many([meta for _, _, meta in level])
            except ChunkstoreError:
                loaded = {}  # one at a time below, to name the damaged blob
        for blob_id, label, meta in level:
            try:
                data = loaded.get(blob_id)
                if data is None:
                    data = load_meta(meta)
                value = cbor.decode(data, max_size=MAX_META_SIZE)
            except (FormatError, ChunkstoreError) as exc:
                result.damaged[blob_id] = f"{label}: {exc}"
                continue
            stack.extend((ref, label) for ref in cbor.iter_refs(value))
    return result
