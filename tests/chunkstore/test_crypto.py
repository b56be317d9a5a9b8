"""Tests for :mod:`chunkstore.crypto`: AEAD sealing, master keys and password-wrapped key files.

argon2id at the fixed floor costs ~0.2 s per derivation, so the key-file tests share one key file
(module fixture) and run about ten derivations in all; everything that must be refused before the
KDF runs is checked with the KDF patched to fail.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from typing import Any

import nacl.pwhash
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkstore import crypto
from chunkstore.errors import CorruptBlob, UsageError, WrongPassword
from index import cbor

KEY = bytes(range(32))
AAD = b"chunkstore.test\x00aad"
NONCE = crypto.NONCE_SIZE
TAG = crypto.OVERHEAD - crypto.NONCE_SIZE

# ------------------------------------------------------------------------------------------------
# Sealing
# ------------------------------------------------------------------------------------------------


def test_layout_constants() -> None:
    # XChaCha20-Poly1305: 192-bit nonce, 128-bit tag.
    assert NONCE == 24
    assert crypto.OVERHEAD == 40


@given(st.binary(max_size=2048), st.binary(max_size=64))
def test_seal_open_round_trip(plaintext: bytes, aad: bytes) -> None:
    sealed = crypto.seal(KEY, plaintext, aad)
    assert len(sealed) == len(plaintext) + crypto.OVERHEAD
    assert crypto.open_sealed(KEY, sealed, aad, "test") == plaintext
    assert crypto.open_sealed(KEY, memoryview(sealed), aad, "test") == plaintext
    if len(plaintext) >= 16:
        assert plaintext not in sealed


def test_seal_accepts_memoryview() -> None:
    sealed = crypto.seal(KEY, memoryview(b"view"), AAD)
    assert crypto.open_sealed(KEY, sealed, AAD, "x") == b"view"


def test_every_bit_flip_is_detected() -> None:
    plaintext = b"sixteen byte msg"
    sealed = crypto.seal(KEY, plaintext, AAD)
    regions = {"nonce": range(NONCE), "ciphertext": range(NONCE, NONCE + 16)}
    regions["tag"] = range(NONCE + 16, len(sealed))
    assert sum(len(r) for r in regions.values()) == len(sealed)
    for region, positions in regions.items():
        for i in positions:
            for bit in range(8):
                damaged = bytearray(sealed)
                damaged[i] ^= 1 << bit
                with pytest.raises(CorruptBlob, match="blob X"):
                    crypto.open_sealed(KEY, bytes(damaged), AAD, f"blob X ({region} {i}:{bit})")


@pytest.mark.parametrize(
    "aad", [b"", AAD[:-1], AAD + b"\x00", b"chunkstore.test\x00aaD", AAD[::-1]]
)
def test_wrong_aad_is_detected(aad: bytes) -> None:
    sealed = crypto.seal(KEY, b"payload", AAD)
    with pytest.raises(CorruptBlob):
        crypto.open_sealed(KEY, sealed, aad, "blob")


def test_wrong_key_is_detected() -> None:
    sealed = crypto.seal(KEY, b"payload", AAD)
    other = bytes(31) + b"\x01"
    with pytest.raises(CorruptBlob):
        crypto.open_sealed(other, sealed, AAD, "blob")


def test_truncated_or_extended_is_detected() -> None:
    sealed = crypto.seal(KEY, b"payload", AAD)
    for damaged in (b"", sealed[:1], sealed[: crypto.OVERHEAD - 1], sealed[:-1], sealed + b"\x00"):
        with pytest.raises(CorruptBlob):
            crypto.open_sealed(KEY, damaged, AAD, "blob")
    with pytest.raises(CorruptBlob, match="too short"):
        crypto.open_sealed(KEY, sealed[: crypto.OVERHEAD - 1], AAD, "blob")


def test_seals_of_same_plaintext_differ() -> None:
    a = crypto.seal(KEY, b"same", AAD)
    b = crypto.seal(KEY, b"same", AAD)
    assert a != b
    assert a[:NONCE] != b[:NONCE]
    assert crypto.open_sealed(KEY, a, AAD, "a") == crypto.open_sealed(KEY, b, AAD, "b") == b"same"


def test_no_nonce_repeats() -> None:
    """10_000 seals give 10_000 distinct nonces (a 10**6 run is done by the audit tools)."""
    n = 10_000
    nonces = {crypto.seal(KEY, b"", b"")[:NONCE] for _ in range(n)}
    assert len(nonces) == n


# ------------------------------------------------------------------------------------------------
# Master key, MAC helpers
# ------------------------------------------------------------------------------------------------


def test_master_key_generate() -> None:
    a, b = crypto.MasterKey.generate(), crypto.MasterKey.generate()
    assert len(a.encryption) == len(a.mac) == 32
    assert a.encryption != a.mac
    assert a != b


def test_master_key_repr_hides_secrets() -> None:
    m = crypto.MasterKey(b"\xaa" * 32, b"\xbb" * 32)
    for text in (repr(m), str(m), f"{m!r}", f"{m}", repr([m]), repr({"k": m})):
        assert "aa" not in text.lower()
        assert "bb" not in text.lower()
        assert "\\xaa" not in text and "\\xbb" not in text
        assert "secret" in text


@pytest.mark.parametrize(
    ("enc", "mac"), [(b"", b"x" * 32), (b"x" * 31, b"x" * 32), (b"x" * 32, b"x" * 33)]
)
def test_master_key_lengths(enc: bytes, mac: bytes) -> None:
    with pytest.raises(UsageError):
        crypto.MasterKey(enc, mac)


def test_mac_is_hmac_sha256() -> None:
    # RFC 4231 test case 2.
    tag = crypto.mac(b"Jefe", b"what do ya want for nothing?")
    assert tag.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    data = os.urandom(100)
    assert crypto.mac(KEY, data) == hmac.new(KEY, data, hashlib.sha256).digest()


def test_hmac_equal() -> None:
    a = crypto.mac(KEY, b"x")
    assert crypto.hmac_equal(a, bytes(a))
    assert not crypto.hmac_equal(a, a[:-1] + bytes([a[-1] ^ 1]))
    assert not crypto.hmac_equal(a, a[:-1])


# ------------------------------------------------------------------------------------------------
# Key files (each open/create with valid parameters runs argon2id once)
# ------------------------------------------------------------------------------------------------

PASSWORD = b"correct horse battery staple"
HOST = "build-host-1"


class KeyFileCase:
    def __init__(self) -> None:
        self.master = crypto.MasterKey.generate()
        self.repo_id = os.urandom(32)
        self.data = crypto.create_key_file(  # KDF 1
            self.master, PASSWORD, self.repo_id, host=HOST, user="alice", created_ns=123
        )
        self.body: dict[str, Any] = cbor.decode_envelope(
            self.data, kind="key", versions=(1, 1), max_size=1 << 16
        ).data
        self._wrong: str | None = None

    @property
    def wrong_password_message(self) -> str:
        if self._wrong is None:
            with pytest.raises(WrongPassword) as info:  # KDF
                crypto.open_key_file(self.data, b"wrong password", self.repo_id)
            self._wrong = str(info.value)
        return self._wrong

    def rewrite(self, **changes: Any) -> bytes:
        return cbor.encode_envelope("key", 1, {**self.body, **changes})


#: Budget of argon2id runs for this module (keeps the suite fast).
MAX_KDF_RUNS = 12


@pytest.fixture(scope="module", autouse=True)
def kdf_budget() -> Iterator[list[int]]:
    """Count argon2id runs over the whole module and hold them to :data:`MAX_KDF_RUNS`."""
    runs = [0]
    real = nacl.pwhash.argon2id.kdf

    def counting(*args: Any, **kwargs: Any) -> bytes:
        runs[0] += 1
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nacl.pwhash.argon2id, "kdf", counting)
        yield runs
    assert runs[0] <= MAX_KDF_RUNS


@pytest.fixture(scope="module")
def case(kdf_budget: list[int]) -> KeyFileCase:
    before = kdf_budget[0]
    c = KeyFileCase()
    assert kdf_budget[0] == before + 1  # create_key_file derives exactly once
    return c


@pytest.fixture
def no_kdf(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if argon2id runs."""

    def boom(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("the KDF ran for a key file that should be refused before it")

    monkeypatch.setattr(nacl.pwhash.argon2id, "kdf", boom)
    yield


def test_key_file_round_trip(case: KeyFileCase) -> None:
    opened = crypto.open_key_file(case.data, PASSWORD, case.repo_id)  # KDF
    assert opened == case.master
    assert opened.encryption == case.master.encryption
    assert opened.mac == case.master.mac


def test_key_file_layout(case: KeyFileCase) -> None:
    b = case.body
    assert set(b) == {"kdf", "ops", "mem", "salt", "wrapped", "host", "user", "created"}
    assert b["kdf"] == "argon2id"
    assert (b["ops"], b["mem"]) == (crypto.KDF_FLOOR.opslimit, crypto.KDF_FLOOR.memlimit)
    assert len(b["salt"]) == nacl.pwhash.argon2id.SALTBYTES
    assert (b["host"], b["user"], b["created"]) == (HOST, "alice", 123)
    # The wrapped keys are two 32-byte strings in a small CBOR map, sealed.
    assert len(b["wrapped"]) > 64 + crypto.OVERHEAD
    # Neither half of the master key appears in the file.
    assert case.master.encryption not in case.data
    assert case.master.mac not in case.data
    assert case.master.encryption[:8] not in case.data


def test_kdf_floor() -> None:
    assert crypto.KDF_FLOOR.opslimit >= 3
    assert crypto.KDF_FLOOR.memlimit >= 64 * 1024 * 1024


def test_wrong_password(case: KeyFileCase) -> None:
    msg = case.wrong_password_message  # KDF
    assert "wrong password" in msg
    assert PASSWORD.decode() not in msg


def test_wrong_repo_id(case: KeyFileCase) -> None:
    other = bytes(b ^ 1 for b in case.repo_id)
    with pytest.raises(WrongPassword) as info:  # KDF
        crypto.open_key_file(case.data, PASSWORD, other)
    assert str(info.value) == case.wrong_password_message


def _offset_of(data: bytes, part: bytes) -> int:
    assert data.count(part) == 1
    return data.index(part)


TAMPER = {
    # where in the file: (field to locate, offset inside it), or an absolute position
    "map header": ("abs", 0),
    "salt": ("salt", 7),
    "wrapped nonce": ("wrapped", 3),
    "wrapped ciphertext": ("wrapped", crypto.NONCE_SIZE + 5),
    "wrapped tag": ("wrapped", -1),
    "kdf name": ("kdf", 0),
    "version": ("abs", -1),
}


@pytest.mark.parametrize("where", TAMPER.values(), ids=TAMPER.keys())
def test_one_changed_byte_is_wrong_password(case: KeyFileCase, where: tuple[str, int]) -> None:
    field, offset = where
    if field == "abs":
        pos = offset % len(case.data)
    else:
        value = case.body[field]
        raw = value.encode() if isinstance(value, str) else value
        pos = _offset_of(case.data, raw) + offset % len(raw)
    damaged = bytearray(case.data)
    damaged[pos] ^= 0x01
    expected = case.wrong_password_message
    with pytest.raises(WrongPassword) as info:  # KDF for salt and wrapped positions
        crypto.open_key_file(bytes(damaged), PASSWORD, case.repo_id)
    assert str(info.value) == expected


def test_changed_host_byte_is_wrong_password(case: KeyFileCase) -> None:
    damaged = bytearray(case.data)
    damaged[_offset_of(case.data, HOST.encode())] ^= 0x01
    with pytest.raises(WrongPassword):  # KDF
        crypto.open_key_file(bytes(damaged), PASSWORD, case.repo_id)


@pytest.mark.parametrize(
    "params",
    [
        crypto.KdfParams(crypto.KDF_FLOOR.opslimit - 1, crypto.KDF_FLOOR.memlimit),
        crypto.KdfParams(crypto.KDF_FLOOR.opslimit, crypto.KDF_FLOOR.memlimit - 1),
        crypto.KdfParams(1, 8 * 1024),
        crypto.KdfParams(0, 0),
    ],
)
def test_create_refuses_params_below_floor(no_kdf: None, params: crypto.KdfParams) -> None:
    with pytest.raises(UsageError):
        crypto.create_key_file(crypto.MasterKey.generate(), PASSWORD, bytes(32), params=params)


def test_create_refuses_empty_password(no_kdf: None) -> None:
    with pytest.raises(UsageError):
        crypto.create_key_file(crypto.MasterKey.generate(), b"", bytes(32))


@pytest.mark.parametrize(
    "changes",
    [
        {"ops": crypto.KDF_FLOOR.opslimit - 1},
        {"ops": 1, "mem": 8 * 1024},
        {"mem": crypto.KDF_FLOOR.memlimit - 1},
        {"ops": 0},
        {"ops": -1},
        {"ops": 10**6},  # absurd cost: refused rather than run
        {"mem": 1 << 40},
    ],
    ids=["ops-1", "low-both", "mem-1", "ops0", "ops-neg", "ops-huge", "mem-huge"],
)
def test_open_refuses_params_outside_range_before_kdf(
    case: KeyFileCase, no_kdf: None, changes: dict[str, int]
) -> None:
    with pytest.raises(WrongPassword, match="wrong password"):
        crypto.open_key_file(case.rewrite(**changes), PASSWORD, case.repo_id)


@pytest.mark.parametrize(
    "changes",
    [
        {"kdf": "scrypt"},
        {"kdf": None},
        {"ops": "3"},
        {"mem": None},
        {"salt": b"short"},
        {"salt": "x" * 16},
        {"wrapped": "text"},
        {"ops": True},
    ],
)
def test_open_refuses_malformed_fields_before_kdf(
    case: KeyFileCase, no_kdf: None, changes: dict[str, Any]
) -> None:
    with pytest.raises(WrongPassword) as info:
        crypto.open_key_file(case.rewrite(**changes), PASSWORD, case.repo_id)
    assert "wrong password" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"not a key file",
        b"\xff" * (1 << 17),
        cbor.encode_envelope("config", 1, {}),
        cbor.encode_envelope("key", 2, {}),
        cbor.encode_envelope("key", 1, []),
    ],
    ids=["empty", "zero", "text", "huge", "other-kind", "version-2", "body-list"],
)
def test_open_refuses_garbage(no_kdf: None, data: bytes) -> None:
    with pytest.raises(WrongPassword):
        crypto.open_key_file(data, PASSWORD, bytes(32))
