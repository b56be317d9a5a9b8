"""Hostile metadata (reliability.md F1-F5, A4): every decoder raises only its documented errors.

Decoders that already have property tests elsewhere (CBOR, chunk lists, records, trees, pack
index, pack headers, digests, config, key files, tar headers: tests/index, tests/chunkstore,
tests/images/test_tarstream.py) are not fuzzed again; this module covers the rest -- layer
recipes, image record bodies, registry file manifests, OCI layout manifests and indexes, lock
files -- plus the caps of F2 (claimed counts of 2**32, nesting 10**5 deep) and the walk of F3/F4.
Run with ``HYPOTHESIS_PROFILE=deep`` (tools/soak) for a long run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkstore import jsonsafe
from chunkstore.backends.base import FileType, Handle
from chunkstore.backends.memory import MemoryBackend
from chunkstore.backends.registry import _parse_manifest, file_manifest
from chunkstore.blob import BlobType, Location, PackEntry
from chunkstore.chunker import ChunkerParams
from chunkstore.errors import ChunkstoreError, CorruptMetadata, IntegrityError
from chunkstore.images.oci_layout import OCILayout
from chunkstore.lock import list_locks
from chunkstore.packindex import decode_index
from chunkstore.reach import walk
from chunkstore.repository import Repository
from index import cbor
from index.chunklist import decode_chunk_list
from index.errors import FormatError
from index.ids import Digest, sha256
from index.image import ImageBody
from index.recipe import RecipeRoot, decode_part
from index.tree import decode_tree
from tests.index.strategies import digests

D = Digest("sha256", bytes(range(32)))

# CBOR values as decoders see them (references included), bounded in size and depth.
cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | digests,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=30,
)


# -- recipes and image records -----------------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_recipe_garbage_raises_only_format_error(data: bytes) -> None:
    for decode in (decode_part, RecipeRoot.decode):
        try:
            decode(data)
        except FormatError:
            pass


@given(cbor_values, st.sampled_from(["recipe-part", "layer-recipe", "other"]))
def test_recipe_structured_garbage_raises_only_format_error(value: Any, kind: str) -> None:
    try:
        data = cbor.encode_envelope(kind, 1, value)
    except FormatError:
        return
    for decode, own in ((decode_part, "recipe-part"), (RecipeRoot.decode, "layer-recipe")):
        if kind != own:  # another kind's envelope is never taken for this one
            with pytest.raises(FormatError):
                decode(data)
            continue
        try:
            decode(data)
        except FormatError:
            pass


ops = st.one_of(
    st.tuples(st.just(0), st.binary(max_size=10)).map(list),
    st.tuples(
        st.sampled_from([1, 2, 3, -1]),
        st.integers(-5, 2**64 - 1),
        st.lists(st.one_of(digests, st.lists(st.one_of(digests, st.integers(-2, 9)))), max_size=4),
    ).map(list),
    cbor_values,
)


@given(st.lists(ops, max_size=6))
def test_recipe_parts_of_almost_valid_operations(value: list[Any]) -> None:
    try:
        data = cbor.encode_envelope("recipe-part", 1, value)
    except FormatError:
        return
    try:
        parsed = decode_part(data)
    except FormatError:
        return
    for op in parsed:  # what was accepted is consistent
        size = getattr(op, "size", None)
        chunks = getattr(op, "chunks", None)
        if chunks is not None:
            assert sum(c.size for c in chunks) == size


layer = st.fixed_dictionaries(
    {
        "compression": st.sampled_from(["none", "gzip", "zstd", "lz4", 3]),
        "diff_id": st.sampled_from([str(D), "sha256:../../x", "SHA256:" + "A" * 64, 7]),
        "digest": st.sampled_from([str(D), "sha256:" + "0" * 63, ""]),
        "media_type": st.text(max_size=5),
        "recipe": st.one_of(digests, st.binary(max_size=33)),
        "reproduce": st.one_of(st.none(), st.dictionaries(st.text(max_size=4), cbor_values)),
        "size": st.integers(-1, 2**64 - 1),
        "tar_size": st.integers(-1, 2**64 - 1),
    }
)
image = st.fixed_dictionaries(
    {
        "config": st.binary(max_size=10),
        "layers": st.lists(layer, max_size=3),
        "manifest": st.binary(max_size=10),
        "manifest_media_type": st.text(max_size=5),
        "platform": st.one_of(st.none(), st.text(max_size=12)),
        "root": st.one_of(digests, st.none()),
        "root_meta": st.one_of(st.none(), st.lists(st.integers(-1, 2**64 - 1), max_size=5)),
    }
)


@given(
    st.one_of(
        cbor_values,
        st.fixed_dictionaries(
            {
                "images": st.lists(st.one_of(image, cbor_values), max_size=3),
                "index": st.one_of(st.none(), st.binary(max_size=5), st.integers()),
                "index_media_type": st.one_of(st.none(), st.text(max_size=5)),
                "source": st.one_of(st.text(max_size=5), st.integers()),
            }
        ),
    )
)
def test_image_record_bodies_raise_only_format_error(value: Any) -> None:
    try:
        ImageBody.from_cbor(value)
    except FormatError:
        pass


# -- registry file manifests and OCI layouts (JSON) ----------------------------------------------------

HANDLE = Handle(FileType.PACK, D.hex)
GOOD_MANIFEST = file_manifest(HANDLE, D, 10)


@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())))
def test_registry_file_manifest_garbage_is_corrupt_metadata(data: bytes) -> None:
    # Nothing but the exact manifest shape is a file manifest: garbage is always refused.
    with pytest.raises(CorruptMetadata):
        _parse_manifest(HANDLE, data, sha256(data))


@given(st.data())
def test_registry_file_manifest_mutations_are_corrupt_metadata(data: st.DataObject) -> None:
    doc = json.loads(GOOD_MANIFEST)
    path = data.draw(st.sampled_from(["layers", "annotations", "artifactType", "config", "x"]))
    doc[path] = data.draw(json_values)
    raw = json.dumps(doc).encode()
    try:
        entry = _parse_manifest(HANDLE, raw, sha256(raw))
    except CorruptMetadata:
        return
    assert entry.blob == D and entry.size == 10  # only changes that do not matter pass


def _oci_layout(root: Path, index: bytes, manifest: bytes | None = None) -> Path:
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    if manifest is not None:
        (root / "blobs" / "sha256" / sha256(manifest).hex).write_bytes(manifest)
    (root / "index.json").write_bytes(index)
    return root


def _resolve(root: Path) -> None:
    try:
        OCILayout(root).resolve()
    except ChunkstoreError:
        pass


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(json_values)
def test_oci_index_garbage_raises_only_chunkstore_errors(tmp_path: Path, value: Any) -> None:
    _resolve(_oci_layout(tmp_path, json.dumps(value).encode()))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(json_values, st.sampled_from(["manifest", "index"]))
def test_oci_manifest_garbage_raises_only_chunkstore_errors(
    tmp_path: Path, value: Any, kind: str
) -> None:
    manifest = json.dumps(value).encode()
    media = f"application/vnd.oci.image.{kind}.v1+json"
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": media, "digest": str(sha256(manifest)), "size": len(manifest)}],
    }
    _resolve(_oci_layout(tmp_path, json.dumps(index).encode(), manifest))


def _lock_envelope(value: Any) -> bytes:
    """Lock-shaped CBOR: the right envelope around garbage (or around an almost valid body)."""
    try:
        return cbor.encode_envelope("lock", 1, value)
    except FormatError:
        return b""


_lock_ints = st.integers(-2, 2**64 - 1)
lock_bodies = st.fixed_dictionaries(
    {
        "created": _lock_ints,
        "exclusive": st.one_of(st.booleans(), st.integers(0, 1)),
        "host": st.one_of(st.text(max_size=5), st.integers(0, 3)),
        "pid": _lock_ints,
        "refreshed": _lock_ints,
        "ttl": _lock_ints,
    }
)


@given(
    st.one_of(
        st.binary(max_size=400), cbor_values.map(_lock_envelope), lock_bodies.map(_lock_envelope)
    )
)
def test_lock_file_garbage_is_reported_not_raised(data: bytes) -> None:
    backend = MemoryBackend()
    handle = Handle(FileType.LOCK, "ab" * 32)
    backend.save(handle, data)
    invalid: list[tuple[Handle, ChunkstoreError]] = []
    # Nothing is raised: a lock file nobody can read is reported (it then conflicts with
    # every lock, see lock.py), and a valid one is listed; never both, never neither.
    valid = list_locks(backend, on_invalid=lambda h, exc: invalid.append((h, exc)))
    assert len(valid) + len(invalid) == 1
    if invalid:
        ((where, exc),) = invalid
        assert where == handle and isinstance(exc, ChunkstoreError) and str(handle) in str(exc)


# -- F2: claimed sizes and depths ----------------------------------------------------------------------


def _huge_array_claim(kind: str, inner_key: str | None = None) -> bytes:
    """An envelope whose data claims 2**32 elements, in a few bytes."""
    claim = b"\x9b" + (2**32).to_bytes(8, "big")  # array of 2**32 items, none present
    data = claim if inner_key is None else b"\xa1" + cbor.encode(inner_key) + claim
    return (
        b"\xa3"
        + cbor.encode("data")
        + data
        + cbor.encode("kind")
        + cbor.encode(kind)
        + cbor.encode("version")
        + b"\x01"
    )


@pytest.mark.parametrize(
    ("name", "decode"),
    [
        ("pack-index", lambda b: decode_index(b, "sha256")),
        ("tree", decode_tree),
        ("chunk-list", decode_chunk_list),
        ("recipe-part", decode_part),
        ("layer-recipe", RecipeRoot.decode),
    ],
)
def test_f2_claimed_2_pow_32_entries_is_a_clear_error(name: str, decode: Any) -> None:
    for data in (_huge_array_claim(name), _huge_array_claim(name, "packs")):
        start = time.monotonic()
        with pytest.raises(FormatError):
            decode(data)
        assert time.monotonic() - start < 1.0


def test_f2_nesting_10_pow_5_deep_is_a_clear_error() -> None:
    deep = b"\x81" * 100_000 + b"\x00"
    with pytest.raises(FormatError):
        cbor.decode(deep, max_size=1 << 20)


def test_f2_json_nesting_10_pow_5_deep_is_a_clear_error(tmp_path: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(CorruptMetadata):
        _parse_manifest(HANDLE, deep, sha256(deep))
    with pytest.raises(ChunkstoreError):
        OCILayout(_oci_layout(tmp_path, deep)).resolve()
    # Every JSON reader of untrusted input goes through jsonsafe.loads.
    with pytest.raises(ValueError, match="nested too deeply"):
        jsonsafe.loads(deep)


# -- F3, F4: cycles and DAG blow-up in the walk -------------------------------------------------------


def test_f3_f4_shared_subtrees_are_walked_once_and_forged_entries_fail_the_id_check(
    tmp_path: Path,
) -> None:
    """A DAG 64 levels deep where every level references the level below twice."""
    repo = Repository.init(
        MemoryBackend(), cache_dir=tmp_path, chunker=ChunkerParams(1024, 4096, 16384)
    )
    child = repo.save_blob(BlobType.DATA, b"leaf chunk").id
    levels = [child]
    for depth in range(64):
        value = {"a": child, "b": child, "level": depth}
        child = repo.save_blob(BlobType.META, cbor.encode(value)).id
        levels.append(child)
    repo.flush()
    loads: list[Digest] = []

    def locations(blob_id: Digest) -> list[Location]:
        found = [loc for t in (BlobType.META, BlobType.DATA) if (loc := repo.lookup(blob_id, t))]
        return found

    def load(loc: Location) -> bytes:
        loads.append(loc.entry.id)
        return repo.load_at(loc)

    start = time.monotonic()
    reach = walk([("dag", {"root": child})], locations, load)
    assert time.monotonic() - start < 2.0
    assert len(loads) == len(set(loads)) == 64  # 2**64 paths, 64 loads
    assert len(reach.blobs) == 65 and not reach.missing and not reach.damaged

    # F3: a forged index entry naming a child at its parent's place (a cycle) fails the id check.
    top = repo.lookup(levels[-1], BlobType.META)
    assert top is not None
    forged = Location(
        top.pack_id,
        PackEntry(
            BlobType.META, levels[-2], top.entry.offset, top.entry.length, top.entry.raw_length
        ),
    )
    with pytest.raises(IntegrityError):
        repo.load_at(forged)
    cyclic = walk(
        [("cycle", {"root": levels[-1]})],
        lambda blob_id: [forged] if blob_id == levels[-2] else locations(blob_id),
        repo.load_at,
    )
    assert levels[-2] in cyclic.damaged  # reported, not looped on
    repo.close()
