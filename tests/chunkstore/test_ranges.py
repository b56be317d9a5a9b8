"""Tests for :mod:`chunkstore.ranges`: coalescing many small reads into a few spans."""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from chunkstore.ranges import Span, coalesce

Read = tuple[int, int, int]


def holes(span: Span[int]) -> list[int]:
    """Lengths of the byte ranges inside ``span`` that no item covers."""
    out = []
    pos = span.offset
    for off, length, _ in sorted(span.items):
        if off > pos:
            out.append(off - pos)
        pos = max(pos, off + length)
    return out


def check_common(reads: list[Read], spans: list[Span[int]], max_gap: int, max_size: int) -> None:
    # Every read is in exactly one span (as a multiset: duplicates stay duplicates).
    assert Counter(item for s in spans for item in s.items) == Counter(reads)
    for s in spans:
        assert s.items, "no empty spans"
        # The span is exactly the hull of its items.
        assert s.offset == min(off for off, _, _ in s.items)
        assert s.offset + s.length == max(off + n for off, n, _ in s.items)
        # Items come in offset order.
        assert [off for off, _, _ in s.items] == sorted(off for off, _, _ in s.items)
        # Bytes read and dropped: no hole wider than max_gap.
        assert all(h <= max_gap for h in holes(s))
        # Size cap, unless a single read is larger by itself.
        if s.length > max_size:
            assert len(s.items) == 1 and s.items[0][1] == s.length
    # Spans in offset order.
    assert [s.offset for s in spans] == sorted(s.offset for s in spans)


@st.composite
def disjoint_reads(draw: st.DrawFn) -> list[Read]:
    """Non-overlapping reads (blobs of one pack), shuffled."""
    n = draw(st.integers(0, 30))
    reads = []
    pos = draw(st.integers(0, 1000))
    for i in range(n):
        pos += draw(st.integers(0, 300))
        length = draw(st.integers(0, 400))
        reads.append((pos, length, i))
        pos += length
    return draw(st.permutations(reads))


limits = st.tuples(st.integers(0, 400), st.integers(1, 2000))


@given(disjoint_reads(), limits)
def test_coalesce_disjoint_reads(reads: list[Read], lim: tuple[int, int]) -> None:
    max_gap, max_size = lim
    spans = coalesce(reads, max_gap=max_gap, max_size=max_size)
    check_common(reads, spans, max_gap, max_size)
    # Spans are disjoint and ordered.
    for a, b in itertools.pairwise(spans):
        assert a.offset + a.length <= b.offset
    # Greedy is maximal: neighbouring spans could not have been merged.
    for a, b in itertools.pairwise(spans):
        gap = b.offset - (a.offset + a.length)
        assert gap > max_gap or (b.offset + b.length) - a.offset > max_size


@given(
    st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 600), st.integers(0, 3)), max_size=30),
    limits,
)
def test_coalesce_any_reads(reads: list[Read], lim: tuple[int, int]) -> None:
    """Overlapping and duplicate reads too (the same blob asked for twice)."""
    max_gap, max_size = lim
    check_common(reads, coalesce(reads, max_gap=max_gap, max_size=max_size), max_gap, max_size)


def test_empty() -> None:
    assert coalesce([]) == []


def test_examples() -> None:
    reads = [(100, 10, "b"), (0, 10, "a"), (15, 5, "c"), (1000, 1, "d")]
    spans = coalesce(reads, max_gap=5, max_size=1 << 20)
    assert spans == [
        Span(0, 20, ((0, 10, "a"), (15, 5, "c"))),
        Span(100, 10, ((100, 10, "b"),)),
        Span(1000, 1, ((1000, 1, "d"),)),
    ]
    # Gap of exactly max_gap merges; one more byte does not.
    assert len(coalesce([(0, 10, 1), (15, 5, 2)], max_gap=5)) == 1
    assert len(coalesce([(0, 10, 1), (16, 5, 2)], max_gap=5)) == 2
    # Exactly max_size merges; one more byte does not.
    assert len(coalesce([(0, 10, 1), (10, 10, 2)], max_gap=0, max_size=20)) == 1
    assert len(coalesce([(0, 10, 1), (10, 11, 2)], max_gap=0, max_size=20)) == 2
    # A read larger than max_size gets a span of its own.
    big = coalesce([(0, 5, 1), (5, 100, 2), (105, 5, 3)], max_gap=0, max_size=50)
    assert [(s.offset, s.length) for s in big] == [(0, 5), (5, 100), (105, 5)]


def test_defaults() -> None:
    # 1 MiB gap and 64 MiB size by default.
    assert len(coalesce([(0, 1, 1), ((1 << 20) + 1, 1, 2)])) == 1
    assert len(coalesce([(0, 1, 1), ((1 << 20) + 2, 1, 2)])) == 2
    assert len(coalesce([(0, 32 << 20, 1), (32 << 20, 32 << 20, 2)])) == 1
    assert len(coalesce([(0, 32 << 20, 1), (32 << 20, (32 << 20) + 1, 2)])) == 2


def test_accepts_any_sequence() -> None:
    reads = ((10, 1, "x"), (0, 1, "y"))
    assert [s.items for s in coalesce(reads, max_gap=100)] == [((0, 1, "y"), (10, 1, "x"))]
