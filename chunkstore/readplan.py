"""Read planning: which located blobs travel together in one ranged read of a pack.

The repository locates the blobs a caller names (its index), then :func:`group_reads` groups them
per pack and coalesces neighbours at most ``max_gap`` bytes apart into reads of at most
``max_span`` bytes (ranges.py). For a remote repository's metadata, the blobs stored near a wanted
one are added (:class:`MetaWindows`) so that they arrive in the same request and are kept in the
metadata cache. Each :class:`ReadGroup` goes back to ``Repository.load_group``, which reads and
verifies it: a caller (the mount's fetcher) sees the ids in a group and the bytes it reads, never
where they sit in the pack.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from chunkstore.blob import BlobType, Location
from chunkstore.ranges import coalesce
from index.ids import Digest

__all__ = ["META_WINDOW", "MetaWindows", "ReadGroup", "ReadPlan", "group_reads"]

#: Bytes of neighbouring metadata read with a metadata blob a remote repository's cache lacks.
META_WINDOW = 2 << 20


@dataclass(frozen=True, slots=True)
class ReadGroup:
    """Blobs read together: one ranged read of one pack, or none (all in the metadata cache).

    ``ids``: the blobs asked for, in pack order; ``length``: the bytes the read covers (0 when
    the metadata cache serves them). The other fields belong to ``Repository.load_group``:
    ``locations`` includes the neighbours in ``extra``, read only to be cached.
    """

    ids: tuple[Digest, ...]
    length: int
    pack_id: Digest | None
    offset: int
    locations: tuple[Location, ...]
    extra: frozenset[Digest]


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Groups to read, and the ids the index does not know (only when not healing)."""

    groups: list[ReadGroup]
    missing: list[Digest]


class MetaWindows:
    """Metadata blobs per pack sorted by offset, to find a blob's neighbours (built on first use).

    Trees, recipes and chunk lists of one backup sit next to each other in metadata packs, so the
    first directory a mount or a browse opens is followed by its neighbours: reading them in the
    same ranged request turns dozens of round trips into one.
    """

    def __init__(self, known: Callable[[], Iterable[Location]]) -> None:
        """Build from ``known`` (every indexed location) when first asked."""
        self._known = known
        self._lock = threading.Lock()
        self._by_pack: dict[Digest, tuple[list[int], list[Location]]] | None = None

    def reset(self) -> None:
        """Forget the table (the index cache was rebuilt)."""
        with self._lock:
            self._by_pack = None

    def near(self, loc: Location) -> tuple[int, int, list[Location]]:
        """Metadata blobs stored near ``loc`` in its pack, and the byte span they cover."""
        with self._lock:
            if self._by_pack is None:
                by_pack: dict[Digest, list[Location]] = {}
                for known in self._known():
                    if known.entry.type is BlobType.META:
                        by_pack.setdefault(known.pack_id, []).append(known)
                self._by_pack = {
                    pack: ([x.entry.offset for x in locs], locs)
                    for pack, locs in (
                        (p, sorted(v, key=lambda x: x.entry.offset)) for p, v in by_pack.items()
                    )
                }
            offsets, locs = self._by_pack.get(loc.pack_id, ([], []))
        lo = max(0, loc.entry.offset - META_WINDOW // 4)
        hi = loc.entry.offset + META_WINDOW
        first, last = bisect.bisect_left(offsets, lo), bisect.bisect_right(offsets, hi)
        return lo, hi, [n for n in locs[first:last] if n.entry.offset + n.entry.length <= hi]


def group_reads(
    located: Iterable[Location],
    *,
    max_gap: int,
    max_span: int,
    cached: Callable[[Location], bool],
    windows: MetaWindows | None,
) -> list[ReadGroup]:
    """Group ``located`` (one location per wanted blob) into reads.

    ``cached``: whether the metadata cache holds a blob (those form one group without a read);
    ``windows``: when given, metadata neighbours not yet cached are read with each metadata blob.
    """
    locs = list(located)
    wanted = {loc.entry.id for loc in locs}
    per_pack: dict[Digest, list[tuple[int, int, Location]]] = {}
    hits: list[Location] = []
    extra: set[Digest] = set()
    spans: dict[Digest, list[tuple[int, int]]] = {}
    for loc in locs:
        if cached(loc):
            hits.append(loc)
            continue
        reads = per_pack.setdefault(loc.pack_id, [])
        reads.append((loc.entry.offset, loc.entry.length, loc))
        if windows is None or loc.entry.type is not BlobType.META:
            continue
        covered = spans.setdefault(loc.pack_id, [])
        if any(lo <= loc.entry.offset < hi for lo, hi in covered):
            continue  # its neighbours are already being read
        lo, hi, near = windows.near(loc)
        covered.append((lo, hi))
        for n in near:
            if n.entry.id not in wanted and n.entry.id not in extra and not cached(n):
                extra.add(n.entry.id)
                reads.append((n.entry.offset, n.entry.length, n))
    groups: list[ReadGroup] = []
    if hits:
        ids = tuple(loc.entry.id for loc in hits)
        groups.append(ReadGroup(ids, 0, None, 0, tuple(hits), frozenset()))
    for pack_id, reads in per_pack.items():
        for span in coalesce(reads, max_gap=max_gap, max_size=max_span):
            members = tuple(item[2] for item in span.items)
            ids = tuple(loc.entry.id for loc in members if loc.entry.id not in extra)
            inside = frozenset(loc.entry.id for loc in members if loc.entry.id in extra)
            groups.append(ReadGroup(ids, span.length, pack_id, span.offset, members, inside))
    return groups
