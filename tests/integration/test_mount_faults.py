"""Mounts under faults (RELIABILITY.md rows D6, I3, I5): real FUSE mounts in subprocesses.

* D6 -- another backup publishes a new index generation, and a prune deletes unrelated data and
  *repacks* the packs the mounted record reads from, while the mount is serving: the mounted view
  keeps its bytes, and chunks first read after the repack are found in their new packs.
* I3 -- the registry of a ``registry:`` repository is unreachable at mount time, and again at a
  remount after the registry was stopped: ``chunkstore mount`` fails fast with a clear error and a
  non-zero exit, and nothing is left mounted.
* I5 -- the FUSE daemon is SIGKILLed while a read is in flight: the reader returns an error instead
  of hanging, later accesses get ENOTCONN, ``fusermount3 -u`` clears the dead mount, a remount
  works, and no repository lock is left behind.

Every mount is started through :func:`tests.integration.test_mount.mounted` (or a variant that
expects failure) and unmounted in teardown, whatever happens.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.backends import RemoteOptions, open_backend
from chunkstore.backends.base import FileType
from chunkstore.images.backup import backup_image
from chunkstore.lock import list_locks
from tests.integration.registry_fixture import _Handle, _wait_ready, start_registry
from tests.integration.test_mount import finish, mounted

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None,
        reason="needs /dev/fuse and fusermount3",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="FUSE mounts need root here"),
]

MB = 1_000_000


def _backup(
    location: str | Path, cache: Path, src: Path, tag: str, remote: RemoteOptions | None = None
) -> None:
    with api.open_repository(location, cache_dir=cache, remote=remote) as repo:
        with api.locked(repo, exclusive=False):
            backup_image(repo, f"dir:{src}", tag)


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


# --------------------------------------------------------------------------------------------- D6
@pytest.mark.parametrize("shared_cache", [False, True], ids=["own-cache", "shared-cache"])
def test_d6_view_stays_consistent_across_a_backup_and_a_repacking_prune(
    tmp_path: Path, shared_cache: bool
) -> None:
    # "old" and "img" share the 2 MB file `shared`; "old" also has 3 MB only it uses. Forgetting
    # "old" leaves its data pack 60% unused, so prune repacks it: the chunks of `shared` that
    # "img" reads move to a new pack and the old pack is deleted.
    shared, dead, own = os.urandom(2 * MB), os.urandom(3 * MB), os.urandom(MB)
    unrelated = os.urandom(MB)
    repo = tmp_path / "repo"
    writer_cache = tmp_path / "cache"
    mount_cache = writer_cache if shared_cache else tmp_path / "mount-cache"
    with api.init_repository(repo, cache_dir=writer_cache):
        pass
    _backup(repo, writer_cache, _tree(tmp_path / "old", {"shared": shared, "dead": dead}), "old")
    img_files = {"shared": shared, "own": own, "etc/hostname": b"host\n"}
    _backup(repo, writer_cache, _tree(tmp_path / "img", img_files), "img")
    _backup(repo, writer_cache, _tree(tmp_path / "unrelated", {"u": unrelated}), "unrelated")

    mnt = tmp_path / "mnt"
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:  # a FUSE reader that is active during the whole write side
        while not stop.is_set():
            try:
                assert (mnt / "own").read_bytes() == own
                assert (mnt / "etc/hostname").read_bytes() == b"host\n"
                assert sorted(os.listdir(mnt)) == ["etc", "own", "shared"]
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                return
            time.sleep(0.01)

    stats = tmp_path / "stats.json"
    with mounted(repo, "img", mnt, "--stats", str(stats), cache=mount_cache) as proc:
        # Only the first chunk of `shared` is read before the prune: the rest must be found
        # wherever the prune moved it.
        assert _read_at(mnt / "shared", 0, 4096) == shared[:4096]
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            # A new index generation: another backup into the same repository.
            fresh = os.urandom(MB)
            _backup(repo, writer_cache, _tree(tmp_path / "new", {"n": fresh, "s": shared}), "new")
            assert _read_at(mnt / "shared", MB // 2, 4096) == shared[MB // 2 : MB // 2 + 4096]
            # A prune of unrelated data that also repacks the packs "img" reads from.
            with api.open_repository(repo, cache_dir=writer_cache) as w:
                old_packs = {i.handle.name for i in w.backend.list(FileType.PACK)}
                api.forget(w, "old")
                api.forget(w, "unrelated")
                report = api.prune(w)
                new_packs = {i.handle.name for i in w.backend.list(FileType.PACK)}
            assert report.packs_repacked >= 1 and report.packs_deleted >= 1, report
            assert old_packs - new_packs and new_packs - old_packs
            time.sleep(0.2)  # the reader keeps going over the new generation
        finally:
            stop.set()
            thread.join(10)
        assert not errors, errors
        # Chunks never read before, now in repacked packs; and everything again, same bytes.
        assert (mnt / "shared").read_bytes() == shared
        assert (mnt / "own").read_bytes() == own
        assert sorted(os.listdir(mnt / "etc")) == ["hostname"]
        assert finish(proc, mnt) == 0
    counters = json.loads(stats.read_text())
    assert counters["read_errors"] == 0
    if not shared_cache:  # its own index still named the deleted pack: it re-read the index
        assert counters["index_resyncs"] >= 1


# --------------------------------------------------------------------------------------------- I3
def _mount_cli(location: str, cache: Path, mnt: Path, tag: str = "img") -> subprocess.Popen[str]:
    mnt.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "chunkstore", "--repo", location, "--cache-dir", str(cache)]
    return subprocess.Popen(
        [*cmd, "mount", tag, str(mnt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _force_unmount(mnt: Path) -> None:
    """Whatever state ``mnt`` is in (live, dead after a kill, or not mounted): not mounted after."""
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def _expect_fast_failure(proc: subprocess.Popen[str], mnt: Path, host: str) -> None:
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _force_unmount(mnt)
    elapsed = time.monotonic() - start
    assert proc.returncode == 16, (proc.returncode, out, err)  # BackendError: unreachable
    assert "ready" not in out
    assert host in err and "unreachable" in err, err
    assert "Traceback" not in err, err
    # Bounded retries (5 attempts with backoff, ~6 s), not the 30 s read deadline or forever.
    assert elapsed < 15, elapsed
    assert not os.path.ismount(mnt)
    assert os.listdir(mnt) == []  # an ordinary empty directory: no half tree, no dead mount


def test_i3_unreachable_registry_at_mount_and_at_remount_fails_fast(tmp_path: Path) -> None:
    handle = start_registry(tmp_path / "registry")
    restarted: _Handle | None = None
    try:
        host = handle.info.host
        location = f"registry:{host}/mount-i3"
        data = os.urandom(300_000)
        remote = RemoteOptions(plain_http=True)
        with api.init_repository(location, cache_dir=tmp_path / "cache", remote=remote):
            pass
        _backup(location, tmp_path / "cache", _tree(tmp_path / "src", {"f": data}), "img", remote)
        mnt, cache = tmp_path / "mnt", tmp_path / "mount-cache"
        with mounted(location, "img", mnt, cache=cache) as proc:  # a working mount first
            assert (mnt / "f").read_bytes() == data
            assert finish(proc, mnt) == 0
        handle.stop()  # "after a restart": the registry is not back yet

        # Both at once (each waits for the client's bounded retries): a remount with a warm
        # cache (index, chunks, pinned location) and a first mount of a port nobody listens on.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            never = f"127.0.0.1:{sock.getsockname()[1]}"
        remount = _mount_cli(location, cache, mnt)
        first = _mount_cli(f"registry:{never}/x", tmp_path / "cold-cache", tmp_path / "mnt2")
        _expect_fast_failure(remount, mnt, host)
        _expect_fast_failure(first, tmp_path / "mnt2", never)

        # The registry comes back on the same address: the same remount works.
        config = handle.info.storage.parent / "config.yml"
        log = (handle.info.storage.parent / "registry.log").open("ab")
        proc2 = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(config)], stdout=log)
        log.close()
        restarted = _Handle(proc2, handle.info)
        assert _wait_ready(proc2, handle.info.url)
        with mounted(location, "img", mnt, cache=cache):
            assert (mnt / "f").read_bytes() == data
    finally:
        handle.stop()
        if restarted is not None:
            restarted.stop()


# --------------------------------------------------------------------------------------------- I5
_READER = """
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print("open", flush=True)
sys.stdin.readline()
try:
    n = 0
    while chunk := os.read(fd, 1 << 20):
        n += len(chunk)
    print("read", n, flush=True)
except OSError as exc:
    print("errno", exc.errno, flush=True)
try:
    os.close(os.open(sys.argv[1], os.O_RDONLY))
    print("reopen ok", flush=True)
except OSError as exc:
    print("reopen errno", exc.errno, flush=True)
"""


def test_i5_sigkilled_daemon_gives_enotconn_then_remount_works(tmp_path: Path) -> None:
    big = os.urandom(4 * MB)
    src = _tree(tmp_path / "src", {"big": big, "small": b"small\n"})
    repo = tmp_path / "repo"
    with api.init_repository(repo, cache_dir=tmp_path / "cache"):
        pass
    _backup(repo, tmp_path / "cache", src, "img")
    mnt, cache = tmp_path / "mnt", tmp_path / "mount-cache"
    reader: subprocess.Popen[str] | None = None
    try:
        with mounted(repo, "img", mnt, cache=cache) as daemon:
            assert (mnt / "small").read_bytes() == b"small\n"
            reader = subprocess.Popen(
                [sys.executable, "-c", _READER, str(mnt / "big")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert reader.stdin is not None and reader.stdout is not None
            assert reader.stdout.readline() == "open\n"
            os.kill(daemon.pid, signal.SIGSTOP)  # the read below waits on the daemon...
            reader.stdin.write("go\n")
            reader.stdin.flush()
            time.sleep(0.3)
            assert reader.poll() is None  # ... blocked: it is in flight
            os.kill(daemon.pid, signal.SIGKILL)  # ... when the daemon dies
            assert daemon.wait(10) == -signal.SIGKILL
            out, _ = reader.communicate(timeout=10)  # the reader returns instead of hanging
            assert out.splitlines() == [
                f"errno {errno.ENOTCONN}",  # the read in flight
                f"reopen errno {errno.ENOTCONN}",  # and every later request of that reader
            ], out
            # Every request that reaches the (dead) daemon gets ENOTCONN. (Attributes the
            # kernel cached for an hour, e.g. a stat of a file already looked up, still answer.)
            probes = [
                lambda: open(mnt / "small", "rb").close(),  # FUSE_OPEN
                lambda: os.listdir(mnt),  # FUSE_OPENDIR
                lambda: os.stat(mnt / "never-looked-up"),  # FUSE_LOOKUP
                lambda: os.statvfs(mnt),  # FUSE_STATFS
            ]
            for probe in probes:
                with pytest.raises(OSError) as err:
                    probe()
                assert err.value.errno == errno.ENOTCONN
            # No lock is left behind (the mount takes none, so a kill cannot strand one).
            backend = open_backend(str(repo))
            try:
                assert list_locks(backend) == []
            finally:
                backend.close()
            # The dead mount is cleared by a plain (not lazy) unmount.
            done = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            assert not os.path.ismount(mnt) and os.listdir(mnt) == []
        with mounted(repo, "img", mnt, cache=cache) as daemon:  # the remount works
            assert (mnt / "big").read_bytes() == big
            assert (mnt / "small").read_bytes() == b"small\n"
            assert finish(daemon, mnt) == 0
    finally:
        if reader is not None and reader.poll() is None:
            reader.kill()
            reader.wait()
        _force_unmount(mnt)
