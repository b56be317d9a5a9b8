"""RegistryClient against an in-memory registry (httpx.MockTransport) and a drip socket server.

Covers the registry rows of the reliability scenarios: wrong bytes, wrong headers, wrong ranges,
5xx and resets, token challenges and expiry, redirects, pagination, resumable uploads, manifest
checks and the wall-clock deadline.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from chunkstore.errors import (
    AuthError,
    DigestMismatch,
    ManifestTooLarge,
    RegistryError,
    RegistryObjectMissing,
    RegistryUnavailable,
    ShortRead,
    SizeMismatch,
    Transient,
)
from chunkstore.registry import Credentials, RegistryAuth, RegistryClient
from chunkstore.registry.mediatypes import OCI_MANIFEST
from index.ids import Digest, sha256

Hook = Callable[[httpx.Request], httpx.Response | None]

_PATH = re.compile(
    r"\A/v2/(.+?)/(blobs/uploads/([^/]*)|blobs/([^/]+)|manifests/([^/]+)|tags/list)\Z"
)

_PATH = re.compile(
    r"\A/v2/(.+?)/(blobs/uploads/([^/]*)|blobs/([^/]+)|manifests/([^/]+)|tags/list)\Z"
)


class FakeRegistry:
    """Blobs, upload sessions, manifests and tags, served like distribution does."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.tags: dict[str, dict[str, str]] = {}
        self.uploads: dict[str, bytearray] = {}
        self.requests: list[httpx.Request] = []
        self.hooks: list[Hook] = []
        self.absolute_locations = False

    def add_blob(self, data: bytes) -> str:
        digest = str(sha256(data))
        self.blobs[digest] = data
        return digest

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        # a snapshot: auth flows add headers to the same request object and send it again
        self.requests.append(
            httpx.Request(
                request.method, request.url, headers=request.headers.copy(), content=request.content
            )
        )
        for hook in list(self.hooks):
            response = hook(request)
            if response is not None:
                return response
        return self.handle(request)

    def count(self, method: str, fragment: str = "") -> int:
        return sum(1 for r in self.requests if r.method == method and fragment in str(r.url))

    def _location(self, request: httpx.Request, name: str, upload: str) -> str:
        path = f"/v2/{name}/blobs/uploads/{upload}?_state=st{len(self.uploads[upload])}"
        if self.absolute_locations:
            return f"{request.url.scheme}://{request.url.netloc.decode()}{path}"
        return path

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200, json={})
        m = _PATH.match(path)
        if m is None:
            return _error(404, "NAME_UNKNOWN", "no such path")
        name = m.group(1)
        if m.group(3) is not None:
            return self._upload(request, name, m.group(3))
        if m.group(4) is not None:
            return self._blob(request, m.group(4))
        if m.group(5) is not None:
            return self._manifest(request, name, m.group(5))
        return self._tags(request, name)

    def _blob(self, request: httpx.Request, digest: str) -> httpx.Response:
        data = self.blobs.get(digest)
        if data is None:
            return _error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        if request.method == "DELETE":
            del self.blobs[digest]
            return httpx.Response(202)
        headers = {"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream"}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return httpx.Response(200, headers=headers)
        rng = request.headers.get("range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
            assert m is not None
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            if start >= len(data):
                return httpx.Response(416)
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return httpx.Response(206, headers=headers, content=data[start : end + 1])
        return httpx.Response(200, headers=headers, content=data)

    def _upload(self, request: httpx.Request, name: str, upload: str) -> httpx.Response:
        method = request.method
        if method == "POST" and not upload:
            mount, source = request.url.params.get("mount"), request.url.params.get("from")
            if mount and source and mount in self.blobs:
                return httpx.Response(201, headers={"Location": f"/v2/{name}/blobs/{mount}"})
            new = uuid.uuid4().hex
            self.uploads[new] = bytearray()
            return httpx.Response(202, headers={"Location": self._location(request, name, new)})
        if upload not in self.uploads:
            return _error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown")
        buffer = self.uploads[upload]
        state_ok = request.url.params.get("_state") == f"st{len(buffer)}"
        if method != "GET" and not state_ok:  # a status query works with any state
            return _error(400, "BLOB_UPLOAD_INVALID", "bad state")
        if method == "DELETE":
            del self.uploads[upload]
            return httpx.Response(204)
        if method == "GET":
            headers = {"Range": f"0-{max(len(buffer) - 1, 0)}"}
            headers["Location"] = self._location(request, name, upload)
            return httpx.Response(204, headers=headers)
        if method == "PATCH":
            crange = request.headers.get("content-range", "")
            start = int(crange.split("-")[0]) if crange else len(buffer)
            if start != len(buffer):
                return _error(416, "BLOB_UPLOAD_INVALID", "out of order")
            buffer += request.content
            headers = {"Range": f"0-{len(buffer) - 1}"}
            headers["Location"] = self._location(request, name, upload)
            return httpx.Response(202, headers=headers)
        if method == "PUT":
            buffer += request.content
            digest = request.url.params.get("digest", "")
            if str(sha256(bytes(buffer))) != digest:
                return _error(400, "DIGEST_INVALID", "digest did not match")
            self.blobs[digest] = bytes(buffer)
            del self.uploads[upload]
            return httpx.Response(
                201,
                headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest},
            )
        return _error(405, "UNSUPPORTED", "method")

    def _manifest(self, request: httpx.Request, name: str, ref: str) -> httpx.Response:
        tags = self.tags.setdefault(name, {})
        if request.method == "PUT":
            digest = str(sha256(request.content))
            self.manifests[digest] = (request.headers["content-type"], request.content)
            if not ref.startswith("sha256:"):
                tags[ref] = digest
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        digest = ref if ref.startswith("sha256:") else tags.get(ref, "")
        if digest not in self.manifests:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        if request.method == "DELETE":
            del self.manifests[digest]
            for tag in [t for t, d in tags.items() if d == digest]:
                del tags[tag]
            return httpx.Response(202)
        media_type, data = self.manifests[digest]
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest}
        return httpx.Response(200, headers=headers, content=data)

    def _tags(self, request: httpx.Request, name: str) -> httpx.Response:
        tags = sorted(self.tags.get(name, {}))
        last = request.url.params.get("last")
        if last:
            tags = [t for t in tags if t > last]
        n = request.url.params.get("n")
        headers = {}
        if n and len(tags) > int(n):
            tags = tags[: int(n)]
            headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={tags[-1]}>; rel="next"'
        return httpx.Response(200, headers=headers, json={"name": name, "tags": tags})


def _error(status: int, code: str, message: str) -> httpx.Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]})
    return httpx.Response(status, content=body, headers={"Content-Type": "application/json"})


# -- helpers ---------------------------------------------------------------------------------------

HOST = "reg.example"
NAME = "team/app"


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_client(
    fake: FakeRegistry, sleeps: list[float], *, auth: RegistryAuth | None = None, **kw: object
) -> RegistryClient:
    return RegistryClient(
        kw.pop("host", HOST),  # type: ignore[arg-type]
        NAME,
        transport=httpx.MockTransport(fake),
        sleep=sleeps.append,
        auth=auth,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def client(fake: FakeRegistry, sleeps: list[float]) -> Iterator[RegistryClient]:
    with make_client(fake, sleeps) as c:
        yield c


def blob_hook(digest: str, respond: Callable[[httpx.Request], httpx.Response]) -> Hook:
    def hook(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith(f"/blobs/{digest}") and request.method == "GET":
            return respond(request)
        return None

    return hook


DATA = bytes(range(256)) * 40  # 10240 bytes
DIGEST = sha256(DATA)


# -- blob downloads: verification (B1-B5, A2) ------------------------------------------------------


def test_get_blob_verified(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.add_blob(DATA)
    assert client.get_blob(DIGEST, len(DATA)) == DATA
    assert client.head_blob(DIGEST) == len(DATA)
    assert b"".join(client.iter_blob(DIGEST)) == DATA


def test_head_missing_is_none_and_get_missing_is_not_found(client: RegistryClient) -> None:
    assert client.head_blob(DIGEST) is None
    with pytest.raises(RegistryObjectMissing, match="BLOB_UNKNOWN"):
        client.get_blob(DIGEST)


def test_wrong_body_is_digest_mismatch_after_one_refetch(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    other = b"x" * len(DATA)
    fake.hooks.append(blob_hook(str(DIGEST), lambda r: httpx.Response(200, content=other)))
    with pytest.raises(DigestMismatch, match=DIGEST.short):
        client.get_blob(DIGEST, len(DATA))
    assert fake.count("GET", "/blobs/") == 2


def test_bit_flip_once_then_good_bytes(
    fake: FakeRegistry, client: RegistryClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_blob(DATA)
    flipped = bytes([DATA[0] ^ 1]) + DATA[1:]
    calls = []

    def once(request: httpx.Request) -> httpx.Response | None:
        if "/blobs/" in request.url.path and request.method == "GET" and not calls:
            calls.append(1)
            return httpx.Response(200, content=flipped)
        return None

    fake.hooks.append(once)
    assert client.get_blob(DIGEST, len(DATA)) == DATA
    assert fake.count("GET", "/blobs/") == 2
    assert "succeeded on attempt 2" in caplog.text


def test_docker_content_digest_disagreeing_is_an_error(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    wrong = str(sha256(b"other"))
    fake.hooks.append(
        blob_hook(
            str(DIGEST),
            lambda r: httpx.Response(200, content=DATA, headers={"Docker-Content-Digest": wrong}),
        )
    )
    with pytest.raises(DigestMismatch, match="Docker-Content-Digest"):
        client.get_blob(DIGEST)


@pytest.mark.parametrize("body", [DATA[:-1], DATA + b"!"], ids=["short", "extra"])
def test_wrong_length_is_size_mismatch(
    fake: FakeRegistry, client: RegistryClient, body: bytes
) -> None:
    fake.hooks.append(blob_hook(str(DIGEST), lambda r: httpx.Response(200, content=body)))
    with pytest.raises(SizeMismatch):
        client.get_blob(DIGEST, len(DATA))


def test_html_200_body_is_rejected(fake: FakeRegistry, client: RegistryClient) -> None:
    html = b"<html><body>Please log in to the captive portal</body></html>"
    fake.hooks.append(
        blob_hook(
            str(DIGEST),
            lambda r: httpx.Response(200, content=html, headers={"Content-Type": "text/html"}),
        )
    )
    with pytest.raises(SizeMismatch):
        client.get_blob(DIGEST, len(DATA))
    with pytest.raises(DigestMismatch):
        client.get_blob(DIGEST)


def test_iter_blob_holds_back_the_last_piece_until_verified(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    bad = DATA[:-1] + b"\0"
    fake.hooks.append(blob_hook(str(DIGEST), lambda r: httpx.Response(200, content=bad)))
    seen = []
    with pytest.raises(DigestMismatch):
        for piece in client.iter_blob(DIGEST, len(DATA)):
            seen.append(piece)
    assert b"".join(seen) != bad  # the final piece was never handed out


def test_iter_blob_resumes_with_range_after_a_reset(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    fake.add_blob(DATA)

    class Dropping(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield DATA[:4000]
            raise httpx.ReadError("connection reset by peer")

    calls: list[str | None] = []

    def hook(request: httpx.Request) -> httpx.Response | None:
        if "/blobs/" in request.url.path and request.method == "GET":
            calls.append(request.headers.get("range"))
            if len(calls) == 1:
                return httpx.Response(200, stream=Dropping())
        return None

    fake.hooks.append(hook)
    assert b"".join(client.iter_blob(DIGEST, len(DATA))) == DATA
    assert calls == [None, "bytes=4000-"]


# -- ranges (B9, B10) ----------------------------------------------------------------------------


def test_range_206(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.add_blob(DATA)
    assert client.get_blob_range(DIGEST, 100, 50) == DATA[100:150]
    assert fake.requests[-1].headers["range"] == "bytes=100-149"


def test_range_wrong_content_range_is_an_error(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.hooks.append(
        blob_hook(
            str(DIGEST),
            lambda r: httpx.Response(
                206, content=DATA[0:50], headers={"Content-Range": f"bytes 0-49/{len(DATA)}"}
            ),
        )
    )
    with pytest.raises(SizeMismatch, match="100-149"):
        client.get_blob_range(DIGEST, 100, 50)


def test_range_truncated_206_is_an_error(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.hooks.append(
        blob_hook(
            str(DIGEST),
            lambda r: httpx.Response(
                206, content=DATA[100:120], headers={"Content-Range": f"bytes 100-149/{len(DATA)}"}
            ),
        )
    )
    with pytest.raises(SizeMismatch, match="20 of 50"):
        client.get_blob_range(DIGEST, 100, 50)


def test_range_ignored_full_body_is_verified_then_sliced(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    fake.hooks.append(blob_hook(str(DIGEST), lambda r: httpx.Response(200, content=DATA)))
    assert client.get_blob_range(DIGEST, 1000, 24) == DATA[1000:1024]


def test_range_ignored_with_wrong_body_is_refused(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    fake.hooks.append(blob_hook(str(DIGEST), lambda r: httpx.Response(200, content=DATA[1:])))
    with pytest.raises(DigestMismatch, match="ignored Range"):
        client.get_blob_range(DIGEST, 1000, 24)


def test_range_beyond_the_end_is_short_read(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.add_blob(DATA)
    with pytest.raises(ShortRead):
        client.get_blob_range(DIGEST, len(DATA) + 5, 10)


# -- retries (B6) ----------------------------------------------------------------------------------


def failing(times: int, status: int = 503, headers: dict[str, str] | None = None) -> Hook:
    left = [times]

    def hook(request: httpx.Request) -> httpx.Response | None:
        if left[0] > 0:
            left[0] -= 1
            return httpx.Response(status, headers=headers or {}, text="busy")
        return None

    return hook


def test_5xx_then_success(fake: FakeRegistry, client: RegistryClient, sleeps: list[float]) -> None:
    fake.add_blob(DATA)
    fake.hooks.append(failing(2))
    assert client.get_blob(DIGEST) == DATA
    assert len(fake.requests) == 3
    assert len(sleeps) == 2
    assert all(0 < s <= 30 for s in sleeps)


def test_retry_after_is_honoured(
    fake: FakeRegistry, client: RegistryClient, sleeps: list[float]
) -> None:
    fake.add_blob(DATA)
    fake.hooks.append(failing(1, 429, {"Retry-After": "7"}))
    assert client.head_blob(DIGEST) == len(DATA)
    assert sleeps == [7.0]


def test_exhausted_retries_raise_transient_naming_host_and_path(
    fake: FakeRegistry, client: RegistryClient, sleeps: list[float]
) -> None:
    fake.hooks.append(failing(100, 502))
    with pytest.raises(Transient) as info:
        client.put_blob(b"payload")
    message = str(info.value)
    assert isinstance(info.value, RegistryUnavailable)
    assert "reg.example/v2/team/app/blobs/" in message
    assert "502" in message and "gave up after 5 attempts" in message
    assert len(fake.requests) == 5 and len(sleeps) == 4


def test_connection_errors_are_retried(
    fake: FakeRegistry, client: RegistryClient, sleeps: list[float]
) -> None:
    fake.add_blob(DATA)
    left = [2]

    def hook(request: httpx.Request) -> httpx.Response | None:
        if left[0]:
            left[0] -= 1
            raise httpx.ConnectError("connection refused")
        return None

    fake.hooks.append(hook)
    assert client.head_blob(DIGEST) == len(DATA)
    assert len(sleeps) == 2


def test_other_4xx_is_registry_error_with_code(fake: FakeRegistry, client: RegistryClient) -> None:
    long = "x" * 5000
    fake.hooks.append(
        lambda r: httpx.Response(400, json={"errors": [{"code": "NAME_INVALID", "message": long}]})
    )
    with pytest.raises(RegistryError, match="NAME_INVALID") as info:
        client.list_tags()
    assert len(str(info.value)) < 600
    assert len(fake.requests) == 1


# -- auth (H1-H7) ----------------------------------------------------------------------------------


class TokenServer:
    """A bearer-token registry front: a token is valid until ``revoke()``."""

    def __init__(self, fake: FakeRegistry, realm: str = "https://auth.example/token") -> None:
        self.fake = fake
        self.realm = realm
        self.valid: set[str] = set()
        self.token_requests: list[httpx.Request] = []
        self.expires_in = 300
        fake.hooks.insert(0, self)

    def revoke(self) -> None:
        self.valid.clear()

    def __call__(self, request: httpx.Request) -> httpx.Response | None:
        if str(request.url).startswith(self.realm):
            self.token_requests.append(request)
            token = uuid.uuid4().hex
            self.valid.add(token)
            return httpx.Response(200, json={"token": token, "expires_in": self.expires_in})
        if request.url.host != "reg.example":
            return None
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer ") and header[7:] in self.valid:
            return None
        challenge = (
            f'Bearer realm="{self.realm}",service="reg.example",scope="repository:{NAME}:pull"'
        )
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": challenge},
            json={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
        )


def test_bearer_challenge_fetches_a_token_and_retries(
    fake: FakeRegistry, sleeps: list[float]
) -> None:
    fake.add_blob(DATA)
    tokens = TokenServer(fake)
    auth = RegistryAuth(Credentials("alice", "pw-123"), trusted_realm_hosts=["auth.example"])
    with make_client(fake, sleeps, auth=auth) as client:
        assert client.get_blob(DIGEST) == DATA
        assert client.head_blob(DIGEST) == len(DATA)  # cached token: no second fetch
    assert len(tokens.token_requests) == 1
    token_request = tokens.token_requests[0]
    assert token_request.url.params["service"] == "reg.example"
    assert token_request.url.params["scope"] == f"repository:{NAME}:pull"
    assert token_request.headers["authorization"].startswith("Basic ")
    assert sleeps == []


def test_token_refresh_on_expiry(fake: FakeRegistry, sleeps: list[float]) -> None:
    fake.add_blob(DATA)
    tokens = TokenServer(fake)
    tokens.expires_in = 60
    now = [1000.0]
    auth = RegistryAuth(clock=lambda: now[0])
    with make_client(fake, sleeps, auth=auth) as client:
        client.head_blob(DIGEST)
        client.head_blob(DIGEST)
        assert len(tokens.token_requests) == 1
        now[0] += 61  # expired by the clock: fetched again before sending
        client.head_blob(DIGEST)
        assert len(tokens.token_requests) == 2
        tokens.revoke()  # expired early on the server: one 401, one refresh, one retry
        client.head_blob(DIGEST)
        assert len(tokens.token_requests) == 3


def test_realm_on_untrusted_host_gets_no_credentials(
    fake: FakeRegistry, sleeps: list[float]
) -> None:
    fake.add_blob(DATA)
    tokens = TokenServer(fake, realm="https://evil.example/token")
    auth = RegistryAuth(Credentials("alice", "pw-123"))
    with make_client(fake, sleeps, auth=auth) as client:
        client.head_blob(DIGEST)
    assert "authorization" not in tokens.token_requests[0].headers


def test_refused_token_is_auth_error_without_secrets(
    fake: FakeRegistry, sleeps: list[float]
) -> None:
    def hook(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == "reg.example":
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Bearer realm="https://reg.example/token"'}
            )
        return None

    fake.hooks.append(lambda r: httpx.Response(401, json={}) if r.url.path == "/token" else None)
    fake.hooks.append(hook)
    auth = RegistryAuth(Credentials("alice", "pw-SECRET"))
    with make_client(fake, sleeps, auth=auth) as client, pytest.raises(AuthError) as info:
        client.ping()
    assert "pw-SECRET" not in str(info.value) and "refused" in str(info.value)
    assert "pw-SECRET" not in repr(auth) and "pw-SECRET" not in repr(client)


def test_basic_challenge(fake: FakeRegistry, sleeps: list[float]) -> None:
    fake.add_blob(DATA)
    good = Credentials("bob", "hunter2").basic_header()

    def hook(request: httpx.Request) -> httpx.Response | None:
        if request.headers.get("authorization") == good:
            return None
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    fake.hooks.append(hook)
    auth = RegistryAuth(Credentials("bob", "hunter2"))
    with make_client(fake, sleeps, auth=auth) as client:
        assert client.head_blob(DIGEST) == len(DATA)
        assert client.head_blob(DIGEST) == len(DATA)
    assert "authorization" not in fake.requests[0].headers  # never before a challenge
    assert fake.requests[-1].headers["authorization"] == good  # then preemptively
    assert len(fake.requests) == 3
    with make_client(fake, sleeps, auth=RegistryAuth(Credentials("bob", "wrong"))) as client:
        with pytest.raises(AuthError, match="check the user name and password") as info:
            client.head_blob(DIGEST)
    assert "wrong" not in str(info.value)


def test_no_credentials_over_plain_http_to_a_remote_host(
    fake: FakeRegistry, sleeps: list[float]
) -> None:
    fake.hooks.append(
        lambda r: httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
    )
    auth = RegistryAuth(Credentials("bob", "hunter2"))
    with make_client(fake, sleeps, auth=auth, plain_http=True) as client:
        with pytest.raises(AuthError, match="plain HTTP") as info:
            client.ping()
    assert "hunter2" not in str(info.value)
    assert all("authorization" not in r.headers for r in fake.requests)


def test_anonymous_401_says_how_to_log_in(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.hooks.append(
        lambda r: httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
    )
    with pytest.raises(AuthError, match="CHUNKSTORE_REGISTRY_USER"):
        client.ping()


def test_insufficient_scope_is_named(fake: FakeRegistry, client: RegistryClient) -> None:
    challenge = (
        'Bearer realm="https://reg.example/token",scope="repository:team/app:push",'
        'error="insufficient_scope"'
    )
    fake.hooks.append(
        lambda r: (
            httpx.Response(403, headers={"WWW-Authenticate": challenge})
            if r.method == "POST"
            else None
        )
    )
    with pytest.raises(AuthError, match="insufficient scope"):
        client.put_blob(b"data")


# -- redirects (H1-H3) -----------------------------------------------------------------------------


def test_redirect_to_other_host_drops_authorization_keeps_range(
    fake: FakeRegistry, sleeps: list[float]
) -> None:
    fake.add_blob(DATA)
    TokenServer(fake, realm="https://reg.example/token")
    storage: list[httpx.Request] = []

    def hook(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == "storage.example":
            storage.append(request)
            start, end = (int(x) for x in request.headers["range"][6:].split("-"))
            return httpx.Response(
                206,
                content=DATA[start : end + 1],
                headers={"Content-Range": f"bytes {start}-{end}/{len(DATA)}"},
            )
        if request.method == "GET" and "/blobs/" in request.url.path:
            if request.headers.get("authorization", "").startswith("Bearer "):
                return httpx.Response(
                    307, headers={"Location": "https://storage.example/b?X-Amz-Signature=zzz"}
                )
        return None

    fake.hooks.append(hook)
    with make_client(fake, sleeps, auth=RegistryAuth()) as client:
        assert client.get_blob_range(DIGEST, 10, 5) == DATA[10:15]
    assert len(storage) == 1
    assert "authorization" not in storage[0].headers
    assert storage[0].headers["range"] == "bytes=10-14"


def test_https_to_http_redirect_refused(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.hooks.append(
        lambda r: httpx.Response(302, headers={"Location": "http://reg.example/elsewhere"})
    )
    with pytest.raises(RegistryError, match="HTTPS to plain HTTP"):
        client.get_blob(DIGEST)


def test_redirect_loop_is_bounded(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.hooks.append(lambda r: httpx.Response(307, headers={"Location": r.url.path + "x"}))
    with pytest.raises(RegistryError, match="more than 5 redirects"):
        client.head_blob(DIGEST)
    assert len(fake.requests) == 6


# -- tags ------------------------------------------------------------------------------------------


def test_tag_pagination_follows_link(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.tags[NAME] = {f"t{i}": "sha256:" + "0" * 64 for i in range(5)}
    assert client.list_tags(page_size=2) == ["t0", "t1", "t2", "t3", "t4"]
    assert fake.count("GET", "tags/list") == 3
    assert fake.requests[1].url.params["last"] == "t1"


def test_tag_link_to_another_host_refused(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.hooks.append(
        lambda r: httpx.Response(
            200,
            json={"tags": ["a"]},
            headers={"Link": '<https://evil.example/v2/x/tags/list?last=a>; rel="next"'},
        )
    )
    with pytest.raises(RegistryError, match="bad next-page link"):
        client.list_tags()


# -- uploads (B7, B13) -----------------------------------------------------------------------------


@pytest.mark.parametrize("absolute", [False, True])
def test_put_blob_monolithic_keeps_location_query(
    fake: FakeRegistry, client: RegistryClient, absolute: bool
) -> None:
    fake.absolute_locations = absolute
    assert client.put_blob(DATA) == DIGEST
    put = next(r for r in fake.requests if r.method == "PUT")
    assert put.url.params["_state"] == "st0" and put.url.params["digest"] == str(DIGEST)
    assert fake.blobs[str(DIGEST)] == DATA
    requests = len(fake.requests)
    assert client.put_blob(DATA, DIGEST) == DIGEST  # present: only a HEAD
    assert len(fake.requests) == requests + 1


def test_put_blob_wrong_digest_refused(client: RegistryClient) -> None:
    with pytest.raises(DigestMismatch):
        client.put_blob(DATA, sha256(b"other"))


def test_put_blob_stream_chunked(fake: FakeRegistry, client: RegistryClient) -> None:
    pieces = [DATA[i : i + 1000] for i in range(0, len(DATA), 1000)]
    assert client.put_blob_stream(iter(pieces), DIGEST, len(DATA), chunk_size=3000) == DIGEST
    assert fake.blobs[str(DIGEST)] == DATA
    patches = [r for r in fake.requests if r.method == "PATCH"]
    assert [p.headers["content-range"] for p in patches] == [
        "0-2999",
        "3000-5999",
        "6000-8999",
        "9000-10239",
    ]


def test_upload_resumes_after_reset(fake: FakeRegistry, client: RegistryClient) -> None:
    """The second PATCH loses its connection after 1000 bytes arrived: resume from 4000."""
    state = {"patches": 0}

    def hook(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH":
            state["patches"] += 1
            if state["patches"] == 2:
                upload = request.url.path.rsplit("/", 1)[1]
                fake.uploads[upload] += request.content[:1000]
                raise httpx.WriteError("connection reset by peer")
        return None

    fake.hooks.append(hook)
    pieces = iter([DATA[i : i + 1000] for i in range(0, len(DATA), 1000)])
    assert client.put_blob_stream(pieces, DIGEST, len(DATA), chunk_size=3000) == DIGEST
    assert fake.blobs[str(DIGEST)] == DATA
    ranges = [r.headers.get("content-range") for r in fake.requests if r.method == "PATCH"]
    assert ranges[:3] == ["0-2999", "3000-5999", "4000-5999"]
    assert fake.count("GET", "/blobs/uploads/") == 1


def test_upload_416_asks_for_status_and_resumes(fake: FakeRegistry, client: RegistryClient) -> None:
    state = {"done": False}

    def hook(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH" and not state["done"]:
            state["done"] = True
            upload = request.url.path.rsplit("/", 1)[1]
            fake.uploads[upload] += request.content[:10]  # the registry got 10 bytes earlier
            return httpx.Response(416)
        return None

    fake.hooks.append(hook)
    assert client.put_blob_stream([DATA], DIGEST, len(DATA), chunk_size=4096) == DIGEST
    assert fake.blobs[str(DIGEST)] == DATA


def test_lost_session_restarts_a_reiterable_source(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    state = {"lost": False}

    def hook(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH" and not state["lost"] and fake.uploads:
            state["lost"] = True
            fake.uploads.clear()
            raise httpx.ReadError("reset")
        return None

    fake.hooks.append(hook)
    assert client.put_blob_stream([DATA], DIGEST, len(DATA)) == DIGEST
    assert fake.count("POST") == 2


def test_lost_session_with_one_shot_iterator_is_transient(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    def hook(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH":
            fake.uploads.clear()
            raise httpx.ReadError("reset")
        return None

    fake.hooks.append(hook)
    with pytest.raises(RegistryUnavailable, match="cannot be read again"):
        client.put_blob_stream(iter([DATA]), DIGEST, len(DATA))


def test_stream_with_wrong_digest_is_never_committed(
    fake: FakeRegistry, client: RegistryClient
) -> None:
    with pytest.raises(DigestMismatch):
        client.put_blob_stream([DATA[:-1] + b"?"], DIGEST, len(DATA))
    assert fake.count("PUT") == 0 and not fake.uploads
    with pytest.raises(SizeMismatch):
        client.put_blob_stream([DATA, b"more"], DIGEST, len(DATA), chunk_size=len(DATA))


def test_mount(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.add_blob(DATA)
    assert client.mount_blob(DIGEST, "team/base") is True
    assert client.mount_blob(sha256(b"absent"), "team/base") is False
    assert fake.count("DELETE", "/blobs/uploads/") == 1 and not fake.uploads


# -- manifests (B2, F6, B14) -----------------------------------------------------------------------

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()


def test_manifest_round_trip(fake: FakeRegistry, client: RegistryClient) -> None:
    digest = client.put_manifest("v1", MANIFEST, OCI_MANIFEST)
    assert digest == sha256(MANIFEST)
    assert client.get_manifest("v1") == (OCI_MANIFEST, MANIFEST, digest)
    assert client.get_manifest(digest).data == MANIFEST
    assert client.get_manifest(str(digest)).digest == digest
    client.delete_manifest(digest)
    with pytest.raises(RegistryObjectMissing):
        client.get_manifest("v1")


def test_manifest_by_digest_is_verified(fake: FakeRegistry, client: RegistryClient) -> None:
    digest = client.put_manifest("v1", MANIFEST, OCI_MANIFEST)
    other = MANIFEST.replace(b"[]", b"[ ]")
    fake.manifests[str(digest)] = (OCI_MANIFEST, other)
    fake.hooks.append(
        lambda r: (
            httpx.Response(200, content=other, headers={"Content-Type": OCI_MANIFEST})
            if "/manifests/" in r.url.path
            else None
        )
    )
    with pytest.raises(DigestMismatch):
        client.get_manifest(digest)


def test_manifest_media_type_confusion(fake: FakeRegistry, client: RegistryClient) -> None:
    fake.hooks.append(
        lambda r: httpx.Response(
            200,
            content=MANIFEST,
            headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
        )
    )
    with pytest.raises(RegistryError, match="disagrees"):
        client.get_manifest("v1")


@pytest.mark.parametrize("declared", [True, False])
def test_manifest_over_4_mib_refused(
    fake: FakeRegistry, client: RegistryClient, declared: bool
) -> None:
    big = b"{" + b" " * (4 << 20) + b"}"

    def hook(request: httpx.Request) -> httpx.Response:
        if declared:
            return httpx.Response(200, content=big)
        return httpx.Response(200, stream=httpx.ByteStream(big))  # no Content-Length

    fake.hooks.append(hook)
    with pytest.raises(ManifestTooLarge):
        client.get_manifest("v1")
    with pytest.raises(ManifestTooLarge):
        client.put_manifest("v1", big, OCI_MANIFEST)


def test_invalid_references_refused(client: RegistryClient) -> None:
    from chunkstore.errors import UsageError

    with pytest.raises(UsageError):
        client.get_manifest("../../etc")
    with pytest.raises(UsageError):
        client.get_manifest("sha256:1234")
    with pytest.raises(UsageError):
        RegistryClient(HOST, "Bad/Name")
    with pytest.raises(UsageError):
        RegistryClient("user:pw@reg.example", NAME)  # credentials go through RegistryAuth only


# -- the wall-clock deadline (B11, B12) --------------------------------------------------------------


class DripServer:
    """A real socket server: HTTP headers at once, then the body one byte every ``gap`` seconds."""

    def __init__(self, gap: float, *, silent: bool = False) -> None:
        self.gap = gap
        self.silent = silent
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                if self.silent:
                    self.stop.wait(30)
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                while not self.stop.wait(self.gap):
                    conn.sendall(b"x")
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize("silent", [False, True], ids=["drip", "silent"])
def test_deadline_stops_a_drip_server(silent: bool) -> None:
    server = DripServer(0.3, silent=silent)
    try:
        client = RegistryClient(
            server.host, NAME, plain_http=True, deadline=1.0, timeout=5.0, retries=1, backoff=0
        )
        started = time.monotonic()
        with pytest.raises(Transient) as info:
            client.get_blob_range(DIGEST, 0, 10)
        elapsed = time.monotonic() - started
        client.close()
    finally:
        server.close()
    assert elapsed < 10
    assert server.host in str(info.value) and "/v2/team/app/blobs/" in str(info.value)
    assert "gave up after 2 attempts" in str(info.value)


def test_client_repr_and_reference_constructor() -> None:
    from chunkstore.registry import parse_reference

    ref = parse_reference("docker://127.0.0.1:5000/team/app:v1")
    client = RegistryClient.for_reference(ref, plain_http=True)
    assert "127.0.0.1:5000" in repr(client) and "team/app" in repr(client)
    client.close()


def test_digest_type_is_used() -> None:
    assert isinstance(DIGEST, Digest)
