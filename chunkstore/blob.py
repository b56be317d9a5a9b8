"""Blob records shared by the codec, packs, the pack index and the repository.

A *blob* is one stored object inside a pack: a chunk of file content (``DATA``) or a metadata object
(``META``: trees, layer recipes, chunk lists). Data and metadata blobs never share a pack, so a
mount or a ``check`` can fetch all metadata without touching content.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from index.ids import Digest

__all__ = ["BlobType", "Location", "PackEntry", "StoredBlob"]


class BlobType(IntEnum):
    """Wire values of blob types (one byte in associated data, an integer in CBOR)."""

    DATA = 1
    META = 2


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A blob as it is stored: compressed and, in an encrypted repository, sealed."""

    id: Digest
    type: BlobType
    data: bytes
    raw_length: int


@dataclass(frozen=True, slots=True)
class PackEntry:
    """One blob's place inside a pack: ``length`` stored bytes at ``offset``."""

    type: BlobType
    id: Digest
    offset: int
    length: int
    raw_length: int


@dataclass(frozen=True, slots=True)
class Location:
    """Where a blob lives: a pack and the entry inside it."""

    pack_id: Digest
    entry: PackEntry
