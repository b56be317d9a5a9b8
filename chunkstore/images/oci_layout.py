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

The walk itself, and the model it produces (:class:`Descriptor`, :class:`Platform`,
:class:`ImageRef`, the media types and size caps), live in :mod:`chunkstore.images.manifests`,
shared with ``docker://`` sources; they are re-exported here. This module supplies what is
particular to a layout: blobs read from local files (verified while read), the ``index.json``
reference names, and the refusal of foreign layers the layout does not hold.

Writing (:class:`OCILayoutWriter`) stores blobs atomically and updates ``index.json`` atomically,
only once every blob a manifest references is in place.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from chunkstore.errors import BackendError, MissingObject, UnsupportedFormat, UsageError
from chunkstore.fsutil import fsync_dir
from chunkstore.images.blobs import (
    BlobDigestMismatch,
    VerifiedReader,
    blob_path,
    write_blob_atomically,
)
from chunkstore.images.manifests import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageRef,
    ManifestSource,
    Platform,
    load_json,
    parse_descriptor,
    resolve_images,
)
from chunkstore.registry.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
)
from index.ids import Digest, sha256

__all__ = [
    "MAX_CONFIG_SIZE",
    "MAX_MANIFEST_SIZE",
    "REF_NAME",
    "Descriptor",
    "ImageRef",
    "OCILayout",
    "OCILayoutWriter",
    "Platform",
    "parse_descriptor",
]

REF_NAME = "org.opencontainers.image.ref.name"

_MAX_LAYOUT_FILE = 4096
_LAYOUT_VERSION = "1.0.0"
_TEMP_PREFIX = ".tmp-"


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
    obj = load_json(data, f"{root / 'oci-layout'}")
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
        self._index = load_json(data, f"{self._root / 'index.json'}")
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
        source = ManifestSource(
            load=self._load_manifest,
            read_config=self._read_config,
            name=str(self._root),
            nesting=f"in {self._root}",
            image_name=ref or "the image",
            ref_name=ref,
            check_layer=self._check_foreign_layer,
        )
        roots = [
            e for e in chosen if wanted is None or e.platform is None or e.platform.matches(wanted)
        ]
        out = resolve_images(source, roots, wanted)
        if not out:
            raise UsageError(
                f"{ref or 'the image'} in {self._root} has no manifest for platform {platform}"
            )
        return out

    def _ref_list(self) -> str:
        refs = self.refs()
        return ", ".join(refs) if refs else "(no reference names)"

    def _load_manifest(self, desc: Descriptor, what: str) -> tuple[bytes, dict[str, Any]]:
        if desc.media_type in MANIFEST_MEDIA_TYPES:
            what = f"manifest {desc.digest}"  # image manifests are named by digest alone here
        data = self.read_blob(desc, MAX_MANIFEST_SIZE)
        obj = load_json(data, what)
        _check_media_type(obj, desc, what)
        return data, obj

    def _read_config(self, config: Descriptor, what: str) -> bytes:
        return self.read_blob(config, MAX_CONFIG_SIZE)

    def _check_foreign_layer(self, layer: Descriptor, what: str) -> None:
        if layer.urls and not self.has_blob(layer.digest):
            raise UsageError(
                f"{what} has a foreign layer {layer.digest} (fetched from "
                f"{layer.urls[0]:.100}) that is not in {self._root}; foreign layers are not "
                "supported, copy the image with its foreign layers included"
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
            self._index = load_json(data, str(index_path))
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
        obj = load_json(manifest_bytes, what)
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
