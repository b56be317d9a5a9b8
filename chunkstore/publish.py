"""Image tags in a registry repository: a human-facing tag per record name.

A registry repository keeps every file under its own ``_cs.*`` tag (backends/registry.py), which
is all the repository itself needs. On top of that, each record name gets an ordinary registry tag
whose OCI manifest has the record as its config and, as layers, every pack the record reaches plus
the index files (SPEC.md 10a). Registry users then see their images by name, a registry's garbage
collection and replication treat one image as one artifact, and tools such as ``skopeo copy`` or
``oras`` can move an image's whole slice of the repository.

    publish_record(record):   walk the record (reach.walk) -> packs it needs -> push the tag
    after forget NAME:        the tag goes when no record of that name is left, else it moves
                              to the newest remaining one
    after prune:              every tag is pushed again (packs were repacked and deleted)

Record names that are not valid registry tags are reported, never silently skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chunkstore.backends.base import FileType, Handle
from chunkstore.backends.registry import TAG_PREFIX, RegistryBackend
from chunkstore.errors import CorruptMetadata, UsageError
from chunkstore.reach import walk
from chunkstore.registry.reference import validate_tag
from chunkstore.repository import Repository
from index.ids import Digest
from index.record import Record

__all__ = ["PublishReport", "publish_names", "publish_record"]


@dataclass(slots=True)
class PublishReport:
    """Image tags pushed or deleted, and names that cannot be registry tags."""

    pushed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unpublishable: list[str] = field(default_factory=list)


def _backend(repo: Repository) -> RegistryBackend | None:
    backend = repo.backend
    return backend if isinstance(backend, RegistryBackend) else None


def _packs(repo: Repository, record: Record) -> list[Handle]:

    reach = walk([(record.name, record.body)], repo.locations, repo.load_at, repo.load_many)
    if reach.missing or reach.damaged:
        raise CorruptMetadata(
            f"record {record.name!r} is incomplete (missing or unreadable blobs); run "
            "'chunkstore check' before tagging it"
        )
    packs = {loc.pack_id for loc in reach.blobs.values()}
    return [Handle(FileType.PACK, p.hex) for p in sorted(packs, key=lambda d: d.raw)]


def _valid_tag(name: str) -> bool:
    try:
        validate_tag(name)
    except UsageError:
        return False
    return not name.startswith(TAG_PREFIX)


def publish_record(
    repo: Repository,
    record_id: Digest,
    record: Record,
    report: PublishReport,
    index_files: list[Handle] | None = None,
) -> None:
    """Push the image tag of ``record`` (stored as ``record_id``); nothing for local repositories.

    ``index_files``: the repository's index files, when the caller has listed them already.
    """
    backend = _backend(repo)
    if backend is None:
        return
    if not _valid_tag(record.name):
        report.unpublishable.append(record.name)
        return
    if index_files is None:
        index_files = _index_files(repo)
    backend.publish(
        record.name, Handle(FileType.RECORD, record_id.hex), index_files + _packs(repo, record)
    )
    report.pushed.append(record.name)


def _index_files(repo: Repository) -> list[Handle]:
    return [Handle(FileType.INDEX, i.hex) for i in sorted(repo.index_files(), key=lambda d: d.raw)]


def publish_names(repo: Repository, names: set[str] | None = None) -> PublishReport:
    """Bring the image tags of ``names`` (every record name when None) in line with the records.

    A name with records gets its newest record pushed; a name without records loses its tag
    (only when that tag is one of ours, pointing at a record).
    """
    report = PublishReport()
    backend = _backend(repo)
    if backend is None:
        return report
    newest: dict[str, tuple[Digest, Record]] = {}
    for rid, rec in repo.list_records():  # oldest first: the last one wins
        newest[rec.name] = (rid, rec)
    index_files: list[Handle] | None = None  # listed once, when a first tag is pushed
    for name in sorted(newest if names is None else names):
        if name in newest:
            rid, rec = newest[name]
            if index_files is None and _valid_tag(name):
                index_files = _index_files(repo)
            publish_record(repo, rid, rec, report, index_files)
        elif _valid_tag(name) and backend.published_record(name) is not None:
            backend.unpublish(name)
            report.deleted.append(name)
    return report
