"""The repository config: format version, id, chunker, packing, compression and encryption.

The config file is canonical CBOR in the ``config`` envelope, stored in the clear (it holds no
secret, and it must be readable before a key is opened). In an encrypted repository its body carries
``mac``, an HMAC-SHA256 under the master MAC key over the encoded body without ``mac``, so the
parameters cannot be altered unnoticed once a key is opened.

Format versions (SPEC.md section 12): version 1 cuts with the public FastCDC table
(``"fastcdc-2016"``); version 2 adds ``"fastcdc-2016-keyed"``, the table derived from the MAC key
(encrypted repositories only), which new encrypted repositories use. A version this code does not
know is refused (``UnsupportedVersion``), never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chunkstore import crypto
from chunkstore.chunker import ChunkerParams
from index import cbor
from index.errors import Malformed

__all__ = [
    "CURRENT_VERSION",
    "DEFAULT_PACK_SIZE",
    "KEYED_GEAR_VERSION",
    "MAX_VERSION",
    "MIN_VERSION",
    "RepoConfig",
]

MIN_VERSION = 1
MAX_VERSION = 2
#: The version of plain repositories (and of encrypted ones cutting with the standard table).
CURRENT_VERSION = 1
#: The first version with the keyed gear table; new encrypted repositories are written with it.
KEYED_GEAR_VERSION = 2
_ALGORITHMS = {"standard": "fastcdc-2016", "keyed": "fastcdc-2016-keyed"}
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
MAX_CONFIG_SIZE = 64 * 1024
_MAX_PACK_SIZE = 1 << 30


@dataclass(frozen=True, slots=True)
class RepoConfig:
    """Repository-wide parameters, fixed at ``init``."""

    repo_id: bytes
    encrypted: bool
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    pack_size: int = DEFAULT_PACK_SIZE
    compression_level: int = 3
    version: int = CURRENT_VERSION
    #: The chunker's gear table: ``"standard"`` (public) or ``"keyed"`` (from the MAC key).
    gear: str = "standard"

    @classmethod
    def new(
        cls,
        repo_id: bytes,
        *,
        encrypted: bool,
        chunker: ChunkerParams,
        pack_size: int,
        compression_level: int,
        gear: str | None = None,
    ) -> RepoConfig:
        """The config of a new repository: a keyed table when encrypted, unless ``gear`` says.

        ``gear`` is given by ``init --copy-keys-from`` (the source's table, so that both cut
        alike); the version is the lowest that can state the table.
        """
        kind = gear or ("keyed" if encrypted else "standard")
        return cls(
            repo_id=repo_id,
            encrypted=encrypted,
            chunker=chunker,
            pack_size=pack_size,
            compression_level=compression_level,
            version=KEYED_GEAR_VERSION if kind == "keyed" else CURRENT_VERSION,
            gear=kind,
        )

    def __post_init__(self) -> None:
        """Validate ranges."""
        if not MIN_VERSION <= self.version <= MAX_VERSION:
            raise Malformed(f"config version {self.version} outside {MIN_VERSION}..{MAX_VERSION}")
        if self.gear not in _ALGORITHMS:
            raise Malformed(f"unknown gear table {self.gear!r:.40}")
        if self.gear == "keyed" and not self.encrypted:
            raise Malformed("a keyed chunker table needs an encrypted repository")
        if self.gear == "keyed" and self.version < KEYED_GEAR_VERSION:
            raise Malformed(f"a keyed chunker table needs config version {KEYED_GEAR_VERSION}")
        if not isinstance(self.repo_id, bytes) or len(self.repo_id) != 32:
            raise Malformed("repository id must be 32 bytes")
        if not 64 * 1024 <= self.pack_size <= _MAX_PACK_SIZE:
            raise Malformed(f"pack size {self.pack_size} outside 64 KiB..1 GiB")
        if not 1 <= self.compression_level <= 19:
            raise Malformed(f"zstd level {self.compression_level} outside 1..19")

    @property
    def id_algorithm(self) -> str:
        """Blob id algorithm: keyed in encrypted repositories."""
        return "hmac-sha256" if self.encrypted else "sha256"

    def _body(self) -> dict[str, Any]:
        return {
            "id": self.repo_id,
            "encryption": "xchacha20-poly1305" if self.encrypted else "none",
            "ids": self.id_algorithm,
            "chunker": {"algorithm": _ALGORITHMS[self.gear], **self.chunker.to_cbor()},
            "pack_size": self.pack_size,
            "compression": {"algorithm": "zstd", "level": self.compression_level},
        }

    def encode(self, mac_key: bytes | None = None) -> bytes:
        """Config file bytes; ``mac_key`` is required for an encrypted repository."""
        body = self._body()
        if self.encrypted:
            if mac_key is None:
                raise ValueError("an encrypted config needs the MAC key")
            body["mac"] = crypto.mac(mac_key, cbor.encode(body))
        return cbor.encode_envelope("config", self.version, body)

    @classmethod
    def decode(cls, data: bytes) -> RepoConfig:
        """Parse config file bytes (the MAC, if any, is checked later by :meth:`verify_mac`)."""
        env = cbor.decode_envelope(
            data, kind="config", versions=(MIN_VERSION, MAX_VERSION), max_size=MAX_CONFIG_SIZE
        )
        body = env.data
        if not isinstance(body, dict):
            raise Malformed("config body is not a map")
        enc = body.get("encryption")
        if enc not in ("none", "xchacha20-poly1305"):
            raise Malformed(f"unknown encryption {enc!r:.40}")
        encrypted = enc != "none"
        expected = {"id", "encryption", "ids", "chunker", "pack_size", "compression"}
        if encrypted:
            expected.add("mac")
        if set(body) != expected:
            raise Malformed("config fields are not the expected set")
        chunker = body["chunker"]
        comp = body["compression"]
        if not isinstance(chunker, dict):
            raise Malformed("chunker settings are not a map")
        algorithm = chunker.get("algorithm")
        gears = [k for k, v in _ALGORITHMS.items() if v == algorithm]
        if not gears:
            raise Malformed(f"unknown chunker algorithm {algorithm!r:.40}")
        if gears[0] == "keyed" and env.version < KEYED_GEAR_VERSION:
            raise Malformed(
                f"chunker {algorithm} needs config version {KEYED_GEAR_VERSION}, not {env.version}"
            )
        if not isinstance(comp, dict) or set(comp) != {"algorithm", "level"}:
            raise Malformed("bad compression settings")
        if comp["algorithm"] != "zstd" or type(comp["level"]) is not int:
            raise Malformed("unknown compression")
        pack_size = body["pack_size"]
        if type(pack_size) is not int:
            raise Malformed("pack_size is not an integer")
        params = ChunkerParams.from_cbor({k: v for k, v in chunker.items() if k != "algorithm"})
        config = cls(
            repo_id=body["id"],
            encrypted=encrypted,
            chunker=params,
            pack_size=pack_size,
            compression_level=comp["level"],
            version=env.version,
            gear=gears[0],
        )
        if body["ids"] != config.id_algorithm:
            raise Malformed("blob id algorithm does not match the encryption mode")
        return config

    @staticmethod
    def verify_mac(data: bytes, mac_key: bytes) -> bool:
        """Whether an encrypted config's MAC is valid under ``mac_key``."""
        env = cbor.decode_envelope(
            data, kind="config", versions=(MIN_VERSION, MAX_VERSION), max_size=MAX_CONFIG_SIZE
        )
        body = dict(env.data)
        tag = body.pop("mac", None)
        if not isinstance(tag, bytes):
            return False
        return crypto.hmac_equal(tag, crypto.mac(mac_key, cbor.encode(body)))
