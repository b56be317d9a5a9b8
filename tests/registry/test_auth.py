"""Credentials lookup (environment, docker config, helpers) and challenge parsing."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from chunkstore.errors import AuthError, UsageError
from chunkstore.registry.auth import Credentials, RegistryAuth, credentials_for, parse_challenges


def test_parse_challenges() -> None:
    (bearer,) = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull,push",error="insufficient_scope"'
    )
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/ubuntu:pull,push",
        "error": "insufficient_scope",
    }
    basic, other = parse_challenges('Basic realm="a \\"quoted\\" realm", Bearer realm=x')
    assert basic.scheme == "basic" and basic.params["realm"] == 'a "quoted" realm'
    assert other.scheme == "bearer" and other.params["realm"] == "x"
    assert parse_challenges("") == []


def test_credentials_never_print_the_password() -> None:
    creds = Credentials("alice", "pw-SECRET")
    assert "pw-SECRET" not in repr(creds) and "pw-SECRET" not in str(creds)
    assert "pw-SECRET" not in repr(RegistryAuth(creds))
    assert creds.basic_header() == "Basic " + base64.b64encode(b"alice:pw-SECRET").decode()


def test_environment_wins(tmp_path: Path) -> None:
    env = {"CHUNKSTORE_REGISTRY_USER": "u", "CHUNKSTORE_REGISTRY_PASSWORD": "p"}
    assert credentials_for("reg.example", env=env, docker_config_path=tmp_path / "none") == (
        Credentials("u", "p")
    )
    with pytest.raises(UsageError, match="both"):
        credentials_for("reg.example", env={"CHUNKSTORE_REGISTRY_USER": "u"})


def test_no_config_is_anonymous(tmp_path: Path) -> None:
    assert credentials_for("reg.example", env={}, docker_config_path=tmp_path / "x.json") is None
    assert credentials_for("reg.example", env={"DOCKER_CONFIG": str(tmp_path)}) is None


def write_config(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_docker_config_auths(tmp_path: Path) -> None:
    encoded = base64.b64encode(b"bob:pa:ss").decode()
    config = write_config(
        tmp_path / "config.json",
        {
            "auths": {
                "https://reg.example": {"auth": encoded},
                "127.0.0.1:5000": {"username": "carol", "password": "pw"},
                "https://index.docker.io/v1/": {"auth": base64.b64encode(b"d:h").decode()},
            }
        },
    )
    assert credentials_for("reg.example", env={}, docker_config_path=config) == Credentials(
        "bob", "pa:ss"
    )
    assert credentials_for("127.0.0.1:5000", env={}, docker_config_path=config) == Credentials(
        "carol", "pw"
    )
    assert credentials_for("docker.io", env={}, docker_config_path=config) == Credentials("d", "h")
    assert credentials_for("other.example", env={}, docker_config_path=config) is None
    env = {"DOCKER_CONFIG": str(tmp_path)}
    assert credentials_for("reg.example", env=env) == Credentials("bob", "pa:ss")


def test_docker_config_damaged(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="not a JSON object"):
        credentials_for("reg.example", env={}, docker_config_path=bad)
    write_config(bad, {"auths": {"reg.example": {"auth": "!!notbase64"}}})
    with pytest.raises(UsageError, match="docker login") as info:
        credentials_for("reg.example", env={}, docker_config_path=bad)
    assert "notbase64" not in str(info.value)


def make_helper(directory: Path, name: str, script: str) -> None:
    path = directory / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_credential_helpers(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    make_helper(
        bin_dir,
        "fake",
        'read server\nprintf \'{"ServerURL":"%s","Username":"helper-user","Secret":"s3"}\' '
        '"$server"\n',
    )
    make_helper(bin_dir, "none", "echo 'credentials not found in native keychain'; exit 1\n")
    make_helper(bin_dir, "broken", "echo 'boom' >&2; exit 3\n")
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    config = write_config(
        tmp_path / "config.json",
        {
            "credHelpers": {"reg.example": "fake", "none.example": "none", "b.example": "broken"},
            "credsStore": "fake",
        },
    )
    found = credentials_for("reg.example", env=env, docker_config_path=config)
    assert found == Credentials("helper-user", "s3")
    assert credentials_for("elsewhere.example", env=env, docker_config_path=config) == found
    assert credentials_for("none.example", env=env, docker_config_path=config) is None
    with pytest.raises(AuthError, match="exit 3"):
        credentials_for("b.example", env=env, docker_config_path=config)
    write_config(config, {"credsStore": "missing"})
    with pytest.raises(UsageError, match="docker-credential-missing"):
        credentials_for("reg.example", env=env, docker_config_path=config)
