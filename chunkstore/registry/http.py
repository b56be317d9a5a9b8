"""The HTTP core under the registry client: one request, bounded, redirected and mapped to errors.

:class:`RegistryHTTP` owns the pooled ``httpx.Client`` of one registry and repository and does
four things for every request, so that the API code above it never sees raw HTTP:

* **A wall-clock deadline.** httpx timeouts measure inactivity only: a server dripping one byte
  every 0.8 s would never trip them. Each request therefore carries a deadline from start to last
  byte, checked between reads (:class:`Reply`) and between written pieces (:class:`_Body`).
* **Redirects by hand** (at most 5). Registries redirect blob downloads to object storage, so
  credentials go only to the registry's own origin, and https → http is refused unless the target
  is loopback. 303 (and 301/302 after a POST) turn the request into a bodiless GET.
* **One error boundary.** :meth:`RegistryHTTP.check` maps unexpected statuses onto
  :mod:`chunkstore.errors`: 404 → :class:`RegistryObjectMissing`; 401/403 → :class:`AuthError`
  with a hint on what to fix; 5xx/408/425/429, resets and timeouts →
  :class:`RegistryUnavailable` (a ``Transient``); 413 → :class:`ManifestTooLarge`; other 4xx →
  :class:`RegistryError` carrying the registry's error code and message from the body.
* **Retries.** :meth:`RegistryHTTP.call` retries ``Transient`` failures with bounded exponential
  backoff and jitter, honouring ``Retry-After``, and (when asked) fetches bad bytes once more.

The client is safe to share between threads: all state here is fixed after construction.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import urlencode

import httpx

from chunkstore import jsonsafe
from chunkstore.errors import (
    AuthError,
    ChunkstoreError,
    DigestMismatch,
    ManifestTooLarge,
    RegistryError,
    RegistryObjectMissing,
    RegistryUnavailable,
    SizeMismatch,
    Transient,
    UsageError,
)
from chunkstore.registry.auth import RegistryAuth, parse_challenges
from chunkstore.registry.reference import is_loopback
from index.ids import Digest

__all__ = [
    "ERROR_BODY_LIMIT",
    "RegistryHTTP",
    "Reply",
    "clean",
    "where",
    "with_query",
]

# The client's logger name, kept so log filters configured for it still see retries.
logger = logging.getLogger("chunkstore.registry.client")

#: The most of an error (or otherwise ignored) body that is ever read.
ERROR_BODY_LIMIT = 64 << 10
_WRITE_PIECE = 64 << 10
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
#: Unread answers up to this size are read to their end, so their connection is kept.
_DRAIN_MAX = 64 << 10
_USER_AGENT = "chunkstore/0.1"
_CONTENT_RANGE = re.compile(r"\Abytes ([0-9]+)-([0-9]+)/([0-9]+|\*)\Z")

_T = TypeVar("_T")


def where(url: httpx.URL) -> str:
    """``host[:port]/path`` without the query (which may hold presigned signatures)."""
    host = f"{url.host}:{url.port}" if url.port else url.host
    return f"{host}{url.path}"


def clean(text: str, limit: int = 300) -> str:
    """``text`` from a registry, fit for a message: no control characters, at most ``limit``."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()
    return text if len(text) <= limit else text[:limit] + "…"


def with_query(url: httpx.URL, params: Sequence[tuple[str, str]]) -> httpx.URL:
    """``url`` with ``params`` appended, its existing query (e.g. ``_state``) kept byte for byte."""
    extra = urlencode(params).encode("ascii")
    return url.copy_with(query=url.query + b"&" + extra if url.query else extra)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


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


def _drain(response: httpx.Response, method: str) -> None:
    """Read the rest of a small answer the caller left unread, keeping its connection.

    A connection whose answer was not read to its end cannot carry another request, so closing
    such an answer closes the connection, and the next request pays a new TCP (and TLS)
    handshake: a round trip or more on a real link, for most HEAD, POST and PUT answers. Only
    answers that finished normally and announce at most _DRAIN_MAX bytes are read; others are
    closed with their connection.
    """
    if response.is_stream_consumed or response.is_closed:
        return
    length = response.headers.get("content-length", "")
    if method != "HEAD" and not (length.isdigit() and int(length) <= _DRAIN_MAX):
        return
    try:
        for _ in response.iter_raw():
            pass
    except httpx.HTTPError:
        pass  # the connection is closed with the answer


@dataclass(slots=True)
class Reply:
    """A streaming response and the wall-clock deadline its body must arrive by."""

    response: httpx.Response
    deadline: float
    what: str

    @property
    def status(self) -> int:
        """The HTTP status code."""
        return self.response.status_code

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives; :class:`RegistryUnavailable` once the deadline has passed."""
        try:
            for chunk in self.response.iter_bytes():
                if time.monotonic() > self.deadline:
                    raise RegistryUnavailable(f"{self.what} did not finish before its deadline")
                yield chunk
        except httpx.TransportError as exc:
            raise _transport_error(exc, f"{self.what} (reading the answer)") from exc

    def declared_length(self) -> int | None:
        """The body size the registry announces (``Content-Length`` of an unencoded body)."""
        headers = self.response.headers
        declared = headers.get("content-length", "")
        if not declared.isdigit() or "content-encoding" in headers:
            return None
        return int(declared)

    def check_length(self, expected: int | None) -> None:
        """An announced body size must be ``expected`` (when that is known)."""
        declared = self.declared_length()
        if expected is not None and declared is not None and declared != expected:
            raise SizeMismatch(
                f"{self.what}: registry announces {declared} bytes, expected {expected}"
            )

    def content_range(self) -> tuple[int, int, int | None]:
        """First byte, last byte and total (None for ``*``) of a 206's ``Content-Range``."""
        header = self.response.headers.get("content-range", "")
        match = _CONTENT_RANGE.match(header.strip())
        if match is None or int(match.group(1)) > int(match.group(2)):
            raise SizeMismatch(
                f"{self.what}: 206 with an invalid Content-Range {clean(header, 80)!r}"
            )
        total = None if match.group(3) == "*" else int(match.group(3))
        return int(match.group(1)), int(match.group(2)), total

    def read(self, limit: int, error: Callable[[int], ChunkstoreError]) -> bytes:
        """The whole body, raising ``error(limit)`` as soon as it grows past ``limit`` bytes."""
        declared = self.declared_length()
        if declared is not None and declared > limit:
            raise error(limit)
        body = bytearray()
        for chunk in self.chunks():
            body += chunk
            if len(body) > limit:
                raise error(limit)
        return bytes(body)

    def check_digest(self, digest: Digest) -> None:
        """A ``Docker-Content-Digest`` header, when present, must name ``digest``."""
        header = self.response.headers.get("docker-content-digest")
        if header is not None and header.strip().lower() != str(digest):
            raise DigestMismatch(
                f"{self.what}: Docker-Content-Digest {clean(header, 80)} disagrees with "
                f"{digest}; the registry is serving the wrong content"
            )


class RegistryHTTP:
    """Requests to one registry about one repository: deadline, redirects, errors, retries."""

    def __init__(
        self,
        host: str,
        name: str,
        *,
        plain_http: bool,
        auth: RegistryAuth,
        transport: httpx.BaseTransport | None,
        timeout: float,
        deadline: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        max_connections: int,
        sleep: Callable[[float], None],
    ) -> None:
        """See :class:`~chunkstore.registry.client.RegistryClient` for the parameters."""
        if retries < 0 or timeout <= 0 or deadline <= 0 or backoff < 0:
            raise UsageError("retries must be >= 0 and timeout, deadline, backoff positive")
        scheme = "http" if plain_http else "https"
        try:
            self.base = httpx.URL(f"{scheme}://{host}/")
        except httpx.InvalidURL:
            raise UsageError(f"invalid registry host {host!r:.100}") from None
        if not self.base.host or self.base.path != "/" or self.base.userinfo:
            raise UsageError(f"invalid registry host {host!r:.100}")
        self.host = host
        self.name = name
        self.auth = auth
        #: How many times a transient failure is tried in all.
        self.attempts = retries + 1
        self._origin = _origin(self.base)
        self._timeout = timeout
        self._deadline = deadline
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        if transport is None:
            limits = httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
            transport = httpx.HTTPTransport(limits=limits)
        self._client = httpx.Client(transport=transport, follow_redirects=False, trust_env=False)

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()

    def url(self, tail: str) -> httpx.URL:
        """``/v2/<name>/<tail>`` on the registry."""
        return self.base.copy_with(path=f"/v2/{self.name}/{tail}")

    def same_origin(self, url: httpx.URL) -> bool:
        """Whether ``url`` is on the registry itself (where credentials may go)."""
        return _origin(url) == self._origin

    @contextmanager
    def open(
        self,
        method: str,
        url: httpx.URL,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | memoryview | None = None,
    ) -> Iterator[Reply]:
        """Send one request (following redirects) and yield the streaming reply; no retries."""
        deadline = time.monotonic() + self._deadline
        hdrs = {"User-Agent": _USER_AGENT, **(headers or {})}
        if body is not None:
            hdrs["Content-Length"] = str(len(body))
        for _hop in range(_MAX_REDIRECTS + 1):
            what = f"{method} {where(url)}"
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
            auth = self.auth if self.same_origin(url) else None
            try:
                response = self._client.send(request, auth=auth, stream=True)
            except httpx.TransportError as exc:
                raise _transport_error(exc, what) from exc
            if response.status_code in _REDIRECTS and "location" in response.headers:
                response.close()
                target = self.redirect_target(url, response.headers["location"], what)
                if response.status_code == 303 or (
                    response.status_code in (301, 302) and method == "POST"
                ):
                    method, body = "GET", None
                    hdrs.pop("Content-Length", None)
                    hdrs.pop("Content-Type", None)
                url = target
                continue
            try:
                yield Reply(response, deadline, what)
                _drain(response, method)
            finally:
                response.close()
            return
        raise RegistryError(f"{method} {where(url)}: more than {_MAX_REDIRECTS} redirects")

    def redirect_target(self, url: httpx.URL, location: str, what: str) -> httpx.URL:
        """``location`` resolved against ``url``, refused when unsafe to follow."""
        try:
            target = url.join(location)
        except httpx.InvalidURL:
            raise RegistryError(f"{what}: redirect to an invalid URL") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise RegistryError(f"{what}: redirect to an unsupported URL {where(target)}")
        if url.scheme == "https" and target.scheme == "http" and not is_loopback(target.host):
            raise RegistryError(
                f"{what}: refusing a redirect from HTTPS to plain HTTP ({where(target)})"
            )
        return target

    def check(self, reply: Reply, ok: Container[int]) -> None:
        """Raise the chunkstore error for ``reply`` unless its status is in ``ok``."""
        if reply.status not in ok:
            raise self._status_error(reply)

    def _status_error(self, reply: Reply) -> ChunkstoreError:
        """The one place HTTP statuses become chunkstore errors."""
        status, what = reply.status, reply.what
        detail = _error_detail(reply)
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
            elif not self.auth.has_credentials:
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

    def call(
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
                self.pause(attempt, exc)
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

    def pause(self, attempt: int, exc: Transient) -> None:
        """Sleep before the next attempt, or raise when ``attempt`` was the last."""
        if attempt >= self.attempts:
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


def _error_detail(reply: Reply) -> str:
    """``": CODE: message"`` from an OCI error body, or "" when there is none to read."""
    try:
        body = reply.read(ERROR_BODY_LIMIT, lambda n: RegistryError("error body too large"))
        doc = jsonsafe.loads(body) if body else None
    except (ChunkstoreError, ValueError):
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return ""
    code, message = errors[0].get("code"), errors[0].get("message")
    parts = [str(p) for p in (code, message) if isinstance(p, str) and p]
    return ": " + clean(": ".join(parts)) if parts else ""


def _transport_error(exc: httpx.TransportError, what: str) -> ChunkstoreError:
    """Network failures are worth retrying; a request httpx cannot even send is not."""
    detail = clean(str(exc), 200) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return RegistryUnavailable(f"{what}: {detail}")
    return RegistryError(f"{what}: {detail}")


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
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
