"""``chunkstore mount`` end to end: real FUSE mounts of backed-up images, run as subprocesses.

Each test backs up a directory (or a corpus image) into its own repository, mounts it with
``python -m chunkstore mount`` in a subprocess, waits for the "ready" line, and always unmounts in
teardown (``fusermount3 -u``, then ``-u -z``, then kill).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.backends import RemoteOptions
from chunkstore.browse import file_chunks, open_image, resolve_path
from chunkstore.images.backup import backup_image
from tests.corpus import MINBASE, corpus_has, require_corpus
from tests.integration.registry_fixture import start_registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None,
        reason="needs /dev/fuse and fusermount3",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="mknod, chown and chroot need root"),
]

BIG = os.urandom(3_000_000)


def make_source(root: Path) -> Path:
    """A directory with every kind of entry the mount must show."""
    src = root / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/hostname").write_text("test\n")
    (src / "usr/bin").mkdir(parents=True)
    (src / "usr/bin/big").write_bytes(BIG)
    (src / "usr/bin/big").chmod(0o4755)
    os.link(src / "usr/bin/big", src / "usr/bin/big-link")
    (src / "usr/bin/empty").write_bytes(b"")
    (src / "usr/lib").mkdir()
    for i in range(300):  # more entries than one readdir reply holds
        (src / f"usr/lib/file-{i:03d}.so").write_bytes(f"lib {i}\n".encode() * (i + 1))
    os.symlink("../etc/hostname", src / "usr/hostname-link")
    os.symlink("/nowhere/at/all", src / "dangling")
    os.mkfifo(src / "fifo")
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "loop9", 0o660 | stat.S_IFBLK, os.makedev(7, 9))
    os.setxattr(src / "etc/hostname", "user.note", b"an xattr value")
    os.setxattr(src / "usr/bin", "user.dir-attr", b"\x00\x01binary")
    (src / "private").mkdir(mode=0o700)
    os.chown(src / "private", 1234, 5678)
    (src / "private/secret").write_text("s\n")
    os.chown(src / "private/secret", 1234, 5678, follow_symlinks=False)
    os.utime(src / "etc/hostname", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return src


def backup_dir(root: Path, src: Path, tag: str = "img") -> Path:
    repo_path = root / "repo"
    with api.init_repository(repo_path, cache_dir=root / "cache") as repo:
        backup_image(repo, f"dir:{src}", tag)
    return repo_path


def unmount(mnt: Path) -> None:
    if subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


@contextmanager
def mounted(
    repo: str | Path, tag: str, mnt: Path, *args: str, cache: Path
) -> Iterator[subprocess.Popen[str]]:
    """Run ``chunkstore mount`` until its ready line; unmount and reap it afterwards."""
    mnt.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "chunkstore", "--repo", str(repo), "--cache-dir", str(cache)]
    log = mnt.with_name(mnt.name + ".log")
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [*cmd, "mount", tag, str(mnt), *args], stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the ready line, or EOF if the mount failed
        if "ready" not in line:
            proc.wait(10)
            raise AssertionError(f"mount failed: {line!r} {log.read_text()}")
        assert os.path.ismount(mnt)
        yield proc
    finally:
        if proc.poll() is None:
            unmount(mnt)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        if proc.stdout is not None:
            proc.stdout.close()


def finish(proc: subprocess.Popen[str], mnt: Path) -> int:
    unmount(mnt)
    return proc.wait(15)


def compare_trees(src: Path, mnt: Path) -> int:
    """Every entry's type, mode, owner, mtime, size, content, target, device and xattrs."""
    checked = 0
    inodes: dict[int, int] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        assert sorted(os.listdir(mnt / rel)) == sorted(dirnames + filenames), rel
        for name in dirnames + filenames:
            a, b = src / rel / name, mnt / rel / name
            sa, sb = os.lstat(a), os.lstat(b)
            what = str(rel / name)
            assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), what
            assert stat.S_IMODE(sa.st_mode) == stat.S_IMODE(sb.st_mode), what
            assert (sa.st_uid, sa.st_gid) == (sb.st_uid, sb.st_gid), what
            assert sa.st_mtime_ns == sb.st_mtime_ns, what
            if stat.S_ISREG(sa.st_mode):
                assert sa.st_size == sb.st_size, what
                assert a.read_bytes() == b.read_bytes(), what
                if sa.st_nlink > 1:  # members of a hard-link group share the mount's inode too
                    assert inodes.setdefault(sa.st_ino, sb.st_ino) == sb.st_ino, what
            elif stat.S_ISLNK(sa.st_mode):
                assert os.readlink(a) == os.readlink(b), what
            elif stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
                assert sa.st_rdev == sb.st_rdev, what
            if not stat.S_ISLNK(sa.st_mode):
                names = sorted(os.listxattr(a))
                assert sorted(os.listxattr(b)) == names, what
                for n in names:
                    assert os.getxattr(a, n) == os.getxattr(b, n), what
            checked += 1
    return checked


def test_mount_shows_every_file_and_its_metadata(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    repo = backup_dir(tmp_path, src)
    mnt, stats = tmp_path / "mnt", tmp_path / "stats.json"
    with mounted(repo, "img", mnt, "--stats", str(stats), cache=tmp_path / "c") as proc:
        assert compare_trees(src, mnt) > 300
        big, link = os.stat(mnt / "usr/bin/big"), os.stat(mnt / "usr/bin/big-link")
        assert big.st_ino == link.st_ino
        with pytest.raises(OSError) as err:
            (mnt / "new-file").write_text("x")
        assert err.value.errno == errno.EROFS
        with pytest.raises(OSError) as err:
            os.unlink(mnt / "etc/hostname")
        assert err.value.errno == errno.EROFS
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "etc/missing")
        assert os.statvfs(mnt).f_namemax == 255
        assert finish(proc, mnt) == 0
    counters = json.loads(stats.read_text())
    assert counters["bytes_served"] >= len(BIG) and counters["requests"] > 0
    assert counters["read_errors"] == 0


def test_sigterm_unmounts_and_exits_cleanly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a\n")
    repo = backup_dir(tmp_path, src)
    mnt = tmp_path / "mnt"
    with mounted(repo, "img", mnt, cache=tmp_path / "c") as proc:
        assert (mnt / "a").read_text() == "a\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not os.path.ismount(mnt)


def test_corrupt_pack_gives_eio_not_garbage(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    repo_path = backup_dir(tmp_path, src)
    with api.open_repository(repo_path, cache_dir=tmp_path / "cache") as repo:
        node = resolve_path(repo, open_image(repo, "img").root, "usr/bin/big")
        assert node is not None
        loc = repo.lookup(file_chunks(repo, node)[3].id)
        assert loc is not None
    pack = repo_path / "data" / loc.pack_id.hex[:2] / loc.pack_id.hex
    raw = bytearray(pack.read_bytes())
    raw[loc.entry.offset + loc.entry.length // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))
    mnt = tmp_path / "mnt"
    with mounted(repo_path, "img", mnt, cache=tmp_path / "c"):
        with pytest.raises(OSError) as err:
            (mnt / "usr/bin/big").read_bytes()
        assert err.value.errno == errno.EIO
        with pytest.raises(OSError) as err:  # still EIO: the bad chunk was not cached
            (mnt / "usr/bin/big").read_bytes()
        assert err.value.errno == errno.EIO
        with open(mnt / "usr/bin/big", "rb") as f:  # bytes before the damage still read
            assert f.read(4096) == BIG[:4096]
        assert (mnt / "etc/hostname").read_text() == "test\n"
        assert (mnt / "usr/lib/file-007.so").read_bytes() == b"lib 7\n" * 8


def test_small_cache_evicts_and_stays_correct(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(4_000_000)
    (src / "big").write_bytes(data)
    repo = backup_dir(tmp_path, src)
    mnt, cache = tmp_path / "mnt", tmp_path / "c"
    with mounted(repo, "img", mnt, "--cache-size", "512K", cache=cache):
        for _ in range(2):
            assert (mnt / "big").read_bytes() == data
            subprocess.run(["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"], check=False)
    files = [f for f in (cache / "chunks").rglob("*") if f.is_file()]
    assert files and sum(f.stat().st_size for f in files) <= 512 * 1024


def test_profile_record_then_prefetch(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    repo = backup_dir(tmp_path, src)
    mnt, profile, stats = tmp_path / "mnt", tmp_path / "profile.jsonl", tmp_path / "stats.json"
    with mounted(repo, "img", mnt, "--record-profile", str(profile), cache=tmp_path / "c1") as p:
        assert (mnt / "usr/bin/big").read_bytes() == BIG
        assert finish(p, mnt) == 0
    assert len(profile.read_text().splitlines()) > 10
    args = ("--prefetch", str(profile), "--stats", str(stats))
    with mounted(repo, "img", mnt, *args, cache=tmp_path / "c2") as p:
        time.sleep(1.0)  # let the background replay finish
        assert (mnt / "usr/bin/big").read_bytes() == BIG
        assert finish(p, mnt) == 0
    counters = json.loads(stats.read_text())
    assert counters["prefetched_chunks"] > 10
    assert counters["cache_misses"] == 0 or counters["memory_hits"] > 0


def test_hung_registry_gives_eio_within_deadline_then_recovers(tmp_path: Path) -> None:
    handle = start_registry(tmp_path / "registry")
    try:
        location = f"registry:{handle.info.host}/mount-hang"
        src = tmp_path / "src"
        src.mkdir()
        data = os.urandom(1_000_000)
        (src / "file").write_bytes(data)
        (src / "small").write_text("small\n")
        remote = RemoteOptions(plain_http=True)
        with api.init_repository(location, cache_dir=tmp_path / "cache", remote=remote) as repo:
            backup_image(repo, f"dir:{src}", "img")
        mnt = tmp_path / "mnt"
        deadline = 2.0
        args = ("--fetch-deadline", str(deadline))
        with mounted(location, "img", mnt, *args, cache=tmp_path / "c"):
            assert (mnt / "small").read_text() == "small\n"
            os.kill(handle.proc.pid, signal.SIGSTOP)  # the registry hangs mid-session
            try:
                start = time.monotonic()
                with pytest.raises(OSError) as err:
                    (mnt / "file").read_bytes()
                assert err.value.errno == errno.EIO
                assert time.monotonic() - start < deadline * 3 + 2
            finally:
                os.kill(handle.proc.pid, signal.SIGCONT)
            assert (mnt / "file").read_bytes() == data  # a later read retries and succeeds
    finally:
        handle.stop()


def test_chroot_into_a_debian_image(tmp_path: Path) -> None:
    # One image keeps the test short: the python image when the corpus has it (it is a full
    # Debian too), else minbase.
    corpus = require_corpus(MINBASE)
    python = corpus_has("bookworm-python3")
    ref = "bookworm-python3" if python else MINBASE
    repo_path = tmp_path / "repo"
    with api.init_repository(repo_path, cache_dir=tmp_path / "cache") as repo:
        backup_image(repo, f"oci:{corpus}:{ref}", ref)
        compressed = sum(layer.size for layer in open_image(repo, ref).layers)
    mnt, stats = tmp_path / "mnt", tmp_path / "stats.json"
    start = time.monotonic()
    with mounted(repo_path, ref, mnt, "--stats", str(stats), cache=tmp_path / "c") as proc:
        ready = time.monotonic() - start
        commands = [["/bin/sh", "-c", "echo ok"]]
        if python:
            commands.append(["/usr/bin/python3", "-c", "print(42)"])
        for cmd, want in zip(commands, ["ok", "42"], strict=False):
            out = subprocess.run(["chroot", str(mnt), *cmd], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == want
        elapsed = time.monotonic() - start
        assert finish(proc, mnt) == 0
    fetched = json.loads(stats.read_text())["bytes_fetched"]
    print(
        f"{ref}: ready in {ready:.2f} s, commands done at {elapsed:.2f} s, fetched "
        f"{fetched} bytes = {100 * fetched / compressed:.1f}% of {compressed} compressed"
    )
    assert fetched < compressed // 10
