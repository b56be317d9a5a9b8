"""docker-archive: reading legacy and OCI-style archives, writing ones skopeo accepts."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from chunkstore.errors import MissingObject, UsageError
from chunkstore.images.blobs import BlobDigestMismatch
from chunkstore.images.docker_archive import DockerArchive, write_docker_archive
from chunkstore.images.oci_layout import OCILayoutWriter
from chunkstore.images.recompress import recompress
from chunkstore.registry.mediatypes import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from index.ids import Digest, sha256

SKOPEO = shutil.which("skopeo")


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image(*layers: dict[str, bytes]) -> tuple[bytes, list[bytes]]:
    tars = [make_tar(f) for f in layers]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [str(sha256(t)) for t in tars]},
    }
    return json.dumps(config).encode(), tars


def legacy_archive(path: Path, config: bytes, tars: list[bytes], tag: str) -> None:
    """A docker < 25 style archive: <id>/layer.tar, <hex>.json, manifest.json (dup as symlink)."""
    cfg_name = f"{sha256(config).hex}.json"
    members: list[tuple[str, bytes | None, str | None]] = [(cfg_name, config, None)]
    names = []
    first: dict[bytes, str] = {}
    for i, t in enumerate(tars):
        name = f"{i:064x}/layer.tar"
        if t in first:
            members.append((name, None, f"../{first[t]}"))
        else:
            first[t] = name
            members.append((name, t, None))
        names.append(name)
    manifest = [{"Config": cfg_name, "RepoTags": [tag], "Layers": names}]
    members.append(("manifest.json", json.dumps(manifest).encode(), None))
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = link
                tf.addfile(info)
            else:
                assert data is not None
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_legacy_archive_synthesized(tmp_path: Path) -> None:
    config, tars = image({"a": b"1"}, {"b": b"2" * 5000}, {"a": b"1"})
    path = tmp_path / "legacy.tar"
    legacy_archive(path, config, tars, "example.com/img:v1")
    with DockerArchive(path) as arc:
        assert arc.tags() == ["example.com/img:v1"]
        img = arc.resolve("example.com/img:v1")
        assert img.synthesized
        assert img.config_bytes == config
        assert img.config_digest == sha256(config)
        manifest = json.loads(img.manifest_bytes)
        assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
        assert [layer.digest for layer in img.layers] == [sha256(t) for t in tars]
        for layer, tar in zip(img.layers, tars, strict=True):
            with arc.open_blob(layer) as r:
                assert r.read() == tar
        assert arc.resolve(None).manifest_bytes == img.manifest_bytes
        with pytest.raises(UsageError, match=r"no image tagged 'other:1'.*example\.com/img:v1"):
            arc.resolve("other:1")


def test_legacy_archive_damaged_layer(tmp_path: Path) -> None:
    config, tars = image({"a": b"1"})
    bad = bytearray(tars[0])
    bad[600] ^= 1
    path = tmp_path / "bad.tar"
    legacy_archive(path, config, [bytes(bad)], "x:1")
    # The config names the good diff_id; the stored layer differs.
    with DockerArchive(path) as arc:
        img = arc.resolve("x:1")
        with pytest.raises(BlobDigestMismatch, match=str(sha256(tars[0]))):
            with arc.open_blob(img.layers[0]) as r:
                r.read()


def test_write_and_read_back(tmp_path: Path) -> None:
    config, tars = image({"etc/a": b"A"}, {"etc/b": b"B" * 3000})
    path = tmp_path / "out.tar"
    write_docker_archive(
        path,
        config,
        [(sha256(t), iter([t[:100], t[100:]])) for t in tars],
        ["example.com/app:1.0"],
    )
    with DockerArchive(path) as arc:
        img = arc.resolve("example.com/app:1.0")
        assert not img.synthesized
        assert img.media_type == OCI_MANIFEST
        assert img.config_bytes == config
        for layer, tar in zip(img.layers, tars, strict=True):
            with arc.open_blob(layer) as r:
                assert r.read() == tar
        with pytest.raises(MissingObject):
            arc.open_blob(img.layers[0].__class__("x", Digest("sha256", b"\0" * 32), 1))


def test_write_refuses_wrong_diff_id(tmp_path: Path) -> None:
    config, tars = image({"a": b"1"})
    path = tmp_path / "out.tar"
    with pytest.raises(BlobDigestMismatch, match="not the diff_id"):
        write_docker_archive(path, config, [(sha256(tars[0]), iter([b"other"]))], ["a:b"])
    with pytest.raises(UsageError, match="diff_ids"):
        write_docker_archive(path, config, [], ["a:b"])
    with pytest.raises(UsageError, match="invalid repo tag"):
        write_docker_archive(path, config, [(sha256(tars[0]), iter([tars[0]]))], ["no tag"])
    assert list(tmp_path.iterdir()) == []


def test_compressed_archive_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 100)
    with pytest.raises(UsageError, match="decompress it first"):
        DockerArchive(path)


@pytest.mark.skipif(SKOPEO is None, reason="skopeo not installed")
def test_skopeo_accepts_written_archive(tmp_path: Path) -> None:
    config, tars = image({"etc/a": b"A"}, {"etc/b": b"B"})
    path = tmp_path / "out.tar"
    write_docker_archive(path, config, [(sha256(t), iter([t])) for t in tars], ["app:1"])
    out = subprocess.run(
        [str(SKOPEO), "inspect", f"docker-archive:{path}"], capture_output=True, check=True
    )
    info = json.loads(out.stdout)
    assert info["Layers"] == [str(sha256(t)) for t in tars]
    cfg = subprocess.run(
        [str(SKOPEO), "inspect", "--config", "--raw", f"docker-archive:{path}"],
        capture_output=True,
        check=True,
    )
    assert cfg.stdout == config


@pytest.mark.skipif(SKOPEO is None, reason="skopeo not installed")
def test_read_skopeo_made_archive(tmp_path: Path) -> None:
    config_bytes, tars = image({"usr/bin/tool": b"#!/bin/sh\n" * 50})
    layout = tmp_path / "oci"
    w = OCILayoutWriter(layout)
    gz = b"".join(recompress(io.BytesIO(tars[0]), "gzip"))
    layer = w.add_bytes(gz, OCI_LAYER_GZIP)
    cfg = w.add_bytes(config_bytes, OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": cfg.to_json(),
        "layers": [layer.to_json()],
    }
    w.add_manifest(json.dumps(manifest).encode(), OCI_MANIFEST, "v1")
    archive = tmp_path / "x.tar"
    subprocess.run(
        [str(SKOPEO), "copy", f"oci:{layout}:v1", f"docker-archive:{archive}:name:tag"],
        capture_output=True,
        check=True,
    )
    with DockerArchive(archive) as arc:
        assert arc.tags() == ["docker.io/library/name:tag"]
        img = arc.resolve("docker.io/library/name:tag")
        assert img.config_bytes == config_bytes
        [desc] = img.layers
        assert desc.digest == sha256(tars[0])
        with arc.open_blob(desc) as r:
            assert r.read() == tars[0]
