"""Image sources and targets beyond OCI layouts: ``dir:`` and ``docker-archive:``, and safe extraction."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.blob import BlobType
from chunkstore.errors import CorruptMetadata, UsageError
from chunkstore.images.backup import backup_image
from chunkstore.images.dirsource import DirTarStream
from chunkstore.images.docker_archive import DockerArchive, write_docker_archive
from chunkstore.images.locations import parse_source
from chunkstore.images.oci_layout import OCILayout, OCILayoutWriter
from chunkstore.images.restore import restore_image
from chunkstore.registry.mediatypes import OCI_CONFIG, OCI_MANIFEST
from chunkstore.repository import Repository
from index.ids import sha256
from index.image import ImageBody, ImageEntry
from index.record import Record
from index.tree import Node, NodeType, decode_tree, encode_tree
from tests.helpers import new_repo

SKOPEO = shutil.which("skopeo")
IS_ROOT = os.geteuid() == 0
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def make_tree(root: Path) -> dict[str, bool]:
    """A small root file system; returns which optional features the file system supports."""
    (root / "etc" / "deep" / "er").mkdir(parents=True)
    (root / "etc" / "os-release").write_bytes(b"ID=test\n")
    (root / "etc" / "deep" / "er" / "big").write_bytes(bytes(range(256)) * 400)
    # More chunks than a tree node inlines: stored through chunk-list blobs.
    (root / "etc" / "deep" / "er" / "huge").write_bytes(random.Random(7).randbytes(6 << 20))
    (root / "empty").write_bytes(b"")
    (root / "emptydir").mkdir()
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "tool", 0o751)
    os.symlink("../etc/os-release", root / "bin" / "link")
    os.symlink("/does/not/exist", root / "dangling")
    (root / "hl-a").write_bytes(b"shared inode\n")
    os.link(root / "hl-a", root / "hl-b")
    os.mkfifo(root / "fifo", 0o640)
    features = {"bytes_name": True, "xattr": True}
    try:
        (root / os.fsdecode(b"caf\xe9-latin1")).write_bytes(b"non-utf8 name\n")
    except (OSError, UnicodeError):
        features["bytes_name"] = False
    try:
        os.setxattr(root / "etc" / "os-release", "user.test", b"value\x00\xff")
    except OSError:
        features["xattr"] = False
    os.chmod(root / "etc" / "deep", 0o750)
    base = 1_600_000_000_123_456_789
    for i, p in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        os.utime(p, ns=(base + i, base + i * 1_000_001), follow_symlinks=False)
    return features


def snapshot(root: Path) -> dict[bytes, tuple[object, ...]]:
    """Everything compared between a source tree and its extraction (but not inode numbers)."""
    out: dict[bytes, tuple[object, ...]] = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, broot)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(full)
            xattrs: tuple[tuple[str, bytes], ...] = ()
            if not stat.S_ISLNK(st.st_mode):
                xattrs = tuple(
                    sorted(
                        (n, os.getxattr(full, n))
                        for n in os.listxattr(full)
                        if n.startswith("user.")
                    )
                )
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns, extra, xattrs)
    return out


def test_parse_source_transports() -> None:
    assert parse_source("oci:/x/y:v1") == ("oci", Path("/x/y"), "v1")
    assert parse_source("docker-archive:/a.tar:app:1.0") == (
        "docker-archive",
        Path("/a.tar"),
        "app:1.0",
    )
    assert parse_source("docker-archive:/a.tar") == ("docker-archive", Path("/a.tar"), None)
    assert parse_source("dir:/r/o:o/t") == ("dir", Path("/r/o:o/t"), None)
    for bad in ("docker://x", "oci", "dir:", "tarball:/x"):
        with pytest.raises(UsageError, match="docker-archive:FILE"):
            parse_source(bad)


def test_dir_tar_is_deterministic_and_streamed(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    a, b = DirTarStream(tmp_path / "src"), DirTarStream(tmp_path / "src")
    first = b"".join(iter(lambda: a.read(777), b""))
    assert first == b.read() and a.size == len(first)
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(first))]
    assert names[0] == "." and names == sorted(names, key=lambda n: n.split("/"))
    with pytest.raises(UsageError, match="not a directory"):
        DirTarStream(tmp_path / "src" / "empty")


def test_dir_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    features = make_tree(src)
    repo = new_repo(tmp_path, on_disk=True)
    result = backup_image(repo, f"dir:{src}", "rootfs", platform="linux/arm64")
    assert result.images == 1 and result.layers == 1 and result.reproducible_layers == 1
    assert not result.notes
    # Deterministic: the same directory gives the same image ID.
    again = backup_image(repo, f"dir:{src}", "rootfs2", platform="linux/arm64")
    assert again.new_bytes == 0

    out = tmp_path / "out"
    restored = restore_image(repo, "rootfs", f"dir:{out}")
    assert restored.skipped == [] and not restored.notes
    assert snapshot(out) == snapshot(src)
    assert os.stat(out / "hl-a").st_ino == os.stat(out / "hl-b").st_ino
    assert os.stat(out / "hl-a").st_nlink == 2
    assert stat.S_ISFIFO(os.lstat(out / "fifo").st_mode)
    assert os.readlink(out / "dangling") == "/does/not/exist"
    tree_id = ImageBody.from_cbor(repo.find_record("rootfs")[1].body).images[0].root
    for name in (b"etc", b"deep", b"er"):
        node = decode_tree(repo.load_blob(tree_id)).lookup(name)
        assert node is not None and node.tree is not None
        tree_id = node.tree
    huge = decode_tree(repo.load_blob(tree_id)).lookup(b"huge")
    assert huge is not None and huge.lists  # content restored through chunk-list blobs
    if features["bytes_name"]:
        assert (out / os.fsdecode(b"caf\xe9-latin1")).read_bytes() == b"non-utf8 name\n"
    if features["xattr"]:
        assert os.getxattr(out / "etc" / "os-release", "user.test") == b"value\x00\xff"

    # A non-empty destination is refused unless forced.
    with pytest.raises(UsageError, match="not empty"):
        restore_image(repo, "rootfs", f"dir:{out}")
    restore_image(repo, "rootfs", f"dir:{out}", force=True)
    assert snapshot(out) == snapshot(src)

    # The same record as an OCI layout and as a docker archive.
    restore_image(repo, "rootfs", f"oci:{tmp_path / 'oci'}:v1")
    (img,) = OCILayout(tmp_path / "oci").resolve("v1")
    config = json.loads(img.config_bytes)
    assert config["architecture"] == "arm64" and len(config["rootfs"]["diff_ids"]) == 1
    archive = tmp_path / "img.tar"
    da = restore_image(repo, "rootfs", f"docker-archive:{archive}:example/rootfs:1")
    assert da.exact_layers == 1 and not da.manifest_rewritten
    with pytest.raises(UsageError, match="already exists"):
        restore_image(repo, "rootfs", f"docker-archive:{archive}")
    with DockerArchive(archive) as reader:
        assert reader.tags() == ["example/rootfs:1"]
        assert reader.resolve("example/rootfs:1").config_bytes == img.config_bytes
    if SKOPEO is not None:
        for loc in (f"oci:{tmp_path / 'oci'}:v1", f"docker-archive:{archive}"):
            info = json.loads(
                subprocess.run(
                    ["skopeo", "inspect", "--override-arch", "arm64", loc],
                    check=True,
                    capture_output=True,
                ).stdout
            )
            assert info["Architecture"] == "arm64" and len(info["Layers"]) == 1
    assert api.check(repo, read_data=True).ok
    repo.close()


def test_dir_source_reports_sockets(tmp_path: Path) -> None:
    import socket

    src = tmp_path / "s"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "sock"))
    except OSError:
        pytest.skip("cannot bind a unix socket here")
    try:
        repo = new_repo(tmp_path, on_disk=True)
        result = backup_image(repo, f"dir:{src}", "s")
        assert any("sock" in n and "socket" in n for n in result.notes)
        repo.close()
    finally:
        sock.close()


def legacy_archive(path: Path, config: bytes, layers: list[bytes], tag: str) -> None:
    """A docker < 25 style archive: <hex>.json config, <id>/layer.tar, manifest.json."""
    with tarfile.open(path, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add(f"{sha256(config).hex}.json", config)
        names = []
        for i, layer in enumerate(layers):
            names.append(f"{i:064x}/layer.tar")
            add(names[-1], layer)
        add(
            "manifest.json",
            json.dumps(
                [{"Config": f"{sha256(config).hex}.json", "RepoTags": [tag], "Layers": names}]
            ).encode(),
        )


def layer(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in entries:
            content = (data or {}).get(info.name)
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mtime, info.mode = kind, 1_700_000_000, 0o644
    for k, v in kw.items():
        setattr(info, k, v)
    return info


@pytest.mark.parametrize("style", ["written", "legacy"])
def test_docker_archive_source_round_trip(tmp_path: Path, style: str) -> None:
    tars = [
        layer([entry("etc/", tarfile.DIRTYPE, mode=0o755), entry("etc/a")], {"etc/a": b"a" * 5000}),
        layer([entry("etc/.wh.a"), entry("b")], {"b": b"bee\n"}),
    ]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [str(sha256(t)) for t in tars]},
            "config": {"Env": ["A=1"]},
        },
        indent=2,
    ).encode()
    archive = tmp_path / "in.tar"
    if style == "written":
        write_docker_archive(archive, config, [(sha256(t), [t]) for t in tars], ["app:1"])
    else:
        legacy_archive(archive, config, tars, "app:1")
    repo = new_repo(tmp_path, on_disk=True)
    result = backup_image(repo, f"docker-archive:{archive}:app:1", "app", platform="linux/amd64")
    assert result.layers == 2 and result.reproducible_layers == 2
    with pytest.raises(UsageError, match="not linux/arm64"):
        backup_image(repo, f"docker-archive:{archive}", "app", platform="linux/arm64")
    with pytest.raises(UsageError, match="no image tagged"):
        backup_image(repo, f"docker-archive:{archive}:other:2", "app")
    _, record = repo.find_record("app")
    assert ImageBody.from_cbor(record.body).images[0].config == config  # exact bytes kept

    out = tmp_path / "out.tar"
    restore_image(repo, "app", f"docker-archive:{out}")
    with DockerArchive(out) as reader:
        img = reader.resolve("app:latest")
        assert img.config_bytes == config
        for desc, tar in zip(img.layers, tars, strict=True):
            with reader.open_blob(desc) as blob:
                assert blob.read() == tar
    restore_image(repo, "app", f"oci:{tmp_path / 'oci'}")
    (oimg,) = OCILayout(tmp_path / "oci").resolve("app")
    assert oimg.config_bytes == config
    ex = tmp_path / "rootfs"
    restore_image(repo, "app", f"dir:{ex}")
    assert sorted(p.name for p in ex.iterdir()) == ["b", "etc"]
    assert list((ex / "etc").iterdir()) == [] and (ex / "b").read_bytes() == b"bee\n"
    if SKOPEO is not None:
        subprocess.run(
            ["skopeo", "inspect", f"docker-archive:{out}"], check=True, capture_output=True
        )
    repo.close()


def write_oci(root: Path, tars: list[bytes]) -> None:
    writer = OCILayoutWriter(root)
    descs = [writer.add_bytes(t, LAYER_TAR) for t in tars]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [str(sha256(t)) for t in tars]},
    }
    cdesc = writer.add_bytes(json.dumps(config).encode(), OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": cdesc.to_json(),
        "layers": [d.to_json() for d in descs],
    }
    writer.add_manifest(json.dumps(manifest).encode(), OCI_MANIFEST, "v1")


def nothing_outside(outside: Path) -> None:
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("split", [False, True])
def test_symlink_escape_is_left_out_of_the_view(tmp_path: Path, split: bool) -> None:
    """A member below a symlink is not in the merged view (nor in a dir: restore), and a note
    says so; the layers themselves are stored and given back exactly."""
    outside = tmp_path / "outside"
    outside.mkdir()
    link = entry("etc", tarfile.SYMTYPE, linkname=str(outside))
    evil = entry("etc/evil")
    tars = (
        [layer([link]), layer([evil], {"etc/evil": b"pwned"})]
        if split
        else [layer([link, evil], {"etc/evil": b"pwned"})]
    )
    write_oci(tmp_path / "src", tars)
    repo = new_repo(tmp_path, on_disk=True)
    result = backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "evil")
    (note,) = result.notes
    assert "not in the file-system view" in note and "not a directory" in note
    restored = restore_image(repo, "evil", f"dir:{tmp_path / 'rootfs'}")
    assert note in restored.notes
    assert os.readlink(tmp_path / "rootfs" / "etc") == str(outside)
    nothing_outside(outside)
    restore_image(repo, "evil", f"oci:{tmp_path / 'out'}:v1")
    (img,) = OCILayout(tmp_path / "out").resolve("v1")
    got = [OCILayout(tmp_path / "out").blob_path(d.digest).read_bytes() for d in img.layers]
    assert got == tars
    repo.close()


def save_image_record(repo: Repository, name: str, root_tree: bytes) -> None:
    root = repo.save_blob(BlobType.META, root_tree).id
    image = ImageEntry(b"{}", OCI_MANIFEST, b"{}", None, root, ())
    body = ImageBody(source="test", images=(image,))
    repo.save_record(Record(name=name, time_ns=time.time_ns(), type="image", body=body.to_cbor()))


def test_crafted_dotdot_node_is_refused(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, on_disk=True)
    good = encode_tree([Node(b"ab", NodeType.FIFO, 0o644, 0, 0, 0)])
    crafted = good.replace(b"\x42ab", b"\x42..")
    assert crafted != good
    save_image_record(repo, "crafted", crafted)
    dest = tmp_path / "work" / "dest"
    with pytest.raises(CorruptMetadata):
        restore_image(repo, "crafted", f"dir:{dest}")
    assert list((tmp_path / "work").iterdir()) == [dest] and list(dest.iterdir()) == []
    repo.close()


def test_force_never_follows_existing_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tars = [
        layer(
            [entry("etc/", tarfile.DIRTYPE, mode=0o755), entry("etc/evil"), entry("top")],
            {"etc/evil": b"inside only", "top": b"t"},
        )
    ]
    write_oci(tmp_path / "src", tars)
    repo = new_repo(tmp_path, on_disk=True)
    backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "img")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "etc")
    os.symlink(outside / "top", dest / "top")
    restore_image(repo, "img", f"dir:{dest}", force=True)
    nothing_outside(outside)
    assert (
        not (dest / "etc").is_symlink() and (dest / "etc" / "evil").read_bytes() == b"inside only"
    )
    assert not (dest / "top").is_symlink() and (dest / "top").read_bytes() == b"t"
    repo.close()


def test_devices_and_setuid_need_allow_special(tmp_path: Path) -> None:
    tars = [
        layer(
            [
                entry("dev/", tarfile.DIRTYPE, mode=0o755),
                entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
                entry("su", mode=0o4755),
            ],
            {"su": b"#!/bin/sh\n"},
        )
    ]
    write_oci(tmp_path / "src", tars)
    repo = new_repo(tmp_path, on_disk=True)
    backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "img")
    dest = tmp_path / "plain"
    result = restore_image(repo, "img", f"dir:{dest}")
    assert len(result.skipped) == 1 and "dev/null" in result.skipped[0]
    assert "character device 1,3" in result.skipped[0]
    assert any("dev/null" in n for n in result.notes)
    assert any("setuid" in n for n in result.notes)
    assert not os.path.lexists(dest / "dev" / "null")
    assert stat.S_IMODE(os.stat(dest / "su").st_mode) == 0o755
    if IS_ROOT:
        special = tmp_path / "special"
        try:
            result = restore_image(repo, "img", f"dir:{special}", allow_special=True)
        except UsageError as exc:
            if "not permitted" in str(exc).lower():
                pytest.skip("mknod is not permitted here")
            raise
        assert result.skipped == []
        st = os.lstat(special / "dev" / "null")
        assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1
        assert stat.S_IMODE(os.stat(special / "su").st_mode) == 0o4755
    repo.close()


def test_multi_image_record_needs_platform(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, on_disk=True)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    backup_image(repo, f"dir:{tmp_path / 'd'}", "one", platform="linux/amd64")
    with pytest.raises(UsageError, match="no image for linux/arm64"):
        restore_image(repo, "one", f"dir:{tmp_path / 'x'}", platform="linux/arm64")
    restore_image(repo, "one", f"dir:{tmp_path / 'x'}", platform="linux/amd64")
    assert (tmp_path / "x" / "f").read_bytes() == b"x"
    repo.close()
