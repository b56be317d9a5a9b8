"""Coalescing reads: turn many small (offset, length) reads of one file into few larger ones.

Pure functions. Two reads are merged when the gap between them is at most ``max_gap`` bytes and the
merged read stays within ``max_size``; the gap bytes are read and dropped, which is cheaper than
another request on any backend with per-request latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Span", "coalesce"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Span(Generic[T]):
    """One read covering ``items``: each item is (offset, length, payload) inside the file."""

    offset: int
    length: int
    items: tuple[tuple[int, int, T], ...]


def coalesce(
    reads: Sequence[tuple[int, int, T]], *, max_gap: int = 1 << 20, max_size: int = 64 << 20
) -> list[Span[T]]:
    """Group ``(offset, length, payload)`` reads into spans, in offset order."""
    spans: list[Span[T]] = []
    cur: list[tuple[int, int, T]] = []
    start = end = 0
    for item in sorted(reads, key=lambda r: (r[0], r[1])):
        off, length, _ = item
        if cur and off - end <= max_gap and max(end, off + length) - start <= max_size:
            cur.append(item)
            end = max(end, off + length)
            continue
        if cur:
            spans.append(Span(start, end - start, tuple(cur)))
        cur, start, end = [item], off, off + length
    if cur:
        spans.append(Span(start, end - start, tuple(cur)))
    return spans
