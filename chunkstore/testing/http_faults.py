"""An in-process HTTP fault proxy: put it in front of a real registry and script what goes wrong.

:class:`FaultProxy` listens on ``127.0.0.1`` at a free port and forwards every request (HTTP/1.1,
one upstream connection per request, the ``Host`` header passed through so that the registry's
``Location`` answers name the proxy) to ``upstream`` (``host:port``). Rules, tried in the order
they were added, make chosen requests misbehave; a rule matches a method (or any) and a regular
expression searched in the request target (path and query), and fires ``times`` times (None:
always). Faults:

* :class:`Respond` -- answer without forwarding (``500`` twice, ``413``, ``416``, an HTML page);
* :class:`ReplaceBody` -- forward, then send another body (another blob's bytes, an HTML page),
  with a matching ``Content-Length`` unless told otherwise;
* :class:`SetHeaders` -- forward, then add or replace response headers (a lying
  ``Docker-Content-Digest``, a bad ``Content-Range``, a ``Set-Cookie``);
* :class:`DropRequestHeaders` -- remove request headers before forwarding (``Range``: the registry
  then answers ``200`` with the whole blob, as a server that ignores ranges does);
* :class:`ResetAfter` -- forward, send the headers and ``n`` body bytes, then reset the connection;
* :class:`LoseAnswer` -- forward the whole request, then reset instead of answering;
* :class:`PartialUpload` -- forward only the first ``n`` bytes of a ``PATCH`` body (the registry
  holds them), then reset: a chunked upload cut in the middle;
* :class:`Drip` -- forward, then send the body ``step`` bytes every ``interval`` seconds;
* :class:`Silence` -- accept the request and never answer (until the proxy closes);
* :class:`Redirect` -- answer ``307`` to the same path on another base URL (another proxy: the
  "object storage" host, whose :attr:`FaultProxy.seen` shows which headers reached it);
* :class:`ExpireTokens` -- (with ``bearer=True``) revoke the token the request carries, then handle
  the request as usual, so it is refused ``401``: a token that expires while a request is in flight
  (other requests with it are refused from then on; tokens fetched later are valid).

With ``bearer=True`` the proxy plays a token-authenticated registry in front of an open one: it
serves tokens at ``/token`` (anonymously, any scope, :attr:`FaultProxy.token_fetches` counts them)
and answers ``401`` with a ``Bearer`` challenge to every other request without a valid token; the
``Authorization`` header is not forwarded.

Every request is recorded in :attr:`FaultProxy.seen` (method, target, headers with lower-case
names). ``upstream_headers`` are added to every forwarded request (a redirect target that plays a
presigned URL can carry the credentials the client must not send there); ``response_headers`` are
added to every answer.

Used only by tests; it needs no third-party package.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import secrets
import socket
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

__all__ = [
    "Drip",
    "DropRequestHeaders",
    "ExpireTokens",
    "Fault",
    "FaultProxy",
    "LoseAnswer",
    "PartialUpload",
    "Redirect",
    "ReplaceBody",
    "ResetAfter",
    "Respond",
    "Rule",
    "SeenRequest",
    "SetHeaders",
    "Silence",
]

logger = logging.getLogger(__name__)

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
)
_UPSTREAM_TIMEOUT = 60.0
_SILENCE_LIMIT = 120.0


@dataclass(frozen=True)
class Respond:
    """Answer ``status`` with ``body`` and ``headers`` without forwarding the request."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplaceBody:
    """Forward, then send ``body`` instead of the upstream body.

    ``content_type`` replaces the upstream ``Content-Type`` when given. ``content_length`` is the
    length announced (default: the new body's), so a short or long body can also be announced
    honestly or not.
    """

    body: bytes
    content_type: str | None = None
    content_length: int | None = None


@dataclass(frozen=True)
class SetHeaders:
    """Forward, then add or replace these response headers."""

    headers: Mapping[str, str]


@dataclass(frozen=True)
class DropRequestHeaders:
    """Remove these request headers (case-insensitive) before forwarding."""

    names: Sequence[str]


@dataclass(frozen=True)
class ResetAfter:
    """Forward, send the status, headers and the first ``n`` body bytes, then reset (RST)."""

    n: int


@dataclass(frozen=True)
class LoseAnswer:
    """Forward the whole request (the registry acts on it), then reset instead of answering."""


@dataclass(frozen=True)
class PartialUpload:
    """Forward only the first ``n`` bytes of the request body, then reset the client.

    The forwarded request announces ``n`` bytes (and, for a ``PATCH`` with ``Content-Range``, the
    matching range), so the registry keeps exactly those bytes of the upload session.
    """

    n: int


@dataclass(frozen=True)
class Drip:
    """Forward, then send the body ``step`` bytes every ``interval`` seconds."""

    interval: float
    step: int = 1


@dataclass(frozen=True)
class Silence:
    """Read the request, then say nothing until the proxy closes."""


@dataclass(frozen=True)
class Redirect:
    """Answer ``status`` with ``Location`` = ``base`` + the request target (path and query)."""

    base: str
    status: int = 307


@dataclass(frozen=True)
class ExpireTokens:
    """Revoke the request's token, then handle the request (``bearer=True`` only)."""


Fault = (
    Respond
    | ReplaceBody
    | SetHeaders
    | DropRequestHeaders
    | ResetAfter
    | LoseAnswer
    | PartialUpload
    | Drip
    | Silence
    | Redirect
    | ExpireTokens
)


@dataclass
class Rule:
    """Apply ``fault`` to requests whose method is ``method`` (None: any) and target matches."""

    method: str | None
    target: re.Pattern[str]
    fault: Fault
    times: int | None = None
    hits: int = 0

    def matches(self, method: str, target: str) -> bool:
        """Whether this rule still fires for ``method`` ``target``."""
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.target.search(target) is not None


@dataclass(frozen=True)
class SeenRequest:
    """One request as it reached the proxy (header names in lower case)."""

    method: str
    target: str
    headers: Mapping[str, str]
    fault: Fault | None


@dataclass
class _Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


class FaultProxy:
    """A forwarding HTTP/1.1 proxy to ``upstream`` that misbehaves as its rules say."""

    def __init__(
        self,
        upstream: str,
        *,
        upstream_headers: Mapping[str, str] | None = None,
        response_headers: Mapping[str, str] | None = None,
        bind: str = "127.0.0.1",
        bearer: bool = False,
    ) -> None:
        """Forward to ``upstream`` (``host:port``, plain HTTP); call :meth:`start` or use ``with``.

        ``bearer``: require tokens from the proxy's own ``/token`` service (see the module text).
        """
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self.upstream_headers = dict(upstream_headers or {})
        self.response_headers = dict(response_headers or {})
        self._rules: list[Rule] = []
        self.bearer = bearer
        self._tokens: set[str] = set()
        self._token_fetches = 0
        self._seen: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer((bind, 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle
    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, what a client connects to."""
        address = self._server.server_address
        return f"{address[0]!s}:{address[1]}"

    @property
    def url(self) -> str:
        """``http://`` + :attr:`host`."""
        return f"http://{self.host}"

    def start(self) -> FaultProxy:
        """Serve in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; silent and dripping answers are abandoned."""
        self._closing.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        """Started."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Closed."""
        self.close()

    # ------------------------------------------------------------------ rules and log
    def on(
        self, method: str | None, target: str, fault: Fault, *, times: int | None = None
    ) -> Rule:
        """Add a rule: ``fault`` for ``method`` requests whose target matches regex ``target``."""
        rule = Rule(method, re.compile(target), fault, times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule and forget the log."""
        with self._lock:
            self._rules.clear()
            self._seen.clear()

    @property
    def seen(self) -> list[SeenRequest]:
        """Every request so far, in arrival order."""
        with self._lock:
            return list(self._seen)

    def _pick(self, method: str, target: str, headers: Mapping[str, str]) -> Fault | None:
        with self._lock:
            fault = None
            for rule in self._rules:
                if rule.matches(method, target):
                    rule.hits += 1
                    fault = rule.fault
                    break
            self._seen.append(SeenRequest(method, target, dict(headers), fault))
            return fault

    @property
    def token_fetches(self) -> int:
        """How many tokens the ``/token`` service has issued."""
        with self._lock:
            return self._token_fetches

    def revoke_tokens(self, token: str | None = None) -> None:
        """Make ``token`` (None: every token issued so far) invalid."""
        with self._lock:
            if token is None:
                self._tokens.clear()
            else:
                self._tokens.discard(token)

    def _gate(self, target: str, headers: Mapping[str, str]) -> _Answer | None:
        """With ``bearer``: the token service's answer, or a 401 for a request without a token."""
        if not self.bearer:
            return None
        if target.startswith("/token"):
            token = secrets.token_hex(16)
            with self._lock:
                self._tokens.add(token)
                self._token_fetches += 1
            body = json.dumps({"token": token, "expires_in": 300}).encode()
            return _Answer(200, "OK", [("Content-Type", "application/json")], body)
        auth = headers.get("authorization", "")
        with self._lock:
            if auth.startswith("Bearer ") and auth[7:] in self._tokens:
                return None
        match = re.match(r"\A/v2/(.+?)/(?:blobs|manifests|tags)/", target)
        scope = f',scope="repository:{match.group(1)}:pull,push"' if match else ""
        challenge = f'Bearer realm="{self.url}/token",service="fault-proxy"{scope}'
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        return _Answer(
            401,
            "Unauthorized",
            [("WWW-Authenticate", challenge), ("Content-Type", "application/json")],
            body,
        )

    # ------------------------------------------------------------------ forwarding
    def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> _Answer:
        conn = http.client.HTTPConnection(*self._upstream, timeout=_UPSTREAM_TIMEOUT)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            sent = {k.lower() for k, _ in headers}
            for key, value in headers:
                conn.putheader(key, value)
            for key, value in self.upstream_headers.items():
                if key.lower() not in sent:
                    conn.putheader(key, value)
            if body or method in ("PUT", "POST", "PATCH"):
                if "content-length" not in sent:
                    conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body if body else None)
            response = conn.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            return _Answer(response.status, response.reason, kept, data)
        finally:
            conn.close()


def _set_header(headers: list[tuple[str, str]], name: str, value: str | None) -> None:
    """Replace every ``name`` header by one with ``value`` (None: remove)."""
    headers[:] = [(k, v) for k, v in headers if k.lower() != name.lower()]
    if value is not None:
        headers.append((name, value))


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("fault proxy: " + format, *args)

        def _body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is not None and length.isdigit():
                return self.rfile.read(int(length))
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return b""

        def _reset(self) -> None:
            """Abort the connection with a TCP reset."""
            self.close_connection = True
            try:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
            except OSError:
                pass

        def _send(self, answer: _Answer, *, body_limit: int | None = None) -> None:
            headers = list(answer.headers)
            for key, value in proxy.response_headers.items():
                _set_header(headers, key, value)
            if self.command != "HEAD" and not any(
                k.lower() == "content-length" for k, _ in headers
            ):
                headers.append(("Content-Length", str(len(answer.body))))
            lines = [f"HTTP/1.1 {answer.status} {answer.reason or 'X'}"]
            lines += [f"{k}: {v}" for k, v in headers]
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            body = b"" if self.command == "HEAD" else answer.body
            if body_limit is not None:
                body = body[:body_limit]
            self.wfile.write(head + body)

        def _handle(self) -> None:
            method, target = self.command, self.path
            body = self._body()
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
            fault = proxy._pick(method, target, {k.lower(): v for k, v in headers})
            if isinstance(fault, ExpireTokens):
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Bearer "):
                    proxy.revoke_tokens(auth[7:])
            gate = proxy._gate(target, {k.lower(): v for k, v in headers})
            if gate is not None:
                self._send(gate)
                return
            if proxy.bearer:
                _set_header(headers, "Authorization", None)
            if isinstance(fault, Silence):
                proxy._closing.wait(_SILENCE_LIMIT)
                self._reset()
                return
            if isinstance(fault, Respond):
                answer_headers = list(fault.headers.items())
                self._send(_Answer(fault.status, "Fault", answer_headers, fault.body))
                return
            if isinstance(fault, Redirect):
                location = fault.base.rstrip("/") + target
                self._send(_Answer(fault.status, "Redirect", [("Location", location)], b""))
                return
            if isinstance(fault, DropRequestHeaders):
                drop = {n.lower() for n in fault.names}
                headers = [(k, v) for k, v in headers if k.lower() not in drop]
            if isinstance(fault, PartialUpload):
                body = body[: fault.n]
                _set_header(headers, "Content-Length", str(len(body)))
                match = re.match(r"\A(\d+)-(\d+)\Z", self.headers.get("Content-Range", ""))
                if match and body:
                    start = int(match.group(1))
                    _set_header(headers, "Content-Range", f"{start}-{start + len(body) - 1}")
            answer = proxy._forward(method, target, headers, body)
            if isinstance(fault, LoseAnswer | PartialUpload):
                self._reset()
                return
            if isinstance(fault, ReplaceBody):
                answer.body = fault.body
                length = fault.content_length
                _set_header(
                    answer.headers,
                    "Content-Length",
                    str(len(fault.body) if length is None else length),
                )
                if fault.content_type is not None:
                    _set_header(answer.headers, "Content-Type", fault.content_type)
                if length is not None and length != len(fault.body):
                    self._send(answer)
                    self._reset()
                    return
            if isinstance(fault, SetHeaders):
                for key, value in fault.headers.items():
                    _set_header(answer.headers, key, value)
            if isinstance(fault, ResetAfter):
                self._send(answer, body_limit=fault.n)
                self._reset()
                return
            if isinstance(fault, Drip):
                self._send(answer, body_limit=0)
                data = b"" if method == "HEAD" else answer.body
                for i in range(0, len(data), max(1, fault.step)):
                    if proxy._closing.wait(fault.interval):
                        self._reset()
                        return
                    self.wfile.write(data[i : i + fault.step])
                self.close_connection = True
                return
            self._send(answer)

        def handle_one_request(self) -> None:
            """Parse one request and handle it; connection errors end the connection quietly."""
            try:
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline:
                    self.close_connection = True
                    return
                if not self.parse_request():
                    return
                self._handle()
                self.wfile.flush()
            except (OSError, http.client.HTTPException) as exc:
                logger.debug("fault proxy: connection ended: %s", exc)
                self.close_connection = True

    return Handler
