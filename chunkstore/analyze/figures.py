"""Every figure of an :class:`~chunkstore.analyze.model.Analysis`, from the scanned facts alone.

:func:`combine` never reads a layer again: it works from the :class:`~chunkstore.analyze.scan.Scan`
of each distinct layer (entries and content descriptions) and the images that list the layers.

The trick that keeps it linear: bit masks instead of per-image chunk sets.

1. Per chunk of the primary size, and per file content, the **layer mask**: bit ``i`` set when
   distinct layer ``i`` holds it. Per-layer unique and shared bytes come from these.
2. Chunks with the same mask are **grouped** (:func:`_grouped`): a few hundred distinct masks at
   most, each with its byte total.
3. Each layer mask becomes an **image mask** (:func:`_image_mask`: bit ``j`` set when image ``j``
   lists one of the layers). Per image, distinct bytes are the groups whose mask has its bit,
   unique bytes the group whose mask is its bit alone; the pairwise shared bytes (and so the
   Jaccard similarity) and the update cost from version N to N+1 (``mask`` has N+1, not N) are
   sums over the groups too.

Besides: the merged view of each image (:func:`~chunkstore.analyze.merged.merged_view`), the
contents and directories holding the most redundant bytes (repeat occurrences over the distinct
layers), the chunk-size sweep with its metadata estimate and size histogram, and the stored
estimate (zstd of the sampled unique primary chunks, extrapolated). Memory is bounded by the
number of unique chunks and file contents.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from chunkstore.analyze.merged import merged_view
from chunkstore.analyze.model import (
    CHUNK_REF_BYTES,
    INDEX_ENTRY_BYTES,
    KEY_BYTES,
    ZSTD_LEVEL,
    Analysis,
    ChunkSizeFigures,
    DirectoryFigures,
    DuplicateFile,
    HistogramBin,
    ImageFigures,
    LayerFigures,
    MergedFigures,
    Similarity,
    Totals,
    UpdateCost,
    chunker_params,
)
from chunkstore.analyze.scan import Scan
from chunkstore.analyze.sources import Image, Layer
from index.tree import NodeType

__all__ = ["combine"]

_TOP = 20  # contents and directories in the top lists
_TOP_PER_IMAGE = 5  # internal duplicates listed per image
_PATHS = 3  # example paths kept per content
_DIR_DEPTH = 3  # directories are counted down to this depth


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


def _keep_path(paths: list[str], path: bytes) -> None:
    """Add ``path`` to the example paths of a content, up to :data:`_PATHS` of them."""
    if len(paths) < _PATHS:
        paths.append(_text(_norm(path)))


def _grouped(masks: dict[bytes, int], sizes: dict[bytes, int]) -> dict[int, int]:
    """Bytes per distinct mask."""
    out: dict[int, int] = {}
    for key, mask in masks.items():
        out[mask] = out.get(mask, 0) + sizes[key]
    return out


def _image_mask(lmask: int, layer_images: list[int]) -> int:
    """The images that list any of the layers of ``lmask``."""
    imask = 0
    for bit in _bits(lmask):
        imask |= layer_images[bit]
    return imask


def _to_image_masks(groups: dict[int, int], layer_images: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for lmask, nbytes in groups.items():
        imask = _image_mask(lmask, layer_images)
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


def _most_redundant(counts: Counter[bytes], sizes: dict[bytes, int], limit: int) -> list[bytes]:
    """The contents counted more than once, most redundant bytes first (ties by digest)."""
    repeated = (d for d, k in counts.items() if k > 1)
    return sorted(repeated, key=lambda d: (-(counts[d] - 1) * sizes[d], d))[:limit]


def _duplicate(
    digest: bytes, size: int, count: int, paths: list[str], images: list[str]
) -> DuplicateFile:
    return DuplicateFile(digest.hex(), size, count, (count - 1) * size, paths, images)


def _jaccard(shared: list[list[int]]) -> list[list[float]]:
    n = len(shared)
    return [
        [
            (shared[a][b] / (shared[a][a] + shared[b][b] - shared[a][b]))
            if shared[a][a] + shared[b][b] - shared[a][b]
            else 1.0
            for b in range(n)
        ]
        for a in range(n)
    ]


def _duplicates(
    images: list[Image],
    layers: list[Layer],
    scans: dict[str, Scan],
    sizes: dict[bytes, int],
    occurrences: Counter[bytes],
    image_names: Callable[[bytes], list[str]],
    image_figs: list[ImageFigures],
) -> tuple[list[DuplicateFile], list[DirectoryFigures]]:
    """Where the duplication is: repeat occurrences over the distinct layers, in image order.

    Returns the top contents and directories; sets each image's ``internal_duplicates``.
    """
    top = _most_redundant(occurrences, sizes, _TOP)
    paths: dict[bytes, list[str]] = {d: [] for d in top}
    seen: set[bytes] = set()
    dirs: dict[bytes, list[int]] = {}
    for layer in layers:
        for path, kind, size, digest, _ in scans[layer.key].entries:
            if kind != NodeType.FILE or not size:
                continue
            if digest in paths:
                _keep_path(paths[digest], path)
            if digest in seen:
                parts = _norm(path).split(b"/")[:-1]
                for depth in range(1, min(len(parts), _DIR_DEPTH) + 1):
                    slot = dirs.setdefault(b"/".join(parts[:depth]), [0, 0])
                    slot[0] += size
                    slot[1] += 1
            seen.add(digest)
    for image, image_fig in zip(images, image_figs, strict=True):
        counts: Counter[bytes] = Counter()
        image_paths: dict[bytes, list[str]] = {}
        for layer in image.layers:
            for path, kind, size, digest, _ in scans[layer.key].entries:
                if kind == NodeType.FILE and size:
                    counts[digest] += 1
                    _keep_path(image_paths.setdefault(digest, []), path)
        image_fig.internal_duplicates = [
            _duplicate(d, sizes[d], counts[d], image_paths[d], [image_fig.name])
            for d in _most_redundant(counts, sizes, _TOP_PER_IMAGE)
        ]
    top_files = [_duplicate(d, sizes[d], occurrences[d], paths[d], image_names(d)) for d in top]
    top_dirs = sorted(dirs.items(), key=lambda kv: (-kv[1][0], kv[0]))[:_TOP]
    return top_files, [DirectoryFigures(_text(p), v[0], v[1]) for p, v in top_dirs]


def _sweep(
    sizes: tuple[int, ...],
    primary: int,
    unique: list[dict[bytes, int]],
    chunk_refs: list[int],
    logical: int,
    merged_chunk_bytes: int,
) -> list[ChunkSizeFigures]:
    """One :class:`ChunkSizeFigures` per chunk size: unique bytes, metadata, histogram."""
    out = []
    for i, avg in enumerate(sizes):
        params = chunker_params(avg)
        unique_bytes = sum(unique[i].values())
        index_bytes = len(unique[i]) * INDEX_ENTRY_BYTES
        tree_bytes = chunk_refs[i] * CHUNK_REF_BYTES
        out.append(
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
    return out


def _stored_estimate(
    unique: dict[bytes, int], sampled: dict[bytes, int], primary: int, sample: int
) -> tuple[int | None, str, int, int]:
    """zstd of the sampled unique primary chunks, extrapolated: (estimate, method, raw, zstd)."""
    raw_sampled = sum(unique[k] for k in sampled)
    comp_sampled = sum(sampled.values())
    primary_bytes = sum(unique.values())
    estimate: int | None
    if sample == 1:
        estimate = comp_sampled
        method = f"zstd level {ZSTD_LEVEL} of every unique {primary}-byte chunk (exact)"
    elif raw_sampled:
        estimate = round(primary_bytes * comp_sampled / raw_sampled)
        method = (
            f"zstd level {ZSTD_LEVEL} of the unique {primary}-byte chunks whose key's first byte "
            f"is a multiple of {sample} (about 1 in {sample}, deterministic), extrapolated"
        )
    else:
        estimate = 0 if not primary_bytes else None
        method = "no chunk fell in the compression sample; use compression_sample=1"
    return estimate, method, raw_sampled, comp_sampled


def _update_costs(
    images: list[Image],
    layer_figs: dict[str, LayerFigures],
    image_figs: list[ImageFigures],
    content_imasks: dict[int, int],
    chunk_imasks: dict[int, int],
) -> list[UpdateCost]:
    """Bytes to fetch from each version to the next, at layer, file and chunk level."""
    costs = []
    for a in range(len(images) - 1):
        b = a + 1
        have = {la.key for la in images[a].layers}
        wanted = dict.fromkeys(la.key for la in images[b].layers if la.key not in have)
        fetch = [layer_figs[key] for key in wanted]

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
    return costs


def combine(
    images: list[Image],
    layers: list[Layer],
    scans: dict[str, Scan],
    sizes: tuple[int, ...],
    primary: int,
    sample: int,
    sequence: bool,
    workers: int,
) -> Analysis:
    """Every figure of ``images``, whose distinct ``layers`` were scanned into ``scans``.

    ``sizes`` are the swept chunk sizes (``primary`` among them), ``sample`` the compression
    sample, ``sequence`` asks for update costs, ``workers`` is reported as is. ``seconds`` is left
    at 0 for the caller to fill. The content descriptions of ``scans`` are released on the way.
    """
    p = sizes.index(primary)
    # Every content described by some scan; every chunk per size with its length.
    content_sizes: dict[bytes, int] = {}
    primary_keys: dict[bytes, bytes] = {}
    counts: dict[bytes, list[int]] = {}  # content -> chunk count per size
    unique: list[dict[bytes, int]] = [{} for _ in sizes]
    sampled: dict[bytes, int] = {}
    for scan in scans.values():
        for digest, content in scan.contents.items():
            if not content.size:
                continue  # the empty content (whiteouts, empty files) has no chunks
            content_sizes[digest] = content.size
            primary_keys[digest] = content.keys[p]
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
            for k in _split_keys(primary_keys[digest]):
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
        m_files, m_bytes, m_contents = merged_view(image, scans)
        merged_files_total += m_files
        merged_bytes_total += m_bytes
        m_chunk_keys: set[bytes] = set()
        for digest in m_contents:
            content_mmask[digest] = content_mmask.get(digest, 0) | bit
            m_chunk_keys.update(_split_keys(primary_keys[digest]))
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

    def image_names(digest: bytes) -> list[str]:
        return [images[i].name for i in _bits(_image_mask(content_lmask[digest], layer_images))]

    top_files, top_directories = _duplicates(
        images, layers, scans, content_sizes, occurrences, image_names, image_figs
    )
    logical = sum(f.file_bytes for f in image_figs)
    merged_chunk_bytes = sum(unique[p][k] for k in chunk_mmask)
    size_figs = _sweep(sizes, primary, unique, chunk_refs, logical, merged_chunk_bytes)
    estimate, method, raw_sampled, comp_sampled = _stored_estimate(
        unique[p], sampled, primary, sample
    )
    costs = None
    if sequence:
        by_key = {fig.digest: fig for fig in layer_figs}
        costs = _update_costs(images, by_key, image_figs, content_imasks, chunk_imasks)
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
        similarity=Similarity([im.name for im in images], shared, _jaccard(shared)),
        sizes=size_figs,
        top_files=top_files,
        top_directories=top_directories,
        sequence=costs,
        seconds=0.0,
        workers=workers,
        scanned_tar_bytes=sum(s.tar_bytes for s in scans.values()),
    )
