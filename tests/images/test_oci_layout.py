"""OCI layouts: writing, reading back bit-exactly, verification, and hostile layouts."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from chunkstore.errors import IntegrityError, MissingObject, UnsupportedFormat, UsageError
from chunkstore.images.blobs import BlobDigestMismatch, VerifiedReader, write_blob_atomically
from chunkstore.images.oci_layout import OCILayout, OCILayoutWriter
from chunkstore.images.recompress import recompress
from chunkstore.registry.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST
from index.ids import Digest, sha256
from tests.corpus import MINBASE, require_corpus

SKOPEO = shutil.which("skopeo")
UMOCI = shutil.which("umoci")


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def add_image(
    w: OCILayoutWriter, files: dict[str, bytes], arch: str = "amd64", variant: str | None = None
) -> tuple[bytes, bytes, bytes]:
    """Store one single-layer image; return (manifest, config, compressed layer)."""
    tar = make_tar(files)
    layer = b"".join(recompress(io.BytesIO(tar), "gzip"))
    layer_desc = w.add_bytes(layer, OCI_LAYER_GZIP)
    config: dict[str, object] = {
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [str(sha256(tar))]},
        "config": {"Cmd": ["/bin/sh"]},
    }
    if variant:
        config["variant"] = variant
    config_bytes = json.dumps(config).encode()
    config_desc = w.add_bytes(config_bytes, OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [layer_desc.to_json()],
    }
    return json.dumps(manifest, indent=2).encode(), config_bytes, layer


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, dict[str, tuple[bytes, bytes, bytes]]]:
    root = tmp_path / "oci"
    w = OCILayoutWriter(root)
    images = {
        "a": add_image(w, {"etc/a": b"hello a\n"}),
        "b": add_image(w, {"etc/b": b"hello b\n" * 100}),
        "amd64": add_image(w, {"bin/x": b"x86"}),
        "arm64": add_image(w, {"bin/x": b"arm"}, arch="arm64", variant="v8"),
    }
    w.add_manifest(images["a"][0], OCI_MANIFEST, "a")
    w.add_manifest(images["b"][0], OCI_MANIFEST, "b")
    children = []
    for key, plat in (
        ("amd64", {"os": "linux", "architecture": "amd64"}),
        ("arm64", {"os": "linux", "architecture": "arm64", "variant": "v8"}),
    ):
        desc = w.add_bytes(images[key][0], OCI_MANIFEST)
        children.append({**desc.to_json(), "platform": plat})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    w.add_manifest(index, OCI_INDEX, "multi")
    return root, images


def test_round_trip_exact(layout: tuple[Path, dict[str, tuple[bytes, bytes, bytes]]]) -> None:
    root, images = layout
    lay = OCILayout(root)
    assert lay.refs() == ["a", "b", "multi"]
    for ref in ("a", "b"):
        [img] = lay.resolve(ref)
        manifest, config, layer = images[ref]
        assert img.manifest_bytes == manifest
        assert img.manifest_digest == sha256(manifest)
        assert img.config_bytes == config
        assert img.config_digest == sha256(config)
        assert img.media_type == OCI_MANIFEST
        assert str(img.platform) == "linux/amd64"
        [desc] = img.layers
        with lay.open_blob(desc) as r:
            assert r.read() == layer
            assert r.verified


def test_platform_selection(layout: tuple[Path, dict[str, tuple[bytes, bytes, bytes]]]) -> None:
    root, images = layout
    lay = OCILayout(root)
    both = lay.resolve("multi")
    assert [str(i.platform) for i in both] == ["linux/amd64", "linux/arm64/v8"]
    assert [i.manifest_bytes for i in both] == [images["amd64"][0], images["arm64"][0]]
    assert both[0].parents[0].media_type == OCI_INDEX
    [arm] = lay.resolve("multi", "linux/arm64")
    assert arm.config_bytes == images["arm64"][1]
    assert lay.resolve("multi", "linux/arm64/v8")[0] == arm
    with pytest.raises(UsageError, match="no manifest for platform linux/s390x"):
        lay.resolve("multi", "linux/s390x")
    with pytest.raises(UsageError, match="invalid platform"):
        lay.resolve("multi", "linux")
    with pytest.raises(UsageError, match="is linux/amd64, not linux/arm64"):
        lay.resolve("a", "linux/arm64")


def test_ref_resolution_errors(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    w = OCILayoutWriter(root)
    m1 = add_image(w, {"a": b"1"})[0]
    w.add_manifest(m1, OCI_MANIFEST, None)
    [only] = OCILayout(root).resolve(None)
    assert only.manifest_bytes == m1
    m2 = add_image(w, {"a": b"2"})[0]
    w.add_manifest(m2, OCI_MANIFEST, "two")
    with pytest.raises(UsageError, match="holds 2 manifests; name one of: two"):
        OCILayout(root).resolve(None)
    with pytest.raises(UsageError, match=r"no image named 'nope'.*available: two"):
        OCILayout(root).resolve("nope")
    # Replacing a ref keeps one entry.
    w.add_manifest(m1, OCI_MANIFEST, "two")
    lay = OCILayout(root)
    assert len(lay.entries) == 2
    assert lay.resolve("two")[0].manifest_bytes == m1


def test_blob_damage_named(layout: tuple[Path, dict[str, tuple[bytes, bytes, bytes]]]) -> None:
    root, images = layout
    config_digest = sha256(images["a"][1])
    path = root / "blobs" / "sha256" / config_digest.hex
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BlobDigestMismatch, match=str(config_digest)):
        OCILayout(root).resolve("a")
    path.write_bytes(images["a"][1] + b" ")
    with pytest.raises(IntegrityError, match="longer than the declared"):
        OCILayout(root).resolve("a")
    path.write_bytes(images["a"][1][:-1])
    with pytest.raises(IntegrityError, match="ends after"):
        OCILayout(root).resolve("a")
    path.unlink()
    with pytest.raises(MissingObject, match=str(config_digest)):
        OCILayout(root).resolve("a")


def test_layer_size_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    w = OCILayoutWriter(root)
    manifest, _, layer = add_image(w, {"f": b"data"})
    obj = json.loads(manifest)
    obj["layers"][0]["size"] += 1
    lay_desc = w.add_bytes(layer + b"x", OCI_LAYER_GZIP)  # a blob of that size exists
    obj["layers"][0]["digest"] = str(sha256(layer))
    lay_path = root / "blobs" / "sha256" / sha256(layer).hex
    os.replace(root / "blobs" / "sha256" / lay_desc.digest.hex, lay_path)
    bad = json.dumps(obj).encode()
    w.add_manifest(bad, OCI_MANIFEST, "bad")
    [img] = OCILayout(root).resolve("bad")
    with pytest.raises(BlobDigestMismatch, match=str(sha256(layer))):
        with OCILayout(root).open_blob(img.layers[0]) as r:
            r.read()


def test_wrong_media_type(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    w = OCILayoutWriter(root)
    manifest = add_image(w, {"f": b"x"})[0]
    w.add_manifest(manifest, OCI_MANIFEST, "x")
    index_path = root / "index.json"
    index = json.loads(index_path.read_bytes())
    index["manifests"][0]["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
    index_path.write_text(json.dumps(index))
    with pytest.raises(UsageError, match=r"declares mediaType.*descriptor says"):
        OCILayout(root).resolve("x")
    index["manifests"][0]["mediaType"] = OCI_INDEX
    index_path.write_text(json.dumps(index))
    with pytest.raises(UsageError, match="descriptor says"):
        OCILayout(root).resolve("x")


def test_hostile_digest_rejected(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    OCILayoutWriter(root)
    (tmp_path / "x").write_text("secret")
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:../../x", "size": 6}],
    }
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match=re.escape("invalid digest 'sha256:../../x'")):
        OCILayout(root)


def test_layout_checks(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a directory"):
        OCILayout(tmp_path / "absent")
    root = tmp_path / "oci"
    OCILayoutWriter(root)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(UnsupportedFormat, match=r"2\.0\.0"):
        OCILayout(root)


def test_foreign_layer_refused(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    w = OCILayoutWriter(root)
    manifest, _, _ = add_image(w, {"f": b"x"})
    obj = json.loads(manifest)
    obj["layers"].append(
        {
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": "sha256:" + "ab" * 32,
            "size": 10,
            "urls": ["https://example.invalid/layer"],
        }
    )
    w.add_manifest(json.dumps(obj).encode(), OCI_MANIFEST, "f")
    with pytest.raises(UsageError, match="foreign layer"):
        OCILayout(root).resolve("f")


def test_manifest_needs_blobs_first(tmp_path: Path) -> None:
    w = OCILayoutWriter(tmp_path / "oci")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + "00" * 32, "size": 2},
        "layers": [],
    }
    with pytest.raises(MissingObject, match="store the blob first"):
        w.add_manifest(json.dumps(manifest).encode(), OCI_MANIFEST, "x")
    assert json.loads((tmp_path / "oci" / "index.json").read_bytes())["manifests"] == []


def test_verified_reader() -> None:
    data = b"0123456789"
    d = sha256(data)
    r = VerifiedReader(io.BytesIO(data + b"extra"), d, len(data))
    with pytest.raises(BlobDigestMismatch, match="longer"):
        r.read(100)
    r = VerifiedReader(io.BytesIO(data), d, len(data))
    assert r.read(4) == b"0123"
    assert r.read() == b"456789"
    assert r.verified
    with pytest.raises(BlobDigestMismatch, match="hashes to"):
        VerifiedReader(io.BytesIO(b"x" * 10), d, 10).read()


def test_write_blob_atomically_refuses_mismatch(tmp_path: Path) -> None:
    d = sha256(b"right")
    with pytest.raises(BlobDigestMismatch, match="hash to"):
        write_blob_atomically(tmp_path, d, [b"wr", b"ong"])
    assert list((tmp_path / "sha256").iterdir()) == []
    write_blob_atomically(tmp_path, d, [b"ri", b"ght"])
    assert (tmp_path / "sha256" / d.hex).read_bytes() == b"right"
    with pytest.raises(UsageError):
        write_blob_atomically(tmp_path, Digest("hmac-sha256", d.raw), [b"right"])


@pytest.mark.skipif(SKOPEO is None, reason="skopeo not installed")
def test_skopeo_reads_and_copies(
    layout: tuple[Path, dict[str, tuple[bytes, bytes, bytes]]], tmp_path: Path
) -> None:
    root, images = layout
    out = subprocess.run(
        [str(SKOPEO), "inspect", "--raw", f"oci:{root}:a"], capture_output=True, check=True
    )
    assert out.stdout == images["a"][0]
    cfg = subprocess.run(
        [str(SKOPEO), "inspect", "--config", "--raw", f"oci:{root}:b"],
        capture_output=True,
        check=True,
    )
    assert cfg.stdout == images["b"][1]
    dest = tmp_path / "copy"
    subprocess.run(
        [
            str(SKOPEO),
            "copy",
            "--all",
            "--preserve-digests",
            f"oci:{root}:multi",
            f"oci:{dest}:copied",
        ],
        capture_output=True,
        check=True,
    )
    copied = OCILayout(dest).resolve("copied")
    assert [i.manifest_bytes for i in copied] == [images["amd64"][0], images["arm64"][0]]


@pytest.mark.skipif(UMOCI is None, reason="umoci not installed")
def test_umoci_reads(
    layout: tuple[Path, dict[str, tuple[bytes, bytes, bytes]]], tmp_path: Path
) -> None:
    root, _ = layout
    subprocess.run([str(UMOCI), "stat", "--image", f"{root}:a"], capture_output=True, check=True)
    bundle = tmp_path / "bundle"
    subprocess.run(
        [str(UMOCI), "unpack", "--rootless", "--image", f"{root}:b", str(bundle)],
        capture_output=True,
        check=True,
    )
    assert (bundle / "rootfs" / "etc" / "b").read_bytes() == b"hello b\n" * 100


@pytest.mark.integration
def test_corpus_resolves() -> None:
    lay = OCILayout(require_corpus(MINBASE))
    assert MINBASE in lay.refs()
    for ref in lay.refs():
        [img] = lay.resolve(ref, "linux/amd64")
        assert img.manifest_digest == sha256(img.manifest_bytes)
        config = json.loads(img.config_bytes)
        assert len(config["rootfs"]["diff_ids"]) == len(img.layers)
    [img] = lay.resolve(MINBASE)
    with lay.open_blob(img.layers[0]) as r:
        h = hashlib.sha256()
        while block := r.read(1 << 20):
            h.update(block)
    assert h.hexdigest() == img.layers[0].digest.hex
