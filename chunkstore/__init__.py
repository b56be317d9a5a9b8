"""chunkstore: a content-defined-chunking, deduplicating store for OCI container images."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
