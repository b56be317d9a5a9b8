"""The command line: commands, JSON output, exit codes and error messages."""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from chunkstore.backends.base import FileType, Handle
from chunkstore.backends.local import LocalBackend
from chunkstore.cli import main
from chunkstore.errors import EXIT_CODES, CheckFailed
from chunkstore.lock import acquire_lock, list_locks

PASSWORD = "cli test password"
SMALL = ["--chunk-min", "1K", "--chunk-avg", "4K", "--chunk-max", "16K", "--pack-size", "64K"]
A = random.Random(1).randbytes(150_000)
B = random.Random(2).randbytes(150_000)


class Cli:
    """Runs ``chunkstore --repo <repo> ...`` in-process with a private cache and password."""

    def __init__(self, tmp: Path, password: str | None = PASSWORD) -> None:
        self.repo = tmp / "repo"
        self.tmp = tmp
        self.env: dict[str, str | None] = {
            "CHUNKSTORE_CACHE": str(tmp / "cache"),
            "CHUNKSTORE_REPO": None,
            "CHUNKSTORE_PASSWORD": password,
        }
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0, **env: str | None) -> Result:
        result = self.runner.invoke(
            main, ["--repo", str(self.repo), *args], env={**self.env, **env}
        )
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        if code == 0:
            assert result.exception is None
        return result

    def json(self, *args: str, **env: str | None) -> Any:
        return json.loads(self("--json", *args, **env).stdout)

    def file(self, name: str, content: bytes) -> str:
        path = self.tmp / name
        path.write_bytes(content)
        return str(path)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    c = Cli(tmp_path)
    info = c.json("init", *SMALL)
    assert info["encrypted"] is False and len(info["id"]) == 64
    return c


def test_put_ls_get_stats_check(cli: Cli) -> None:
    put = cli.json("put", "a", cli.file("a.bin", A))
    assert put["name"] == "a" and put["bytes"] == len(A)
    assert put["new_chunks"] == put["chunks"] > 10 and put["new_bytes"] == len(A)
    again = cli.json("put", "a", cli.file("a.bin", A))
    assert again["new_chunks"] == 0 and again["stored_bytes"] == 0

    rows = cli.json("ls")
    assert [(r["name"], r["size"], r["type"]) for r in rows] == [("a", len(A), "stream")] * 2
    assert rows[1]["id"] == again["id"]
    assert "a" in cli("ls").stdout

    out = cli.tmp / "out.bin"
    cli("get", "a", "-o", str(out))
    assert out.read_bytes() == A
    assert not Path(str(out) + ".chunkstore-partial").exists()
    assert cli("get", "a").stdout_bytes == A

    stats = cli.json("stats")
    assert {
        "repository",
        "id",
        "encrypted",
        "chunker",
        "pack_size",
        "files",
        "blobs",
        "raw_bytes",
        "stored_bytes",
        "records",
    } <= set(stats)
    assert stats["records"] == 2 and stats["pack_size"] == 64 * 1024
    assert stats["chunker"] == {"min": 1024, "avg": 4096, "max": 16384}
    assert stats["raw_bytes"] >= len(A) and stats["blobs"]["data"] == put["chunks"]
    assert stats["files"]["data"]["count"] >= 3

    report = cli.json("check", "--read-data")
    assert report["ok"] is True and report["errors"] == [] and report["records"] == 2
    assert "no errors" in cli("check").stdout


def test_check_and_get_fail_on_damage(cli: Cli) -> None:
    cli("put", "a", cli.file("a.bin", A))
    backend = LocalBackend(cli.repo)
    packs = sorted(backend.list(FileType.PACK), key=lambda i: -i.size)
    path = backend.path(packs[0].handle)  # the biggest pack is a full data pack
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))

    cli("check")  # structure is intact
    result = cli("check", "--read-data", code=EXIT_CODES[CheckFailed])
    assert packs[0].handle.name[:12] in result.stdout and "error:" in result.stdout
    report = json.loads(cli("--json", "check", "--read-data", code=17).stdout)
    assert report["ok"] is False and report["damaged_records"] == ["a"]

    out = cli.tmp / "out.bin"
    result = cli("get", "a", "-o", str(out), code=14)
    assert result.stderr.startswith("chunkstore: error: ")
    assert packs[0].handle.name[:12] in result.stderr
    assert not out.exists() and not Path(str(out) + ".chunkstore-partial").exists()


def test_encrypted_repository_passwords(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    assert cli.json("init", "--encrypt", *SMALL)["encrypted"] is True
    cli("put", "a", cli.file("a.bin", A))
    # The new password is read once from the environment when not on a terminal.
    key = cli.json("key", "add", CHUNKSTORE_NEW_PASSWORD="second password")["key"]
    assert len(key) == 64
    assert cli("get", "a", CHUNKSTORE_PASSWORD="second password").stdout_bytes == A

    wrong = cli("ls", code=12, CHUNKSTORE_PASSWORD="wrong password")
    assert wrong.stdout == ""
    assert wrong.stderr.strip() == "chunkstore: error: wrong password, or the key file is damaged"
    assert PASSWORD not in wrong.stderr and "wrong password" in wrong.stderr

    missing = cli("ls", code=2, CHUNKSTORE_PASSWORD=None)
    assert "CHUNKSTORE_PASSWORD" in missing.stderr


def test_missing_repository_and_init_over_existing(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    for command in (["ls"], ["check"], ["stats"], ["get", "a"]):
        result = cli(*command, code=10)
        assert "no chunkstore repository" in result.stderr and "chunkstore init" in result.stderr
    assert not cli.repo.exists()
    cli("init", *SMALL)
    result = cli("init", *SMALL, code=2)
    assert "already exists" in result.stderr


def test_forget_and_prune(cli: Cli) -> None:
    cli("put", "a", cli.file("a.bin", A))
    cli("put", "b", cli.file("b.bin", B))
    before = cli.json("stats")["files"]["data"]["bytes"]
    removed = cli.json("forget", "a")["removed"]
    assert len(removed) == 1
    assert [r["name"] for r in cli.json("ls")] == ["b"]
    cli("forget", "a", code=15)  # no such record any more
    # An id prefix is not a name: nothing is forgotten, and it says so.
    b_id = cli.json("ls")[0]["id"]
    refused = cli("forget", b_id[:12], code=15)
    assert "no record named" in refused.stderr and "nothing was forgotten" in refused.stderr
    assert [r["name"] for r in cli.json("ls")] == ["b"]
    bad = cli("prune", "--repack-fraction", "1.5", code=2)
    assert "between 0 and 1" in bad.stderr

    dry = cli.json("prune", "--dry-run")
    assert dry["dry_run"] is True and dry["packs_deleted"] > 0
    assert cli.json("stats")["files"]["data"]["bytes"] == before
    report = cli.json("prune")
    assert report["packs_deleted"] == dry["packs_deleted"]
    assert report["bytes_freed"] == before - cli.json("stats")["files"]["data"]["bytes"] > 0
    assert cli("get", "b").stdout_bytes == B
    assert cli.json("check", "--read-data")["ok"] is True


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_unlock(cli: Cli) -> None:
    backend = LocalBackend(cli.repo)
    stale = acquire_lock(backend, exclusive=True, pid=_dead_pid())
    content = backend.load(stale.handle)
    stale.release()
    backend.save(Handle(FileType.LOCK, secrets.token_hex(32)), content)  # left by a dead process
    # The stale lock does not block a writer.
    cli("put", "a", cli.file("a.bin", A))
    live = acquire_lock(backend, exclusive=False)
    try:
        assert cli.json("unlock") == {"removed": 1, "remaining": 1}
        assert [info.handle for info in list_locks(backend)] == [live.handle]
        result = cli("prune", code=11)  # the live shared lock blocks prune
        assert "shared lock" in result.stderr and "chunkstore unlock" in result.stderr
        assert cli.json("unlock", "--remove-all") == {"removed": 1, "remaining": 0}
    finally:
        live.release()
    cli("prune")


def test_help_lists_exit_codes(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "Exit codes:" in result.stdout
    for cls, code in EXIT_CODES.items():
        assert any(
            line.split() == [str(code), cls.__name__] for line in result.stdout.splitlines()
        ), (cls, code)
    for command in ("init", "put", "get", "ls", "forget", "stats", "check", "prune", "unlock"):
        assert command in result.stdout


def test_installed_command(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "chunkstore"
    assert exe.exists(), exe
    env = {
        **os.environ,
        "CHUNKSTORE_CACHE": str(tmp_path / "cache"),
        "CHUNKSTORE_REPO": str(tmp_path / "repo"),
    }
    env.pop("CHUNKSTORE_PASSWORD", None)

    def run(*args: str, stdin: bytes = b"", code: int = 0) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [str(exe), *args], input=stdin, env=env, capture_output=True, timeout=60, check=False
        )
        assert proc.returncode == code, proc.stderr.decode()
        assert b"Traceback" not in proc.stderr
        return proc

    run("init", *SMALL)
    put = json.loads(run("--json", "put", "a", "-", stdin=A).stdout)
    assert put["bytes"] == len(A)
    assert run("get", "a").stdout == A
    assert json.loads(run("--json", "check", "--read-data").stdout)["ok"] is True
    missing = run("--repo", str(tmp_path / "nowhere"), "ls", code=10)
    assert missing.stderr.startswith(b"chunkstore: error: no chunkstore repository")


def test_missing_input_and_unwritable_output_are_clear_errors(cli: Cli) -> None:
    missing = cli("put", "x", str(cli.tmp / "no-such-file"), code=2)
    assert "no-such-file" in missing.stderr and "does not exist" in missing.stderr
    assert cli.json("ls") == []
    cli("put", "a", cli.file("a.bin", A))
    # `get` into a directory that does not exist: an OSError from the file system, reported
    # with the file's name and exit code 1, never a traceback.
    out = cli("get", "a", "-o", str(cli.tmp / "nowhere" / "a.bin"), code=1)
    assert out.stderr.startswith("chunkstore: error: ")
    assert "nowhere" in out.stderr
