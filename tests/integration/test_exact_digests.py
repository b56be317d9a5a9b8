"""Exact digests for images made by the real producers: backup, restore, same manifest digest.

Layers are compressed by the tools that make images in the wild (Go's compress/gzip as docker and
buildkit use it, klauspost pgzip through skopeo, zstd through skopeo, GNU gzip, pigz, zlib); the
restored image must have the original manifest digest whatever the producer: reproduced when a
compressor family matches, kept (the original bytes stored) otherwise.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import pytest

from chunkstore.backends import RemoteOptions
from chunkstore.images.backup import backup_image
from chunkstore.images.oci_layout import OCILayout
from chunkstore.images.restore import restore_image
from chunkstore.registry.client import RegistryClient
from index.ids import Digest
from tests.images.test_backup_restore import new_repo
from tests.integration.registry_fixture import RunningRegistry
from tests.producers import gnu_gzip, go_gzip, oci_image, pigz, realistic_tar, require, zlib_gzip

pytestmark = pytest.mark.integration

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REMOTE = RemoteOptions()
_names = itertools.count()


def _skopeo(*args: str) -> str:
    done = subprocess.run([require("skopeo"), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _tars() -> list[bytes]:
    base = realistic_tar(2 << 20)
    return [base, realistic_tar(1 << 20, "/usr/share/zoneinfo"), b"\0" * 1024]


PRODUCERS = {
    "go-default": lambda t: go_gzip(t, -1),
    "go-1": lambda t: go_gzip(t, 1),
    "go-9": lambda t: go_gzip(t, 9),
    "gzip-6": lambda t: gnu_gzip(t, 6),
    "gzip-9": lambda t: gnu_gzip(t, 9),
    "pigz-6": lambda t: pigz(t, 6),
    "zlib-6": lambda t: zlib_gzip(t, 6),
    "zlib-9": lambda t: zlib_gzip(t, 9),
}


@pytest.mark.parametrize("producer", sorted(PRODUCERS))
def test_producer_round_trips_with_its_digest(producer: str, tmp_path: Path) -> None:
    tars = _tars()
    blobs = [PRODUCERS[producer](t) for t in tars]
    digest = oci_image(tmp_path / "src", "v1", tars, blobs, LAYER_GZIP)
    repo = new_repo(tmp_path)
    backed = backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "img")
    # Every producer here has a faithful family: nothing is kept.
    assert [r.outcome for r in backed.layer_reports] == ["reproduced"] * len(tars)
    assert backed.kept_bytes == 0
    restored = restore_image(repo, "img", f"oci:{tmp_path / 'out'}:v1")
    assert restored.exact_layers == len(tars) and not restored.manifest_rewritten
    (back,) = OCILayout(tmp_path / "out").resolve("v1")
    assert back.manifest_digest == digest
    for desc, blob in zip(back.layers, blobs, strict=True):
        assert (tmp_path / "out" / "blobs" / "sha256" / desc.digest.hex).read_bytes() == blob
    repo.close()


def _delete_everywhere(registry: RunningRegistry, name: str, tag: str) -> None:
    """Remove the image (manifest and its blobs) from the registry."""
    with RegistryClient(registry.host, name, plain_http=True, retries=1, backoff=0.01) as client:
        fetched = client.get_manifest(tag)
        doc = json.loads(fetched.data)
        client.delete_manifest(fetched.digest)
        for desc in [doc["config"], *doc["layers"]]:
            client.delete_blob(Digest.parse(desc["digest"]))
        assert client.head_blob(Digest.parse(doc["layers"][0]["digest"])) is None


@pytest.mark.parametrize(
    ("compress", "outcome"),
    [
        (["--dest-compress"], "reproduced"),  # klauspost pgzip
        (["--dest-compress", "--dest-compress-format", "zstd"], "reproduced"),  # klauspost zstd
        (
            ["--dest-compress", "--dest-compress-format", "zstd", "--dest-compress-level", "9"],
            "kept",  # klauspost zstd SpeedBestCompression: no encoder yet
        ),
    ],
)
def test_registry_round_trip_keeps_the_digest(
    compress: list[str], outcome: str, registry: RunningRegistry, tmp_path: Path
) -> None:
    """skopeo compresses (pgzip or zstd) into the registry; backup, delete, restore, same digest."""
    tars = _tars()
    oci_image(tmp_path / "plain", "v1", tars, tars, LAYER_TAR)
    name = f"exact/img{next(_names)}"
    ref = f"docker://{registry.host}/{name}:v1"
    # skopeo compresses into a layout (to a registry it would always use gzip), then pushes as is.
    _skopeo("copy", "-q", *compress, f"oci:{tmp_path / 'plain'}:v1", f"oci:{tmp_path / 'made'}:v1")
    made = f"oci:{tmp_path / 'made'}:v1"
    _skopeo("copy", "-q", "--preserve-digests", "--dest-tls-verify=false", made, ref)
    original = json.loads(_skopeo("inspect", "--tls-verify=false", ref))["Digest"]
    repo = new_repo(tmp_path)
    backed = backup_image(repo, ref, "img", remote=REMOTE)
    # The all-zero layer may be reproduced by another family with identical output.
    assert backed.layer_reports[0].outcome == outcome
    _delete_everywhere(registry, name, "v1")
    pushed = restore_image(repo, "img", ref, remote=REMOTE)
    assert pushed.exact_layers == len(tars) and not pushed.manifest_rewritten
    assert pushed.uploaded_blobs == len(tars) + 1  # every layer and the config went up again
    assert json.loads(_skopeo("inspect", "--tls-verify=false", ref))["Digest"] == original
    # A pull by digest works (skopeo verifies every blob it copies).
    at = f"docker://{registry.host}/{name}@{original}"
    _skopeo("copy", "-q", "--src-tls-verify=false", at, f"oci:{tmp_path / 'pulled'}:v1")
    (pulled,) = OCILayout(tmp_path / "pulled").resolve("v1")
    assert str(pulled.manifest_digest) == original
    repo.close()
