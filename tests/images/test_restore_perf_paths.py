"""The restore fast paths: grouped, threaded ``dir:`` extraction, joined rebuild pieces, gzip level.

Real behaviour only (no timing): what is written, in which order metadata lands, what happens on
a damaged chunk, and that the recompressed gzip is a valid, deterministic encoding of the tar.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import stat
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.errors import CorruptBlob, CorruptMetadata, UsageError
from chunkstore.images import extract
from chunkstore.images.backup import backup_image
from chunkstore.images.extract import extract_tree
from chunkstore.images.rebuild import _joined, rebuild_layer
from chunkstore.images.recompress import DEFAULT_GZIP_LEVEL, _parallel_gzip_chunks, recompress
from chunkstore.repository import Repository
from index.ids import Digest
from index.image import ImageBody
from tests.helpers import new_repo

IS_ROOT = os.geteuid() == 0


def make_tree(root: Path) -> None:
    """Many small files in many directories, large files, hard links across groups."""
    rng = random.Random(3)
    for d in range(40):  # more directories than one group takes
        sub = root / "many" / f"d{d:02}"
        sub.mkdir(parents=True)
        for f in range(12):
            (sub / f"f{f}").write_bytes(rng.randbytes(rng.randrange(0, 9000)))
    # Identical subtrees share one tree blob.
    for twin in ("twin-a", "twin-b"):
        (root / twin / "in").mkdir(parents=True)
        (root / twin / "in" / "same").write_bytes(b"identical\n")
        os.utime(root / twin / "in" / "same", ns=(1, 1_000_000_000))
        os.utime(root / twin / "in", ns=(1, 2_000_000_000))
        os.utime(root / twin, ns=(1, 3_000_000_000))
    # A large file (a group of its own) that is the first member of a hard-link group, linked
    # from a directory walked before the file is written, and a chunk-list file.
    (root / "a-links").mkdir()
    (root / "z-big").mkdir()
    (root / "z-big" / "big").write_bytes(rng.randbytes(5 << 20))
    os.link(root / "z-big" / "big", root / "a-links" / "big-link")
    (root / "z-big" / "huge").write_bytes(rng.randbytes(9 << 20))
    # A read-only directory with content: its mode must land after its files.
    ro = root / "readonly"
    ro.mkdir()
    (ro / "inside").write_bytes(b"x" * 100)
    os.chmod(ro, 0o555)
    os.utime(root / "many", ns=(1, 4_000_000_000))


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            digest = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(full, root)] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_mtime_ns,
                digest,
            )
    return out


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Digest]:
    tmp = tmp_path_factory.mktemp("perf")
    src = tmp / "src"
    make_tree(src)
    repo = new_repo(tmp, on_disk=True)
    backup_image(repo, f"dir:{src}", "img", platform="linux/amd64")
    root = ImageBody.from_cbor(repo.find_record("img")[1].body).images[0].root
    repo.close()
    return tmp, src, root


def open_repo(tmp: Path) -> Repository:
    return api.open_repository(tmp / "repo", cache_dir=tmp / "cache")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("workers", [1, 3])
def test_grouped_extraction_is_exact(
    stored: tuple[Path, Path, Digest], tmp_path: Path, workers: int
) -> None:
    tmp, src, root = stored
    with open_repo(tmp) as repo:
        before = _fds()
        result = extract_tree(repo, root, tmp_path / "out", workers=workers)
        assert _fds() == before  # every directory fd was closed
    out = tmp_path / "out"
    try:
        assert snapshot(out) == snapshot(src)
        assert os.stat(out / "z-big" / "big").st_ino == os.stat(out / "a-links" / "big-link").st_ino
        assert result.hardlinks == 1 and result.skipped == [] and result.warnings == []
        assert result.files == 40 * 12 + 2 + 2 + 1  # twins, big and huge, inside
    finally:
        os.chmod(out / "readonly", 0o755)


def test_force_over_existing_files(stored: tuple[Path, Path, Digest], tmp_path: Path) -> None:
    tmp, src, root = stored
    out = tmp_path / "out"
    (out / "many" / "d00").mkdir(parents=True)
    (out / "many" / "d00" / "f0").write_bytes(b"old")
    (out / "a-links").mkdir()
    (out / "a-links" / "big-link").write_bytes(b"old link")
    (out / "stays").write_bytes(b"mine")
    with open_repo(tmp) as repo:
        extract_tree(repo, root, out, force=True)
    try:
        got = snapshot(out)
        assert got.pop("stays")[3] == hashlib.sha256(b"mine").hexdigest()
        want = snapshot(src)
        # A pre-existing directory keeps being the same inode; its mtime is the image's.
        assert got == want
    finally:
        os.chmod(out / "readonly", 0o755)


def test_damaged_chunk_fails_cleanly(
    stored: tuple[Path, Path, Digest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp, _, root = stored
    with open_repo(tmp) as repo:
        real = repo.load_blobs

        def damaged(ids: object, **kw: int) -> Iterator[tuple[Digest, bytes]]:
            # File content is loaded by the workers, trees by the walk.
            if threading.current_thread().name.startswith("chunkstore-extract"):
                raise CorruptBlob("data blob 0123abcd content does not match its id")
            return real(ids, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(repo, "load_blobs", damaged)
        before = _fds()
        with pytest.raises(CorruptBlob, match="does not match its id"):
            extract_tree(repo, root, tmp_path / "out", workers=2)
        assert _fds() == before


def test_wrong_chunk_size_is_refused(
    stored: tuple[Path, Path, Digest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp, _, root = stored
    with open_repo(tmp) as repo:
        real = repo.load_blobs

        def short(ids: object, **kw: int) -> Iterator[tuple[Digest, bytes]]:
            for blob_id, data in real(ids, **kw):  # type: ignore[arg-type]
                yield blob_id, data[:-1] if len(data) > 3000 and data[:1] != b"\xa3" else data

        monkeypatch.setattr(repo, "load_blobs", short)
        with pytest.raises(CorruptMetadata, match="bytes, not"):
            extract_tree(repo, root, tmp_path / "out")


def test_destination_must_be_empty(stored: tuple[Path, Path, Digest], tmp_path: Path) -> None:
    tmp, _, root = stored
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_bytes(b"")
    with open_repo(tmp) as repo, pytest.raises(UsageError, match="not empty"):
        extract_tree(repo, root, tmp_path / "out")


def test_tree_cache_keeps_shared_trees_until_last_use(
    stored: tuple[Path, Path, Digest],
) -> None:
    tmp, _, root = stored
    with open_repo(tmp) as repo:
        cache = extract._TreeCache(repo)
        cache.want([root, root])
        assert cache.take(root) == cache.take(root)
        assert not cache.blobs and not cache.uses


def test_rebuild_yields_joined_pieces(stored: tuple[Path, Path, Digest]) -> None:
    tmp, _, _ = stored
    with open_repo(tmp) as repo:
        body = ImageBody.from_cbor(repo.find_record("img")[1].body)
        pieces = list(rebuild_layer(repo, body.images[0].layers[0].recipe))
    assert all(len(p) >= 1 << 20 for p in pieces[:-1]) and len(pieces) > 2
    assert hashlib.sha256(b"".join(pieces)).hexdigest() == body.images[0].layers[0].diff_id[7:]


def test_joined() -> None:
    assert list(_joined(iter([b"ab", b"", b"c", b"defg", b"h"]), 3)) == [b"abc", b"defg", b"h"]
    assert list(_joined(iter([]), 3)) == []
    assert list(_joined(iter([b"xyz"]), 3)) == [b"xyz"]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)


@pytest.mark.parametrize("level", [1, 6])
def test_gzip_recompression_levels(level: int) -> None:
    data = random.Random(5).randbytes(1 << 20) + b"text " * 600_000
    out = b"".join(recompress(_Reader(data), "gzip", gzip_level=level))
    assert gzip.decompress(out) == data
    assert zlib.crc32(data) == int.from_bytes(out[-8:-4], "little")
    # Deterministic whatever the number of threads.
    for workers in (1, 3):
        assert b"".join(_parallel_gzip_chunks(_Reader(data), level, workers)) == out


def test_gzip_default_level_and_range() -> None:
    data = b"hello " * 300_000
    default = b"".join(recompress(_Reader(data), "gzip"))
    explicit = b"".join(recompress(_Reader(data), "gzip", gzip_level=DEFAULT_GZIP_LEVEL))
    assert default == explicit and gzip.decompress(default) == data
    assert (
        b"".join(recompress(_Reader(b""), "gzip"))
        and gzip.decompress(b"".join(recompress(_Reader(b""), "gzip"))) == b""
    )
    with pytest.raises(UsageError, match="gzip level 0"):
        recompress(_Reader(data), "gzip", gzip_level=0)
