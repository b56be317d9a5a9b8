"""Test helpers shipped with chunkstore: fault injection and the backend contract suite.

``chunkstore.testing.faults`` wraps any backend to corrupt, truncate, fail, drop or crash on chosen
files; ``chunkstore.testing.backend_suite`` holds the tests every backend must pass. Neither is used
by production code paths; ``backend_suite`` needs pytest.
"""

from __future__ import annotations

__all__: list[str] = []
