"""OCI image layouts (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``): reading and writing.

Reading trusts nothing in the layout. Every digest is parsed with the strict OCI grammar before it
names a file, so ``sha256:../../x`` can never become a path; every manifest, index and config blob
is size-capped, then verified against its descriptor's digest and size before it is parsed; the
``mediaType`` inside a manifest or index must agree with the descriptor that pointed at it.

A reference (``REF`` in ``oci:DIR:REF``) is matched exactly against the
``org.opencontainers.image.ref.name`` annotation of the entries of ``index.json``. Without a
reference, a layout holding exactly one manifest means that one. Image indexes (nested ones too)
are followed to image manifests, selecting a platform such as ``linux/amd64`` or
``linux/arm64/v8`` (or every platform when none is asked for; attestation entries whose platform
is ``unknown/unknown`` are skipped).

Writing (:class:`OCILayoutWriter`) stores blobs atomically and updates ``index.json`` atomically,
only once every blob a manifest references is in place.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chunkstore import jsonsafe
from chunkstore.errors import (
    BackendError,
    MissingObject,
    UnsupportedFormat,
    UsageError,
)
from chunkstore.fsutil import fsync_dir
from chunkstore.images.blobs import (
    BlobDigestMismatch,
    VerifiedReader,
    blob_path,
    parse_sha256,
    write_blob_atomically,
)
from chunkstore.images.compression import layer_compression
from index.ids import Digest, sha256

__all__ = [
    "CONFIG_MEDIA_TYPES",
    "DOCKER_CONFIG",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "MAX_CONFIG_SIZE",
    "MAX_MANIFEST_SIZE",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "REF_NAME",
    "Descriptor",
    "ImageRef",
    "OCILayout",
    "OCILayoutWriter",
    "Platform",
    "parse_descriptor",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_MEDIA_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_MEDIA_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
REF_NAME = "org.opencontainers.image.ref.name"

MAX_MANIFEST_SIZE = 4 << 20
MAX_CONFIG_SIZE = 8 << 20
_MAX_LAYOUT_FILE = 4096
_MAX_DEPTH = 8
_MAX_MANIFESTS = 10_000
_LAYOUT_VERSION = "1.0.0"
_TEMP_PREFIX = ".tmp-"


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
    digest = parse_sha256(digest_text, what)
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


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = jsonsafe.loads(data)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{what} must be a JSON object")
    return obj


def _read_small(path: Path, cap: int, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"{what} {path} is not a regular file")
            data = f.read(cap + 1)
    except FileNotFoundError:
        raise MissingObject(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise BackendError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if len(data) > cap:
        raise UsageError(f"{what} {path} is larger than {cap} bytes; refusing to read it")
    return data


def _check_layout_file(root: Path) -> None:
    data = _read_small(root / "oci-layout", _MAX_LAYOUT_FILE, "OCI layout marker")
    obj = _load_json(data, f"{root / 'oci-layout'}")
    version = obj.get("imageLayoutVersion")
    if version != _LAYOUT_VERSION:
        raise UnsupportedFormat(
            f"{root} has OCI layout version {version!r:.40}; only {_LAYOUT_VERSION} is supported"
        )


def _check_media_type(obj: dict[str, Any], desc: Descriptor, what: str) -> None:
    inner = obj.get("mediaType")
    if inner is None:
        if desc.media_type == DOCKER_MANIFEST or desc.media_type == DOCKER_MANIFEST_LIST:
            raise UsageError(f"{what} has no 'mediaType' (Docker manifests must carry one)")
        is_index = "manifests" in obj
        if is_index != (desc.media_type in INDEX_MEDIA_TYPES):
            raise UsageError(
                f"{what} looks like {'an index' if is_index else 'a manifest'} but its "
                f"descriptor says {desc.media_type}"
            )
        return
    if inner != desc.media_type:
        raise UsageError(
            f"{what} declares mediaType {inner!r:.100} but its descriptor says "
            f"{desc.media_type!r}; the layout is inconsistent"
        )


class OCILayout:
    """A read-only view of an OCI image layout directory."""

    def __init__(self, path: Path | str) -> None:
        """Open the layout at ``path``: check ``oci-layout`` and parse ``index.json``."""
        self._root = Path(path)
        if not self._root.is_dir():
            raise UsageError(f"{self._root} is not a directory; expected an OCI image layout")
        _check_layout_file(self._root)
        data = _read_small(self._root / "index.json", MAX_MANIFEST_SIZE, "OCI index")
        self._index = _load_json(data, f"{self._root / 'index.json'}")
        if self._index.get("schemaVersion") != 2:
            raise UnsupportedFormat(f"{self._root / 'index.json'} is not schemaVersion 2")
        manifests = self._index.get("manifests")
        if not isinstance(manifests, list):
            raise UsageError(f"{self._root / 'index.json'} has no 'manifests' list")
        self._entries = [
            parse_descriptor(m, f"{self._root / 'index.json'} entry {i}")
            for i, m in enumerate(manifests)
        ]

    @property
    def path(self) -> Path:
        """The layout directory."""
        return self._root

    @property
    def entries(self) -> tuple[Descriptor, ...]:
        """The descriptors listed in ``index.json``."""
        return tuple(self._entries)

    def refs(self) -> list[str]:
        """Every reference name in ``index.json``, in order, without duplicates."""
        out: list[str] = []
        for e in self._entries:
            name = e.annotation(REF_NAME)
            if name is not None and name not in out:
                out.append(name)
        return out

    def blob_path(self, digest: Digest) -> Path:
        """Where the blob named ``digest`` lives."""
        return blob_path(self._root / "blobs", digest)

    def has_blob(self, digest: Digest) -> bool:
        """Whether a regular file exists for ``digest``."""
        try:
            return stat.S_ISREG(os.stat(self.blob_path(digest)).st_mode)
        except OSError:
            return False

    def open_blob(self, descriptor: Descriptor) -> VerifiedReader:
        """A reader that verifies the blob against ``descriptor`` while it is read."""
        path = self.blob_path(descriptor.digest)
        try:
            f = open(path, "rb")  # closed by the VerifiedReader
        except FileNotFoundError:
            hint = " (a foreign layer: fetch it from its urls first)" if descriptor.urls else ""
            raise MissingObject(
                f"blob {descriptor.digest} ({descriptor.media_type}) is missing from "
                f"{self._root}{hint}"
            ) from None
        except OSError as exc:
            raise BackendError(f"cannot open blob {path}: {exc.strerror}") from exc
        return VerifiedReader(f, descriptor.digest, descriptor.size, name=str(descriptor.digest))

    def read_blob(self, descriptor: Descriptor, cap: int) -> bytes:
        """The whole (small) blob, verified; refused before reading when larger than ``cap``."""
        if descriptor.size > cap:
            raise UsageError(
                f"blob {descriptor.digest} ({descriptor.media_type}) declares {descriptor.size} "
                f"bytes, more than the {cap} allowed for it"
            )
        with self.open_blob(descriptor) as reader:
            return reader.read_all_verified()

    def resolve(self, ref: str | None = None, platform: str | None = None) -> list[ImageRef]:
        """The images ``ref`` names (one per selected platform), verified."""
        wanted = None if platform is None else Platform.parse(platform)
        if ref is None:
            if len(self._entries) != 1:
                raise UsageError(
                    f"{self._root} holds {len(self._entries)} manifests; name one of: "
                    f"{self._ref_list()}"
                )
            chosen = list(self._entries)
        else:
            chosen = [e for e in self._entries if e.annotation(REF_NAME) == ref]
            if not chosen:
                raise UsageError(
                    f"no image named {ref!r:.100} in {self._root}; available: {self._ref_list()}"
                )
        out: list[ImageRef] = []
        for entry in chosen:
            if wanted is not None and entry.platform is not None:
                if not entry.platform.matches(wanted):
                    continue
            self._follow(entry, ref, wanted, (), out, 0)
        if not out:
            raise UsageError(
                f"{ref or 'the image'} in {self._root} has no manifest for platform {platform}"
            )
        return out

    def _ref_list(self) -> str:
        refs = self.refs()
        return ", ".join(refs) if refs else "(no reference names)"

    def _follow(
        self,
        desc: Descriptor,
        ref: str | None,
        wanted: Platform | None,
        parents: tuple[Descriptor, ...],
        out: list[ImageRef],
        depth: int,
    ) -> None:
        if depth > _MAX_DEPTH:
            raise UsageError(f"image indexes in {self._root} nest deeper than {_MAX_DEPTH}")
        what = f"{desc.media_type} {desc.digest}"
        if desc.media_type in INDEX_MEDIA_TYPES:
            data = self.read_blob(desc, MAX_MANIFEST_SIZE)
            obj = _load_json(data, what)
            _check_media_type(obj, desc, what)
            children = obj.get("manifests")
            if not isinstance(children, list):
                raise UsageError(f"{what} has no 'manifests' list")
            if len(children) > _MAX_MANIFESTS:
                raise UsageError(f"{what} lists more than {_MAX_MANIFESTS} manifests")
            for i, child_obj in enumerate(children):
                child = parse_descriptor(child_obj, f"{what} entry {i}")
                p = child.platform
                if p is not None and p.os == "unknown" and p.architecture == "unknown":
                    continue  # buildkit attestation manifests
                if wanted is not None and (p is None or not p.matches(wanted)):
                    continue
                self._follow(child, ref, wanted, (*parents, desc), out, depth + 1)
            return
        if desc.media_type not in MANIFEST_MEDIA_TYPES:
            raise UsageError(
                f"{what}: unsupported manifest media type; supported: "
                f"{', '.join(sorted(MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES))}"
            )
        if len(out) >= _MAX_MANIFESTS:
            raise UsageError(f"{self._root} selects more than {_MAX_MANIFESTS} images")
        out.append(self._image(desc, ref, wanted, parents))

    def _image(
        self,
        desc: Descriptor,
        ref: str | None,
        wanted: Platform | None,
        parents: tuple[Descriptor, ...],
    ) -> ImageRef:
        what = f"manifest {desc.digest}"
        data = self.read_blob(desc, MAX_MANIFEST_SIZE)
        obj = _load_json(data, what)
        _check_media_type(obj, desc, what)
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
            layer_compression(layer.media_type)
            if layer.urls and not self.has_blob(layer.digest):
                raise UsageError(
                    f"{what} has a foreign layer {layer.digest} (fetched from "
                    f"{layer.urls[0]:.100}) that is not in {self._root}; foreign layers are not "
                    "supported, copy the image with its foreign layers included"
                )
        config_bytes = self.read_blob(config, MAX_CONFIG_SIZE)
        config_obj = _load_json(config_bytes, f"config {config.digest}")
        platform = desc.platform
        if isinstance(config_obj.get("os"), str) and isinstance(
            config_obj.get("architecture"), str
        ):
            platform = Platform.from_json(config_obj, f"config {config.digest}")
        if wanted is not None and platform is not None and not platform.matches(wanted):
            if desc.platform is None:
                raise UsageError(f"{ref or 'the image'} is {platform}, not {wanted}")
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
            ref_name=ref,
            platform=desc.platform or platform,
            parents=parents,
            annotations=pairs,
        )


def _write_file_atomically(path: Path, data: bytes) -> None:
    tmp = path.parent / f"{_TEMP_PREFIX}{secrets.token_hex(16)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise BackendError(f"cannot write {path}: {exc.strerror}") from exc


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class OCILayoutWriter:
    """Creates an OCI layout, or adds blobs and manifests to an existing one."""

    def __init__(self, path: Path | str) -> None:
        """Create ``path`` (and its ``oci-layout`` marker and ``blobs``) if needed."""
        self._root = Path(path)
        marker = self._root / "oci-layout"
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            (self._root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create OCI layout {self._root}: {exc.strerror}") from exc
        if marker.exists():
            _check_layout_file(self._root)
        else:
            _write_file_atomically(marker, _json_bytes({"imageLayoutVersion": _LAYOUT_VERSION}))
        index_path = self._root / "index.json"
        if index_path.exists():
            data = _read_small(index_path, MAX_MANIFEST_SIZE, "OCI index")
            self._index = _load_json(data, str(index_path))
            if not isinstance(self._index.get("manifests"), list):
                raise UsageError(f"{index_path} has no 'manifests' list")
        else:
            self._index = {"schemaVersion": 2, "manifests": []}
            self._index["mediaType"] = OCI_INDEX
            _write_file_atomically(index_path, _json_bytes(self._index))

    @property
    def path(self) -> Path:
        """The layout directory."""
        return self._root

    def has_blob(self, digest: Digest) -> bool:
        """Whether the blob is already stored."""
        return blob_path(self._root / "blobs", digest).is_file()

    def add_blob(self, digest: Digest, chunks: Iterable[bytes]) -> None:
        """Store a blob; :class:`BlobDigestMismatch` if ``chunks`` do not hash to ``digest``."""
        write_blob_atomically(self._root / "blobs", digest, chunks)

    def add_bytes(self, data: bytes, media_type: str) -> Descriptor:
        """Store a small blob and return its descriptor."""
        digest = sha256(data)
        self.add_blob(digest, [data])
        return Descriptor(media_type, digest, len(data))

    def _require(self, desc: Descriptor, what: str) -> None:
        path = blob_path(self._root / "blobs", desc.digest)
        try:
            size = os.stat(path).st_size
        except OSError:
            if desc.urls:
                return
            raise MissingObject(
                f"cannot add {what}: it references blob {desc.digest} which is not in "
                f"{self._root}; store the blob first"
            ) from None
        if size != desc.size:
            raise BlobDigestMismatch(
                f"cannot add {what}: blob {desc.digest} holds {size} bytes, the descriptor "
                f"says {desc.size}"
            )

    def add_manifest(
        self,
        manifest_bytes: bytes,
        media_type: str,
        ref_name: str | None,
        platform: Platform | str | None = None,
    ) -> Descriptor:
        """Store a manifest or index and list it in ``index.json`` under ``ref_name``.

        Every blob it references must already be stored. An existing entry with the same
        reference name (and, when ``platform`` is given, the same platform) is replaced.
        """
        if media_type not in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES:
            raise UsageError(f"cannot add a manifest of media type {media_type!r:.100}")
        if len(manifest_bytes) > MAX_MANIFEST_SIZE:
            raise UsageError(f"manifest is larger than {MAX_MANIFEST_SIZE} bytes")
        digest = sha256(manifest_bytes)
        what = f"manifest {digest}"
        obj = _load_json(manifest_bytes, what)
        plat = Platform.parse(platform) if isinstance(platform, str) else platform
        desc = Descriptor(
            media_type,
            digest,
            len(manifest_bytes),
            annotations=(((REF_NAME, ref_name),) if ref_name is not None else ()),
            platform=plat,
        )
        _check_media_type(obj, desc, what)
        if media_type in INDEX_MEDIA_TYPES:
            children = obj.get("manifests")
            if not isinstance(children, list):
                raise UsageError(f"{what} has no 'manifests' list")
            for i, child in enumerate(children):
                self._require(parse_descriptor(child, f"{what} entry {i}"), what)
        else:
            self._require(parse_descriptor(obj.get("config"), f"{what} config"), what)
            layers = obj.get("layers")
            if not isinstance(layers, list):
                raise UsageError(f"{what} has no 'layers' list")
            for i, layer in enumerate(layers):
                self._require(parse_descriptor(layer, f"{what} layer {i}"), what)
        self.add_blob(digest, [manifest_bytes])
        kept = []
        for entry in self._index["manifests"]:
            if ref_name is not None and isinstance(entry, dict):
                names = entry.get("annotations") or {}
                same_name = isinstance(names, dict) and names.get(REF_NAME) == ref_name
                same_platform = plat is None or entry.get("platform") == plat.to_json()
                if same_name and same_platform:
                    continue
            if (
                ref_name is None
                and isinstance(entry, dict)
                and entry.get("digest") == str(digest)
                and not entry.get("annotations")
            ):
                continue
            kept.append(entry)
        kept.append(desc.to_json())
        self._index["manifests"] = kept
        _write_file_atomically(self._root / "index.json", _json_bytes(self._index))
        return desc

    def iter_refs(self) -> Iterator[str]:
        """Reference names currently listed."""
        for entry in self._index["manifests"]:
            if isinstance(entry, dict):
                ann = entry.get("annotations")
                if isinstance(ann, Mapping) and isinstance(ann.get(REF_NAME), str):
                    yield ann[REF_NAME]
