"""The distribution API, pull side, as a bare ASGI application over one repository.

Routes (GET and HEAD; any other method is answered 405 ``UNSUPPORTED``: pushes come later)::

    /v2/                              200 {} (Docker-Distribution-API-Version: registry/2.0)
    /v2/_catalog[?n=&last=]           served repository names
    /v2/NAME/tags/list[?n=&last=]     tags of NAME (pagination with a Link header)
    /v2/NAME/manifests/TAG|DIGEST     the stored bytes exactly, their media type and digest
    /v2/NAME/blobs/DIGEST             configs from memory; layers rebuilt and streamed, Range:
                                      one range (206), 416 past the end

Errors are the distribution spec's JSON (``{"errors": [{"code", "message", "detail"}]}``).
What the names mean: :mod:`chunkstore.serve.catalog`; how a layer is made and verified:
:mod:`chunkstore.serve.blobs`. Blocking work runs in threads: catalog refreshes in the event
loop's executor, each layer in a thread of its own that hands pieces over through a bounded
queue (:data:`_IN_FLIGHT` pieces of about 1 MiB), stopped when the client goes away. Each layer
response holds a shared repository lock (a prune waits; a running prune answers 503).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any
from urllib.parse import parse_qs, quote

from chunkstore.errors import LockConflict
from chunkstore.lock import acquire_lock
from chunkstore.repository import Repository
from chunkstore.serve.blobs import RangeNotSatisfiable, layer_pieces, parse_range
from chunkstore.serve.builds import SharedBuilds
from chunkstore.serve.cache import LayerCache
from chunkstore.serve.catalog import Blob, Catalog, CatalogSource, Manifest, ServedRepository
from chunkstore.serve.names import is_valid_name, is_valid_tag
from index.image import LayerEntry

__all__ = ["RegistryApp"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_IN_FLIGHT = 8
_ROUTE = re.compile(r"/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)")
_TAGS = re.compile(r"/v2/(?P<name>.+)/tags/list")
_DIGEST = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
_API_HEADER = ("docker-distribution-api-version", "registry/2.0")
_MAX_PAGE = 10_000


class _Error(Exception):
    """An error response in the distribution spec's format."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: object = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail
        self.headers = headers


class RegistryApp:
    """ASGI application serving ``catalog``'s images from ``repo`` (read-only)."""

    def __init__(
        self,
        repo: Repository,
        catalog: CatalogSource,
        *,
        cache: LayerCache | None = None,
        lock_wait_s: float = 5.0,
    ):
        """``cache``: rebuilt layers kept on disk (and concurrent requests for one layer share
        one rebuild); ``lock_wait_s``: how long a layer request waits for a prune's exclusive
        lock."""
        self._repo = repo
        self._catalog = catalog
        self._cache = cache
        self._builds = SharedBuilds(repo, cache) if cache is not None else None
        self._lock_wait_s = lock_wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request (other scope types are ignored)."""
        if scope["type"] != "http":
            return
        head = scope["method"] == "HEAD"
        try:
            if scope["method"] not in ("GET", "HEAD"):
                raise _Error(
                    405, "UNSUPPORTED", "this server is read-only: only GET and HEAD are served"
                )
            await self._route(scope, receive, send, head)
        except _Error as err:
            body = json.dumps(
                {"errors": [{"code": err.code, "message": err.message, "detail": err.detail}]}
            ).encode()
            headers = [("content-type", "application/json"), *err.headers]
            await _respond(send, err.status, headers, body, head)

    async def _route(self, scope: Scope, receive: Receive, send: Send, head: bool) -> None:
        path: str = scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if path in ("/v2/", "/v2"):
            await _respond(send, 200, [("content-type", "application/json")], b"{}", head)
            return
        if path == "/v2/_catalog":
            catalog = await self._current()
            names = _page(sorted(catalog.repositories), query, "/v2/_catalog")
            await _json(send, {"repositories": names[0]}, names[1], head)
            return
        if m := _TAGS.fullmatch(path):
            name = m["name"]
            repo = await self._served(name)
            tags = _page(sorted(repo.tags), query, f"/v2/{name}/tags/list")
            await _json(send, {"name": name, "tags": tags[0]}, tags[1], head)
            return
        m = _ROUTE.fullmatch(path)
        if m is None:
            raise _Error(404, "UNSUPPORTED", f"no such endpoint: {path[:200]}")
        name, ref = m["name"], m["ref"]
        if m["kind"] == "manifests":
            manifest = await self._manifest(name, ref)
            headers = [
                ("content-type", manifest.media_type),
                ("docker-content-digest", manifest.digest),
            ]
            await _respond(send, 200, headers, manifest.data, head)
            return
        blob = await self._blob(name, ref)
        await self._send_blob(scope, receive, send, blob, head)

    async def _current(self, *, fresh: bool = False) -> Catalog:
        return await asyncio.to_thread(lambda: self._catalog.current(fresh=fresh))

    async def _served(self, name: str, *, fresh: bool = False) -> ServedRepository:
        if not is_valid_name(name):
            raise _Error(400, "NAME_INVALID", f"invalid repository name {name[:200]!r}")
        repo = (await self._current(fresh=fresh)).repositories.get(name)
        if repo is None and not fresh:
            return await self._served(name, fresh=True)
        if repo is None:
            raise _Error(
                404,
                "NAME_UNKNOWN",
                f"no image record is served as {name!r}; 'chunkstore tags' lists the records "
                "(a record NAME:TAG is served as NAME, tag TAG; NAME alone as NAME:latest)",
            )
        return repo

    async def _manifest(self, name: str, ref: str) -> Manifest:
        is_digest = _DIGEST.fullmatch(ref) is not None
        if not is_digest and not is_valid_tag(ref):
            raise _Error(404, "MANIFEST_UNKNOWN", f"{ref[:200]!r} is neither a tag nor a digest")
        for fresh in (False, True):
            repo = await self._served(name, fresh=fresh)
            found = repo.manifests.get(ref) if is_digest else repo.tags.get(ref)
            if found is not None:
                return found
        raise _Error(404, "MANIFEST_UNKNOWN", f"{name}: no manifest {ref[:200]}", {"tag": ref})

    async def _blob(self, name: str, digest: str) -> Blob:
        if _DIGEST.fullmatch(digest) is None:
            raise _Error(400, "DIGEST_INVALID", f"{digest[:200]!r} is not a digest")
        for fresh in (False, True):
            repo = await self._served(name, fresh=fresh)
            if (blob := repo.blobs.get(digest)) is not None:
                if blob.layer is not None and not blob.layer.exact:
                    raise _Error(
                        404,
                        "BLOB_UNKNOWN",
                        f"layer {digest} was backed up with --accept-new-digests: its original "
                        "bytes cannot be made again ('chunkstore restore' writes the image with "
                        "a new manifest digest)",
                        {"digest": digest},
                    )
                return blob
        raise _Error(404, "BLOB_UNKNOWN", f"{name}: no blob {digest}", {"digest": digest})

    async def _send_blob(
        self, scope: Scope, receive: Receive, send: Send, blob: Blob, head: bool
    ) -> None:
        try:
            want = parse_range(_header(scope, b"range"), blob.size)
        except RangeNotSatisfiable:
            raise _Error(
                416,
                "RANGE_INVALID",
                f"the range asks for nothing inside the blob's {blob.size} bytes",
                {"size": blob.size},
                (("content-range", f"bytes */{blob.size}"),),
            ) from None
        headers = [
            ("content-type", "application/octet-stream"),
            ("docker-content-digest", blob.digest),
            ("accept-ranges", "bytes"),
            ("etag", f'"{blob.digest}"'),
        ]
        status = 200
        if want is not None:
            status = 206
            headers.append(("content-range", want.content_range(blob.size)))
        length = blob.size if want is None else want.end - want.start
        if blob.data is not None or head or length == 0:
            data = b"" if blob.data is None else blob.data
            body = data if want is None else data[want.start : want.end]
            await _respond(send, status, headers, body, head, length)
            return
        assert blob.layer is not None
        layer: LayerEntry = blob.layer
        try:
            lock = await asyncio.to_thread(
                acquire_lock, self._repo.backend, exclusive=False, retry_for_s=self._lock_wait_s
            )
        except LockConflict as exc:
            raise _Error(503, "UNAVAILABLE", f"the repository is locked: {exc}") from None
        try:
            await _start(send, status, headers, length)
            await _pump(
                lambda: layer_pieces(self._repo, layer, want, self._cache, self._builds),
                receive,
                send,
                layer.digest,
            )
        finally:
            await asyncio.to_thread(lock.release)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _page(items: list[str], query: dict[str, list[str]], path: str) -> tuple[list[str], str | None]:
    """One page of ``items`` after ``last``, at most ``n``, and the Link header of the next."""
    last = query.get("last", [None])[0]
    if last is not None:
        items = [i for i in items if i > last]
    n_text = query.get("n", [None])[0]
    if n_text is None:
        return items, None
    if not n_text.isdigit() or not 0 < int(n_text) <= _MAX_PAGE:
        raise _Error(
            400, "PAGINATION_NUMBER_INVALID", f"n must be 1 to {_MAX_PAGE}, not {n_text[:20]!r}"
        )
    n = int(n_text)
    if len(items) <= n:
        return items, None
    page = items[:n]
    return page, f'<{path}?n={n}&last={quote(page[-1], safe="")}>; rel="next"'


async def _json(send: Send, value: object, link: str | None, head: bool) -> None:
    headers = [("content-type", "application/json")]
    if link is not None:
        headers.append(("link", link))
    await _respond(send, 200, headers, json.dumps(value).encode(), head)


async def _start(send: Send, status: int, headers: list[tuple[str, str]], length: int) -> None:
    raw = [(k.encode(), v.encode()) for k, v in [*headers, _API_HEADER]]
    raw.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})


async def _respond(
    send: Send,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    head: bool,
    length: int | None = None,
) -> None:
    await _start(send, status, headers, len(body) if length is None else length)
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _pump(
    make: Callable[[], Iterator[bytes]], receive: Receive, send: Send, what: str
) -> None:
    """Send what ``make()`` yields, made in a thread of its own; stop it if the client leaves.

    An exception of the maker is raised here, before the body is complete: the server then
    aborts the connection (the client sees a short body, never a complete wrong blob).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    slots = threading.Semaphore(_IN_FLIGHT)
    stop = threading.Event()

    def put(item: bytes | BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is gone
            stop.set()

    def produce() -> None:
        pieces = make()
        try:
            for piece in pieces:
                while not slots.acquire(timeout=0.5):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                put(piece)
            put(None)
        except BaseException as exc:
            put(exc)
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        stop.set()
        queue.put_nowait(None)

    thread = threading.Thread(target=produce, name="chunkstore-serve-blob", daemon=True)
    watcher = asyncio.create_task(watch())
    thread.start()
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                log.error("%s: aborting the response: %s", what, item)
                raise item
            slots.release()
            await send({"type": "http.response.body", "body": item, "more_body": True})
        if stop.is_set():
            log.info("%s: the client went away; the blob was not finished", what)
            return
        await send({"type": "http.response.body", "body": b""})
    finally:
        stop.set()
        watcher.cancel()
        await asyncio.to_thread(thread.join)
