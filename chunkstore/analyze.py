"""Cross-image dedup analysis: what a set of images shares at layer, file and chunk level.

``chunkstore analyze`` answers "how much would a dedup store save on these images?" without a
repository. Every figure is an exact byte count, computed from one pass over the layers:

1. **Resolve** each source into images and their layers, with the same readers backup uses
   (:class:`~chunkstore.images.oci_layout.OCILayout`,
   :class:`~chunkstore.images.docker_archive.DockerArchive`,
   :class:`~chunkstore.images.dirsource.DirTarStream`,
   :class:`~chunkstore.images.registry_image.RegistrySource`) or, for ``tag:NAME``, the layer
   recipes of an image record (the tar is rebuilt from the repository and checked against its
   diff_id).
2. **Scan each distinct layer once** (layers are identified by their compressed digest, so a base
   layer shared by five images is read once): bomb-guarded decompression
   (:func:`~chunkstore.images.compression.open_decompressed`) feeds the bounded tar reader
   (:class:`~chunkstore.images.tarstream.TarReader`). Each regular file is read once into memory
   (files over :data:`BIG_FILE` are spooled to a temporary file), hashed with SHA-256, and, when
   its content was not seen before, cut by FastCDC (:class:`~chunkstore.chunker.Chunker`) at every
   chunk size asked, each chunk keyed by the first :data:`KEY_BYTES` bytes of its SHA-256. Chunks
   are cut per file, as backup does, so a file's chunks depend on its content only and a repeated
   file is never chunked twice. Distinct layers are scanned in worker processes when there are
   several (FastCDC holds the GIL).
3. **Combine**: per chunk, a bit mask of the distinct layers that hold it; masks are grouped
   (a few hundred distinct masks at most) and mapped to image masks, which gives per-layer and
   per-image unique and shared bytes, the pairwise similarity matrix and the update costs without
   any per-image chunk set. Memory is bounded by the number of unique chunks and file contents.

Two views are reported, and every figure says which it is:

* **layer storage**: everything the layers hold, as a registry stores them. A file deleted by a
  whiteout in a later layer, or replaced by a later layer, still counts: its bytes are still
  shipped and stored.
* **merged view**: the root file system a container sees, after whiteouts and replacements
  (:class:`index.overlay.Overlay`); hidden files do not count, hard links count once.

Chunk-level figures cover file content only; tar headers and padding are reported apart
(``tar_bytes - file_bytes``). The stored estimate is zstd level 3 of the unique chunks of the
primary chunk size, measured on a deterministic sample (chunks whose key's first byte is a multiple
of ``compression_sample``) and extrapolated; ``compression_sample=1`` compresses every unique chunk.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

import zstandard

from chunkstore.backends import RemoteOptions
from chunkstore.chunker import Chunker, ChunkerParams
from chunkstore.errors import UsageError
from chunkstore.images.compression import layer_compression, open_decompressed
from chunkstore.images.dirsource import DirTarStream
from chunkstore.images.docker_archive import DockerArchive
from chunkstore.images.ingest import HashingReader
from chunkstore.images.locations import parse_source
from chunkstore.images.oci_layout import Descriptor, ImageRef, OCILayout
from chunkstore.images.rebuild import rebuild_layer
from chunkstore.images.registry_image import (
    DOCKER_PREFIX,
    RegistrySource,
    open_client,
    parse_docker_reference,
)
from chunkstore.images.tarstream import Member, TarReader
from chunkstore.repository import Repository
from index.chunklist import ChunkRef
from index.errors import Malformed
from index.ids import Digest
from index.image import ImageBody
from index.overlay import LayerEntry, MergedDir, Overlay
from index.tree import NodeType

__all__ = [
    "BIG_FILE",
    "CHUNK_REF_BYTES",
    "DEFAULT_CHUNK_SIZES",
    "DEFAULT_COMPRESSION_SAMPLE",
    "INDEX_ENTRY_BYTES",
    "KEY_BYTES",
    "PRIMARY_CHUNK_SIZE",
    "SCHEMA",
    "Analysis",
    "ChunkSizeFigures",
    "DirectoryFigures",
    "DuplicateFile",
    "HistogramBin",
    "ImageFigures",
    "LayerFigures",
    "MergedFigures",
    "Progress",
    "Similarity",
    "Totals",
    "UpdateCost",
    "analyze",
    "chunker_params",
    "default_workers",
]

KIB = 1024
MIB = 1024 * KIB
#: Average chunk sizes of the sweep when none are given.
DEFAULT_CHUNK_SIZES = (16 * KIB, 64 * KIB, 256 * KIB, 1 * MIB)
#: The chunk size of per-image, per-layer, similarity and update figures (when swept).
PRIMARY_CHUNK_SIZE = 64 * KIB
#: Bytes of chunk-key prefix used as identity (collisions need ~2**64 chunks).
KEY_BYTES = 16
#: Files larger than this are spooled to a temporary file instead of held in memory.
BIG_FILE = 64 * MIB
#: Estimated pack-index bytes per unique chunk (id, pack, offset, lengths).
INDEX_ENTRY_BYTES = 50
#: Estimated tree/recipe bytes per chunk reference (32-byte id and a size, in CBOR).
CHUNK_REF_BYTES = 40
#: One unique chunk in this many (by key) is compressed for the stored estimate.
DEFAULT_COMPRESSION_SAMPLE = 8
#: Version tag of the JSON document.
SCHEMA = "chunkstore-analyze/1"
_ZSTD_LEVEL = 3
_TOP = 20
_DIR_DEPTH = 3
_HARDLINK = -1
_TYPES = {
    b"5": NodeType.DIRECTORY,
    b"2": NodeType.SYMLINK,
    b"3": NodeType.CHAR_DEVICE,
    b"4": NodeType.BLOCK_DEVICE,
    b"6": NodeType.FIFO,
}

#: ``progress(done, total)``: layer weight scanned so far (compressed bytes where known).
Progress = Callable[[int, int], None]

_DEFINITIONS = {
    "layer_storage": (
        "everything the layers hold, as a registry stores them; files deleted by whiteouts or "
        "replaced by later layers still count"
    ),
    "merged_view": (
        "the root file system a container sees after whiteouts and replacements; hidden files "
        "do not count; hard links count once"
    ),
    "logical_file_bytes": "sum of regular-file content sizes, each image counting all its layers",
    "tar_bytes": "uncompressed layer tar sizes (file content plus headers and padding)",
    "compressed_bytes": "layer blob sizes as shipped",
    "layer_level": "bytes left when identical layer blobs (same digest) are stored once",
    "file_level": "bytes left when identical file contents (same SHA-256) are stored once",
    "chunk_level": "bytes left when identical FastCDC chunks of file content are stored once",
    "unique_chunk_bytes": "bytes of distinct chunks found in no other image (or layer)",
    "shared_chunk_bytes": "bytes of distinct chunks also found in another image (or layer)",
    "internal_duplicate_bytes": "bytes an image holds more than once (logical minus distinct)",
    "hidden_file_bytes": "layer-storage file bytes not visible in the merged view",
    "update_cost": "bytes a client holding version N fetches to get version N+1",
    "chunk_refs": "chunk references in the recipes of the distinct layers",
    "metadata_bytes": (
        f"unique_chunks * {INDEX_ENTRY_BYTES} (index) + chunk_refs * {CHUNK_REF_BYTES} (trees)"
    ),
}


def chunker_params(avg_size: int) -> ChunkerParams:
    """FastCDC bounds for an average size: ``avg/4 <= size <= 4*avg`` (the repository default)."""
    return ChunkerParams(min_size=avg_size // 4, avg_size=avg_size, max_size=avg_size * 4)


# --- records ---------------------------------------------------------------------------------


@dataclass(slots=True)
class LayerFigures:
    """One distinct layer (layer storage view; chunk figures at the primary size)."""

    digest: str
    diff_id: str
    media_type: str
    compressed_bytes: int
    tar_bytes: int
    file_bytes: int
    files: int
    distinct_chunk_bytes: int = 0
    unique_chunk_bytes: int = 0
    shared_chunk_bytes: int = 0
    images: list[str] = field(default_factory=list)


@dataclass(slots=True)
class MergedFigures:
    """One image's merged view."""

    files: int
    file_bytes: int
    hidden_file_bytes: int
    distinct_file_bytes: int
    distinct_chunk_bytes: int
    internal_duplicate_bytes: int


@dataclass(slots=True)
class DuplicateFile:
    """A file content stored more than once (occurrences counted over distinct layers)."""

    sha256: str
    size: int
    occurrences: int
    redundant_bytes: int
    paths: list[str]
    images: list[str]


@dataclass(slots=True)
class DirectoryFigures:
    """Redundant bytes (repeat occurrences of a content) below one directory."""

    path: str
    redundant_bytes: int
    files: int


@dataclass(slots=True)
class ImageFigures:
    """One image (one platform): layer storage figures, then its merged view."""

    name: str
    source: str
    platform: str | None
    layers: list[str]
    compressed_bytes: int
    tar_bytes: int
    file_bytes: int
    files: int
    distinct_file_bytes: int
    distinct_chunk_bytes: int
    unique_chunk_bytes: int
    shared_chunk_bytes: int
    internal_duplicate_bytes: int
    merged: MergedFigures
    internal_duplicates: list[DuplicateFile] = field(default_factory=list)


@dataclass(slots=True)
class HistogramBin:
    """Unique chunks whose size is in ``(upper/2, upper]``."""

    upper: int
    chunks: int
    bytes: int


@dataclass(slots=True)
class ChunkSizeFigures:
    """One chunk size of the sweep (layer storage view)."""

    avg_size: int
    min_size: int
    max_size: int
    primary: bool
    unique_chunks: int
    unique_bytes: int
    chunk_refs: int
    dedup_ratio: float
    index_bytes: int
    tree_bytes: int
    metadata_bytes: int
    total_bytes: int
    merged_unique_bytes: int | None
    histogram: list[HistogramBin]


@dataclass(slots=True)
class Totals:
    """Figures for the whole set."""

    images: int
    layer_refs: int
    distinct_layers: int
    files: int
    logical_file_bytes: int
    tar_bytes: int
    compressed_bytes: int
    layer_level_tar_bytes: int
    layer_level_file_bytes: int
    layer_level_compressed_bytes: int
    layer_level_header_bytes: int
    distinct_files: int
    file_level_bytes: int
    chunk_level_bytes: dict[int, int]
    stored_estimate_bytes: int | None
    stored_estimate_method: str
    compression_sampled_bytes: int
    compression_sampled_compressed_bytes: int
    merged_files: int
    merged_file_bytes: int
    merged_file_level_bytes: int
    merged_chunk_level_bytes: int


@dataclass(slots=True)
class Similarity:
    """Pairwise chunk-level figures (primary size, layer storage): ``shared_bytes[i][j]``."""

    images: list[str]
    shared_bytes: list[list[int]]
    jaccard: list[list[float]]


@dataclass(slots=True)
class UpdateCost:
    """Bytes to fetch to go from version ``source`` to version ``target``."""

    source: str
    target: str
    target_compressed_bytes: int
    layer_compressed_bytes: int
    layer_tar_bytes: int
    file_bytes: int
    chunk_bytes: int


@dataclass(slots=True)
class Analysis:
    """Everything :func:`analyze` found; :meth:`to_json` is the ``--json`` document."""

    chunk_sizes: list[int]
    primary_chunk_size: int
    compression_sample: int
    totals: Totals
    images: list[ImageFigures]
    layers: list[LayerFigures]
    similarity: Similarity
    sizes: list[ChunkSizeFigures]
    top_files: list[DuplicateFile]
    top_directories: list[DirectoryFigures]
    sequence: list[UpdateCost] | None
    seconds: float
    workers: int
    scanned_tar_bytes: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: exact integer byte counts, definitions of every term included."""
        doc = asdict(self)
        doc["totals"]["chunk_level_bytes"] = {
            str(k): v for k, v in self.totals.chunk_level_bytes.items()
        }
        doc["schema"] = SCHEMA
        doc["definitions"] = dict(_DEFINITIONS)
        doc["parameters"] = {
            "chunkers": [asdict(chunker_params(s)) for s in self.chunk_sizes],
            "key_bytes": KEY_BYTES,
            "index_entry_bytes": INDEX_ENTRY_BYTES,
            "chunk_ref_bytes": CHUNK_REF_BYTES,
            "zstd_level": _ZSTD_LEVEL,
        }
        return doc


# --- sources ---------------------------------------------------------------------------------


class _Opener(Protocol):
    @property
    def parallel(self) -> bool: ...

    def open(self) -> AbstractContextManager[BinaryIO]: ...


@dataclass(frozen=True, slots=True)
class _OCIBlob:
    """A layer blob of an OCI layout (picklable: opened again in a worker process)."""

    layout: str
    desc: Descriptor
    parallel: bool = True

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        with OCILayout(self.layout).open_blob(self.desc) as blob:
            yield cast(BinaryIO, open_decompressed(blob, layer_compression(self.desc.media_type)))


@dataclass(frozen=True, slots=True)
class _ArchiveBlob:
    """A layer of a docker-archive file (picklable)."""

    path: str
    ref: str | None
    desc: Descriptor
    parallel: bool = True

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        with DockerArchive(self.path) as archive:
            archive.resolve(self.ref)
            with archive.open_blob(self.desc) as blob:
                compression = layer_compression(self.desc.media_type)
                yield cast(BinaryIO, open_decompressed(blob, compression))


@dataclass(frozen=True, slots=True)
class _DirLayer:
    """A directory, read as the deterministic one-layer tar backup makes of it (picklable)."""

    path: str
    parallel: bool = True

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        stream = DirTarStream(self.path)
        try:
            yield cast(BinaryIO, stream)
        finally:
            stream.close()


class _Pieces:
    """A read-only stream over an iterator of byte strings (a rebuilt layer)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._it = pieces
        self._buf = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            rest = bytes(self._buf) + b"".join(self._it)
            self._buf = memoryview(b"")
            return rest
        while not self._buf:
            piece = next(self._it, None)
            if piece is None:
                return b""
            self._buf = memoryview(piece)
        out, self._buf = self._buf[:n], self._buf[n:]
        return bytes(out)


@dataclass(frozen=True, slots=True)
class _InProcess:
    """A layer that can only be read in this process (a repository or a registry session)."""

    opener: Callable[[], AbstractContextManager[BinaryIO]]
    parallel: bool = False

    def open(self) -> AbstractContextManager[BinaryIO]:
        return self.opener()


@dataclass(frozen=True, slots=True)
class _Layer:
    key: str
    media_type: str
    compressed_bytes: int
    opener: _Opener


@dataclass(slots=True)
class _Image:
    name: str
    source: str
    platform: str | None
    layers: list[_Layer]


def _registry_layer(registry: RegistrySource, desc: Descriptor) -> _InProcess:
    @contextmanager
    def opener() -> Iterator[BinaryIO]:
        with registry.open_blob(desc) as blob:
            compression = layer_compression(desc.media_type)
            yield cast(BinaryIO, open_decompressed(blob, compression))

    return _InProcess(opener)


def _recipe_layer(repo: Repository, recipe: Digest) -> _InProcess:
    @contextmanager
    def opener() -> Iterator[BinaryIO]:
        yield cast(BinaryIO, _Pieces(rebuild_layer(repo, recipe)))

    return _InProcess(opener)


def _image_name(source: str, image: ImageRef | None, count: int) -> str:
    if count > 1 and image is not None and image.platform is not None:
        return f"{source} [{image.platform}]"
    return source


def _from_refs(
    source: str, images: list[ImageRef], layer: Callable[[Descriptor], _Opener]
) -> list[_Image]:
    return [
        _Image(
            name=_image_name(source, image, len(images)),
            source=source,
            platform=None if image.platform is None else str(image.platform),
            layers=[_Layer(str(d.digest), d.media_type, d.size, layer(d)) for d in image.layers],
        )
        for image in images
    ]


def _resolve(
    source: str, stack: ExitStack, repo: Repository | None, remote: RemoteOptions | None
) -> list[_Image]:
    """The images at ``source`` (one per platform), with openers for their layers."""
    if source.startswith("tag:"):
        name = source[4:]
        if repo is None:
            raise UsageError(f"{source!r:.100} needs a repository (--repo)")
        _, body = repo.find_body(name, "image", ImageBody.from_cbor)
        out = []
        for entry in body.images:
            label = f"{source} [{entry.platform}]" if len(body.images) > 1 else source
            layers = [
                _Layer(lay.digest, lay.media_type, lay.size, _recipe_layer(repo, lay.recipe))
                for lay in entry.layers
            ]
            out.append(_Image(label, source, entry.platform, layers))
        return out
    if source.startswith(DOCKER_PREFIX):
        ref = parse_docker_reference(source)
        registry = stack.enter_context(RegistrySource(open_client(ref, remote), ref))
        return _from_refs(source, registry.resolve(None), lambda d: _registry_layer(registry, d))
    transport, path, ref_name = parse_source(source)
    if transport == "oci":
        layout = OCILayout(path)
        where = str(path.resolve())
        return _from_refs(source, layout.resolve(ref_name), lambda d: _OCIBlob(where, d))
    if transport == "docker-archive":
        with DockerArchive(path) as archive:
            image = archive.resolve(ref_name)
        where = str(path.resolve())
        return _from_refs(source, [image], lambda d: _ArchiveBlob(where, ref_name, d))
    where = str(Path(path).resolve())
    DirTarStream(where).close()  # checks that it is a directory, now rather than mid-scan
    return [_Image(source, source, None, [_Layer(f"dir:{where}", "dir", 0, _DirLayer(where))])]


# --- scanning (runs in worker processes) -----------------------------------------------------


@dataclass(slots=True)
class _Content:
    """One file content: its size, and per chunk size its chunk keys and lengths."""

    size: int
    keys: list[bytes]
    lengths: list[array[int]]
    sampled: dict[bytes, int]


# (path, kind, size, sha256 or b"", link target): kind is a NodeType value or _HARDLINK.
_Entry = tuple[bytes, int, int, bytes, bytes]


@dataclass(slots=True)
class _Scan:
    key: str
    diff_id: str
    tar_bytes: int
    entries: list[_Entry]
    contents: dict[bytes, _Content]


class _Scanner:
    """Cuts file contents at every chunk size; remembers the contents it already described."""

    def __init__(self, sizes: Sequence[int], primary: int, sample: int) -> None:
        self._chunkers = [Chunker(chunker_params(s)) for s in sizes]
        self._primary = list(sizes).index(primary)
        self._sample = sample
        self._seen: set[bytes] = set()
        self._compressed: set[bytes] = set()
        self._zstd = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)

    def scan(self, key: str, opener: _Opener) -> _Scan:
        entries: list[_Entry] = []
        contents: dict[bytes, _Content] = {}
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
                    entries.append((e.name, _HARDLINK, 0, b"", e.linkname))
                elif (kind := _TYPES.get(e.type)) is not None:
                    target = e.linkname if kind is NodeType.SYMLINK else b""
                    entries.append((e.name, int(kind), 0, b"", target))
            tar_bytes = reader.offset
            diff_id = str(stream.digest())
        return _Scan(key, diff_id, tar_bytes, entries, contents)

    def _content(self, reader: Any, size: int, contents: dict[bytes, _Content]) -> bytes:
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

    def _big_content(self, reader: Any, size: int, contents: dict[bytes, _Content]) -> bytes:
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
    ) -> _Content:
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
        return _Content(size, keys, lengths, sampled)


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


_WORKER: _Scanner | None = None


def _worker_init(sizes: tuple[int, ...], primary: int, sample: int) -> None:
    global _WORKER
    _WORKER = _Scanner(sizes, primary, sample)


def _worker_scan(key: str, opener: _Opener) -> _Scan:
    assert _WORKER is not None
    return _WORKER.scan(key, opener)


def _scan_all(
    layers: list[_Layer],
    sizes: tuple[int, ...],
    primary: int,
    sample: int,
    workers: int,
    progress: Progress | None,
) -> tuple[dict[str, _Scan], int]:
    """Scan every distinct layer; returns the scans and the number of processes used."""
    total = sum(max(layer.compressed_bytes, 1) for layer in layers)
    done = 0
    scans: dict[str, _Scan] = {}

    def finished(layer: _Layer, scan: _Scan) -> None:
        nonlocal done
        scans[layer.key] = scan
        done += max(layer.compressed_bytes, 1)
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    parallel = [la for la in layers if la.opener.parallel]
    local = [la for la in layers if not la.opener.parallel]
    used = 1
    if workers > 1 and len(parallel) > 1:
        used = min(workers, len(parallel))
        # Largest first, so the last layer to finish is a small one.
        parallel.sort(key=lambda la: -la.compressed_bytes)
        # fork: workers start at once and need no importable __main__ (spawn re-runs it).
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(
            used, mp_context=context, initializer=_worker_init, initargs=(sizes, primary, sample)
        ) as pool:
            pending: dict[Future[_Scan], _Layer] = {
                pool.submit(_worker_scan, la.key, la.opener): la for la in parallel
            }
            scanner = _Scanner(sizes, primary, sample)
            for la in local:
                finished(la, scanner.scan(la.key, la.opener))
            while pending:
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in ready:
                    finished(pending.pop(future), future.result())
    else:
        scanner = _Scanner(sizes, primary, sample)
        for la in local + parallel:
            finished(la, scanner.scan(la.key, la.opener))
    return scans, used


# --- combining --------------------------------------------------------------------------------


def _bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _split_keys(keys: bytes) -> Iterator[bytes]:
    return (keys[i : i + KEY_BYTES] for i in range(0, len(keys), KEY_BYTES))


def _text(path: bytes) -> str:
    return "/" + path.decode("utf-8", "backslashreplace")


def _norm(path: bytes) -> bytes:
    return b"/".join(p for p in path.split(b"/") if p not in (b"", b"."))


def _grouped(masks: dict[bytes, int], sizes: dict[bytes, int]) -> dict[int, int]:
    """Bytes per distinct mask."""
    out: dict[int, int] = {}
    for key, mask in masks.items():
        out[mask] = out.get(mask, 0) + sizes[key]
    return out


def _to_image_masks(groups: dict[int, int], layer_images: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for lmask, nbytes in groups.items():
        imask = 0
        for bit in _bits(lmask):
            imask |= layer_images[bit]
        out[imask] = out.get(imask, 0) + nbytes
    return out


def _histogram(sizes: Iterable[int]) -> list[HistogramBin]:
    chunks: Counter[int] = Counter()
    nbytes: Counter[int] = Counter()
    for s in sizes:
        upper = 1 << max(0, (s - 1).bit_length())
        chunks[upper] += 1
        nbytes[upper] += s
    return [HistogramBin(u, chunks[u], nbytes[u]) for u in sorted(chunks)]


def _merged_view(image: _Image, scans: dict[str, _Scan]) -> tuple[int, int, dict[bytes, int]]:
    """(files, bytes, {content: size}) of the image's merged root (hard links count once)."""
    overlay = Overlay()
    for layer in image.layers:
        entries = []
        for path, kind, size, digest, target in scans[layer.key].entries:
            if kind == _HARDLINK:
                entries.append(LayerEntry(path=path, is_hardlink=True, link_target=target))
            elif kind == NodeType.FILE:
                chunks = (ChunkRef(Digest("sha256", digest), size),) if size else ()
                entries.append(LayerEntry(path=path, size=size, chunks=chunks))
            else:
                node_type = NodeType(kind)
                dev = (0, 0) if node_type in (NodeType.CHAR_DEVICE, NodeType.BLOCK_DEVICE) else None
                entries.append(LayerEntry(path=path, type=node_type, target=target, dev=dev))
        try:
            overlay.apply_layer(entries)
        except Malformed as exc:
            raise UsageError(
                f"layer {layer.key} of {image.name} cannot be merged into a file system: {exc}"
            ) from None
    stats = overlay.stats()
    contents: dict[bytes, int] = {}
    groups: set[bytes] = set()
    stack: list[MergedDir] = [overlay.root]
    while stack:
        d = stack.pop()
        for child in d.children.values():
            if isinstance(child, MergedDir):
                stack.append(child)
            elif child.type == NodeType.FILE and child.chunks:
                if child.hardlink is not None:
                    if child.hardlink in groups:
                        continue
                    groups.add(child.hardlink)
                digest = child.chunks[0].id.raw
                contents[digest] = child.size
    return stats.files, stats.bytes, contents


def analyze(
    sources: Sequence[str],
    *,
    chunk_sizes: Sequence[int] = DEFAULT_CHUNK_SIZES,
    sequence: bool = False,
    workers: int = 2,
    compression_sample: int = DEFAULT_COMPRESSION_SAMPLE,
    repo: Repository | None = None,
    remote: RemoteOptions | None = None,
    progress: Progress | None = None,
) -> Analysis:
    """Analyse the images at ``sources`` (see the module docstring) and return every figure.

    ``chunk_sizes`` are FastCDC average sizes (bounds: :func:`chunker_params`); the primary size,
    used for per-image, per-layer, similarity and update figures, is the one closest to
    :data:`PRIMARY_CHUNK_SIZE`. ``sequence`` treats the sources as versions in order.
    ``tag:NAME`` sources read image records of ``repo``; ``docker://`` sources use ``remote``.
    """
    start = time.perf_counter()
    if not sources:
        raise UsageError("analyze needs at least one image source")
    sizes = tuple(sorted(set(chunk_sizes)))
    if not sizes:
        raise UsageError("give at least one chunk size")
    for s in sizes:
        chunker_params(s)  # raises UsageError for sizes FastCDC cannot use
    primary = min(sizes, key=lambda s: (abs(math.log2(s / PRIMARY_CHUNK_SIZE)), s))
    if not isinstance(compression_sample, int) or compression_sample < 1:
        raise UsageError("compression_sample must be a positive integer (1: compress all)")
    if workers < 1:
        raise UsageError("workers must be at least 1")
    with ExitStack() as stack:
        images = [im for src in sources for im in _resolve(src, stack, repo, remote)]
        distinct: dict[str, _Layer] = {}
        for image in images:
            for layer in image.layers:
                distinct.setdefault(layer.key, layer)
        scans, used = _scan_all(
            list(distinct.values()), sizes, primary, compression_sample, workers, progress
        )
    result = _combine(
        images, list(distinct.values()), scans, sizes, primary, compression_sample, sequence, used
    )
    result.seconds = time.perf_counter() - start
    return result


def _combine(
    images: list[_Image],
    layers: list[_Layer],
    scans: dict[str, _Scan],
    sizes: tuple[int, ...],
    primary: int,
    sample: int,
    sequence: bool,
    workers: int,
) -> Analysis:
    p = sizes.index(primary)
    # Every content described by some scan; every chunk per size with its length.
    table: dict[bytes, tuple[int, bytes]] = {}  # content -> (size, primary keys)
    counts: dict[bytes, list[int]] = {}  # content -> chunk count per size
    unique: list[dict[bytes, int]] = [{} for _ in sizes]
    sampled: dict[bytes, int] = {}
    for scan in scans.values():
        for digest, content in scan.contents.items():
            if not content.size:
                continue  # the empty content (whiteouts, empty files) has no chunks
            table[digest] = (content.size, content.keys[p])
            counts[digest] = [len(lens) for lens in content.lengths]
            for i, (keys, lens) in enumerate(zip(content.keys, content.lengths, strict=True)):
                unique[i].update(zip(_split_keys(keys), lens, strict=True))
            sampled.update(content.sampled)
        scan.contents = {}
    index_of = {layer.key: i for i, layer in enumerate(layers)}
    layer_images = [0] * len(layers)
    for i, image in enumerate(images):
        for layer in image.layers:
            layer_images[index_of[layer.key]] |= 1 << i

    # Masks of distinct layers per chunk (primary size) and per file content.
    chunk_lmask: dict[bytes, int] = {}
    content_lmask: dict[bytes, int] = {}
    chunk_refs = [0] * len(sizes)
    layer_figs: list[LayerFigures] = []
    occurrences: Counter[bytes] = Counter()
    for li, layer in enumerate(layers):
        bit = 1 << li
        scan = scans[layer.key]
        file_bytes = files = 0
        for _, kind, size, digest, _ in scan.entries:
            if kind != NodeType.FILE:
                continue
            files += 1
            file_bytes += size
            if not size:
                continue
            occurrences[digest] += 1
            for i, n in enumerate(counts[digest]):
                chunk_refs[i] += n
            if content_lmask.get(digest, 0) & bit:
                continue
            content_lmask[digest] = content_lmask.get(digest, 0) | bit
            for k in _split_keys(table[digest][1]):
                chunk_lmask[k] = chunk_lmask.get(k, 0) | bit
        layer_figs.append(
            LayerFigures(
                digest=layer.key,
                diff_id=scan.diff_id,
                media_type=layer.media_type,
                compressed_bytes=layer.compressed_bytes or scan.tar_bytes,
                tar_bytes=scan.tar_bytes,
                file_bytes=file_bytes,
                files=files,
                images=[images[i].name for i in _bits(layer_images[li])],
            )
        )
    content_sizes = {d: v[0] for d, v in table.items()}
    chunk_groups = _grouped(chunk_lmask, unique[p])
    content_groups = _grouped(content_lmask, content_sizes)
    for lmask, nbytes in chunk_groups.items():
        for bit in _bits(lmask):
            fig = layer_figs[bit]
            fig.distinct_chunk_bytes += nbytes
            if lmask == 1 << bit:
                fig.unique_chunk_bytes += nbytes
            else:
                fig.shared_chunk_bytes += nbytes
    chunk_imasks = _to_image_masks(chunk_groups, layer_images)
    content_imasks = _to_image_masks(content_groups, layer_images)

    # Per image: layer storage, then the merged view.
    n = len(images)
    shared = [[0] * n for _ in range(n)]
    for imask, nbytes in chunk_imasks.items():
        bits = list(_bits(imask))
        for a in bits:
            for b in bits:
                shared[a][b] += nbytes
    chunk_mmask: dict[bytes, int] = {}
    content_mmask: dict[bytes, int] = {}
    image_figs: list[ImageFigures] = []
    merged_files_total = merged_bytes_total = 0
    for i, image in enumerate(images):
        bit = 1 << i
        figs = [layer_figs[index_of[la.key]] for la in image.layers]
        file_bytes = sum(f.file_bytes for f in figs)
        distinct_files = sum(b for m, b in content_imasks.items() if m & bit)
        distinct_chunks = shared[i][i]
        only = chunk_imasks.get(bit, 0)
        m_files, m_bytes, m_contents = _merged_view(image, scans)
        merged_files_total += m_files
        merged_bytes_total += m_bytes
        m_chunk_keys: set[bytes] = set()
        for digest in m_contents:
            content_mmask[digest] = content_mmask.get(digest, 0) | bit
            m_chunk_keys.update(_split_keys(table[digest][1]))
        for k in m_chunk_keys:
            chunk_mmask[k] = chunk_mmask.get(k, 0) | bit
        m_distinct = sum(m_contents.values())
        image_figs.append(
            ImageFigures(
                name=image.name,
                source=image.source,
                platform=image.platform,
                layers=[la.key for la in image.layers],
                compressed_bytes=sum(f.compressed_bytes for f in figs),
                tar_bytes=sum(f.tar_bytes for f in figs),
                file_bytes=file_bytes,
                files=sum(f.files for f in figs),
                distinct_file_bytes=distinct_files,
                distinct_chunk_bytes=distinct_chunks,
                unique_chunk_bytes=only,
                shared_chunk_bytes=distinct_chunks - only,
                internal_duplicate_bytes=file_bytes - distinct_chunks,
                merged=MergedFigures(
                    files=m_files,
                    file_bytes=m_bytes,
                    hidden_file_bytes=file_bytes - m_bytes,
                    distinct_file_bytes=m_distinct,
                    distinct_chunk_bytes=sum(unique[p][k] for k in m_chunk_keys),
                    internal_duplicate_bytes=m_bytes - m_distinct,
                ),
            )
        )
    jaccard = [
        [
            (shared[a][b] / (shared[a][a] + shared[b][b] - shared[a][b]))
            if shared[a][a] + shared[b][b] - shared[a][b]
            else 1.0
            for b in range(n)
        ]
        for a in range(n)
    ]

    # Where the duplication is: repeat occurrences over the distinct layers, in image order.
    top = [d for d, c in occurrences.most_common() if c > 1]
    top.sort(key=lambda d: (-(occurrences[d] - 1) * content_sizes[d], d))
    top = top[:_TOP]
    wanted = set(top)
    paths: dict[bytes, list[str]] = {d: [] for d in top}
    seen: set[bytes] = set()
    dirs: dict[bytes, list[int]] = {}
    per_image_counts: list[Counter[bytes]] = [Counter() for _ in images]
    per_image_paths: list[dict[bytes, list[str]]] = [{} for _ in images]
    for layer in layers:
        for path, kind, size, digest, _ in scans[layer.key].entries:
            if kind != NodeType.FILE or not size:
                continue
            if digest in wanted and len(paths[digest]) < 3:
                paths[digest].append(_text(_norm(path)))
            if digest in seen:
                parts = _norm(path).split(b"/")[:-1]
                for depth in range(1, min(len(parts), _DIR_DEPTH) + 1):
                    slot = dirs.setdefault(b"/".join(parts[:depth]), [0, 0])
                    slot[0] += size
                    slot[1] += 1
            seen.add(digest)
    for i, image in enumerate(images):
        for layer in image.layers:
            for path, kind, size, digest, _ in scans[layer.key].entries:
                if kind == NodeType.FILE and size:
                    per_image_counts[i][digest] += 1
                    per_image_paths[i].setdefault(digest, [])
                    if len(per_image_paths[i][digest]) < 3:
                        per_image_paths[i][digest].append(_text(_norm(path)))

    def image_names(digest: bytes) -> list[str]:
        mask = 0
        for bit in _bits(content_lmask[digest]):
            mask |= layer_images[bit]
        return [images[i].name for i in _bits(mask)]

    top_files = [
        DuplicateFile(
            sha256=d.hex(),
            size=content_sizes[d],
            occurrences=occurrences[d],
            redundant_bytes=(occurrences[d] - 1) * content_sizes[d],
            paths=paths[d],
            images=image_names(d),
        )
        for d in top
    ]
    top_dirs = sorted(dirs.items(), key=lambda kv: (-kv[1][0], kv[0]))[:_TOP]
    top_directories = [DirectoryFigures(_text(p), v[0], v[1]) for p, v in top_dirs]
    for i, image_fig in enumerate(image_figs):
        c = per_image_counts[i]
        dup = sorted(
            (d for d, k in c.items() if k > 1), key=lambda d: (-(c[d] - 1) * content_sizes[d], d)
        )[:5]
        image_fig.internal_duplicates = [
            DuplicateFile(
                d.hex(),
                content_sizes[d],
                c[d],
                (c[d] - 1) * content_sizes[d],
                per_image_paths[i][d],
                [image_fig.name],
            )
            for d in dup
        ]

    # Chunk-size sweep.
    logical = sum(f.file_bytes for f in image_figs)
    merged_chunk_bytes = sum(unique[p][k] for k in chunk_mmask)
    size_figs = []
    for i, avg in enumerate(sizes):
        params = chunker_params(avg)
        unique_bytes = sum(unique[i].values())
        index_bytes = len(unique[i]) * INDEX_ENTRY_BYTES
        tree_bytes = chunk_refs[i] * CHUNK_REF_BYTES
        size_figs.append(
            ChunkSizeFigures(
                avg_size=avg,
                min_size=params.min_size,
                max_size=params.max_size,
                primary=avg == primary,
                unique_chunks=len(unique[i]),
                unique_bytes=unique_bytes,
                chunk_refs=chunk_refs[i],
                dedup_ratio=logical / unique_bytes if unique_bytes else 1.0,
                index_bytes=index_bytes,
                tree_bytes=tree_bytes,
                metadata_bytes=index_bytes + tree_bytes,
                total_bytes=unique_bytes + index_bytes + tree_bytes,
                merged_unique_bytes=merged_chunk_bytes if avg == primary else None,
                histogram=_histogram(unique[i].values()),
            )
        )

    # Stored estimate: zstd of the sampled unique primary chunks, extrapolated.
    raw_sampled = sum(unique[p][k] for k in sampled)
    comp_sampled = sum(sampled.values())
    primary_bytes = sum(unique[p].values())
    estimate: int | None
    if sample == 1:
        estimate = comp_sampled
        method = f"zstd level {_ZSTD_LEVEL} of every unique {primary}-byte chunk (exact)"
    elif raw_sampled:
        estimate = round(primary_bytes * comp_sampled / raw_sampled)
        method = (
            f"zstd level {_ZSTD_LEVEL} of the unique {primary}-byte chunks whose key's first byte "
            f"is a multiple of {sample} (about 1 in {sample}, deterministic), extrapolated"
        )
    else:
        estimate = 0 if not primary_bytes else None
        method = "no chunk fell in the compression sample; use compression_sample=1"

    costs: list[UpdateCost] | None = None
    if sequence:
        costs = []
        for a in range(n - 1):
            b = a + 1
            have = {la.key for la in images[a].layers}
            wanted_keys = dict.fromkeys(la.key for la in images[b].layers if la.key not in have)
            fetch = [layer_figs[index_of[key]] for key in wanted_keys]

            def delta(groups: dict[int, int], a: int = a, b: int = b) -> int:
                return sum(v for m, v in groups.items() if m >> b & 1 and not m >> a & 1)

            costs.append(
                UpdateCost(
                    source=images[a].name,
                    target=images[b].name,
                    target_compressed_bytes=image_figs[b].compressed_bytes,
                    layer_compressed_bytes=sum(f.compressed_bytes for f in fetch),
                    layer_tar_bytes=sum(f.tar_bytes for f in fetch),
                    file_bytes=delta(content_imasks),
                    chunk_bytes=delta(chunk_imasks),
                )
            )

    totals = Totals(
        images=n,
        layer_refs=sum(len(im.layers) for im in images),
        distinct_layers=len(layers),
        files=sum(f.files for f in image_figs),
        logical_file_bytes=logical,
        tar_bytes=sum(f.tar_bytes for f in image_figs),
        compressed_bytes=sum(f.compressed_bytes for f in image_figs),
        layer_level_tar_bytes=sum(f.tar_bytes for f in layer_figs),
        layer_level_file_bytes=sum(f.file_bytes for f in layer_figs),
        layer_level_compressed_bytes=sum(f.compressed_bytes for f in layer_figs),
        layer_level_header_bytes=sum(f.tar_bytes - f.file_bytes for f in layer_figs),
        distinct_files=len(content_sizes),
        file_level_bytes=sum(content_sizes.values()),
        chunk_level_bytes={f.avg_size: f.unique_bytes for f in size_figs},
        stored_estimate_bytes=estimate,
        stored_estimate_method=method,
        compression_sampled_bytes=raw_sampled,
        compression_sampled_compressed_bytes=comp_sampled,
        merged_files=merged_files_total,
        merged_file_bytes=merged_bytes_total,
        merged_file_level_bytes=sum(content_sizes[d] for d in content_mmask),
        merged_chunk_level_bytes=merged_chunk_bytes,
    )
    return Analysis(
        chunk_sizes=list(sizes),
        primary_chunk_size=primary,
        compression_sample=sample,
        totals=totals,
        images=image_figs,
        layers=layer_figs,
        similarity=Similarity([im.name for im in images], shared, jaccard),
        sizes=size_figs,
        top_files=top_files,
        top_directories=top_directories,
        sequence=costs,
        seconds=0.0,
        workers=workers,
        scanned_tar_bytes=sum(s.tar_bytes for s in scans.values()),
    )


def default_workers() -> int:
    """Worker processes to use by default: the usable cores, at most 4."""
    return max(1, min(4, len(os.sched_getaffinity(0))))
