"""Format version 1 repositories kept in tests/data stay readable by this code."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest

from chunkstore import api

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from make_golden_repo import PASSWORD, content  # noqa: E402


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
