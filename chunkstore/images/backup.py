"""Image backup: images in, tag records out (restore: :mod:`chunkstore.images.restore`).

Sources and targets use skopeo's transport names:

=============================  ==================================================================
``oci:DIR[:REF]``              an OCI image layout (every platform, or ``platform``'s)
``docker-archive:FILE[:REF]``  a ``docker save`` tar (REF: one of its RepoTags, e.g. ``app:1``)
``dir:PATH``                   backup: a root filesystem directory, stored as a one-layer image
                               (:mod:`chunkstore.images.dirsource`); restore: the merged root
                               file system extracted (:mod:`chunkstore.images.extract`)
``docker://HOST[:PORT]/NAME``  an image in a registry (``[:TAG|@DIGEST]``; restore: ``[:TAG]``),
                               pulled and pushed by :mod:`chunkstore.images.registry_image`;
                               ``remote`` gives plain HTTP and credentials
=============================  ==================================================================

Backup of one image, per platform::

    1. read and verify the manifest and config (exact bytes kept)
    2. per layer: verified blob -> decompress (bomb-capped) -> ingest (recipe, chunks, members),
       while a probe (chunkstore.reproduce.probe) recognises the compressor from the same read;
       if none reproduces the blob, the blob's own bytes are stored as well (kept), unless the
       caller accepts new digests
    3. apply the layers' members in order (whiteouts) -> merged root tree blobs
    4. flush packs and index, then write the ``image`` record named by the tag (written last)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chunkstore import jsonsafe
from chunkstore.backends import RemoteOptions
from chunkstore.blob import BlobType
from chunkstore.errors import UsageError
from chunkstore.images.decompress import Compression, layer_compression, open_decompressed
from chunkstore.images.dirsource import DirTarStream, dir_image_metadata
from chunkstore.images.docker_archive import DockerArchive
from chunkstore.images.ingest import IngestedLayer, IngestedMember, ingest_layer
from chunkstore.images.layerview import layer_view
from chunkstore.images.locations import parse_source
from chunkstore.images.oci_layout import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageRef,
    OCILayout,
    Platform,
)
from chunkstore.images.rebuild import recipe_members
from chunkstore.images.registry_image import (
    DOCKER_PREFIX,
    RegistrySource,
    open_client,
    parse_docker_reference,
)
from chunkstore.registry.mediatypes import OCI_LAYER_TAR, OCI_MANIFEST
from chunkstore.repository import Repository
from chunkstore.reproduce.probe import ProbeResult, ReproductionProbe, TeeReader
from chunkstore.streams import ChunkStorer, store_with
from index.errors import FormatError
from index.ids import Digest, sha256
from index.image import ImageBody, ImageEntry
from index.image import LayerEntry as LayerRecord
from index.overlay import Overlay
from index.record import Record

__all__ = ["BackupResult", "LayerReport", "backup_image"]


@dataclass(slots=True)
class BackupResult:
    """What a backup stored."""

    record_id: Digest
    images: int
    layers: int
    tar_bytes: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0
    reproducible_layers: int = 0
    reused_layers: int = 0
    #: Layers whose compressed blob no known compressor reproduces, stored as they are.
    kept_layers: int = 0
    kept_bytes: int = 0
    #: One entry per layer: digest, how it will be given back, by what.
    layer_reports: list[LayerReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LayerReport:
    """How one layer will come back from a restore."""

    digest: str
    #: ``uncompressed`` (the tar is the blob), ``reproduced``, ``kept`` (original bytes stored),
    #: or ``new-digest`` (neither: a restore recompresses with defaults).
    outcome: str
    #: The reproduction (``go-flate level=6``), or empty.
    how: str = ""
    #: Bytes of the kept blob that were new to the repository.
    kept_new_bytes: int = 0
    reused: bool = False


def backup_image(
    repo: Repository,
    source: str,
    tag: str,
    *,
    platform: str | None = None,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
    progress_total: Callable[[int], None] | None = None,
    remote: RemoteOptions | None = None,
    keep_originals: bool = True,
    detect: bool = True,
) -> BackupResult:
    """Back up the image(s) at ``source`` under the record name ``tag``.

    Every compressed layer is given back exactly by a restore: either a known compressor
    reproduces it (found while the layer is read), or its compressed bytes are stored too
    (deduplicated like any data). ``keep_originals=False`` stores nothing extra for layers
    that no compressor reproduces; their restore then recompresses with default settings and
    gives the image a new manifest digest (the image ID stays). ``detect=False`` does not look
    for the compressors at all (with ``keep_originals=False``: the backup before exact digests;
    benchmarks use it to measure what detection costs).

    ``source`` is ``oci:DIR[:REF]``, ``docker-archive:FILE[:REF]``, ``dir:PATH`` or
    ``docker://HOST[:PORT]/NAME[:TAG|@DIGEST]`` (see the module docstring). ``platform`` selects
    one platform of an OCI index or a registry image; for a docker archive it must match the
    image's; for a directory it is the platform written into the generated config (default: this
    machine's). ``remote`` says how to reach a registry (plain HTTP, credentials).

    ``progress(n)``: ``n`` more bytes of layer blobs read, as the source holds them (a layer
    already stored counts whole at once); ``progress_total(n)``: called once, as soon as the
    manifests are read, with the sum of their layer sizes. A ``dir:`` source has no manifest: its
    progress counts the bytes of its tar and it has no total.
    """
    if source.startswith(DOCKER_PREFIX):
        transport, path, ref = "docker", Path(), None
    else:
        transport, path, ref = parse_source(source)
    exact = _Exactness(keep_originals, detect)
    entries: list[ImageEntry] = []
    result = BackupResult(record_id=sha256(b""), images=0, layers=0)
    index_bytes: bytes | None = None
    written_before = repo.stats["bytes_written"]
    index_media_type: str | None = None
    tick = progress or _no_progress
    total = progress_total or _no_progress
    storer_progress = progress if transport == "dir" else None  # a tar made here, no blobs
    with ChunkStorer(repo, workers=workers, progress=storer_progress) as storer:
        if transport == "oci":
            layout = OCILayout(path)
            images = layout.resolve(ref, platform)
            total(_layer_bytes(images))
            for image in images:
                entries.append(
                    _backup_one(repo, image, layout.open_blob, tick, storer, result, exact)
                )
            index_desc = _outer_index(images, platform)
            if index_desc is not None:
                index_bytes = layout.read_blob(index_desc, MAX_MANIFEST_SIZE)
                index_media_type = index_desc.media_type
        elif transport == "docker":
            reference = parse_docker_reference(source)
            with RegistrySource(open_client(reference, remote), reference) as registry:
                images = registry.resolve(platform)
                total(_layer_bytes(images))
                for image in images:
                    # Layers already stored are reused before their blob is ever opened, so
                    # they are not downloaded (RegistrySource fetches a layer on first open).
                    entries.append(
                        _backup_one(repo, image, registry.open_blob, tick, storer, result, exact)
                    )
                index_desc = _outer_index(images, platform)
                if index_desc is not None:
                    index_bytes = registry.read_manifest(index_desc)
                    index_media_type = index_desc.media_type
        elif transport == "docker-archive":
            with DockerArchive(path) as archive:
                image = archive.resolve(ref)
                _check_platform(image, platform, source)
                total(_layer_bytes([image]))
                entries.append(
                    _backup_one(repo, image, archive.open_blob, tick, storer, result, exact)
                )
        else:
            entries.append(_backup_dir(repo, path, platform, storer, result))
        result.images = len(entries)
        result.new_bytes = storer.stats.new_bytes
    body = ImageBody(
        source=source,
        images=tuple(entries),
        index=index_bytes,
        index_media_type=index_media_type,
    )
    record = Record(name=tag, time_ns=time.time_ns(), type="image", body=body.to_cbor())
    result.record_id = repo.save_record(record)
    # Everything this backup added to packs: chunks and metadata (trees, recipes, lists).
    result.stored_bytes = repo.stats["bytes_written"] - written_before
    return result


def _outer_index(images: list[ImageRef], platform: str | None) -> Descriptor | None:
    """The image index to keep, exact, or None.

    A multi-platform image keeps its (outermost) image index when every platform was taken: a
    restore then gives back the same index digest.
    """
    outer = {im.parents[0] for im in images if im.parents}
    if platform is None and len(outer) == 1 and all(im.parents for im in images):
        (index_desc,) = outer
        return index_desc
    return None


_OpenBlob = Callable[[Descriptor], Any]


def _no_progress(_n: int) -> None:
    """Progress nobody watches."""


def _layer_bytes(images: list[ImageRef]) -> int:
    """What the progress of a backup of ``images`` counts to: every layer blob's size."""
    return sum(desc.size for image in images for desc in image.layers)


def _counted(open_blob: _OpenBlob, tick: Callable[[int], None]) -> _OpenBlob:
    """``open_blob`` whose streams report every byte read to ``tick``."""

    @contextmanager
    def opened(desc: Descriptor) -> Iterator[TeeReader]:
        with open_blob(desc) as blob:
            yield TeeReader(blob, lambda data: tick(len(data)))

    return opened


@dataclass(frozen=True, slots=True)
class _Exactness:
    keep_originals: bool
    detect: bool


def _ingest_probed(
    repo: Repository,
    open_blob: _OpenBlob,
    desc: Descriptor,
    compression: Compression,
    storer: ChunkStorer,
    detect: bool,
) -> tuple[IngestedLayer, ProbeResult | None]:
    """Ingest one layer blob while a probe finds its compressor from the same read."""
    if compression == "none" or not detect:
        with open_blob(desc) as blob:
            tar = open_decompressed(blob, compression)
            return ingest_layer(repo, tar, storer=storer), None
    with ReproductionProbe(compression) as probe, open_blob(desc) as blob:
        tar = open_decompressed(TeeReader(blob, probe.original), compression)
        layer = ingest_layer(repo, TeeReader(tar, probe.plain), storer=storer)  # type: ignore[arg-type]
        return layer, probe.result()


def _count(result: BackupResult, layer: LayerRecord, *, reused: bool, kept_new: int = 0) -> None:
    """Count ``layer`` in ``result`` by how a restore will give it back."""
    if layer.outcome == "kept":
        result.kept_layers += 1
    if layer.exact:
        result.reproducible_layers += 1
    how = layer.reproduce.label if layer.reproduce is not None else ""
    result.layer_reports.append(LayerReport(layer.digest, layer.outcome, how, kept_new, reused))


def _check_platform(image: ImageRef, platform: str | None, source: str) -> None:
    if platform is None:
        return
    wanted = Platform.parse(platform)
    if image.platform is None or not image.platform.matches(wanted):
        raise UsageError(
            f"{source:.200} holds an image for {image.platform or 'an unknown platform'}, "
            f"not {wanted}"
        )


def _root_meta(overlay: Overlay) -> tuple[int, int, int, int]:
    meta = overlay.root.meta
    return (meta.mode, meta.uid, meta.gid, meta.mtime_ns)


def _known_layers(repo: Repository) -> dict[tuple[str, int], LayerRecord]:
    """Layers of every image record, by (compressed digest, size): the ones not to ingest again."""
    known: dict[tuple[str, int], LayerRecord] = {}
    for _, record in repo.list_records():
        if record.type != "image":
            continue
        try:
            body = ImageBody.from_cbor(record.body)
        except FormatError:
            continue  # a damaged record is reported by check; it is simply not reused here
        for image in body.images:
            for layer in image.layers:
                if repo.has_blob(layer.recipe):
                    known.setdefault((layer.digest, layer.size), layer)
    return known


def _apply(overlay: Overlay, members: Iterable[IngestedMember], what: str) -> list[str]:
    """Apply one layer to the merged view; returns notes on what the view leaves out of it (the
    layer's recipe keeps every byte regardless)."""
    view = layer_view(members)
    overlay.apply_layer(view.entries, on_refused=view.leave_out)
    return view.notes(what)


def _backup_dir(
    repo: Repository,
    path: Path,
    platform: str | None,
    storer: ChunkStorer,
    result: BackupResult,
) -> ImageEntry:
    """A directory as a one-layer image: deterministic tar -> ingest -> generated config."""
    plat = Platform.parse(platform) if platform is not None else None
    source = DirTarStream(path)
    try:
        layer = ingest_layer(repo, source, storer=storer)  # type: ignore[arg-type]
    finally:
        source.close()
    for item in source.skipped:
        result.notes.append(f"not archived: {item}")
    config, manifest = dir_image_metadata(layer.diff_id, layer.size, plat)
    overlay = Overlay()
    view_notes = _apply(overlay, layer.members, f"directory {path}")
    result.notes.extend(view_notes)
    root = overlay.build_trees(lambda data: repo.save_blob(BlobType.META, data).id)
    result.layers += 1
    result.tar_bytes += layer.size
    doc = json.loads(config)
    record = LayerRecord(
        digest=str(layer.diff_id),
        media_type=OCI_LAYER_TAR,
        size=layer.size,
        diff_id=str(layer.diff_id),
        tar_size=layer.size,
        recipe=layer.recipe,
        compression="none",
    )
    _count(result, record, reused=False)
    return ImageEntry(
        manifest=manifest,
        manifest_media_type=OCI_MANIFEST,
        config=config,
        platform=str(Platform.from_json(doc, "generated config")),
        root=root,
        root_meta=_root_meta(overlay),
        layers=(record,),
        view_notes=tuple(view_notes),
    )


def _backup_one(
    repo: Repository,
    image: ImageRef,
    open_blob: _OpenBlob,
    tick: Callable[[int], None],
    storer: ChunkStorer,
    result: BackupResult,
    exact: _Exactness,
) -> ImageEntry:
    """One image: each layer reused or ingested (``tick``: layer blob bytes read, or skipped)."""
    overlay = Overlay()
    layers: list[LayerRecord] = []
    view_notes: list[str] = []
    try:
        config = jsonsafe.loads(image.config_bytes)
    except ValueError as exc:
        raise UsageError(
            f"image {image.manifest_digest.short}: config is not JSON: {exc}"
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("rootfs", {}), dict):
        raise UsageError(f"image {image.manifest_digest.short}: config is not a JSON object")
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(image.layers):
        raise UsageError(
            f"image {image.manifest_digest.short}: config lists {len(diff_ids)} diff_ids for "
            f"{len(image.layers)} layers"
        )
    known = _known_layers(repo)
    for desc, want_diff in zip(image.layers, diff_ids, strict=True):
        compression = layer_compression(desc.media_type)
        previous = known.get((str(desc.digest), desc.size))
        if previous is not None and previous.diff_id == want_diff:
            # The same layer blob is already stored under another record: its recipe and chunks
            # are reused, and only its headers are read back (from the recipe) for the tree.
            view_notes += _apply(
                overlay, recipe_members(repo, previous.recipe), f"layer {desc.digest}"
            )
            layers.append(previous)
            result.layers += 1
            result.reused_layers += 1
            result.tar_bytes += previous.tar_size
            _count(result, previous, reused=True)
            tick(desc.size)
            continue
        layer, probed = _ingest_probed(
            repo, _counted(open_blob, tick), desc, compression, storer, exact.detect
        )
        if str(layer.diff_id) != want_diff:
            raise UsageError(
                f"layer {desc.digest} decompresses to {layer.diff_id}, but the config says "
                f"{want_diff}: the image is inconsistent; nothing was recorded"
            )
        original = None
        kept_new = 0
        # A reproduction counts only if the probe saw the whole blob (it compared every byte).
        reproduce = probed.reproduce if probed and probed.original_size == desc.size else None
        if compression != "none" and reproduce is None:
            if exact.keep_originals:
                before = storer.stats.new_bytes
                with open_blob(desc) as blob:
                    original = store_with(repo, storer, blob)
                if original.size != desc.size:
                    raise UsageError(f"layer {desc.digest} changed while it was read")
                kept_new = storer.stats.new_bytes - before
                result.kept_bytes += kept_new
        view_notes += _apply(overlay, layer.members, f"layer {desc.digest}")
        record = LayerRecord(
            digest=str(desc.digest),
            media_type=desc.media_type,
            size=desc.size,
            diff_id=str(layer.diff_id),
            tar_size=layer.size,
            recipe=layer.recipe,
            compression=compression,
            reproduce=reproduce,
            original=original,
        )
        layers.append(record)
        _count(result, record, reused=False, kept_new=kept_new)
        result.layers += 1
        result.tar_bytes += layer.size
    root = overlay.build_trees(lambda data: repo.save_blob(BlobType.META, data).id)
    result.notes.extend(view_notes)
    return ImageEntry(
        manifest=image.manifest_bytes,
        manifest_media_type=image.media_type,
        config=image.config_bytes,
        platform=None if image.platform is None else str(image.platform),
        root=root,
        layers=tuple(layers),
        root_meta=_root_meta(overlay),
        view_notes=tuple(view_notes),
    )
