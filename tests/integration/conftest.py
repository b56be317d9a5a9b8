"""Fixtures shared by the integration tests (real registry, real tools)."""

from __future__ import annotations

from tests.integration.registry_fixture import auth_registry, registry

__all__ = ["auth_registry", "registry"]
