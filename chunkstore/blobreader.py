"""The read side of a repository: blobs located by the index, read from packs and verified.

``Repository`` (repository.py) owns one :class:`BlobReader` and hands it two functions of its
index: ``locate`` (where a blob is, or None) and ``heal`` (where the index files put a blob after a
read where the index cache pointed failed). Reads::

    plan(ids) -> locate each id once -> group_reads (readplan.py): per pack, coalesced
    load_group(group) -> one ranged backend.load -> codec.decode of each blob (verified)

A remote repository's metadata is kept in a local, verified cache (``meta_cache``): hits need no
read, and the metadata stored near a wanted blob comes along in the same request to be cached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from chunkstore.backends.base import Backend, FileType, Handle
from chunkstore.blob import BlobType, Location
from chunkstore.blobcache import BlobCache
from chunkstore.codec import BlobCodec
from chunkstore.errors import ChunkstoreError, CorruptBlob, IntegrityError, MissingObject
from chunkstore.readplan import MetaWindows, ReadGroup, ReadPlan, group_reads
from index.ids import Digest

__all__ = ["BlobReader", "not_indexed"]

log = logging.getLogger("chunkstore")


def not_indexed(blob_id: Digest) -> MissingObject:
    """The error for a blob no index lists."""
    return MissingObject(
        f"blob {blob_id.short} is not in the index; run 'chunkstore check' "
        "(and 'chunkstore check --rebuild-index' if packs hold it)"
    )


class BlobReader:
    """Verified reads of located blobs, alone or in planned groups (thread-safe)."""

    def __init__(
        self,
        backend: Backend,
        codec: BlobCodec,
        *,
        locate: Callable[[Digest], Location | None],
        heal: Callable[[Digest, Location | None, ChunkstoreError], Location],
        meta_cache: BlobCache | None,
        windows: MetaWindows | None,
    ) -> None:
        """Read from ``backend``; ``locate`` and ``heal`` are the repository's index."""
        self.backend = backend
        self.codec = codec
        self._locate = locate
        self._heal = heal
        self.meta_cache = meta_cache
        self._windows = windows

    def _cached(self, loc: Location) -> bytes | None:
        if self.meta_cache is None or loc.entry.type is not BlobType.META:
            return None
        return self.meta_cache.get(loc.entry.id)

    def _in_cache(self, loc: Location) -> bool:
        return (
            self.meta_cache is not None
            and loc.entry.type is BlobType.META
            and loc.entry.id in self.meta_cache
        )

    def load_blob(self, blob_id: Digest) -> bytes:
        """Load and verify one blob."""
        loc: Location | None = None
        try:
            loc = self._locate(blob_id)
            if loc is None:
                raise not_indexed(blob_id)
            return self.load_at(loc)
        except (IntegrityError, MissingObject) as exc:
            return self.load_at(self._heal(blob_id, loc, exc))

    def load_at(self, loc: Location, stored: bytes | None = None) -> bytes:
        """Load and verify the blob at ``loc`` (``stored``: its bytes if already read)."""
        if stored is None and (hit := self._cached(loc)) is not None:
            return hit
        if stored is None and self.meta_cache is not None and loc.entry.type is BlobType.META:
            # With its neighbours (see MetaWindows).
            return dict(self.load_blobs([loc.entry.id]))[loc.entry.id]
        plain = self._load_at(loc, stored)
        if self.meta_cache is not None and loc.entry.type is BlobType.META:
            self.meta_cache.put(loc.entry.id, plain)
        return plain

    def _load_at(self, loc: Location, stored: bytes | None) -> bytes:
        e = loc.entry
        handle = Handle(FileType.PACK, loc.pack_id.hex)
        for attempt in (1, 2):
            if stored is None or attempt == 2:
                stored = self.backend.load(handle, e.offset, e.length)
            try:
                plain = self.codec.decode(e.type, e.id, stored, e.raw_length)
            except IntegrityError as exc:
                if attempt == 2:
                    raise CorruptBlob(
                        f"{exc} (pack {loc.pack_id.short}); run 'chunkstore check --read-data'"
                    ) from exc
                log.warning("blob %s failed verification, reading it again", e.id.short)
                continue
            if attempt == 2:
                log.warning("blob %s verified on the second attempt", e.id.short)
            return plain
        raise AssertionError("unreachable")

    def plan(self, ids: Iterable[Digest], *, max_gap: int, max_span: int, heal: bool) -> ReadPlan:
        """Locate each blob once and group them into reads (see ``Repository.plan_reads``)."""
        located: list[Location] = []
        missing: list[Digest] = []
        for blob_id in dict.fromkeys(ids):
            loc = self._locate(blob_id)
            if loc is None and heal:
                loc = self._heal(blob_id, None, not_indexed(blob_id))
            if loc is None:
                missing.append(blob_id)
            else:
                located.append(loc)
        groups = group_reads(
            located,
            max_gap=max_gap,
            max_span=max_span,
            cached=self._in_cache,
            windows=self._windows,
        )
        return ReadPlan(groups, missing)

    def load_group(self, group: ReadGroup, *, heal: bool) -> Iterator[tuple[Digest, bytes]]:
        """Read one planned group (one ranged read); yields ``(id, plaintext)`` of its ids."""
        if group.pack_id is None:  # every blob is in the metadata cache
            for loc in group.locations:
                if (plain := self._cached(loc)) is None:  # dropped since: read it alone
                    plain = self._load_at(loc, None)
                yield loc.entry.id, plain
            return
        handle = Handle(FileType.PACK, group.pack_id.hex)
        buf: bytes | None = None
        try:
            buf = self.backend.load(handle, group.offset, group.length)
        except (IntegrityError, MissingObject) as exc:  # the cache named a bad range?
            failure: ChunkstoreError = exc
        for loc in group.locations:
            at = loc.entry.offset - group.offset
            piece = None if buf is None else buf[at : at + loc.entry.length]
            if loc.entry.id in group.extra:
                try:
                    if piece is not None:
                        self.load_at(loc, piece)  # verified, then cached
                except IntegrityError as exc:  # nobody asked for it: its reader will see
                    log.warning("neighbouring metadata blob not cached: %s", exc)
                continue
            try:
                if piece is None:
                    raise failure
                plain = self.load_at(loc, piece)  # verified
            except (IntegrityError, MissingObject) as exc:
                if not heal:
                    raise
                plain = self.load_at(self._heal(loc.entry.id, loc, exc))
            yield loc.entry.id, plain

    def load_blobs(
        self,
        ids: Iterable[Digest],
        *,
        max_gap: int = 1 << 20,
        max_span: int = 64 << 20,
        heal: bool = True,
    ) -> Iterator[tuple[Digest, bytes]]:
        """Plan and read: ``(id, plaintext)`` grouped by pack, each id once."""
        plan = self.plan(ids, max_gap=max_gap, max_span=max_span, heal=heal)
        if plan.missing:
            raise not_indexed(plan.missing[0])
        for group in plan.groups:
            yield from self.load_group(group, heal=heal)
