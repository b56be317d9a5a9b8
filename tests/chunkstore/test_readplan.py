"""Read planning (readplan.py): located blobs grouped per pack into bounded, coalesced reads."""

from __future__ import annotations

import hashlib

from chunkstore.blob import BlobType, Location, PackEntry
from chunkstore.readplan import META_WINDOW, MetaWindows, group_reads
from index.ids import Digest


def _id(n: int) -> Digest:
    return Digest("sha256", hashlib.sha256(str(n).encode()).digest())


def _loc(pack: int, n: int, offset: int, length: int, type_: BlobType = BlobType.DATA) -> Location:
    return Location(_id(1000 + pack), PackEntry(type_, _id(n), offset, length, length))


def _never(_: Location) -> bool:
    return False


def test_groups_stay_in_their_pack_and_within_the_span() -> None:
    locs = [_loc(1, i, i * 100, 100) for i in range(10)] + [_loc(2, 50, 0, 100)]
    groups = group_reads(locs, max_gap=0, max_span=300, cached=_never, windows=None)
    assert sorted(i for g in groups for i in g.ids) == sorted(loc.entry.id for loc in locs)
    assert all(g.length <= 300 and g.pack_id is not None for g in groups)
    assert [len(g.ids) for g in groups] == [3, 3, 3, 1, 1]
    for g in groups:
        assert {loc.pack_id for loc in g.locations} == {g.pack_id}
        assert all(g.offset <= loc.entry.offset for loc in g.locations)
        assert all(
            loc.entry.offset + loc.entry.length <= g.offset + g.length for loc in g.locations
        )


def test_a_gap_wider_than_max_gap_splits_a_read() -> None:
    locs = [_loc(1, 1, 0, 100), _loc(1, 2, 150, 100), _loc(1, 3, 400, 100)]
    groups = group_reads(locs, max_gap=50, max_span=1 << 20, cached=_never, windows=None)
    assert [(g.offset, g.length, len(g.ids)) for g in groups] == [(0, 250, 2), (400, 100, 1)]


def test_cached_metadata_needs_no_read_and_neighbours_come_along() -> None:
    wanted = _loc(1, 1, 1000, 100, BlobType.META)
    cached = _loc(1, 2, 5000, 100, BlobType.META)
    near = _loc(1, 3, 1200, 100, BlobType.META)
    far = _loc(1, 4, 1000 + META_WINDOW + 1, 100, BlobType.META)
    known = [wanted, cached, near, far]
    groups = group_reads(
        [wanted, cached],
        max_gap=1 << 20,
        max_span=64 << 20,
        cached=lambda loc: loc == cached,
        windows=MetaWindows(lambda: iter(known)),
    )
    hit, read = groups
    assert (hit.ids, hit.length, hit.pack_id) == ((cached.entry.id,), 0, None)
    assert read.ids == (wanted.entry.id,)  # the neighbour is read, but only to be cached
    assert read.extra == {near.entry.id}
    assert [loc.entry.id for loc in read.locations] == [wanted.entry.id, near.entry.id]
    assert (read.offset, read.length) == (1000, 300)
