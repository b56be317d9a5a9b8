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
    2. per layer: verified blob -> decompress (bomb-capped) -> ingest (recipe, chunks, members)
       -> find how to recreate the compressed blob exactly (zlib/zstd settings), if possible
    3. apply the layers' members in order (whiteouts) -> merged root tree blobs
    4. flush packs and index, then write the ``image`` record named by the tag (written last)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chunkstore import jsonsafe
from chunkstore.backends import RemoteOptions
from chunkstore.blob import BlobType
from chunkstore.errors import UsageError
from chunkstore.images.decompress import OCI_LAYER_TAR, layer_compression, open_decompressed
from chunkstore.images.dirsource import DirTarStream, dir_image_metadata
from chunkstore.images.docker_archive import DockerArchive
from chunkstore.images.ingest import IngestedMember, ingest_layer
from chunkstore.images.locations import parse_source
from chunkstore.images.oci_layout import (
    MAX_MANIFEST_SIZE,
    OCI_MANIFEST,
    Descriptor,
    ImageRef,
    OCILayout,
    Platform,
)
from chunkstore.images.rebuild import recipe_members
from chunkstore.images.recompress import find_reproduction
from chunkstore.images.registry_image import (
    DOCKER_PREFIX,
    RegistrySource,
    open_client,
    parse_docker_reference,
)
from chunkstore.images.tarstream import TarEntry
from chunkstore.repository import Repository
from chunkstore.streams import ChunkStorer
from index.errors import FormatError, Malformed
from index.ids import Digest, sha256
from index.image import ImageBody, ImageEntry
from index.image import LayerEntry as LayerRecord
from index.overlay import LayerEntry, Overlay
from index.record import Record
from index.tree import NodeType

__all__ = ["BackupResult", "backup_image"]


_TYPES = {
    b"0": NodeType.FILE,
    b"\x00": NodeType.FILE,
    b"7": NodeType.FILE,
    b"S": NodeType.FILE,
    b"5": NodeType.DIRECTORY,
    b"2": NodeType.SYMLINK,
    b"3": NodeType.CHAR_DEVICE,
    b"4": NodeType.BLOCK_DEVICE,
    b"6": NodeType.FIFO,
}


def _layer_entry(m: IngestedMember) -> LayerEntry | None:
    e: TarEntry = m.entry
    if e.type == b"1":
        return LayerEntry(path=e.name, is_hardlink=True, link_target=e.linkname)
    node_type = _TYPES.get(e.type)
    if node_type is None:
        return None  # kept bit-exact in the recipe, not part of the file system view
    return LayerEntry(
        path=e.name,
        type=node_type,
        mode=e.mode & 0o7777,
        uid=e.uid,
        gid=e.gid,
        mtime_ns=e.mtime_ns,
        xattrs=e.xattrs,
        target=e.linkname if node_type is NodeType.SYMLINK else b"",
        dev=(e.devmajor, e.devminor)
        if node_type in (NodeType.CHAR_DEVICE, NodeType.BLOCK_DEVICE)
        else None,
        size=e.size if node_type is NodeType.FILE else 0,
        chunks=m.chunks,
        lists=m.lists,
    )


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
    notes: list[str] = field(default_factory=list)


def backup_image(
    repo: Repository,
    source: str,
    tag: str,
    *,
    platform: str | None = None,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
    remote: RemoteOptions | None = None,
) -> BackupResult:
    """Back up the image(s) at ``source`` under the record name ``tag``.

    ``source`` is ``oci:DIR[:REF]``, ``docker-archive:FILE[:REF]``, ``dir:PATH`` or
    ``docker://HOST[:PORT]/NAME[:TAG|@DIGEST]`` (see the module docstring). ``platform`` selects
    one platform of an OCI index or a registry image; for a docker archive it must match the
    image's; for a directory it is the platform written into the generated config (default: this
    machine's). ``remote`` says how to reach a registry (plain HTTP, credentials).
    """
    if source.startswith(DOCKER_PREFIX):
        transport, path, ref = "docker", Path(), None
    else:
        transport, path, ref = parse_source(source)
    entries: list[ImageEntry] = []
    result = BackupResult(record_id=sha256(b""), images=0, layers=0)
    index_bytes: bytes | None = None
    written_before = repo.stats["bytes_written"]
    index_media_type: str | None = None
    with ChunkStorer(repo, workers=workers, progress=progress) as storer:
        if transport == "oci":
            layout = OCILayout(path)
            images = layout.resolve(ref, platform)
            for image in images:
                entries.append(
                    _backup_one(repo, image, layout.open_blob, _layout_head(layout), storer, result)
                )
            index_desc = _outer_index(images, platform)
            if index_desc is not None:
                index_bytes = layout.read_blob(index_desc, MAX_MANIFEST_SIZE)
                index_media_type = index_desc.media_type
        elif transport == "docker":
            reference = parse_docker_reference(source)
            with RegistrySource(open_client(reference, remote), reference) as registry:
                images = registry.resolve(platform)
                for image in images:
                    # Layers already stored are reused before their blob is ever opened, so
                    # they are not downloaded (RegistrySource fetches a layer on first open).
                    entries.append(
                        _backup_one(
                            repo, image, registry.open_blob, registry.read_head, storer, result
                        )
                    )
                index_desc = _outer_index(images, platform)
                if index_desc is not None:
                    index_bytes = registry.read_manifest(index_desc)
                    index_media_type = index_desc.media_type
        elif transport == "docker-archive":
            with DockerArchive(path) as archive:
                image = archive.resolve(ref)
                _check_platform(image, platform, source)
                entries.append(
                    _backup_one(
                        repo, image, archive.open_blob, _stream_head(archive), storer, result
                    )
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
_ReadHead = Callable[[Descriptor], bytes]


def _layout_head(layout: OCILayout) -> _ReadHead:
    def head(desc: Descriptor) -> bytes:
        if desc.size <= 1 << 20:
            return layout.read_blob(desc, 1 << 20)
        with open(layout.blob_path(desc.digest), "rb") as f:
            return f.read(1 << 20)

    return head


def _stream_head(archive: DockerArchive) -> _ReadHead:
    def head(desc: Descriptor) -> bytes:
        with archive.open_blob(desc) as blob:
            return _read_up_to(blob, 1 << 20)

    return head


def _read_up_to(f: Any, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0 and (piece := f.read(n)):
        parts.append(piece)
        n -= len(piece)
    return b"".join(parts)


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


def _apply(overlay: Overlay, members: Iterable[IngestedMember], what: str) -> None:
    try:
        overlay.apply_layer(e for m in members if (e := _layer_entry(m)) is not None)
    except Malformed as exc:
        raise UsageError(f"{what} cannot be merged into the image's file system: {exc}") from None


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
    _apply(overlay, layer.members, f"directory {path}")
    root = overlay.build_trees(lambda data: repo.save_blob(BlobType.META, data).id)
    result.layers += 1
    result.reproducible_layers += 1
    result.tar_bytes += layer.size
    doc = json.loads(config)
    return ImageEntry(
        manifest=manifest,
        manifest_media_type=OCI_MANIFEST,
        config=config,
        platform=str(Platform.from_json(doc, "generated config")),
        root=root,
        root_meta=_root_meta(overlay),
        layers=(
            LayerRecord(
                digest=str(layer.diff_id),
                media_type=OCI_LAYER_TAR,
                size=layer.size,
                diff_id=str(layer.diff_id),
                tar_size=layer.size,
                recipe=layer.recipe,
                compression="none",
                reproduce=None,
            ),
        ),
    )


def _backup_one(
    repo: Repository,
    image: ImageRef,
    open_blob: _OpenBlob,
    read_head: _ReadHead,
    storer: ChunkStorer,
    result: BackupResult,
) -> ImageEntry:
    overlay = Overlay()
    layers: list[LayerRecord] = []
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
            _apply(overlay, recipe_members(repo, previous.recipe), f"layer {desc.digest}")
            layers.append(previous)
            result.layers += 1
            result.reused_layers += 1
            result.tar_bytes += previous.tar_size
            if previous.reproduce is not None or compression == "none":
                result.reproducible_layers += 1
            continue
        with open_blob(desc) as blob:
            tar = open_decompressed(blob, compression)
            layer = ingest_layer(repo, tar, storer=storer)
        if str(layer.diff_id) != want_diff:
            raise UsageError(
                f"layer {desc.digest} decompresses to {layer.diff_id}, but the config says "
                f"{want_diff}: the image is inconsistent; nothing was recorded"
            )
        reproduction = None
        if compression != "none":
            prefix = read_head(desc)

            def reopen(d: Any = desc, c: Any = compression) -> Any:
                return open_decompressed(open_blob(d), c)

            reproduction = find_reproduction(
                reopen, desc.digest, desc.size, compression, compressed_prefix=prefix
            )
        if reproduction is not None or compression == "none":
            result.reproducible_layers += 1
        _apply(overlay, layer.members, f"layer {desc.digest}")
        layers.append(
            LayerRecord(
                digest=str(desc.digest),
                media_type=desc.media_type,
                size=desc.size,
                diff_id=str(layer.diff_id),
                tar_size=layer.size,
                recipe=layer.recipe,
                compression=compression,
                reproduce=reproduction.to_dict() if reproduction is not None else None,
            )
        )
        result.layers += 1
        result.tar_bytes += layer.size
    root = overlay.build_trees(lambda data: repo.save_blob(BlobType.META, data).id)
    return ImageEntry(
        manifest=image.manifest_bytes,
        manifest_media_type=image.media_type,
        config=image.config_bytes,
        platform=None if image.platform is None else str(image.platform),
        root=root,
        layers=tuple(layers),
        root_meta=_root_meta(overlay),
    )
