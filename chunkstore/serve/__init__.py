"""The distribution-API server: stored images served to ``docker pull``, ``podman`` and ``skopeo``.

:mod:`chunkstore.registry` is the client side of the OCI distribution API; this package is its
server side, reading one repository (``chunkstore serve``; SPEC.md section 9d says how record
names become NAME:TAG). Pull side only, for now: ``GET``/``HEAD`` of
``/v2/<name>/manifests/<reference>`` (the exact manifest and index bytes of an image record, by
tag or digest), of ``/v2/<name>/blobs/<digest>`` (configs as stored; layers rebuilt from their
recipes and recompressed exactly, streamed from the first byte, one ``Range`` at a time, verified
against their digest before the last byte goes out), ``/v2/<name>/tags/list`` and
``/v2/_catalog``. A layer response holds the repository's shared lock, and no layer is ever held
whole in memory.

Modules, top down: :mod:`.run` (uvicorn, the listening socket, the ready line, shutdown),
:mod:`.app` (the ASGI application: routes, errors, streaming), :mod:`.blobs` (ranges, layer bytes
verified), :mod:`.catalog` (repositories, tags, manifests and blobs from the image records),
:mod:`.cache` (rebuilt layers kept on disk, bounded, verified on every hit) and :mod:`.names`
(record names as NAME:TAG). It sits above :mod:`chunkstore.images` and
:mod:`chunkstore.browse` and beside :mod:`chunkstore.mount` in the ``layers`` import contract
(``pyproject.toml``); only the command line imports it, and only :mod:`.run` imports uvicorn.
"""

from __future__ import annotations

__all__: list[str] = []
