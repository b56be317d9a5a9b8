"""Registry authentication: where credentials come from, and the httpx flow that spends them.

A registry says how it wants to be authenticated in the ``WWW-Authenticate`` header of a 401:

* ``Basic realm="..."``: send ``Authorization: Basic base64(user:password)`` on every request.
* ``Bearer realm="https://auth.example/token",service="reg",scope="repository:x:pull"``: ask the
  token service (``GET realm?service=&scope=``, with basic credentials when we have some, else
  anonymously) for a short-lived token, then send ``Authorization: Bearer <token>``.

:class:`RegistryAuth` is an :class:`httpx.Auth` flow doing both. Tokens are cached per registry and
per repository/action (pull, or pull+push) until shortly before they expire; a 401 on a cached token
fetches a new one and retries once (tokens often live only 60 s, so one can expire mid-upload).

Safety rules, each enforced here rather than left to callers:

1. Credentials (or a token obtained with them) never go over plain HTTP to a host that is not
   loopback; the flow raises :class:`AuthError` instead.
2. Basic credentials are sent to a token service only if it is the registry host itself (or
   ``auth.docker.io`` for Docker Hub, or a host listed in ``trusted_realm_hosts``); otherwise the
   token is asked for anonymously.
3. Credentials and tokens never appear in exception messages or reprs.

:func:`credentials_for` finds the credentials for a host: ``CHUNKSTORE_REGISTRY_USER`` and
``CHUNKSTORE_REGISTRY_PASSWORD`` in the environment mapping given (the CLI passes ``os.environ``),
else docker's ``config.json``: ``credHelpers``, then ``auths`` (``auth`` = base64 of ``user:pass``,
or ``username``/``password``), then ``credsStore``. Helpers are ``docker-credential-NAME get``
programs reading the server URL on stdin and writing ``{"Username": ..., "Secret": ...}``.
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from chunkstore import jsonsafe
from chunkstore.errors import AuthError, UsageError
from chunkstore.registry.reference import DOCKER_HUB, DOCKER_HUB_ENDPOINT, is_loopback

__all__ = [
    "Challenge",
    "Credentials",
    "RegistryAuth",
    "credentials_for",
    "parse_challenges",
]

ENV_USER = "CHUNKSTORE_REGISTRY_USER"
ENV_PASSWORD = "CHUNKSTORE_REGISTRY_PASSWORD"
_HUB_SERVER_URL = "https://index.docker.io/v1/"
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
_TOKEN_LIMIT = 1 << 20
_DEFAULT_TOKEN_LIFETIME = 60.0  # seconds; the token spec's default when expires_in is absent
_EXPIRY_MARGIN = 5.0
_HELPER_TIMEOUT = 60.0
_PATH_SCOPE = re.compile(r"\A/v2/(.+?)/(?:blobs|manifests|tags)/")
_PARAM = re.compile(r'\s*,?\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)')
_SCHEME = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?:\s+|\Z)")


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """A user name and password (or registry token used as a password); the password never prints."""

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        """Names the user only."""
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    def basic_header(self) -> str:
        """The ``Authorization`` value for HTTP basic authentication."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: a lower-case scheme and its parameters."""

    scheme: str
    params: Mapping[str, str]


def parse_challenges(value: str) -> list[Challenge]:
    """The challenges in a ``WWW-Authenticate`` header value (unparsable tails are ignored)."""
    challenges: list[Challenge] = []
    pos = 0
    params: dict[str, str] | None = None
    while pos < len(value):
        if params is not None and (m := _PARAM.match(value, pos)) is not None:
            raw = m.group(2)
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            params[m.group(1).lower()] = raw
            pos = m.end()
            continue
        m = _SCHEME.match(value, pos)
        if m is None or m.end() == pos:
            break
        params = {}
        challenges.append(Challenge(m.group(1).lower(), params))
        pos = m.end()
    return challenges


@dataclass(slots=True)
class _Token:
    value: str
    expires: float


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _host_port(url: httpx.URL) -> str:
    return f"{url.host}:{url.port}" if url.port else url.host


def _secure(url: httpx.URL) -> bool:
    return url.scheme == "https" or is_loopback(url.host)


class RegistryAuth(httpx.Auth):
    """The ``httpx.Auth`` flow for registries: anonymous, Basic, or Bearer tokens (cached)."""

    def __init__(
        self,
        credentials: Credentials | None = None,
        *,
        trusted_realm_hosts: Iterable[str] = (),
        preemptive_basic: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Authenticate with ``credentials`` (anonymous when None).

        ``trusted_realm_hosts`` are token-service hosts, other than the registry's own, that may
        receive the credentials. ``preemptive_basic`` sends Basic credentials before any
        challenge (only ever over HTTPS or to loopback).
        """
        self._credentials = credentials
        self._trusted = frozenset(h.lower() for h in trusted_realm_hosts)
        self._preemptive_basic = preemptive_basic
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[object, ...], _Token] = {}
        self._basic_origins: set[tuple[str, str, int | None]] = set()
        self.token_fetches = 0

    def __repr__(self) -> str:
        """Says whether credentials are set, never what they are."""
        who = "anonymous" if self._credentials is None else repr(self._credentials.username)
        return f"RegistryAuth({who})"

    @property
    def has_credentials(self) -> bool:
        """Whether credentials were given."""
        return self._credentials is not None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Send ``request``, answering one 401 challenge (a second 401 is returned as is)."""
        key = self._scope_key(request)
        origin = _origin(request.url)
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and token.expires <= self._clock():
                del self._tokens[key]
                token = None
            basic = origin in self._basic_origins or self._preemptive_basic
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token.value}"
        elif basic and self._credentials is not None and _secure(request.url):
            request.headers["Authorization"] = self._credentials.basic_header()
        response = yield request
        if response.status_code != 401:
            return
        challenges = {
            c.scheme: c for c in parse_challenges(response.headers.get("www-authenticate", ""))
        }
        if "bearer" in challenges:
            value = yield from self._fetch_token(request, challenges["bearer"], key)
            request.headers["Authorization"] = f"Bearer {value}"
        elif "basic" in challenges and self._credentials is not None:
            if "authorization" in request.headers and not request.headers[
                "authorization"
            ].startswith("Bearer "):
                return  # the credentials were sent and refused
            self._require_secure(request.url, "credentials")
            with self._lock:
                self._basic_origins.add(origin)
            request.headers["Authorization"] = self._credentials.basic_header()
        else:
            return
        yield request

    def _scope_key(self, request: httpx.Request) -> tuple[object, ...]:
        m = _PATH_SCOPE.match(request.url.path)
        name = m.group(1) if m else ""
        action = "pull" if request.method in ("GET", "HEAD") else "pull,push"
        mount_from = request.url.params.get("from", "")
        return (_origin(request.url), name, action, mount_from)

    def _require_secure(self, url: httpx.URL, what: str) -> None:
        if not _secure(url):
            raise AuthError(
                f"refusing to send {what} for {_host_port(url)} over plain HTTP to a host that is "
                "not loopback; use HTTPS, or a registry on 127.0.0.1/::1 for plain HTTP"
            )

    def _fetch_token(
        self, request: httpx.Request, challenge: Challenge, key: tuple[object, ...]
    ) -> Generator[httpx.Request, httpx.Response, str]:
        realm = challenge.params.get("realm", "")
        try:
            realm_url = httpx.URL(realm)
        except httpx.InvalidURL:
            realm_url = httpx.URL("")
        if realm_url.scheme not in ("http", "https") or not realm_url.host:
            raise AuthError(
                f"registry {_host_port(request.url)} sent a Bearer challenge without a usable "
                f"token realm ({realm!r:.100})"
            )
        params: list[tuple[str, str | int | float | bool | None]] = []
        if "service" in challenge.params:
            params.append(("service", challenge.params["service"]))
        params.extend(("scope", s) for s in challenge.params.get("scope", "").split() if s)
        headers = {"Accept": "application/json"}
        creds = self._credentials
        if creds is not None and self._trusted_realm(request.url, realm_url):
            self._require_secure(realm_url, "credentials")
            self._require_secure(request.url, "a token obtained with credentials")
            headers["Authorization"] = creds.basic_header()
        token_request = httpx.Request(
            "GET",
            realm_url.copy_merge_params(params),
            headers=headers,
            extensions={"timeout": request.extensions.get("timeout", {})},
        )
        with self._lock:
            self.token_fetches += 1
        started = self._clock()
        response = yield token_request
        where = f"{_host_port(realm_url)}{realm_url.path}"
        declared = response.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > _TOKEN_LIMIT:
            raise AuthError(f"token service {where} announced an answer over 1 MiB")
        # read(), not iter_bytes(): httpx reads this response again once the flow moves on.
        body = response.read()
        if len(body) > _TOKEN_LIMIT:
            raise AuthError(f"token service {where} sent an answer over 1 MiB")
        if response.status_code in (401, 403):
            raise AuthError(
                f"token service {where} refused the credentials for {_host_port(request.url)} "
                f"({response.status_code}); check the user name and password "
                "(CHUNKSTORE_REGISTRY_USER/CHUNKSTORE_REGISTRY_PASSWORD or docker login)"
            )
        if response.status_code != 200:
            raise AuthError(f"token service {where} answered {response.status_code}")
        try:
            doc = jsonsafe.loads(body)
        except ValueError:
            doc = None
        value = None
        if isinstance(doc, dict):
            value = doc.get("token") or doc.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError(f"token service {where} answered without a token")
        lifetime = doc.get("expires_in") if isinstance(doc, dict) else None
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = _DEFAULT_TOKEN_LIFETIME
        expires = started + max(1.0, float(lifetime) - _EXPIRY_MARGIN)
        with self._lock:
            self._tokens[key] = _Token(value, expires)
        return value

    def _trusted_realm(self, registry: httpx.URL, realm: httpx.URL) -> bool:
        if realm.host == registry.host:
            return True
        if registry.host == DOCKER_HUB_ENDPOINT and realm.host == "auth.docker.io":
            return True
        return realm.host.lower() in self._trusted


def _server_keys(host: str) -> list[str]:
    if host in (DOCKER_HUB, DOCKER_HUB_ENDPOINT, "index.docker.io"):
        return list(_HUB_KEYS)
    return [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]


def _normalise_key(key: str) -> str:
    text = key.strip().lower()
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text.split("/", 1)[0]


def credentials_for(
    host: str,
    *,
    env: Mapping[str, str],
    docker_config_path: Path | None = None,
) -> Credentials | None:
    """The credentials for registry ``host`` (``host[:port]``), or None for anonymous access.

    ``env`` is the process environment (only the CLI reads ``os.environ``); it provides
    ``CHUNKSTORE_REGISTRY_USER``/``CHUNKSTORE_REGISTRY_PASSWORD``, ``DOCKER_CONFIG`` and the
    ``PATH`` used to find credential helpers.
    """
    user, password = env.get(ENV_USER), env.get(ENV_PASSWORD)
    if user is not None or password is not None:
        if not user or password is None:
            raise UsageError(f"set both {ENV_USER} and {ENV_PASSWORD}, or neither")
        return Credentials(user, password)
    if docker_config_path is None:
        base = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else Path.home() / ".docker"
        docker_config_path = base / "config.json"
    try:
        raw = docker_config_path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(
            f"cannot read docker config {docker_config_path}: {exc.strerror}"
        ) from None
    try:
        config = jsonsafe.loads(raw)
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise UsageError(
            f"docker config {docker_config_path} is not a JSON object; fix or remove it"
        )
    wanted = {_normalise_key(k) for k in _server_keys(host)}
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if isinstance(key, str) and _normalise_key(key) in wanted and isinstance(helper, str):
                return _from_helper(helper, host, env)
    auths = config.get("auths")
    if isinstance(auths, dict):
        for key, entry in auths.items():
            if isinstance(key, str) and _normalise_key(key) in wanted and isinstance(entry, dict):
                found = _from_auth_entry(entry, key, docker_config_path)
                if found is not None:
                    return found
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return _from_helper(store, host, env)
    return None


def _from_auth_entry(entry: Mapping[str, object], key: str, path: Path) -> Credentials | None:
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if not sep or not user:
            raise UsageError(
                f"docker config {path}: the 'auth' entry for {key!r:.100} is not base64 of "
                "user:password; run docker login again"
            )
        return Credentials(user, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and name and isinstance(secret, str):
        return Credentials(name, secret)
    return None


def _from_helper(helper: str, host: str, env: Mapping[str, str]) -> Credentials | None:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", helper):
        raise UsageError(f"invalid docker credential helper name {helper!r:.60}")
    program = f"docker-credential-{helper}"
    path = shutil.which(program, path=env.get("PATH"))
    if path is None:
        raise UsageError(
            f"docker config names credential helper {helper!r} for {host}, but {program} is "
            "not on PATH; install it or remove it from ~/.docker/config.json"
        )
    server = _HUB_SERVER_URL if host in (DOCKER_HUB, DOCKER_HUB_ENDPOINT) else host
    try:
        done = subprocess.run(
            [path, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AuthError(
            f"credential helper {program} failed to run: {type(exc).__name__}"
        ) from None
    if done.returncode != 0:
        # "credentials not found in native keychain" is the helpers' agreed way to say "none".
        if b"credentials not found" in (done.stdout + done.stderr).lower():
            return None
        detail = done.stderr.decode(errors="replace").strip()[:200]
        raise AuthError(f"credential helper {program} failed (exit {done.returncode}): {detail}")
    try:
        doc = jsonsafe.loads(done.stdout)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise AuthError(f"credential helper {program} wrote something other than a JSON object")
    user, secret = doc.get("Username"), doc.get("Secret")
    if not isinstance(user, str) or not isinstance(secret, str) or not user:
        raise AuthError(f"credential helper {program} answered without Username and Secret")
    if user == "<token>":
        raise AuthError(
            f"credential helper {program} holds an identity token for {host}, which chunkstore "
            f"does not support; set {ENV_USER} and {ENV_PASSWORD} instead"
        )
    return Credentials(user, secret)
