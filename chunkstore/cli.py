"""The ``chunkstore`` command line: a thin layer over :mod:`chunkstore.api`.

This is the only module that reads the environment, prompts, or writes to the terminal. Results go
to stdout (JSON with ``--json``); progress and errors go to stderr. Exit codes are listed in
``chunkstore --help`` and come from :data:`chunkstore.errors.EXIT_CODES`.

Environment: ``CHUNKSTORE_REPO`` (repository when ``--repo`` is absent), ``CHUNKSTORE_PASSWORD``,
``CHUNKSTORE_CACHE`` (cache directory), ``XDG_DATA_HOME``/``XDG_CACHE_HOME`` for the defaults.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from chunkstore import __version__, api, browse
from chunkstore.backends import RemoteOptions
from chunkstore.chunker import ChunkerParams
from chunkstore.config import DEFAULT_PACK_SIZE
from chunkstore.errors import EXIT_CODES, CheckFailed, ChunkstoreError, UsageError, exit_code_for
from chunkstore.images.backup import backup_image
from chunkstore.images.compression import DEFAULT_GZIP_LEVEL
from chunkstore.images.restore import restore_image
from chunkstore.lock import list_locks, remove_all_locks, remove_stale_locks
from chunkstore.publish import publish_names
from chunkstore.repository import Repository
from index.tree import Node

__all__ = ["main"]

_EXIT_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {code:>3}  {cls.__name__}" for cls, code in sorted(EXIT_CODES.items(), key=lambda kv: kv[1])
)


class _Ctx:
    def __init__(
        self, repo: str | None, cache_dir: str | None, as_json: bool, plain_http: bool = False
    ) -> None:
        env = os.environ
        data_home = Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        cache_home = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.location = repo or env.get("CHUNKSTORE_REPO") or str(data_home / "chunkstore" / "repo")
        self.cache_dir = Path(cache_dir or env.get("CHUNKSTORE_CACHE") or cache_home / "chunkstore")
        self.as_json = as_json
        self.remote = RemoteOptions(
            env=dict(env), plain_http=plain_http, crash_point=env.get("CHUNKSTORE_CRASH_AT")
        )
        self.err = Console(stderr=True)

    def password(
        self,
        *,
        confirm: bool = False,
        var: str = "CHUNKSTORE_PASSWORD",
        what: str = "Repository password",
    ) -> bytes:
        pw = os.environ.get(var)
        if pw is None:
            if not sys.stdin.isatty():
                raise UsageError(f"password needed: set {var} or run on a terminal")
            pw = click.prompt(what, hide_input=True, confirmation_prompt=confirm, err=True)
        return pw.encode("utf-8")

    def open_other(self, location: str, var: str, what: str) -> Repository:
        """Another repository (copy's destination, init's key source); password from ``var``."""
        return api.open_repository(
            location,
            cache_dir=self.cache_dir,
            password=lambda: self.password(var=var, what=what),
            remote=self.remote,
        )

    def open(self) -> Repository:
        return api.open_repository(
            self.location, cache_dir=self.cache_dir, password=self.password, remote=self.remote
        )

    def emit(self, value: Any, text: str) -> None:
        if self.as_json:
            click.echo(json.dumps(value, indent=2, sort_keys=True))
        else:
            click.echo(text)

    def warn(self, msg: str) -> None:
        click.echo(f"chunkstore: note: {msg}", err=True)

    def say(self, msg: str) -> None:
        if not self.as_json and sys.stderr.isatty():
            self.err.print(f"[dim]{msg}[/dim]")

    @contextmanager
    def bytes_progress(self, total: int | None, label: str) -> Iterator[Callable[[int], None]]:
        if not sys.stderr.isatty():
            yield lambda _n: None
            return
        columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=self.err, transient=True) as prog:
            task = prog.add_task(label, total=total)
            yield lambda n: prog.advance(task, n)


pass_ctx = click.make_pass_decorator(_Ctx)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ChunkstoreError as exc:
            click.echo(f"chunkstore: error: {exc}", err=True)
            ctx.exit(exit_code_for(exc))
        except OSError as exc:
            # A local file system error (missing input, permission, disk full): the message
            # names the file; the repository is consistent (writes are atomic).
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"chunkstore: error: {exc.strerror or exc}{where}", err=True)
            ctx.exit(1)


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        return int(t[: len(t) - len(unit)] if unit else t) * units[unit]
    except ValueError:
        raise click.BadParameter(f"not a size: {text!r} (use e.g. 64K, 16M)") from None


@click.group(cls=_Group, epilog=_EXIT_HELP)
@click.version_option(__version__, prog_name="chunkstore")
@click.option(
    "--repo",
    "-r",
    help="Repository: a path, or registry:HOST[:PORT]/NAME "
    "[env CHUNKSTORE_REPO; default: user data dir].",
)
@click.option("--cache-dir", help="Local cache directory [env CHUNKSTORE_CACHE].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Log warnings and details to stderr.")
@click.option(
    "--plain-http",
    is_flag=True,
    help="Talk to a registry over plain HTTP (always so for loopback hosts).",
)
@click.pass_context
def main(
    ctx: click.Context,
    repo: str | None,
    cache_dir: str | None,
    as_json: bool,
    verbose: bool,
    plain_http: bool,
) -> None:
    """chunkstore: a deduplicating, content-defined-chunking store for OCI container images."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    ctx.obj = _Ctx(repo, cache_dir, as_json, plain_http)


@main.command()
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
    c: _Ctx = ctx.obj
    params = ChunkerParams(_size(chunk_min), _size(chunk_avg), _size(chunk_max))
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
            pack_size=_size(pack_size),
            compression_level=compression_level,
            remote=c.remote,
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


@main.command()
@click.argument("name")
@click.argument("source", type=click.Path(allow_dash=True, dir_okay=False, exists=True))
@pass_ctx
def put(c: _Ctx, name: str, source: str) -> None:
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


@main.command()
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--to",
    "to",
    required=True,
    metavar="REPO",
    help="Destination repository (password from CHUNKSTORE_TO_PASSWORD).",
)
@pass_ctx
def copy(c: _Ctx, names: tuple[str, ...], to: str) -> None:
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


@main.command()
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-")
@pass_ctx
def get(c: _Ctx, name: str, output: str) -> None:
    """Write the newest record NAME to a file (or stdout)."""
    with c.open() as repo:
        if output == "-":
            api.get(repo, name, sys.stdout.buffer)
            return
        tmp = Path(output + ".chunkstore-partial")
        try:
            with open(tmp, "wb") as f:
                n = api.get(repo, name, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
    c.say(f"wrote {n} bytes to {output}")


@main.command("ls")
@pass_ctx
def ls_cmd(c: _Ctx) -> None:
    """List records."""
    with c.open() as repo:
        rows = api.list_records(repo)
    text = "\n".join(
        f"{str(r['id'])[:12]}  {r['type']!s:<7} {r['size']!s:>12}  {r['name']}" for r in rows
    )
    c.emit(rows, text or "(no records)")


@main.command()
@click.argument("name")
@pass_ctx
def forget(c: _Ctx, name: str) -> None:
    """Delete the records named NAME (space is reclaimed by prune)."""
    with c.open() as repo:
        ids = api.forget(repo, name)
    c.emit({"removed": ids}, f"removed {len(ids)} record(s) named {name}")


@main.command()
@pass_ctx
def stats(c: _Ctx) -> None:
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


@main.command("check")
@click.option("--read-data", is_flag=True, help="Read and verify every blob of every pack.")
@click.option("--rebuild-index", is_flag=True, help="Rebuild the pack index from pack headers.")
@pass_ctx
def check_cmd(c: _Ctx, read_data: bool, rebuild_index: bool) -> None:
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


@main.command("prune")
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@click.option("--repack-fraction", default=0.3, show_default=True, type=float)
@pass_ctx
def prune_cmd(c: _Ctx, dry_run: bool, repack_fraction: float) -> None:
    """Remove data no record references; repack mostly-unused packs."""
    with c.open() as repo:
        report = api.prune(repo, dry_run=dry_run, repack_fraction=repack_fraction, progress=c.say)
    c.emit(
        report.to_json(),
        f"{'would delete' if dry_run else 'deleted'} {report.packs_deleted} "
        f"pack(s), repacked {report.packs_repacked}, freed {report.bytes_freed} bytes",
    )


@main.command()
@click.option("--remove-all", is_flag=True, help="Also remove live and unreadable locks.")
@pass_ctx
def unlock(c: _Ctx, remove_all: bool) -> None:
    """Remove stale locks (left by crashed processes)."""
    with c.open() as repo:
        n = remove_all_locks(repo.backend) if remove_all else len(remove_stale_locks(repo.backend))
        left = len(list_locks(repo.backend))
    c.emit({"removed": n, "remaining": left}, f"removed {n} lock(s), {left} remaining")


@main.group()
def key() -> None:
    """Manage key files of an encrypted repository."""


@key.command("add")
@pass_ctx
def key_add(c: _Ctx) -> None:
    """Add a password (asked for twice; CHUNKSTORE_NEW_PASSWORD when not on a terminal)."""
    with c.open() as repo:
        new = os.environ.get("CHUNKSTORE_NEW_PASSWORD")
        if new is None:
            new = click.prompt("New password", hide_input=True, confirmation_prompt=True, err=True)
        key_id = repo.add_key(new.encode("utf-8"))
    c.emit({"key": key_id.hex}, f"added key {key_id.short}")


@main.command()
@click.argument("source")
@click.option("--tag", "-t", required=True, help="Record name for this image.")
@click.option(
    "--platform", help="Only this platform of a multi-platform image (os/arch[/variant])."
)
@pass_ctx
def backup(c: _Ctx, source: str, tag: str, platform: str | None) -> None:
    """Back up an image as TAG.

    SOURCE is oci:DIR[:REF], docker-archive:FILE[:REF], dir:PATH or
    docker://HOST[:PORT]/NAME[:TAG|@DIGEST] (a registry; --plain-http for HTTP).
    """
    with c.open() as repo, c.bytes_progress(None, tag) as tick, api.locked(repo, exclusive=False):
        result = backup_image(repo, source, tag, platform=platform, progress=tick, remote=c.remote)
        published = publish_names(repo, {tag})  # a registry repository shows TAG as a tag
    for name in published.unpublishable:
        c.warn(f"{name!r} is not a valid registry tag: the image is stored but has no image tag")
    info = {
        "id": result.record_id.hex,
        "tag": tag,
        "images": result.images,
        "layers": result.layers,
        "tar_bytes": result.tar_bytes,
        "new_bytes": result.new_bytes,
        "stored_bytes": result.stored_bytes,
        "reproducible_layers": result.reproducible_layers,
    }
    c.emit(
        info,
        f"backed up {source} as {tag}: {result.layers} layer(s), {result.tar_bytes} tar bytes, "
        f"{result.new_bytes} new, {result.stored_bytes} written (record {result.record_id.short})",
    )


@main.command()
@click.argument("name")
@click.argument("target")
@click.option(
    "--platform",
    help="The platform to restore (docker-archive: and dir: take one; docker:// may).",
)
@click.option("--force", is_flag=True, help="Write into a non-empty directory / over a file.")
@click.option(
    "--allow-special", is_flag=True, help="dir: create device nodes and keep setuid (root only)."
)
@click.option("--no-preserve-owner", is_flag=True, help="dir: do not restore uid/gid.")
@click.option(
    "--gzip-level",
    type=click.IntRange(1, 9),
    default=DEFAULT_GZIP_LEVEL,
    show_default=True,
    help="zlib level for gzip layers whose original compressor cannot be reproduced "
    "(6 gives about 5% smaller layers for 2.8x the CPU).",
)
@pass_ctx
def restore(
    c: _Ctx,
    name: str,
    target: str,
    platform: str | None,
    force: bool,
    allow_special: bool,
    no_preserve_owner: bool,
    gzip_level: int,
) -> None:
    """Restore image NAME into TARGET.

    TARGET is oci:DIR[:REF], docker-archive:FILE[:TAG], dir:PATH or
    docker://HOST[:PORT]/NAME[:TAG] (pushed to a registry; --plain-http for HTTP).
    """
    with c.open() as repo:
        result = restore_image(
            repo,
            name,
            target,
            platform=platform,
            force=force,
            allow_special=allow_special,
            preserve_owner=not no_preserve_owner,
            remote=c.remote,
            gzip_level=gzip_level,
        )
    for item in result.skipped:
        click.echo(f"chunkstore: skipped: {item}", err=True)
    for note in result.notes:
        click.echo(f"chunkstore: note: {note}", err=True)
    info = {
        "images": result.images,
        "layers": result.layers,
        "exact_layers": result.exact_layers,
        "manifest_rewritten": result.manifest_rewritten,
        "skipped": result.skipped,
    }
    c.emit(
        info,
        f"restored {name} to {target}: {result.layers} layer(s), "
        f"{result.exact_layers} with their original digest",
    )


_TYPE_CHARS = {0: "-", 1: "d", 2: "l", 3: "c", 4: "b", 5: "p"}


def _node_json(node: Node) -> dict[str, object]:
    return {
        "name": node.name.decode("utf-8", "surrogateescape"),
        "type": node.type.name.lower(),
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "size": node.size,
        "mtime_ns": node.mtime_ns,
        "target": node.target.decode("utf-8", "surrogateescape") or None,
    }


@main.command("tags")
@pass_ctx
def tags_cmd(c: _Ctx) -> None:
    """List image records (tags)."""
    with c.open() as repo:
        rows = [r for r in api.list_records(repo) if r["type"] == "image"]
    c.emit(rows, "\n".join(f"{str(r['id'])[:12]}  {r['name']}" for r in rows) or "(no images)")


@main.command("ls-image")
@click.argument("name")
@click.argument("path", default="/")
@click.option("--platform", help="Platform of a multi-platform image (os/arch[/variant]).")
@pass_ctx
def ls_image(c: _Ctx, name: str, path: str, platform: str | None) -> None:
    """List PATH (default /) inside image NAME."""
    with c.open() as repo:
        image = browse.open_image(repo, name, platform)
        nodes = browse.list_path(repo, image.root, path)
    lines = [
        f"{_TYPE_CHARS[int(n.type)]}{n.mode:04o} {n.uid:>5}:{n.gid:<5} {n.size:>12}  "
        + n.name.decode("utf-8", "surrogateescape")
        + (" -> " + n.target.decode("utf-8", "surrogateescape") if n.target else "")
        for n in nodes
    ]
    c.emit([_node_json(n) for n in nodes], "\n".join(lines))


@main.command("cat")
@click.argument("name")
@click.argument("path")
@click.option("--platform", help="Platform of a multi-platform image (os/arch[/variant]).")
@pass_ctx
def cat_cmd(c: _Ctx, name: str, path: str, platform: str | None) -> None:
    """Write the file PATH of image NAME to stdout (verified)."""
    with c.open() as repo:
        image = browse.open_image(repo, name, platform)
        node = browse.resolve_path(repo, image.root, path)
        if node is None:
            raise UsageError("the image root is a directory; give a file path")
        out = sys.stdout.buffer
        for data in browse.read_file(repo, node):
            out.write(data)
        out.flush()


@main.command("diff")
@click.argument("name1")
@click.argument("name2")
@pass_ctx
def diff_cmd(c: _Ctx, name1: str, name2: str) -> None:
    """Files added, removed and changed from image NAME1 to NAME2."""
    with c.open() as repo:
        a, b = browse.open_image(repo, name1), browse.open_image(repo, name2)
        changes = list(browse.diff_images(repo, a.root, b.root))
    marks = {"added": "+", "removed": "-", "changed": "M"}
    c.emit(
        [{"kind": ch.kind, "path": ch.path} for ch in changes],
        "\n".join(f"{marks[ch.kind]} {ch.path}" for ch in changes) or "(no differences)",
    )


@main.command("image-stats")
@click.argument("name")
@pass_ctx
def image_stats_cmd(c: _Ctx, name: str) -> None:
    """Logical, unique and stored bytes of image NAME."""
    with c.open() as repo:
        s = browse.image_stats(repo, browse.open_image(repo, name))
    c.emit(
        s,
        f"{name}: {s['layers']} layer(s), {s['logical_bytes']} bytes of layer tars "
        f"({s['compressed_bytes']} compressed), {s['unique_bytes']} bytes in "
        f"{s['blobs']} blobs, {s['stored_bytes']} stored",
    )


@main.command("mount")
@click.argument("name")
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("--platform", help="Platform of a multi-platform image (os/arch[/variant]).")
@click.option(
    "--cache-dir",
    "chunk_cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Chunk cache directory, shared between mounts [default: CACHE/chunks].",
)
@click.option("--cache-size", default="2G", show_default=True, help="Chunk cache size bound.")
@click.option("--allow-other", is_flag=True, help="Let other users (a container runtime) in.")
@click.option(
    "--record-profile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the blobs this run touches, in order, to FILE (JSON lines).",
)
@click.option(
    "--prefetch",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Fetch the blobs of a recorded profile in the background after mounting.",
)
@click.option(
    "--stats",
    "stats_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="On exit, write JSON counters (bytes fetched, requests, cache hits, ...) to FILE.",
)
@click.option(
    "--fetch-deadline",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds a read waits for its chunks before failing with EIO.",
)
@pass_ctx
def mount_cmd(
    c: _Ctx,
    name: str,
    mountpoint: Path,
    platform: str | None,
    chunk_cache: Path | None,
    cache_size: str,
    allow_other: bool,
    record_profile: Path | None,
    prefetch: Path | None,
    stats_file: Path | None,
    fetch_deadline: float,
) -> None:
    """Mount image NAME read-only at MOUNTPOINT; chunks are fetched as they are read.

    Runs in the foreground until unmounted (fusermount3 -u MOUNTPOINT) or interrupted
    (SIGINT/SIGTERM). A line on stdout says when the mount is ready.
    """
    from chunkstore.mount.fetch import FetchPolicy
    from chunkstore.mount.fs import MountOptions
    from chunkstore.mount.run import MountConfig, mount_image

    config = MountConfig(
        cache_dir=chunk_cache or c.cache_dir / "chunks",
        cache_size=_size(cache_size),
        policy=FetchPolicy(deadline=fetch_deadline),
        options=MountOptions(allow_other=allow_other),
        record_profile=record_profile,
        prefetch=prefetch,
    )

    def ready() -> None:
        c.emit(
            {"ready": True, "name": name, "mountpoint": str(mountpoint)},
            f"mounted {name} at {mountpoint} (ready)",
        )
        sys.stdout.flush()

    with c.open() as repo:
        stats = mount_image(repo, name, mountpoint, config, platform=platform, on_ready=ready)
    if stats_file is not None:
        tmp = stats_file.with_name(stats_file.name + ".tmp")
        tmp.write_text(json.dumps(stats.to_json(), indent=2, sort_keys=True) + "\n")
        tmp.replace(stats_file)
    c.say(f"unmounted {mountpoint}")


# --- analyze ------------------------------------------------------------------------------------


def _analyze_sizes(text: str) -> list[int]:
    return [_size(part) for part in text.split(",") if part.strip()]


def _analyze_tables(a: Any) -> list[Any]:
    """Rich tables of an :class:`chunkstore.analyze.Analysis` (exact bytes, human units beside)."""
    from rich.table import Table

    from chunkstore.analyze_report import human_bytes

    def b(n: int | None) -> str:
        return "n/a" if n is None else f"{n:,} ({human_bytes(n)})"

    t = a.totals
    totals = Table(title="Totals (file content; chunk figures exclude tar headers)")
    totals.add_column("figure")
    totals.add_column("bytes", justify="right")
    for label, value in [
        ("logical, layer storage", t.logical_file_bytes),
        ("tar bytes", t.tar_bytes),
        ("compressed layers", t.compressed_bytes),
        ("after layer dedup (files)", t.layer_level_file_bytes),
        ("after layer dedup (compressed)", t.layer_level_compressed_bytes),
        ("after file dedup", t.file_level_bytes),
        *[(f"after chunk dedup {human_bytes(s)}", v) for s, v in t.chunk_level_bytes.items()],
        ("stored estimate (zstd 3)", t.stored_estimate_bytes),
        ("merged view, logical", t.merged_file_bytes),
        ("merged view, after chunk dedup", t.merged_chunk_level_bytes),
    ]:
        totals.add_row(label, b(value))
    images = Table(title=f"Images (chunks of {human_bytes(a.primary_chunk_size)})")
    for col in ("image", "layers", "logical", "distinct", "unique", "shared", "merged", "hidden"):
        images.add_column(col, justify="left" if col == "image" else "right")
    for im in a.images:
        images.add_row(
            im.name,
            str(len(im.layers)),
            b(im.file_bytes),
            b(im.distinct_chunk_bytes),
            b(im.unique_chunk_bytes),
            b(im.shared_chunk_bytes),
            b(im.merged.file_bytes),
            b(im.merged.hidden_file_bytes),
        )
    layers = Table(title="Distinct layers")
    for col in ("layer", "compressed", "files", "unique", "shared", "images"):
        layers.add_column(col, justify="left" if col in ("layer", "images") else "right")
    for la in a.layers:
        layers.add_row(
            la.digest[:19],
            b(la.compressed_bytes),
            b(la.file_bytes),
            b(la.unique_chunk_bytes),
            b(la.shared_chunk_bytes),
            str(len(la.images)),
        )
    sim = Table(title="Shared chunk bytes between images (Jaccard)")
    sim.add_column("")
    for i in range(len(a.similarity.images)):
        sim.add_column(f"#{i + 1}", justify="right")
    for i, name in enumerate(a.similarity.images):
        row = [
            f"{human_bytes(a.similarity.shared_bytes[i][j])} ({a.similarity.jaccard[i][j]:.2f})"
            for j in range(len(a.similarity.images))
        ]
        sim.add_row(f"#{i + 1} {name}", *row)
    sweep = Table(title="Chunk-size sweep")
    for col in ("avg size", "unique chunks", "unique bytes", "ratio", "metadata", "total"):
        sweep.add_column(col, justify="right")
    for s in a.sizes:
        sweep.add_row(
            human_bytes(s.avg_size) + (" *" if s.primary else ""),
            f"{s.unique_chunks:,}",
            b(s.unique_bytes),
            f"{s.dedup_ratio:.2f}",
            b(s.metadata_bytes),
            b(s.total_bytes),
        )
    dups = Table(title="Top duplicated files")
    for col in ("path", "size", "copies", "redundant"):
        dups.add_column(col, justify="left" if col == "path" else "right")
    for f in a.top_files[:10]:
        dups.add_row(f.paths[0] if f.paths else f.sha256[:12], b(f.size), str(f.occurrences),
                     b(f.redundant_bytes))  # fmt: skip
    dirs = Table(title="Top directories by redundant bytes")
    for col in ("directory", "redundant", "files"):
        dirs.add_column(col, justify="left" if col == "directory" else "right")
    for d in a.top_directories[:10]:
        dirs.add_row(d.path, b(d.redundant_bytes), str(d.files))
    out = [totals, images, layers, sim, sweep, dups, dirs]
    if a.sequence is not None:
        seq = Table(title="Update cost: bytes to fetch from version N to N+1")
        for col in ("from → to", "layers (compressed)", "files", "chunks"):
            seq.add_column(col, justify="left" if col == "from → to" else "right")
        for c in a.sequence:
            seq.add_row(f"{c.source} → {c.target}", b(c.layer_compressed_bytes), b(c.file_bytes),
                        b(c.chunk_bytes))  # fmt: skip
        out.append(seq)
    return out


@main.command("analyze")
@click.argument("sources", nargs=-1, required=True)
@click.option("--json", "json_out", is_flag=True, help="Every figure as JSON on stdout.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML report with plots.")  # fmt: skip
@click.option("--chunk-sizes", default="16K,64K,256K,1M", show_default=True,
              help="FastCDC average sizes to sweep (min avg/4, max 4*avg).")  # fmt: skip
@click.option("--sequence", is_flag=True, help="SOURCES are versions in order: update costs.")
@click.option("--workers", type=click.IntRange(1, 64), help="Scanning processes [cores, <=4].")
@click.option("--compression-sample", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Compress 1 unique chunk in N for the stored estimate (1: all).")  # fmt: skip
@pass_ctx
def analyze_cmd(
    c: _Ctx,
    sources: tuple[str, ...],
    json_out: bool,
    html_file: Path | None,
    chunk_sizes: str,
    sequence: bool,
    workers: int | None,
    compression_sample: int,
) -> None:
    """What images share at layer, file and chunk level, and what a chunk size buys.

    SOURCE is oci:DIR[:REF], docker-archive:FILE[:REF], dir:PATH, docker://HOST/NAME[:TAG] or
    tag:NAME (an image record of --repo; only this form opens the repository).
    """
    from contextlib import ExitStack

    from chunkstore import analyze as analysis

    as_json = json_out or c.as_json
    with ExitStack() as stack:
        repo = stack.enter_context(c.open()) if any(s.startswith("tag:") for s in sources) else None
        progress = None
        if sys.stderr.isatty():
            prog = stack.enter_context(
                Progress(*Progress.get_default_columns(), console=c.err, transient=True)
            )
            task = prog.add_task("scanning layers", total=None)

            def progress(done: int, total: int) -> None:
                prog.update(task, completed=done, total=total)

        result = analysis.analyze(
            sources,
            chunk_sizes=_analyze_sizes(chunk_sizes),
            sequence=sequence,
            workers=workers or analysis.default_workers(),
            compression_sample=compression_sample,
            repo=repo,
            remote=c.remote,
            progress=progress,
        )
    if html_file is not None:
        from chunkstore.analyze_report import render_html

        html_file.write_text(render_html(result), encoding="utf-8")
        c.say(f"wrote {html_file}")
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
        return
    out = Console()
    for table in _analyze_tables(result):
        out.print(table)
    out.print(f"[dim]{result.totals.stored_estimate_method}; {result.seconds:.1f} s[/dim]")
