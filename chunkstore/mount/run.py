"""``mount_image``: wire one mount together and run it until it is unmounted.

::

    open_image(repo, name, platform)          the image record: root tree id, root metadata
    BlobCache(cache_dir, namespace)          verified on-disk chunks, shared between mounts
    Fetcher(repo, cache, policy)              coalesced, concurrent, deadline-bounded fetches
        on_touch -> ProfileRecorder           (--record-profile)
    ExtentReader(fetcher)                     file reads and readahead
    ImageFS(fetcher, reader, root)            the FUSE adapter
    serve(...)                                mount; replay a profile (--prefetch); report ready;
                                              run until unmounted or SIGINT/SIGTERM

Nothing is read at mount time beyond the repository's config, index and the image record, so the
time to a usable mount does not depend on how many files the image has.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chunkstore.blobcache import BlobCache, cache_namespace
from chunkstore.browse import open_image
from chunkstore.mount.fetch import Fetcher, FetchPolicy
from chunkstore.mount.fs import ImageFS, MountOptions, serve
from chunkstore.mount.prefetch import ProfileRecorder, read_profile, replay_profile
from chunkstore.mount.reader import ExtentReader
from chunkstore.mount.stats import MountStats
from chunkstore.repository import Repository

__all__ = ["MountConfig", "mount_image"]


@dataclass(frozen=True, slots=True)
class MountConfig:
    """What ``chunkstore mount`` was asked for."""

    cache_dir: Path | None = None
    cache_size: int = 2 << 30
    policy: FetchPolicy = field(default_factory=FetchPolicy)
    options: MountOptions = field(default_factory=MountOptions)
    record_profile: Path | None = None
    prefetch: Path | None = None
    readahead: int = 32


def mount_image(
    repo: Repository,
    name: str,
    mountpoint: Path,
    config: MountConfig | None = None,
    *,
    platform: str | None = None,
    on_ready: Callable[[], None] = lambda: None,
    on_note: Callable[[str], None] = lambda _: None,
) -> MountStats:
    """Mount image ``name`` read-only at ``mountpoint`` until unmounted; returns the counters.

    ``on_note`` gets each note of the image record on what its merged view leaves out.
    """
    cfg = config or MountConfig()
    image = open_image(repo, name, platform)
    for note in image.view_notes:
        on_note(note)
    algorithm = repo.config.id_algorithm
    replay = read_profile(cfg.prefetch, algorithm) if cfg.prefetch is not None else []
    stats = MountStats()
    cache = None
    if cfg.cache_dir is not None and cfg.cache_size > 0:
        namespace = cache_namespace(algorithm, repo.config.repo_id)
        cache = BlobCache(cfg.cache_dir, namespace, repo.codec.blob_id, cfg.cache_size, stats=stats)
    recorder = ProfileRecorder(cfg.record_profile) if cfg.record_profile is not None else None
    fetcher = Fetcher(
        repo,
        cache,
        cfg.policy,
        stats=stats,
        on_touch=recorder.touch if recorder is not None else None,
    )
    reader = ExtentReader(fetcher, readahead=cfg.readahead)
    options = MountOptions(
        allow_other=cfg.options.allow_other,
        fsname="chunkstore:" + re.sub(r"[^\w.:/@+-]", "_", name),
        cache_timeout=cfg.options.cache_timeout,
        max_tree_cache=cfg.options.max_tree_cache,
    )
    ops = ImageFS(fetcher, reader, image.root, image.root_meta, options)

    def ready() -> None:
        if replay:
            replay_profile(fetcher, replay)
        on_ready()

    try:
        serve(ops, mountpoint, options, on_ready=ready)
    finally:
        fetcher.close()
        if recorder is not None:
            recorder.close()
    return stats
