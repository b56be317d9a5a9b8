"""Image manifests: the descriptor model, and the walk from a manifest or index to ``ImageRef``s.

Every image source that stores OCI-style manifests (an OCI layout on disk, ``oci:``; a registry,
``docker://``) holds an image as the same graph::

    image index / Docker manifest list          (multi-platform; optional, may nest)
      └─ manifests[i]  (a descriptor: media type, digest, size, platform)
           └─ image manifest                    (OCI or Docker schema 2)
                ├─ config descriptor -> config blob  (its os/architecture is the platform)
                └─ layers[j] descriptors             (compressed tars, read later on demand)

This module holds what does not depend on where the bytes come from:

* the size caps and the model (media types live in :mod:`chunkstore.registry.mediatypes`):
  :class:`Platform`, :class:`Descriptor` (parsed strictly by :func:`parse_descriptor`, so a
  digest can never smuggle a path) and :class:`ImageRef` (one image: exact manifest and config
  bytes, layer descriptors);
* :func:`resolve_images`, the walk: follow indexes (nested ones too, to :data:`MAX_DEPTH`),
  skip ``unknown/unknown`` attestation entries, keep only the platform asked for (or every
  platform), and turn each image manifest into an :class:`ImageRef` with
  :func:`image_from_manifest` (schema version, config media type, layer descriptors and their
  compression, config JSON -> platform, annotations).

What differs between sources is passed in as a :class:`ManifestSource`: how a manifest or index
is read and verified (a local blob file, or a registry fetch), how a config blob is read (each
caps it at :data:`MAX_CONFIG_SIZE` and verifies its digest), an optional extra check of each layer
(an OCI layout refuses foreign layers it does not hold), and how error messages name the source
(``in /srv/layout`` or ``of host/repo:tag``). The callables receive the ``what`` text that names
the object in messages, so each source's wording stays its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from chunkstore import jsonsafe
from chunkstore.errors import UnsupportedFormat, UsageError
from chunkstore.images.decompress import layer_compression
from chunkstore.registry.mediatypes import (
    CONFIG_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
)
from index.errors import Malformed
from index.ids import Digest, parse_sha256

__all__ = [
    "MAX_CONFIG_SIZE",
    "MAX_DEPTH",
    "MAX_MANIFESTS",
    "MAX_MANIFEST_SIZE",
    "ConfigReader",
    "Descriptor",
    "ImageRef",
    "LayerCheck",
    "ManifestLoader",
    "ManifestSource",
    "Platform",
    "image_from_manifest",
    "load_json",
    "parse_descriptor",
    "resolve_images",
]


#: The most bytes a manifest or index may hold (refused before it is read).
MAX_MANIFEST_SIZE = 4 << 20
#: The most bytes a config blob may hold.
MAX_CONFIG_SIZE = 8 << 20
#: How deep image indexes may nest.
MAX_DEPTH = 8
#: The most entries one index may list, and the most images one walk may select.
MAX_MANIFESTS = 10_000


@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform: ``os/architecture[/variant]``."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        """``os/arch`` or ``os/arch/variant``."""
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``linux/amd64`` or ``linux/arm64/v8``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(
                f"invalid platform {text!r:.80}; use os/architecture[/variant], e.g. linux/amd64"
            )
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_json(cls, obj: object, what: str) -> Platform:
        """The ``platform`` object of a descriptor (or the os/architecture of a config)."""
        if not isinstance(obj, dict):
            raise UsageError(f"{what}: platform must be a JSON object")
        os_, arch, variant = obj.get("os"), obj.get("architecture"), obj.get("variant")
        if not isinstance(os_, str) or not isinstance(arch, str):
            raise UsageError(f"{what}: platform needs string 'os' and 'architecture'")
        if variant is not None and not isinstance(variant, str):
            raise UsageError(f"{what}: platform 'variant' must be a string")
        return cls(os_, arch, variant or None)

    def to_json(self) -> dict[str, str]:
        """The descriptor ``platform`` object."""
        d = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        return d

    def matches(self, wanted: Platform) -> bool:
        """Whether this platform satisfies ``wanted`` (no variant asked: any variant matches)."""
        if self.os != wanted.os or self.architecture != wanted.architecture:
            return False
        if wanted.variant is None:
            return True
        mine = self.variant
        if mine is None and self.architecture == "arm64":
            mine = "v8"
        return mine == wanted.variant


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor (digest already strictly parsed)."""

    media_type: str
    digest: Digest
    size: int
    annotations: tuple[tuple[str, str], ...] = ()
    urls: tuple[str, ...] = ()
    platform: Platform | None = None

    def annotation(self, key: str) -> str | None:
        """The value of annotation ``key``, if present."""
        for k, v in self.annotations:
            if k == key:
                return v
        return None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this descriptor."""
        d: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            d["urls"] = list(self.urls)
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform is not None:
            d["platform"] = self.platform.to_json()
        return d


def parse_descriptor(obj: object, what: str) -> Descriptor:
    """Validate a descriptor JSON object; ``UsageError`` naming ``what`` when it is malformed."""
    if not isinstance(obj, dict):
        raise UsageError(f"{what}: a descriptor must be a JSON object")
    media_type, digest_text, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise UsageError(f"{what}: descriptor has no 'mediaType'")
    if not isinstance(digest_text, str):
        raise UsageError(f"{what}: descriptor has no 'digest'")
    try:
        digest = parse_sha256(digest_text, what)
    except Malformed as exc:
        raise UsageError(str(exc)) from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise UsageError(f"{what}: descriptor size must be a non-negative integer")
    annotations = obj.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise UsageError(f"{what}: 'annotations' must map strings to strings")
    urls = obj.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise UsageError(f"{what}: 'urls' must be a list of strings")
    platform = obj.get("platform")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        annotations=tuple(sorted(annotations.items())),
        urls=tuple(urls),
        platform=None if platform is None else Platform.from_json(platform, what),
    )


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image (one platform): its exact manifest and config bytes and its layers."""

    manifest_bytes: bytes
    manifest_digest: Digest
    media_type: str
    config_bytes: bytes
    config_digest: Digest
    config_media_type: str
    layers: tuple[Descriptor, ...]
    ref_name: str | None = None
    platform: Platform | None = None
    #: The image index this manifest was reached through (outermost first).
    parents: tuple[Descriptor, ...] = ()
    #: True when the manifest was made up by the reader (legacy docker-archive), not stored.
    synthesized: bool = False
    annotations: tuple[tuple[str, str], ...] = field(default=())


def load_json(data: bytes, what: str) -> dict[str, Any]:
    """``data`` parsed as a JSON object (duplicate keys refused); ``UsageError`` naming ``what``."""
    try:
        obj = jsonsafe.loads(data)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{what} must be a JSON object")
    return obj


#: Reads, verifies and parses the manifest or index ``desc`` (named ``what`` in messages):
#: its exact bytes and its JSON object, whose ``mediaType`` already agrees with ``desc``.
ManifestLoader = Callable[[Descriptor, str], tuple[bytes, dict[str, Any]]]
#: Reads the config blob ``desc`` of manifest ``what``: verified, at most MAX_CONFIG_SIZE bytes.
ConfigReader = Callable[[Descriptor, str], bytes]
#: An extra check of one layer descriptor of manifest ``what``; raises to refuse the image.
LayerCheck = Callable[[Descriptor, str], None]


@dataclass(frozen=True, slots=True)
class ManifestSource:
    """How one source reads manifests and configs, and how its error messages name it."""

    #: Reads one manifest or index (see :data:`ManifestLoader`).
    load: ManifestLoader
    #: Reads one config blob (see :data:`ConfigReader`).
    read_config: ConfigReader
    #: The source in messages: ``/srv/layout`` selects more than ... images.
    name: str
    #: Image indexes ``in /srv/layout`` (or ``of host/repo:tag``) nest deeper than ...
    nesting: str
    #: Appended to a manifest's digest in messages, e.g. `` of host/repo:tag``.
    suffix: str = ""
    #: The image in messages: ``the image`` is linux/arm64, not linux/amd64.
    image_name: str = "the image"
    #: The reference name recorded in every :class:`ImageRef` (a tag, an ``index.json`` name).
    ref_name: str | None = None
    #: Run on each layer descriptor after its compression was accepted.
    check_layer: LayerCheck | None = None


def resolve_images(
    source: ManifestSource, roots: Iterable[Descriptor], wanted: Platform | None
) -> list[ImageRef]:
    """The images reached from ``roots`` (manifests or indexes), for platform ``wanted``.

    Indexes are followed to image manifests; entries whose platform does not match ``wanted``
    (or is ``unknown/unknown``) are skipped. The list may be empty: the caller says why.
    """
    out: list[ImageRef] = []
    for root in roots:
        _follow(source, root, wanted, (), out, 0)
    return out


def _follow(
    source: ManifestSource,
    desc: Descriptor,
    wanted: Platform | None,
    parents: tuple[Descriptor, ...],
    out: list[ImageRef],
    depth: int,
) -> None:
    if depth > MAX_DEPTH:
        raise UsageError(f"image indexes {source.nesting} nest deeper than {MAX_DEPTH}")
    what = f"{desc.media_type} {desc.digest}{source.suffix}"
    if desc.media_type not in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES:
        raise UsageError(
            f"{what}: unsupported manifest media type; supported: "
            f"{', '.join(sorted(MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES))}"
        )
    if desc.media_type in INDEX_MEDIA_TYPES:
        _, obj = source.load(desc, what)
        for child in _index_children(obj, what, wanted):
            _follow(source, child, wanted, (*parents, desc), out, depth + 1)
        return
    if len(out) >= MAX_MANIFESTS:
        raise UsageError(f"{source.name} selects more than {MAX_MANIFESTS} images")
    data, obj = source.load(desc, what)
    out.append(image_from_manifest(source, desc, data, obj, wanted, parents))


def _index_children(obj: dict[str, Any], what: str, wanted: Platform | None) -> list[Descriptor]:
    """The entries of index ``obj`` to follow: attestations and other platforms left out."""
    children = obj.get("manifests")
    if not isinstance(children, list):
        raise UsageError(f"{what} has no 'manifests' list")
    if len(children) > MAX_MANIFESTS:
        raise UsageError(f"{what} lists more than {MAX_MANIFESTS} manifests")
    out: list[Descriptor] = []
    for i, child_obj in enumerate(children):
        child = parse_descriptor(child_obj, f"{what} entry {i}")
        p = child.platform
        if p is not None and p.os == "unknown" and p.architecture == "unknown":
            continue  # buildkit attestation manifests
        if wanted is not None and (p is None or not p.matches(wanted)):
            continue
        out.append(child)
    return out


def image_from_manifest(
    source: ManifestSource,
    desc: Descriptor,
    data: bytes,
    obj: dict[str, Any],
    wanted: Platform | None,
    parents: tuple[Descriptor, ...],
) -> ImageRef:
    """The image of manifest ``desc`` (``data`` read and ``obj`` parsed by ``source.load``).

    Checks the schema version, the config media type and every layer's compression before the
    config is read (through ``source.read_config``); the platform is the descriptor's, else the
    config's ``os``/``architecture``, which must then match ``wanted``.
    """
    what = f"manifest {desc.digest}{source.suffix}"
    if obj.get("schemaVersion") != 2:
        raise UnsupportedFormat(f"{what} is not schemaVersion 2")
    config = parse_descriptor(obj.get("config"), f"{what} config")
    if config.media_type not in CONFIG_MEDIA_TYPES:
        raise UsageError(
            f"{what} has config media type {config.media_type!r:.100}: not a container "
            f"image (supported: {', '.join(sorted(CONFIG_MEDIA_TYPES))})"
        )
    layers_obj = obj.get("layers")
    if not isinstance(layers_obj, list):
        raise UsageError(f"{what} has no 'layers' list")
    layers = tuple(
        parse_descriptor(layer, f"{what} layer {i}") for i, layer in enumerate(layers_obj)
    )
    for layer in layers:
        layer_compression(layer.media_type)  # refuses what cannot be ingested, before work
        if source.check_layer is not None:
            source.check_layer(layer, what)
    config_bytes = source.read_config(config, what)
    config_obj = load_json(config_bytes, f"config {config.digest}")
    platform = desc.platform
    if isinstance(config_obj.get("os"), str) and isinstance(config_obj.get("architecture"), str):
        platform = Platform.from_json(config_obj, f"config {config.digest}")
    if wanted is not None and platform is not None and not platform.matches(wanted):
        if desc.platform is None:
            raise UsageError(f"{source.image_name} is {platform}, not {wanted}")
    annotations = obj.get("annotations") or {}
    pairs: tuple[tuple[str, str], ...] = ()
    if isinstance(annotations, dict):
        pairs = tuple(sorted((k, v) for k, v in annotations.items() if isinstance(v, str)))
    return ImageRef(
        manifest_bytes=data,
        manifest_digest=desc.digest,
        media_type=desc.media_type,
        config_bytes=config_bytes,
        config_digest=config.digest,
        config_media_type=config.media_type,
        layers=layers,
        ref_name=source.ref_name,
        platform=desc.platform or platform,
        parents=parents,
        annotations=pairs,
    )
