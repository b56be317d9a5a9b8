"""The Python API: what the CLI does, as plain functions (no terminal, no environment).

    >>> repo = init_repository("/tmp/repo", cache_dir=Path("/tmp/cache"))   # doctest: +SKIP
    >>> record_id, stats = put(repo, "notes", open("notes.txt", "rb"))       # doctest: +SKIP
    >>> get(repo, "notes", open("copy.txt", "wb"))                          # doctest: +SKIP

Every function that writes takes the right repository lock itself: ``put`` a shared one (writers
may run concurrently), ``prune`` and ``rebuild_index`` an exclusive one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from chunkstore import check as _check
from chunkstore import prune as _prune
from chunkstore import reindex as _reindex
from chunkstore.backends import BackendHooks, RemoteOptions, open_backend
from chunkstore.backends.base import FileType
from chunkstore.chunker import ChunkerParams
from chunkstore.config import DEFAULT_PACK_SIZE
from chunkstore.copy import CopyResult, copy_records
from chunkstore.errors import MissingObject, UsageError
from chunkstore.lock import acquire_lock
from chunkstore.publish import PublishReport, publish_names
from chunkstore.repository import PasswordSource, Repository
from chunkstore.streams import StoreStats, iter_stream, store_stream
from index.chunklist import StreamBody
from index.ids import Digest
from index.record import Record

__all__ = [
    "check",
    "copy",
    "forget",
    "get",
    "init_repository",
    "list_records",
    "locked",
    "open_repository",
    "prune",
    "publish",
    "put",
    "rebuild_index",
    "repository_stats",
]


def init_repository(
    location: str | Path,
    *,
    cache_dir: Path,
    password: bytes | None = None,
    chunker: ChunkerParams | None = None,
    pack_size: int = DEFAULT_PACK_SIZE,
    compression_level: int = 3,
    remote: RemoteOptions | None = None,
    keys_from: Repository | None = None,
    hooks: BackendHooks | None = None,
) -> Repository:
    """Create a repository at ``location`` (encrypted when a password is given).

    ``keys_from``: take that repository's master key and chunker parameters (for ``copy``).
    ``hooks``: what the caller adds to the backend (see :class:`BackendHooks`).
    """
    backend = open_backend(location, remote, hooks)
    try:
        return Repository.init(
            backend,
            cache_dir=cache_dir,
            password=password,
            chunker=chunker,
            pack_size=pack_size,
            compression_level=compression_level,
            keys_from=keys_from,
        )
    except BaseException:
        backend.close()
        raise


def open_repository(
    location: str | Path,
    *,
    cache_dir: Path,
    password: PasswordSource = None,
    remote: RemoteOptions | None = None,
    hooks: BackendHooks | None = None,
) -> Repository:
    """Open the repository at ``location`` (``remote``: how to reach a registry).

    ``hooks``: what the caller adds to the backend (see :class:`BackendHooks`).
    """
    backend = open_backend(location, remote, hooks)
    try:
        return Repository.open(backend, cache_dir=cache_dir, password=password)
    except BaseException:
        backend.close()  # a refused or missing repository leaves no open connections behind
        raise


@contextmanager
def locked(repo: Repository, *, exclusive: bool) -> Iterator[None]:
    """Hold a repository lock; the repository checks it before every commit step."""
    with acquire_lock(repo.backend, exclusive=exclusive) as lock:
        repo.lock = lock
        try:
            yield
        finally:
            repo.lock = None


def put(
    repo: Repository,
    name: str,
    stream: BinaryIO,
    *,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> tuple[Digest, StoreStats]:
    """Store a byte stream under the record ``name``."""
    if not name or len(name) > 4096:
        raise UsageError("a record name must be 1 to 4096 characters")
    with locked(repo, exclusive=False):
        body, stats = store_stream(repo, stream, workers=workers, progress=progress)
        record = Record(name=name, time_ns=time.time_ns(), type="stream", body=body.to_cbor())
        return repo.save_record(record), stats


def get(repo: Repository, name: str, out: BinaryIO) -> int:
    """Write the newest stream record ``name`` to ``out``; returns bytes written."""
    _, body = repo.find_body(name, "stream", StreamBody.from_cbor)
    n = 0
    for data in iter_stream(repo, body):
        out.write(data)
        n += len(data)
    return n


def list_records(repo: Repository) -> list[dict[str, object]]:
    """Every record as a JSON-ready dict, oldest first."""
    out: list[dict[str, object]] = []
    for rid, rec in repo.list_records():
        size = rec.body.get("size") if isinstance(rec.body, dict) else None
        out.append(
            {
                "id": rid.hex,
                "name": rec.name,
                "type": rec.type,
                "time_ns": rec.time_ns,
                "size": size,
            }
        )
    return out


def copy(
    src: Repository,
    dst: Repository,
    names: list[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> CopyResult:
    """Copy the records ``names`` (every version) from ``src`` to ``dst``; only missing blobs move.

    Both repositories are locked shared for the duration (a prune of either waits).
    """
    with locked(src, exclusive=False), locked(dst, exclusive=False):
        result = copy_records(src, dst, names, progress=progress)
        publish_names(dst, set(names))
        return result


def publish(repo: Repository, names: set[str] | None = None) -> PublishReport:
    """Update the image tags of a registry repository for ``names`` (all when None).

    Each record name is also an ordinary registry tag (see :mod:`chunkstore.publish`); local
    repositories have none and nothing happens.
    """
    with locked(repo, exclusive=False):
        return publish_names(repo, names)


def forget(repo: Repository, name: str) -> list[str]:
    """Delete every record named ``name`` (data stays until ``prune``); returns their ids.

    ``MissingObject`` when no record has that name (an id prefix is not a name).
    """
    with locked(repo, exclusive=False):
        ids = [rid for rid, rec in repo.list_records() if rec.name == name]
        if not ids:  # (never an id prefix: forget takes names only)
            raise MissingObject(
                f"no record named {name!r}; nothing was forgotten ('chunkstore ls' lists them)"
            )
        for rid in ids:
            repo.remove_record(rid)
        publish_names(repo, {name})
        return [rid.hex for rid in ids]


def repository_stats(repo: Repository) -> dict[str, object]:
    """Sizes and counts: files by type, blobs by type, raw vs stored bytes."""
    files: dict[str, dict[str, int]] = {}
    for t in FileType:
        if t is FileType.CONFIG:
            continue
        infos = list(repo.backend.list(t))
        files[t.value] = {"count": len(infos), "bytes": sum(i.size for i in infos)}
    blobs = {"data": 0, "meta": 0}
    raw = stored = 0
    for loc in repo.index:
        blobs[loc.entry.type.name.lower()] += 1
        raw += loc.entry.raw_length
        stored += loc.entry.length
    return {
        "repository": repo.backend.location,
        "id": repo.config.repo_id.hex(),
        "encrypted": repo.config.encrypted,
        "chunker": repo.config.chunker.to_cbor(),
        "chunker_table": repo.config.gear,
        "format_version": repo.config.version,
        "pack_size": repo.config.pack_size,
        "files": files,
        "blobs": blobs,
        "raw_bytes": raw,
        "stored_bytes": stored,
        "records": files[FileType.RECORD.value]["count"],
    }


def check(
    repo: Repository, *, read_data: bool = False, progress: Callable[[str], None] | None = None
) -> _check.CheckReport:
    """Verify the repository (see :mod:`chunkstore.check`)."""
    return _check.check_repository(repo, read_data=read_data, progress=progress)


def rebuild_index(repo: Repository, progress: Callable[[str], None] | None = None) -> int:
    """Rebuild the pack index from pack headers under an exclusive lock."""
    with locked(repo, exclusive=True):
        return _reindex.rebuild_index(repo, progress)


def prune(
    repo: Repository,
    *,
    dry_run: bool = False,
    repack_fraction: float = 0.3,
    progress: Callable[[str], None] | None = None,
) -> _prune.PruneReport:
    """Delete unreferenced data under an exclusive lock (see :mod:`chunkstore.prune`)."""
    with locked(repo, exclusive=True):
        report = _prune.prune(
            repo, dry_run=dry_run, repack_fraction=repack_fraction, progress=progress
        )
        if not dry_run:
            publish_names(repo)  # image tags must not keep deleted packs alive
        return report
