"""An OCI distribution client: blobs, manifests and tags of one repository on one registry.

The registry API (OCI distribution spec) is a handful of URL shapes under ``/v2/<name>/``:

* ``blobs/<digest>``: ``HEAD`` (exists? size), ``GET`` (bytes; ``Range`` for a slice), ``DELETE``.
* ``blobs/uploads/``: ``POST`` opens an upload session and answers ``Location``; the bytes go in
  one ``PUT <location>?digest=`` (monolithic) or in ``PATCH`` chunks with ``Content-Range`` and a
  closing ``PUT``. ``GET <location>`` reports how much arrived (``Range: 0-<last>``), which is how
  an upload resumes after a dropped connection or a 416. ``POST ?mount=<digest>&from=<repo>``
  links a blob from another repository (201) or opens a normal session (202).
* ``manifests/<tag-or-digest>``: ``GET``/``PUT``/``DELETE``; ``tags/list`` pages with ``Link``.

Nothing a registry sends is trusted: every blob is checked for size and then SHA-256 while it
streams (a ``Docker-Content-Digest`` header that disagrees is an error, never an override), a
manifest fetched by digest is hashed before it is returned, manifests are capped at 4 MiB, and a
range answer must carry exactly the range asked for (a ``200`` with the whole blob is sliced only
after the whole blob verified).

Failures are mapped at one boundary (:meth:`RegistryClient._status_error`) onto
:mod:`chunkstore.errors`: 404 → :class:`RegistryObjectMissing`, 401/403 → :class:`AuthError`,
5xx/408/429, resets and timeouts → :class:`RegistryUnavailable` (a ``Transient``), other 4xx →
:class:`RegistryError` with the registry's error code. Transient failures are retried here with
bounded exponential backoff and jitter, honouring ``Retry-After``; every request also has a
wall-clock deadline, checked between reads, because httpx timeouts measure inactivity only and a
server dripping one byte every 0.8 s would never trip them.

Redirects are followed by hand (at most 5): credentials go only to the registry's own origin
(registries redirect blob downloads to object storage), and https → http is refused unless the
target is loopback. The client is safe to share between threads (one pooled ``httpx.Client``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import NamedTuple, TypeVar
from urllib.parse import urlencode

import httpx

from chunkstore.errors import (
    AuthError,
    ChunkstoreError,
    DigestMismatch,
    ManifestTooLarge,
    RegistryError,
    RegistryObjectMissing,
    RegistryUnavailable,
    ShortRead,
    SizeMismatch,
    Transient,
    UsageError,
)
from chunkstore.registry.auth import RegistryAuth, parse_challenges
from chunkstore.registry.reference import (
    Reference,
    is_loopback,
    validate_name,
    validate_tag,
)
from index.errors import Malformed
from index.ids import Digest, sha256

__all__ = [
    "DEFAULT_ACCEPT",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "MANIFEST_LIMIT",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "FetchedManifest",
    "RegistryClient",
]

logger = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DEFAULT_ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
#: Registries must accept manifests up to 4 MiB and may refuse more; we never read more.
MANIFEST_LIMIT = 4 << 20
_IN_MEMORY_LIMIT = 1 << 30  # get_blob without a size; iter_blob streams anything
_ERROR_BODY_LIMIT = 64 << 10
_TAGS_PAGE_LIMIT = 16 << 20
_UPLOAD_CHUNK = 8 << 20
_WRITE_PIECE = 64 << 10
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
_MAX_TAG_PAGES = 100_000
_USER_AGENT = "chunkstore/0.1"
_CONTENT_RANGE = re.compile(r"\Abytes ([0-9]+)-([0-9]+)/([0-9]+|\*)\Z")
_UPLOAD_RANGE = re.compile(r"\A(?:bytes=)?0-(-?[0-9]+)\Z")
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')

_T = TypeVar("_T")


class FetchedManifest(NamedTuple):
    """A manifest as fetched: its media type, its exact bytes and their (verified) digest."""

    media_type: str
    data: bytes
    digest: Digest


class _UploadLost(Exception):
    """The upload session is gone or out of step; the upload must restart from byte 0."""


class _RangeRejected(Exception):
    """A PATCH was answered 416 or with an unexpected range; ask the session where it is."""


def _where(url: httpx.URL) -> str:
    """``host[:port]/path`` without the query (which may hold presigned signatures)."""
    host = f"{url.host}:{url.port}" if url.port else url.host
    return f"{host}{url.path}"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _clean(text: str, limit: int = 300) -> str:
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _with_query(url: httpx.URL, params: Sequence[tuple[str, str]]) -> httpx.URL:
    """``url`` with ``params`` appended, its existing query (e.g. ``_state``) kept byte for byte."""
    extra = urlencode(params).encode("ascii")
    return url.copy_with(query=url.query + b"&" + extra if url.query else extra)


class _Body(httpx.SyncByteStream):
    """A request body that can be sent again (auth retries) and checks the deadline as it goes."""

    def __init__(self, data: bytes | memoryview, deadline: float, what: str) -> None:
        self._data = data
        self._deadline = deadline
        self._what = what

    def __iter__(self) -> Iterator[bytes]:
        view = memoryview(self._data)
        for start in range(0, len(view), _WRITE_PIECE):
            if time.monotonic() > self._deadline:
                raise RegistryUnavailable(f"{self._what} did not finish before its deadline")
            yield bytes(view[start : start + _WRITE_PIECE])


@dataclass(slots=True)
class _Reply:
    """A streaming response and the wall-clock deadline its body must arrive by."""

    response: httpx.Response
    deadline: float
    what: str

    @property
    def status(self) -> int:
        return self.response.status_code

    def chunks(self) -> Iterator[bytes]:
        try:
            for chunk in self.response.iter_bytes():
                if time.monotonic() > self.deadline:
                    raise RegistryUnavailable(f"{self.what} did not finish before its deadline")
                yield chunk
        except httpx.TransportError as exc:
            raise _transport_error(exc, f"{self.what} (reading the answer)") from exc

    def read(self, limit: int, error: Callable[[int], ChunkstoreError]) -> bytes:
        """The whole body, raising ``error(limit)`` as soon as it grows past ``limit`` bytes."""
        declared = self.response.headers.get("content-length", "")
        if (
            declared.isdigit()
            and int(declared) > limit
            and "content-encoding" not in self.response.headers
        ):
            raise error(limit)
        body = bytearray()
        for chunk in self.chunks():
            body += chunk
            if len(body) > limit:
                raise error(limit)
        return bytes(body)


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
        if retries < 0 or timeout <= 0 or deadline <= 0 or backoff < 0:
            raise UsageError("retries must be >= 0 and timeout, deadline, backoff positive")
        scheme = "http" if plain_http else "https"
        try:
            self._base = httpx.URL(f"{scheme}://{host}/")
        except httpx.InvalidURL:
            raise UsageError(f"invalid registry host {host!r:.100}") from None
        if not self._base.host or self._base.path != "/" or self._base.userinfo:
            raise UsageError(f"invalid registry host {host!r:.100}")
        self.host = host
        self.name = name
        self._origin = _origin(self._base)
        self._auth = auth if auth is not None else RegistryAuth()
        self._timeout = timeout
        self._deadline = deadline
        self._attempts = retries + 1
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        if transport is None:
            limits = httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
            transport = httpx.HTTPTransport(limits=limits)
        self._http = httpx.Client(transport=transport, follow_redirects=False, trust_env=False)

    @classmethod
    def for_reference(cls, ref: Reference, **kwargs: object) -> RegistryClient:
        """A client for ``ref``'s repository (connecting to :attr:`Reference.endpoint`)."""
        return cls(ref.endpoint, ref.name, **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        """Host and repository only."""
        return f"RegistryClient({self.host!r}, {self.name!r}, auth={self._auth!r})"

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()

    def __enter__(self) -> RegistryClient:
        """The client itself; closed on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the client."""
        self.close()

    # -- transport: one request, redirects, deadline, error mapping, retries --------------------

    def _url(self, tail: str) -> httpx.URL:
        return self._base.copy_with(path=f"/v2/{self.name}/{tail}")

    @contextmanager
    def _open(
        self,
        method: str,
        url: httpx.URL,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | memoryview | None = None,
    ) -> Iterator[_Reply]:
        """Send one request (following redirects) and yield the streaming reply; no retries."""
        deadline = time.monotonic() + self._deadline
        hdrs = {"User-Agent": _USER_AGENT, **(headers or {})}
        if body is not None:
            hdrs["Content-Length"] = str(len(body))
        for _hop in range(_MAX_REDIRECTS + 1):
            what = f"{method} {_where(url)}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RegistryUnavailable(f"{what} did not finish within {self._deadline:g} s")
            timeout = httpx.Timeout(min(self._timeout, remaining))
            request = httpx.Request(
                method,
                url,
                headers={"Host": url.netloc.decode("ascii"), **hdrs},
                stream=_Body(body, deadline, what) if body is not None else None,
                extensions={"timeout": timeout.as_dict()},
            )
            auth = self._auth if _origin(url) == self._origin else None
            try:
                response = self._http.send(request, auth=auth, stream=True)
            except httpx.TransportError as exc:
                raise _transport_error(exc, what) from exc
            if response.status_code in _REDIRECTS and "location" in response.headers:
                response.close()
                target = self._redirect_target(url, response.headers["location"], what)
                if response.status_code == 303 or (
                    response.status_code in (301, 302) and method == "POST"
                ):
                    method, body = "GET", None
                    hdrs.pop("Content-Length", None)
                    hdrs.pop("Content-Type", None)
                url = target
                continue
            try:
                yield _Reply(response, deadline, what)
            finally:
                response.close()
            return
        raise RegistryError(f"{method} {_where(url)}: more than {_MAX_REDIRECTS} redirects")

    def _redirect_target(self, url: httpx.URL, location: str, what: str) -> httpx.URL:
        try:
            target = url.join(location)
        except httpx.InvalidURL:
            raise RegistryError(f"{what}: redirect to an invalid URL") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise RegistryError(f"{what}: redirect to an unsupported URL {_where(target)}")
        if url.scheme == "https" and target.scheme == "http" and not is_loopback(target.host):
            raise RegistryError(
                f"{what}: refusing a redirect from HTTPS to plain HTTP ({_where(target)})"
            )
        return target

    def _check(self, reply: _Reply, ok: Container[int]) -> None:
        if reply.status not in ok:
            raise self._status_error(reply)

    def _status_error(self, reply: _Reply) -> ChunkstoreError:
        """The one place HTTP statuses become chunkstore errors."""
        status, what = reply.status, reply.what
        detail = self._error_detail(reply)
        if status == 404:
            return RegistryObjectMissing(f"{what}: not found (404{detail})")
        if status in (401, 403):
            header = reply.response.headers.get("www-authenticate", "")
            scope = [c.params for c in parse_challenges(header) if c.params.get("error")]
            if scope and scope[0].get("error") == "insufficient_scope":
                hint = (
                    f"the credentials do not grant {scope[0].get('scope', 'the access needed')} "
                    "(insufficient scope); use an account that may push/pull this repository"
                )
            elif not self._auth.has_credentials:
                hint = (
                    f"the registry needs credentials: set CHUNKSTORE_REGISTRY_USER and "
                    f"CHUNKSTORE_REGISTRY_PASSWORD, or run `docker login {self.host}`"
                )
            else:
                hint = (
                    f"check the user name and password for {self.host} and that the account may "
                    f"access {self.name}"
                )
            return AuthError(f"{what}: access refused ({status}{detail}); {hint}")
        if status in (408, 425, 429) or status >= 500:
            return RegistryUnavailable(
                f"{what}: registry answered {status}{detail}",
                retry_after=_retry_after(reply.response.headers.get("retry-after")),
            )
        if status == 413:
            return ManifestTooLarge(f"{what}: registry refused the size (413{detail})")
        return RegistryError(f"{what}: registry answered {status}{detail}")

    @staticmethod
    def _error_detail(reply: _Reply) -> str:
        try:
            body = reply.read(_ERROR_BODY_LIMIT, lambda n: RegistryError("error body too large"))
            doc = json.loads(body) if body else None
        except (ChunkstoreError, ValueError):
            return ""
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
            return ""
        code, message = errors[0].get("code"), errors[0].get("message")
        parts = [str(p) for p in (code, message) if isinstance(p, str) and p]
        return ": " + _clean(": ".join(parts)) if parts else ""

    def _call(
        self,
        what: str,
        fn: Callable[[], _T],
        *,
        integrity_attempts: int = 1,
        retry_transient: bool = True,
    ) -> _T:
        """``fn()``, retried on Transient errors (and on bad bytes ``integrity_attempts`` times)."""
        attempt = bad = 0
        while True:
            attempt += 1
            try:
                result = fn()
            except Transient as exc:
                if not retry_transient:
                    raise
                self._pause(attempt, exc)
                continue
            except (DigestMismatch, SizeMismatch) as exc:
                bad += 1
                if bad >= integrity_attempts:
                    raise
                logger.warning("%s: %s; fetching again", what, exc)
                continue
            if attempt > 1:
                logger.warning("%s succeeded on attempt %d", what, attempt)
            return result

    def _pause(self, attempt: int, exc: Transient) -> None:
        """Sleep before the next attempt, or raise when ``attempt`` was the last."""
        if attempt >= self._attempts:
            raise RegistryUnavailable(
                f"{exc}; gave up after {attempt} attempt{'s' if attempt > 1 else ''}: the registry "
                "is unreachable or overloaded, try again later"
            ) from exc
        delay = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(retry_after, max(self._max_backoff, 1.0)))
        logger.info("%s; retrying in %.1f s", exc, delay)
        self._sleep(delay)

    def _check_digest_header(self, reply: _Reply, digest: Digest) -> None:
        header = reply.response.headers.get("docker-content-digest")
        if header is not None and header.strip().lower() != str(digest):
            raise DigestMismatch(
                f"{reply.what}: Docker-Content-Digest {_clean(header, 80)} disagrees with "
                f"{digest}; the registry is serving the wrong content"
            )

    # -- blobs ------------------------------------------------------------------------------------

    def ping(self) -> None:
        """Check that the registry speaks the v2 API and accepts our credentials (``GET /v2/``)."""
        url = self._base.copy_with(path="/v2/")

        def go() -> None:
            with self._open("GET", url) as reply:
                self._check(reply, (200,))
                reply.read(
                    _ERROR_BODY_LIMIT,
                    lambda n: RegistryError(f"GET {_where(url)}: answer too large"),
                )

        self._call("ping", go)

    def _head(self, digest: Digest) -> int | None:
        with self._open("HEAD", self._url(f"blobs/{digest}")) as reply:
            if reply.status == 404:
                return None
            self._check(reply, (200,))
            self._check_digest_header(reply, digest)
            length = reply.response.headers.get("content-length", "")
            if not length.isdigit():
                raise RegistryError(f"{reply.what}: answer has no Content-Length")
            return int(length)

    def head_blob(self, digest: Digest) -> int | None:
        """The size of blob ``digest`` in this repository, or None when it is absent."""
        return self._call(f"HEAD blob {digest.short}", lambda: self._head(digest))

    def get_blob(
        self, digest: Digest, expected_size: int | None = None, *, max_size: int = _IN_MEMORY_LIMIT
    ) -> bytes:
        """Blob ``digest``, checked for size (when given) and then SHA-256.

        A blob that fails either check is fetched once more, then :class:`SizeMismatch` or
        :class:`DigestMismatch` is raised. Use :meth:`iter_blob` for blobs that should not sit
        in memory (more than ``max_size`` bytes is refused).
        """
        return self._call(
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
        url = self._url(f"blobs/{digest}")
        hasher = hashlib.sha256()
        received = attempt = 0
        pending: bytes | None = None
        while True:
            attempt += 1
            try:
                headers = {"Range": f"bytes={received}-"} if received else {}
                with self._open("GET", url, headers=headers) as reply:
                    skip = 0
                    if received and reply.status == 206:
                        start, _end, _total = _content_range(reply)
                        if start != received:
                            raise SizeMismatch(
                                f"{reply.what}: resumed at byte {start}, not {received}"
                            )
                    elif reply.status == 200:
                        skip = received
                        _check_declared_size(reply, expected_size)
                    else:
                        self._check(reply, (200,))
                    self._check_digest_header(reply, digest)
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
                self._pause(attempt, exc)
        what = f"GET {_where(url)}"
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
        url = self._url(f"blobs/{digest}")

        def go() -> bytes:
            with self._open("GET", url, headers={"Range": f"bytes={offset}-{last}"}) as reply:
                if reply.status == 206:
                    ctype = reply.response.headers.get("content-type", "")
                    if ctype.lower().startswith("multipart/"):
                        raise SizeMismatch(f"{reply.what}: multipart answer to a single range")
                    start, end, total = _content_range(reply)
                    if (start, end) != (offset, last):
                        raise SizeMismatch(
                            f"{reply.what}: asked for bytes {offset}-{last}, got {start}-{end}"
                        )
                    if blob_size is not None and total is not None and total != blob_size:
                        raise SizeMismatch(f"{reply.what}: blob has {total} bytes, not {blob_size}")
                    self._check_digest_header(reply, digest)
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
                self._check(reply, (200,))
                self._check_digest_header(reply, digest)
                _check_declared_size(reply, blob_size)
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

        return self._call(f"GET blob {digest.short} range", go, integrity_attempts=2)

    def delete_blob(self, digest: Digest) -> None:
        """Delete blob ``digest`` from this repository (the registry must allow deletes)."""
        self._delete(self._url(f"blobs/{digest}"))

    def _delete(self, url: httpx.URL) -> None:
        def go() -> None:
            with self._open("DELETE", url) as reply:
                self._check(reply, (200, 202, 204))

        self._call(f"DELETE {_where(url)}", go)

    # -- uploads ----------------------------------------------------------------------------------

    def _start_upload(self, params: Sequence[tuple[str, str]] = ()) -> tuple[int, httpx.URL]:
        url = self._url("blobs/uploads/")
        if params:
            url = _with_query(url, params)
        with self._open("POST", url, headers={"Content-Length": "0"}) as reply:
            self._check(reply, (201, 202))
            return reply.status, self._location(reply)

    def _location(self, reply: _Reply) -> httpx.URL:
        location = reply.response.headers.get("location")
        if not location:
            raise RegistryError(f"{reply.what}: answer has no Location")
        return self._redirect_target(reply.response.request.url, location, reply.what)

    def put_blob(self, data: bytes, digest: Digest | None = None) -> Digest:
        """Upload ``data`` in one request (skipped when the blob is present); its digest."""
        actual = sha256(data)
        if digest is not None and digest != actual:
            raise DigestMismatch(f"blob to upload hashes to {actual}, not {digest}")

        def go() -> Digest:
            if self._head(actual) is not None:
                return actual
            _status, location = self._start_upload()
            headers = {"Content-Type": "application/octet-stream"}
            with self._open(
                "PUT", _with_query(location, [("digest", str(actual))]), headers=headers, body=data
            ) as reply:
                self._check(reply, (201, 204))
                self._check_digest_header(reply, actual)
            return actual

        return self._call(f"upload blob {actual.short}", go)

    def mount_blob(self, digest: Digest, from_name: str) -> bool:
        """Link blob ``digest`` from repository ``from_name``; False when the registry declined."""
        validate_name(from_name)

        def go() -> bool:
            status, location = self._start_upload([("mount", str(digest)), ("from", from_name)])
            if status == 201:
                return True
            self._cancel(location)
            return False

        return self._call(f"mount blob {digest.short}", go)

    def _cancel(self, location: httpx.URL) -> None:
        try:
            with self._open("DELETE", location) as reply:
                reply.read(_ERROR_BODY_LIMIT, lambda n: RegistryError("too large"))
        except ChunkstoreError as exc:  # an abandoned session expires on its own
            logger.info("could not cancel upload session: %s", exc)

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
        if self._call(f"HEAD blob {digest.short}", lambda: self._head(digest)) is not None:
            return digest
        reiterable = iter(chunks) is not chunks
        restarts = 0
        while True:
            try:
                self._upload_session(chunks, digest, size, max(1, chunk_size))
                return digest
            except _UploadLost as exc:
                restarts += 1
                what = f"upload of blob {digest.short} to {self.host}/{self.name}"
                if not reiterable:
                    raise RegistryUnavailable(
                        f"{what}: the upload session was lost ({exc}) and the source cannot be "
                        "read again; retry the whole operation"
                    ) from None
                if restarts >= self._attempts:
                    raise RegistryUnavailable(
                        f"{what}: upload session lost {restarts} times ({exc})"
                    ) from None
                logger.warning("%s: session lost (%s); starting again", what, exc)

    def _upload_session(
        self, chunks: Iterable[bytes], digest: Digest, size: int, piece_size: int
    ) -> None:
        what = f"upload of blob {digest.short}"
        location = self._call(what, lambda: self._start_upload()[1])
        hasher = hashlib.sha256()
        done = 0
        for piece in _pieces(chunks, piece_size):
            hasher.update(piece)
            if done + len(piece) > size:
                self._cancel(location)
                raise SizeMismatch(f"{what}: the source has more than the {size} bytes declared")
            location = self._send_piece(location, piece, done, what)
            done += len(piece)
        if done != size or hasher.digest() != digest.raw:
            self._cancel(location)
            if done != size:
                raise SizeMismatch(f"{what}: the source had {done} bytes, not {size}")
            raise DigestMismatch(
                f"{what}: the source hashes to sha256:{hasher.hexdigest()}, not {digest}"
            )
        final = _with_query(location, [("digest", str(digest))])

        def commit() -> None:
            with self._open("PUT", final, headers={"Content-Length": "0"}) as reply:
                if reply.status == 404 and self._head(digest) is not None:
                    return  # an earlier attempt committed it and its answer was lost
                if reply.status in (400, 404):
                    raise _UploadLost(f"final PUT answered {reply.status}")
                self._check(reply, (201, 204))
                self._check_digest_header(reply, digest)

        self._call(what, commit)

    def _send_piece(self, location: httpx.URL, piece: bytes, start: int, what: str) -> httpx.URL:
        """PATCH ``piece`` at ``start``, resuming inside it after failures; the next location."""
        view = memoryview(piece)
        pos = attempt = 0
        tried_zero = False
        while pos < len(piece):
            attempt += 1
            try:
                location, end = self._patch(location, view[pos:], start + pos)
                if end != start + len(piece):
                    raise _RangeRejected(f"registry holds {end} bytes after PATCH")
                return location
            except (Transient, _RangeRejected) as exc:
                if isinstance(exc, Transient):
                    self._pause(attempt, exc)
                elif attempt >= self._attempts:
                    raise _UploadLost(str(exc)) from None
                location, offset, ambiguous = self._call(
                    what, functools.partial(self._status, location)
                )
                if ambiguous:  # distribution reports "0-0" for both 0 and 1 bytes received
                    offset = 1 if tried_zero else 0
                    tried_zero = True
                if not start <= offset <= start + len(piece):
                    raise _UploadLost(f"registry holds {offset} bytes, expected {start}+") from None
                pos = offset - start
        return location

    def _patch(self, location: httpx.URL, data: memoryview, start: int) -> tuple[httpx.URL, int]:
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(data) - 1}",
        }
        with self._open("PATCH", location, headers=headers, body=data) as reply:
            if reply.status == 416:
                raise _RangeRejected("registry answered 416")
            if reply.status == 404:
                raise _UploadLost("upload session not found")
            self._check(reply, (202, 204))
            new = self._location(reply) if "location" in reply.response.headers else location
            match = _UPLOAD_RANGE.match(reply.response.headers.get("range", ""))
            return new, (int(match.group(1)) + 1 if match else start + len(data))

    def _status(self, location: httpx.URL) -> tuple[httpx.URL, int, bool]:
        """Where upload session ``location`` stands: its next location, bytes held, ambiguity."""
        with self._open("GET", location) as reply:
            if reply.status in (400, 404):
                raise _UploadLost(f"upload status answered {reply.status}")
            self._check(reply, (200, 204))
            new = self._location(reply) if "location" in reply.response.headers else location
            header = reply.response.headers.get("range")
            if header is None:
                return new, 0, False
            match = _UPLOAD_RANGE.match(header.strip())
            if match is None:
                raise RegistryError(f"{reply.what}: unreadable upload Range {_clean(header, 60)}")
            last = int(match.group(1))
            return new, last + 1 if last >= 0 else 0, last == 0

    # -- manifests and tags -------------------------------------------------------------------------

    def _manifest_url(self, reference: str | Digest) -> tuple[httpx.URL, Digest | None]:
        if isinstance(reference, Digest):
            return self._url(f"manifests/{reference}"), reference
        if ":" in reference:
            try:
                digest = Digest.parse(reference)
            except Malformed:
                raise UsageError(f"invalid manifest digest {reference!r:.100}") from None
            return self._url(f"manifests/{digest}"), digest
        return self._url(f"manifests/{validate_tag(reference)}"), None

    def get_manifest(
        self, reference: str | Digest, accept: Sequence[str] = DEFAULT_ACCEPT
    ) -> FetchedManifest:
        """The manifest at a tag or digest; by digest, its bytes are verified before returning."""
        url, wanted = self._manifest_url(reference)

        def go() -> FetchedManifest:
            with self._open("GET", url, headers={"Accept": ", ".join(accept)}) as reply:
                self._check(reply, (200,))
                data = reply.read(
                    MANIFEST_LIMIT,
                    lambda n: ManifestTooLarge(f"{reply.what}: manifest is larger than {n} bytes"),
                )
                digest = sha256(data)
                if wanted is not None and digest != wanted:
                    raise DigestMismatch(f"{reply.what}: manifest hashes to {digest}, not {wanted}")
                self._check_digest_header(reply, digest)
                return FetchedManifest(_media_type(reply, data), data, digest)

        return self._call(f"GET manifest {reference}", go, integrity_attempts=2)

    def put_manifest(self, reference: str | Digest, data: bytes, media_type: str) -> Digest:
        """Store manifest ``data`` under a tag (or its digest); the digest of ``data``."""
        if len(data) > MANIFEST_LIMIT:
            raise ManifestTooLarge(
                f"manifest of {len(data)} bytes is over the {MANIFEST_LIMIT}-byte limit registries accept"
            )
        url, wanted = self._manifest_url(reference)
        digest = sha256(data)
        if wanted is not None and wanted != digest:
            raise DigestMismatch(f"manifest hashes to {digest}, not {wanted}")

        def go() -> Digest:
            with self._open("PUT", url, headers={"Content-Type": media_type}, body=data) as reply:
                self._check(reply, (200, 201, 204))
                self._check_digest_header(reply, digest)
            return digest

        return self._call(f"PUT manifest {reference}", go)

    def delete_manifest(self, digest: Digest) -> None:
        """Delete the manifest ``digest`` (and so every tag pointing at it)."""
        self._delete(self._url(f"manifests/{digest}"))

    def list_tags(self, *, page_size: int | None = None) -> list[str]:
        """Every tag of the repository, following ``Link`` pages (``page_size`` tags per page)."""
        url = self._url("tags/list")
        if page_size is not None:
            url = _with_query(url, [("n", str(page_size))])
        tags: list[str] = []
        seen: set[httpx.URL] = set()
        for _page in range(_MAX_TAG_PAGES):
            seen.add(url)
            page, link = self._call(
                f"GET tags of {self.name}", functools.partial(self._tags_page, url)
            )
            tags.extend(page)
            if link is None:
                return tags
            url = self._redirect_target(url, link, f"GET {_where(url)}")
            if _origin(url) != self._origin or url in seen:
                raise RegistryError(f"tag list of {self.name}: bad next-page link {_where(url)}")
        raise RegistryError(f"tag list of {self.name}: more than {_MAX_TAG_PAGES} pages")

    def _tags_page(self, url: httpx.URL) -> tuple[list[str], str | None]:
        with self._open("GET", url) as reply:
            self._check(reply, (200,))
            body = reply.read(
                _TAGS_PAGE_LIMIT, lambda n: RegistryError(f"{reply.what}: page over {n} bytes")
            )
            match = _LINK_NEXT.search(reply.response.headers.get("link", ""))
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        tags = doc.get("tags", None) if isinstance(doc, dict) else []
        if tags is None:
            tags = []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise RegistryError(f"GET {_where(url)}: answer is not a tag list")
        return tags, match.group(1) if match else None


def _transport_error(exc: httpx.TransportError, what: str) -> ChunkstoreError:
    """Network failures are worth retrying; a request httpx cannot even send is not."""
    detail = _clean(str(exc), 200) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return RegistryUnavailable(f"{what}: {detail}")
    return RegistryError(f"{what}: {detail}")


def _pieces(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """``chunks`` re-cut into pieces of exactly ``size`` bytes (the last may be shorter)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def _content_range(reply: _Reply) -> tuple[int, int, int | None]:
    header = reply.response.headers.get("content-range", "")
    match = _CONTENT_RANGE.match(header.strip())
    if match is None or int(match.group(1)) > int(match.group(2)):
        raise SizeMismatch(
            f"{reply.what}: 206 with an invalid Content-Range {_clean(header, 80)!r}"
        )
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def _check_declared_size(reply: _Reply, expected: int | None) -> None:
    headers = reply.response.headers
    declared = headers.get("content-length", "")
    if expected is not None and declared.isdigit() and "content-encoding" not in headers:
        if int(declared) != expected:
            raise SizeMismatch(
                f"{reply.what}: registry announces {declared} bytes, expected {expected}"
            )


def _media_type(reply: _Reply, data: bytes) -> str:
    header: str = reply.response.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        doc = json.loads(data)
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
                f"{reply.what}: Content-Type {_clean(header, 80)} disagrees with the manifest's "
                f"mediaType {_clean(declared, 80)}"
            )
        return str(declared)
    return header


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
