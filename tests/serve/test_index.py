"""Images other than the corpus' single-platform ones: an image index, and a layer that cannot
be given back exactly (backed up with --accept-new-digests)."""

from __future__ import annotations

import hashlib
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chunkstore import api
from chunkstore.images.backup import backup_image
from chunkstore.registry.mediatypes import OCI_INDEX
from index.ids import sha256
from tests.images.test_backup_restore import layer_tar, multi_platform_layout, write_image
from tests.producers import require
from tests.serve.conftest import running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    root = tmp_path_factory.mktemp("serve-index")
    index, digests = multi_platform_layout(root / "multi")
    tar = layer_tar({"a": b"x" * 10_000})
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    # A full flush in the middle: no compressor family writes that, so nothing reproduces it.
    blob = c.compress(tar[:4000]) + c.flush(zlib.Z_FULL_FLUSH) + c.compress(tar[4000:]) + c.flush()
    write_image(root / "odd", "v1", [tar], blobs=[blob])
    with api.init_repository(root / "repo", cache_dir=root / "cache") as repo:
        backup_image(repo, f"oci:{root / 'multi'}:multi", "multi:v1")
        backup_image(repo, f"oci:{root / 'odd'}:v1", "odd", keep_originals=False)
        backup_image(repo, f"oci:{root / 'odd'}:v1", "Not-A-Valid-Name")
    with running_server(root / "repo", root / "cache", root / "serve.log") as host:
        yield host, index, digests


def _skopeo(*args: str) -> str:
    done = subprocess.run([require("skopeo"), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_tag_names_the_original_index(
    server: tuple[str, bytes, dict[str, str]], tmp_path: Path
) -> None:
    host, index, digests = server
    with httpx.Client(base_url=f"http://{host}") as client:
        r = client.get("/v2/multi/manifests/v1")
        assert r.content == index
        assert r.headers["content-type"] == OCI_INDEX
        assert r.headers["docker-content-digest"] == str(sha256(index))
    out = tmp_path / "out"
    _skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{host}/multi:v1", f"oci:{out}:x")
    raw = _skopeo("inspect", "--raw", f"oci:{out}:x")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == str(sha256(index))
    arm = tmp_path / "arm"
    _skopeo(
        "--override-arch=arm64",
        "copy",
        "--src-tls-verify=false",
        f"docker://{host}/multi:v1",
        f"oci:{arm}:x",
    )
    raw = _skopeo("inspect", "--raw", f"oci:{arm}:x")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == digests["arm64"]


def test_a_layer_without_its_original_bytes_is_not_served(
    server: tuple[str, bytes, dict[str, str]],
) -> None:
    host, _, _ = server
    with httpx.Client(base_url=f"http://{host}") as client:
        manifest = client.get("/v2/odd/manifests/latest").json()
        digest = manifest["layers"][0]["digest"]
        r = client.get(f"/v2/odd/blobs/{digest}")
        assert r.status_code == 404
        error = r.json()["errors"][0]
        assert error["code"] == "BLOB_UNKNOWN"
        assert "--accept-new-digests" in error["message"]
        # The record whose name is no valid repository name is not served at all.
        assert client.get("/v2/_catalog").json() == {"repositories": ["multi", "odd"]}
