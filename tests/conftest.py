"""Shared pytest configuration: hypothesis profiles, and the Go ``archive/tar`` oracle.

``ci`` (the default) is deterministic: derandomized, no example database, no deadline. ``deep`` runs
far more examples for occasional long fuzzing runs. Pick one with ``HYPOTHESIS_PROFILE=deep``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from tests.oracles.tar_oracles import GoLister, build_go_lister

settings.register_profile(
    "ci", derandomize=True, max_examples=100, deadline=None, database=None, print_blob=True
)
settings.register_profile("deep", parent=settings.get_profile("ci"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def go_tar(tmp_path_factory: pytest.TempPathFactory) -> GoLister:
    """Go's ``archive/tar`` as a tar oracle (tests/oracles/golist, built once per session).

    Without a Go toolchain the tests using it are skipped, or fail when ``CI=true``.
    """
    lister = build_go_lister(tmp_path_factory.mktemp("golist"))
    if lister is None:
        message = "needs the Go toolchain (go) to build the archive/tar oracle"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return lister
