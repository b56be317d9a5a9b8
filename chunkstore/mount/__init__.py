"""Lazy, read-only mounts of stored images (``chunkstore mount``).

The read path, from a FUSE request to verified bytes::

    fs.py       pyfuse3 adapter: inodes, attributes, one to_errno(); the only FUSE/trio import
    reader.py   ExtentReader: (file, offset, size) -> chunk ids by bisect -> bytes; readahead
    fetch.py    Fetcher: cache first, then coalesced, concurrent, deadline-bounded repository reads
    (chunkstore.blobcache.BlobCache: the bounded, verified on-disk cache the chunks go to)
    prefetch.py access profiles: record the chunks a run touched, replay them after the next mount
    stats.py    counters written by ``--stats``
    run.py      mount_image(): wires the above together for one image and serves it

Everything below ``fs.py`` is plain Python over the :class:`~chunkstore.repository.Repository`
API, testable without FUSE, and works the same for local and registry repositories.
"""

from __future__ import annotations

__all__: list[str] = []
