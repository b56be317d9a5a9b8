"""The entry point of ``chunkstore analyze``: check the parameters, resolve, scan once, combine.

:func:`analyze` is the whole pipeline in order:

1. check the chunk sizes (each must give valid FastCDC bounds, :func:`~.model.chunker_params`),
   the compression sample and the worker count, and pick the primary chunk size: the swept size
   closest to :data:`~.model.PRIMARY_CHUNK_SIZE` on a log scale (the smaller on a tie);
2. resolve every source into images (:func:`~.sources.resolve`) and keep each distinct layer once;
3. scan the distinct layers (:func:`~.scan.scan_all`), in worker processes when there are several;
4. turn the scans into figures (:func:`~.figures.combine`) and time the whole.

Registry sessions opened while resolving stay open until the scan is over and are closed on the
way out, also on error.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack

from chunkstore.analyze.figures import combine
from chunkstore.analyze.model import (
    DEFAULT_CHUNK_SIZES,
    DEFAULT_COMPRESSION_SAMPLE,
    PRIMARY_CHUNK_SIZE,
    Analysis,
    Progress,
    chunker_params,
)
from chunkstore.analyze.scan import scan_all
from chunkstore.analyze.sources import Layer, resolve
from chunkstore.backends import RemoteOptions
from chunkstore.errors import UsageError
from chunkstore.repository import Repository

__all__ = ["analyze", "default_workers"]


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
    """Analyse the images at ``sources`` (see :mod:`chunkstore.analyze`) and return every figure.

    ``chunk_sizes`` are FastCDC average sizes (bounds: :func:`~.model.chunker_params`); the
    primary size, used for per-image, per-layer, similarity and update figures, is the one closest
    to :data:`~.model.PRIMARY_CHUNK_SIZE`. ``sequence`` treats the sources as versions in order.
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
        images = [im for src in sources for im in resolve(src, stack, repo, remote)]
        distinct: dict[str, Layer] = {}
        for image in images:
            for layer in image.layers:
                distinct.setdefault(layer.key, layer)
        scans, used = scan_all(
            list(distinct.values()), sizes, primary, compression_sample, workers, progress
        )
    result = combine(
        images, list(distinct.values()), scans, sizes, primary, compression_sample, sequence, used
    )
    result.seconds = time.perf_counter() - start
    return result


def default_workers() -> int:
    """Worker processes to use by default: the usable cores, at most 4."""
    return max(1, min(4, len(os.sched_getaffinity(0))))
