"""ExtentReader: ``(file node, offset, size) -> bytes`` over content-defined chunks.

A regular file in a tree is a list of chunks with their sizes (inline in the node, or in chunk-list
blobs for big files). Reading ``size`` bytes at ``offset``::

    1. layout: the file's chunk list, loaded once per file (chunk-list blobs through the
       Fetcher) and kept for the last ``max_layouts`` files, with the cumulative ends of
       index.tree.Extents
    2. bisect: Extents.span(offset, size) -> [(chunk index, offset in chunk, bytes), ...]
    3. fetch: Fetcher.get(chunk ids) -> verified plaintext (memory, disk cache, repository)
    4. slice and join the pieces; past the end of file a read is short, as read(2) is
    5. readahead: when a file is read sequentially (a read starting where the previous one ended),
       the next chunks are fetched in the background, a window that doubles from 2 chunks up to
       ``readahead`` chunks while the file keeps being read in order

A GNU sparse file (``node.sparse``) holds only its data segments in its chunks; holes read as
zeros, and the logical offset is mapped to the data offset segment by segment.

No FUSE here: :mod:`chunkstore.mount.fs` only adapts this to kernel requests, and tests drive it
directly. All methods are thread-safe.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from chunkstore.errors import CorruptMetadata, UsageError
from chunkstore.metadata import parse_chunk_list
from chunkstore.mount.fetch import Fetcher
from index.chunklist import ChunkRef
from index.tree import Extents, Node, NodeType

__all__ = ["ExtentReader", "FileLayout", "file_size"]


def file_size(node: Node) -> int:
    """The size a regular file shows (its real size when sparse)."""
    return node.sparse.realsize if node.sparse is not None else node.size


@dataclass(frozen=True, slots=True)
class FileLayout:
    """A file's chunks and where its bytes sit: ``segments`` are (offset, length, data offset)."""

    refs: tuple[ChunkRef, ...]
    extents: Extents
    size: int
    segments: tuple[tuple[int, int, int], ...] | None = None
    seg_starts: tuple[int, ...] = field(default=())


@dataclass(slots=True)
class _Sequential:
    next_offset: int = 0
    streak: int = 0
    ahead: int = -1  # last chunk index already scheduled by readahead


class ExtentReader:
    """Serves reads of regular files from their chunks, through a :class:`Fetcher`."""

    def __init__(self, fetcher: Fetcher, *, readahead: int = 32, max_layouts: int = 4096) -> None:
        """``readahead``: most chunks fetched ahead of a sequential reader (0 disables it)."""
        self.fetcher = fetcher
        self.readahead = max(0, readahead)
        self._max_layouts = max(1, max_layouts)
        self._layouts: OrderedDict[Hashable, FileLayout] = OrderedDict()
        self._seq: OrderedDict[Hashable, _Sequential] = OrderedDict()
        self._lock = threading.Lock()

    def layout(self, node: Node, key: Hashable | None = None) -> FileLayout:
        """The chunk layout of a regular file (cached under ``key``, e.g. its inode)."""
        if key is not None:
            with self._lock:
                found = self._layouts.get(key)
                if found is not None:
                    self._layouts.move_to_end(key)
                    return found
        made = self._make_layout(node)
        if key is not None:
            with self._lock:
                self._layouts[key] = made
                while len(self._layouts) > self._max_layouts:
                    self._layouts.popitem(last=False)
        return made

    def _make_layout(self, node: Node) -> FileLayout:
        if node.type is not NodeType.FILE:
            raise UsageError(f"{node.name.decode(errors='replace')} is not a regular file")
        if node.lists:
            blobs = self.fetcher.get(node.lists)
            refs: list[ChunkRef] = []
            for list_id in node.lists:
                refs.extend(parse_chunk_list(blobs[list_id], list_id))
        else:
            refs = list(node.chunks)
        extents = Extents(refs)
        if extents.size != node.size:
            raise CorruptMetadata(
                f"{node.name.decode(errors='replace')}: chunks hold {extents.size} bytes, "
                f"the node says {node.size}"
            )
        if node.sparse is None:
            return FileLayout(tuple(refs), extents, node.size)
        segments: list[tuple[int, int, int]] = []
        data_off = 0
        for off, length in node.sparse.segments:
            if length:
                segments.append((off, length, data_off))
                data_off += length
        return FileLayout(
            tuple(refs),
            extents,
            node.sparse.realsize,
            tuple(segments),
            tuple(s[0] for s in segments),
        )

    def read(self, node: Node, offset: int, size: int, *, key: Hashable | None = None) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at end of file), every chunk verified."""
        if offset < 0 or size < 0:
            raise UsageError("offset and size must be non-negative")
        lay = self.layout(node, key)
        end = min(offset + size, lay.size)
        if offset >= end:
            return b""
        if lay.segments is None:
            data, last = self._read_data(lay, offset, end - offset)
        else:
            data, last = self._read_sparse(lay, offset, end)
        if key is not None and self.readahead:
            self._readahead(key, lay, offset, offset + len(data), last)
        self.fetcher.stats.add(reads=1, bytes_served=len(data))
        return data

    def _read_data(self, lay: FileLayout, offset: int, length: int) -> tuple[bytes, int]:
        pieces = lay.extents.span(offset, length)
        if not pieces:
            return b"", -1
        got = self.fetcher.get([lay.refs[i].id for i, _, _ in pieces])
        parts = []
        for i, start, n in pieces:
            chunk = got[lay.refs[i].id]
            parts.append(chunk if start == 0 and n == len(chunk) else chunk[start : start + n])
        return b"".join(parts), pieces[-1][0]

    def _read_sparse(self, lay: FileLayout, offset: int, end: int) -> tuple[bytes, int]:
        assert lay.segments is not None
        out = bytearray()
        last = -1
        pos = offset
        i = max(0, bisect.bisect_right(lay.seg_starts, offset) - 1)
        while pos < end:
            if i >= len(lay.segments):
                out += bytes(end - pos)
                break
            seg_off, seg_len, data_off = lay.segments[i]
            if pos < seg_off:
                n = min(seg_off, end) - pos
                out += bytes(n)
                pos += n
                continue
            if pos >= seg_off + seg_len:
                i += 1
                continue
            n = min(seg_off + seg_len, end) - pos
            data, last = self._read_data(lay, data_off + pos - seg_off, n)
            out += data
            pos += n
        return bytes(out), last

    def _readahead(self, key: Hashable, lay: FileLayout, start: int, end: int, last: int) -> None:
        if last < 0:
            return
        with self._lock:
            st = self._seq.get(key)
            if st is None:
                st = self._seq[key] = _Sequential()
                while len(self._seq) > self._max_layouts:
                    self._seq.popitem(last=False)
            else:
                self._seq.move_to_end(key)
            if start == st.next_offset and start > 0:
                st.streak += 1
            else:
                st.streak, st.ahead = 0, last
            st.next_offset = end
            if st.streak == 0:
                return
            window = min(self.readahead, 1 << min(st.streak, 16))
            first = max(last, st.ahead) + 1
            stop = min(len(lay.refs), last + 1 + window)
            if first >= stop:
                return
            st.ahead = stop - 1
        self.fetcher.prefetch((r.id for r in lay.refs[first:stop]), urgent=True)
