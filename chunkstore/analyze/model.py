"""What ``chunkstore analyze`` reports: the constants, the result records and the JSON document.

Every figure is an exact byte count. The records are plain dataclasses so that
:meth:`Analysis.to_json` is :func:`dataclasses.asdict` plus three additions: the schema tag
(:data:`SCHEMA`), a definition of every term (``definitions``) and the parameters the figures
depend on (``parameters``: the FastCDC bounds of each chunk size, :data:`KEY_BYTES`, the metadata
estimates and the zstd level).

A layer and an image share their layer-storage figures (:class:`StorageFigures`: compressed, tar
and file bytes, files, and distinct, unique and shared chunk bytes); :class:`LayerFigures` and
:class:`ImageFigures` add what only they have. The chunk figures of both are at the primary chunk
size (the swept size closest to :data:`PRIMARY_CHUNK_SIZE`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from chunkstore.chunker import ChunkerParams

__all__ = [
    "BIG_FILE",
    "CHUNK_REF_BYTES",
    "DEFAULT_CHUNK_SIZES",
    "DEFAULT_COMPRESSION_SAMPLE",
    "INDEX_ENTRY_BYTES",
    "KEY_BYTES",
    "KIB",
    "MIB",
    "PRIMARY_CHUNK_SIZE",
    "SCHEMA",
    "ZSTD_LEVEL",
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
    "StorageFigures",
    "Totals",
    "UpdateCost",
    "chunker_params",
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
#: zstd level of the stored estimate (the repository default).
ZSTD_LEVEL = 3

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


@dataclass(slots=True, kw_only=True)
class StorageFigures:
    """Layer-storage figures of a layer or an image (chunk figures at the primary size)."""

    compressed_bytes: int
    tar_bytes: int
    file_bytes: int
    files: int
    distinct_chunk_bytes: int = 0
    unique_chunk_bytes: int = 0
    shared_chunk_bytes: int = 0


@dataclass(slots=True)
class LayerFigures(StorageFigures):
    """One distinct layer (layer storage view; chunk figures at the primary size)."""

    digest: str
    diff_id: str
    media_type: str
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
class ImageFigures(StorageFigures):
    """One image (one platform): layer storage figures, then its merged view."""

    name: str
    source: str
    platform: str | None
    layers: list[str]
    distinct_file_bytes: int
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
    """Everything :func:`~chunkstore.analyze.analyze` found; :meth:`to_json` is ``--json``."""

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
            "zstd_level": ZSTD_LEVEL,
        }
        return doc
