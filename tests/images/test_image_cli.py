"""The image commands of the CLI, end to end (in process)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner

from chunkstore.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_backup_restore import layer_tar, write_image


def test_backup_browse_restore_commands(tmp_path: Path) -> None:
    write_image(
        tmp_path / "src", "v1", [layer_tar({"etc/hostname": b"box\n", "bin/x": b"x" * 9000})]
    )
    write_image(
        tmp_path / "src", "v2", [layer_tar({"etc/hostname": b"other\n", "bin/x": b"x" * 9000})]
    )
    runner = CliRunner()
    env = {"CHUNKSTORE_CACHE": str(tmp_path / "cache")}
    base = ["--repo", str(tmp_path / "repo")]

    def run(*args: str) -> str:
        result = runner.invoke(main, [*base, *args], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("init")
    out = json.loads(run("--json", "backup", f"oci:{tmp_path / 'src'}:v1", "--tag", "one"))
    assert out["layers"] == 1 and out["tag"] == "one"
    run("backup", f"oci:{tmp_path / 'src'}:v2", "--tag", "two")
    assert [t["name"] for t in json.loads(run("--json", "tags"))] == ["one", "two"]
    assert "hostname" in run("ls-image", "one", "/etc")
    assert run("cat", "two", "/etc/hostname") == "other\n"
    assert run("diff", "one", "two").strip() == "M /etc/hostname"
    stats = json.loads(run("--json", "image-stats", "one"))
    assert stats["layers"] == 1 and stats["missing_blobs"] == 0
    run("restore", "one", f"oci:{tmp_path / 'out'}:one")
    assert (tmp_path / "out" / "index.json").exists()
    missing = runner.invoke(main, [*base, "cat", "one", "/nope"], env=env)
    assert missing.exit_code == 15 and "no '/nope'" in missing.output
    wrong = runner.invoke(main, [*base, "backup", "tar:/x", "--tag", "t"], env=env)
    assert wrong.exit_code == 2 and "unsupported image location" in wrong.output
