"""Image reference parsing and the loopback rule."""

from __future__ import annotations

import pytest

from chunkstore.errors import UsageError
from chunkstore.registry.reference import (
    Reference,
    host_without_port,
    is_loopback,
    parse_reference,
    validate_tag,
)
from index.ids import sha256

DIGEST = sha256(b"manifest")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000/team/app:v1", Reference("127.0.0.1:5000", "team/app", "v1")),
        ("docker://localhost/app", Reference("localhost", "app")),
        ("registry:ghcr.io/o/r:latest", Reference("ghcr.io", "o/r", "latest")),
        ("ubuntu", Reference("docker.io", "library/ubuntu")),
        ("ubuntu:24.04", Reference("docker.io", "library/ubuntu", "24.04")),
        ("docker.io/ubuntu", Reference("docker.io", "library/ubuntu")),
        ("index.docker.io/me/x:t", Reference("docker.io", "me/x", "t")),
        ("me/x", Reference("docker.io", "me/x")),
        (f"reg.example/a/b@{DIGEST}", Reference("reg.example", "a/b", None, DIGEST)),
        (f"reg.example/a/b:t@{DIGEST}", Reference("reg.example", "a/b", "t", DIGEST)),
        ("[::1]:5000/a", Reference("[::1]:5000", "a")),
        ("Reg.Example:443/a__b/c-d.e", Reference("reg.example:443", "a__b/c-d.e")),
    ],
)
def test_parse(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "reg.example/",
        "reg.example/UPPER",
        "reg.example/a//b",
        "reg.example/a/../b",
        "reg.example/-a",
        "reg.example/a:-tag",
        "reg.example/a:" + "t" * 129,
        "reg.example/a@sha256:1234",
        "reg.example/a@md5:" + "0" * 32,
        "reg.example/a@sha256:../../x",
        "bad_host.example:99999/a",
        "reg.example:0/a",
        "[zz]:5000/a",
        "reg.example/" + "a" * 256,
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_reference(text)


def test_endpoint_reference_and_str() -> None:
    hub = parse_reference("alpine")
    assert hub.endpoint == "registry-1.docker.io"
    assert hub.reference == "latest"
    assert str(hub) == "docker.io/library/alpine"
    pinned = parse_reference(f"127.0.0.1:5000/a:t@{DIGEST}")
    assert pinned.endpoint == "127.0.0.1:5000"
    assert pinned.reference == str(DIGEST)
    assert str(pinned) == f"127.0.0.1:5000/a:t@{DIGEST}"
    assert parse_reference(str(pinned)) == pinned


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("127.8.9.10", True),
        ("localhost:80", True),
        ("LOCALHOST", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("10.0.0.1:5000", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("127.0.0.1.nip.io", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_host_without_port() -> None:
    assert host_without_port("[::1]:5000") == "::1"
    assert host_without_port("a.b:1") == "a.b"
    assert host_without_port("fe80::1") == "fe80::1"


def test_validate_tag() -> None:
    assert validate_tag("v1.2_3-x") == "v1.2_3-x"
    with pytest.raises(UsageError):
        validate_tag(".hidden")
