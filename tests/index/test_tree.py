"""Tests for :mod:`index.tree`: nodes, tree blobs, their validation, and file extents."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from index import cbor
from index.chunklist import ChunkRef
from index.errors import FormatError, LimitExceeded, Malformed, UnsupportedVersion
from index.tree import (
    INLINE_CHUNKS,
    MAX_NODES,
    MAX_TREE_SIZE,
    TREE_VERSION,
    Extents,
    Node,
    NodeType,
    SparseMap,
    Tree,
    decode_tree,
    encode_tree,
)
from tests.index.strategies import D1, D2, digests

# ------------------------------------------------------------------------------------------------
# Strategies
# ------------------------------------------------------------------------------------------------

names = st.binary(min_size=1, max_size=12).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)
xattrs = st.dictionaries(st.binary(min_size=1, max_size=8), st.binary(max_size=8), max_size=3).map(
    lambda d: tuple(sorted(d.items()))
)
chunk_refs = st.builds(ChunkRef, digests, st.integers(1, 2**40))
paths = st.lists(names, min_size=1, max_size=3).map(b"/".join)


@st.composite
def sparse_maps(draw: st.DrawFn, size: int) -> SparseMap:
    # Split `size` into segments separated by holes.
    n = draw(st.integers(0 if size == 0 else 1, 4))
    if n == 0:
        return SparseMap(draw(st.integers(0, 100)), ())
    cuts = sorted(draw(st.lists(st.integers(0, size), min_size=n - 1, max_size=n - 1)))
    lengths = [b - a for a, b in zip([0, *cuts], [*cuts, size], strict=True)]
    segs, pos = [], 0
    for length in lengths:
        pos += draw(st.integers(0, 100))
        segs.append((pos, length))
        pos += length
    return SparseMap(pos + draw(st.integers(0, 100)), tuple(segs))


@st.composite
def nodes(draw: st.DrawFn, name: st.SearchStrategy[bytes] = names) -> Node:
    t = draw(st.sampled_from(NodeType))
    kw: dict[str, Any] = {
        "name": draw(name),
        "type": t,
        "mode": draw(st.integers(0, 0o7777)),
        "uid": draw(st.integers(0, 2**64 - 1)),
        "gid": draw(st.integers(0, 2**32)),
        "mtime_ns": draw(st.integers(-(2**63), 2**63 - 1)),
        "xattrs": draw(xattrs),
    }
    if t == NodeType.SYMLINK:
        kw["target"] = draw(st.binary(min_size=1, max_size=20))
    elif t in (NodeType.CHAR_DEVICE, NodeType.BLOCK_DEVICE):
        kw["dev"] = (draw(st.integers(0, 2**32)), draw(st.integers(0, 2**32)))
    elif t == NodeType.DIRECTORY:
        kw["tree"] = draw(digests)
    elif t == NodeType.FILE:
        if draw(st.booleans()):
            chunks = tuple(draw(st.lists(chunk_refs, max_size=5)))
            kw["chunks"] = chunks
            kw["size"] = sum(c.size for c in chunks)
        else:
            kw["lists"] = tuple(draw(st.lists(digests, min_size=1, max_size=3)))
            kw["size"] = draw(st.integers(1, 2**64 - 1))
        if draw(st.booleans()):
            kw["hardlink"] = draw(paths)
        if draw(st.booleans()) and kw["size"] < 10_000:
            kw["sparse"] = draw(sparse_maps(kw["size"]))
    return Node(**kw)


node_lists = st.lists(nodes(), max_size=8, unique_by=lambda n: n.name)


def file_node(**kw: Any) -> Node:
    base: dict[str, Any] = {
        "name": b"f",
        "type": NodeType.FILE,
        "mode": 0o644,
        "uid": 0,
        "gid": 0,
        "mtime_ns": 0,
    }
    base.update(kw)
    return Node(**base)


def good_map(**overrides: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": b"f",
        "type": 0,
        "mode": 0o644,
        "uid": 0,
        "gid": 0,
        "mtime": 0,
        "size": 3,
        "chunks": [[D1, 3]],
    }
    d.update(overrides)
    return {k: v for k, v in d.items() if v is not _DROP}


_DROP = object()


def tree_blob(rows: list[Any], *, version: int = TREE_VERSION) -> bytes:
    return cbor.encode_envelope("tree", version, {"nodes": rows})


# ------------------------------------------------------------------------------------------------
# Round trips and canonical form
# ------------------------------------------------------------------------------------------------


@given(nodes())
def test_node_round_trip(node: Node) -> None:
    value = node.to_cbor()
    back = Node.from_cbor(cbor.decode(cbor.encode(value), max_size=1 << 20))
    assert back == node
    assert back.to_cbor() == value


@given(node_lists)
def test_tree_round_trip(ns: list[Node]) -> None:
    data = encode_tree(ns)
    tree = decode_tree(data)
    assert list(tree) == sorted(ns, key=lambda n: n.name)
    assert len(tree) == len(ns)
    assert tree.encode() == data
    # Every blob reference is visible to a generic reachability walk.
    want = {r.id for n in ns for r in n.chunks} | {x for n in ns for x in n.lists}
    want |= {n.tree for n in ns if n.tree is not None}
    env = cbor.decode(data, max_size=MAX_TREE_SIZE)
    assert set(cbor.iter_refs(env)) == want


@given(node_lists, st.randoms())
def test_canonical_any_order(ns: list[Node], rnd: Any) -> None:
    shuffled = list(ns)
    rnd.shuffle(shuffled)
    assert encode_tree(shuffled) == encode_tree(ns)


@given(node_lists, names)
def test_lookup(ns: list[Node], name: bytes) -> None:
    tree = decode_tree(encode_tree(ns))
    by_name = {n.name: n for n in ns}
    assert tree.lookup(name) == by_name.get(name)
    for n in ns:
        assert tree.lookup(n.name) == n


def test_optional_keys_omitted() -> None:
    node = file_node(size=0)
    assert node.to_cbor() == {
        "name": b"f",
        "type": 0,
        "mode": 0o644,
        "uid": 0,
        "gid": 0,
        "mtime": 0,
        "size": 0,
    }
    d = Node(b"d", NodeType.DIRECTORY, 0o755, 0, 0, -5, tree=D1).to_cbor()
    assert d == {
        "name": b"d",
        "type": 1,
        "mode": 0o755,
        "uid": 0,
        "gid": 0,
        "mtime": -5,
        "tree": D1,
    }


def test_full_file_node_keys() -> None:
    node = file_node(
        size=4,
        chunks=(ChunkRef(D1, 4),),
        hardlink=b"usr/bin/a",
        sparse=SparseMap(100, ((10, 4),)),
        xattrs=((b"user.a", b"1"),),
    )
    assert node.to_cbor() == {
        "name": b"f",
        "type": 0,
        "mode": 0o644,
        "uid": 0,
        "gid": 0,
        "mtime": 0,
        "size": 4,
        "chunks": [[D1, 4]],
        "hardlink": b"usr/bin/a",
        "sparse": [100, [[10, 4]]],
        "xattrs": [[b"user.a", b"1"]],
    }


def test_empty_tree() -> None:
    assert len(decode_tree(encode_tree([]))) == 0


def test_max_inline_chunks_round_trip() -> None:
    refs = tuple(ChunkRef(D2, 2**53 - 1 - i) for i in range(INLINE_CHUNKS))
    node = file_node(size=sum(r.size for r in refs), chunks=refs)
    assert decode_tree(encode_tree([node])).nodes == (node,)


# ------------------------------------------------------------------------------------------------
# Validation: construction
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [b"", b"/", b"a/b", b".", b"..", b"a\0b", "text"])
def test_bad_names_refused(name: Any) -> None:
    with pytest.raises(Malformed):
        file_node(name=name)
    with pytest.raises(Malformed):
        decode_tree(tree_blob([good_map(name=name)]))


@pytest.mark.parametrize(
    "kw",
    [
        {"type": 9},
        {"type": True},
        {"mode": 0o10000},
        {"mode": -1},
        {"uid": -1},
        {"gid": 2**64},
        {"mtime_ns": 2**63},
        {"mtime_ns": 1.5},
        {"size": -1},
        {"size": 3},  # no chunks
        {"size": 3, "chunks": (ChunkRef(D1, 2),)},  # do not sum
        {"size": 0, "chunks": (ChunkRef(D1, 0),)},
        {"size": 3, "chunks": (ChunkRef(D1, 3),), "lists": (D2,)},
        {"size": 0, "lists": (D2,)},
        {"size": INLINE_CHUNKS + 1, "chunks": (ChunkRef(D1, 1),) * (INLINE_CHUNKS + 1)},
        {"target": b"x"},
        {"dev": (1, 2)},
        {"tree": D1},
        {"hardlink": b"/abs"},
        {"hardlink": b"a/../b"},
        {"hardlink": b""},
        {"size": 3, "chunks": (ChunkRef(D1, 3),), "sparse": SparseMap(10, ((0, 2),))},
        {"xattrs": ((b"b", b""), (b"a", b""))},
        {"xattrs": ((b"a", b""), (b"a", b""))},
        {"xattrs": ((b"", b""),)},
    ],
)
def test_bad_fields_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(Malformed):
        file_node(**kw)


@pytest.mark.parametrize(
    ("t", "kw"),
    [
        (NodeType.DIRECTORY, {}),
        (NodeType.SYMLINK, {}),
        (NodeType.SYMLINK, {"target": "text"}),
        (NodeType.CHAR_DEVICE, {}),
        (NodeType.BLOCK_DEVICE, {"dev": (1,)}),
        (NodeType.BLOCK_DEVICE, {"dev": (1, -1)}),
        (NodeType.FIFO, {"size": 1}),
        (NodeType.SYMLINK, {"target": b"x", "hardlink": b"a"}),
    ],
)
def test_type_specific_fields(t: NodeType, kw: dict[str, Any]) -> None:
    with pytest.raises(Malformed):
        Node(b"n", t, 0, 0, 0, 0, **kw)


@pytest.mark.parametrize(
    "segs", [((5, 2), (0, 1)), ((0, 5), (4, 1)), ((0, 20),), ((-1, 1),), ((0,),)]
)
def test_bad_sparse_maps(segs: Any) -> None:
    with pytest.raises(Malformed):
        SparseMap(10, segs)


# ------------------------------------------------------------------------------------------------
# Validation: decoding hostile bytes
# ------------------------------------------------------------------------------------------------

BAD_MAPS = [
    good_map(name="f"),
    good_map(name=_DROP),
    good_map(type=_DROP),
    good_map(mode=_DROP),
    good_map(uid=_DROP),
    good_map(gid=_DROP),
    good_map(mtime=_DROP),
    good_map(size=_DROP),
    good_map(type=6),
    good_map(type="0"),
    good_map(mode="644"),
    good_map(mode=True),
    good_map(uid=-1),
    good_map(gid=[0]),
    good_map(mtime=b"0"),
    good_map(mtime=-(2**64)),
    good_map(size=-3),
    good_map(size=4),
    good_map(chunks=[]),
    good_map(chunks=[[D1, 0]], size=0),
    good_map(chunks=[[D1]]),
    good_map(chunks=[[b"x" * 33, 3]]),
    good_map(chunks=[[D1, -3]]),
    good_map(chunks={"a": 1}),
    good_map(chunks=[[D1, 1]] * (INLINE_CHUNKS + 1), size=INLINE_CHUNKS + 1),
    good_map(chunks=_DROP, lists=[]),
    good_map(chunks=_DROP, lists=[b"x"]),
    good_map(chunks=_DROP, lists=D1),
    good_map(lists=[D2]),
    good_map(hardlink="a"),
    good_map(hardlink=b"a//b"),
    good_map(sparse=[10]),
    good_map(sparse=[10, [[0, 2]]]),
    good_map(sparse=[10, [[0]]]),
    good_map(sparse=[10, [[0, 3, 0]]]),
    good_map(sparse=[1, [[0, 3]]]),
    good_map(xattrs=[]),
    good_map(xattrs=[[b"a"]]),
    good_map(xattrs=[[b"b", b""], [b"a", b""]]),
    good_map(xattrs=[["a", b""]]),
    good_map(xattrs={"a": b""}),
    good_map(tree=D1),
    good_map(target=b"x"),
    good_map(dev=[1, 2]),
    good_map(extra=1),
    good_map(**{"1": 1}),
    good_map(type=1, size=_DROP, chunks=_DROP),  # directory without tree
    good_map(type=1, size=_DROP, chunks=_DROP, tree=b"x" * 33),
    good_map(type=1, size=_DROP, chunks=_DROP, tree=D1, target=b"x"),
    good_map(type=2, size=_DROP, chunks=_DROP),  # symlink without target
    good_map(type=2, size=_DROP, chunks=_DROP, target=b""),
    good_map(type=2, size=_DROP, chunks=_DROP, target="x"),
    good_map(type=3, size=_DROP, chunks=_DROP),  # device without dev
    good_map(type=3, size=_DROP, chunks=_DROP, dev=[1]),
    good_map(type=4, size=_DROP, chunks=_DROP, dev=[1, "2"]),
    good_map(type=4, size=_DROP, chunks=_DROP, dev={"a": 1}),
    good_map(type=5, size=0, chunks=_DROP),
]


@pytest.mark.parametrize("row", BAD_MAPS, ids=range(len(BAD_MAPS)))
def test_malformed_nodes_refused(row: dict[str, Any]) -> None:
    with pytest.raises(Malformed):
        decode_tree(tree_blob([row]))
    with pytest.raises(Malformed):
        Node.from_cbor(row)


@pytest.mark.parametrize(
    "row", [good_map(chunks=[[D1, 3.0]]), good_map(mtime=0.0), good_map(dev=[1.0, 2]), [], None]
)
def test_from_cbor_refuses_values_cbor_cannot_carry(row: Any) -> None:
    with pytest.raises(Malformed):
        Node.from_cbor(row)


def test_good_map_is_good() -> None:
    assert decode_tree(tree_blob([good_map()])).nodes == (
        file_node(size=3, chunks=(ChunkRef(D1, 3),)),
    )


@pytest.mark.parametrize(
    "rows",
    [
        [good_map(name=b"a"), good_map(name=b"a")],
        [good_map(name=b"b"), good_map(name=b"a")],
        [good_map(name=b"ab"), good_map(name=b"b"), good_map(name=b"aa")],
    ],
)
def test_unsorted_or_duplicate_names_refused(rows: list[Any]) -> None:
    with pytest.raises(Malformed):
        decode_tree(tree_blob(rows))


@pytest.mark.parametrize(
    "body",
    [[], {"nodes": {}}, {"nodes": [], "x": 1}, {}, {"nodes": [5]}, {"nodes": [[b"f"]]}, None],
)
def test_malformed_bodies_refused(body: Any) -> None:
    with pytest.raises(Malformed):
        decode_tree(cbor.encode_envelope("tree", TREE_VERSION, body))


def test_wrong_kind_and_version() -> None:
    with pytest.raises(Malformed):
        decode_tree(cbor.encode_envelope("chunk-list", TREE_VERSION, {"nodes": []}))
    with pytest.raises(UnsupportedVersion):
        decode_tree(tree_blob([], version=TREE_VERSION + 1))


@given(node_lists, st.data())
def test_corruption_gives_format_errors_only(ns: list[Node], data: st.DataObject) -> None:
    blob = bytearray(encode_tree(ns))
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= data.draw(st.integers(1, 255))
    try:
        decode_tree(bytes(blob))
    except FormatError:
        pass
    truncated = bytes(blob[: data.draw(st.integers(0, len(blob) - 1))])
    with pytest.raises(FormatError):
        decode_tree(truncated)


def test_encode_refuses_duplicates() -> None:
    with pytest.raises(Malformed):
        encode_tree([file_node(), file_node()])


def test_tree_constructor_validates_order() -> None:
    a, b = file_node(name=b"a"), file_node(name=b"b")
    assert Tree((a, b)).lookup(b"b") == b
    with pytest.raises(Malformed):
        Tree((b, a))


# ------------------------------------------------------------------------------------------------
# Caps
# ------------------------------------------------------------------------------------------------


def test_size_cap_checked_before_parsing() -> None:
    with pytest.raises(LimitExceeded):
        decode_tree(b"\0" * (MAX_TREE_SIZE + 1))


def test_node_count_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    import index.tree as tree_mod

    monkeypatch.setattr(tree_mod, "MAX_NODES", 2)
    rows = [good_map(name=bytes([97 + i])) for i in range(3)]
    with pytest.raises(LimitExceeded):
        decode_tree(tree_blob(rows))
    with pytest.raises(LimitExceeded):
        encode_tree([file_node(name=bytes([97 + i])) for i in range(3)])
    assert len(decode_tree(tree_blob(rows[:2]))) == 2
    assert MAX_NODES == 1_000_000


def test_encoded_size_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    import index.tree as tree_mod

    monkeypatch.setattr(tree_mod, "MAX_TREE_SIZE", 200)
    with pytest.raises(LimitExceeded):
        encode_tree([file_node(name=bytes([97 + i])) for i in range(5)])


# ------------------------------------------------------------------------------------------------
# Extents
# ------------------------------------------------------------------------------------------------

sizes = st.lists(st.integers(1, 50), max_size=20)


def _model(sizes: list[int]) -> list[int]:
    """Chunk index of every byte."""
    return [i for i, s in enumerate(sizes) for _ in range(s)]


@given(sizes, st.data())
def test_extents_locate(szs: list[int], data: st.DataObject) -> None:
    ext = Extents([ChunkRef(D1, s) for s in szs])
    owner = _model(szs)
    assert ext.size == len(owner) == sum(szs)
    assert len(ext) == len(szs)
    if owner:
        off = data.draw(st.integers(0, len(owner) - 1))
        assert ext.locate(off) == owner[off]
        assert ext.start(owner[off]) == owner.index(owner[off])
    for bad in (-1, len(owner)):
        with pytest.raises(ValueError):
            ext.locate(bad)


@given(sizes, st.integers(0, 1100), st.integers(0, 1100))
def test_extents_span(szs: list[int], offset: int, length: int) -> None:
    ext = Extents([ChunkRef(D1, s) for s in szs])
    owner = _model(szs)
    pieces = ext.span(offset, length)
    # Expand the pieces back into (chunk, offset-in-chunk) per byte and compare with the model.
    got = [(i, o + k) for i, o, n in pieces for k in range(n)]
    want = [
        (owner[b], b - owner.index(owner[b]))
        for b in range(offset, min(offset + length, len(owner)))
    ]
    assert got == want
    assert all(n > 0 for _, _, n in pieces)
    assert len({i for i, _, _ in pieces}) == len(pieces)


def test_extents_errors() -> None:
    ext = Extents([ChunkRef(D1, 5)])
    with pytest.raises(ValueError):
        ext.span(-1, 2)
    with pytest.raises(ValueError):
        ext.span(0, -2)
    assert ext.span(5, 10) == []
    assert ext.span(3, 0) == []
    assert Extents([]).size == 0
    assert Extents([]).span(0, 5) == []


def test_extents_from_node() -> None:
    node = file_node(size=7, chunks=(ChunkRef(D1, 3), ChunkRef(D2, 4)))
    ext = Extents(node.chunks)
    assert ext.span(2, 3) == [(0, 2, 1), (1, 0, 2)]
    assert dataclasses.replace(node, name=b"g").chunks == node.chunks
