"""``chunkstore serve`` over a repository that lives in a registry (``registry:HOST/NAME``)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.images.backup import backup_image
from index.ids import sha256
from tests.images.test_backup_restore import multi_platform_layout
from tests.integration.registry_fixture import RunningRegistry, registry
from tests.producers import require
from tests.serve.conftest import running_server

__all__ = ["registry"]

pytestmark = pytest.mark.integration


def test_pull_from_a_repository_in_a_registry(registry: RunningRegistry, tmp_path: Path) -> None:
    index, _ = multi_platform_layout(tmp_path / "src")
    location = f"registry:{registry.host}/serve-repo"
    with api.init_repository(location, cache_dir=tmp_path / "cache") as repo:
        backup_image(repo, f"oci:{tmp_path / 'src'}:multi", "multi:v1")
    with running_server(location, tmp_path / "cache2", tmp_path / "serve.log") as host:
        out = tmp_path / "out"
        source = f"docker://{host}/multi:v1"
        done = subprocess.run(
            [require("skopeo"), "copy", "--all", "--src-tls-verify=false", source, f"oci:{out}:x"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    raw = subprocess.run(
        [require("skopeo"), "inspect", "--raw", f"oci:{out}:x"],
        capture_output=True,
        check=True,
    ).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == str(sha256(index))
