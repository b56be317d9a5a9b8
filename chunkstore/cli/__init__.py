"""The ``chunkstore`` command line: a thin layer over :mod:`chunkstore.api`.

This package is the only code that reads the environment, prompts, or writes to the terminal.
Results go to stdout (JSON with ``--json``); progress and errors go to stderr. Exit codes are
listed in ``chunkstore --help`` and come from :data:`chunkstore.errors.EXIT_CODES`.

Environment: ``CHUNKSTORE_REPO`` (repository when ``--repo`` is absent), ``CHUNKSTORE_PASSWORD``,
``CHUNKSTORE_CACHE`` (cache directory), ``XDG_DATA_HOME``/``XDG_CACHE_HOME`` for the defaults.

Modules: :mod:`.context` (shared state and helpers), :mod:`.repo_commands` (records, keys,
maintenance), :mod:`.image_commands` (container images), :mod:`.mount_command`,
:mod:`.analyze_command` and :mod:`.serve_command`. The commands are registered on :func:`main` below.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from chunkstore import __version__
from chunkstore.cli.analyze_command import analyze_cmd
from chunkstore.cli.context import Ctx
from chunkstore.cli.image_commands import (
    backup,
    cat_cmd,
    diff_cmd,
    image_stats_cmd,
    ls_image,
    restore,
    tags_cmd,
)
from chunkstore.cli.mount_command import mount_cmd
from chunkstore.cli.repo_commands import (
    check_cmd,
    copy,
    forget,
    get,
    init,
    key,
    ls_cmd,
    prune_cmd,
    put,
    stats,
    unlock,
)
from chunkstore.cli.serve_command import serve_cmd
from chunkstore.errors import EXIT_CODES, ChunkstoreError, exit_code_for

__all__ = ["main"]

_EXIT_HELP = "\b\nExit codes:\n" + "\n".join(
    f"  {code:>3}  {cls.__name__}" for cls, code in sorted(EXIT_CODES.items(), key=lambda kv: kv[1])
)


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
    ctx.obj = Ctx(repo, cache_dir, as_json, plain_http)


for _command in (
    init, put, copy, get, ls_cmd, forget, stats, check_cmd, prune_cmd, unlock, key,
    backup, restore, tags_cmd, ls_image, cat_cmd, diff_cmd, image_stats_cmd,
    mount_cmd,
    analyze_cmd,
    serve_cmd,
):  # fmt: skip
    main.add_command(_command)
