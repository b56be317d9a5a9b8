"""The one pass over the layers: every file content hashed and cut at every chunk size at once.

:func:`scan_all` reads each distinct layer once and returns a :class:`Scan` of it: the tar's
size and diff_id, one :data:`Entry` per member the merged view needs (files, hard links,
directories, symlinks, devices, FIFOs) and a :class:`Content` for every file content met for the
first time. Nothing else of the tar is kept; :mod:`chunkstore.analyze.figures` works from these
facts alone.

How a layer is read (:class:`Scanner`): the opener yields the uncompressed tar (bomb-guarded
decompression), :class:`~chunkstore.images.ingest.HashingReader` computes the diff_id on the way
and :class:`~chunkstore.images.tarstream.TarReader` splits it into members. Each regular file is
read once into memory (files over :data:`~chunkstore.analyze.model.BIG_FILE` are spooled to a
temporary file) and hashed with SHA-256. A content the scanner has not seen yet is cut by FastCDC
(:class:`~chunkstore.chunker.Chunker`) at every chunk size asked, each chunk keyed by the first
:data:`~chunkstore.analyze.model.KEY_BYTES` bytes of its SHA-256. Chunks are cut per file, as
backup does, so a file's chunks depend on its content only and a repeated content is never
chunked twice; a file no larger than the minimum chunk is one chunk whose key is the file's own
digest. For the stored estimate, primary-size chunks whose key's first byte is a multiple of the
sample are compressed with zstd once each.

Processes: FastCDC holds the GIL, so when there are several layers that can be opened anywhere
(:attr:`~chunkstore.analyze.sources.Opener.parallel`) they are scanned in a pool of forked worker
processes, largest first, while layers bound to this process (registry sessions, repository
recipes) are scanned here meanwhile. Each process has its own :class:`Scanner`, so a content met in
two processes is described twice; the figures merge the descriptions by digest.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import tempfile
from array import array
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import zstandard

from chunkstore.analyze.model import BIG_FILE, KEY_BYTES, MIB, ZSTD_LEVEL, Progress, chunker_params
from chunkstore.analyze.sources import Layer, Opener
from chunkstore.chunker import Chunker
from chunkstore.errors import UsageError
from chunkstore.images.ingest import HashingReader
from chunkstore.images.tarstream import Member, TarReader
from index.tree import NodeType

__all__ = ["HARDLINK", "Content", "Entry", "Scan", "Scanner", "scan_all"]

#: The kind of an :data:`Entry` that is a hard link (its target is the linked path).
HARDLINK = -1
_TYPES = {
    b"5": NodeType.DIRECTORY,
    b"2": NodeType.SYMLINK,
    b"3": NodeType.CHAR_DEVICE,
    b"4": NodeType.BLOCK_DEVICE,
    b"6": NodeType.FIFO,
}

#: ``(path, kind, size, sha256 or b"", link target)``: kind is a NodeType value or HARDLINK.
Entry = tuple[bytes, int, int, bytes, bytes]


@dataclass(slots=True)
class Content:
    """One file content: its size, and per chunk size its chunk keys and lengths.

    ``keys[i]`` is the concatenated :data:`~chunkstore.analyze.model.KEY_BYTES`-byte keys of the
    chunks at size ``i``, ``lengths[i]`` their lengths; ``sampled`` maps the keys compressed for
    the stored estimate to their compressed size.
    """

    size: int
    keys: list[bytes]
    lengths: list[array[int]]
    sampled: dict[bytes, int]


@dataclass(slots=True)
class Scan:
    """What one layer holds: its tar size and diff_id, its entries, the contents it added."""

    key: str
    diff_id: str
    tar_bytes: int
    entries: list[Entry]
    contents: dict[bytes, Content]


class Scanner:
    """Cuts file contents at every chunk size; remembers the contents it already described."""

    def __init__(self, sizes: Sequence[int], primary: int, sample: int) -> None:
        self._chunkers = [Chunker(chunker_params(s)) for s in sizes]
        self._primary = list(sizes).index(primary)
        self._sample = sample
        self._seen: set[bytes] = set()
        self._compressed: set[bytes] = set()
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)

    def scan(self, key: str, opener: Opener) -> Scan:
        """Read the layer ``opener`` opens, once, and describe it."""
        entries: list[Entry] = []
        contents: dict[bytes, Content] = {}
        # No read-ahead thread: on a loaded 2-core machine the GIL hand-offs between a
        # decompressing thread and the parser cost more than the overlap gains (measured), and
        # the worker processes already keep both cores busy.
        with opener.open() as raw:
            stream = HashingReader(raw)
            reader = TarReader(cast(BinaryIO, stream))
            for event in reader:
                if not isinstance(event, Member):
                    continue
                e = event.entry
                if event.content is not None:
                    size = event.content.remaining
                    digest = self._content(event.content, size, contents)
                    entries.append((e.name, int(NodeType.FILE), size, digest, b""))
                elif e.type == b"1":
                    entries.append((e.name, HARDLINK, 0, b"", e.linkname))
                elif (kind := _TYPES.get(e.type)) is not None:
                    target = e.linkname if kind is NodeType.SYMLINK else b""
                    entries.append((e.name, int(kind), 0, b"", target))
            tar_bytes = reader.offset
            diff_id = str(stream.digest())
        return Scan(key, diff_id, tar_bytes, entries, contents)

    def _content(self, reader: Any, size: int, contents: dict[bytes, Content]) -> bytes:
        if size > BIG_FILE:
            return self._big_content(reader, size, contents)
        data = _read_exact(reader, size)
        digest = hashlib.sha256(data).digest()
        if digest not in self._seen:
            self._seen.add(digest)
            contents[digest] = self._describe(
                digest, size, [self._cuts(c, data, digest) for c in self._chunkers]
            )
        return digest

    def _big_content(self, reader: Any, size: int, contents: dict[bytes, Content]) -> bytes:
        h = hashlib.sha256()
        with tempfile.TemporaryFile() as spool:
            left = size
            while left:
                piece = _read_exact(reader, min(left, 8 * MIB))
                h.update(piece)
                spool.write(piece)
                left -= len(piece)
            digest = h.digest()
            if digest not in self._seen:
                self._seen.add(digest)
                per_size: list[list[bytes] | bytes] = []
                for chunker in self._chunkers:
                    spool.seek(0)
                    per_size.append(list(chunker.chunks(cast(BinaryIO, spool))))
                contents[digest] = self._describe(digest, size, per_size)
        return digest

    @staticmethod
    def _cuts(chunker: Chunker, data: bytes, digest: bytes) -> list[bytes] | bytes:
        if len(data) <= chunker.params.min_size:
            return data  # one chunk, the whole file: its key is the file's own digest
        return list(chunker.chunk_bytes(data))

    def _describe(
        self, digest: bytes, size: int, per_size: Sequence[list[bytes] | bytes]
    ) -> Content:
        keys: list[bytes] = []
        lengths: list[array[int]] = []
        sampled: dict[bytes, int] = {}
        for index, cuts in enumerate(per_size):
            if not size:
                keys.append(b"")
                lengths.append(array("Q"))
                continue
            if isinstance(cuts, bytes):
                pairs = [(digest[:KEY_BYTES], cuts)]
            else:
                pairs = [(hashlib.sha256(c).digest()[:KEY_BYTES], c) for c in cuts]
            keys.append(b"".join(k for k, _ in pairs))
            lengths.append(array("Q", [len(c) for _, c in pairs]))
            if index == self._primary:
                for k, c in pairs:
                    if k[0] % self._sample == 0 and k not in self._compressed:
                        self._compressed.add(k)
                        sampled[k] = len(self._zstd.compress(c))
        return Content(size, keys, lengths, sampled)


def _read_exact(reader: Any, size: int) -> bytes:
    data = reader.read(size)
    if len(data) == size:
        return bytes(data)
    parts = [data]
    left = size - len(data)
    while left:
        piece = reader.read(left)
        if not piece:
            raise UsageError("layer tar ended inside a file")
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


_WORKER: Scanner | None = None


def _worker_init(sizes: tuple[int, ...], primary: int, sample: int) -> None:
    global _WORKER
    _WORKER = Scanner(sizes, primary, sample)


def _worker_scan(key: str, opener: Opener) -> Scan:
    assert _WORKER is not None
    return _WORKER.scan(key, opener)


def scan_all(
    layers: list[Layer],
    sizes: tuple[int, ...],
    primary: int,
    sample: int,
    workers: int,
    progress: Progress | None,
) -> tuple[dict[str, Scan], int]:
    """Scan every distinct layer; returns the scans and the number of processes used."""
    total = sum(max(layer.compressed_bytes, 1) for layer in layers)
    done = 0
    scans: dict[str, Scan] = {}

    def finished(layer: Layer, scan: Scan) -> None:
        nonlocal done
        scans[layer.key] = scan
        done += max(layer.compressed_bytes, 1)
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    parallel = [la for la in layers if la.opener.parallel]
    local = [la for la in layers if not la.opener.parallel]
    if workers < 2 or len(parallel) < 2:
        local, parallel = local + parallel, []  # one process: no pool to start
    used = min(workers, len(parallel)) if parallel else 1
    pending: dict[Future[Scan], Layer] = {}
    with ExitStack() as stack:
        if parallel:
            # Largest first, so the last layer to finish is a small one.
            parallel.sort(key=lambda la: -la.compressed_bytes)
            # fork: workers start at once and need no importable __main__ (spawn re-runs it).
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            pool = stack.enter_context(
                ProcessPoolExecutor(
                    used,
                    mp_context=context,
                    initializer=_worker_init,
                    initargs=(sizes, primary, sample),
                )
            )
            pending = {pool.submit(_worker_scan, la.key, la.opener): la for la in parallel}
        scanner = Scanner(sizes, primary, sample)
        for la in local:
            finished(la, scanner.scan(la.key, la.opener))
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in ready:
                finished(pending.pop(future), future.result())
    return scans, used
