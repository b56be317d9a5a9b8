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


def test_layer_outcomes_are_reported(tmp_path: Path) -> None:
    import random
    import zlib

    rnd = random.Random(3)
    words = [rnd.randbytes(5).hex().encode() for _ in range(300)]
    tar = layer_tar({"text": b" ".join(rnd.choices(words, k=20_000))})
    odd = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 3, zlib.Z_FILTERED)
    foreign = odd.compress(tar) + odd.flush()
    write_image(tmp_path / "src", "v1", [tar], blobs=[foreign])
    runner = CliRunner()
    env = {"CHUNKSTORE_CACHE": str(tmp_path / "cache")}
    base = ["--repo", str(tmp_path / "repo")]

    def run(*args: str) -> str:
        result = runner.invoke(main, [*base, *args], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("init")
    kept = json.loads(run("--json", "backup", f"oci:{tmp_path / 'src'}:v1", "--tag", "k"))
    assert [d["outcome"] for d in kept["layer_details"]] == ["kept"]
    assert kept["kept_layers"] == 1 and kept["kept_bytes"] > 0
    loose = json.loads(
        run("--json", "backup", f"oci:{tmp_path / 'src'}:v1", "--tag", "n", "--accept-new-digests")
    )
    # The same blob is already stored (kept) under "k": it is reused, so it stays exact.
    assert [d["outcome"] for d in loose["layer_details"]] == ["kept"]
    tags = {t["name"]: t for t in json.loads(run("--json", "tags"))}
    assert tags["k"]["exact"] and tags["k"]["layers"] == [
        {"outcome": "kept", "reproduced_by": None}
    ]
    assert "1 kept" in run("tags")
    stats = json.loads(run("--json", "image-stats", "k"))
    (detail,) = stats["layer_details"]
    assert detail["outcome"] == "kept" and detail["kept_stored_bytes"] >= len(foreign) // 2
    assert "bytes kept" in run("image-stats", "k")


def test_accept_new_digests_stores_no_original(tmp_path: Path) -> None:
    import zlib

    tar = layer_tar({"a": b"hello " * 4000})
    odd = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 3, zlib.Z_FILTERED)
    write_image(tmp_path / "src", "v1", [tar], blobs=[odd.compress(tar) + odd.flush()])
    runner = CliRunner()
    env = {"CHUNKSTORE_CACHE": str(tmp_path / "cache")}
    base = ["--repo", str(tmp_path / "repo")]
    assert runner.invoke(main, [*base, "init"], env=env).exit_code == 0
    res = runner.invoke(
        main,
        [
            *base,
            "--json",
            "backup",
            f"oci:{tmp_path / 'src'}:v1",
            "-t",
            "n",
            "--accept-new-digests",
        ],
        env=env,
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert [d["outcome"] for d in out["layer_details"]] == ["new-digest"]
    assert out["kept_bytes"] == 0
    tags = json.loads(runner.invoke(main, [*base, "--json", "tags"], env=env).output)
    assert tags[0]["exact"] is False
