"""Issue 17 end to end: layers of every accepted form are backed up and restored byte for byte,
and the merged view follows docker and containerd, saying what it leaves out.

Each archive becomes a one-layer image (uncompressed, so the restored blob is the rebuilt tar and
its digest is the diff_id); it is backed up, restored to an OCI layout, compared byte for byte,
then backed up again, which re-reads the members from the stored recipe (the reuse path) and must
give the same tree and notes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings

from chunkstore import api, browse
from chunkstore.blob import BlobType
from chunkstore.chunker import ChunkerParams
from chunkstore.cli import main
from chunkstore.images.backup import BackupResult, backup_image
from chunkstore.images.oci_layout import OCILayout, OCILayoutWriter
from chunkstore.images.rebuild import recipe_members
from chunkstore.images.restore import restore_image
from chunkstore.images.tarstream import TarError
from chunkstore.mount import run as run_module
from chunkstore.registry.mediatypes import OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST
from chunkstore.repository import Repository
from index.ids import sha256
from index.recipe import RecipeBuilder
from index.tree import NodeType, SparseMap
from tests.oracles.tar_oracles import GoLister, check_archive, go_testdata
from tests.oracles.tarbuild import CLASSES, Built, archives, extended, header, long_name, pad

EOA = bytes(1024)
_counter = itertools.count()


def write_image(root: Path, layers: list[bytes]) -> None:
    writer = OCILayoutWriter(root)
    descs = [writer.add_bytes(tar, OCI_LAYER_TAR) for tar in layers]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [str(sha256(t)) for t in layers]},
        "config": {},
    }
    cdesc = writer.add_bytes(json.dumps(config).encode(), OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": cdesc.to_json(),
        "layers": [d.to_json() for d in descs],
    }
    writer.add_manifest(json.dumps(manifest).encode(), OCI_MANIFEST, "v1")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repository]:
    tmp = tmp_path_factory.mktemp("forms")
    r = api.init_repository(
        tmp / "repo", cache_dir=tmp / "cache", chunker=ChunkerParams(1024, 4096, 16384)
    )
    yield r
    r.close()


def round_trip(repo: Repository, layers: list[bytes], work: Path) -> BackupResult:
    """Back up, restore exactly, back up again from the stored recipes; returns the first result."""
    n = next(_counter)
    src, out = work / f"src{n}", work / f"out{n}"
    write_image(src, layers)
    first = backup_image(repo, f"oci:{src}:v1", f"forms-{n}")
    restore_image(repo, f"forms-{n}", f"oci:{out}:v1")
    layout = OCILayout(out)
    (image,) = layout.resolve("v1")
    assert [layout.blob_path(d.digest).read_bytes() for d in image.layers] == layers
    again = backup_image(repo, f"oci:{src}:v1", f"forms-{n}-again")
    assert again.reused_layers == len(layers) and again.notes == first.notes
    one, two = browse.open_image(repo, f"forms-{n}"), browse.open_image(repo, f"forms-{n}-again")
    assert one.root == two.root and one.view_notes == two.view_notes == tuple(first.notes)
    return first


def test_go_suite_layers_round_trip(go_tar: GoLister, repo: Repository, tmp_path: Path) -> None:
    testdata = go_testdata()
    assert testdata is not None
    done = []
    for path in sorted(testdata.glob("*.tar")):
        data = path.read_bytes()
        if check_archive(data, go_tar).must_accept:
            round_trip(repo, [data], tmp_path)
            done.append(path.name)
    assert len(done) == 31


@pytest.mark.parametrize("cls", CLASSES)
def test_generated_forms_round_trip(repo: Repository, tmp_path: Path, cls: str) -> None:
    @settings(
        max_examples=4,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(archives(cls))
    def check(built: Built) -> None:
        round_trip(repo, [built.data], tmp_path)

    check()


def _names(repo: Repository, tag: str, path: str = "/") -> dict[bytes, NodeType]:
    image = browse.open_image(repo, tag)
    return {n.name: n.type for n in browse.list_path(repo, image.root, path)}


def test_global_headers_apply_to_nothing_and_remove_their_name(
    repo: Repository, tmp_path: Path
) -> None:
    """docker and containerd ignore a global header's records, but remove what its name names."""
    base = header(b"etc/conf", size=2) + pad(b"hi") + header(b"keep", size=0) + EOA
    top = (
        extended([(b"uname", b"global"), (b"path", b"etc/conf")], b"g")
        + extended([(b"comment", b"c")], b"g")  # named GlobalHead.0.1: nothing there
        + header(b"new", size=1, uname=b"local")
        + pad(b"n")
    )  # and no end-of-archive blocks
    result = round_trip(repo, [base, top], tmp_path)
    assert result.notes == []
    tag = f"forms-{next(_counter) - 1}"
    assert _names(repo, tag) == {b"etc": NodeType.DIRECTORY, b"keep": NodeType.FILE,
                                 b"new": NodeType.FILE}  # fmt: skip
    assert _names(repo, tag, "/etc") == {}


def test_runtime_types_and_what_the_view_leaves_out(repo: Repository, tmp_path: Path) -> None:
    dumpdir = b"Yfile\x00\x00"
    sparse_map = [
        (b"GNU.sparse.major", b"0"),
        (b"GNU.sparse.minor", b"1"),
        (b"GNU.sparse.numblocks", b"2"),
        (b"GNU.sparse.map", b"0,2,4096,3"),
        (b"GNU.sparse.realsize", b"8192"),
        (b"GNU.sparse.name", b"sparse01"),
    ]
    pax10 = [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
             (b"GNU.sparse.name", b"sparse10"), (b"GNU.sparse.realsize", b"4096")]  # fmt: skip
    map10 = b"1\n0\n3\n"
    layer = (
        header(b"inc/", b"D", len(dumpdir), fmt="gnu")
        + pad(dumpdir)
        + header(b"old-dir/", b"\x00")
        + header(b"contig", b"7", 3)
        + pad(b"abc")
        + header(b"label", b"V", 4, fmt="gnu")
        + pad(b"vvvv")
        + extended(sparse_map)
        + header(b"PaxHeaders/sparse", size=5)
        + pad(b"aabbb")
        + extended(pax10)
        + header(b"PaxHeaders/sparse10", size=512 + 3)
        + pad(pad(map10) + b"xyz")
        + header(b"hard", b"1", 0, b"missing")
        + header(b"../escape", size=1)
        + pad(b"e")
        + long_name(b"L", b"empty-L-is-ignored")
        + header(b"after", size=0)
        + EOA
    )
    result = round_trip(repo, [layer], tmp_path)
    tag = f"forms-{next(_counter) - 1}"
    names = _names(repo, tag)
    assert names == {
        b"inc": NodeType.DIRECTORY,
        b"old-dir": NodeType.DIRECTORY,
        b"contig": NodeType.FILE,
        b"sparse01": NodeType.FILE,
        b"empty-L-is-ignored": NodeType.FILE,
    }
    image = browse.open_image(repo, tag)
    node = browse.resolve_path(repo, image.root, "sparse01")
    assert node is not None and node.sparse == SparseMap(8192, ((0, 2), (4096, 3)))
    assert b"".join(browse.read_file(repo, node)) == b"aabbb"
    text = "\n".join(result.notes)
    assert "1 of type 'V' (label)" in text and "docker and containerd refuse" in text
    assert "GNU incremental directory ('D') (inc/)" in text
    assert "contiguous file ('7') (contig)" in text
    assert "PAX 1.0 sparse file(s), whose sparse map is inside their data: sparse10" in text
    assert "2 member(s) it cannot hold" in text and "does not exist" in text and "'..'" in text
    assert len(result.notes) == 4 and all("\n" not in n for n in result.notes)
    restored = restore_image(repo, tag, f"dir:{tmp_path / 'rootfs'}")
    assert set(result.notes) <= set(restored.notes)
    assert not (tmp_path / "escape").exists()


def test_cli_prints_view_notes(tmp_path: Path) -> None:
    write_image(tmp_path / "src", [header(b"label", b"V", 0, fmt="gnu") + header(b"f") + EOA])
    runner = CliRunner()
    env = {"CHUNKSTORE_CACHE": str(tmp_path / "cache")}
    base = ["--repo", str(tmp_path / "repo")]

    def run(*args: str) -> tuple[str, str]:
        result = runner.invoke(main, [*base, *args], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout, result.stderr

    run("init")
    out, err = run("--json", "backup", f"oci:{tmp_path / 'src'}:v1", "--tag", "t")
    (note,) = json.loads(out)["notes"]
    assert "of type 'V' (label)" in note and note in err
    out, err = run("ls-image", "t")
    assert "f" in out.split() and note in err


def test_a_stored_recipe_the_reader_now_refuses_is_named(repo: Repository) -> None:
    """A recipe stored by an older chunkstore that accepted a global PAX size (GNU tar applies
    it, Go does not) is refused with its id when a backup would reuse it."""
    tar = extended([(b"size", b"512")], b"g") + header(b"f") + header(b"x") + EOA
    builder = RecipeBuilder(lambda part: repo.save_blob(BlobType.META, part).id)
    builder.raw(tar)
    root = builder.finish(sha256(tar))
    recipe = repo.save_blob(BlobType.META, root.encode()).id
    with pytest.raises(TarError, match=f"stored layer recipe {recipe.short}: PAX global header"):
        recipe_members(repo, recipe)


def test_mount_reports_view_notes(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image(tmp_path / "src", [header(b"label", b"V", 0, fmt="gnu") + header(b"f") + EOA])
    result = backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "mount-notes")
    monkeypatch.setattr(run_module, "serve", lambda *args, **kwargs: None)  # no FUSE here
    notes: list[str] = []
    run_module.mount_image(repo, "mount-notes", tmp_path / "mnt", on_note=notes.append)
    assert notes == result.notes and len(notes) == 1
