"""What the server offers: repositories, tags, manifests and blobs, from the image records.

A :class:`Catalog` is an immutable snapshot built from every image record
(:func:`build_catalog`); :class:`CatalogSource` keeps one current, listing the records again
when the snapshot is older than ``max_age_s`` and decoding only records it has not seen (records
never change; a new backup is a new record). Per served repository name:

* ``tags``: each tag's object, the newest record's: its original image index when the record
  holds one, else its only image manifest, else (several images without an index) an OCI index
  made here listing them, as ``restore docker://`` pushes it;
* ``manifests``: every index and image manifest of every record version under the name, by
  digest (so a pull by digest keeps working after the tag moved on);
* ``blobs``: configs (their stored bytes) and layers (:class:`index.image.LayerEntry`: rebuilt
  when asked for, :mod:`chunkstore.serve.blobs`), by digest.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from chunkstore.backends.base import FileType
from chunkstore.errors import ChunkstoreError
from chunkstore.images.manifests import Descriptor, Platform
from chunkstore.registry.mediatypes import OCI_INDEX
from chunkstore.repository import Repository
from chunkstore.serve.names import served_name
from index.errors import FormatError
from index.ids import Digest, sha256
from index.image import ImageBody, LayerEntry
from index.record import Record

__all__ = ["Blob", "Catalog", "CatalogSource", "Manifest", "ServedRepository", "build_catalog"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest or image index as served: its exact bytes, media type and digest."""

    data: bytes
    media_type: str
    digest: str


@dataclass(frozen=True, slots=True)
class Blob:
    """A blob as served: a config (``data``) or a layer rebuilt on request (``layer``)."""

    digest: str
    size: int
    data: bytes | None = None
    layer: LayerEntry | None = None


@dataclass(slots=True)
class ServedRepository:
    """One repository name: its tags, manifests and blobs (see the module docstring)."""

    tags: dict[str, Manifest] = field(default_factory=dict)
    manifests: dict[str, Manifest] = field(default_factory=dict)
    blobs: dict[str, Blob] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Catalog:
    """Every served repository by name, and the records that make no valid name (``skipped``)."""

    repositories: dict[str, ServedRepository]
    skipped: tuple[str, ...] = ()


def _manifest(data: bytes, media_type: str) -> Manifest:
    return Manifest(data, media_type, str(sha256(data)))


def _tag_object(body: ImageBody, served: ServedRepository) -> Manifest:
    """The object a tag names (the images' manifests are added to ``served`` on the way)."""
    manifests = []
    for image in body.images:
        m = _manifest(image.manifest, image.manifest_media_type)
        served.manifests[m.digest] = m
        manifests.append((m, image.platform))
        config = Blob(str(sha256(image.config)), len(image.config), data=image.config)
        served.blobs[config.digest] = config
        for layer in image.layers:
            served.blobs[layer.digest] = Blob(layer.digest, layer.size, layer=layer)
    if body.index is not None and body.index_media_type is not None:
        index = _manifest(body.index, body.index_media_type)
    elif len(manifests) == 1:
        return manifests[0][0]
    else:
        entries = []
        for m, platform in manifests:
            desc = Descriptor(
                m.media_type,
                Digest.parse(m.digest),
                len(m.data),
                platform=Platform.parse(platform) if platform is not None else None,
            )
            entries.append(desc.to_json())
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        index = _manifest(json.dumps(doc, separators=(",", ":")).encode(), OCI_INDEX)
    served.manifests[index.digest] = index
    return index


def build_catalog(records: Iterable[tuple[Record, ImageBody | None]]) -> Catalog:
    """The catalog of image ``records`` given oldest first (a body of None: not decodable)."""
    repositories: dict[str, ServedRepository] = {}
    explicit: set[tuple[str, str]] = set()
    skipped: list[str] = []
    for record, body in records:
        served = served_name(record.name)
        if served is None or body is None or not body.images:
            skipped.append(record.name)
            continue
        repo = repositories.setdefault(served.name, ServedRepository())
        obj = _tag_object(body, repo)
        key = (served.name, served.tag)
        if served.explicit or key not in explicit:
            repo.tags[served.tag] = obj
        if served.explicit:
            explicit.add(key)
    return Catalog(repositories, tuple(dict.fromkeys(skipped)))


class CatalogSource:
    """The current :class:`Catalog` of ``repo``, listed again when older than ``max_age_s``."""

    def __init__(self, repo: Repository, max_age_s: float = 1.0) -> None:
        """Serve ``repo``'s image records; call :meth:`current` for a snapshot."""
        self._repo = repo
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._decoded: dict[Digest, tuple[Record, ImageBody | None] | None] = {}
        self._catalog: Catalog | None = None
        self._built_at = 0.0
        self._warned: set[str] = set()

    def current(self, *, fresh: bool = False) -> Catalog:
        """The catalog; ``fresh``: listed again unless listed within the last 0.2 s (a miss)."""
        with self._lock:
            age = time.monotonic() - self._built_at
            if self._catalog is None or age > (0.2 if fresh else self._max_age_s):
                self._catalog = self._build()
                self._built_at = time.monotonic()
            return self._catalog

    def _build(self) -> Catalog:
        ids = [Digest.from_hex(i.handle.name) for i in self._repo.backend.list(FileType.RECORD)]
        for record_id in ids:
            if record_id not in self._decoded:
                self._decoded[record_id] = self._load(record_id)
        present = set(ids)
        for gone in [i for i in self._decoded if i not in present]:
            del self._decoded[gone]  # forgotten
        images = [(rid, v) for rid, v in self._decoded.items() if v is not None]
        images.sort(key=lambda item: (item[1][0].time_ns, item[0].hex))
        catalog = build_catalog(v for _, v in images)
        for name in catalog.skipped:
            if name not in self._warned:
                self._warned.add(name)
                log.warning(
                    "record %r is not served: not a valid NAME[:TAG] of the distribution spec "
                    "(lower-case path components, a tag of [A-Za-z0-9_.-]), or not decodable",
                    name,
                )
        return catalog

    def _load(self, record_id: Digest) -> tuple[Record, ImageBody | None] | None:
        try:
            record = self._repo.load_record(record_id)
        except ChunkstoreError as exc:
            log.warning("record %s is not served: %s", record_id.short, exc)
            return None
        if record.type != "image":
            return None
        try:
            return record, ImageBody.from_cbor(record.body)
        except FormatError as exc:
            log.warning("record %r (%s) is not served: %s", record.name, record_id.short, exc)
            return record, None
