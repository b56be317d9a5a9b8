"""Image backup and restore: images in, tag records out, and back.

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

Restore of a record into ``oci:DIR[:REF]`` or ``docker://HOST[:PORT]/NAME[:TAG]`` (one code
path, :func:`_write_images`, feeding an OCI layout writer or a registry push)::

    per layer: recipe -> tar (checked against diff_id) -> recompress -> spool file (digest)
    -> blob stored (its digest: the original when reproducible, else a new one and the manifest
    is rewritten); a registry that already holds a blob is not sent it again
    config bytes as stored (same image ID) -> manifest -> index.json entry / tag (written last)

into ``docker-archive:FILE[:TAG]`` (one platform; the archive is written atomically)::

    config bytes as stored + per layer: recipe -> uncompressed tar (its digest is the diff_id)

into ``dir:PATH`` (one platform): the merged root tree is extracted; entries that cannot be
created (device nodes without ``allow_special``) are listed in :attr:`RestoreResult.skipped`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

from chunkstore import jsonsafe
from chunkstore.backends import RemoteOptions
from chunkstore.blob import BlobType
from chunkstore.errors import UsageError
from chunkstore.images.compression import (
    DEFAULT_GZIP_LEVEL,
    OCI_LAYER_TAR,
    Compression,
    Reproduction,
    find_reproduction,
    layer_compression,
    open_decompressed,
    recompress,
)
from chunkstore.images.dirsource import DirTarStream, dir_image_metadata
from chunkstore.images.docker_archive import DockerArchive, write_docker_archive
from chunkstore.images.extract import extract_tree
from chunkstore.images.ingest import IngestedMember, ingest_layer
from chunkstore.images.oci_layout import (
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ImageRef,
    OCILayout,
    OCILayoutWriter,
    Platform,
)
from chunkstore.images.rebuild import rebuild_layer, recipe_members
from chunkstore.images.registry_image import (
    DOCKER_PREFIX,
    RegistrySource,
    RegistryTarget,
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

__all__ = [
    "TRANSPORTS",
    "BackupResult",
    "RestoreResult",
    "backup_image",
    "parse_source",
    "restore_image",
]

#: The image locations understood, in skopeo's transport syntax.
TRANSPORTS = ("oci", "docker-archive", "dir")
_USAGE = "use oci:DIR[:REF], docker-archive:FILE[:REF], dir:PATH or docker://HOST[:PORT]/NAME[:TAG]"

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


def parse_source(text: str) -> tuple[str, Path, str | None]:
    """Split an image location into (transport, path, ref); see :data:`TRANSPORTS`.

    ``oci:DIR[:REF]`` and ``docker-archive:FILE[:REF]`` split at the first ``:`` after the path
    (a docker reference such as ``app:1.0`` keeps its own colon); ``dir:PATH`` takes the whole
    rest as the path (ref is always None).
    """
    transport, sep, rest = text.partition(":")
    if not sep or transport not in TRANSPORTS or not rest:
        raise UsageError(f"unsupported image location {text!r:.100}; {_USAGE}")
    if transport == "dir":
        return transport, Path(rest), None
    path, sep, ref = rest.partition(":")
    if not path:
        raise UsageError(f"image location {text!r:.100} names no path; {_USAGE}")
    return transport, Path(path), (ref or None) if sep else None


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


class _IterStream:
    """A read-only stream over an iterator of byte strings."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def close(self) -> None:
        pass


@dataclass(slots=True)
class RestoreResult:
    """What a restore wrote."""

    images: int = 0
    layers: int = 0
    exact_layers: int = 0
    manifest_rewritten: bool = False
    notes: list[str] = field(default_factory=list)
    #: ``dir:`` targets: entries not created, as ``"path: reason"`` (also summarised in notes).
    skipped: list[str] = field(default_factory=list)
    #: ``docker://`` targets: blobs sent, their bytes, and blobs the registry already had.
    uploaded_blobs: int = 0
    uploaded_bytes: int = 0
    present_blobs: int = 0


_NOTE_LIMIT = 20


def restore_image(
    repo: Repository,
    name: str,
    target: str,
    *,
    platform: str | None = None,
    force: bool = False,
    allow_special: bool = False,
    preserve_owner: bool = True,
    remote: RemoteOptions | None = None,
    gzip_level: int = DEFAULT_GZIP_LEVEL,
) -> RestoreResult:
    """Restore the newest image record ``name`` into ``target``.

    ``gzip_level``: the zlib level for gzip layers whose original compressor cannot be
    reproduced (exactly reproducible layers always use their recorded settings).

    ``target`` is ``oci:DIR[:REF]`` (REF defaults to NAME; every platform),
    ``docker://HOST[:PORT]/NAME[:TAG]`` (pushed to a registry, TAG defaults to ``latest``; every
    platform, or only ``platform``'s; ``remote``: plain HTTP and credentials), or one platform
    (``platform``, needed when the record holds several) into ``docker-archive:FILE[:TAG]``
    (TAG defaults to ``NAME:latest``; an existing FILE is replaced only with ``force``) or
    ``dir:PATH`` (the merged root file system; PATH must be empty unless ``force``; see
    :func:`chunkstore.images.extract.extract_tree` for ``allow_special`` and
    ``preserve_owner``).
    """
    if target.startswith(DOCKER_PREFIX):
        reference = parse_docker_reference(target)
        if reference.digest is not None:
            raise UsageError(
                f"{target:.200}: a restore target names a tag, not a digest (the digest follows "
                "from the content pushed)"
            )
        _, body = repo.find_body(name, "image", ImageBody.from_cbor)
        if platform is not None:
            body = ImageBody(
                source=body.source,
                images=(_pick_image(body, platform, target),),
                index=None,
                index_media_type=None,
            )
        with RegistryTarget(open_client(reference, remote), reference.tag or "latest") as registry:
            return _restore_registry(repo, body, registry, gzip_level)
    transport, path, ref = parse_source(target)
    _, body = repo.find_body(name, "image", ImageBody.from_cbor)
    if transport == "oci":
        return _restore_oci(repo, body, path, ref or name, gzip_level)
    image = _pick_image(body, platform, target)
    if transport == "docker-archive":
        return _restore_docker_archive(repo, image, path, ref, name, force)
    result = RestoreResult(images=1)
    extracted = extract_tree(
        repo,
        image.root,
        path,
        force=force,
        allow_special=allow_special,
        preserve_owner=preserve_owner,
    )
    result.skipped = extracted.skipped
    if image.root_meta is not None:
        # The root directory's own metadata, applied last (like every directory's).
        mode, uid, gid, mtime_ns = image.root_meta
        os.chmod(path, mode & (0o7777 if allow_special else 0o1777))
        if preserve_owner and os.geteuid() == 0:
            os.chown(path, uid, gid)
        os.utime(path, ns=(mtime_ns, mtime_ns))
    for what, items in (
        ("entries were not created", extracted.skipped),
        ("attributes were not restored", extracted.warnings),
    ):
        if items:
            shown = "; ".join(items[:_NOTE_LIMIT])
            more = f"; and {len(items) - _NOTE_LIMIT} more" if len(items) > _NOTE_LIMIT else ""
            result.notes.append(f"{len(items)} {what}: {shown}{more}")
    return result


def _pick_image(body: ImageBody, platform: str | None, target: str) -> ImageEntry:
    platforms = [i.platform or "unknown" for i in body.images]
    if platform is None:
        if len(body.images) == 1:
            return body.images[0]
        raise UsageError(
            f"the record holds {len(body.images)} images ({', '.join(platforms)}); "
            f"{target:.100} takes one: choose a platform"
        )
    wanted = Platform.parse(platform)
    for image in body.images:
        if image.platform is not None and Platform.parse(image.platform).matches(wanted):
            return image
    raise UsageError(f"the record has no image for {wanted}; it has {', '.join(platforms)}")


def _restore_docker_archive(
    repo: Repository,
    image: ImageEntry,
    path: Path,
    ref: str | None,
    name: str,
    force: bool,
) -> RestoreResult:
    if path.is_dir():
        raise UsageError(f"{path} is a directory; docker-archive: needs a file name")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; choose another file (or force to replace it)")
    tag = ref or name
    if ":" not in tag.rsplit("/", 1)[-1]:
        tag += ":latest"
    layers: list[tuple[Digest, Iterable[bytes]]] = [
        (Digest.parse(layer.diff_id), rebuild_layer(repo, layer.recipe)) for layer in image.layers
    ]
    write_docker_archive(path, image.config, layers, [tag])
    result = RestoreResult(images=1, layers=len(layers))
    result.exact_layers = sum(1 for layer in image.layers if layer.compression == "none")
    if result.exact_layers != len(layers):
        result.manifest_rewritten = True
        result.notes.append(
            "a docker archive holds uncompressed layers, so its manifest differs from the "
            "original (the config, hence the image ID, is unchanged)"
        )
    return result


class _BlobSink(Protocol):
    """Where :func:`_write_images` puts blobs: an OCI layout or a registry."""

    def has_blob(self, digest: Digest, size: int) -> bool:
        """Whether the target holds this blob already (then it is not produced at all)."""
        ...

    def add_blob_file(self, digest: Digest, size: int, f: IO[bytes]) -> None:
        """Store the blob spooled in ``f`` (already hashed to ``digest``)."""
        ...

    def add_blob_bytes(self, data: bytes) -> None:
        """Store a small blob (a config)."""
        ...


class _LayoutSink:
    """An OCI layout as a :class:`_BlobSink` (layers always rewritten, as before)."""

    def __init__(self, writer: OCILayoutWriter) -> None:
        self.writer = writer

    def has_blob(self, digest: Digest, size: int) -> bool:
        return False

    def add_blob_file(self, digest: Digest, size: int, f: IO[bytes]) -> None:
        f.seek(0)
        self.writer.add_blob(digest, _read_pieces(f))

    def add_blob_bytes(self, data: bytes) -> None:
        self.writer.add_blob(sha256(data), [data])


def _expect_exact(layer: LayerRecord) -> bool:
    """Whether a restore gives back the original layer blob (so its digest is known up front)."""
    return layer.reproduce is not None or layer.compression == "none"


def _write_images(
    repo: Repository,
    body: ImageBody,
    sink: _BlobSink,
    spool_dir: Path | None,
    result: RestoreResult,
    gzip_level: int,
) -> list[tuple[bytes, ImageEntry]]:
    """Every layer and config blob of ``body`` into ``sink``; the manifests to store, in order.

    Each layer is rebuilt from its recipe, checked against its diff_id, recompressed (exactly
    when the record says how) and spooled to a temporary file under ``spool_dir``: the digest
    must be known before the blob is published, and a layer can be far larger than memory. A
    manifest whose layers got new digests is rewritten (diff_ids and config unchanged).
    """
    manifests: list[tuple[bytes, ImageEntry]] = []
    for image in body.images:
        result.images += 1
        new_digests: dict[str, tuple[str, int]] = {}
        for layer in image.layers:
            result.layers += 1
            if _expect_exact(layer) and sink.has_blob(Digest.parse(layer.digest), layer.size):
                result.exact_layers += 1
                continue
            reproduction = (
                Reproduction.from_dict(layer.reproduce) if layer.reproduce is not None else None
            )
            compression = cast(Compression, layer.compression)
            tar = _IterStream(rebuild_layer(repo, layer.recipe))
            with tempfile.TemporaryFile(dir=spool_dir) as spool:
                h = hashlib.sha256()
                size = 0
                for piece in recompress(tar, reproduction, compression, gzip_level=gzip_level):
                    h.update(piece)
                    size += len(piece)
                    spool.write(piece)
                digest = Digest("sha256", h.digest())
                sink.add_blob_file(digest, size, spool)
            if str(digest) == layer.digest:
                result.exact_layers += 1
            else:
                new_digests[layer.digest] = (str(digest), size)
        sink.add_blob_bytes(image.config)
        manifest = image.manifest
        if new_digests:
            manifest = _rewrite_manifest(manifest, new_digests)
            result.manifest_rewritten = True
            result.notes.append(
                f"{len(new_digests)} layer(s) could not be recompressed to their original bytes; "
                "the manifest was rewritten with the new layer digests (diff_ids and the image "
                "config, hence the image ID, are unchanged)"
            )
        manifests.append((manifest, image))
    return manifests


def _stored_index(
    original: bytes,
    manifests: list[tuple[bytes, ImageEntry]],
    store: Callable[[bytes, str], Descriptor],
    result: RestoreResult,
) -> bytes:
    """The ``original`` image index, its manifests stored with ``store`` first.

    If a manifest had to be rewritten, the index points at the new one (then the index digest
    changes too, and a note says why). Attestation entries (platform ``unknown/unknown``, which
    a backup skips) are dropped, also with a note: a target may not reference what it lacks.
    """
    renamed: dict[str, tuple[str, int]] = {}
    for manifest, image in manifests:
        desc = store(manifest, image.manifest_media_type)
        if manifest != image.manifest:
            renamed[str(sha256(image.manifest))] = (str(desc.digest), desc.size)
    held = {str(sha256(image.manifest)) for _, image in manifests}
    doc = json.loads(original)
    entries = doc.get("manifests", [])
    kept = [e for e in entries if e.get("digest") in held or not _is_attestation(e)]
    index = original
    if len(kept) != len(entries):
        doc["manifests"] = kept
        index = json.dumps(doc, separators=(",", ":")).encode()
        result.notes.append(
            f"{len(entries) - len(kept)} attestation entries of the image index (not stored by "
            "a backup) were left out; the index digest differs from the original"
        )
    return _rewrite_index(index, renamed) if renamed else index


def _is_attestation(entry: Any) -> bool:
    platform = entry.get("platform") if isinstance(entry, dict) else None
    return isinstance(platform, dict) and (
        platform.get("os"),
        platform.get("architecture"),
    ) == ("unknown", "unknown")


def _restore_oci(
    repo: Repository, body: ImageBody, path: Path, ref: str, gzip_level: int
) -> RestoreResult:
    writer = OCILayoutWriter(path)
    result = RestoreResult()
    manifests = _write_images(
        repo, body, _LayoutSink(writer), path if path.is_dir() else None, result, gzip_level
    )
    if body.index is not None and body.index_media_type is not None:
        index = _stored_index(body.index, manifests, writer.add_bytes, result)
        writer.add_manifest(index, body.index_media_type, ref)
        return result
    for manifest, image in manifests:
        writer.add_manifest(manifest, image.manifest_media_type, ref, image.platform)
    return result


def _restore_registry(
    repo: Repository, body: ImageBody, target: RegistryTarget, gzip_level: int
) -> RestoreResult:
    """Push ``body`` under ``target``'s tag: blobs, then manifests by digest, then the tag."""
    result = RestoreResult()
    manifests = _write_images(repo, body, target, None, result, gzip_level)
    if body.index is not None and body.index_media_type is not None:
        index = _stored_index(body.index, manifests, target.add_manifest_blob, result)
        target.tag_manifest(index, body.index_media_type)
    elif len(manifests) == 1:
        manifest, image = manifests[0]
        target.tag_manifest(manifest, image.manifest_media_type)
    else:
        # Several images without their original index (e.g. an OCI layout listing one manifest
        # per platform under a name): a registry tag names one object, so an index is made.
        entries = []
        for manifest, image in manifests:
            desc = target.add_manifest_blob(manifest, image.manifest_media_type)
            if image.platform is not None:
                desc = Descriptor(
                    desc.media_type, desc.digest, desc.size, platform=Platform.parse(image.platform)
                )
            entries.append(desc.to_json())
        index = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries},
            separators=(",", ":"),
        ).encode()
        target.tag_manifest(index, OCI_INDEX)
        result.notes.append(
            f"the record holds {len(manifests)} images without an image index; an OCI image "
            f"index listing them was pushed as {target.location}"
        )
    result.uploaded_blobs = target.stats.uploaded_blobs
    result.uploaded_bytes = target.stats.uploaded_bytes
    result.present_blobs = target.stats.present_blobs
    return result


def _rewrite_index(index: bytes, new: dict[str, tuple[str, int]]) -> bytes:
    doc = json.loads(index)
    for entry in doc.get("manifests", []):
        if entry.get("digest") in new:
            entry["digest"], entry["size"] = new[entry["digest"]]
    return json.dumps(doc, separators=(",", ":")).encode()


def _read_pieces(f: Any) -> Iterator[bytes]:
    while piece := f.read(1 << 20):
        yield piece


def _rewrite_manifest(manifest: bytes, new: dict[str, tuple[str, int]]) -> bytes:
    doc = json.loads(manifest)
    for layer in doc.get("layers", []):
        if layer.get("digest") in new:
            layer["digest"], layer["size"] = new[layer["digest"]]
    return json.dumps(doc, separators=(",", ":")).encode()
