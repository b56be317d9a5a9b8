"""Tag records of images: what a backup of one image (all its platforms) keeps.

The body of a record of type ``"image"`` (see :mod:`index.record`)::

    {"source": tstr,                       where it came from (oci:DIR:REF, docker-archive:FILE, ...)
     "index": bstr / null,                 the original image index bytes (multi-platform), exact
     "index_media_type": tstr / null,
     "images": [image, ...]}               one per platform, in the index's order

    image = {"manifest": bstr, "manifest_media_type": tstr,      exact bytes as pulled
             "config": bstr,                                      exact bytes (same image ID)
             "platform": tstr / null,                             e.g. "linux/amd64"
             "root": ref,                                         merged root tree (index/tree.py)
             "root_meta": [mode, uid, gid, mtime_ns] / null,      the root directory itself
             "layers": [layer, ...]}

    layer = {"digest": tstr, "media_type": tstr, "size": uint,   the blob as it was shipped
             "diff_id": tstr, "tar_size": uint,                   the uncompressed tar
             "recipe": ref,                                       index/recipe.py
             "compression": "none" | "gzip" | "zstd",
             "reproduce": map / null}                             how to recreate the exact blob

Digests are kept as their OCI text (``sha256:...``) because they name registry objects, not blobs
of this repository; only ``root`` and ``recipe`` are blob references.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from index.errors import Malformed
from index.ids import Digest

__all__ = ["ImageBody", "ImageEntry", "LayerEntry"]


def _text(v: object, what: str) -> str:
    if not isinstance(v, str):
        raise Malformed(f"image record {what} is not text")
    return v


def _uint(v: object, what: str) -> int:
    if type(v) is not int or v < 0:
        raise Malformed(f"image record {what} is not an unsigned integer")
    return v


def _digest_text(v: object, what: str) -> str:
    Digest.parse(_text(v, what))
    return v  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class LayerEntry:
    """One layer of an image."""

    digest: str
    media_type: str
    size: int
    diff_id: str
    tar_size: int
    recipe: Digest
    compression: str
    reproduce: dict[str, Any] | None = None

    def to_cbor(self) -> dict[str, Any]:
        """Record value."""
        return {
            "digest": self.digest,
            "media_type": self.media_type,
            "size": self.size,
            "diff_id": self.diff_id,
            "tar_size": self.tar_size,
            "recipe": self.recipe,
            "compression": self.compression,
            "reproduce": self.reproduce,
        }

    @classmethod
    def from_cbor(cls, v: Any) -> LayerEntry:
        """Validate a record value."""
        keys = {
            "digest",
            "media_type",
            "size",
            "diff_id",
            "tar_size",
            "recipe",
            "compression",
            "reproduce",
        }
        if not isinstance(v, dict) or set(v) != keys:
            raise Malformed("image record layer fields are not the expected set")
        if not isinstance(v["recipe"], Digest):
            raise Malformed("image record layer recipe is not a reference")
        if v["compression"] not in ("none", "gzip", "zstd"):
            raise Malformed("image record layer compression is unknown")
        if v["reproduce"] is not None and not isinstance(v["reproduce"], dict):
            raise Malformed("image record layer reproduce is not a map")
        return cls(
            _digest_text(v["digest"], "layer digest"),
            _text(v["media_type"], "layer media type"),
            _uint(v["size"], "layer size"),
            _digest_text(v["diff_id"], "layer diff_id"),
            _uint(v["tar_size"], "layer tar size"),
            v["recipe"],
            v["compression"],
            v["reproduce"],
        )


@dataclass(frozen=True, slots=True)
class ImageEntry:
    """One platform's image."""

    manifest: bytes
    manifest_media_type: str
    config: bytes
    platform: str | None
    root: Digest
    layers: tuple[LayerEntry, ...]
    #: The root directory's own mode, uid, gid and mtime (ns), when a layer set them.
    root_meta: tuple[int, int, int, int] | None = None

    def to_cbor(self) -> dict[str, Any]:
        """Record value."""
        return {
            "root_meta": None if self.root_meta is None else list(self.root_meta),
            "manifest": self.manifest,
            "manifest_media_type": self.manifest_media_type,
            "config": self.config,
            "platform": self.platform,
            "root": self.root,
            "layers": [layer.to_cbor() for layer in self.layers],
        }

    @classmethod
    def from_cbor(cls, v: Any) -> ImageEntry:
        """Validate a record value."""
        keys = {
            "manifest",
            "manifest_media_type",
            "config",
            "platform",
            "root",
            "layers",
            "root_meta",
        }
        if not isinstance(v, dict) or set(v) != keys:
            raise Malformed("image record image fields are not the expected set")
        if not isinstance(v["manifest"], bytes) or not isinstance(v["config"], bytes):
            raise Malformed("image record manifest and config must be bytes")
        if v["platform"] is not None and not isinstance(v["platform"], str):
            raise Malformed("image record platform is not text")
        if not isinstance(v["root"], Digest) or not isinstance(v["layers"], list):
            raise Malformed("image record root or layers malformed")
        meta = v["root_meta"]
        if meta is not None:
            if not isinstance(meta, list) or len(meta) != 4:
                raise Malformed("image record root_meta is not [mode, uid, gid, mtime]")
            mode, uid, gid = (_uint(x, "root_meta field") for x in meta[:3])
            if type(meta[3]) is not int or mode > 0o7777:
                raise Malformed("image record root_meta values are out of range")
            meta = (mode, uid, gid, meta[3])
        return cls(
            v["manifest"],
            _text(v["manifest_media_type"], "manifest media type"),
            v["config"],
            v["platform"],
            v["root"],
            tuple(LayerEntry.from_cbor(x) for x in v["layers"]),
            meta,
        )


@dataclass(frozen=True, slots=True)
class ImageBody:
    """The body of an ``image`` record."""

    source: str
    images: tuple[ImageEntry, ...]
    index: bytes | None = None
    index_media_type: str | None = None

    def to_cbor(self) -> dict[str, Any]:
        """Record body."""
        return {
            "source": self.source,
            "index": self.index,
            "index_media_type": self.index_media_type,
            "images": [i.to_cbor() for i in self.images],
        }

    @classmethod
    def from_cbor(cls, v: Any) -> ImageBody:
        """Validate a record body."""
        if not isinstance(v, dict) or set(v) != {"source", "index", "index_media_type", "images"}:
            raise Malformed("image record body fields are not the expected set")
        if v["index"] is not None and not isinstance(v["index"], bytes):
            raise Malformed("image record index is not bytes")
        if v["index_media_type"] is not None and not isinstance(v["index_media_type"], str):
            raise Malformed("image record index media type is not text")
        if not isinstance(v["images"], list) or not v["images"]:
            raise Malformed("image record has no images")
        return cls(
            _text(v["source"], "source"),
            tuple(ImageEntry.from_cbor(x) for x in v["images"]),
            v["index"],
            v["index_media_type"],
        )
