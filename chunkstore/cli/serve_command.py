"""The ``serve`` command: the repository's images to any OCI client (pull side, read-only)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from chunkstore.cli.context import Ctx, parse_size, pass_ctx
from chunkstore.errors import UsageError

__all__ = ["serve_cmd"]


@click.command("serve")
@click.option(
    "--listen",
    default="127.0.0.1:5000",
    show_default=True,
    help="HOST:PORT to listen on (port 0: a free port, printed on the ready line).",
)
@click.option(
    "--insecure-http",
    is_flag=True,
    help="Allow plain HTTP on an address other than loopback (there is no TLS yet).",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="One line per request on stderr.",
)
@click.option(
    "--cache-dir",
    "blob_cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where rebuilt layers are kept for repeated pulls [default: CACHE/serve-layers].",
)
@click.option(
    "--cache-size",
    default="2G",
    show_default=True,
    help="Bound of the rebuilt-layer cache (0: no cache).",
)
@pass_ctx
def serve_cmd(
    c: Ctx,
    listen: str,
    insecure_http: bool,
    access_log: bool,
    blob_cache: Path | None,
    cache_size: str,
) -> None:
    """Serve the repository's images over the OCI distribution API (pull only).

    A record NAME:TAG is pulled as HOST:PORT/NAME:TAG, a record NAME as HOST:PORT/NAME:latest,
    with its original manifest digest (layers are rebuilt exactly as they are sent, and kept in
    a bounded cache for the next pull, verified again when read). Runs until
    SIGINT/SIGTERM; a line on stdout says when requests are taken.
    """
    from chunkstore.serve.run import ServeConfig, is_loopback, parse_listen, serve

    host, port = parse_listen(listen)
    if not is_loopback(host) and not insecure_http:
        raise UsageError(
            f"--listen {listen}: plain HTTP is served on loopback only; add --insecure-http to "
            "serve it on other addresses (anyone reaching the port can pull every image)"
        )
    config = ServeConfig(
        host=host,
        port=port,
        access_log=access_log,
        cache_dir=blob_cache or c.cache_dir / "serve-layers",
        cache_bytes=parse_size(cache_size),
    )

    def ready(url: str) -> None:
        c.emit({"ready": True, "url": url}, f"serving {c.location} at {url} (ready)")
        sys.stdout.flush()

    with c.open() as repo:
        serve(repo, config, on_ready=ready)
    c.say("server stopped")
