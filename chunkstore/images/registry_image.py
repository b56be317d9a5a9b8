"""Ordinary images in registries (``docker://HOST[:PORT]/NAME[:TAG|@DIGEST]``): pull and push.

A registry holds an image as a graph of content-addressed objects, fetched through the OCI
distribution API (:class:`~chunkstore.registry.client.RegistryClient`)::

    tag ──> image index / Docker manifest list        (multi-platform; optional)
              └─ manifests[i] (by digest, with its platform)
                   └─ image manifest                  (OCI or Docker schema 2)
                        ├─ config blob               (the image ID is its digest)
                        └─ layers[j] blobs            (compressed tars, possibly GBs)

**Pull** (backup source, :class:`RegistrySource`). :meth:`RegistrySource.resolve` walks this graph
with :func:`chunkstore.images.manifests.resolve_images`, the walk
:meth:`chunkstore.images.oci_layout.OCILayout.resolve` uses for an OCI layout (only the reading of
manifests and configs is the registry's own), so the platform selection is the same: every platform
of an index by default (``unknown/unknown`` attestation entries skipped), or the one matching
``os/arch[/variant]``. It fetches only manifests and configs (small, size-capped, verified by
digest: a manifest named by a tag is hashed and the tag's digest recorded, exactly as an
``index.json`` entry would give it). Layers are fetched later and only on demand
(:meth:`RegistrySource.open_blob`), so a layer already stored in the repository (same compressed
digest and size) is never downloaded: the backup reuses its recipe without opening the blob.

A layer that is needed is streamed with :meth:`RegistryClient.iter_blob` (bounded memory; size and
SHA-256 checked as it arrives) into a spool file, and parsed only once it has verified: nothing a
registry sends is decompressed or chunked before it is proven to be the blob the manifest names,
so a damaged blob is reported as :class:`~chunkstore.errors.DigestMismatch` rather than as a
confusing decompression error. The spool also serves the reproduction search (which re-reads the
blob several times to find the compressor settings) without downloading it again. Only the blob
being ingested is spooled: disk use is bounded by the largest layer, memory by a read buffer.

**Push** (restore target, :class:`RegistryTarget`). The restore code shared with ``oci:`` rebuilds
and recompresses each layer into a spool file (its digest is known only at the end), then hands
it here. Blobs the registry already holds (``HEAD``) are not sent. Small blobs go in one ``PUT``;
larger ones in ``PATCH`` pieces read from the spool file by an iterable that starts over from byte 0
whenever it is iterated again (so the client can restart a lost upload session); memory stays at
one upload piece whatever the layer size. Manifests are pushed last, after every blob they
reference, children of an index by digest before the index goes under the tag.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from chunkstore.backends import RemoteOptions
from chunkstore.errors import RegistryObjectMissing, UsageError
from chunkstore.images.manifests import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageRef,
    ManifestSource,
    Platform,
    load_json,
    resolve_images,
)
from chunkstore.registry.auth import RegistryAuth, credentials_for
from chunkstore.registry.client import DEFAULT_ACCEPT, FetchedManifest, RegistryClient
from chunkstore.registry.reference import Reference, is_loopback, parse_reference
from index.ids import Digest, sha256

__all__ = [
    "DOCKER_PREFIX",
    "RegistrySource",
    "RegistryTarget",
    "open_client",
    "parse_docker_reference",
]

#: The transport prefix of registry image locations (skopeo's ``docker://``).
DOCKER_PREFIX = "docker://"
_HEAD = 1 << 20
_READ_PIECE = 1 << 20
#: Blobs up to this size are uploaded in one request (read into memory); larger ones stream.
_MONOLITHIC_LIMIT = 8 << 20


def parse_docker_reference(location: str) -> Reference:
    """The registry reference of ``docker://HOST[:PORT]/NAME[:TAG|@DIGEST]``.

    Docker Hub short names work as in docker: ``docker://debian:bookworm`` is
    ``docker.io/library/debian:bookworm``.
    """
    if not location.startswith(DOCKER_PREFIX):
        raise UsageError(f"{location!r:.200} is not a docker://HOST[:PORT]/NAME[:TAG] location")
    return parse_reference(location)


def open_client(ref: Reference, remote: RemoteOptions | None = None) -> RegistryClient:
    """A client for ``ref``'s repository: HTTPS, or plain HTTP when asked or for loopback.

    Credentials come from ``remote.env`` (``CHUNKSTORE_REGISTRY_USER``/``..._PASSWORD``) or
    docker's ``config.json``, as :func:`chunkstore.registry.auth.credentials_for` finds them.
    """
    remote = remote or RemoteOptions()
    plain = remote.plain_http or is_loopback(ref.endpoint)
    auth = RegistryAuth(credentials_for(ref.endpoint, env=remote.env))
    return RegistryClient.for_reference(ref, plain_http=plain, auth=auth)


def _check_fetched(fetched: FetchedManifest, desc: Descriptor, what: str) -> dict[str, Any]:
    """The parsed manifest, once its size and declared media type agree with ``desc``."""
    if len(fetched.data) != desc.size:
        raise UsageError(
            f"{what} holds {len(fetched.data)} bytes but its descriptor says {desc.size}; "
            "the image is inconsistent"
        )
    obj = load_json(fetched.data, what)
    inner = obj.get("mediaType")
    if inner is not None and inner != desc.media_type:
        raise UsageError(
            f"{what} declares mediaType {inner!r:.100} but its descriptor says "
            f"{desc.media_type!r}; the image is inconsistent"
        )
    return obj


class RegistrySource:
    """An image in a registry as a backup source: manifests resolved first, layers on demand.

    Use as a context manager (the spool directory and the connections are released on exit).
    ``downloaded_blobs``/``downloaded_bytes`` count the layer blobs fetched.
    """

    def __init__(
        self, client: RegistryClient, ref: Reference, *, spool_dir: Path | None = None
    ) -> None:
        """Read image ``ref`` through ``client``; layers are spooled under ``spool_dir``."""
        self._client = client
        self._ref = ref
        self._tmp = tempfile.mkdtemp(prefix="chunkstore-pull-", dir=spool_dir)
        self._spooled: tuple[Digest, Path] | None = None
        self._manifests: dict[Digest, bytes] = {}
        self.downloaded_blobs = 0
        self.downloaded_bytes = 0

    @property
    def reference(self) -> Reference:
        """The image reference read."""
        return self._ref

    def close(self) -> None:
        """Delete the spool and close the client."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._spooled = None
        self._client.close()

    def __enter__(self) -> RegistrySource:
        """The source itself; closed on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the source."""
        self.close()

    # -- manifests ------------------------------------------------------------------------------

    def resolve(self, platform: str | None = None) -> list[ImageRef]:
        """The images the reference names (one per selected platform), verified."""
        wanted = None if platform is None else Platform.parse(platform)
        try:
            top = self._client.get_manifest(self._ref.reference, DEFAULT_ACCEPT)
        except RegistryObjectMissing as exc:
            raise RegistryObjectMissing(
                f"no image {self._ref} in the registry ({exc}); check the name and the tag"
            ) from None
        if len(top.data) > MAX_MANIFEST_SIZE:
            raise UsageError(f"the manifest of {self._ref} is larger than {MAX_MANIFEST_SIZE}")
        desc = Descriptor(top.media_type, top.digest, len(top.data))
        self._manifests[top.digest] = top.data
        pending = [top]  # the first manifest the walk loads is the one fetched by tag

        def load(manifest: Descriptor, what: str) -> tuple[bytes, dict[str, Any]]:
            if pending:
                fetched = pending.pop()
                return fetched.data, _check_fetched(fetched, manifest, what)
            fetched, obj = self._fetch(manifest, what)
            return fetched.data, obj

        name = str(self._ref)
        source = ManifestSource(
            load=load,
            read_config=self._read_config,
            name=name,
            nesting=f"of {name}",
            suffix=f" of {name}",
            image_name=name,
            ref_name=self._ref.tag,
        )
        out = resolve_images(source, [desc], wanted)
        if not out:
            raise UsageError(f"{self._ref} has no manifest for platform {platform}")
        return out

    def read_manifest(self, desc: Descriptor) -> bytes:
        """The exact bytes of a manifest or index met while resolving (e.g. the outer index)."""
        try:
            return self._manifests[desc.digest]
        except KeyError:
            fetched = self._client.get_manifest(desc.digest, (desc.media_type,))
            _check_fetched(fetched, desc, f"{desc.media_type} {desc.digest}")
            return fetched.data

    def _fetch(self, desc: Descriptor, what: str) -> tuple[FetchedManifest, dict[str, Any]]:
        if desc.size > MAX_MANIFEST_SIZE:
            raise UsageError(f"{what} declares {desc.size} bytes, over {MAX_MANIFEST_SIZE}")
        accept = tuple(dict.fromkeys((desc.media_type, *DEFAULT_ACCEPT)))
        fetched = self._client.get_manifest(desc.digest, accept)
        obj = _check_fetched(fetched, desc, what)
        self._manifests[desc.digest] = fetched.data
        return fetched, obj

    def _read_config(self, config: Descriptor, what: str) -> bytes:
        if config.size > MAX_CONFIG_SIZE:
            raise UsageError(f"{what}: config declares {config.size} bytes, over {MAX_CONFIG_SIZE}")
        return self._client.get_blob(config.digest, config.size, max_size=MAX_CONFIG_SIZE)

    # -- layer blobs ----------------------------------------------------------------------------

    def _spool(self, desc: Descriptor) -> Path:
        """The verified blob in a local file, downloaded now unless it is the one spooled."""
        if self._spooled is not None and self._spooled[0] == desc.digest:
            return self._spooled[1]
        if self._spooled is not None:  # one layer at a time: disk use bounded by the largest
            self._spooled[1].unlink(missing_ok=True)
            self._spooled = None
        final = Path(self._tmp) / desc.digest.hex
        partial = final.with_suffix(".part")
        try:
            with open(partial, "wb") as f:
                # iter_blob yields its last piece only after size and SHA-256 were checked.
                for piece in self._client.iter_blob(desc.digest, desc.size):
                    f.write(piece)
        except RegistryObjectMissing as exc:
            partial.unlink(missing_ok=True)
            hint = " (a foreign layer, which is not supported)" if desc.urls else ""
            raise RegistryObjectMissing(
                f"layer {desc.digest} of {self._ref} is missing from the registry{hint}: {exc}"
            ) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, final)
        self._spooled = (desc.digest, final)
        self.downloaded_blobs += 1
        self.downloaded_bytes += desc.size
        return final

    def open_blob(self, desc: Descriptor) -> IO[bytes]:
        """The verified blob ``desc`` as a readable file (downloaded on first use)."""
        return open(self._spool(desc), "rb")

    def read_head(self, desc: Descriptor) -> bytes:
        """The first MiB of blob ``desc`` (the compressor settings are read from it)."""
        with self.open_blob(desc) as f:
            return f.read(_HEAD)


class _FileChunks:
    """The bytes of an open file from its start, anew each time it is iterated.

    ``put_blob_stream`` restarts an upload whose session was lost by iterating its source again;
    ``iter(self)`` returns a fresh generator (never ``self``), which tells it that it may.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    def __iter__(self) -> Iterator[bytes]:
        self._f.seek(0)
        while piece := self._f.read(_READ_PIECE):
            yield piece


@dataclass(slots=True)
class _PushStats:
    uploaded_blobs: int = 0
    uploaded_bytes: int = 0
    present_blobs: int = 0


class RegistryTarget:
    """A restore target pushing an image to repository ``client.name`` under ``tag``.

    Blobs first (only those the registry lacks), then manifests by digest, then the tagged
    manifest or index. ``stats`` counts what was uploaded and what was already there.
    """

    def __init__(
        self, client: RegistryClient, tag: str, *, monolithic_limit: int = _MONOLITHIC_LIMIT
    ) -> None:
        """Push through ``client`` under ``tag``; blobs over ``monolithic_limit`` bytes stream."""
        self._client = client
        self.tag = tag
        self.stats = _PushStats()
        self._monolithic_limit = monolithic_limit

    @property
    def location(self) -> str:
        """``host/name:tag``, for messages."""
        return f"{self._client.host}/{self._client.name}:{self.tag}"

    def close(self) -> None:
        """Close the client."""
        self._client.close()

    def __enter__(self) -> RegistryTarget:
        """The target itself; closed on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the target."""
        self.close()

    def has_blob(self, digest: Digest, size: int) -> bool:
        """Whether the registry serves blob ``digest`` with ``size`` bytes."""
        present = self._client.head_blob(digest) == size
        if present:
            self.stats.present_blobs += 1
        return present

    def add_blob_file(self, digest: Digest, size: int, f: IO[bytes]) -> None:
        """Upload blob ``digest`` of ``size`` bytes from file ``f`` unless it is present.

        The client checks size and digest before committing, so a wrong file is never stored.
        """
        if self.has_blob(digest, size):
            return
        if size <= self._monolithic_limit:
            f.seek(0)
            self._client.put_blob(f.read(size + 1), digest)
        else:
            self._client.put_blob_stream(_FileChunks(f), digest, size)
        self.stats.uploaded_blobs += 1
        self.stats.uploaded_bytes += size

    def add_blob_bytes(self, data: bytes) -> None:
        """Upload a small blob (a config) unless it is present."""
        digest = sha256(data)
        if self.has_blob(digest, len(data)):
            return
        self._client.put_blob(data, digest)
        self.stats.uploaded_blobs += 1
        self.stats.uploaded_bytes += len(data)

    def add_manifest_blob(self, data: bytes, media_type: str) -> Descriptor:
        """Push a manifest by its digest (a child of an index); its descriptor."""
        digest = self._client.put_manifest(sha256(data), data, media_type)
        return Descriptor(media_type, digest, len(data))

    def tag_manifest(self, data: bytes, media_type: str) -> Digest:
        """Push the manifest or index under :attr:`tag` (the last step); its digest."""
        return self._client.put_manifest(self.tag, data, media_type)
