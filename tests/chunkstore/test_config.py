"""Tests for :mod:`chunkstore.config`: the config file, its validation and its MAC."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import cbor2
import pytest

from chunkstore.chunker import ChunkerParams
from chunkstore.config import (
    CURRENT_VERSION,
    DEFAULT_PACK_SIZE,
    MAX_CONFIG_SIZE,
    MAX_VERSION,
    MIN_VERSION,
    RepoConfig,
)
from index import cbor
from index.errors import FormatError, LimitExceeded, Malformed, UnsupportedVersion

REPO_ID = bytes(range(32))
MAC_KEY = bytes(range(32, 64))
OTHER_KEY = bytes(range(64, 96))
CHUNKER = ChunkerParams(min_size=1024, avg_size=4096, max_size=65536)
PLAIN = RepoConfig(repo_id=REPO_ID, encrypted=False)
ENC = RepoConfig(
    repo_id=REPO_ID, encrypted=True, chunker=CHUNKER, pack_size=4 << 20, compression_level=19
)


def body_of(data: bytes) -> dict[str, Any]:
    return cbor2.loads(data)["data"]  # type: ignore[no-any-return]


def rewrap(body: dict[str, Any], version: int = CURRENT_VERSION) -> bytes:
    return cbor.encode_envelope("config", version, body)


def resign(body: dict[str, Any], key: bytes = MAC_KEY) -> dict[str, Any]:
    """Recompute the MAC of an encrypted config body as documented: HMAC over the body sans mac."""
    unsigned = {k: v for k, v in body.items() if k != "mac"}
    return {**unsigned, "mac": hmac.new(key, cbor.encode(unsigned), hashlib.sha256).digest()}


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        PLAIN,
        ENC,
        RepoConfig(repo_id=bytes(32), encrypted=False, pack_size=64 * 1024, compression_level=1),
        RepoConfig(repo_id=b"\xff" * 32, encrypted=True, pack_size=1 << 30),
        RepoConfig(
            repo_id=REPO_ID,
            encrypted=False,
            chunker=ChunkerParams(min_size=64, avg_size=256, max_size=1024),
        ),
    ],
    ids=["plain-defaults", "encrypted-custom", "plain-min", "encrypted-max", "small-chunker"],
)
def test_round_trip(config: RepoConfig) -> None:
    data = config.encode(MAC_KEY if config.encrypted else None)
    back = RepoConfig.decode(data)
    assert back == config
    assert back.chunker == config.chunker
    assert back.encode(MAC_KEY if config.encrypted else None) == data


def test_defaults() -> None:
    assert PLAIN.pack_size == DEFAULT_PACK_SIZE
    assert PLAIN.version == CURRENT_VERSION
    assert PLAIN.chunker == ChunkerParams()
    assert PLAIN.id_algorithm == "sha256"
    assert ENC.id_algorithm == "hmac-sha256"


def test_stored_form() -> None:
    """The config is plain canonical CBOR, readable without any key."""
    data = ENC.encode(MAC_KEY)
    top = cbor2.loads(data)
    assert top["kind"] == "config"
    assert top["version"] == CURRENT_VERSION
    assert top["data"] == {
        "id": REPO_ID,
        "encryption": "xchacha20-poly1305",
        "ids": "hmac-sha256",
        "chunker": {"algorithm": "fastcdc-2016", "min": 1024, "avg": 4096, "max": 65536},
        "pack_size": 4 << 20,
        "compression": {"algorithm": "zstd", "level": 19},
        "mac": top["data"]["mac"],
    }
    plain = cbor2.loads(PLAIN.encode())["data"]
    assert plain["encryption"] == "none"
    assert plain["ids"] == "sha256"
    assert "mac" not in plain


def test_encrypted_encode_needs_mac_key() -> None:
    with pytest.raises(ValueError):
        ENC.encode()


# ------------------------------------------------------------------------------------------------
# MAC
# ------------------------------------------------------------------------------------------------


def test_mac_is_hmac_over_body_without_mac() -> None:
    body = body_of(ENC.encode(MAC_KEY))
    assert body == resign(body)


def test_verify_mac() -> None:
    data = ENC.encode(MAC_KEY)
    assert RepoConfig.verify_mac(data, MAC_KEY) is True
    assert RepoConfig.verify_mac(data, OTHER_KEY) is False


def test_verify_mac_unencrypted_config_is_false() -> None:
    assert RepoConfig.verify_mac(PLAIN.encode(), MAC_KEY) is False


@pytest.mark.parametrize(
    "change",
    [
        {"pack_size": 8 << 20},
        {"compression": {"algorithm": "zstd", "level": 1}},
        {"chunker": {"algorithm": "fastcdc-2016", "min": 1024, "avg": 2048, "max": 65536}},
        {"id": bytes(32)},
    ],
    ids=["pack_size", "level", "chunker", "id"],
)
def test_tampered_field_fails_mac(change: dict[str, Any]) -> None:
    body = body_of(ENC.encode(MAC_KEY))
    tampered = rewrap({**body, **change})
    RepoConfig.decode(tampered)  # still a well-formed config ...
    assert RepoConfig.verify_mac(tampered, MAC_KEY) is False  # ... but not an authentic one
    # Re-signing with the right key makes it authentic again (the helper mirrors the docs).
    assert RepoConfig.verify_mac(rewrap(resign({**body, **change})), MAC_KEY) is True


def test_tampered_mac_fails() -> None:
    body = body_of(ENC.encode(MAC_KEY))
    mac = bytearray(body["mac"])
    mac[0] ^= 1
    assert RepoConfig.verify_mac(rewrap({**body, "mac": bytes(mac)}), MAC_KEY) is False
    assert RepoConfig.verify_mac(rewrap({**body, "mac": body["mac"][:-1]}), MAC_KEY) is False
    assert RepoConfig.verify_mac(rewrap({**body, "mac": "text"}), MAC_KEY) is False


def test_downgrade_to_unencrypted_is_refused() -> None:
    """Dropping the mac and flipping encryption to none gives an inconsistent config."""
    body = body_of(ENC.encode(MAC_KEY))
    del body["mac"]
    body["encryption"] = "none"
    with pytest.raises(Malformed):
        RepoConfig.decode(rewrap(body))  # ids still says hmac-sha256


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, MAX_VERSION + 1, 1000])
def test_unknown_version(version: int) -> None:
    body = body_of(PLAIN.encode())
    with pytest.raises(UnsupportedVersion) as info:
        RepoConfig.decode(rewrap(body, version))
    assert f"version {version}" in str(info.value)
    assert info.value.supported == (MIN_VERSION, MAX_VERSION)
    with pytest.raises(UnsupportedVersion):
        RepoConfig.verify_mac(rewrap(body, version), MAC_KEY)


def _plain(**changes: Any) -> dict[str, Any]:
    return {**body_of(PLAIN.encode()), **changes}


def _enc(**changes: Any) -> dict[str, Any]:
    return {**body_of(ENC.encode(MAC_KEY)), **changes}


def _drop(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


BAD = {
    "body is a list": [],
    "body is null": None,
    "unknown encryption": _plain(encryption="aes-gcm"),
    "encryption missing": _drop(_plain(), "encryption"),
    "encryption is bytes": _plain(encryption=b"none"),
    "extra field": _plain(extra=1),
    "mac on unencrypted": _plain(mac=b"x" * 32),
    "mac missing on encrypted": _drop(_enc(), "mac"),
    "id missing": _drop(_plain(), "id"),
    "id too short": _plain(id=bytes(31)),
    "id too long": _plain(id=bytes(33)),
    "id is text": _plain(id="0" * 32),
    "ids mismatch (plain)": _plain(ids="hmac-sha256"),
    "ids mismatch (encrypted)": _enc(ids="sha256"),
    "ids unknown": _plain(ids="md5"),
    "chunker not a map": _plain(chunker=[1024, 4096, 65536]),
    "chunker algorithm": _plain(
        chunker={"algorithm": "rabin", "min": 1024, "avg": 4096, "max": 65536}
    ),
    "chunker algorithm missing": _plain(chunker={"min": 1024, "avg": 4096, "max": 65536}),
    "chunker key missing": _plain(chunker={"algorithm": "fastcdc-2016", "min": 1024, "avg": 4096}),
    "chunker extra key": _plain(
        chunker={"algorithm": "fastcdc-2016", "min": 1024, "avg": 4096, "max": 65536, "x": 1}
    ),
    "chunker sizes out of order": _plain(
        chunker={"algorithm": "fastcdc-2016", "min": 8192, "avg": 4096, "max": 65536}
    ),
    "chunker min too small": _plain(
        chunker={"algorithm": "fastcdc-2016", "min": 1, "avg": 4096, "max": 65536}
    ),
    "chunker size text": _plain(
        chunker={"algorithm": "fastcdc-2016", "min": "1024", "avg": 4096, "max": 65536}
    ),
    "compression not a map": _plain(compression="zstd"),
    "compression algorithm": _plain(compression={"algorithm": "lz4", "level": 3}),
    "compression extra key": _plain(compression={"algorithm": "zstd", "level": 3, "x": 0}),
    "compression level missing": _plain(compression={"algorithm": "zstd"}),
    "compression level text": _plain(compression={"algorithm": "zstd", "level": "3"}),
    "compression level 0": _plain(compression={"algorithm": "zstd", "level": 0}),
    "compression level 20": _plain(compression={"algorithm": "zstd", "level": 20}),
    "compression level negative": _plain(compression={"algorithm": "zstd", "level": -1}),
    "pack_size text": _plain(pack_size="16777216"),
    "pack_size too small": _plain(pack_size=64 * 1024 - 1),
    "pack_size too large": _plain(pack_size=(1 << 30) + 1),
    "pack_size negative": _plain(pack_size=-1),
    "pack_size bool": _plain(pack_size=True),
    "pack_size missing": _drop(_plain(), "pack_size"),
}


@pytest.mark.parametrize("body", BAD.values(), ids=BAD.keys())
def test_bad_fields_are_malformed(body: Any) -> None:
    with pytest.raises(Malformed):
        RepoConfig.decode(rewrap(body))


def test_bool_compression_level_is_malformed() -> None:
    with pytest.raises(Malformed):
        RepoConfig.decode(rewrap(_plain(compression={"algorithm": "zstd", "level": True})))


def test_wrong_kind() -> None:
    with pytest.raises(Malformed):
        RepoConfig.decode(cbor.encode_envelope("key", CURRENT_VERSION, body_of(PLAIN.encode())))


def test_size_cap() -> None:
    with pytest.raises(LimitExceeded):
        RepoConfig.decode(b"\xa0" * (MAX_CONFIG_SIZE + 1))


@pytest.mark.parametrize("data", [b"", b"\x00", b"{}", b"\xa3" + b"\x00" * 10])
def test_garbage(data: bytes) -> None:
    with pytest.raises(FormatError):
        RepoConfig.decode(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"repo_id": bytes(31)},
        {"repo_id": "x" * 32},
        {"pack_size": 1000},
        {"pack_size": (1 << 30) + 1},
        {"compression_level": 0},
        {"compression_level": 20},
    ],
)
def test_constructor_validates(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"repo_id": REPO_ID, "encrypted": False, **kwargs}
    with pytest.raises(Malformed):
        RepoConfig(**args)


def test_chunker_params_are_carried() -> None:
    for params in (
        ChunkerParams(),
        ChunkerParams(min_size=64, avg_size=256, max_size=1024),
        ChunkerParams(min_size=1 << 20, avg_size=4 << 20, max_size=64 << 20),
    ):
        config = RepoConfig(repo_id=REPO_ID, encrypted=True, chunker=params)
        data = config.encode(MAC_KEY)
        assert RepoConfig.decode(data).chunker == params
        assert body_of(data)["chunker"] == {
            "algorithm": "fastcdc-2016",
            "min": params.min_size,
            "avg": params.avg_size,
            "max": params.max_size,
        }
