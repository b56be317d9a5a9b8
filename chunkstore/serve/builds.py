"""One rebuild per layer at a time, however many clients ask for it.

When a layer is not in the cache, the first request starts a *build*: a thread of its own runs
:func:`chunkstore.images.restore.layer_blob` into a cache spool (:class:`~.cache.Spool`),
hashing it, and commits the spool once the blob has its digest and size (else it is discarded
and the build fails). Every request for that layer while the build runs, the first included,
*follows* the spool file as it grows: it gets each piece as soon as the build wrote it, so time
to first byte stays that of one rebuild, and ten concurrent pulls cost one rebuild. A build does
not stop when its clients leave: the layer still ends up in the cache for the next pull.

What a follower yields is not trusted either: the caller hashes it again
(:func:`chunkstore.serve.blobs.layer_pieces`), and a failed build raises in every follower.
A follower opens the spool while holding the registry's lock, and a build leaves the registry
under that lock before it renames or deletes its spool, so a follower always has the file open.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import IO

from chunkstore.errors import IntegrityError
from chunkstore.images.restore import layer_blob
from chunkstore.lock import acquire_lock
from chunkstore.repository import Repository
from chunkstore.serve.cache import LayerCache, Spool
from index.image import LayerEntry

__all__ = ["SharedBuilds"]

log = logging.getLogger(__name__)

_PIECE_BYTES = 1 << 20
_LOCK_WAIT_S = 5.0


class _Build:
    """A rebuild in progress: how much of the spool is written, and how it ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        self.done = False
        self.error: BaseException | None = None
        self.changed = threading.Condition()


class SharedBuilds:
    """Builds of layers into ``cache``, shared by every request that wants the same layer."""

    def __init__(
        self,
        repo: Repository,
        cache: LayerCache,
        make: Callable[[Repository, LayerEntry], Iterator[bytes]] | None = None,
    ) -> None:
        """``make``: the blob's bytes (default: :func:`~chunkstore.images.restore.layer_blob`)."""
        self._repo = repo
        self._cache = cache
        self._make = make or (lambda repo, layer: layer_blob(repo, layer))
        self._lock = threading.Lock()
        self._builds: dict[str, _Build] = {}
        #: Builds started so far (tests and logs).
        self.started = 0

    def follow(self, layer: LayerEntry) -> Generator[bytes, None, None] | None:
        """The blob's bytes as the (possibly already running) build writes them, or None when
        the cache does not take this blob (then the caller rebuilds it alone)."""
        with self._lock:
            build = self._builds.get(layer.digest)
            if build is None and (done := self._cache.open(layer.digest, layer.size)):
                # A build that ended since the caller missed the cache: read its entry.
                finished = _Build(Path(done.name))
                finished.written, finished.done = layer.size, True
                return _follow(finished, done)
            if build is None:
                spool = self._cache.spool(layer.digest, layer.size)
                if spool is None:
                    return None
                build = _Build(spool.path)
                self._builds[layer.digest] = build
                self.started += 1
                thread = threading.Thread(
                    target=self._run,
                    args=(build, spool, layer),
                    name="chunkstore-serve-build",
                    daemon=True,
                )
                thread.start()
            f = open(build.path, "rb")  # closed by _follow
        return _follow(build, f)

    def _run(self, build: _Build, spool: Spool, layer: LayerEntry) -> None:
        algorithm, _, _ = layer.digest.partition(":")
        h = hashlib.new(algorithm)
        size = 0
        error: BaseException | None = None
        try:
            # The build holds a shared lock of its own: it may outlive the requests for it.
            with acquire_lock(self._repo.backend, exclusive=False, retry_for_s=_LOCK_WAIT_S):
                for piece in self._make(self._repo, layer):
                    h.update(piece)
                    spool.write(piece)
                    size += len(piece)
                    with build.changed:
                        build.written = size
                        build.changed.notify_all()
            digest = f"{algorithm}:{h.hexdigest()}"
            if size != layer.size or digest != layer.digest:
                error = IntegrityError(
                    f"layer {layer.digest} was rebuilt as {size} bytes hashing to {digest} (the "
                    f"manifest says {layer.size} bytes): run 'chunkstore check --read-data'"
                )
        except BaseException as exc:
            error = exc
        if error is not None:
            log.error("rebuilding layer %s failed: %s", layer.digest, error)
        with self._lock:
            del self._builds[layer.digest]  # followers from now on find the cache entry
        if error is None:
            spool.commit()
        else:
            spool.discard()
        with build.changed:
            build.error = error
            build.done = True
            build.changed.notify_all()


def _follow(build: _Build, f: IO[bytes]) -> Generator[bytes, None, None]:
    try:
        pos = 0
        while True:
            with build.changed:
                while build.written <= pos and not build.done:
                    build.changed.wait()
                written, done, error = build.written, build.done, build.error
            if error is not None:
                raise error
            if pos >= written:
                if done:
                    return
                continue
            piece = f.read(min(written - pos, _PIECE_BYTES))
            if not piece:
                raise IntegrityError(f"{build.path}: the spool ended before the build wrote it")
            pos += len(piece)
            yield piece
    finally:
        f.close()
