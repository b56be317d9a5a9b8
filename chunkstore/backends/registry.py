"""A repository kept in an OCI registry: every repository file is a blob under its own tag.

A registry stores content-addressed blobs and lists nothing but tags, and its garbage collector
deletes every blob no manifest references. So each repository file (config, key, pack, index,
record, lock) is stored as one blob plus one small OCI image manifest that references it, tagged
with the file's type and name::

    tag  _cs.<type>.<name>           (type: config, keys, data, index, records, locks)
    manifest (application/vnd.oci.image.manifest.v1+json)
        artifactType  application/vnd.chunkstore.file.v1
        config        the empty descriptor ({}), as OCI 1.1 artifacts do
        layers        [ the file's blob, mediaType application/vnd.chunkstore.<type>.v1 ]
        annotations   dev.chunkstore.file = "<type>/<name>"  (so no two files share a manifest)

Consequences:

* A file exists exactly when its tag does: the blob is uploaded and confirmed present (HEAD) first,
  then the manifest is pushed, so a reader never sees a tag whose blob is missing (a crashed save
  leaves only an unreferenced blob, which the registry's garbage collection removes).
* Writers of different files never touch the same tag, so concurrent backups cannot lose each
  other's work; only locks are overwritten (refreshed) in place.
* ``remove`` deletes the file's manifest; the registry's garbage collection frees the blob.
* Listing is tag listing (paginated) filtered by prefix; sizes come from the manifests, fetched
  in parallel and kept in memory (files other than locks and the config never change).

Everything read is verified by the client (blob digests and sizes, manifests by digest); the
manifest of a tag is checked to name exactly the file asked for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from chunkstore import jsonsafe
from chunkstore.backends.base import FileInfo, FileType, Handle
from chunkstore.backends.registry_layout import (
    ARTIFACT_TYPE,
    EMPTY,
    EMPTY_DIGEST,
    FILE_ANNOTATION,
    IMAGE_ARTIFACT_TYPE,
    PART_FILES,
    TAG_PREFIX,
    file_manifest,
    file_media_type,
    file_tag,
    image_tag_manifests,
)
from chunkstore.backends.registry_layout import FileEntry as _Entry
from chunkstore.backends.registry_layout import parse_file_manifest as _parse_manifest
from chunkstore.backends.registry_layout import sha256_of as _sha256
from chunkstore.errors import (
    AuthError,
    CorruptMetadata,
    NotFound,
    RegistryError,
    RegistryObjectMissing,
    RegistryUnavailable,
    ShortRead,
    Transient,
    UsageError,
)
from chunkstore.registry.auth import RegistryAuth, credentials_for
from chunkstore.registry.client import RegistryClient
from chunkstore.registry.mediatypes import OCI_INDEX, OCI_MANIFEST
from chunkstore.registry.reference import is_loopback, parse_reference, validate_tag
from index.errors import Malformed
from index.ids import Digest

if TYPE_CHECKING:
    from chunkstore.backends import RemoteOptions

logger = logging.getLogger(__name__)

__all__ = [
    "ARTIFACT_TYPE",
    "FILE_ANNOTATION",
    "IMAGE_ARTIFACT_TYPE",
    "TAG_PREFIX",
    "RegistryBackend",
    "file_manifest",
    "file_media_type",
    "file_tag",
    "image_tag_manifests",
    "open_registry_backend",
]

#: Descriptors per image-tag manifest (tests lower it to see parts).
_PART_FILES = PART_FILES
#: Files larger than this are uploaded in PATCH pieces of _PIECE bytes.
_MONOLITHIC_MAX = 32 << 20
_PIECE = 8 << 20
#: Tries to tag a file while the registry settles concurrent uploads of its blob.
_MANIFEST_ATTEMPTS = 4
#: Manifests fetched at once while listing, blobs asked for at once before an image tag.
_LIST_WORKERS = 16
#: Threads for a save's side requests (existence checks, the empty blob, cancels).
_HELPER_WORKERS = 16
#: Types a repository names by the SHA-256 of the file's bytes.
_CONTENT_NAMED = frozenset({FileType.KEY, FileType.PACK, FileType.INDEX, FileType.RECORD})
#: Types whose files may be replaced (their manifests are never cached).
_MUTABLE = frozenset({FileType.CONFIG, FileType.LOCK})
#: Whole files other than packs up to this size, written or read here, are kept in memory...
_KEEP_MAX = 1 << 20
#: ... up to this many bytes in all.
_KEEP_TOTAL = 32 << 20
#: A tag listing is answered again for this long while this backend writes nothing (see list).
_LIST_REUSE_S = 0.5


class RegistryBackend:
    """The repository files of one registry repository (see the module docstring)."""

    def __init__(self, client: RegistryClient, *, upload_concurrency: int = 4) -> None:
        """Store files through ``client`` (which it then owns and closes).

        ``upload_concurrency``: packs a repository may upload at once (round trips overlap).
        """
        self._client = client
        self.upload_concurrency = upload_concurrency
        #: Every read is a round trip: the repository keeps verified metadata blobs on disk.
        self.cache_metadata = True
        self._entries: dict[Handle, _Entry] = {}
        #: Mutable files (locks, the config) as this backend last pushed them (see load).
        self._own: dict[Handle, _Entry] = {}
        #: Whole small files written or read (verified) here: records, index files, keys, locks.
        self._kept: dict[Handle, bytes] = {}
        self._kept_total = 0
        self._writes = 0  # files saved or removed: a listing made before one is not reused
        self._listing: tuple[int, float, list[str]] | None = None  # writes, when, tags
        self._lock = threading.Lock()
        self._empty_uploaded = False
        #: A save's side requests (existence checks, the empty blob, cancels); threads start lazily.
        self._helpers = ThreadPoolExecutor(
            _HELPER_WORKERS, thread_name_prefix="chunkstore-registry"
        )

    @property
    def location(self) -> str:
        """``registry:HOST/NAME``."""
        return f"registry:{self._client.host}/{self._client.name}"

    def create(self) -> None:
        """Check the registry answers and store the empty config blob manifests share."""
        self._client.ping()
        self._ensure_empty()

    def _ensure_empty(self) -> None:
        if not self._empty_uploaded:
            self._client.put_blob(EMPTY, EMPTY_DIGEST)
            self._empty_uploaded = True

    # ------------------------------------------------------------------ lookups
    def _entry(self, handle: Handle) -> _Entry | None:
        """The file's manifest entry (cached for immutable files), None when it has none."""
        if handle.type not in _MUTABLE:
            with self._lock:
                cached = self._entries.get(handle)
            if cached is not None:
                return cached
        try:
            fetched = self._client.get_manifest(file_tag(handle), accept=(OCI_MANIFEST,))
        except RegistryObjectMissing:
            return None
        entry = _parse_manifest(handle, fetched.data, fetched.digest)
        if handle.type not in _MUTABLE:
            with self._lock:
                self._entries[handle] = entry
        return entry

    def _require(self, handle: Handle) -> _Entry:
        entry = self._entry(handle)
        if entry is None:
            raise NotFound(f"{handle} is not in {self.location}")
        return entry

    def exists(self, handle: Handle) -> bool:
        """Whether the file's tag exists."""
        return self._entry(handle) is not None

    def stat(self, handle: Handle) -> FileInfo:
        """The file's size, from its manifest."""
        return FileInfo(handle, self._require(handle).size)

    # ------------------------------------------------------------------ writes
    def save(self, handle: Handle, data: bytes, *, overwrite: bool = False) -> None:
        """Upload the blob, confirm it is there, then tag its manifest (the commit point).

        Round trips for a new file: ``HEAD`` blob || ``POST`` session [|| ``GET`` file manifest]
        [|| empty blob]; ``PUT`` blob (``PATCH`` pieces above 32 MiB); ``HEAD`` (the confirmation,
        rule B8: a registry or proxy may acknowledge what it did not keep, so a ``201`` with the
        right ``Docker-Content-Digest`` is checked but never taken as proof); ``PUT`` manifest.
        The manifest ``GET`` only serves to refuse replacing a file with other bytes, so it is
        skipped for files named by the SHA-256 of these bytes (any tag of that name holds this
        blob, and pushing the same manifest again is idempotent) and with ``overwrite``; else it
        is awaited before the manifest push (a refused save leaves at most an untagged blob, no
        file). A first ``HEAD`` finding the blob at its size cancels the session, sends no byte
        and is the confirmation.
        """
        blob = _sha256(data)
        if handle.type not in _MUTABLE:
            with self._lock:
                known = self._entries.get(handle)
            if self._holds(handle, known, blob, len(data), overwrite):
                return
        pool = self._helpers
        named_by_content = handle.type in _CONTENT_NAMED and handle.name == blob.hex
        check = None if overwrite or named_by_content else pool.submit(self._entry, handle)
        empty = None if self._empty_uploaded else pool.submit(self._ensure_empty)
        try:
            self._upload(handle, data, blob, pool)
        finally:  # no side request keeps running behind an error
            _ = [f.exception() for f in (check, empty) if f is not None]
        if check is not None and self._holds(handle, check.result(), blob, len(data), overwrite):
            return
        if empty is not None:
            empty.result()
        manifest = file_manifest(handle, blob, len(data))
        digest = self._put_manifest(handle, manifest, blob, len(data))
        with self._lock:
            own = self._own if handle.type in _MUTABLE else self._entries
            own[handle] = _Entry(blob, len(data), digest)
            self._writes += 1
        self._keep(handle, data)

    def _keep(self, handle: Handle, data: bytes) -> None:
        """Keep a whole small file (not a pack) in memory, within _KEEP_TOTAL bytes in all."""
        if handle.type is FileType.PACK or len(data) > _KEEP_MAX:
            return
        with self._lock:
            self._kept_total -= len(self._kept.pop(handle, b""))
            if self._kept_total + len(data) <= _KEEP_TOTAL:
                self._kept[handle] = data
                self._kept_total += len(data)

    def _forget(self, handle: Handle) -> _Entry | None:
        """Drop what is known of a file; its manifest entry as known here (None: not known)."""
        with self._lock:
            self._writes += 1
            self._kept_total -= len(self._kept.pop(handle, b""))
            return self._own.pop(handle, None) or self._entries.pop(handle, None)

    def _holds(
        self, handle: Handle, entry: _Entry | None, blob: Digest, size: int, overwrite: bool
    ) -> bool:
        """Whether ``entry`` (the file's) holds these bytes; UsageError if others, unless replaced."""
        if entry is not None and (entry.blob, entry.size) == (blob, size):
            return True
        if entry is not None and not overwrite:
            raise UsageError(
                f"{handle} already exists in {self.location} with other content; "
                "refusing to replace it"
            )
        return False

    def _upload(self, handle: Handle, data: bytes, blob: Digest, pool: ThreadPoolExecutor) -> None:
        """Store ``data`` as blob ``blob`` and confirm the registry serves it at its size."""
        present: int | None = None
        try:
            head = pool.submit(self._client.head_blob, blob)
            if len(data) > _MONOLITHIC_MAX:
                present = head.result()
                if present is None:
                    view = memoryview(data)
                    pieces = [bytes(view[i : i + _PIECE]) for i in range(0, len(data), _PIECE)]
                    self._client.put_blob_stream(pieces, blob, len(data), chunk_size=_PIECE)
            else:
                try:
                    session = self._client.open_upload()
                finally:
                    present = head.result()  # raises its error (once the POST is done)
                if present is None:
                    self._client.put_blob(data, blob, session=session)
                else:
                    pool.submit(self._client.cancel_upload, session)
        except (RegistryError, Transient) as exc:
            # Concurrent uploads of one blob race inside the registry (distribution answers the
            # loser with DIGEST_INVALID or an error); the blob is content-addressed, so if the
            # registry now serves it at the right size, the upload is done (reads verify it).
            if self._settled_size(blob) != len(data):
                raise
            logger.info(
                "upload of %s failed (%s), but the registry holds it: continuing", handle, exc
            )
            return
        if present is None:
            # The registry said it stored the blob; believe it only when it serves it back.
            present = self._settled_size(blob)
        if present != len(data):
            raise RegistryError(
                f"{self.location} accepted the upload of {handle} but "
                + ("does not have it" if present is None else f"reports {present} bytes")
                + f" instead of {len(data)}; nothing was tagged"
            )

    def _settled_size(self, blob: Digest) -> int | None:
        """The blob's size as the registry serves it, asked again while the registry settles.

        Right after concurrent commits of one blob, distribution may answer a HEAD with 500 for a
        moment (one commit renames the data while another reads its link); that is not an outage,
        so the question is asked a few more times, with growing pauses, before it counts as one.
        """
        for attempt in range(_MANIFEST_ATTEMPTS):
            try:
                return self._client.head_blob(blob)
            except RegistryUnavailable:
                if attempt == _MANIFEST_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _put_manifest(self, handle: Handle, manifest: bytes, blob: Digest, size: int) -> Digest:
        """Tag the file's manifest; retried while the registry still settles the blob.

        Concurrent uploads of one blob race inside the registry: for a moment after one commit
        another may be rewriting the blob, and a manifest pushed then is refused (distribution:
        400 DIGEST_INVALID or MANIFEST_BLOB_UNKNOWN). The blob is checked again before each retry.
        """
        for attempt in range(_MANIFEST_ATTEMPTS):
            try:
                return self._client.put_manifest(file_tag(handle), manifest, OCI_MANIFEST)
            except AuthError:
                raise
            except RegistryError as exc:
                if attempt == _MANIFEST_ATTEMPTS - 1 or self._settled_size(blob) != size:
                    raise
                logger.info("tagging %s refused (%s); retrying", handle, exc)
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")  # the loop returns or raises

    def remove(self, handle: Handle) -> None:
        """Delete the file's manifest (its tag goes with it; the registry's GC frees the blob).

        A lock (or the config) this backend pushed is deleted by the digest it pushed: only its
        owner re-points a lock, so while the lock is there its tag holds that manifest.
        """
        entry = self._forget(handle)
        if entry is None:
            entry = self._require(handle)
            self._forget(handle)
        try:
            self._client.delete_manifest(entry.manifest)
        except RegistryObjectMissing as exc:
            raise NotFound(f"{handle} is not in {self.location}") from exc

    # ------------------------------------------------------------------ reads
    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        """Exactly ``length`` bytes from ``offset`` (the rest when None), verified by the client.

        A repository names keys, packs, index files and records by the SHA-256 of their bytes, so
        such a file is first asked for directly as the blob of that digest (saving the manifest
        round trip; a whole file is checked against the digest, a range is checked by the blob
        codec of whoever decodes it); only when the registry has no such blob is the file's
        manifest consulted. Small whole files (not packs) written or read here whole are kept in
        memory and served from there: the bytes this backend hashed when it wrote or verified
        them. A lock of this backend's is its own last push (only its owner re-points a lock).
        """
        if offset < 0 or (length is not None and length < 0):
            raise UsageError(f"invalid read of {handle}: offset {offset}, length {length}")
        with self._lock:
            known = self._entries.get(handle)
            kept = self._kept.get(handle)
        if kept is not None:
            return kept[offset : _end(handle, len(kept), offset, length)]
        wanted = offset == 0 if length is None else length > 0
        if known is None and handle.type in _CONTENT_NAMED and wanted:
            direct = Digest("sha256", bytes.fromhex(handle.name))
            try:
                if length is not None:
                    return self._client.get_blob_range(direct, offset, length)
                data = self._client.get_blob(direct)
                self._keep(handle, data)
                return data
            except RegistryObjectMissing:
                pass  # not named by its content (or gone): the manifest decides
        entry = self._require(handle)
        end = _end(handle, entry.size, offset, length)
        if offset == 0 and end == entry.size:
            data = self._client.get_blob(entry.blob, entry.size)
            if handle.type not in _MUTABLE:
                self._keep(handle, data)
            return data
        return self._client.get_blob_range(entry.blob, offset, end - offset, blob_size=entry.size)

    def _tags(self) -> list[str]:
        """Every tag; none when the registry does not know the repository yet (no manifest).

        A listing is a snapshot, so answering one made less than _LIST_REUSE_S ago is the same as
        having been asked that much earlier; it is reused only while this backend has saved and
        removed nothing since it began, so a caller always sees its own writes (a lock, then the
        listing that looks for others' locks). Back-to-back listings (locks, then records) then
        cost one round trip.
        """
        now = time.monotonic()
        with self._lock:
            writes, last = self._writes, self._listing
        if last is not None and last[0] == writes and now - last[1] < _LIST_REUSE_S:
            return list(last[2])
        try:
            tags = self._client.list_tags()
        except RegistryObjectMissing:
            tags = []
        with self._lock:
            self._listing = (writes, now, tags)
        return list(tags)

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        """Every file of ``file_type`` (tags with its prefix), sizes from their manifests."""
        handles: list[Handle] = []
        if file_type is FileType.CONFIG:
            prefix = file_tag(Handle.config())
            tags = [t for t in self._tags() if t == prefix]
            handles = [Handle.config()] if tags else []
        else:
            prefix = f"{TAG_PREFIX}{file_type.value}."
            for tag in self._tags():
                if tag.startswith(prefix):
                    try:
                        handles.append(Handle(file_type, tag[len(prefix) :]))
                    except UsageError:
                        continue  # not a file tag of ours (a foreign tag with our prefix)
        if not handles:
            return iter(())
        with self._lock:
            own = dict(self._own)
        with ThreadPoolExecutor(max_workers=_LIST_WORKERS) as pool:
            entries = list(pool.map(lambda h: own.get(h) or self._entry(h), handles))
        return iter(
            [FileInfo(h, e.size) for h, e in zip(handles, entries, strict=True) if e is not None]
        )

    # ------------------------------------------------------------------ image tags
    def publish(self, tag: str, record: Handle, files: Sequence[Handle]) -> Digest:
        """Point image tag ``tag`` at a manifest whose config is ``record`` and layers ``files``.

        Every referenced blob is confirmed present first (a registry may have collected one),
        so a tag never points at a missing blob. Beyond _PART_FILES files the layers are split
        into parts pushed by digest, and the tag holds an OCI index of the parts.
        """
        validate_tag(tag)
        if tag.startswith(TAG_PREFIX):
            raise UsageError(f"image tag {tag!r} uses the reserved prefix {TAG_PREFIX!r}")
        handles = [record, *files]

        def served(handle: Handle) -> tuple[_Entry, int | None]:
            # A content-named file's blob is its name: asked for alongside its manifest.
            guess = named = None
            if handle.type in _CONTENT_NAMED and handle not in self._entries:
                named = Digest("sha256", bytes.fromhex(handle.name))
                guess = self._helpers.submit(self._client.head_blob, named)
            try:
                entry = self._require(handle)
            finally:
                if guess is not None:
                    guess.exception()
            if guess is not None and entry.blob == named:
                return entry, guess.result()
            return entry, self._client.head_blob(entry.blob)

        with ThreadPoolExecutor(max_workers=_LIST_WORKERS) as pool:
            found = list(pool.map(served, handles))
        entries = [e for e, _size in found]
        for h, (e, size) in zip(handles, found, strict=True):
            if size != e.size:
                raise RegistryError(
                    f"{self.location} does not serve {h} (blob {e.blob.short}); the image tag "
                    f"{tag!r} was not pushed; run 'chunkstore check'"
                )
        described = [(h, e.blob, e.size) for h, e in zip(handles, entries, strict=True)]
        manifests, index = image_tag_manifests(described[0], described[1:], _PART_FILES)
        if index is None:
            return self._client.put_manifest(tag, manifests[0], OCI_MANIFEST)
        for data in manifests:
            self._client.put_manifest(_sha256(data), data, OCI_MANIFEST)
        return self._client.put_manifest(tag, index, OCI_INDEX)

    def published_record(self, tag: str) -> Digest | None:
        """The record blob digest image tag ``tag`` points at (None: no such image tag)."""
        try:
            fetched = self._client.get_manifest(tag, accept=(OCI_MANIFEST, OCI_INDEX))
        except RegistryObjectMissing:
            return None
        try:
            doc = jsonsafe.loads(fetched.data)
            if doc.get("artifactType") != IMAGE_ARTIFACT_TYPE:
                return None
            if doc.get("mediaType") == OCI_INDEX:
                first = Digest.parse(doc["manifests"][0]["digest"])
                doc = jsonsafe.loads(self._client.get_manifest(first, accept=(OCI_MANIFEST,)).data)
            return Digest.parse(doc["config"]["digest"])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, Malformed) as exc:
            raise CorruptMetadata(
                f"image tag {tag!r} of {self.location} is invalid: {exc}"
            ) from exc

    def unpublish(self, tag: str) -> None:
        """Delete image tag ``tag`` (its manifest; parts go with the registry's GC)."""
        fetched = self._client.get_manifest(tag, accept=(OCI_MANIFEST, OCI_INDEX))
        self._client.delete_manifest(fetched.digest)

    def close(self) -> None:
        """Finish the side requests still running, then close the client's connections."""
        self._helpers.shutdown(wait=True)
        self._client.close()


def _end(handle: Handle, size: int, offset: int, length: int | None) -> int:
    """Where a read of ``length`` bytes (None: the rest) from ``offset`` ends; else ShortRead."""
    end = size if length is None else offset + length
    if end > size or offset > size:
        raise ShortRead(
            f"{handle}: wanted {end - offset} bytes from offset {offset}, only "
            f"{max(0, size - offset)} there (the file has {size})"
        )
    return end


def open_registry_backend(text: str, remote: RemoteOptions) -> RegistryBackend:
    """The backend for ``HOST[:PORT]/NAME`` (HTTPS; plain HTTP when asked or for loopback)."""
    ref = parse_reference(text)
    if ref.tag is not None or ref.digest is not None:
        raise UsageError(
            f"a registry repository is HOST[:PORT]/NAME without a tag or digest, not {text!r:.200}"
        )
    plain = remote.plain_http or is_loopback(ref.endpoint)
    auth = RegistryAuth(credentials_for(ref.endpoint, env=remote.env))
    return RegistryBackend(RegistryClient.for_reference(ref, plain_http=plain, auth=auth))
