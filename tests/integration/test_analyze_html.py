"""The ``analyze --html`` report opens in headless Chromium and shows its plots."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from chunkstore.cli import main
from tests.images.test_backup_restore import layer_tar, write_image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed"),
]


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_html_report_renders_with_its_plots(tmp_path: Path) -> None:
    base = layer_tar({"usr/lib/a": b"a" * 20_000, "etc/b": bytes(range(256)) * 40})
    write_image(tmp_path / "oci", "v1", [base])
    write_image(tmp_path / "oci", "v2", [base, layer_tar({"app/c": b"c" * 9_000})])
    report = tmp_path / "report.html"
    out = CliRunner().invoke(
        main,
        [
            "analyze",
            f"oci:{tmp_path / 'oci'}:v1",
            f"oci:{tmp_path / 'oci'}:v2",
            "--sequence",
            "--workers",
            "1",
            "--html",
            str(report),
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    text = report.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    dom = _chromium("--dump-dom", report.as_uri()).stdout
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dom)
    assert len(images) == 6  # dedup levels, heatmap, per image, sweep, histogram, update cost
    assert all(len(b64) > 1000 for b64 in images)
    assert "Similarity heatmap" in dom and "Totals" in dom
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
