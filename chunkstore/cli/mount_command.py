"""The ``mount`` command: an image as a read-only FUSE file system, chunks fetched on demand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from chunkstore.cli.context import Ctx, parse_size, pass_ctx
from chunkstore.fsutil import write_file_atomically

__all__ = ["mount_cmd"]


@click.command("mount")
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
    c: Ctx,
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
        cache_size=parse_size(cache_size),
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
        stats = mount_image(
            repo, name, mountpoint, config, platform=platform, on_ready=ready, on_note=c.warn
        )
    if stats_file is not None:
        text = json.dumps(stats.to_json(), indent=2, sort_keys=True) + "\n"
        write_file_atomically(stats_file, text.encode())
    c.say(f"unmounted {mountpoint}")
