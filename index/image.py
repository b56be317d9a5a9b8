"""Tag records of images: what a backup of one image (all its platforms) keeps.

The body of a record of type ``"image"`` (see :mod:`index.record`), version 2::

    {"version": 2,                         absent in version 1 bodies
     "source": tstr,                       where it came from (oci:DIR:REF, docker-archive:FILE, ...)
     "index": bstr / null,                 the original image index bytes (multi-platform), exact
     "index_media_type": tstr / null,
     "images": [image, ...]}               one per platform, in the index's order

    image = {"manifest": bstr, "manifest_media_type": tstr,      exact bytes as pulled
             "config": bstr,                                      exact bytes (same image ID)
             "platform": tstr / null,                             e.g. "linux/amd64"
             "root": ref,                                         merged root tree (index/tree.py)
             "root_meta": [mode, uid, gid, mtime_ns] / null,      the root directory itself
             ? "view_notes": [tstr, ...],                         version 3 only (see below)
             "layers": [layer, ...]}

    layer = {"digest": tstr, "media_type": tstr, "size": uint,   the blob as it was shipped
             "diff_id": tstr, "tar_size": uint,                   the uncompressed tar
             "recipe": ref,                                       index/recipe.py
             "compression": "none" | "gzip" | "zstd",
             "reproduce": reproduce / null,                       how to recreate the exact blob
             "original": {"size": uint, "lists": [ref, ...]} / null}   the blob's own bytes, kept

    reproduce = {"family": tstr, "params": {tstr: int / tstr / bool}, "header": bstr}

A layer is given back exactly when ``compression`` is ``"none"`` (the tar is the blob), when
``reproduce`` names a compressor family and its settings (``header`` is the gzip member header
verbatim, empty for zstd), or when ``original`` holds the compressed blob itself as a chunked
stream (:mod:`index.chunklist`); at most one of ``reproduce`` and ``original`` is set.

``view_notes`` (non-empty when present) says what the merged root tree leaves out of the layers,
or shows although docker and containerd would refuse it (:mod:`chunkstore.images.layerview`). A
body is written as version 3 only when an image has view notes, else as version 2, so that most
records stay readable by version 2 readers; a version 2 reader refuses a version 3 body.

Version 1 bodies (no ``version`` key, no ``original``, ``reproduce`` in the zlib/libzstd-only form
``{"compression", "level", "mem_level", "header" (hex)}`` or ``{"compression", "level",
"checksum", "content_size"}``) are read and translated to the version 2 form; newer versions are
refused with :class:`~index.errors.UnsupportedVersion`.

Digests are kept as their OCI text (``sha256:...``) because they name registry objects, not blobs
of this repository; only ``root``, ``recipe`` and the chunk lists of ``original`` are blob
references.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from index.chunklist import StreamBody
from index.errors import Malformed, UnsupportedVersion
from index.ids import Digest

__all__ = [
    "IMAGE_BODY_VERSION",
    "MAX_IMAGE_BODY_VERSION",
    "ImageBody",
    "ImageEntry",
    "LayerEntry",
    "Reproduce",
]

#: The version of image record bodies this code writes (3 when an image has view notes).
IMAGE_BODY_VERSION = 2
#: The newest version read (1 to this); version 3 adds ``view_notes``.
MAX_IMAGE_BODY_VERSION = 3
_MAX_NOTES = 1000
_MAX_PARAMS = 32


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


ParamValue = int | str | bool


@dataclass(frozen=True, slots=True)
class Reproduce:
    """How to recreate a compressed layer blob from its tar: a compressor family and settings."""

    family: str
    params: dict[str, ParamValue]
    #: The gzip member header, verbatim (empty for zstd).
    header: bytes = b""

    @property
    def label(self) -> str:
        """Short human text, e.g. ``go-flate level=6``."""
        inner = " ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.family} {inner}".strip()

    def to_cbor(self) -> dict[str, Any]:
        """Record value."""
        return {"family": self.family, "params": dict(self.params), "header": self.header}

    @classmethod
    def from_cbor(cls, v: Any) -> Reproduce:
        """Validate a record value (the family and its params are checked by the engine)."""
        if not isinstance(v, dict) or set(v) != {"family", "params", "header"}:
            raise Malformed("image record reproduce fields are not the expected set")
        params = v["params"]
        if not isinstance(params, dict) or len(params) > _MAX_PARAMS:
            raise Malformed("image record reproduce params are not a small map")
        for key, value in params.items():
            if not isinstance(key, str) or not isinstance(value, int | str):
                raise Malformed("image record reproduce params must map text to int, text, bool")
        if not isinstance(v["header"], bytes) or len(v["header"]) > 1 << 16:
            raise Malformed("image record reproduce header is not bytes")
        return cls(_text(v["family"], "reproduce family"), dict(params), v["header"])

    @classmethod
    def from_v1(cls, v: Any) -> Reproduce:
        """Translate a version 1 ``reproduce`` map (zlib or libzstd settings only)."""
        try:
            if v["compression"] == "gzip" and set(v) == {
                "compression",
                "level",
                "mem_level",
                "header",
            }:
                params: dict[str, ParamValue] = {
                    "level": _int(v["level"]),
                    "mem_level": _int(v["mem_level"]),
                    "wbits": 15,
                    "strategy": "default",
                }
                return cls("zlib", params, bytes.fromhex(_text(v["header"], "header")))
            if v["compression"] == "zstd" and set(v) == {
                "compression",
                "level",
                "checksum",
                "content_size",
            }:
                if not isinstance(v["checksum"], bool) or not (
                    v["content_size"] is None or type(v["content_size"]) is int
                ):
                    raise Malformed("image record v1 zstd reproduce values are malformed")
                size = v["content_size"]
                params = {
                    "level": _int(v["level"]),
                    "checksum": v["checksum"],
                    "content_size": -1 if size is None else size,
                }
                return cls("zstd", params)
        except (KeyError, TypeError, ValueError) as exc:
            raise Malformed(f"image record v1 reproduce map is malformed: {exc}") from None
        raise Malformed("image record v1 reproduce map is malformed")


def _int(v: object) -> int:
    if type(v) is not int:
        raise Malformed("image record value is not an integer")
    return v


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
    reproduce: Reproduce | None = None
    #: The compressed blob's own bytes, kept because no reproduction matched.
    original: StreamBody | None = None

    @property
    def exact(self) -> bool:
        """Whether a restore gives back the original blob (so its digest is known up front)."""
        return self.outcome != "new-digest"

    @property
    def outcome(self) -> str:
        """How a restore gives the blob back: ``uncompressed`` (the tar is the blob),
        ``reproduced`` (by :attr:`reproduce`), ``kept`` (:attr:`original` holds its bytes) or
        ``new-digest`` (recompressed with defaults: the backup accepted new digests)."""
        if self.compression == "none":
            return "uncompressed"
        if self.reproduce is not None:
            return "reproduced"
        if self.original is not None:
            return "kept"
        return "new-digest"

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
            "reproduce": None if self.reproduce is None else self.reproduce.to_cbor(),
            "original": None if self.original is None else self.original.to_cbor(),
        }

    @classmethod
    def from_cbor(cls, v: Any, version: int = IMAGE_BODY_VERSION) -> LayerEntry:
        """Validate a record value of a body of ``version``."""
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
        if version >= 2:
            keys.add("original")
        if not isinstance(v, dict) or set(v) != keys:
            raise Malformed("image record layer fields are not the expected set")
        if not isinstance(v["recipe"], Digest):
            raise Malformed("image record layer recipe is not a reference")
        if v["compression"] not in ("none", "gzip", "zstd"):
            raise Malformed("image record layer compression is unknown")
        reproduce = v["reproduce"]
        if reproduce is not None:
            if not isinstance(reproduce, dict):
                raise Malformed("image record layer reproduce is not a map")
            reproduce = (
                Reproduce.from_cbor(reproduce) if version >= 2 else Reproduce.from_v1(reproduce)
            )
        original = v.get("original")
        if original is not None:
            original = StreamBody.from_cbor(original)
            if reproduce is not None:
                raise Malformed("image record layer has both reproduce and original")
        return cls(
            _digest_text(v["digest"], "layer digest"),
            _text(v["media_type"], "layer media type"),
            _uint(v["size"], "layer size"),
            _digest_text(v["diff_id"], "layer diff_id"),
            _uint(v["tar_size"], "layer tar size"),
            v["recipe"],
            v["compression"],
            reproduce,
            original,
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
    #: What the merged view leaves out or shows differently (body version 3; usually empty).
    view_notes: tuple[str, ...] = ()

    def to_cbor(self) -> dict[str, Any]:
        """Record value."""
        d: dict[str, Any] = {
            "root_meta": None if self.root_meta is None else list(self.root_meta),
            "manifest": self.manifest,
            "manifest_media_type": self.manifest_media_type,
            "config": self.config,
            "platform": self.platform,
            "root": self.root,
            "layers": [layer.to_cbor() for layer in self.layers],
        }
        if self.view_notes:
            d["view_notes"] = list(self.view_notes)
        return d

    @classmethod
    def from_cbor(cls, v: Any, version: int = MAX_IMAGE_BODY_VERSION) -> ImageEntry:
        """Validate a record value of a body of ``version``."""
        keys = {
            "manifest",
            "manifest_media_type",
            "config",
            "platform",
            "root",
            "layers",
            "root_meta",
        }
        if not isinstance(v, dict) or set(v) - {"view_notes"} != keys:
            raise Malformed("image record image fields are not the expected set")
        notes = v.get("view_notes", [None])
        if "view_notes" in v and (
            version < 3
            or not isinstance(notes, list)
            or not 0 < len(notes) <= _MAX_NOTES
            or not all(isinstance(n, str) for n in notes)
        ):
            raise Malformed("image record view_notes are not a short list of text")
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
            tuple(LayerEntry.from_cbor(x, version) for x in v["layers"]),
            meta,
            tuple(v.get("view_notes", ())),
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
        notes = any(image.view_notes for image in self.images)
        return {
            "version": MAX_IMAGE_BODY_VERSION if notes else IMAGE_BODY_VERSION,
            "source": self.source,
            "index": self.index,
            "index_media_type": self.index_media_type,
            "images": [i.to_cbor() for i in self.images],
        }

    @classmethod
    def from_cbor(cls, v: Any) -> ImageBody:
        """Validate a record body."""
        if not isinstance(v, dict):
            raise Malformed("image record body is not a map")
        version = v.get("version", 1)
        if type(version) is not int:
            raise Malformed("image record body version is not an integer")
        if not 1 <= version <= MAX_IMAGE_BODY_VERSION:
            raise UnsupportedVersion("image record", version, (1, MAX_IMAGE_BODY_VERSION))
        keys = {"source", "index", "index_media_type", "images"}
        if set(v) != (keys | {"version"} if version >= 2 else keys):
            raise Malformed("image record body fields are not the expected set")
        if v["index"] is not None and not isinstance(v["index"], bytes):
            raise Malformed("image record index is not bytes")
        if v["index_media_type"] is not None and not isinstance(v["index_media_type"], str):
            raise Malformed("image record index media type is not text")
        if not isinstance(v["images"], list) or not v["images"]:
            raise Malformed("image record has no images")
        return cls(
            _text(v["source"], "source"),
            tuple(ImageEntry.from_cbor(x, version) for x in v["images"]),
            v["index"],
            v["index_media_type"],
        )
