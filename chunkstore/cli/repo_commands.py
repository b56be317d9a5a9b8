"""Repository commands: ``init``, ``put``, ``copy``, ``get``, ``ls``, ``forget``, ``stats``,
``check``, ``prune``, ``unlock`` and ``key``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import click

from chunkstore import api
from chunkstore.chunker import ChunkerParams
from chunkstore.cli.context import Ctx, parse_size, pass_ctx
from chunkstore.config import DEFAULT_PACK_SIZE
from chunkstore.errors import EXIT_CODES, CheckFailed, UsageError
from chunkstore.fsutil import atomic_file
from chunkstore.lock import list_locks, remove_all_locks, remove_stale_locks

__all__ = [
    "check_cmd",
    "copy",
    "forget",
    "get",
    "init",
    "key",
    "ls_cmd",
    "prune_cmd",
    "put",
    "stats",
    "unlock",
]


@click.command()
@click.option(
    "--encrypt", is_flag=True, help="Encrypt (password from CHUNKSTORE_PASSWORD or prompt)."
)
@click.option("--chunk-min", default="16K", show_default=True, help="FastCDC minimum chunk size.")
@click.option("--chunk-avg", default="64K", show_default=True, help="FastCDC average chunk size.")
@click.option("--chunk-max", default="256K", show_default=True, help="FastCDC maximum chunk size.")
@click.option("--pack-size", default=str(DEFAULT_PACK_SIZE // (1 << 20)) + "M", show_default=True)
@click.option(
    "--compression-level",
    default=3,
    show_default=True,
    type=click.IntRange(1, 19),
    help="zstd level (3 is zstd's default; 1-2 are faster, slightly larger).",
)
@click.option(
    "--copy-keys-from",
    metavar="REPO",
    help="Take the master key and chunker parameters of REPO (password from "
    "CHUNKSTORE_FROM_PASSWORD), so that 'copy' can move records between the two.",
)
@click.pass_context
def init(
    ctx: click.Context,
    encrypt: bool,
    chunk_min: str,
    chunk_avg: str,
    chunk_max: str,
    pack_size: str,
    compression_level: int,
    copy_keys_from: str | None,
) -> None:
    """Create a repository."""
    c: Ctx = ctx.obj
    params = ChunkerParams(parse_size(chunk_min), parse_size(chunk_avg), parse_size(chunk_max))
    keys_from = None
    if copy_keys_from is not None:
        given = [
            f"--{n.replace('_', '-')}"
            for n in ("chunk_min", "chunk_avg", "chunk_max")
            if ctx.get_parameter_source(n) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            raise UsageError(
                f"{', '.join(given)} cannot be combined with --copy-keys-from (the chunker "
                "parameters are taken from that repository)"
            )
        keys_from = c.open_other(copy_keys_from, "CHUNKSTORE_FROM_PASSWORD", "Source password")
    try:
        password = c.password(confirm=True) if encrypt else None
        repo = api.init_repository(
            c.location,
            cache_dir=c.cache_dir,
            password=password,
            chunker=params,
            pack_size=parse_size(pack_size),
            compression_level=compression_level,
            remote=c.remote,
            hooks=c.hooks,
            keys_from=keys_from,
        )
    finally:
        if keys_from is not None:
            keys_from.close()
    with repo:
        repo_id = repo.config.repo_id.hex()
    info = {"repository": c.location, "id": repo_id, "encrypted": encrypt}
    c.emit(
        info, f"created {'encrypted ' if encrypt else ''}repository {repo_id[:12]} at {c.location}"
    )


@click.command()
@click.argument("name")
@click.argument("source", type=click.Path(allow_dash=True, dir_okay=False, exists=True))
@pass_ctx
def put(c: Ctx, name: str, source: str) -> None:
    """Store a file (or - for stdin) as the record NAME."""
    total = None if source == "-" else Path(source).stat().st_size
    with c.open() as repo, _source(source) as stream, c.bytes_progress(total, name) as tick:
        record_id, stats = api.put(repo, name, stream, progress=tick)
    info = {
        "id": record_id.hex,
        "name": name,
        "bytes": stats.bytes_in,
        "chunks": stats.chunks,
        "new_chunks": stats.new_chunks,
        "new_bytes": stats.new_bytes,
        "stored_bytes": stats.stored_bytes,
    }
    c.emit(
        info,
        f"stored {name}: {stats.bytes_in} bytes in {stats.chunks} chunks, "
        f"{stats.new_bytes} new, {stats.stored_bytes} written (record {record_id.short})",
    )


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--to",
    "to",
    required=True,
    metavar="REPO",
    help="Destination repository (password from CHUNKSTORE_TO_PASSWORD).",
)
@pass_ctx
def copy(c: Ctx, names: tuple[str, ...], to: str) -> None:
    """Copy records NAME... (every version) to another repository; only missing data moves."""
    with c.open() as src, c.open_other(to, "CHUNKSTORE_TO_PASSWORD", "Destination password") as dst:
        with c.bytes_progress(None, "copy") as tick:
            result = api.copy(src, dst, list(names), progress=tick)
    info = {
        "copied": result.copied,
        "already_present": result.present,
        "blobs": result.blobs,
        "bytes": result.bytes,
        "stored_bytes": result.stored_bytes,
    }
    c.emit(
        info,
        f"copied {len(result.copied)} record(s) to {to} ({len(result.present)} already there): "
        f"{result.blobs} blobs, {result.bytes} bytes, {result.stored_bytes} written",
    )


@contextmanager
def _source(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdin.buffer
    else:
        with open(path, "rb") as f:
            yield f


@click.command()
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-")
@pass_ctx
def get(c: Ctx, name: str, output: str) -> None:
    """Write the newest record NAME to a file (or stdout)."""
    with c.open() as repo:
        if output == "-":
            api.get(repo, name, sys.stdout.buffer)
            return
        # Published whole or not at all: temporary file, fsync, rename, directory fsync.
        with atomic_file(Path(output), tmp=Path(output + ".chunkstore-partial")) as f:
            n = api.get(repo, name, f)
    c.say(f"wrote {n} bytes to {output}")


@click.command("ls")
@pass_ctx
def ls_cmd(c: Ctx) -> None:
    """List records."""
    with c.open() as repo:
        rows = api.list_records(repo)
    text = "\n".join(
        f"{str(r['id'])[:12]}  {r['type']!s:<7} {r['size']!s:>12}  {r['name']}" for r in rows
    )
    c.emit(rows, text or "(no records)")


@click.command()
@click.argument("name")
@pass_ctx
def forget(c: Ctx, name: str) -> None:
    """Delete the records named NAME (space is reclaimed by prune)."""
    with c.open() as repo:
        ids = api.forget(repo, name)
    c.emit({"removed": ids}, f"removed {len(ids)} record(s) named {name}")


@click.command()
@pass_ctx
def stats(c: Ctx) -> None:
    """Show repository statistics."""
    with c.open() as repo:
        s = api.repository_stats(repo)
    files: dict[str, dict[str, int]] = s["files"]  # type: ignore[assignment]
    lines = [f"repository {s['repository']} ({'encrypted' if s['encrypted'] else 'plain'})"]
    lines += [f"  {k:<8} {v['count']:>8} files {v['bytes']:>14} bytes" for k, v in files.items()]
    blobs: dict[str, int] = s["blobs"]  # type: ignore[assignment]
    lines.append(
        f"  blobs: {blobs['data']} data, {blobs['meta']} metadata; "
        f"{s['raw_bytes']} bytes raw, {s['stored_bytes']} stored"
    )
    c.emit(s, "\n".join(lines))


@click.command("check")
@click.option("--read-data", is_flag=True, help="Read and verify every blob of every pack.")
@click.option("--rebuild-index", is_flag=True, help="Rebuild the pack index from pack headers.")
@pass_ctx
def check_cmd(c: Ctx, read_data: bool, rebuild_index: bool) -> None:
    """Verify the repository."""
    with c.open() as repo:
        if rebuild_index:
            n = api.rebuild_index(repo, progress=c.say)
            c.say(f"index rebuilt from {n} packs")
        report = api.check(repo, read_data=read_data, progress=c.say)
    text = "\n".join(
        [f"error: {e}" for e in report.errors]
        + [f"warning: {w}" for w in report.warnings]
        + [
            f"{'no errors' if report.ok else f'{len(report.errors)} error(s)'}: "
            f"{report.index_files} index files, {report.packs} packs, {report.blobs} blobs, "
            f"{report.records} records, {report.bytes_read} bytes read"
        ]
    )
    c.emit(report.to_json(), text)
    if not report.ok:
        sys.exit(EXIT_CODES[CheckFailed])


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@click.option(
    "--repack-fraction",
    default=0.3,
    show_default=True,
    type=float,
    help="Repack a pack when more than this share (0 to 1) of its bytes is unused.",
)
@pass_ctx
def prune_cmd(c: Ctx, dry_run: bool, repack_fraction: float) -> None:
    """Remove data no record references; repack mostly-unused packs."""
    with c.open() as repo:
        report = api.prune(repo, dry_run=dry_run, repack_fraction=repack_fraction, progress=c.say)
    c.emit(
        report.to_json(),
        f"{'would delete' if dry_run else 'deleted'} {report.packs_deleted} "
        f"pack(s), repacked {report.packs_repacked}, freed {report.bytes_freed} bytes",
    )


@click.command()
@click.option("--remove-all", is_flag=True, help="Also remove live and unreadable locks.")
@pass_ctx
def unlock(c: Ctx, remove_all: bool) -> None:
    """Remove stale locks (left by crashed processes)."""
    with c.open() as repo:
        n = remove_all_locks(repo.backend) if remove_all else len(remove_stale_locks(repo.backend))
        left = len(list_locks(repo.backend))
    c.emit({"removed": n, "remaining": left}, f"removed {n} lock(s), {left} remaining")


@click.group()
def key() -> None:
    """Manage key files of an encrypted repository."""


@key.command("add")
@pass_ctx
def key_add(c: Ctx) -> None:
    """Add a password (asked for twice; CHUNKSTORE_NEW_PASSWORD when not on a terminal)."""
    with c.open() as repo:
        new = os.environ.get("CHUNKSTORE_NEW_PASSWORD")
        if new is None:
            new = click.prompt("New password", hide_input=True, confirmation_prompt=True, err=True)
        key_id = repo.add_key(new.encode("utf-8"))
    c.emit({"key": key_id.hex}, f"added key {key_id.short}")
