"""Layer ingest and rebuild: bit-exact round trips, dedup of rebuilt layers, recipe validation."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkstore.blob import BlobType
from chunkstore.errors import CorruptMetadata
from chunkstore.images.ingest import ingest_layer
from chunkstore.images.rebuild import rebuild_layer
from chunkstore.repository import Repository
from chunkstore.streams import ChunkStorer
from index import cbor
from index.chunklist import ChunkRef
from index.errors import FormatError
from index.recipe import (
    MAX_RAW_OP,
    Content,
    ContentLists,
    Raw,
    RecipeRoot,
    _encode_op,
    _encode_part,
    _op_cbor,
    decode_part,
)
from tests.helpers import new_repo
from tests.index.strategies import digests


def make_tar(
    files: list[tuple[str, bytes]], *, fmt: int, mtime: int, trailer: bytes = b""
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = mtime
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link-to-first")
        link.type = tarfile.SYMTYPE
        link.linkname = files[0][0] if files else "nothing"
        tar.addfile(link)
    return buf.getvalue() + trailer


def ingest(repo: Repository, tar: bytes):  # type: ignore[no-untyped-def]
    with ChunkStorer(repo) as storer:
        return ingest_layer(repo, io.BytesIO(tar), storer=storer)


names = st.text(alphabet="abcdefghij/é_", min_size=1, max_size=140).filter(
    lambda n: not n.startswith("/") and "//" not in n and not n.endswith("/")
)
files = st.lists(
    st.tuples(names, st.binary(max_size=20_000)), min_size=1, max_size=8, unique_by=lambda f: f[0]
)


@settings(max_examples=30, deadline=None)
@given(
    files=files,
    fmt=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    trailer=st.binary(max_size=700),
)
def test_round_trip_is_bit_exact(
    tmp_path_factory: pytest.TempPathFactory,
    files: list[tuple[str, bytes]],
    fmt: int,
    trailer: bytes,
) -> None:
    if fmt == tarfile.USTAR_FORMAT and any(len(n.encode()) > 99 for n, _ in files):
        fmt = tarfile.GNU_FORMAT  # ustar cannot hold these names
    tar = make_tar(files, fmt=fmt, mtime=1_700_000_000, trailer=trailer)
    repo = new_repo(tmp_path_factory.mktemp("c"))
    layer = ingest(repo, tar)
    repo.flush()
    assert layer.diff_id.raw == hashlib.sha256(tar).digest()
    assert layer.size == len(tar)
    assert b"".join(rebuild_layer(repo, layer.recipe)) == tar
    contents = {m.entry.name: m for m in layer.members}
    for name, data in files:
        member = contents[name.encode()]
        assert sum(c.size for c in member.chunks) == len(data)


def test_large_raw_runs_and_many_chunks(tmp_path: Path) -> None:
    rng = random.Random(3)
    big = rng.randbytes(6_000_000)  # > 1024 chunks of ~4 KiB: stored through chunk lists
    tar = make_tar([("big", big), ("small", b"x")], fmt=tarfile.PAX_FORMAT, mtime=1)
    tar += bytes(3 * MAX_RAW_OP)  # a long raw trailer is split across operations
    repo = new_repo(tmp_path)
    layer = ingest(repo, tar)
    big_member = next(m for m in layer.members if m.entry.name == b"big")
    assert big_member.lists and not big_member.chunks
    assert b"".join(rebuild_layer(repo, layer.recipe)) == tar


def test_rebuilt_layer_with_new_mtimes_costs_little(tmp_path: Path) -> None:
    rng = random.Random(4)
    content = [
        (f"usr/lib/file{i:03d}", rng.randbytes(rng.randint(100, 30_000))) for i in range(200)
    ]
    first = make_tar(content, fmt=tarfile.GNU_FORMAT, mtime=1_600_000_000)
    second = make_tar(content, fmt=tarfile.GNU_FORMAT, mtime=1_700_000_000)
    assert first != second
    repo = new_repo(tmp_path)
    ingest(repo, first)
    repo.flush()
    before = repo.stats["bytes_written"]
    layer = ingest(repo, second)
    repo.flush()
    added = repo.stats["bytes_written"] - before
    # Only header blocks changed: what is stored anew is a small fraction of the layer.
    assert added < 0.05 * len(second), (added, len(second))
    assert b"".join(rebuild_layer(repo, layer.recipe)) == second


def test_damaged_recipe_is_detected(tmp_path: Path) -> None:
    tar = make_tar([("a", b"hello" * 100)], fmt=tarfile.GNU_FORMAT, mtime=1)
    repo = new_repo(tmp_path)
    layer = ingest(repo, tar)
    root = RecipeRoot.decode(repo.load_blob(layer.recipe))
    wrong = RecipeRoot(root.size, type(root.diff_id)("sha256", bytes(32)), root.parts)
    wrong_id = repo.save_blob(BlobType.META, wrong.encode()).id
    with pytest.raises(CorruptMetadata, match="does not match its diff_id"):
        b"".join(rebuild_layer(repo, wrong_id))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_part_decoder_rejects_garbage_cleanly(data: bytes) -> None:
    try:
        decode_part(data)
    except FormatError:
        pass


def test_part_decoder_rejects_bad_operations() -> None:
    for op in ([0, b""], [0, "text"], [1, 5, [[b"x", 5]]], [3, 1], [1, 4, []], [2, 3, []]):
        with pytest.raises(FormatError):
            decode_part(cbor.encode_envelope("recipe-part", 1, [op]))


ops = st.one_of(
    st.builds(Raw, st.binary(min_size=1, max_size=300)),
    st.builds(
        lambda refs: Content(sum(r.size for r in refs), tuple(refs)),
        st.lists(st.builds(ChunkRef, digests, st.integers(1, 2**40)), max_size=30),
    ),
    st.builds(
        ContentLists, st.integers(0, 2**63), st.lists(digests, min_size=1, max_size=5).map(tuple)
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(ops, min_size=1, max_size=20))
def test_fast_encoding_is_the_canonical_encoding(part: list[Raw | Content | ContentLists]) -> None:
    encoded = [_encode_op(op) for op in part]
    assert encoded == [cbor.encode(_op_cbor(op)) for op in part]
    whole = _encode_part(encoded)
    assert whole == cbor.encode_envelope("recipe-part", 1, [_op_cbor(op) for op in part])
    assert decode_part(whole) == part
