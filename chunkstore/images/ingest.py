"""Layer ingest: an uncompressed layer tar -> deduplicated chunks, a recipe, and its members.

    tar stream -> HashingReader (diff_id) -> TarReader events
        Raw                -> recipe raw bytes
        Member + content   -> ChunkStorer (chunked, deduplicated, stored) -> recipe content op
        Member             -> the member list (for the merged tree)
    recipe parts and root  -> META blobs

Memory stays bounded: content is streamed through the chunker, raw bytes are cut into recipe parts
as they come, and only the member list (metadata, a few hundred bytes a member) is kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from chunkstore.blob import BlobType
from chunkstore.images.tarstream import Limits, Member, Raw, TarEntry, TarReader
from chunkstore.repository import Repository
from chunkstore.streams import ChunkStorer, StoreStats
from index.chunklist import MAX_ENTRIES, ChunkRef, encode_chunk_list
from index.ids import Digest
from index.recipe import INLINE_CHUNKS, Content, ContentLists, RecipeBuilder

__all__ = ["HashingReader", "IngestedLayer", "IngestedMember", "ingest_layer"]


class HashingReader:
    """Passes reads through while computing the SHA-256 and size of everything read."""

    def __init__(self, raw: BinaryIO) -> None:
        """Wrap ``raw``."""
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        """Read and hash."""
        data = self._raw.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        """Read into ``buf`` and hash."""
        view = memoryview(buf)
        data = self._raw.read(len(view))
        view[: len(data)] = data
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def digest(self) -> Digest:
        """SHA-256 of what was read so far."""
        return Digest("sha256", self._hash.digest())


@dataclass(frozen=True, slots=True)
class IngestedMember:
    """A tar member and, for content members, its chunks (inline or as chunk lists)."""

    entry: TarEntry
    chunks: tuple[ChunkRef, ...] = ()
    lists: tuple[Digest, ...] = ()


@dataclass(slots=True)
class IngestedLayer:
    """Result of ingesting one layer."""

    recipe: Digest
    diff_id: Digest
    size: int
    members: list[IngestedMember] = field(default_factory=list)
    stats: StoreStats = field(default_factory=StoreStats)


def ingest_layer(
    repo: Repository,
    tar_stream: BinaryIO,
    *,
    storer: ChunkStorer,
    limits: Limits | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestedLayer:
    """Store one uncompressed layer tar; returns its recipe id, diff_id and members."""
    hashing = HashingReader(tar_stream)
    recipe = RecipeBuilder(lambda part: repo.save_blob(BlobType.META, part).id)
    members: list[IngestedMember] = []
    for event in TarReader(hashing, limits):  # type: ignore[arg-type]
        if isinstance(event, Raw):
            recipe.raw(event.data)
            continue
        assert isinstance(event, Member)
        if event.content is None:
            members.append(IngestedMember(event.entry))
            continue
        refs: list[ChunkRef] = []
        size = storer.store(event.content, refs.append)  # type: ignore[arg-type]
        if progress is not None:
            progress(size)
        if len(refs) <= INLINE_CHUNKS:
            recipe.content(Content(size, tuple(refs)))
            members.append(IngestedMember(event.entry, chunks=tuple(refs)))
        else:
            lists = tuple(
                repo.save_blob(BlobType.META, encode_chunk_list(refs[i : i + MAX_ENTRIES])).id
                for i in range(0, len(refs), MAX_ENTRIES)
            )
            recipe.content(ContentLists(size, lists))
            members.append(IngestedMember(event.entry, lists=lists))
    diff_id = hashing.digest()
    root = recipe.finish(diff_id)
    if root.size != hashing.size:
        raise AssertionError("recipe size differs from the bytes read")  # internal invariant
    recipe_id = repo.save_blob(BlobType.META, root.encode()).id
    return IngestedLayer(recipe_id, diff_id, hashing.size, members, storer.stats)
