"""The image commands of the CLI, end to end (in process)."""

from __future__ import annotations

import io
import json
import os
import pty
import random
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result

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


def _cli(tmp_path: Path) -> Callable[..., Result]:
    """``run(*args)``: the CLI in process on ``tmp_path/repo`` (checked to exit 0)."""
    runner = CliRunner()
    env = {"CHUNKSTORE_CACHE": str(tmp_path / "cache")}

    def run(*args: str) -> Result:
        result = runner.invoke(
            main, ["--repo", str(tmp_path / "repo"), *args], env=env, catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        return result

    return run


def _tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, mode
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    if kind == tarfile.SYMTYPE:
        info.linkname = "hostname"
    return info


def test_dir_restore_says_what_it_wrote_and_each_skipped_entry_once(tmp_path: Path) -> None:
    tar = _tar(
        [
            (_entry("dev/", tarfile.DIRTYPE, 0o755), b""),
            (_entry("dev/null", tarfile.CHRTYPE, 0o666), b""),
            (_entry("etc/", tarfile.DIRTYPE, 0o755), b""),
            (_entry("etc/hostname"), b"box\n"),
            (_entry("etc/motd"), b"hello\n"),
            (_entry("etc/link", tarfile.SYMTYPE), b""),
        ]
    )
    write_image(tmp_path / "src", "v1", [tar])
    run = _cli(tmp_path)
    run("init")
    run("backup", f"oci:{tmp_path / 'src'}:v1", "--tag", "img")
    out = run("restore", "img", f"dir:{tmp_path / 'root'}")
    assert (tmp_path / "root" / "etc" / "motd").read_bytes() == b"hello\n"
    # What a directory restore did: entries written, not layers and digests.
    assert "layer" not in out.stdout and "digest" not in out.stdout
    assert f"restored img to dir:{tmp_path / 'root'}: 2 files (10 bytes)" in out.stdout
    assert "2 directories, 1 symlink, 1 entry not created" in out.stdout
    # The skipped device node is named once on stderr, not once alone and again in the note.
    assert out.stderr.count("dev/null") == 1, out.stderr
    assert "chunkstore: note: 1 entry was not created: dev/null" in out.stderr
    info = json.loads(run("--json", "restore", "img", f"dir:{tmp_path / 'again'}").stdout)
    assert info["files"] == 2 and info["bytes"] == 10 and len(info["skipped"]) == 1


def _last_progress(raw: bytes) -> str:
    """The last ``done/total unit`` that rich drew (ANSI escapes stripped)."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode("utf-8", "replace"))
    shown = re.findall(r"[0-9.]+/(?:\?|[0-9.]+) (?:bytes|kB|MB|GB)", text)
    assert shown, text[-2000:]
    return str(shown[-1])


def test_backup_progress_bar_knows_its_total(tmp_path: Path) -> None:
    """On a terminal, the bar of an image backup shows done/total (the manifest's layer sizes)."""
    rnd = random.Random(5)
    words = [rnd.randbytes(4).hex().encode() for _ in range(2000)]
    tars = [layer_tar({f"f{i}": b" ".join(rnd.choices(words, k=60_000))}) for i in range(2)]
    write_image(tmp_path / "src", "v1", tars)
    _cli(tmp_path)("init")
    primary, secondary = pty.openpty()
    env = {
        **os.environ,
        "CHUNKSTORE_CACHE": str(tmp_path / "cache"),
        "COLUMNS": "160",
        "TERM": "xterm",
    }
    env.pop("CHUNKSTORE_PASSWORD", None)
    with subprocess.Popen(
        [
            *(sys.executable, "-m", "chunkstore", "--repo", str(tmp_path / "repo")),
            *("backup", f"oci:{tmp_path / 'src'}:v1", "--tag", "t"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env=env,
    ) as child:
        os.close(secondary)
        raw = b""
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            raw += data
        os.close(primary)
        assert child.wait(timeout=120) == 0, raw.decode("utf-8", "replace")[-2000:]
    done, _, total = _last_progress(raw).partition("/")
    assert not total.startswith("?"), raw.decode("utf-8", "replace")[-2000:]
    assert done == total.split()[0]
