"""Image references: ``HOST[:PORT]/NAME[:TAG][@sha256:HEX]``, parsed strictly.

A reference names a repository on a registry and, optionally, one manifest in it by tag or by
digest (the digest wins when both are given, as in docker). The grammar is the OCI distribution
spec's: a repository *name* is path components of lower-case alphanumerics joined by single
separators (``.``, ``_``, ``__`` or a run of ``-``), a *tag* is at most 128 characters of
``[A-Za-z0-9_.-]`` not starting with ``.`` or ``-``, and a digest is ``sha256:`` plus 64 lower-case
hex digits. Anything else is refused before it can become part of a URL.

As in docker, the first path component is a registry host only if it contains ``.`` or ``:`` or is
``localhost``; otherwise the host is ``docker.io`` and a one-component name gets ``library/``.
``docker.io`` is served from ``registry-1.docker.io`` (:attr:`Reference.endpoint`).

Plain HTTP is acceptable only to loopback hosts (:func:`is_loopback`): credentials never travel
unencrypted over a network.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from chunkstore.errors import UsageError
from index.errors import Malformed
from index.ids import Digest, parse_sha256

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_ENDPOINT",
    "Reference",
    "host_without_port",
    "is_loopback",
    "parse_reference",
    "validate_name",
    "validate_tag",
]

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_MAX_NAME = 255
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"\A{_COMPONENT}(?:/{_COMPONENT})*\Z")
_TAG = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
_HOSTNAME = re.compile(
    r"\A(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)
_PREFIXES = ("docker://", "registry:")


@dataclass(frozen=True, slots=True)
class Reference:
    """A repository on a registry, optionally with a tag and/or a manifest digest."""

    host: str
    name: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def endpoint(self) -> str:
        """The ``host[:port]`` to connect to (``registry-1.docker.io`` for ``docker.io``)."""
        return DOCKER_HUB_ENDPOINT if self.host == DOCKER_HUB else self.host

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if given, else the tag, else ``latest``."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag if self.tag is not None else "latest"

    def __str__(self) -> str:
        """The canonical text form, ``host/name[:tag][@digest]``."""
        text = f"{self.host}/{self.name}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def validate_name(name: str) -> str:
    """``name`` if it is a valid repository name, else :class:`UsageError`."""
    if not isinstance(name, str) or len(name) > _MAX_NAME or not _NAME.match(name):
        raise UsageError(
            f"invalid repository name {name!r:.120}: use lower-case path components "
            "of [a-z0-9] joined by '.', '_', '__' or '-', separated by '/'"
        )
    return name


def validate_tag(tag: str) -> str:
    """``tag`` if it is a valid tag, else :class:`UsageError`."""
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise UsageError(
            f"invalid tag {tag!r:.140}: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        )
    return tag


def _validate_host(host: str, text: str) -> str:
    if host.startswith("["):
        end = host.find("]")
        literal, rest = host[1:end], host[end + 1 :]
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            end = -1
        if end < 0 or (rest and not _valid_port(rest)):
            raise UsageError(f"invalid registry host {host!r:.100} in {text!r:.200}")
        return host
    hostname, _, port = host.partition(":")
    if not _HOSTNAME.match(hostname) or (":" in host and not _valid_port(":" + port)):
        raise UsageError(f"invalid registry host {host!r:.100} in {text!r:.200}")
    return host.lower()


def _valid_port(text: str) -> bool:
    return bool(re.fullmatch(r":[0-9]{1,5}", text)) and 0 < int(text[1:]) < 65536


def parse_reference(text: str) -> Reference:
    """Parse ``[docker://|registry:]HOST[:PORT]/NAME[:TAG][@sha256:HEX]``.

    Raises :class:`UsageError` naming the part that is wrong.
    """
    if not isinstance(text, str) or not text:
        raise UsageError("empty image reference; expected HOST[:PORT]/NAME[:TAG][@DIGEST]")
    rest = text
    for prefix in _PREFIXES:
        if rest.startswith(prefix):
            rest = rest[len(prefix) :]
            break
    digest: Digest | None = None
    if "@" in rest:
        rest, _, digest_text = rest.partition("@")
        try:
            digest = parse_sha256(digest_text, f"image reference {text!r:.200}")
        except Malformed as exc:
            raise UsageError(str(exc)) from None
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host = _validate_host(first, text)
        path = remainder
    else:
        host = DOCKER_HUB
        path = rest
    tag: str | None = None
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > last_slash:
        path, tag = path[:colon], validate_tag(path[colon + 1 :])
    if host in _HUB_ALIASES:
        host = DOCKER_HUB
        if path and "/" not in path:
            path = f"library/{path}"
    return Reference(host=host, name=validate_name(path), tag=tag, digest=digest)


def host_without_port(host: str) -> str:
    """``host`` without its ``:port`` (and without brackets around an IPv6 literal)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") > 1:  # a bare IPv6 literal
        return host
    return host.partition(":")[0]


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` is this machine: ``localhost``, 127.0.0.0/8 or ``::1``."""
    name = host_without_port(host).lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
