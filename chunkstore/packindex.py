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

Readers refuse an index plaintext over :attr:`IndexLimits.max_bytes`, so writers never produce
one: :func:`split_index` cuts a complete index (prune, rebuild) into files of at most
:attr:`IndexLimits.max_blobs` blobs and ``max_bytes`` encoded bytes (the size is computed
exactly from the CBOR encoding, before anything is encoded or written); a pack is never split
across files. Every part of a split index supersedes the same old files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from chunkstore.blob import BlobType, PackEntry
from index import cbor
from index.errors import LimitExceeded, Malformed
from index.ids import DIGEST_SIZE, Digest

__all__ = [
    "INDEX_MAX_BLOBS",
    "INDEX_VERSION",
    "MAX_INDEX_SIZE",
    "IndexFile",
    "IndexLimits",
    "IndexedPack",
    "decode_index",
    "encode_index",
    "encoded_index_size",
    "split_index",
]

INDEX_VERSION = 1
#: Cap on an index file's plaintext; readers refuse larger ones.
MAX_INDEX_SIZE = 256 * 1024 * 1024
#: Blobs per index file writers aim for (restic's ``indexMaxBlobs``): about 3 MB of plaintext,
#: far below the cap, and quick to load.
INDEX_MAX_BLOBS = 50_000


@dataclass(frozen=True, slots=True)
class IndexLimits:
    """How big one index file may be: readers refuse more than ``max_bytes`` of plaintext,
    writers start a new file after ``max_blobs`` blobs (and before ``max_bytes``)."""

    max_bytes: int = MAX_INDEX_SIZE
    max_blobs: int = INDEX_MAX_BLOBS

    def __post_init__(self) -> None:
        """Refuse limits no index file could meet."""
        if self.max_bytes < 64 or self.max_blobs < 1:
            raise ValueError(
                f"unusable index limits: {self.max_bytes} bytes, {self.max_blobs} blobs"
            )


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


def _head(n: int) -> int:
    """Bytes of a CBOR head carrying the argument ``n`` (uint value, array or string length)."""
    return 1 if n < 24 else 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5 if n < 1 << 32 else 9


_ROW_ID = 2 + DIGEST_SIZE  # a 32-byte string: head + bytes


def _pack_row_size(p: IndexedPack) -> int:
    """Encoded bytes of one pack row ``[id, size, [[type, id, offset, length, raw], ...]]``."""
    entries = sum(
        1 + _head(int(e.type)) + _ROW_ID + _head(e.offset) + _head(e.length) + _head(e.raw_length)
        for e in p.entries
    )
    return 1 + _ROW_ID + _head(p.size) + _head(len(p.entries)) + entries


def _envelope_size(n_packs: int, n_superseded: int) -> int:
    """Encoded bytes of an index file around its pack rows (envelope, keys, list heads)."""
    # {"data": {"packs": [...], "supersedes": [...]}, "kind": "pack-index", "version": 1}
    fixed = len(encode_index(IndexFile(())))  # both lists empty (one-byte heads)
    return fixed - 2 + _head(n_packs) + _head(n_superseded) + n_superseded * _ROW_ID


def encoded_index_size(index: IndexFile) -> int:
    """``len(encode_index(index))``, computed without encoding."""
    rows = sum(_pack_row_size(p) for p in index.packs)
    return _envelope_size(len(index.packs), len(index.supersedes)) + rows


def split_index(
    packs: Sequence[IndexedPack], supersedes: Sequence[Digest], limits: IndexLimits
) -> list[IndexFile]:
    """``packs`` as index files within ``limits``, each superseding ``supersedes``.

    Packs keep their order and are never split. Always at least one file (an empty index still
    supersedes the old files). ``LimitExceeded`` if one pack alone cannot fit into a file.
    """
    sup = tuple(supersedes)
    # The envelope grows by at most 8 bytes when the pack count's head grows.
    budget = limits.max_bytes - _envelope_size(0, len(sup)) - 8
    out: list[IndexFile] = []
    part: list[IndexedPack] = []
    blobs = size = 0
    for p in packs:
        row = _pack_row_size(p)
        if row > budget:
            raise LimitExceeded(
                f"pack {p.pack_id.short} needs {row} bytes of index, more than the "
                f"{limits.max_bytes}-byte cap of an index file"
            )
        if part and (blobs + len(p.entries) > limits.max_blobs or size + row > budget):
            out.append(IndexFile(tuple(part), sup))
            part, blobs, size = [], 0, 0
        part.append(p)
        blobs += len(p.entries)
        size += row
    if part or not out:
        out.append(IndexFile(tuple(part), sup))
    return out


def _uint(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise Malformed(f"{what} is not an unsigned integer")
    return v


def _raw_id(v: object, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != DIGEST_SIZE:
        raise Malformed(f"{what} is not a {DIGEST_SIZE}-byte id")
    return v


def decode_index(plain: bytes, id_algorithm: str, *, max_size: int = MAX_INDEX_SIZE) -> IndexFile:
    """Parse and validate index plaintext (at most ``max_size`` bytes); blob ids get
    ``id_algorithm``."""
    env = cbor.decode_envelope(
        plain, kind="pack-index", versions=(INDEX_VERSION, INDEX_VERSION), max_size=max_size
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
