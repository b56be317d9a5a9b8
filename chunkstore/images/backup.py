"""Image backup and restore: OCI layouts in, tag records out, and back.

Backup of one source (``oci:DIR[:REF]``), per platform image::

    1. read and verify the manifest and config (exact bytes kept)
    2. per layer: verified blob -> decompress (bomb-capped) -> ingest (recipe, chunks, members)
       -> find how to recreate the compressed blob exactly (zlib/zstd settings), if possible
    3. apply the layers' members in order (whiteouts) -> merged root tree blobs
    4. flush packs and index, then write the ``image`` record named by the tag (written last)

Restore of a record into ``oci:DIR[:REF]``::

    per layer: recipe -> tar (checked against diff_id) -> recompress -> blob written atomically
    (its digest: the original when reproducible, else a new one and the manifest is rewritten)
    config bytes as stored (same image ID) -> manifest -> index.json entry (written last)
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from chunkstore.blob import BlobType
from chunkstore.errors import CorruptMetadata, UsageError
from chunkstore.images.compression import (
    Compression,
    Reproduction,
    find_reproduction,
    layer_compression,
    open_decompressed,
    recompress,
)
from chunkstore.images.ingest import IngestedMember, ingest_layer
from chunkstore.images.oci_layout import ImageRef, OCILayout, OCILayoutWriter
from chunkstore.images.rebuild import rebuild_layer
from chunkstore.images.tarstream import TarEntry
from chunkstore.repository import Repository
from chunkstore.streams import ChunkStorer
from index.errors import FormatError
from index.ids import Digest, sha256
from index.image import ImageBody, ImageEntry
from index.image import LayerEntry as LayerRecord
from index.overlay import LayerEntry, Overlay
from index.record import Record
from index.tree import NodeType

__all__ = ["BackupResult", "RestoreResult", "backup_image", "parse_source", "restore_image"]

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
    """Split ``oci:DIR[:REF]`` into (transport, path, ref)."""
    transport, sep, rest = text.partition(":")
    if not sep or transport != "oci" or not rest:
        raise UsageError(
            f"unsupported image location {text!r:.100}; use oci:DIR[:REF] "
            "(docker-archive: and dir: are planned)"
        )
    path, sep, ref = rest.partition(":")
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
    """Back up the image(s) at ``source`` under the record name ``tag``."""
    _, path, ref = parse_source(source)
    layout = OCILayout(path)
    images = layout.resolve(ref, platform)
    entries: list[ImageEntry] = []
    result = BackupResult(record_id=sha256(b""), images=len(images), layers=0)
    with ChunkStorer(repo, workers=workers, progress=progress) as storer:
        for image in images:
            entries.append(_backup_one(repo, layout, image, storer, result))
        result.new_bytes = storer.stats.new_bytes
        result.stored_bytes = storer.stats.stored_bytes
    body = ImageBody(source=source, images=tuple(entries))
    record = Record(name=tag, time_ns=time.time_ns(), type="image", body=body.to_cbor())
    result.record_id = repo.save_record(record)
    return result


def _backup_one(
    repo: Repository,
    layout: OCILayout,
    image: ImageRef,
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
    for desc, want_diff in zip(image.layers, diff_ids, strict=True):
        compression = layer_compression(desc.media_type)
        with layout.open_blob(desc) as blob:
            tar = open_decompressed(blob, compression)
            layer = ingest_layer(repo, tar, storer=storer)
        if str(layer.diff_id) != want_diff:
            raise UsageError(
                f"layer {desc.digest} decompresses to {layer.diff_id}, but the config says "
                f"{want_diff}: the image is inconsistent; nothing was recorded"
            )
        reproduction = None
        if compression != "none":
            prefix = (
                layout.read_blob(desc, 1 << 20) if desc.size <= 1 << 20 else _head(layout, desc)
            )

            def reopen(d: Any = desc, c: Any = compression) -> Any:
                return open_decompressed(layout.open_blob(d), c)

            reproduction = find_reproduction(
                reopen, desc.digest, desc.size, compression, compressed_prefix=prefix
            )
        if reproduction is not None or compression == "none":
            result.reproducible_layers += 1
        overlay.apply_layer(e for m in layer.members if (e := _layer_entry(m)) is not None)
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
    )


def _head(layout: OCILayout, desc: Any) -> bytes:
    with open(layout.blob_path(desc.digest), "rb") as f:
        return f.read(1 << 20)


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


def restore_image(repo: Repository, name: str, target: str) -> RestoreResult:
    """Restore the newest image record ``name`` into ``oci:DIR[:REF]`` (REF defaults to NAME)."""
    _, path, ref = parse_source(target)
    record_id, record = repo.find_record(name)
    if record.type != "image":
        raise UsageError(f"record {name!r} is a {record.type}, not an image")
    try:
        body = ImageBody.from_cbor(record.body)
    except FormatError as exc:
        raise CorruptMetadata(f"record {record_id.short} is invalid: {exc}") from exc
    writer = OCILayoutWriter(path)
    result = RestoreResult()
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
        writer.add_manifest(manifest, image.manifest_media_type, ref or name, image.platform)
    return result


def _read_pieces(f: Any) -> Iterator[bytes]:
    while piece := f.read(1 << 20):
        yield piece


def _rewrite_manifest(manifest: bytes, new: dict[str, tuple[str, int]]) -> bytes:
    doc = json.loads(manifest)
    for layer in doc.get("layers", []):
        if layer.get("digest") in new:
            layer["digest"], layer["size"] = new[layer["digest"]]
    return json.dumps(doc, separators=(",", ":")).encode()
