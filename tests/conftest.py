"""Shared pytest configuration: hypothesis profiles.

``ci`` (the default) is deterministic: derandomized, no example database, no deadline. ``deep`` runs
far more examples for occasional long fuzzing runs. Pick one with ``HYPOTHESIS_PROFILE=deep``.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile(
    "ci", derandomize=True, max_examples=100, deadline=None, database=None, print_blob=True
)
settings.register_profile("deep", parent=settings.get_profile("ci"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
