"""Fixtures of the reliability tests: the real registry (from tests/integration) and fault proxies.

Hypothesis profiles (``ci`` by default, ``deep`` for long fuzzing runs with ``tools/soak``) are
registered in ``tests/conftest.py`` and chosen with ``HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

from tests.integration.registry_fixture import auth_registry, registry

__all__ = ["auth_registry", "registry"]
