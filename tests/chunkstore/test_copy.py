"""copy: records move between repositories with only the blobs the destination lacks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.backends.base import FileType
from chunkstore.chunker import ChunkerParams
from chunkstore.errors import CorruptMetadata, MissingObject, UsageError
from chunkstore.images.backup import backup_image
from chunkstore.images.oci_layout import OCILayout
from chunkstore.images.restore import restore_image
from chunkstore.repository import Repository
from tests.images.test_backup_restore import layer_tar, write_image

SMALL = ChunkerParams(1024, 4096, 16384)
PW = b"copy test password"


def _files(seed: int, n: int = 30) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {f"opt/f{i}": rnd.randbytes(rnd.randint(1000, 30_000)) for i in range(n)}


def _repo(tmp: Path, name: str, **kw: object) -> Repository:
    return api.init_repository(tmp / name, cache_dir=tmp / f"cache-{name}", chunker=SMALL, **kw)  # type: ignore[arg-type]


def _packs(repo: Repository) -> int:
    return len(list(repo.backend.list(FileType.PACK)))


def test_copy_moves_only_missing_blobs_and_restores_exactly(tmp_path: Path) -> None:
    files = _files(1)
    write_image(tmp_path / "img", "v1", [layer_tar(files)])
    files2 = {**files, "opt/new": b"only in v2\n" * 300}
    write_image(tmp_path / "img", "v2", [layer_tar(files2)])
    with _repo(tmp_path, "src") as src, _repo(tmp_path, "dst") as dst:
        backup_image(src, f"oci:{tmp_path / 'img'}:v1", "app")
        backup_image(src, f"oci:{tmp_path / 'img'}:v2", "app2")
        first = api.copy(src, dst, ["app"])
        assert len(first.copied) == 1 and first.blobs > 0 and first.stored_bytes > 0
        again = api.copy(src, dst, ["app"])
        assert again.copied == [] and len(again.present) == 1 and again.blobs == 0
        second = api.copy(src, dst, ["app2"])
        # v2 shares every chunk but one file's with v1: far fewer blobs travel.
        assert 0 < second.blobs < first.blobs // 3, (first.blobs, second.blobs)
        restore_image(dst, "app2", f"oci:{tmp_path / 'out'}:v2")
        assert api.check(dst, read_data=True).ok
    (a,), (b,) = (
        OCILayout(tmp_path / "img").resolve("v2"),
        OCILayout(tmp_path / "out").resolve("v2"),
    )
    assert a.manifest_bytes == b.manifest_bytes and a.config_bytes == b.config_bytes


def test_encrypted_repositories_with_other_keys_are_refused(tmp_path: Path) -> None:
    write_image(tmp_path / "img", "v1", [layer_tar(_files(2, n=3))])
    with _repo(tmp_path, "src", password=PW) as src, _repo(tmp_path, "dst", password=PW) as dst:
        backup_image(src, f"oci:{tmp_path / 'img'}:v1", "app")
        with pytest.raises(UsageError, match="copy-keys-from"):
            api.copy(src, dst, ["app"])
        assert dst.list_records() == [] and _packs(dst) == 0


def test_copy_keys_from_makes_an_encrypted_twin(tmp_path: Path) -> None:
    write_image(tmp_path / "img", "v1", [layer_tar(_files(3, n=5))])
    with _repo(tmp_path, "src", password=PW) as src:
        backup_image(src, f"oci:{tmp_path / 'img'}:v1", "app")
        with _repo(tmp_path, "dst", password=b"another password", keys_from=src) as dst:
            assert dst.config.chunker == src.config.chunker
            assert dst.config.repo_id != src.config.repo_id
            api.copy(src, dst, ["app"])
            assert api.check(dst, read_data=True).ok
        with pytest.raises(UsageError, match="must be encrypted"):
            _repo(tmp_path, "plain", keys_from=src)
    with api.open_repository(
        tmp_path / "dst", cache_dir=tmp_path / "c2", password=b"another password"
    ) as dst:
        restore_image(dst, "app", f"oci:{tmp_path / 'out'}:v1")


def test_unknown_name_and_damaged_source(tmp_path: Path) -> None:
    write_image(tmp_path / "img", "v1", [layer_tar(_files(4, n=5))])
    with _repo(tmp_path, "src") as src, _repo(tmp_path, "dst") as dst:
        backup_image(src, f"oci:{tmp_path / 'img'}:v1", "app")
        with pytest.raises(MissingObject, match="nope"):
            api.copy(src, dst, ["app", "nope"])
        # Remove one pack of the source: the record cannot be copied whole, so it is not copied.
        pack = next(iter(src.backend.list(FileType.PACK))).handle
        src.backend.remove(pack)
    with api.open_repository(tmp_path / "src", cache_dir=tmp_path / "c3") as src:
        with api.open_repository(tmp_path / "dst", cache_dir=tmp_path / "c4") as dst:
            with pytest.raises((CorruptMetadata, MissingObject)):
                api.copy(src, dst, ["app"])
            assert dst.list_records() == []
