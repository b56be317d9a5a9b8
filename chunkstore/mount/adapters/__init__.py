"""Views of stored images for the FUSE file system, one adapter per kind of view.

:mod:`chunkstore.mount.fs` turns a view into FUSE operations (it alone speaks pyfuse3); a view
says which entries exist and how their bytes are read. The merged image tree is the one view
today. This package is the home of the next: a per-layer view, each layer's own files (whiteouts
as the layer holds them, not applied) under a directory named by its digest, with the ``diff``,
``info`` and ``blob`` entries a container runtime's *additional layer store* (containers/storage)
expects, so that a runtime can start containers from a repository without pulling.

Adapters read through :mod:`chunkstore.mount.reader` and never import pyfuse3, trio or
:mod:`chunkstore.ranges` (``pyproject.toml``'s import contracts). Nothing lives here yet.
"""

from __future__ import annotations

__all__: list[str] = []
