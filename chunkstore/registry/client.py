"""An OCI distribution client: blobs, manifests and tags of one repository on one registry.

The registry API (OCI distribution spec) is a handful of URL shapes under ``/v2/<name>/``:

* ``blobs/<digest>``: ``HEAD`` (exists? size), ``GET`` (bytes; ``Range`` for a slice), ``DELETE``.
* ``blobs/uploads/``: upload sessions, monolithic or chunked, and cross-repository mounts
  (:mod:`chunkstore.registry.uploads`).
* ``manifests/<tag-or-digest>``: ``GET``/``PUT``/``DELETE``; ``tags/list`` pages with ``Link``.

Nothing a registry sends is trusted: every blob is checked for size and then SHA-256 while it
streams (a ``Docker-Content-Digest`` header that disagrees is an error, never an override), a
manifest fetched by digest is hashed before it is returned, manifests are capped at 4 MiB, and a
range answer must carry exactly the range asked for (a ``200`` with the whole blob is sliced only
after the whole blob verified).

:class:`RegistryClient` speaks only in these terms. The HTTP underneath (wall-clock deadlines,
redirects that keep credentials on the registry's origin, the one boundary where statuses become
:mod:`chunkstore.errors`, retries with backoff and ``Retry-After``) is
:class:`~chunkstore.registry.http.RegistryHTTP`. The client is safe to share between threads
(one pooled ``httpx.Client``).
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import httpx

from chunkstore import jsonsafe
from chunkstore.errors import (
    DigestMismatch,
    ManifestTooLarge,
    RegistryError,
    ShortRead,
    SizeMismatch,
    Transient,
    UsageError,
)
from chunkstore.registry.auth import RegistryAuth
from chunkstore.registry.http import ERROR_BODY_LIMIT, RegistryHTTP, Reply, clean, where, with_query
from chunkstore.registry.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
)
from chunkstore.registry.reference import Reference, validate_name, validate_tag
from chunkstore.registry.uploads import Uploads
from index.errors import Malformed
from index.ids import Digest, sha256

__all__ = [
    "DEFAULT_ACCEPT",
    "MANIFEST_LIMIT",
    "FetchedManifest",
    "RegistryClient",
]

DEFAULT_ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
#: Registries must accept manifests up to 4 MiB and may refuse more; we never read more.
MANIFEST_LIMIT = 4 << 20
_IN_MEMORY_LIMIT = 1 << 30  # get_blob without a size; iter_blob streams anything
_TAGS_PAGE_LIMIT = 16 << 20
_UPLOAD_CHUNK = 8 << 20
_MAX_TAG_PAGES = 100_000
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


class FetchedManifest(NamedTuple):
    """A manifest as fetched: its media type, its exact bytes and their (verified) digest."""

    media_type: str
    data: bytes
    digest: Digest


class RegistryClient:
    """Blobs, manifests and tags of repository ``name`` on registry ``host``."""

    def __init__(
        self,
        host: str,
        name: str,
        *,
        plain_http: bool = False,
        auth: RegistryAuth | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        deadline: float = 600.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_connections: int = 16,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Talk to ``host`` (``host[:port]``, the endpoint to connect to) about repository ``name``.

        ``timeout`` bounds connecting and each read; ``deadline`` bounds each request from start
        to last byte. Transient failures are retried ``retries`` times, sleeping
        ``backoff * 2**k`` (with jitter, at most ``max_backoff``, at least ``Retry-After``).
        """
        validate_name(name)
        self._http = RegistryHTTP(
            host,
            name,
            plain_http=plain_http,
            auth=auth if auth is not None else RegistryAuth(),
            transport=transport,
            timeout=timeout,
            deadline=deadline,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_connections=max_connections,
            sleep=sleep,
        )
        self._uploads = Uploads(self._http, self._head)
        self.host = host
        self.name = name

    @classmethod
    def for_reference(cls, ref: Reference, **kwargs: object) -> RegistryClient:
        """A client for ``ref``'s repository (connecting to :attr:`Reference.endpoint`)."""
        return cls(ref.endpoint, ref.name, **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        """Host and repository only."""
        return f"RegistryClient({self.host!r}, {self.name!r}, auth={self._http.auth!r})"

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()

    def __enter__(self) -> RegistryClient:
        """The client itself; closed on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the client."""
        self.close()

    # -- blobs ------------------------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the registry speaks the v2 API and accepts our credentials (``GET /v2/``)."""
        url = self._http.base.copy_with(path="/v2/")

        def go() -> None:
            with self._http.open("GET", url) as reply:
                self._http.check(reply, (200,))
                reply.read(
                    ERROR_BODY_LIMIT,
                    lambda n: RegistryError(f"GET {where(url)}: answer too large"),
                )

        self._http.call("ping", go)

    def _head(self, digest: Digest) -> int | None:
        with self._http.open("HEAD", self._http.url(f"blobs/{digest}")) as reply:
            if reply.status == 404:
                return None
            self._http.check(reply, (200,))
            reply.check_digest(digest)
            length = reply.response.headers.get("content-length", "")
            if not length.isdigit():
                raise RegistryError(f"{reply.what}: answer has no Content-Length")
            return int(length)

    def head_blob(self, digest: Digest) -> int | None:
        """The size of blob ``digest`` in this repository, or None when it is absent."""
        return self._http.call(f"HEAD blob {digest.short}", lambda: self._head(digest))

    def get_blob(
        self, digest: Digest, expected_size: int | None = None, *, max_size: int = _IN_MEMORY_LIMIT
    ) -> bytes:
        """Blob ``digest``, checked for size (when given) and then SHA-256.

        A blob that fails either check is fetched once more, then :class:`SizeMismatch` or
        :class:`DigestMismatch` is raised. Use :meth:`iter_blob` for blobs that should not sit
        in memory (more than ``max_size`` bytes is refused).
        """
        return self._http.call(
            f"GET blob {digest.short}",
            lambda: b"".join(self.iter_blob(digest, expected_size, max_size=max_size)),
            integrity_attempts=2,
            retry_transient=False,  # iter_blob retries (and resumes) by itself
        )

    def iter_blob(
        self, digest: Digest, expected_size: int | None = None, *, max_size: int | None = None
    ) -> Iterator[bytes]:
        """Stream blob ``digest`` in pieces, resuming with ``Range`` after a dropped connection.

        The last piece is yielded only after the size and SHA-256 have been checked, so a
        consumer that sees the generator finish has verified bytes; an error raised instead means
        everything yielded must be discarded.
        """
        if digest.algorithm != "sha256":
            raise UsageError(f"registry blobs are named by sha256 digests, not {digest.algorithm}")
        limit = expected_size if expected_size is not None else max_size
        url = self._http.url(f"blobs/{digest}")
        hasher = hashlib.sha256()
        received = attempt = 0
        pending: bytes | None = None
        while True:
            attempt += 1
            try:
                headers = {"Range": f"bytes={received}-"} if received else {}
                with self._http.open("GET", url, headers=headers) as reply:
                    skip = 0
                    if received and reply.status == 206:
                        start, _end, _total = reply.content_range()
                        if start != received:
                            raise SizeMismatch(
                                f"{reply.what}: resumed at byte {start}, not {received}"
                            )
                    elif reply.status == 200:
                        skip = received
                        reply.check_length(expected_size)
                    else:
                        self._http.check(reply, (200,))
                    reply.check_digest(digest)
                    for chunk in reply.chunks():
                        if skip:
                            dropped = min(skip, len(chunk))
                            chunk, skip = chunk[dropped:], skip - dropped
                            if not chunk:
                                continue
                        received += len(chunk)
                        if limit is not None and received > limit:
                            raise SizeMismatch(
                                f"{reply.what}: blob is larger than the {limit} bytes expected"
                            )
                        hasher.update(chunk)
                        if pending is not None:
                            yield pending
                        pending = chunk
                    if skip:
                        raise SizeMismatch(f"{reply.what}: blob is shorter than before")
                break
            except Transient as exc:
                self._http.pause(attempt, exc)
        what = f"GET {where(url)}"
        if expected_size is not None and received != expected_size:
            raise SizeMismatch(f"{what}: got {received} bytes, expected {expected_size}")
        if hasher.digest() != digest.raw:
            raise DigestMismatch(
                f"{what}: content hashes to sha256:{hasher.hexdigest()[:12]}…, not {digest}"
            )
        if pending is not None:
            yield pending

    def get_blob_range(
        self, digest: Digest, offset: int, length: int, *, blob_size: int | None = None
    ) -> bytes:
        """``length`` bytes of blob ``digest`` from ``offset`` (exactly, or an error).

        A 206 must name exactly that range; a 200 (the registry ignored ``Range``) is accepted
        only when the whole blob verifies against ``digest``, and is then sliced. The bytes of a
        206 cannot be hashed here: callers verify what they decode from them.
        """
        if offset < 0 or length < 0:
            raise UsageError(f"invalid range: offset {offset}, length {length}")
        if length == 0:
            return b""
        last = offset + length - 1
        url = self._http.url(f"blobs/{digest}")

        def go() -> bytes:
            with self._http.open("GET", url, headers={"Range": f"bytes={offset}-{last}"}) as reply:
                if reply.status == 206:
                    ctype = reply.response.headers.get("content-type", "")
                    if ctype.lower().startswith("multipart/"):
                        raise SizeMismatch(f"{reply.what}: multipart answer to a single range")
                    start, end, total = reply.content_range()
                    if (start, end) != (offset, last):
                        raise SizeMismatch(
                            f"{reply.what}: asked for bytes {offset}-{last}, got {start}-{end}"
                        )
                    if blob_size is not None and total is not None and total != blob_size:
                        raise SizeMismatch(f"{reply.what}: blob has {total} bytes, not {blob_size}")
                    reply.check_digest(digest)
                    data = reply.read(
                        length, lambda n: SizeMismatch(f"{reply.what}: more than {n} bytes")
                    )
                    if len(data) != length:
                        raise SizeMismatch(f"{reply.what}: got {len(data)} of {length} bytes")
                    return data
                if reply.status == 416:
                    raise ShortRead(
                        f"{reply.what}: range {offset}-{last} lies beyond the blob's end"
                    )
                self._http.check(reply, (200,))
                reply.check_digest(digest)
                reply.check_length(blob_size)
                cap = blob_size if blob_size is not None else _IN_MEMORY_LIMIT
                whole = reply.read(
                    cap, lambda n: SizeMismatch(f"{reply.what}: more than {n} bytes")
                )
                if sha256(whole) != digest:
                    raise DigestMismatch(
                        f"{reply.what}: registry ignored Range and sent a body that does not "
                        f"hash to {digest}"
                    )
                if len(whole) < offset + length:
                    raise ShortRead(
                        f"{reply.what}: blob has {len(whole)} bytes, range ends at {last + 1}"
                    )
                return whole[offset : offset + length]

        return self._http.call(f"GET blob {digest.short} range", go, integrity_attempts=2)

    def delete_blob(self, digest: Digest) -> None:
        """Delete blob ``digest`` from this repository (the registry must allow deletes)."""
        self._delete(self._http.url(f"blobs/{digest}"))

    def _delete(self, url: httpx.URL) -> None:
        def go() -> None:
            with self._http.open("DELETE", url) as reply:
                self._http.check(reply, (200, 202, 204))

        self._http.call(f"DELETE {where(url)}", go)

    # -- uploads (the sessions are chunkstore.registry.uploads) -----------------------------------

    def put_blob(
        self, data: bytes, digest: Digest | None = None, *, session: httpx.URL | None = None
    ) -> Digest:
        """Upload ``data`` in one request (skipped when the blob is present); its digest.

        ``session``: an upload session from :meth:`open_upload`, opened while the caller learnt
        that the blob is absent; the first attempt puts the blob there without asking again. A
        retry (the answer was lost, the registry failed) asks with ``HEAD`` first and opens a new
        session.
        """
        actual = sha256(data)
        if digest is not None and digest != actual:
            raise DigestMismatch(f"blob to upload hashes to {actual}, not {digest}")
        opened = [session] if session is not None else []

        def go() -> Digest:
            if opened:
                self._uploads.put(data, actual, opened.pop())
            elif self._head(actual) is None:
                self._uploads.put(data, actual)
            return actual

        return self._http.call(f"upload blob {actual.short}", go)

    def open_upload(self) -> httpx.URL:
        """Open an upload session (``POST``) for :meth:`put_blob`; its location."""
        return self._http.call("open upload session", lambda: self._uploads.start()[1])

    def cancel_upload(self, session: httpx.URL) -> None:
        """Abandon an upload session from :meth:`open_upload`, best effort."""
        self._uploads.cancel(session)

    def mount_blob(self, digest: Digest, from_name: str) -> bool:
        """Link blob ``digest`` from repository ``from_name``; False when the registry declined."""
        validate_name(from_name)
        return self._http.call(
            f"mount blob {digest.short}", lambda: self._uploads.mount(digest, from_name)
        )

    def put_blob_stream(
        self, chunks: Iterable[bytes], digest: Digest, size: int, *, chunk_size: int = _UPLOAD_CHUNK
    ) -> Digest:
        """Upload a blob of ``size`` bytes from ``chunks`` in ``PATCH`` pieces of ``chunk_size``.

        A dropped connection or 416 asks the session how much arrived and continues from there.
        When the session itself is lost the upload restarts, which needs ``chunks`` to be
        re-iterable (a list, or an object whose ``__iter__`` starts over); a one-shot iterator
        then raises :class:`RegistryUnavailable`. The digest is checked before the final ``PUT``,
        so a wrong stream is never committed.
        """
        if self._http.call(f"HEAD blob {digest.short}", lambda: self._head(digest)) is None:
            self._uploads.put_stream(chunks, digest, size, chunk_size)
        return digest

    # -- manifests and tags ---------------------------------------------------------------------

    def _manifest_url(self, reference: str | Digest) -> tuple[httpx.URL, Digest | None]:
        if isinstance(reference, Digest):
            return self._http.url(f"manifests/{reference}"), reference
        if ":" in reference:
            try:
                digest = Digest.parse(reference)
            except Malformed:
                raise UsageError(f"invalid manifest digest {reference!r:.100}") from None
            return self._http.url(f"manifests/{digest}"), digest
        return self._http.url(f"manifests/{validate_tag(reference)}"), None

    def get_manifest(
        self, reference: str | Digest, accept: Sequence[str] = DEFAULT_ACCEPT
    ) -> FetchedManifest:
        """The manifest at a tag or digest; by digest, its bytes are verified before returning."""
        url, wanted = self._manifest_url(reference)

        def go() -> FetchedManifest:
            with self._http.open("GET", url, headers={"Accept": ", ".join(accept)}) as reply:
                self._http.check(reply, (200,))
                data = reply.read(
                    MANIFEST_LIMIT,
                    lambda n: ManifestTooLarge(f"{reply.what}: manifest is larger than {n} bytes"),
                )
                digest = sha256(data)
                if wanted is not None and digest != wanted:
                    raise DigestMismatch(f"{reply.what}: manifest hashes to {digest}, not {wanted}")
                reply.check_digest(digest)
                return FetchedManifest(_media_type(reply, data), data, digest)

        return self._http.call(f"GET manifest {reference}", go, integrity_attempts=2)

    def put_manifest(self, reference: str | Digest, data: bytes, media_type: str) -> Digest:
        """Store manifest ``data`` under a tag (or its digest); the digest of ``data``."""
        if len(data) > MANIFEST_LIMIT:
            raise ManifestTooLarge(
                f"manifest of {len(data)} bytes is over the {MANIFEST_LIMIT}-byte limit "
                "registries accept"
            )
        url, wanted = self._manifest_url(reference)
        digest = sha256(data)
        if wanted is not None and wanted != digest:
            raise DigestMismatch(f"manifest hashes to {digest}, not {wanted}")

        def go() -> Digest:
            with self._http.open(
                "PUT", url, headers={"Content-Type": media_type}, body=data
            ) as reply:
                self._http.check(reply, (200, 201, 204))
                reply.check_digest(digest)
            return digest

        return self._http.call(f"PUT manifest {reference}", go)

    def delete_manifest(self, digest: Digest) -> None:
        """Delete the manifest ``digest`` (and so every tag pointing at it)."""
        self._delete(self._http.url(f"manifests/{digest}"))

    def list_tags(self, *, page_size: int | None = None) -> list[str]:
        """Every tag of the repository, following ``Link`` pages (``page_size`` tags per page)."""
        url = self._http.url("tags/list")
        if page_size is not None:
            url = with_query(url, [("n", str(page_size))])
        tags: list[str] = []
        seen: set[httpx.URL] = set()
        for _page in range(_MAX_TAG_PAGES):
            seen.add(url)
            page, link = self._http.call(
                f"GET tags of {self.name}", functools.partial(self._tags_page, url)
            )
            tags.extend(page)
            if link is None:
                return tags
            url = self._http.redirect_target(url, link, f"GET {where(url)}")
            if not self._http.same_origin(url) or url in seen:
                raise RegistryError(f"tag list of {self.name}: bad next-page link {where(url)}")
        raise RegistryError(f"tag list of {self.name}: more than {_MAX_TAG_PAGES} pages")

    def _tags_page(self, url: httpx.URL) -> tuple[list[str], str | None]:
        with self._http.open("GET", url) as reply:
            self._http.check(reply, (200,))
            body = reply.read(
                _TAGS_PAGE_LIMIT, lambda n: RegistryError(f"{reply.what}: page over {n} bytes")
            )
            match = _LINK_NEXT.search(reply.response.headers.get("link", ""))
        try:
            doc = jsonsafe.loads(body)
        except ValueError:
            doc = None
        tags = doc.get("tags", None) if isinstance(doc, dict) else []
        if tags is None:
            tags = []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise RegistryError(f"GET {where(url)}: answer is not a tag list")
        return tags, match.group(1) if match else None


def _media_type(reply: Reply, data: bytes) -> str:
    header: str = reply.response.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        doc = jsonsafe.loads(data)
    except ValueError:
        doc = None
    declared = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(declared, str) and declared:
        if (
            header
            and header not in ("application/json", "application/octet-stream")
            and header != declared
        ):
            raise RegistryError(
                f"{reply.what}: Content-Type {clean(header, 80)} disagrees with the manifest's "
                f"mediaType {clean(declared, 80)}"
            )
        return str(declared)
    return header
