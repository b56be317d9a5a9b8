"""Pack index files: which blobs each pack holds, and where.

An index file is a stored file (codec role ``pack-index``) of the CBOR envelope::

    {"kind": "pack-index", "version": 1, "data": {
        "packs": [[pack_id(bstr 32), pack_size(uint),
                   [[type, blob_id(bstr 32), offset, length, raw_length], ...]], ...],
        "supersedes": [index_file_id(bstr 32), ...]}}

Index files are written only after every pack they list is stored, and are named by the SHA-256 of
their stored bytes. ``supersedes`` names older index files whose content this one replaces (prune and
index rebuilds write a complete new index, then delete the old files). Entries are validated on
load: a negative or overlapping range, or one past the pack size, is refused before any use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chunkstore.blob import BlobType, PackEntry
from index import cbor
from index.errors import Malformed
from index.ids import DIGEST_SIZE, Digest

__all__ = [
    "INDEX_VERSION",
    "MAX_INDEX_SIZE",
    "IndexFile",
    "IndexedPack",
    "decode_index",
    "encode_index",
]

INDEX_VERSION = 1
#: Cap on an index file's plaintext. Writers start a new file long before (see repository.py).
MAX_INDEX_SIZE = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class IndexedPack:
    """A pack, its size, and its blobs in pack order."""

    pack_id: Digest
    size: int
    entries: tuple[PackEntry, ...]


@dataclass(frozen=True, slots=True)
class IndexFile:
    """The contents of one index file."""

    packs: tuple[IndexedPack, ...]
    supersedes: tuple[Digest, ...] = field(default=())


def encode_index(index: IndexFile) -> bytes:
    """Canonical CBOR plaintext of an index file."""
    return cbor.encode_envelope(
        "pack-index",
        INDEX_VERSION,
        {
            "packs": [
                [
                    p.pack_id.raw,
                    p.size,
                    [[int(e.type), e.id.raw, e.offset, e.length, e.raw_length] for e in p.entries],
                ]
                for p in index.packs
            ],
            "supersedes": [d.raw for d in index.supersedes],
        },
    )


def _uint(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise Malformed(f"{what} is not an unsigned integer")
    return v


def _raw_id(v: object, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != DIGEST_SIZE:
        raise Malformed(f"{what} is not a {DIGEST_SIZE}-byte id")
    return v


def decode_index(plain: bytes, id_algorithm: str) -> IndexFile:
    """Parse and validate index plaintext; blob ids get ``id_algorithm``."""
    env = cbor.decode_envelope(
        plain, kind="pack-index", versions=(INDEX_VERSION, INDEX_VERSION), max_size=MAX_INDEX_SIZE
    )
    body = env.data
    if not isinstance(body, dict) or set(body) != {"packs", "supersedes"}:
        raise Malformed("index body must have exactly 'packs' and 'supersedes'")
    packs_raw, sup_raw = body["packs"], body["supersedes"]
    if not isinstance(packs_raw, list) or not isinstance(sup_raw, list):
        raise Malformed("index 'packs' and 'supersedes' must be lists")
    packs: list[IndexedPack] = []
    for prow in packs_raw:
        if not isinstance(prow, list) or len(prow) != 3 or not isinstance(prow[2], list):
            raise Malformed("index pack row is malformed")
        pack_id = Digest("sha256", _raw_id(prow[0], "pack id"))
        size = _uint(prow[1], "pack size")
        entries: list[PackEntry] = []
        end = 0
        for row in prow[2]:  # in ascending offset order, without overlap
            if not isinstance(row, list) or len(row) != 5:
                raise Malformed("index blob row is malformed")
            t = _uint(row[0], "blob type")
            if t not in (BlobType.DATA, BlobType.META):
                raise Malformed(f"unknown blob type {t}")
            offset = _uint(row[2], "blob offset")
            length = _uint(row[3], "blob length")
            raw_length = _uint(row[4], "blob raw length")
            if length == 0 or offset < end or offset + length > size:
                raise Malformed(
                    f"blob range {offset}+{length} overlaps or exceeds pack size {size}"
                )
            end = offset + length
            entries.append(
                PackEntry(
                    BlobType(t),
                    Digest(id_algorithm, _raw_id(row[1], "blob id")),
                    offset,
                    length,
                    raw_length,
                )
            )
        packs.append(IndexedPack(pack_id, size, tuple(entries)))
    supersedes = tuple(Digest("sha256", _raw_id(d, "superseded index id")) for d in sup_raw)
    return IndexFile(tuple(packs), supersedes)
