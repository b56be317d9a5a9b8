"""``chunkstore analyze``: exact figures on images whose answer is known by construction."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tarfile
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from chunkstore import api
from chunkstore.analyze import KEY_BYTES, Analysis, analyze, chunker_params
from chunkstore.chunker import Chunker, ChunkerParams
from chunkstore.cli import main
from chunkstore.errors import UsageError
from chunkstore.images.backup import backup_image
from tests.corpus import MINBASE, require_corpus
from tests.images.test_backup_restore import layer_tar, write_image

RNG = random.Random(6)
X = RNG.randbytes(10_000)
Y = RNG.randbytes(5_000)
Z = RNG.randbytes(3_000)
X1 = bytes([X[0] ^ 1]) + X[1:]  # X with its first byte changed


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Analysis]:
    """Image a: L1 {X, Y, X again}, L2 {Z, whiteout of Y}; image b: L1, L3 {X1}.

    Every file is below 16 KiB, the minimum chunk of the 64 KiB size: one chunk per file, so
    chunk-level figures are known exactly.
    """
    root = tmp_path_factory.mktemp("pair") / "oci"
    l1 = layer_tar({"usr/lib/a": X, "etc/b": Y, "usr/lib/c": X})
    l2 = layer_tar({"opt/d": Z}, whiteouts=("etc/.wh.b",))
    l3 = layer_tar({"usr/lib/e": X1})
    write_image(root, "a", [l1, l2])
    write_image(root, "b", [l1, l3])
    result = analyze(
        [f"oci:{root}:a", f"oci:{root}:b"],
        chunk_sizes=[64 * 1024],
        sequence=True,
        workers=1,
        compression_sample=1,
    )
    return root, result


def test_totals_by_construction(pair: tuple[Path, Analysis]) -> None:
    _, a = pair
    t = a.totals
    assert (t.images, t.layer_refs, t.distinct_layers) == (2, 4, 3)
    assert t.logical_file_bytes == 28_000 + 35_000
    assert t.layer_level_file_bytes == 25_000 + 3_000 + 10_000
    assert t.distinct_files == 4 and t.file_level_bytes == 28_000
    assert t.chunk_level_bytes == {65536: 28_000}
    zstd = zstandard.ZstdCompressor(level=3)
    assert t.stored_estimate_bytes == sum(len(zstd.compress(d)) for d in (X, Y, Z, X1))
    assert t.compressed_bytes == sum(im.compressed_bytes for im in a.images)
    assert t.tar_bytes > t.logical_file_bytes


def test_per_image_and_layer(pair: tuple[Path, Analysis]) -> None:
    _, a = pair
    ia, ib = a.images
    assert (ia.file_bytes, ia.distinct_chunk_bytes, ia.unique_chunk_bytes) == (
        28_000,
        18_000,
        3_000,
    )
    assert ia.shared_chunk_bytes == 15_000 and ia.internal_duplicate_bytes == 10_000
    assert (ib.file_bytes, ib.distinct_chunk_bytes, ib.unique_chunk_bytes) == (
        35_000,
        25_000,
        10_000,
    )
    assert ib.shared_chunk_bytes == 15_000
    l1, l2, l3 = a.layers
    assert (l1.file_bytes, l1.files, l1.unique_chunk_bytes, len(l1.images)) == (
        25_000,
        3,
        15_000,
        2,
    )
    assert (l2.file_bytes, l2.unique_chunk_bytes, l2.images) == (3_000, 3_000, [ia.name])
    assert (l3.file_bytes, l3.unique_chunk_bytes, l3.shared_chunk_bytes) == (10_000, 10_000, 0)
    assert l1.diff_id.startswith("sha256:")
    dup = ia.internal_duplicates[0]
    assert (dup.size, dup.occurrences, dup.redundant_bytes) == (10_000, 2, 10_000)


def test_whiteouts_count_in_storage_not_in_merged_view(pair: tuple[Path, Analysis]) -> None:
    _, a = pair
    ia, ib = a.images
    # Y is deleted by image a's top layer: stored (layer figures) but not visible.
    assert (ia.merged.files, ia.merged.file_bytes, ia.merged.hidden_file_bytes) == (
        3,
        23_000,
        5_000,
    )
    assert (ia.merged.distinct_file_bytes, ia.merged.distinct_chunk_bytes) == (13_000, 13_000)
    assert ia.merged.internal_duplicate_bytes == 10_000
    assert (ib.merged.files, ib.merged.file_bytes, ib.merged.hidden_file_bytes) == (4, 35_000, 0)
    t = a.totals
    assert (t.merged_files, t.merged_file_bytes) == (7, 58_000)
    assert t.merged_file_level_bytes == 28_000 and t.merged_chunk_level_bytes == 28_000


def test_similarity_sequence_and_duplication(pair: tuple[Path, Analysis]) -> None:
    _, a = pair
    assert a.similarity.shared_bytes == [[18_000, 15_000], [15_000, 25_000]]
    assert a.similarity.jaccard[0][1] == pytest.approx(15_000 / 28_000)
    assert a.sequence is not None
    (step,) = a.sequence
    assert (step.file_bytes, step.chunk_bytes) == (10_000, 10_000)
    assert step.layer_compressed_bytes == a.layers[2].compressed_bytes
    top = a.top_files[0]
    assert (top.redundant_bytes, top.paths) == (10_000, ["/usr/lib/a", "/usr/lib/c"])
    dirs = {d.path: d.redundant_bytes for d in a.top_directories}
    assert dirs == {"/usr": 10_000, "/usr/lib": 10_000}
    (size,) = a.sizes
    assert (size.unique_chunks, size.unique_bytes, size.chunk_refs) == (4, 28_000, 5)
    assert size.dedup_ratio == pytest.approx(63_000 / 28_000)
    assert size.metadata_bytes == 4 * 50 + 5 * 40
    assert sum(b.bytes for b in size.histogram) == 28_000


def _independent_chunks(datas: list[bytes], avg: int) -> dict[bytes, int]:
    chunker = Chunker(ChunkerParams(avg // 4, avg, avg * 4))
    out: dict[bytes, int] = {}
    for data in datas:
        for c in chunker.chunk_bytes(data):
            out[hashlib.sha256(c).digest()[:KEY_BYTES]] = len(c)
    return out


def test_one_byte_change_at_chunk_level(tmp_path: Path) -> None:
    big = RNG.randbytes(300_000)
    edited = big[:150_000] + bytes([big[150_000] ^ 0xFF]) + big[150_001:]
    write_image(tmp_path, "v1", [layer_tar({"data/big": big})])
    write_image(tmp_path, "v2", [layer_tar({"data/big": edited})])
    sizes = [1024, 4096]
    a = analyze([f"oci:{tmp_path}:v1", f"oci:{tmp_path}:v2"], chunk_sizes=sizes, workers=1)
    assert a.totals.file_level_bytes == 600_000
    for avg in sizes:
        want = _independent_chunks([big, edited], avg)
        assert a.totals.chunk_level_bytes[avg] == sum(want.values())
    # The edit costs only the chunks around it: a few max-size chunks, not the file.
    only_v2 = a.images[1].unique_chunk_bytes
    assert 0 < only_v2 <= 2 * chunker_params(4096).max_size
    assert a.similarity.shared_bytes[0][1] == 300_000 - a.images[0].unique_chunk_bytes


def test_dir_source_agrees_with_a_walk_of_the_directory() -> None:
    import click

    root = Path(click.__file__).parent
    contents: dict[str, int] = {}
    total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                contents[hashlib.sha256(data).hexdigest()] = len(data)
                total += len(data)
    a = analyze([f"dir:{root}"], chunk_sizes=[4096], workers=1)
    assert a.totals.logical_file_bytes == total
    assert a.totals.file_level_bytes == sum(v for v in contents.values() if v)
    assert a.totals.merged_file_bytes == total


@pytest.mark.slow
def test_real_image_agrees_with_tarfile() -> None:
    """bookworm-minbase: file bytes and distinct contents as Python's tarfile sees them."""
    ref = MINBASE
    corpus = require_corpus(ref)
    index = json.loads((corpus / "index.json").read_text())
    (entry,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
    ]
    blob = corpus / "blobs" / "sha256"
    manifest = json.loads((blob / entry["digest"].split(":")[1]).read_bytes())
    (layer,) = manifest["layers"]
    total = 0
    contents: dict[str, int] = {}
    with tarfile.open(blob / layer["digest"].split(":")[1], "r:gz") as tar:
        for info in tar:
            if info.isreg():
                f = tar.extractfile(info)
                assert f is not None
                data = f.read()
                total += len(data)
                contents[hashlib.sha256(data).hexdigest()] = len(data)
    a = analyze([f"oci:{corpus}:{ref}"], chunk_sizes=[65536], workers=2)
    assert a.totals.logical_file_bytes == total
    assert a.totals.file_level_bytes == sum(contents.values())
    assert a.totals.distinct_files == sum(1 for v in contents.values() if v)


def test_tag_source_matches_the_oci_source(pair: tuple[Path, Analysis], tmp_path: Path) -> None:
    root, direct = pair
    repo = api.init_repository(tmp_path / "repo", cache_dir=tmp_path / "cache")
    backup_image(repo, f"oci:{root}:a", "img-a")
    backup_image(repo, f"oci:{root}:b", "img-b")
    a = analyze(
        ["tag:img-a", "tag:img-b"],
        chunk_sizes=[64 * 1024],
        workers=1,
        compression_sample=1,
        repo=repo,
    )
    repo.close()
    assert a.totals == direct.totals
    assert [im.merged for im in a.images] == [im.merged for im in direct.images]
    with pytest.raises(UsageError, match="needs a repository"):
        analyze(["tag:img-a"], workers=1)


def test_bad_arguments() -> None:
    with pytest.raises(UsageError):
        analyze([], workers=1)
    with pytest.raises(UsageError):
        analyze(["oci:/nonexistent:x"], workers=1)
    with pytest.raises(UsageError):
        analyze(["nowhere:x"], workers=1)
    with pytest.raises(UsageError):
        analyze(["dir:/"], chunk_sizes=[100], workers=1)


def test_cli_json_schema_and_tables(pair: tuple[Path, Analysis]) -> None:
    root, _ = pair
    runner = CliRunner()
    args = ["analyze", f"oci:{root}:a", f"oci:{root}:b", "--chunk-sizes", "16K,64K", "--sequence"]
    out = runner.invoke(main, [*args, "--json", "--workers", "1"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["schema"] == "chunkstore-analyze/1"
    assert set(doc) >= {
        "definitions",
        "parameters",
        "totals",
        "images",
        "layers",
        "similarity",
        "sizes",
        "top_files",
        "top_directories",
        "sequence",
        "chunk_sizes",
        "primary_chunk_size",
    }
    assert {"layer_storage", "merged_view"} <= set(doc["definitions"])
    assert doc["totals"]["chunk_level_bytes"]["65536"] == 28_000
    assert set(doc["images"][0]) >= {"merged", "unique_chunk_bytes", "shared_chunk_bytes"}
    assert isinstance(doc["totals"]["logical_file_bytes"], int)
    text = runner.invoke(main, [*args, "--workers", "1"])
    assert text.exit_code == 0, text.output
    assert "Totals" in text.output and "Update cost" in text.output
    bad = runner.invoke(main, ["analyze", "nowhere:x"])
    assert bad.exit_code == 2
