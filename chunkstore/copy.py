"""Copying records between repositories: only the blobs the destination lacks travel.

    for each record to copy (every record with one of the names, oldest first):
        skip it when the destination already holds an equal record (name, time, type, body)
        walk the blobs it reaches in the source (reach.walk: record -> trees, recipes, lists)
        blobs the destination lacks -> loaded from the source (verified, one coalesced read per
            pack neighbourhood) -> saved in the destination (compressed and sealed there)
        destination.save_record(record)   (packs -> index -> record: the usual commit order)

Any two repositories work (local to registry and back), provided they name blobs alike: blob ids
are written inside trees, recipes and chunk lists, so they must not change on the way. That holds
when both repositories are unencrypted (SHA-256 ids) or both were made with the same keys
(``init --copy-keys-from``); anything else is refused before anything is written. Stored bytes are
never moved raw: the associated data of a sealed blob names its repository, so each blob is
opened with the source's keys and sealed again for the destination.

If the source misses or cannot decode a blob a record needs, that record is not copied (a clear
error; nothing of it is recorded in the destination). A crash leaves at most unreferenced packs
in the destination, which ``prune`` reclaims; running ``copy`` again completes the work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from chunkstore.blob import BlobType
from chunkstore.errors import CorruptMetadata, MissingObject, UsageError
from chunkstore.reach import walk
from chunkstore.repository import Repository
from index.ids import Digest
from index.record import Record

__all__ = ["CopyResult", "copy_records", "same_blob_names"]

_PROBE = b"chunkstore copy: do both repositories name blobs alike?"


@dataclass(slots=True)
class CopyResult:
    """What a copy did: records copied or already there, blobs and bytes that travelled."""

    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0
    stored_bytes: int = 0


def same_blob_names(src: Repository, dst: Repository) -> bool:
    """Whether both repositories give every blob the same id (same algorithm and MAC key)."""
    return src.config.id_algorithm == dst.config.id_algorithm and src.codec.blob_id(
        _PROBE
    ) == dst.codec.blob_id(_PROBE)


def _records(repo: Repository, names: Iterable[str]) -> list[tuple[Digest, Record]]:
    wanted = set(names)
    found = [(rid, rec) for rid, rec in repo.list_records() if rec.name in wanted]
    missing = wanted - {rec.name for _, rec in found}
    if missing:
        listed = ", ".join(sorted(repr(n) for n in missing))
        raise MissingObject(f"no record named {listed} in {repo.backend.location}")
    return found


def _same(a: Record, b: Record) -> bool:
    return (a.name, a.time_ns, a.type, a.body) == (b.name, b.time_ns, b.type, b.body)


def _needed(src: Repository, dst: Repository, record: Record) -> dict[Digest, set[BlobType]]:
    """The blobs ``record`` reaches in ``src`` that ``dst`` lacks, by id."""

    reach = walk([(record.name, record.body)], src.locations, src.load_at, src.load_many)
    if reach.missing or reach.damaged:
        first = next(iter({**reach.missing, **reach.damaged}))
        raise CorruptMetadata(
            f"record {record.name!r} needs blob {first.short}, which the source "
            f"{src.backend.location} is missing or cannot read; run 'chunkstore check' there"
        )
    need: dict[Digest, set[BlobType]] = {}
    for blob_type, blob_id in reach.blobs:
        if not dst.has_blob(blob_id, blob_type):
            need.setdefault(blob_id, set()).add(blob_type)
    return need


def copy_records(
    src: Repository,
    dst: Repository,
    names: Iterable[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> CopyResult:
    """Copy every record named in ``names`` from ``src`` to ``dst`` (see the module docstring).

    The caller holds the locks (a shared one on each repository). ``progress`` gets the
    plaintext size of each blob copied.
    """
    if not same_blob_names(src, dst):
        raise UsageError(
            f"{src.backend.location} and {dst.backend.location} name blobs differently (other "
            "keys or id algorithm), so records cannot be copied between them; create the "
            "destination with 'chunkstore init --copy-keys-from SOURCE'"
        )
    result = CopyResult()
    have = [rec for _, rec in dst.list_records()]
    written_before = dst.stats["bytes_written"]
    for _rid, record in _records(src, names):
        label = f"{record.name}@{record.time_ns}"
        if any(_same(record, other) for other in have):
            result.present.append(label)
            continue
        need = _needed(src, dst, record)
        for blob_id, plain in src.load_blobs(need):
            for blob_type in sorted(need[blob_id]):
                saved = dst.save_blob(blob_type, plain)
                if saved.id != blob_id:  # same_blob_names() rules this out; never record it
                    raise CorruptMetadata(
                        f"blob {blob_id.short} got id {saved.id.short} in the destination"
                    )
                result.blobs += 1
                result.bytes += len(plain)
            if progress is not None:
                progress(len(plain))
        dst.save_record(record)
        have.append(record)
        result.copied.append(label)
    result.stored_bytes = dst.stats["bytes_written"] - written_before
    return result
