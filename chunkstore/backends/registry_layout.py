"""The on-registry layout of a repository (SPEC section 10a): file tags, file and image manifests.

Pure functions, no requests: the tag of a repository file, the canonical manifest that holds it
and the strict parse of one fetched back, and the manifests (and OCI index) of an image tag.
:mod:`chunkstore.backends.registry` speaks them to a registry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chunkstore import jsonsafe
from chunkstore.backends.base import FileType, Handle
from chunkstore.errors import CorruptMetadata
from chunkstore.registry.mediatypes import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST
from index.errors import Malformed
from index.ids import Digest

__all__ = [
    "ARTIFACT_TYPE",
    "EMPTY",
    "EMPTY_DIGEST",
    "FILE_ANNOTATION",
    "IMAGE_ARTIFACT_TYPE",
    "PART_FILES",
    "TAG_PREFIX",
    "FileEntry",
    "file_manifest",
    "file_media_type",
    "file_tag",
    "image_tag_manifests",
    "parse_file_manifest",
    "sha256_of",
]

#: ``artifactType`` of every file manifest.
ARTIFACT_TYPE = "application/vnd.chunkstore.file.v1"
#: ``artifactType`` of an image tag's manifest (config: the record; layers: the files it needs).
IMAGE_ARTIFACT_TYPE = "application/vnd.chunkstore.image.v1"
#: Descriptors per image-tag manifest; more are split into parts under an index (4 MiB limit).
PART_FILES = 8000
#: Annotation naming the file a manifest holds (``<type>/<name>``).
FILE_ANNOTATION = "dev.chunkstore.file"
#: Every tag of a repository file starts with this (image tags never do).
TAG_PREFIX = "_cs."
#: The config blob every file manifest shares (OCI 1.1's empty descriptor).
EMPTY = b"{}"
EMPTY_DIGEST = Digest("sha256", hashlib.sha256(EMPTY).digest())
_EMPTY_DESCRIPTOR = {
    "mediaType": OCI_EMPTY,
    "digest": str(EMPTY_DIGEST),
    "size": len(EMPTY),
}
_MEDIA_NAMES = {
    FileType.CONFIG: "config",
    FileType.KEY: "key",
    FileType.PACK: "pack",
    FileType.INDEX: "index",
    FileType.RECORD: "record",
    FileType.LOCK: "lock",
}


def file_tag(handle: Handle) -> str:
    """The tag holding ``handle``'s manifest."""
    if handle.type is FileType.CONFIG:
        return f"{TAG_PREFIX}config"
    return f"{TAG_PREFIX}{handle.type.value}.{handle.name}"


def file_media_type(file_type: FileType) -> str:
    """The layer media type of a file of ``file_type``."""
    return f"application/vnd.chunkstore.{_MEDIA_NAMES[file_type]}.v1"


def sha256_of(data: bytes) -> Digest:
    """The SHA-256 digest of ``data``."""
    return Digest("sha256", hashlib.sha256(data).digest())


@dataclass(frozen=True, slots=True)
class FileEntry:
    """What a file's manifest says: the blob holding it, and the manifest's own digest."""

    blob: Digest
    size: int
    manifest: Digest


def file_manifest(handle: Handle, blob: Digest, size: int) -> bytes:
    """The canonical manifest holding ``handle``'s file: blob ``blob`` of ``size`` bytes."""
    label = f"{handle.type.value}/{handle.name}"
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": _EMPTY_DESCRIPTOR,
        "layers": [
            {
                "mediaType": file_media_type(handle.type),
                "digest": str(blob),
                "size": size,
                "annotations": {FILE_ANNOTATION: label},
            }
        ],
        "annotations": {FILE_ANNOTATION: label},
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def parse_file_manifest(handle: Handle, data: bytes, digest: Digest) -> FileEntry:
    """The blob a file manifest references; CorruptMetadata unless it is exactly ours for it."""
    where = f"registry manifest of {handle}"
    try:
        doc = jsonsafe.loads(data)
        layers = doc["layers"]
        if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
            raise ValueError("it must reference exactly one blob")
        layer: dict[str, Any] = layers[0]
        label = f"{handle.type.value}/{handle.name}"
        if doc.get("artifactType") != ARTIFACT_TYPE:
            raise ValueError(f"artifactType is not {ARTIFACT_TYPE}")
        if layer.get("mediaType") != file_media_type(handle.type):
            raise ValueError("its blob has the wrong media type")
        if (doc.get("annotations") or {}).get(FILE_ANNOTATION) != label:
            raise ValueError(f"it names another file, not {label}")
        size = layer["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("its blob size is not a non-negative integer")
        blob = Digest.parse(layer["digest"])
    except (ValueError, KeyError, TypeError, AttributeError, Malformed) as exc:
        raise CorruptMetadata(f"{where} is invalid: {exc}") from exc
    return FileEntry(blob, size, digest)


def _canonical_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(handle: Handle, blob: Digest, size: int) -> dict[str, Any]:
    return {
        "mediaType": file_media_type(handle.type),
        "digest": str(blob),
        "size": size,
        "annotations": {FILE_ANNOTATION: f"{handle.type.value}/{handle.name}"},
    }


def image_tag_manifests(
    record: tuple[Handle, Digest, int],
    files: Sequence[tuple[Handle, Digest, int]],
    part_files: int | None = None,
) -> tuple[list[bytes], bytes | None]:
    """The manifests an image tag is made of (SPEC section 10a), and the index above them.

    ``record`` and ``files`` are (handle, blob digest, size). One manifest (config: the record;
    layers: the files) when at most ``part_files`` files, index None; else one manifest per
    ``part_files`` files, each with the record as config, pushed by digest, and the OCI index the
    tag then points at. ``part_files`` None: 8,000.
    """
    config = _descriptor(*record)
    layers = [_descriptor(*f) for f in files]
    if part_files is None:
        part_files = PART_FILES
    parts = [layers[i : i + part_files] for i in range(0, len(layers), part_files)] or [[]]
    manifests = [
        _canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": IMAGE_ARTIFACT_TYPE,
                "config": config,
                "layers": part,
            }
        )
        for part in parts
    ]
    if len(manifests) == 1:
        return manifests, None
    descs = [
        {
            "mediaType": OCI_MANIFEST,
            "artifactType": IMAGE_ARTIFACT_TYPE,
            "digest": str(sha256_of(data)),
            "size": len(data),
        }
        for data in manifests
    ]
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": IMAGE_ARTIFACT_TYPE,
        "manifests": descs,
    }
    return manifests, _canonical_json(index)
