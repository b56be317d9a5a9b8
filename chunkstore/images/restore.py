"""Image restore: tag records out to images again, bit-exact where the format allows.

Targets use skopeo's transport names (see :mod:`chunkstore.images.locations`).

Restore of a record into ``oci:DIR[:REF]`` or ``docker://HOST[:PORT]/NAME[:TAG]`` (one code
path, :func:`_write_images`, feeding an OCI layout writer or a registry push)::

    per layer, one of:
      reproduced: recipe -> tar (checked against diff_id) -> the recorded compressor
      kept:       the original compressed bytes, chunk by chunk (each chunk verified)
      otherwise:  recipe -> tar -> default recompression (the record accepted new digests)
    -> spool file (digest) -> blob stored (its digest: the original, or for the last case a
    new one and the manifest is rewritten); a registry that already holds a blob is not sent it
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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

from chunkstore.backends import RemoteOptions
from chunkstore.errors import IntegrityError, UsageError
from chunkstore.images.decompress import Compression
from chunkstore.images.docker_archive import write_docker_archive
from chunkstore.images.extract import ExtractResult, extract_tree
from chunkstore.images.locations import parse_source
from chunkstore.images.oci_layout import Descriptor, OCILayoutWriter, Platform
from chunkstore.images.rebuild import PieceStream, rebuild_layer
from chunkstore.images.recompress import DEFAULT_GZIP_LEVEL, recompress
from chunkstore.images.registry_image import (
    DOCKER_PREFIX,
    RegistryTarget,
    open_client,
    parse_docker_reference,
)
from chunkstore.registry.mediatypes import OCI_INDEX
from chunkstore.repository import Repository
from chunkstore.reproduce.catalog import reproduce_blob
from chunkstore.streams import iter_stream
from index.ids import Digest, sha256
from index.image import ImageBody, ImageEntry
from index.image import LayerEntry as LayerRecord

__all__ = ["RestoreResult", "layer_blob", "restore_image"]


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
    #: ``dir:`` targets: what the extraction wrote (files, directories, links, bytes).
    extracted: ExtractResult | None = None
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
    result.notes.extend(image.view_notes)  # what the merged tree leaves out of the layers
    extracted = extract_tree(
        repo,
        image.root,
        path,
        force=force,
        allow_special=allow_special,
        preserve_owner=preserve_owner,
    )
    result.skipped = extracted.skipped
    result.extracted = extracted
    if image.root_meta is not None:
        # The root directory's own metadata, applied last (like every directory's).
        mode, uid, gid, mtime_ns = image.root_meta
        os.chmod(path, mode & (0o7777 if allow_special else 0o1777))
        if preserve_owner and os.geteuid() == 0:
            os.chown(path, uid, gid)
        os.utime(path, ns=(mtime_ns, mtime_ns))
    for one, many, items in (
        ("entry was not created", "entries were not created", extracted.skipped),
        ("attribute was not restored", "attributes were not restored", extracted.warnings),
    ):
        if items:
            shown = "; ".join(items[:_NOTE_LIMIT])
            more = f"; and {len(items) - _NOTE_LIMIT} more" if len(items) > _NOTE_LIMIT else ""
            result.notes.append(f"{len(items)} {one if len(items) == 1 else many}: {shown}{more}")
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
        wanted = []
        for layer in image.layers:
            result.layers += 1
            if layer.exact and sink.has_blob(Digest.parse(layer.digest), layer.size):
                result.exact_layers += 1
            else:
                wanted.append(layer)
        # Layers are rebuilt and compressed side by side (the compressors release the GIL),
        # then handed to the sink in manifest order.
        with ThreadPoolExecutor(
            max_workers=_restore_workers(len(wanted)), thread_name_prefix="chunkstore-restore"
        ) as pool:
            spools = [
                pool.submit(_spool_layer, repo, layer, gzip_level, spool_dir) for layer in wanted
            ]
            try:
                for layer, future in zip(wanted, spools, strict=True):
                    spool, digest, size = future.result()
                    sink.add_blob_file(digest, size, spool)
                    spool.close()
                    if str(digest) == layer.digest:
                        result.exact_layers += 1
                        continue
                    new_digests[layer.digest] = (str(digest), size)
                    if layer.reproduce is not None:
                        result.notes.append(
                            f"layer {layer.digest} was recorded as reproducible by "
                            f"{layer.reproduce.family}, but this machine's compressor gave "
                            f"{digest}; please report this with 'chunkstore tags --json' output"
                        )
            finally:
                for future in spools:
                    future.cancel()
                # Leaving the pool waits for the layers still being written: close every spool.
                pool.shutdown(wait=True)
                for future in spools:
                    if not future.cancelled() and future.exception() is None:
                        future.result()[0].close()
        sink.add_blob_bytes(image.config)
        manifest = image.manifest
        if new_digests:
            manifest = _rewrite_manifest(manifest, new_digests)
            result.manifest_rewritten = True
            result.notes.append(
                f"{len(new_digests)} layer(s) were not given back with their original bytes (the "
                "backup accepted new digests, or a reproduction failed: see the notes above); "
                "the manifest was rewritten with the new layer digests (diff_ids and the image "
                "config, hence the image ID, are unchanged)"
            )
        manifests.append((manifest, image))
    return manifests


def _restore_workers(layers: int) -> int:
    return max(1, min(layers, os.cpu_count() or 1, 4))


def _spool_layer(
    repo: Repository, layer: LayerRecord, gzip_level: int, spool_dir: Path | None
) -> tuple[IO[bytes], Digest, int]:
    """The compressed blob of ``layer`` in a temporary file (rewound), with its digest and size."""
    spool = tempfile.TemporaryFile(dir=spool_dir)
    try:
        h = hashlib.sha256()
        size = 0
        for piece in layer_blob(repo, layer, gzip_level):
            h.update(piece)
            size += len(piece)
            spool.write(piece)
        digest = Digest("sha256", h.digest())
        if layer.original is not None and str(digest) != layer.digest:
            raise IntegrityError(
                f"the kept bytes of layer {layer.digest} hash to {digest}: the "
                "repository is damaged; run 'chunkstore check --read-data'"
            )
        spool.seek(0)
        return spool, digest, size
    except BaseException:
        spool.close()
        raise


def layer_blob(
    repo: Repository, layer: LayerRecord, gzip_level: int = DEFAULT_GZIP_LEVEL
) -> Iterator[bytes]:
    """The compressed blob of ``layer``: kept bytes, reproduced, or recompressed by default.

    Kept chunks are verified one by one and a rebuilt tar against its diff_id (after its last
    byte); the blob as a whole is not hashed here: the caller checks it against ``layer.digest``
    (a restore before publishing it, ``chunkstore serve`` before sending its last byte).
    """
    if layer.original is not None:
        return iter_stream(repo, layer.original)
    compression = cast(Compression, layer.compression)
    tar = rebuild_layer(repo, layer.recipe)
    if layer.reproduce is not None:
        return reproduce_blob(tar, compression, layer.reproduce)
    return recompress(PieceStream(tar), compression, gzip_level=gzip_level)


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
