"""Format version 1 repositories kept in tests/data stay readable by this code.

``repo-v1.tar.gz`` holds stream records (plain and encrypted), ``repo-v1-image.tar.gz`` an image
record (plain); both are made by ``tools/make_golden_repo.py``.
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.browse import open_image
from chunkstore.images.oci_layout import OCILayout
from chunkstore.images.restore import restore_image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from make_golden_repo import IMAGE, PASSWORD, content, image_layout  # noqa: E402


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("golden")
    with tarfile.open(ROOT / "tests" / "data" / "repo-v1.tar.gz") as tar:
        tar.extractall(out, filter="data")
    return out


@pytest.mark.parametrize(("name", "password"), [("plain", None), ("encrypted", PASSWORD)])
def test_golden_repository_reads(golden: Path, tmp_path: Path, name: str, password: bytes) -> None:
    alpha = content("alpha", 120_000)
    beta = alpha[:50_000] + b"inserted" + alpha[50_000:]
    repo = api.open_repository(golden / name, cache_dir=tmp_path, password=password)
    try:
        report = api.check(repo, read_data=True)
        assert report.ok, report.errors
        assert not report.warnings
        assert report.records == 2
        assert repo.config.encrypted is (password is not None)
        for record, expected in (("alpha", alpha), ("beta", beta)):
            out = io.BytesIO()
            api.get(repo, record, out)
            assert out.getvalue() == expected
    finally:
        repo.close()


def test_golden_image_record_reads(tmp_path: Path) -> None:
    """repo-v1-image.tar.gz: the image record of image_layout's image restores bit for bit."""
    with tarfile.open(ROOT / "tests" / "data" / "repo-v1-image.tar.gz") as tar:
        tar.extractall(tmp_path / "golden", filter="data")
    image_layout(tmp_path / "source")
    (source,) = OCILayout(tmp_path / "source").resolve(IMAGE)
    repo = api.open_repository(tmp_path / "golden" / "image", cache_dir=tmp_path / "cache")
    try:
        assert repo.config.version == 1 and not repo.config.encrypted
        report = api.check(repo, read_data=True)
        assert report.ok, report.errors
        assert not report.warnings
        assert [r["name"] for r in api.list_records(repo)] == [IMAGE]
        entry = open_image(repo, IMAGE)
        # The three ways a layer is kept: reproduced by a compressor family, kept as the
        # original compressed stream, not compressed.
        assert [layer.compression for layer in entry.layers] == ["gzip", "gzip", "none"]
        assert entry.layers[0].reproduce is not None and entry.layers[0].original is None
        assert entry.layers[1].reproduce is None and entry.layers[1].original is not None
        assert entry.manifest == source.manifest_bytes
        restore_image(repo, IMAGE, f"oci:{tmp_path / 'out'}:{IMAGE}")
    finally:
        repo.close()
    out = OCILayout(tmp_path / "out")
    (restored,) = out.resolve(IMAGE)
    assert restored.manifest_digest == source.manifest_digest
    assert restored.config_bytes == source.config_bytes
    for layer in source.layers:
        assert (tmp_path / "out" / "blobs" / "sha256" / layer.digest.hex).read_bytes() == (
            tmp_path / "source" / "blobs" / "sha256" / layer.digest.hex
        ).read_bytes()
