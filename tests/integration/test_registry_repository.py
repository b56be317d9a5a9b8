"""Whole repositories in the real registry: images backed up, restored bit-exact and checked,
only missing blobs uploaded on the next backup, the CLI, and basic auth."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from chunkstore import api
from chunkstore.backends import RemoteOptions
from chunkstore.backends.base import FileType
from chunkstore.chunker import ChunkerParams
from chunkstore.cli import main
from chunkstore.errors import AuthError
from chunkstore.images.backup import backup_image
from chunkstore.images.oci_layout import OCILayout
from chunkstore.images.restore import restore_image
from chunkstore.repository import Repository
from index.ids import Digest
from tests.images.test_backup_restore import layer_tar, write_image
from tests.integration.registry_fixture import RunningRegistry

pytestmark = pytest.mark.integration

_names = itertools.count()
SMALL = ChunkerParams(1024, 4096, 16384)


def _files(seed: int, n: int = 40) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {f"usr/lib/f{i}.bin": rnd.randbytes(rnd.randint(2000, 40_000)) for i in range(n)}


def _blob_bytes(registry: RunningRegistry) -> dict[str, int]:
    """Every blob the registry stores (digest -> size), read from its storage directory."""
    root = registry.storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {p.parent.name: p.stat().st_size for p in root.glob("*/*/data")}


def _repo(registry: RunningRegistry, tmp: Path, name: str, *, init: bool) -> Repository:
    location = f"registry:{registry.host}/{name}"
    if init:
        return api.init_repository(
            location, cache_dir=tmp / "cache", chunker=SMALL, pack_size=256 << 10
        )
    return api.open_repository(location, cache_dir=tmp / "cache2")


def test_image_round_trip_through_the_registry(registry: RunningRegistry, tmp_path: Path) -> None:
    name = f"repos/r{next(_names)}"
    base = layer_tar(_files(1))
    write_image(tmp_path / "src", "v1", [base, layer_tar({"app/main.py": b"print(1)\n"})])
    with _repo(registry, tmp_path, name, init=True) as repo:
        backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "app")
    # Another machine: a fresh cache, everything from the registry.
    with _repo(registry, tmp_path, name, init=False) as repo:
        restored = restore_image(repo, "app", f"oci:{tmp_path / 'out'}:v1")
        assert restored.exact_layers == 2 and not restored.manifest_rewritten
        assert api.check(repo, read_data=True).ok
    (a,), (b,) = (
        OCILayout(tmp_path / "src").resolve("v1"),
        OCILayout(tmp_path / "out").resolve("v1"),
    )
    assert a.manifest_bytes == b.manifest_bytes and a.config_bytes == b.config_bytes


def test_next_version_uploads_only_what_the_registry_lacks(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    name = f"repos/r{next(_names)}"
    files = _files(2, n=60)
    write_image(tmp_path / "v1", "v1", [layer_tar(files)])
    changed = dict(files)
    changed["usr/lib/f7.bin"] = b"a new version of one file\n" * 100
    write_image(tmp_path / "v2", "v2", [layer_tar(changed)])
    before = _blob_bytes(registry)
    with _repo(registry, tmp_path, name, init=True) as repo:
        backup_image(repo, f"oci:{tmp_path / 'v1'}:v1", "app-v1")
    after_first = _blob_bytes(registry)
    first = sum(v for k, v in after_first.items() if k not in before)
    with _repo(registry, tmp_path, name, init=False) as repo:
        backup_image(repo, f"oci:{tmp_path / 'v2'}:v2", "app-v2")
        assert api.check(repo).ok
    after_second = _blob_bytes(registry)
    second = sum(v for k, v in after_second.items() if k not in after_first)
    layer_bytes = sum(len(v) for v in files.values())
    assert first > layer_bytes // 2  # random data: the first backup really uploaded it
    # One changed file: a new chunk or two, the metadata, the index and the record.
    assert 0 < second < first // 10, (first, second)


def test_cli_backup_and_restore_with_a_registry_repository(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    write_image(tmp_path / "src", "v1", [layer_tar(_files(3, n=10))])
    repo = f"registry:{registry.host}/cli/r{next(_names)}"
    runner = CliRunner()
    env = {"CHUNKSTORE_CACHE": str(tmp_path / "cache"), "CHUNKSTORE_PASSWORD": "pw"}

    def run(*args: str) -> str:
        result = runner.invoke(main, ["--repo", repo, *args], env=env)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result.stdout

    run("init", "--encrypt", "--chunk-avg", "4K", "--chunk-min", "1K", "--chunk-max", "16K")
    run("backup", f"oci:{tmp_path / 'src'}:v1", "--tag", "app")
    assert "app" in run("tags")
    from chunkstore.registry.client import RegistryClient

    with RegistryClient(registry.host, repo.split("/", 1)[1], plain_http=True) as client:
        assert "app" in client.list_tags()  # the image tag, next to the _cs.* file tags
    run("restore", "app", f"oci:{tmp_path / 'out'}:v1")
    run("check", "--read-data")
    src = OCILayout(tmp_path / "src").resolve("v1")[0]
    out = OCILayout(tmp_path / "out").resolve("v1")[0]
    assert src.config_bytes == out.config_bytes


def test_basic_auth_registry(auth_registry: RunningRegistry, tmp_path: Path) -> None:
    assert auth_registry.user and auth_registry.password
    location = f"registry:{auth_registry.host}/auth/r{next(_names)}"
    good = RemoteOptions(
        env={
            "CHUNKSTORE_REGISTRY_USER": auth_registry.user,
            "CHUNKSTORE_REGISTRY_PASSWORD": auth_registry.password,
        }
    )
    write_image(tmp_path / "src", "v1", [layer_tar(_files(4, n=5))])
    with api.init_repository(location, cache_dir=tmp_path / "c", chunker=SMALL, remote=good) as r:
        backup_image(r, f"oci:{tmp_path / 'src'}:v1", "app")
    wrong = "not-the-password-" + hashlib.sha256(b"x").hexdigest()[:8]
    bad = RemoteOptions(
        env={"CHUNKSTORE_REGISTRY_USER": auth_registry.user, "CHUNKSTORE_REGISTRY_PASSWORD": wrong}
    )
    with pytest.raises(AuthError) as info:
        api.open_repository(location, cache_dir=tmp_path / "c2", remote=bad)
    assert wrong not in str(info.value) and auth_registry.password not in str(info.value)
    with pytest.raises(AuthError):
        api.open_repository(location, cache_dir=tmp_path / "c3")


def test_cli_copy_local_to_registry_and_back(registry: RunningRegistry, tmp_path: Path) -> None:
    write_image(tmp_path / "src", "v1", [layer_tar(_files(5, n=12))])
    local, back = str(tmp_path / "local"), str(tmp_path / "back")
    remote = f"registry:{registry.host}/copy/r{next(_names)}"
    runner = CliRunner()
    env = {
        "CHUNKSTORE_CACHE": str(tmp_path / "cache"),
        "CHUNKSTORE_PASSWORD": "pw-local",
        "CHUNKSTORE_FROM_PASSWORD": "pw-local",
        "CHUNKSTORE_TO_PASSWORD": "pw-remote",
    }

    def run(repo: str, *args: str, **extra: str) -> str:
        result = runner.invoke(main, ["--json", "--repo", repo, *args], env={**env, **extra})
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result.stdout

    run(local, "init", "--encrypt")
    run(local, "backup", f"oci:{tmp_path / 'src'}:v1", "--tag", "app")
    run(remote, "init", "--encrypt", "--copy-keys-from", local, CHUNKSTORE_PASSWORD="pw-remote")
    first = json.loads(run(local, "copy", "app", "--to", remote))
    assert len(first["copied"]) == 1 and first["blobs"] > 0
    again = json.loads(run(local, "copy", "app", "--to", remote))
    assert again["copied"] == [] and again["blobs"] == 0
    # And back into a third repository, from the registry alone.
    run(back, "init", "--encrypt", "--copy-keys-from", remote, CHUNKSTORE_FROM_PASSWORD="pw-remote")
    run(
        remote,
        "copy",
        "app",
        "--to",
        back,
        CHUNKSTORE_PASSWORD="pw-remote",
        CHUNKSTORE_TO_PASSWORD="pw-local",
    )
    run(back, "restore", "app", f"oci:{tmp_path / 'out'}:v1")
    run(back, "check", "--read-data")
    src = OCILayout(tmp_path / "src").resolve("v1")[0]
    out = OCILayout(tmp_path / "out").resolve("v1")[0]
    assert src.manifest_bytes == out.manifest_bytes and src.config_bytes == out.config_bytes


def test_image_tags_follow_records_through_forget_and_prune(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    from chunkstore.backends.registry import IMAGE_ARTIFACT_TYPE, RegistryBackend
    from chunkstore.registry.client import RegistryClient

    name = f"tags/r{next(_names)}"
    write_image(tmp_path / "a", "v1", [layer_tar(_files(6, n=20))])
    write_image(tmp_path / "b", "v1", [layer_tar(_files(7, n=20))])
    client = RegistryClient(registry.host, name, plain_http=True)
    try:
        with _repo(registry, tmp_path, name, init=True) as repo:
            backup_image(repo, f"oci:{tmp_path / 'a'}:v1", "app-a")
            backup_image(repo, f"oci:{tmp_path / 'b'}:v1", "app-b")
            backup_image(repo, f"oci:{tmp_path / 'b'}:v1", "not a valid tag!")
            report = api.publish(repo)
            assert report.pushed == ["app-a", "app-b"]
            assert report.unpublishable == ["not a valid tag!"]
            assert isinstance(repo.backend, RegistryBackend)
            rid_a = repo.find_record("app-a")[0]

            def tag_doc(tag: str) -> dict[str, object]:
                return json.loads(client.get_manifest(tag).data)  # type: ignore[no-any-return]

            doc = tag_doc("app-a")
            assert doc["artifactType"] == IMAGE_ARTIFACT_TYPE
            assert doc["config"]["digest"] == f"sha256:{rid_a.hex}"  # type: ignore[index]
            layers = doc["layers"]
            assert isinstance(layers, list)
            for layer in layers:  # every blob the tag references is there
                assert client.head_blob(Digest.parse(layer["digest"])) == layer["size"]
            packs_a = {x["digest"] for x in layers if x["mediaType"].endswith("pack.v1")}
            assert packs_a
            api.forget(repo, "app-a")
            assert "app-a" not in client.list_tags() and "app-b" in client.list_tags()
            api.prune(repo)
            doc_b = tag_doc("app-b")
            live = {f"sha256:{i.handle.name}" for i in repo.backend.list(FileType.PACK)}
            packs_b = {
                x["digest"]
                for x in doc_b["layers"]  # type: ignore[attr-defined]
                if x["mediaType"].endswith("pack.v1")
            }
            assert packs_b and packs_b <= live
            assert api.check(repo, read_data=True).ok
    finally:
        client.close()
