"""Container images: sources and targets (OCI layout, docker-archive, directories), tar streams."""

from __future__ import annotations

__all__: list[str] = []
