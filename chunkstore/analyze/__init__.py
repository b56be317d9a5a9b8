"""Cross-image dedup analysis: what a set of images shares at layer, file and chunk level.

``chunkstore analyze`` answers "how much would a dedup store save on these images?" without a
repository. Every figure is an exact byte count, computed from one pass over the layers:

1. **Resolve** each source into images and their layers (:mod:`.sources`), with the same readers
   backup uses, or, for ``tag:NAME``, the layer recipes of an image record (the tar is rebuilt
   from the repository and checked against its diff_id).
2. **Scan each distinct layer once** (:mod:`.scan`; layers are identified by their compressed
   digest, so a base layer shared by five images is read once): each regular file is hashed with
   SHA-256 and, when its content was not seen before, cut by FastCDC at every chunk size asked,
   each chunk keyed by the first :data:`KEY_BYTES` bytes of its SHA-256. Distinct layers are
   scanned in worker processes when there are several (FastCDC holds the GIL).
3. **Combine** (:mod:`.figures`): per chunk, a bit mask of the distinct layers that hold it; masks
   are grouped and mapped to image masks, which gives per-layer and per-image unique and shared
   bytes, the pairwise similarity matrix and the update costs without any per-image chunk set.
   Memory is bounded by the number of unique chunks and file contents.

Two views are reported, and every figure says which it is:

* **layer storage**: everything the layers hold, as a registry stores them. A file deleted by a
  whiteout in a later layer, or replaced by a later layer, still counts: its bytes are still
  shipped and stored.
* **merged view** (:mod:`.merged`): the root file system a container sees, after whiteouts and
  replacements (:class:`index.overlay.Overlay`); hidden files do not count, hard links count once.

Chunk-level figures cover file content only; tar headers and padding are reported apart
(``tar_bytes - file_bytes``). The stored estimate is zstd level 3 of the unique chunks of the
primary chunk size, measured on a deterministic sample (chunks whose key's first byte is a multiple
of ``compression_sample``) and extrapolated; ``compression_sample=1`` compresses every unique chunk.

The modules, one job each:

* :mod:`.model`: constants, result records (:class:`Analysis` and its parts), the JSON document;
* :mod:`.sources`: ``SOURCE`` strings -> images -> layers with openers;
* :mod:`.scan`: the one-pass multi-size chunk and file hashing of layer tars, worker processes;
* :mod:`.merged`: an image's merged view from the scanned entries;
* :mod:`.figures`: every figure from the scanned facts;
* :mod:`.run`: :func:`analyze`, the pipeline in order.

The HTML report is :mod:`chunkstore.analyze_report`. This package re-exports the public API.
"""

from __future__ import annotations

from chunkstore.analyze.model import (
    BIG_FILE,
    CHUNK_REF_BYTES,
    DEFAULT_CHUNK_SIZES,
    DEFAULT_COMPRESSION_SAMPLE,
    INDEX_ENTRY_BYTES,
    KEY_BYTES,
    KIB,
    MIB,
    PRIMARY_CHUNK_SIZE,
    SCHEMA,
    ZSTD_LEVEL,
    Analysis,
    ChunkSizeFigures,
    DirectoryFigures,
    DuplicateFile,
    HistogramBin,
    ImageFigures,
    LayerFigures,
    MergedFigures,
    Progress,
    Similarity,
    StorageFigures,
    Totals,
    UpdateCost,
    chunker_params,
)
from chunkstore.analyze.run import analyze, default_workers

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
    "analyze",
    "chunker_params",
    "default_workers",
]
