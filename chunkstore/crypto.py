"""Encryption: the master key, password-wrapped key files and AEAD sealing.

* The **master key** is 64 random bytes: a 32-byte XChaCha20-Poly1305 key for sealing and a 32-byte
  key for blob ids (HMAC-SHA256, see :mod:`chunkstore.hashing`) and the config MAC.
* A **key file** wraps the master key under a key derived from a password with argon2id
  (:data:`KDF_FLOOR` is the fixed minimum cost; it is never lowered, and key files asking for less are
  refused). Several key files may exist; any one opens the repository.
* **Sealing** is XChaCha20-Poly1305 (PyNaCl ``Aead``) with a fresh random 192-bit nonce per message,
  stored as ``nonce || ciphertext || tag``. Random nonces need no counter, so rolling local state back
  can never repeat a nonce. The associated data binds each message to its repository and role.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

import nacl.exceptions
import nacl.pwhash
import nacl.secret

from chunkstore.errors import CorruptBlob, UsageError, WrongPassword
from index import cbor
from index.errors import FormatError

__all__ = [
    "KDF_FLOOR",
    "OVERHEAD",
    "KdfParams",
    "MasterKey",
    "create_key_file",
    "hmac_equal",
    "mac",
    "open_key_file",
    "open_sealed",
    "seal",
]

NONCE_SIZE = nacl.secret.Aead.NONCE_SIZE
#: Bytes a sealed message adds to its plaintext (nonce and tag).
OVERHEAD = NONCE_SIZE + nacl.secret.Aead.MACBYTES
KEY_FILE_VERSION = 1
_KEY_AAD = b"chunkstore.v1.key\x00"
_MAX_KEY_FILE = 64 * 1024


@dataclass(frozen=True, slots=True)
class KdfParams:
    """argon2id cost: ``opslimit`` passes over ``memlimit`` bytes of memory."""

    opslimit: int
    memlimit: int


#: The minimum (and default) argon2id cost: 3 passes over 64 MiB (about 0.15 s here).
KDF_FLOOR = KdfParams(opslimit=3, memlimit=64 * 1024 * 1024)


@dataclass(frozen=True, slots=True, repr=False)
class MasterKey:
    """The repository's secret keys. ``repr`` never shows them."""

    encryption: bytes
    mac: bytes

    def __post_init__(self) -> None:
        """Both keys are 32 bytes."""
        if len(self.encryption) != 32 or len(self.mac) != 32:
            raise UsageError("master key parts must be 32 bytes each")

    def __repr__(self) -> str:
        """Hide the key material."""
        return "MasterKey(<secret>)"

    @classmethod
    def generate(cls) -> MasterKey:
        """Fresh random keys from the OS."""
        return cls(os.urandom(32), os.urandom(32))


def seal(key: bytes, plaintext: bytes | memoryview, aad: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` bound to ``aad``; a random nonce is prepended."""
    return bytes(nacl.secret.Aead(key).encrypt(bytes(plaintext), aad))


def open_sealed(key: bytes, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
    """Verify and decrypt a sealed message; ``CorruptBlob`` naming ``what`` on any failure."""
    if len(sealed) < OVERHEAD:
        raise CorruptBlob(f"{what}: sealed data too short ({len(sealed)} bytes)")
    try:
        return bytes(nacl.secret.Aead(key).decrypt(bytes(sealed), aad))
    except nacl.exceptions.CryptoError as exc:
        raise CorruptBlob(
            f"{what} fails authentication (damaged, or moved from elsewhere); "
            "run 'chunkstore check --read-data'"
        ) from exc


def _kek(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    return bytes(
        nacl.pwhash.argon2id.kdf(
            32, password, salt, opslimit=params.opslimit, memlimit=params.memlimit
        )
    )


def create_key_file(
    master: MasterKey,
    password: bytes,
    repo_id: bytes,
    *,
    params: KdfParams = KDF_FLOOR,
    host: str = "",
    user: str = "",
    created_ns: int = 0,
) -> bytes:
    """Wrap ``master`` under ``password`` for repository ``repo_id``; returns the key file bytes."""
    if params.opslimit < KDF_FLOOR.opslimit or params.memlimit < KDF_FLOOR.memlimit:
        raise UsageError("argon2id parameters below the fixed floor are not allowed")
    if not password:
        raise UsageError("the password must not be empty")
    salt = os.urandom(nacl.pwhash.argon2id.SALTBYTES)
    meta: dict[str, object] = {
        "kdf": "argon2id",
        "ops": params.opslimit,
        "mem": params.memlimit,
        "salt": salt,
        "host": host,
        "user": user,
        "created": created_ns,
    }
    inner = cbor.encode({"enc": master.encryption, "mac": master.mac})
    wrapped = seal(_kek(password, salt, params), inner, _key_aad(repo_id, meta))
    return cbor.encode_envelope("key", KEY_FILE_VERSION, {**meta, "wrapped": wrapped})


def _key_aad(repo_id: bytes, meta: dict[str, object]) -> bytes:
    # Every field but the sealed key itself is authenticated: editing any of them is damage.
    return _KEY_AAD + repo_id + cbor.encode(meta)


_WRONG = "wrong password, or the key file is damaged"


def open_key_file(data: bytes, password: bytes, repo_id: bytes) -> MasterKey:
    """Unwrap a key file; ``WrongPassword`` for a wrong password or any damage alike."""
    try:
        env = cbor.decode_envelope(
            data, kind="key", versions=(KEY_FILE_VERSION, KEY_FILE_VERSION), max_size=_MAX_KEY_FILE
        )
        body = env.data
        fields = {"kdf", "ops", "mem", "salt", "host", "user", "created", "wrapped"}
        if not isinstance(body, dict) or set(body) != fields or body["kdf"] != "argon2id":
            raise WrongPassword(_WRONG)
        meta = {k: v for k, v in body.items() if k != "wrapped"}
        ops, mem, salt, wrapped = body["ops"], body["mem"], body["salt"], body["wrapped"]
        if not (
            type(ops) is int
            and type(mem) is int
            and isinstance(salt, bytes)
            and isinstance(wrapped, bytes)
            and len(salt) == nacl.pwhash.argon2id.SALTBYTES
        ):
            raise WrongPassword(_WRONG)
        if ops < KDF_FLOOR.opslimit or mem < KDF_FLOOR.memlimit or ops > 64 or mem > 4 << 30:
            raise WrongPassword(_WRONG)
        kek = _kek(password, salt, KdfParams(ops, mem))
        try:
            inner = open_sealed(kek, wrapped, _key_aad(repo_id, meta), "key file")
        except CorruptBlob as exc:
            raise WrongPassword(_WRONG) from exc
        keys = cbor.decode(inner, max_size=1024)
        if not isinstance(keys, dict) or set(keys) != {"enc", "mac"}:
            raise WrongPassword(_WRONG)
        return MasterKey(keys["enc"], keys["mac"])
    except FormatError as exc:
        raise WrongPassword(_WRONG) from exc
    except (UsageError, TypeError) as exc:
        raise WrongPassword(_WRONG) from exc


def mac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data``."""
    return hmac.digest(key, data, "sha256")


def hmac_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two MACs."""
    return hmac.compare_digest(a, b)
