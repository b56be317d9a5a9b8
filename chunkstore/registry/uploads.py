"""Blob upload sessions: monolithic, chunked, resumed after a drop, restarted when lost.

An upload is a session the registry keeps under ``/v2/<name>/blobs/uploads/``:

* ``POST blobs/uploads/`` opens it and answers ``Location`` (each later answer may move it; the
  newest location is always the one to use). ``POST ?mount=<digest>&from=<repo>`` instead links a
  blob from another repository (201) or, when the registry declines, opens a normal session (202)
  that is then cancelled with ``DELETE <location>``.
* Monolithic: one ``PUT <location>?digest=`` carries the whole blob.
* Chunked: ``PATCH <location>`` pieces with ``Content-Range: <start>-<end>``, then a bodiless
  closing ``PUT <location>?digest=``. The digest is checked before that ``PUT``, so a wrong
  stream is never committed.

A dropped connection or a ``416`` does not restart anything: ``GET <location>`` reports how much
arrived (``Range: 0-<last>``) and the piece continues from there. The distribution registry
reports ``0-0`` both for nothing and for one byte received; that ambiguity is resolved by trying
0 first, then 1. Only when the session itself is lost (404/400, or out of step more often than
the retry budget allows) does the upload start over from byte 0, which needs a re-iterable
source.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

import httpx

from chunkstore.errors import (
    ChunkstoreError,
    DigestMismatch,
    RegistryError,
    RegistryUnavailable,
    SizeMismatch,
    Transient,
)
from chunkstore.registry.http import ERROR_BODY_LIMIT, RegistryHTTP, Reply, clean, with_query
from index.ids import Digest

__all__ = ["Uploads"]

# The client's logger name, kept so log filters configured for it still see uploads.
logger = logging.getLogger("chunkstore.registry.client")

_UPLOAD_RANGE = re.compile(r"\A(?:bytes=)?0-(-?[0-9]+)\Z")


class _UploadLost(Exception):
    """The upload session is gone or out of step; the upload must restart from byte 0."""


class _RangeRejected(Exception):
    """A PATCH was answered 416 or with an unexpected range; ask the session where it is."""


class Uploads:
    """Upload sessions of one repository, over ``http``; ``head`` sizes a blob (None: absent)."""

    def __init__(self, http: RegistryHTTP, head: Callable[[Digest], int | None]) -> None:
        """Upload through ``http``; ``head(digest)`` tells whether a blob is already committed."""
        self._http = http
        self._head = head

    def start(self, params: Sequence[tuple[str, str]] = ()) -> tuple[int, httpx.URL]:
        """Open a session (``POST``, with query ``params``): the status and the location."""
        url = self._http.url("blobs/uploads/")
        if params:
            url = with_query(url, params)
        with self._http.open("POST", url, headers={"Content-Length": "0"}) as reply:
            self._http.check(reply, (201, 202))
            return reply.status, self._location(reply)

    def _location(self, reply: Reply) -> httpx.URL:
        location = reply.response.headers.get("location")
        if not location:
            raise RegistryError(f"{reply.what}: answer has no Location")
        return self._http.redirect_target(reply.response.request.url, location, reply.what)

    def cancel(self, location: httpx.URL) -> None:
        """Abandon the session at ``location``, best effort."""
        try:
            with self._http.open("DELETE", location) as reply:
                reply.read(ERROR_BODY_LIMIT, lambda n: RegistryError("too large"))
        except ChunkstoreError as exc:  # an abandoned session expires on its own
            logger.info("could not cancel upload session: %s", exc)

    def mount(self, digest: Digest, from_name: str) -> bool:
        """Link blob ``digest`` from repository ``from_name``; False when the registry declined."""
        status, location = self.start([("mount", str(digest)), ("from", from_name)])
        if status == 201:
            return True
        self.cancel(location)
        return False

    def put(self, data: bytes, digest: Digest, location: httpx.URL | None = None) -> None:
        """Upload ``data`` (which hashes to ``digest``) in one ``PUT``; no retries.

        ``location``: a session already opened with :meth:`start` (else one is opened here).
        """
        if location is None:
            _status, location = self.start()
        headers = {"Content-Type": "application/octet-stream"}
        with self._http.open(
            "PUT", with_query(location, [("digest", str(digest))]), headers=headers, body=data
        ) as reply:
            self._http.check(reply, (201, 204))
            reply.check_digest(digest)

    def put_stream(
        self, chunks: Iterable[bytes], digest: Digest, size: int, chunk_size: int
    ) -> None:
        """Upload ``size`` bytes from ``chunks`` in ``PATCH`` pieces, restarting lost sessions."""
        reiterable = iter(chunks) is not chunks
        restarts = 0
        while True:
            try:
                self._session(chunks, digest, size, max(1, chunk_size))
                return
            except _UploadLost as exc:
                restarts += 1
                what = f"upload of blob {digest.short} to {self._http.host}/{self._http.name}"
                if not reiterable:
                    raise RegistryUnavailable(
                        f"{what}: the upload session was lost ({exc}) and the source cannot be "
                        "read again; retry the whole operation"
                    ) from None
                if restarts >= self._http.attempts:
                    raise RegistryUnavailable(
                        f"{what}: upload session lost {restarts} times ({exc})"
                    ) from None
                logger.warning("%s: session lost (%s); starting again", what, exc)

    def _session(self, chunks: Iterable[bytes], digest: Digest, size: int, piece_size: int) -> None:
        what = f"upload of blob {digest.short}"
        location = self._http.call(what, lambda: self.start()[1])
        hasher = hashlib.sha256()
        done = 0
        for piece in _pieces(chunks, piece_size):
            hasher.update(piece)
            if done + len(piece) > size:
                self.cancel(location)
                raise SizeMismatch(f"{what}: the source has more than the {size} bytes declared")
            location = self._send_piece(location, piece, done, what)
            done += len(piece)
        if done != size or hasher.digest() != digest.raw:
            self.cancel(location)
            if done != size:
                raise SizeMismatch(f"{what}: the source had {done} bytes, not {size}")
            raise DigestMismatch(
                f"{what}: the source hashes to sha256:{hasher.hexdigest()}, not {digest}"
            )
        final = with_query(location, [("digest", str(digest))])

        def commit() -> None:
            with self._http.open("PUT", final, headers={"Content-Length": "0"}) as reply:
                if reply.status == 404 and self._head(digest) is not None:
                    return  # an earlier attempt committed it and its answer was lost
                if reply.status in (400, 404):
                    raise _UploadLost(f"final PUT answered {reply.status}")
                self._http.check(reply, (201, 204))
                reply.check_digest(digest)

        self._http.call(what, commit)

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
                    self._http.pause(attempt, exc)
                elif attempt >= self._http.attempts:
                    raise _UploadLost(str(exc)) from None
                location, offset, ambiguous = self._http.call(
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
        with self._http.open("PATCH", location, headers=headers, body=data) as reply:
            if reply.status == 416:
                raise _RangeRejected("registry answered 416")
            if reply.status == 404:
                raise _UploadLost("upload session not found")
            self._http.check(reply, (202, 204))
            new = self._location(reply) if "location" in reply.response.headers else location
            match = _UPLOAD_RANGE.match(reply.response.headers.get("range", ""))
            return new, (int(match.group(1)) + 1 if match else start + len(data))

    def _status(self, location: httpx.URL) -> tuple[httpx.URL, int, bool]:
        """Where upload session ``location`` stands: its next location, bytes held, ambiguity."""
        with self._http.open("GET", location) as reply:
            if reply.status in (400, 404):
                raise _UploadLost(f"upload status answered {reply.status}")
            self._http.check(reply, (200, 204))
            new = self._location(reply) if "location" in reply.response.headers else location
            header = reply.response.headers.get("range")
            if header is None:
                return new, 0, False
            match = _UPLOAD_RANGE.match(header.strip())
            if match is None:
                raise RegistryError(f"{reply.what}: unreadable upload Range {clean(header, 60)}")
            last = int(match.group(1))
            return new, last + 1 if last >= 0 else 0, last == 0


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
