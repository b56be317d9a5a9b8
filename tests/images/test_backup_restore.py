"""Image backup and restore end to end: OCI layouts in and out, verified by skopeo and umoci."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.errors import UsageError
from chunkstore.images.backup import backup_image
from chunkstore.images.oci_layout import OCILayout, OCILayoutWriter
from chunkstore.images.restore import restore_image
from chunkstore.registry.mediatypes import OCI_CONFIG, OCI_MANIFEST
from index.ids import Digest, sha256
from tests.corpus import MINBASE, MINBASE_REBUILT, require_corpus
from tests.helpers import new_repo

LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer_tar(files: dict[str, bytes], whiteouts: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
        for name in whiteouts:
            tar.addfile(tarfile.TarInfo(name))
    return buf.getvalue()


def zlib_gzip(data: bytes, level: int = 6) -> bytes:
    # A gzip member made by zlib with a fixed header: reproducible at restore.
    c = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def write_image(
    root: Path,
    ref: str,
    layers: list[bytes],
    *,
    blobs: list[bytes] | None = None,
    diff_ids: list[str] | None = None,
) -> bytes:
    """An OCI image of gzip'd ``layers`` (zlib-made unless ``blobs`` gives the compressed bytes);
    ``diff_ids`` overrides what the config claims. Returns the config bytes."""
    writer = OCILayoutWriter(root)
    descs = [
        writer.add_bytes(blob, LAYER_GZIP) for blob in (blobs or [zlib_gzip(t) for t in layers])
    ]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids or [str(sha256(t)) for t in layers],
        },
        "config": {},
    }
    config_bytes = json.dumps(config).encode()
    config_desc = writer.add_bytes(config_bytes, OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [d.to_json() for d in descs],
    }
    writer.add_manifest(json.dumps(manifest).encode(), OCI_MANIFEST, ref)
    return config_bytes


def test_round_trip_is_exact_and_valid(tmp_path: Path) -> None:
    base = layer_tar({"etc/os-release": b"ID=test\n", "usr/bin/tool": bytes(range(256)) * 300})
    top = layer_tar({"app/main.py": b"print(42)\n" * 50}, whiteouts=("etc/.wh.os-release",))
    write_image(tmp_path / "src", "v1", [base, top])
    repo = new_repo(tmp_path, on_disk=True)
    result = backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "app")
    assert result.layers == 2 and result.reproducible_layers == 2
    restored = restore_image(repo, "app", f"oci:{tmp_path / 'out'}:v1")
    assert restored.exact_layers == 2 and not restored.manifest_rewritten
    src, out = OCILayout(tmp_path / "src"), OCILayout(tmp_path / "out")
    (a,), (b,) = src.resolve("v1"), out.resolve("v1")
    assert a.manifest_bytes == b.manifest_bytes and a.config_bytes == b.config_bytes
    for desc in b.layers:
        assert (
            hashlib.sha256(out.blob_path(desc.digest).read_bytes()).hexdigest() == desc.digest.hex
        )
    assert api.check(repo, read_data=True).ok
    repo.close()
    if shutil.which("skopeo"):
        subprocess.run(
            ["skopeo", "copy", "-q", f"oci:{tmp_path / 'out'}:v1", f"oci:{tmp_path / 'copy'}:v1"],
            check=True,
        )


def test_not_reproducible_layer_rewrites_manifest_keeps_image_id(tmp_path: Path) -> None:
    tar = layer_tar({"a": b"x" * 10_000})
    blob = gzip.compress(tar, mtime=12345)  # header differs from what zlib writes alone
    blob = blob[:9] + b"\x07" + blob[10:]  # an unusual OS byte in the gzip header
    config = write_image(tmp_path / "src", "v1", [tar], blobs=[blob])
    repo = new_repo(tmp_path, on_disk=True)
    backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "x")
    restore_image(repo, "x", f"oci:{tmp_path / 'out'}:v1")
    (b,) = OCILayout(tmp_path / "out").resolve("v1")
    assert b.config_bytes == config  # same image ID whatever happened to the layer blob
    with tarfile.open(
        fileobj=io.BytesIO(
            gzip.decompress(
                (tmp_path / "out" / "blobs" / "sha256" / b.layers[0].digest.hex).read_bytes()
            )
        )
    ) as t:
        assert t.extractfile("a").read() == b"x" * 10_000  # type: ignore[union-attr]
    repo.close()


def test_inconsistent_diff_id_records_nothing(tmp_path: Path) -> None:
    tar = layer_tar({"a": b"1"})
    write_image(tmp_path / "src", "v1", [tar], diff_ids=[str(sha256(b"other"))])
    repo = new_repo(tmp_path, on_disk=True)
    with pytest.raises(UsageError, match="inconsistent"):
        backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "x")
    assert repo.list_records() == []
    repo.close()


@pytest.mark.integration
def test_real_debian_image_round_trip(tmp_path: Path) -> None:
    corpus = require_corpus(MINBASE, MINBASE_REBUILT)
    repo = new_repo(tmp_path, on_disk=True)
    backup_image(repo, f"oci:{corpus}:{MINBASE}", "minbase")
    first = repo.stats["bytes_written"]
    backup_image(repo, f"oci:{corpus}:{MINBASE_REBUILT}", "rebuilt")
    restore_image(repo, "minbase", f"oci:{tmp_path / 'out'}:minbase")
    (a,) = OCILayout(corpus).resolve(MINBASE)
    (b,) = OCILayout(tmp_path / "out").resolve("minbase")
    assert a.config_bytes == b.config_bytes
    assert repo.stats["bytes_written"] > first
    repo.close()
    if shutil.which("umoci"):
        subprocess.run(
            ["umoci", "stat", "--image", f"{tmp_path / 'out'}:minbase"],
            check=True,
            capture_output=True,
        )


def test_known_layer_is_reused_not_ingested_again(tmp_path: Path) -> None:
    base = layer_tar({"etc/a": b"a" * 3000, "usr/lib/x": bytes(range(256)) * 40, "empty": b""})
    top = layer_tar({"app/b": b"b" * 100}, whiteouts=("etc/.wh.a",))
    write_image(tmp_path / "src", "base", [base])
    write_image(tmp_path / "src", "app", [base, top])
    repo = new_repo(tmp_path, on_disk=True)
    first = backup_image(repo, f"oci:{tmp_path / 'src'}:base", "base")
    assert first.reused_layers == 0
    written = repo.stats["bytes_written"]
    second = backup_image(repo, f"oci:{tmp_path / 'src'}:app", "app")
    assert second.reused_layers == 1 and second.layers == 2
    again = backup_image(repo, f"oci:{tmp_path / 'src'}:app", "app-again")
    assert again.reused_layers == 2 and again.new_bytes == 0
    from chunkstore.browse import list_path, open_image

    app = open_image(repo, "app")
    assert app.root == open_image(repo, "app-again").root
    names = {n.name for n in list_path(repo, app.root, "/")}
    assert names == {b"app", b"etc", b"usr", b"empty"}
    assert list_path(repo, app.root, "/etc") == []  # the whiteout removed etc/a
    assert repo.stats["bytes_written"] > written
    restore_image(repo, "app-again", f"oci:{tmp_path / 'out'}:app")
    (a,), (b,) = (
        OCILayout(tmp_path / "src").resolve("app"),
        OCILayout(tmp_path / "out").resolve("app"),
    )
    assert a.manifest_bytes == b.manifest_bytes
    repo.close()


def test_damaged_layer_blob_records_nothing(tmp_path: Path) -> None:
    from chunkstore.errors import IntegrityError

    tar = layer_tar({"a": bytes(range(256)) * 100})
    write_image(tmp_path / "src", "v1", [tar])
    (desc,) = OCILayout(tmp_path / "src").resolve("v1")[0].layers
    blob = tmp_path / "src" / "blobs" / "sha256" / desc.digest.hex
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    repo = new_repo(tmp_path, on_disk=True)
    with pytest.raises((IntegrityError, UsageError)):
        backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "x")
    assert repo.list_records() == []
    repo.close()


def multi_platform_layout(root: Path) -> tuple[bytes, dict[str, str]]:
    """A two-platform OCI layout tagged ``multi``: its index bytes, manifest digest per arch."""
    from chunkstore.registry.mediatypes import OCI_INDEX

    writer = OCILayoutWriter(root)
    entries, digests = [], {}
    for arch in ("amd64", "arm64"):
        tar = layer_tar({f"bin/{arch}": arch.encode() * 500})
        layer = writer.add_bytes(zlib_gzip(tar), LAYER_GZIP)
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [str(sha256(tar))]},
            }
        ).encode()
        cdesc = writer.add_bytes(config, OCI_CONFIG)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": cdesc.to_json(),
                "layers": [layer.to_json()],
            }
        ).encode()
        mdesc = writer.add_bytes(manifest, OCI_MANIFEST)
        digests[arch] = str(mdesc.digest)
        entries.append({**mdesc.to_json(), "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    writer.add_manifest(index, OCI_INDEX, "multi")
    return index, digests


def test_multi_platform_index_is_kept_exact(tmp_path: Path) -> None:
    from chunkstore.registry.mediatypes import OCI_INDEX

    index, _ = multi_platform_layout(tmp_path / "src")
    repo = new_repo(tmp_path, on_disk=True)
    result = backup_image(repo, f"oci:{tmp_path / 'src'}:multi", "multi")
    assert result.images == 2
    restore_image(repo, "multi", f"oci:{tmp_path / 'out'}:multi")
    out_index = json.loads((tmp_path / "out" / "index.json").read_bytes())
    (entry,) = out_index["manifests"]
    assert entry["digest"] == str(sha256(index)) and entry["mediaType"] == OCI_INDEX
    arm = OCILayout(tmp_path / "out").resolve("multi", "linux/arm64")
    assert len(arm) == 1 and json.loads(arm[0].config_bytes)["architecture"] == "arm64"
    one = backup_image(repo, f"oci:{tmp_path / 'src'}:multi", "only-amd64", platform="linux/amd64")
    assert one.images == 1
    repo.close()


def test_root_directory_metadata_round_trips(tmp_path: Path) -> None:
    import os

    src = tmp_path / "rootfs"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_bytes(b"box\n")
    os.chmod(src, 0o750)
    os.utime(src, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    repo = new_repo(tmp_path, on_disk=True)
    backup_image(repo, f"dir:{src}", "rootfs")
    from chunkstore.browse import open_image

    assert open_image(repo, "rootfs").root_meta == (
        0o750,
        os.getuid(),
        os.getgid(),
        1_600_000_000_123_456_789,
    )
    restore_image(repo, "rootfs", f"dir:{tmp_path / 'out'}")
    st = os.stat(tmp_path / "out")
    assert st.st_mode & 0o7777 == 0o750
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert (tmp_path / "out" / "etc" / "hostname").read_bytes() == b"box\n"
    repo.close()


def test_forget_and_prune_keep_the_other_image_whole(tmp_path: Path) -> None:
    from chunkstore import api

    shared = {"usr/lib/shared": bytes(range(256)) * 200}
    write_image(tmp_path / "src", "a", [layer_tar({**shared, "only-a": b"a" * 50_000})])
    write_image(tmp_path / "src", "b", [layer_tar({**shared, "only-b": b"b" * 70_000})])
    repo = new_repo(tmp_path, on_disk=True)
    backup_image(repo, f"oci:{tmp_path / 'src'}:a", "a")
    backup_image(repo, f"oci:{tmp_path / 'src'}:b", "b")
    api.forget(repo, "a")
    report = api.prune(repo, repack_fraction=0.0)
    assert report.blobs_removed > 0
    check = api.check(repo, read_data=True)
    assert check.ok, check.errors
    restore_image(repo, "b", f"oci:{tmp_path / 'out'}:b")
    (orig,), (back,) = (
        OCILayout(tmp_path / "src").resolve("b"),
        OCILayout(tmp_path / "out").resolve("b"),
    )
    assert orig.manifest_bytes == back.manifest_bytes
    repo.close()


def test_gzip_level_applies_to_rewritten_layers_only(tmp_path: Path) -> None:
    rnd = random.Random(9)
    words = [rnd.randbytes(6).hex().encode() for _ in range(400)]
    tar = layer_tar({"text": b" ".join(rnd.choices(words, k=60_000))})
    odd = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 3, zlib.Z_FILTERED)
    foreign = odd.compress(tar) + odd.flush()  # settings no family tries: not reproduced
    exact = layer_tar({"other": b"y" * 5000})
    write_image(tmp_path / "src", "v1", [tar, exact], blobs=[foreign, zlib_gzip(exact)])
    repo = new_repo(tmp_path, on_disk=True)
    backed = backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "x", keep_originals=False)
    assert [r.outcome for r in backed.layer_reports] == ["new-digest", "reproduced"]
    assert backed.kept_layers == 0 and backed.kept_bytes == 0
    sizes = {}
    for level in (1, 9):
        out = tmp_path / f"out{level}"
        result = restore_image(repo, "x", f"oci:{out}:v1", gzip_level=level)
        assert result.exact_layers == 1 and result.manifest_rewritten
        (img,) = OCILayout(out).resolve("v1")
        first, second = img.layers
        data = (out / "blobs" / "sha256" / first.digest.hex).read_bytes()
        assert gzip.decompress(data) == tar  # same diff_id at any level
        sizes[level] = len(data)
        assert second.digest.hex == hashlib.sha256(zlib_gzip(exact)).hexdigest()
    assert sizes[9] < sizes[1]
    with pytest.raises(UsageError, match="level"):
        restore_image(repo, "x", f"oci:{tmp_path / 'bad'}:v1", gzip_level=0)
    repo.close()


def test_unreproducible_layer_is_kept_and_restored_exactly(tmp_path: Path) -> None:
    rnd = random.Random(10)
    words = [rnd.randbytes(6).hex().encode() for _ in range(400)]
    tar = layer_tar({"text": b" ".join(rnd.choices(words, k=60_000))})
    odd = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 3, zlib.Z_FILTERED)
    foreign = odd.compress(tar) + odd.flush()
    exact = layer_tar({"other": b"y" * 5000})
    write_image(tmp_path / "src", "v1", [tar, exact], blobs=[foreign, zlib_gzip(exact)])
    (orig,) = OCILayout(tmp_path / "src").resolve("v1")
    repo = new_repo(tmp_path, on_disk=True)
    backed = backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "x")
    assert [r.outcome for r in backed.layer_reports] == ["kept", "reproduced"]
    assert backed.kept_layers == 1 and 0 < backed.kept_bytes <= len(foreign)
    assert backed.reproducible_layers == 2
    result = restore_image(repo, "x", f"oci:{tmp_path / 'out'}:v1")
    assert result.exact_layers == 2 and not result.manifest_rewritten
    (back,) = OCILayout(tmp_path / "out").resolve("v1")
    assert back.manifest_digest == orig.manifest_digest
    first = back.layers[0]
    assert (tmp_path / "out" / "blobs" / "sha256" / first.digest.hex).read_bytes() == foreign
    # The same image again under another tag: the layer is reused, nothing is kept twice.
    again = backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "y")
    assert again.reused_layers == 2 and again.kept_bytes == 0
    assert [r.outcome for r in again.layer_reports] == ["kept", "reproduced"]
    # The kept bytes are reachable: a prune after forgetting the first tag keeps them.
    api.forget(repo, "x")
    api.prune(repo, repack_fraction=0.0)
    assert api.check(repo, read_data=True).ok
    restore_image(repo, "y", f"oci:{tmp_path / 'out2'}:v1")
    (back2,) = OCILayout(tmp_path / "out2").resolve("v1")
    assert back2.manifest_digest == orig.manifest_digest
    repo.close()


def test_damaged_kept_bytes_fail_the_restore_never_write_other_bytes(tmp_path: Path) -> None:
    from chunkstore.backends.base import FileType, Handle
    from chunkstore.backends.local import LocalBackend
    from chunkstore.errors import IntegrityError
    from chunkstore.streams import read_chunk_lists
    from index.image import ImageBody

    tar = layer_tar({"text": random.Random(12).randbytes(40_000).hex().encode()})
    odd = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 3, zlib.Z_FILTERED)
    foreign = odd.compress(tar) + odd.flush()
    write_image(tmp_path / "src", "v1", [tar], blobs=[foreign])
    repo = new_repo(tmp_path, on_disk=True)
    assert backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "x").kept_layers == 1
    _, body = repo.find_body("x", "image", ImageBody.from_cbor)
    (layer,) = body.images[0].layers
    assert layer.original is not None
    first = next(iter(read_chunk_lists(repo, layer.original)))
    loc = repo.lookup(first.id)
    assert loc is not None and isinstance(repo.backend, LocalBackend)
    path = repo.backend.path(Handle(FileType.PACK, loc.pack_id.hex))
    raw = bytearray(path.read_bytes())
    raw[loc.entry.offset + loc.entry.length - 1] ^= 0x80
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        restore_image(repo, "x", f"oci:{tmp_path / 'out'}:v1")
    out = tmp_path / "out" / "blobs" / "sha256"
    # Nothing was published under the layer's name with other bytes.
    assert not (out / Digest.parse(layer.digest).hex).exists()
    repo.close()
