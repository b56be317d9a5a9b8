"""Image backup and restore: images in, tag records out, and back.

Sources and targets use skopeo's transport names:

=============================  ==================================================================
``oci:DIR[:REF]``              an OCI image layout (every platform, or ``platform``'s)
``docker-archive:FILE[:REF]``  a ``docker save`` tar (REF: one of its RepoTags, e.g. ``app:1``)
``dir:PATH``                   backup: a root filesystem directory, stored as a one-layer image
                               (:mod:`chunkstore.images.dirsource`); restore: the merged root
                               file system extracted (:mod:`chunkstore.images.extract`)
=============================  ==================================================================

Backup of one image, per platform::

    1. read and verify the manifest and config (exact bytes kept)
    2. per layer: verified blob -> decompress (bomb-capped) -> ingest (recipe, chunks, members)
       -> find how to recreate the compressed blob exactly (zlib/zstd settings), if possible
    3. apply the layers' members in order (whiteouts) -> merged root tree blobs
    4. flush packs and index, then write the ``image`` record named by the tag (written last)

Restore of a record into ``oci:DIR[:REF]``::

    per layer: recipe -> tar (checked against diff_id) -> recompress -> blob written atomically
    (its digest: the original when reproducible, else a new one and the manifest is rewritten)
    config bytes as stored (same image ID) -> manifest -> index.json entry (written last)

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
from typing import Any, cast

from chunkstore.blob import BlobType
from chunkstore.errors import UsageError
from chunkstore.images.compression import (
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
    OCI_MANIFEST,
    Descriptor,
    ImageRef,
    OCILayout,
    OCILayoutWriter,
    Platform,
)
from chunkstore.images.rebuild import rebuild_layer, recipe_members
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
_USAGE = "use oci:DIR[:REF], docker-archive:FILE[:REF] or dir:PATH"

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
) -> BackupResult:
    """Back up the image(s) at ``source`` under the record name ``tag``.

    ``source`` is ``oci:DIR[:REF]``, ``docker-archive:FILE[:REF]`` or ``dir:PATH`` (see the
    module docstring). ``platform`` selects one platform of an OCI index; for a docker archive it
    must match the image's; for a directory it is the platform written into the generated config
    (default: this machine's).
    """
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
            # A multi-platform image keeps its (outermost) image index, exact, when every
            # platform was taken: a restore then gives back the same index digest.
            outer = {im.parents[0] for im in images if im.parents}
            if platform is None and len(outer) == 1 and all(im.parents for im in images):
                (index_desc,) = outer
                index_bytes = layout.read_blob(index_desc, MAX_MANIFEST_SIZE)
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
    config = json.loads(image.config_bytes)
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
) -> RestoreResult:
    """Restore the newest image record ``name`` into ``target``.

    ``target`` is ``oci:DIR[:REF]`` (REF defaults to NAME; every platform), or one platform
    (``platform``, needed when the record holds several) into ``docker-archive:FILE[:TAG]``
    (TAG defaults to ``NAME:latest``; an existing FILE is replaced only with ``force``) or
    ``dir:PATH`` (the merged root file system; PATH must be empty unless ``force``; see
    :func:`chunkstore.images.extract.extract_tree` for ``allow_special`` and
    ``preserve_owner``).
    """
    transport, path, ref = parse_source(target)
    _, body = repo.find_body(name, "image", ImageBody.from_cbor)
    if transport == "oci":
        return _restore_oci(repo, body, path, ref or name)
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


def _restore_oci(repo: Repository, body: ImageBody, path: Path, ref: str) -> RestoreResult:
    writer = OCILayoutWriter(path)
    result = RestoreResult()
    manifests: list[tuple[bytes, ImageEntry]] = []
    for image in body.images:
        result.images += 1
        new_digests: dict[str, tuple[str, int]] = {}
        for layer in image.layers:
            result.layers += 1
            reproduction = (
                Reproduction.from_dict(layer.reproduce) if layer.reproduce is not None else None
            )
            compression = cast(Compression, layer.compression)
            tar = _IterStream(rebuild_layer(repo, layer.recipe))
            with tempfile.TemporaryFile(dir=path if path.is_dir() else None) as spool:
                # Spooled to a temporary file: the digest must be known before the blob is
                # published, and a layer can be far larger than memory.
                h = hashlib.sha256()
                size = 0
                for piece in recompress(tar, reproduction, compression):
                    h.update(piece)
                    size += len(piece)
                    spool.write(piece)
                digest = Digest("sha256", h.digest())
                spool.seek(0)
                writer.add_blob(digest, _read_pieces(spool))
            if str(digest) == layer.digest:
                result.exact_layers += 1
            else:
                new_digests[layer.digest] = (str(digest), size)
        config_digest = sha256(image.config)
        writer.add_blob(config_digest, [image.config])
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
    if body.index is not None and body.index_media_type is not None:
        # Give back the original image index; if a manifest had to be rewritten, point the index
        # at the new manifest (then the index digest changes too, and the note says why).
        renamed: dict[str, tuple[str, int]] = {}
        for manifest, image in manifests:
            desc = writer.add_bytes(manifest, image.manifest_media_type)
            if manifest != image.manifest:
                renamed[str(sha256(image.manifest))] = (str(desc.digest), desc.size)
        index = _rewrite_index(body.index, renamed) if renamed else body.index
        writer.add_manifest(index, body.index_media_type, ref)
        return result
    for manifest, image in manifests:
        writer.add_manifest(manifest, image.manifest_media_type, ref, image.platform)
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
