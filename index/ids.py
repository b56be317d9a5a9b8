"""The one identifier type: :class:`Digest`, an algorithm name plus 32 raw bytes.

Every id in chunkstore (blob ids, pack ids, index-file ids, record ids) is a ``Digest``. Hex appears
only at the edges (file names, OCI descriptors, user output). The textual form follows the OCI digest
grammar, ``algorithm ":" hex``, and is parsed strictly, so a hostile ``sha256:../../x`` can never
become a path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from index.errors import Malformed

__all__ = ["ALGORITHMS", "DIGEST_SIZE", "Digest", "parse_sha256", "sha256"]

DIGEST_SIZE = 32
#: Algorithms an id may carry. ``sha256`` names content (files, packs, plaintext blobs in an
#: unencrypted repository); ``hmac-sha256`` names plaintext blobs in an encrypted repository.
ALGORITHMS = ("sha256", "hmac-sha256")
_TEXT = re.compile(r"\A(sha256|hmac-sha256):([0-9a-f]{64})\Z")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """An algorithm plus exactly 32 raw bytes."""

    algorithm: str
    raw: bytes

    def __post_init__(self) -> None:
        """Reject unknown algorithms and wrong lengths at construction."""
        if self.algorithm not in ALGORITHMS:
            raise Malformed(f"unknown digest algorithm {self.algorithm!r}")
        if not isinstance(self.raw, bytes) or len(self.raw) != DIGEST_SIZE:
            raise Malformed(f"digest must be {DIGEST_SIZE} bytes")

    @property
    def hex(self) -> str:
        """Lower-case hex of the raw bytes."""
        return self.raw.hex()

    @property
    def short(self) -> str:
        """The first 12 hex digits, for messages."""
        return self.raw.hex()[:12]

    def __str__(self) -> str:
        """``algorithm:hex``, the OCI digest form."""
        return f"{self.algorithm}:{self.raw.hex()}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``algorithm:hex`` strictly (lower-case hex, exact length)."""
        m = _TEXT.match(text) if isinstance(text, str) else None
        if m is None:
            raise Malformed(f"not a valid digest: {text!r:.80}")
        return cls(m.group(1), bytes.fromhex(m.group(2)))

    @classmethod
    def from_hex(cls, hex_text: str, algorithm: str = "sha256") -> Digest:
        """Parse bare hex (a file name) with the given algorithm."""
        return cls.parse(f"{algorithm}:{hex_text}")


def parse_sha256(text: object, what: str) -> Digest:
    """A ``sha256:<hex>`` content digest from image metadata or a reference, strictly parsed.

    Stricter than :meth:`Digest.parse`: only ``sha256`` names content in OCI images. ``what`` names
    the field in the :class:`~index.errors.Malformed` message (callers turn it into their own error).
    """
    if not isinstance(text, str):
        raise Malformed(f"{what}: no digest")
    m = _TEXT.match(text)
    if m is None:
        raise Malformed(
            f"{what}: invalid digest {text!r:.100}; expected sha256:<64 lower-case hex>"
        )
    if m.group(1) != "sha256":
        raise Malformed(f"{what}: digest {text:.100} is not sha256")
    return Digest("sha256", bytes.fromhex(m.group(2)))


def sha256(data: bytes | bytearray | memoryview) -> Digest:
    """SHA-256 of ``data`` as a :class:`Digest`."""
    return Digest("sha256", hashlib.sha256(data).digest())
