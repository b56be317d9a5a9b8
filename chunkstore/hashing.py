"""Blob ids: the one place where a blob's name is computed.

An unencrypted repository names a blob by the SHA-256 of its plaintext, so ids are plain content
digests. An encrypted repository names it by HMAC-SHA256 under a secret MAC key from the master key,
so a stored id does not confirm that a repository holds some public content (borg's ``id_key``).
"""

from __future__ import annotations

import hashlib
import hmac

from chunkstore.errors import UsageError
from index.ids import Digest

__all__ = ["BlobHasher"]


class BlobHasher:
    """Computes blob ids for one repository."""

    __slots__ = ("_algorithm", "_key")

    def __init__(self, algorithm: str, key: bytes | None = None) -> None:
        """``sha256`` takes no key; ``hmac-sha256`` needs a 32-byte key."""
        if algorithm == "sha256":
            if key is not None:
                raise UsageError("sha256 blob ids take no key")
        elif algorithm == "hmac-sha256":
            if key is None or len(key) != 32:
                raise UsageError("hmac-sha256 blob ids need a 32-byte key")
        else:
            raise UsageError(f"unknown blob id algorithm {algorithm!r}")
        self._algorithm = algorithm
        self._key = key

    @property
    def algorithm(self) -> str:
        """The id algorithm name as it appears in digests."""
        return self._algorithm

    def __call__(self, data: bytes | memoryview) -> Digest:
        """The id of a plaintext blob."""
        if self._key is None:
            return Digest("sha256", hashlib.sha256(data).digest())
        return Digest("hmac-sha256", hmac.digest(self._key, data, "sha256"))
