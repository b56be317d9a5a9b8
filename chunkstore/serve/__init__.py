"""The distribution-API server: stored images served to ``docker pull``, ``podman`` and ``skopeo``.

:mod:`chunkstore.registry` is the client side of the OCI distribution API; this package will be
its server side, reading one repository: ``GET``/``HEAD`` of ``/v2/<name>/manifests/<reference>``
(the exact manifest and index bytes of an image record, by tag or digest), of
``/v2/<name>/blobs/<digest>`` (configs as stored; layers rebuilt from their recipes and
recompressed exactly, streamed with ranges where the compressor allows), and
``/v2/<name>/tags/list`` (image records). It will be read-only (pushes go through
``chunkstore backup docker://...``), take the repository's shared lock while a request reads, and
never hold a whole layer in memory.

It sits above :mod:`chunkstore.images` and :mod:`chunkstore.browse` and beside
:mod:`chunkstore.mount` in the ``layers`` import contract (``pyproject.toml``); only the command
line may import it. Nothing lives here yet.
"""

from __future__ import annotations

__all__: list[str] = []
