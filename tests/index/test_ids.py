"""Tests for :mod:`index.ids`: the :class:`Digest` type and its strict OCI text form."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from index.errors import FormatError, Malformed
from index.ids import ALGORITHMS, DIGEST_SIZE, Digest, parse_sha256, sha256

HEX64 = "0123456789abcdef" * 4
RAW = bytes.fromhex(HEX64)

raws = st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE)
algorithms = st.sampled_from(ALGORITHMS)


def test_str_is_oci_form() -> None:
    d = Digest("sha256", RAW)
    assert str(d) == "sha256:" + HEX64
    assert d.hex == HEX64
    assert d.short == HEX64[:12]
    assert str(Digest("hmac-sha256", RAW)) == "hmac-sha256:" + HEX64


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_parse_str_round_trip(algorithm: str) -> None:
    text = f"{algorithm}:{HEX64}"
    d = Digest.parse(text)
    assert d == Digest(algorithm, RAW)
    assert d.algorithm == algorithm
    assert d.raw == RAW
    assert str(d) == text


def test_from_hex() -> None:
    assert Digest.from_hex(HEX64) == Digest("sha256", RAW)
    assert Digest.from_hex(HEX64, "hmac-sha256") == Digest("hmac-sha256", RAW)
    with pytest.raises(Malformed):
        Digest.from_hex(HEX64.upper())
    with pytest.raises(Malformed):
        Digest.from_hex("../../" + HEX64[6:])


def test_sha256_helper_matches_hashlib() -> None:
    for data in (b"", b"abc", bytes(range(256)) * 3):
        d = sha256(data)
        assert d.algorithm == "sha256"
        assert d.raw == hashlib.sha256(data).digest()
    # FIPS 180-2 test vector, computed independently of this code.
    assert str(sha256(b"abc")) == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert sha256(memoryview(b"abc")) == sha256(bytearray(b"abc")) == sha256(b"abc")


BAD_TEXT = [
    "",
    "sha256:",
    ":" + HEX64,
    "sha256" + HEX64,
    "sha256:" + HEX64.upper(),
    "sha256:" + HEX64[:-1] + "A",
    "SHA256:" + HEX64,
    "sha256:" + HEX64[:-1],
    "sha256:" + HEX64 + "0",
    "sha256:" + HEX64[:-2],
    "sha256:../../x",
    "sha256:../../" + HEX64[6:],
    "sha256:" + HEX64[:-1] + "/",
    "sha256:" + HEX64[:-1] + "g",
    "sha512:" + HEX64,
    "sha512:" + HEX64 * 2,
    "md5:" + HEX64[:32],
    "hmac-sha512:" + HEX64,
    "sha256:" + HEX64 + "\n",
    "\nsha256:" + HEX64,
    " sha256:" + HEX64,
    "sha256:" + HEX64 + " ",
    "sha256: " + HEX64[1:],
    "sha256::" + HEX64,
    "sha256:0x" + HEX64[2:],
    "sha256:" + HEX64[:32] + "\x00" + HEX64[33:],
    "sha256:" + "\uff10" * 64,  # full-width digits are not hex
    "sha256:" + "\u0660" * 64,  # Arabic-Indic digits match \d, not [0-9]
]


@pytest.mark.parametrize("text", BAD_TEXT, ids=range(len(BAD_TEXT)))
def test_parse_rejects_non_grammar(text: str) -> None:
    with pytest.raises(Malformed):
        Digest.parse(text)


@pytest.mark.parametrize("value", [None, 1, b"sha256:" + HEX64.encode(), ["sha256", HEX64], RAW])
def test_parse_rejects_non_str(value: object) -> None:
    with pytest.raises(Malformed):
        Digest.parse(value)  # type: ignore[arg-type]


def test_parse_error_message_is_bounded() -> None:
    with pytest.raises(Malformed) as info:
        Digest.parse("x" * 10_000)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("algorithm", "raw"),
    [
        ("sha512", RAW),
        ("SHA256", RAW),
        ("", RAW),
        ("sha256", RAW[:-1]),
        ("sha256", RAW + b"\x00"),
        ("sha256", b""),
        ("sha256", bytearray(RAW)),
        ("sha256", HEX64),
        ("hmac-sha256", memoryview(RAW)),
    ],
)
def test_constructor_validates(algorithm: str, raw: bytes) -> None:
    with pytest.raises(Malformed):
        Digest(algorithm, raw)


def test_malformed_is_a_format_error() -> None:
    with pytest.raises(FormatError):
        Digest.parse("sha256:nope")


def test_frozen_hashable_ordered() -> None:
    a = Digest("sha256", b"\x00" * 32)
    b = Digest("sha256", b"\x01" + b"\x00" * 31)
    h = Digest("hmac-sha256", b"\x00" * 32)
    assert a != h  # same bytes, different algorithm: different ids
    assert len({a, b, h, Digest("sha256", b"\x00" * 32)}) == 3
    assert sorted([b, a]) == [a, b]
    with pytest.raises(AttributeError):
        a.raw = b"\x01" * 32  # type: ignore[misc]


@given(algorithms, raws)
def test_round_trip_property(algorithm: str, raw: bytes) -> None:
    d = Digest(algorithm, raw)
    text = str(d)
    assert Digest.parse(text) == d
    assert Digest.from_hex(d.hex, algorithm) == d
    assert text == f"{algorithm}:{raw.hex()}"


@given(
    st.one_of(
        st.text(max_size=80),
        st.from_regex(r"\A(sha256|hmac-sha256|sha512|SHA256):[0-9a-fA-F./\n]{62,66}\Z"),
        st.builds(lambda a, r: f"{a}:{r.hex()}", algorithms, raws),
    )
)
def test_only_canonical_text_parses(text: str) -> None:
    """Whatever parses prints back as exactly the same text: one spelling per digest."""
    try:
        d = Digest.parse(text)
    except Malformed:
        return
    assert str(d) == text
    assert "/" not in text and ".." not in text


def test_parse_sha256_takes_only_sha256_content_digests() -> None:
    d = sha256(b"layer")
    assert parse_sha256(str(d), "layer 0") == d
    with pytest.raises(Malformed, match=r"layer 0: digest hmac-sha256:.* is not sha256"):
        parse_sha256(f"hmac-sha256:{d.hex}", "layer 0")
    with pytest.raises(Malformed, match=r"layer 0: invalid digest .*expected sha256:<64"):
        parse_sha256(f"sha256:{d.hex.upper()}", "layer 0")
    with pytest.raises(Malformed, match="layer 0: no digest"):
        parse_sha256(None, "layer 0")
