"""Plain images from and to the real registry: ``backup docker://...`` and ``restore docker://...``.

Images are put into the registry by skopeo (OCI) or by the client (Docker schema 2), backed up,
restored into OCI layouts and pushed back; skopeo then pulls what was pushed (it verifies every
digest) and the config digest (the image ID) must not have changed.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from chunkstore.backends import RemoteOptions
from chunkstore.cli import main
from chunkstore.errors import AuthError, DigestMismatch, RegistryObjectMissing, UsageError
from chunkstore.images.backup import backup_image
from chunkstore.images.oci_layout import OCILayout
from chunkstore.images.registry_image import RegistryTarget
from chunkstore.images.restore import restore_image
from chunkstore.registry.client import RegistryClient
from chunkstore.registry.mediatypes import DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST
from index.ids import Digest, sha256
from index.image import ImageBody
from tests.images.test_backup_restore import layer_tar, new_repo, write_image, zlib_gzip
from tests.integration.registry_fixture import RunningRegistry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo"),
]

_names = itertools.count()
_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REMOTE = RemoteOptions()  # loopback: plain HTTP without asking


def _unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


def _files(seed: int, n: int = 12) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {f"usr/lib/f{i}.bin": rnd.randbytes(rnd.randint(2000, 30_000)) for i in range(n)}


def _skopeo(*args: str) -> str:
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _push_oci(registry: RunningRegistry, tmp: Path, name: str, seed: int) -> Path:
    """An OCI image of two gzip layers, written as a layout and copied to ``name:v1``."""
    src = tmp / f"src-{seed}"
    base = layer_tar({"etc/os-release": f"ID=t{seed}\n".encode(), **_files(seed)})
    top = layer_tar({"app/main.py": b"print(42)\n" * 50 + bytes([seed % 256])})
    write_image(src, "v1", [base, top])
    _skopeo(
        "copy",
        "-q",
        "--preserve-digests",
        "--dest-tls-verify=false",
        f"oci:{src}:v1",
        f"docker://{registry.host}/{name}:v1",
    )
    return src


def _client(registry: RunningRegistry, name: str) -> RegistryClient:
    return RegistryClient(registry.host, name, plain_http=True, retries=1, backoff=0.01)


def _layer_digests(src: Path) -> list[Digest]:
    (image,) = OCILayout(src).resolve("v1")
    return [d.digest for d in image.layers]


def _diff_ids(config: bytes) -> list[str]:
    return list(json.loads(config)["rootfs"]["diff_ids"])


def test_backup_from_registry_restores_exact_oci(registry: RunningRegistry, tmp_path: Path) -> None:
    name = _unique("src/app")
    src = _push_oci(registry, tmp_path, name, 1)
    repo = new_repo(tmp_path)
    result = backup_image(repo, f"docker://{registry.host}/{name}:v1", "app", remote=REMOTE)
    assert result.images == 1 and result.layers == 2 and result.reproducible_layers == 2
    restored = restore_image(repo, "app", f"oci:{tmp_path / 'out'}:v1")
    assert restored.exact_layers == 2 and not restored.manifest_rewritten
    (a,), (b,) = OCILayout(src).resolve("v1"), OCILayout(tmp_path / "out").resolve("v1")
    assert a.manifest_bytes == b.manifest_bytes and a.config_bytes == b.config_bytes
    assert _diff_ids(b.config_bytes) == _diff_ids(a.config_bytes)
    (record,) = [r for _, r in repo.list_records() if r.name == "app"]
    body = ImageBody.from_cbor(record.body)
    assert body.source == f"docker://{registry.host}/{name}:v1" and body.index is None
    assert sha256(body.images[0].manifest) == a.manifest_digest
    repo.close()


def test_restore_pushes_an_image_skopeo_pulls(registry: RunningRegistry, tmp_path: Path) -> None:
    name, dst = _unique("src/app"), _unique("dst/app")
    src = _push_oci(registry, tmp_path, name, 2)
    repo = new_repo(tmp_path)
    backup_image(repo, f"docker://{registry.host}/{name}:v1", "app", remote=REMOTE)
    pushed = restore_image(repo, "app", f"docker://{registry.host}/{dst}:v1", remote=REMOTE)
    # Blobs are shared registry-wide, but not linked into the new repository: all are sent.
    assert pushed.exact_layers == 2 and pushed.uploaded_blobs == 3
    info = json.loads(
        _skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/{dst}:v1")
    )
    (original,) = OCILayout(src).resolve("v1")
    assert info["Digest"] == str(original.manifest_digest)
    _skopeo(
        "copy",
        "-q",
        "--src-tls-verify=false",
        f"docker://{registry.host}/{dst}:v1",
        f"oci:{tmp_path / 'pulled'}:v1",
    )
    (pulled,) = OCILayout(tmp_path / "pulled").resolve("v1")
    assert pulled.config_digest == original.config_digest  # same image ID
    assert _diff_ids(pulled.config_bytes) == _diff_ids(original.config_bytes)
    again = restore_image(repo, "app", f"docker://{registry.host}/{dst}:v1", remote=REMOTE)
    assert again.uploaded_blobs == 0 and again.present_blobs == 3
    repo.close()


def _push_docker_multi(registry: RunningRegistry, name: str) -> tuple[bytes, dict[str, bytes]]:
    """A Docker manifest list of amd64 and arm64 schema-2 images under ``name:multi``."""
    client = _client(registry, name)
    entries, configs = [], {}
    for arch in ("amd64", "arm64"):
        tar = layer_tar({f"bin/{arch}": arch.encode() * 500, **_files(hash(arch) % 1000, 4)})
        blob = zlib_gzip(tar)
        layer = client.put_blob(blob)
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [str(sha256(tar))]},
            }
        ).encode()
        client.put_blob(config)
        configs[arch] = config
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {
                    "mediaType": DOCKER_CONFIG,
                    "digest": str(sha256(config)),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": _DOCKER_LAYER_GZIP, "digest": str(layer), "size": len(blob)}
                ],
            }
        ).encode()
        digest = client.put_manifest(sha256(manifest), manifest, DOCKER_MANIFEST)
        entries.append(
            {
                "mediaType": DOCKER_MANIFEST,
                "digest": str(digest),
                "size": len(manifest),
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": entries}
    ).encode()
    client.put_manifest("multi", index, DOCKER_MANIFEST_LIST)
    client.close()
    return index, configs


def test_multi_platform_index_all_or_one(registry: RunningRegistry, tmp_path: Path) -> None:
    name, dst = _unique("src/multi"), _unique("dst/multi")
    index, configs = _push_docker_multi(registry, name)
    repo = new_repo(tmp_path)
    source = f"docker://{registry.host}/{name}:multi"
    every = backup_image(repo, source, "all", remote=REMOTE)
    assert every.images == 2
    pushed = restore_image(repo, "all", f"docker://{registry.host}/{dst}:multi", remote=REMOTE)
    assert pushed.images == 2 and not pushed.manifest_rewritten
    client = _client(registry, dst)
    top = client.get_manifest("multi")
    assert top.data == index and top.media_type == DOCKER_MANIFEST_LIST  # the list, exact
    client.close()
    raw = _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/{dst}:multi")
    assert raw.encode() == index
    arm = _skopeo(
        "inspect",
        "--config",
        "--raw",
        "--override-arch=arm64",
        "--tls-verify=false",
        f"docker://{registry.host}/{dst}:multi",
    )
    assert arm.encode() == configs["arm64"]
    one = backup_image(repo, source, "arm", platform="linux/arm64", remote=REMOTE)
    assert one.images == 1
    restore_image(repo, "arm", f"oci:{tmp_path / 'arm'}:x")
    (image,) = OCILayout(tmp_path / "arm").resolve("x")
    assert image.config_bytes == configs["arm64"]
    with pytest.raises(UsageError, match="no manifest for platform"):
        backup_image(repo, source, "none", platform="linux/s390x", remote=REMOTE)
    repo.close()


def test_second_backup_downloads_no_layer(registry: RunningRegistry, tmp_path: Path) -> None:
    name = _unique("src/again")
    src = _push_oci(registry, tmp_path, name, 3)
    repo = new_repo(tmp_path)
    location = f"docker://{registry.host}/{name}:v1"
    first = backup_image(repo, location, "one", remote=REMOTE)
    assert first.reused_layers == 0
    # Unlink the layers from the registry repository: a backup that tried to fetch one would fail.
    client = _client(registry, name)
    for digest in _layer_digests(src):
        client.delete_blob(digest)
        assert client.head_blob(digest) is None
    client.close()
    second = backup_image(repo, location, "two", remote=REMOTE)
    assert second.layers == 2 and second.reused_layers == 2
    assert second.new_bytes == 0
    repo.close()


def test_unknown_tag_is_a_clear_not_found(registry: RunningRegistry, tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    name = _unique("src/none")
    with pytest.raises(RegistryObjectMissing, match=f"{name}:nope"):
        backup_image(repo, f"docker://{registry.host}/{name}:nope", "x", remote=REMOTE)
    assert repo.list_records() == []
    repo.close()


def test_corrupted_layer_blob_is_refused(registry: RunningRegistry, tmp_path: Path) -> None:
    name = _unique("src/bad")
    src = _push_oci(registry, tmp_path, name, 4)
    digest = _layer_digests(src)[0]
    data = (
        registry.storage / "docker/registry/v2/blobs/sha256" / digest.hex[:2] / digest.hex / "data"
    )
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size: the registry serves it, only the hash tells
    data.write_bytes(bytes(blob))
    repo = new_repo(tmp_path)
    with pytest.raises(DigestMismatch):
        backup_image(repo, f"docker://{registry.host}/{name}:v1", "bad", remote=REMOTE)
    assert repo.list_records() == []
    repo.close()


def test_cli_backup_and_restore_docker(registry: RunningRegistry, tmp_path: Path) -> None:
    name, dst = _unique("src/cli"), _unique("dst/cli")
    src = _push_oci(registry, tmp_path, name, 5)
    runner = CliRunner()
    env = {"CHUNKSTORE_CACHE": str(tmp_path / "cache")}
    base = ["--repo", str(tmp_path / "repo")]

    def run(*args: str) -> str:
        result = runner.invoke(main, [*base, *args], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("init")
    out = json.loads(run("--json", "backup", f"docker://{registry.host}/{name}:v1", "--tag", "x"))
    assert out["layers"] == 2 and out["reproducible_layers"] == 2
    run("restore", "x", f"docker://{registry.host}/{dst}:v1")
    info = json.loads(
        _skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/{dst}:v1")
    )
    (original,) = OCILayout(src).resolve("v1")
    assert info["Digest"] == str(original.manifest_digest)
    missing = runner.invoke(
        main, [*base, "backup", f"docker://{registry.host}/{name}:no", "-t", "y"], env=env
    )
    assert missing.exit_code == 15 and f"{name}:no" in missing.output


def test_credentials_for_a_registry_that_needs_them(
    registry: RunningRegistry, auth_registry: RunningRegistry, tmp_path: Path
) -> None:
    name = _unique("src/auth")
    _push_oci(registry, tmp_path, name, 6)
    repo = new_repo(tmp_path)
    backup_image(repo, f"docker://{registry.host}/{name}:v1", "app", remote=REMOTE)
    target = f"docker://{auth_registry.host}/{name}:v1"
    with pytest.raises(AuthError, match="CHUNKSTORE_REGISTRY_USER"):
        restore_image(repo, "app", target, remote=REMOTE)
    assert auth_registry.user is not None and auth_registry.password is not None
    creds = RemoteOptions(
        env={
            "CHUNKSTORE_REGISTRY_USER": auth_registry.user,
            "CHUNKSTORE_REGISTRY_PASSWORD": auth_registry.password,
        }
    )
    pushed = restore_image(repo, "app", target, remote=creds)
    assert pushed.exact_layers == 2
    back = backup_image(repo, target, "back", remote=creds)
    assert back.reused_layers == 2
    repo.close()


def test_large_blobs_stream_from_a_spool_file(registry: RunningRegistry, tmp_path: Path) -> None:
    data = random.Random(7).randbytes(300_000)
    digest = sha256(data)
    spool = tmp_path / "spool"
    spool.write_bytes(data)
    name = _unique("dst/stream")
    with RegistryTarget(_client(registry, name), "t", monolithic_limit=1024) as target:
        with open(spool, "rb") as f:
            target.add_blob_file(digest, len(data), f)
            target.add_blob_file(digest, len(data), f)  # present now: not sent again
        assert target.stats.uploaded_blobs == 1 and target.stats.present_blobs == 1
    client = _client(registry, name)
    assert client.get_blob(digest, len(data)) == data
    client.close()
