"""Tests for :mod:`index.overlay`: OCI layer semantics and the tree blobs built from the result."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from index.chunklist import ChunkRef
from index.errors import Malformed
from index.ids import Digest, sha256
from index.overlay import (
    OPAQUE,
    LayerEntry,
    Overlay,
    OverlayStats,
    normalize_path,
)
from index.tree import Node, NodeType, decode_tree
from tests.index.strategies import D1, D2

DIR = NodeType.DIRECTORY
FILE = NodeType.FILE


class Store:
    """A dict-backed ``save`` callback recording the order of saves."""

    def __init__(self) -> None:
        self.blobs: dict[Digest, bytes] = {}
        self.order: list[Digest] = []

    def __call__(self, data: bytes) -> Digest:
        d = sha256(data)
        self.blobs[d] = data
        self.order.append(d)
        return d


def build(ov: Overlay) -> tuple[Digest, Store]:
    store = Store()
    return ov.build_trees(store), store


def flatten(root: Digest, store: Store) -> dict[bytes, Node]:
    """Every node of the built image by full path (iterative walk)."""
    out: dict[bytes, Node] = {}
    stack = [(root, b"")]
    while stack:
        tid, prefix = stack.pop()
        for node in decode_tree(store.blobs[tid]):
            path = prefix + node.name
            out[path] = node
            if node.tree is not None:
                stack.append((node.tree, path + b"/"))
    return out


def merged(*layers: list[LayerEntry]) -> dict[bytes, Node]:
    ov = Overlay()
    for layer in layers:
        ov.apply_layer(layer)
    return flatten(*build(ov))


def f(path: bytes, data: int = 1, **kw: Any) -> LayerEntry:
    """A regular file whose single chunk's size identifies its content."""
    return LayerEntry(path, FILE, size=data, chunks=(ChunkRef(D1, data),), **kw)


def d(path: bytes, mode: int = 0o755, **kw: Any) -> LayerEntry:
    return LayerEntry(path, DIR, mode=mode, **kw)


def link(path: bytes, target: bytes) -> LayerEntry:
    return LayerEntry(path, FILE, is_hardlink=True, link_target=target)


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (b"a/b", b"a/b"),
        (b"./a/b", b"a/b"),
        (b"/a/b/", b"a/b"),
        (b"a//b///c", b"a/b/c"),
        (b"./a/./b", b"a/b"),
        (b".", b""),
        (b"./", b""),
        (b"/", b""),
        (b".//./", b""),
    ],
)
def test_normalize_path(raw: bytes, want: bytes) -> None:
    assert normalize_path(raw) == want


@pytest.mark.parametrize("raw", [b"", b"..", b"a/../b", b"./..", b"a/..", b"a\0b", "a"])
def test_bad_paths_refused(raw: Any) -> None:
    with pytest.raises(Malformed):
        normalize_path(raw)
    with pytest.raises(Malformed):
        Overlay().apply_layer([f(raw)])


def test_normalised_paths_address_the_same_entry() -> None:
    m = merged([f(b"./etc/passwd", 1), f(b"/etc//passwd", 2), d(b"etc/")])
    assert set(m) == {b"etc", b"etc/passwd"}
    assert m[b"etc/passwd"].size == 2


# ------------------------------------------------------------------------------------------------
# Layer semantics
# ------------------------------------------------------------------------------------------------


def test_implicit_parents() -> None:
    m = merged([f(b"a/b/c", 3)])
    assert set(m) == {b"a", b"a/b", b"a/b/c"}
    for p in (b"a", b"a/b"):
        n = m[p]
        assert (n.type, n.mode, n.uid, n.gid, n.mtime_ns) == (DIR, 0o755, 0, 0, 0)


def test_later_entry_replaces_earlier() -> None:
    m = merged([f(b"x", 1), f(b"x", 2)], [f(b"x", 3, mode=0o600)])
    assert m[b"x"].size == 3 and m[b"x"].mode == 0o600


def test_whiteout_removes_lower_subtree_and_is_hidden() -> None:
    m = merged(
        [f(b"a/keep"), f(b"a/gone/deep/x"), f(b"a/file")],
        [LayerEntry(b"a/.wh.gone", FILE), LayerEntry(b"a/.wh.file", FILE)],
    )
    assert set(m) == {b"a", b"a/keep"}


def test_whiteout_does_not_hide_same_layer() -> None:
    m = merged([f(b"a/x", 1)], [f(b"a/x", 2), LayerEntry(b"a/.wh.x", FILE)])
    assert m[b"a/x"].size == 2


def test_whiteout_of_missing_path_is_harmless_and_creates_parent() -> None:
    m = merged([f(b"z")], [LayerEntry(b"q/.wh.nothing", FILE), LayerEntry(b".wh.nope", FILE)])
    assert set(m) == {b"z", b"q"}


def test_empty_whiteout_name_refused() -> None:
    with pytest.raises(Malformed):
        Overlay().apply_layer([LayerEntry(b"a/.wh.", FILE)])


def test_aufs_meta_whiteouts_ignored() -> None:
    m = merged([f(b"a/x")], [LayerEntry(b"a/.wh..wh.plnk", DIR), LayerEntry(b".wh..wh.aufs", FILE)])
    assert set(m) == {b"a", b"a/x"}


def test_whiteout_name_as_directory_refused() -> None:
    with pytest.raises(Malformed):
        Overlay().apply_layer([f(b".wh.a/b")])


def test_opaque_removes_lower_keeps_same_layer() -> None:
    m = merged(
        [f(b"d/lower"), f(b"d/sub/x"), f(b"other")],
        # Same-layer entries stay whether they come before or after the marker.
        [f(b"d/before", 5), LayerEntry(b"d/" + OPAQUE, FILE), f(b"d/after", 6)],
    )
    assert set(m) == {b"d", b"d/before", b"d/after", b"other"}
    assert m[b"d/before"].size == 5


def test_opaque_root() -> None:
    m = merged([f(b"a"), f(b"b/c")], [LayerEntry(b"./" + OPAQUE, FILE), f(b"n")])
    assert set(m) == {b"n"}


def test_opaque_on_missing_dir_creates_it() -> None:
    m = merged([LayerEntry(b"x/" + OPAQUE, FILE)])
    assert set(m) == {b"x"} and m[b"x"].type == DIR


def test_file_replaces_directory_subtree() -> None:
    m = merged([f(b"a/b/c"), f(b"a/d")], [f(b"a", 9)])
    assert set(m) == {b"a"}
    assert m[b"a"].type == FILE


def test_directory_replaces_file() -> None:
    m = merged([f(b"a", 9)], [d(b"a", 0o700), f(b"a/x")])
    assert m[b"a"].type == DIR and m[b"a"].mode == 0o700
    assert set(m) == {b"a", b"a/x"}


def test_directory_replacing_directory_keeps_children_takes_metadata() -> None:
    m = merged(
        [d(b"a", 0o755, uid=1), f(b"a/x")],
        [d(b"a", 0o700, uid=2, mtime_ns=-7, xattrs=((b"user.k", b"v"),))],
    )
    n = m[b"a"]
    assert (n.mode, n.uid, n.mtime_ns, n.xattrs) == (0o700, 2, -7, ((b"user.k", b"v"),))
    assert b"a/x" in m


def test_entry_below_non_directory_refused() -> None:
    ov = Overlay()
    ov.apply_layer([LayerEntry(b"lib", NodeType.SYMLINK, target=b"usr/lib")])
    with pytest.raises(Malformed, match="not a directory"):
        ov.apply_layer([f(b"lib/x")])


def test_root_entry_sets_root_metadata() -> None:
    ov = Overlay()
    ov.apply_layer([d(b"./", 0o700, uid=5), f(b"a")])
    assert ov.root.meta.mode == 0o700 and ov.root.meta.uid == 5
    with pytest.raises(Malformed):
        Overlay().apply_layer([f(b"./")])
    with pytest.raises(Malformed):
        Overlay().apply_layer([link(b".", b"a")])


def test_all_node_types_survive() -> None:
    m = merged(
        [
            LayerEntry(b"s", NodeType.SYMLINK, target=b"/etc"),
            LayerEntry(b"c", NodeType.CHAR_DEVICE, dev=(1, 3)),
            LayerEntry(b"b", NodeType.BLOCK_DEVICE, dev=(8, 0)),
            LayerEntry(b"p", NodeType.FIFO),
            LayerEntry(b"big", FILE, size=10, lists=(D2,)),
        ]
    )
    assert m[b"s"].target == b"/etc"
    assert m[b"c"].dev == (1, 3) and m[b"b"].type == NodeType.BLOCK_DEVICE
    assert m[b"p"].type == NodeType.FIFO
    assert m[b"big"].lists == (D2,)


def test_invalid_entry_fields_refused() -> None:
    with pytest.raises(Malformed):
        Overlay().apply_layer([LayerEntry(b"s", NodeType.SYMLINK)])
    with pytest.raises(Malformed):
        Overlay().apply_layer([LayerEntry(b"x", FILE, size=3)])
    with pytest.raises(Malformed):
        Overlay().apply_layer([d(b"x", 0o17777)])


# ------------------------------------------------------------------------------------------------
# Hard links
# ------------------------------------------------------------------------------------------------


def test_hardlink_group() -> None:
    m = merged([f(b"usr/bin/perl", 7, mode=0o755), link(b"usr/bin/perl5", b"./usr/bin/perl")])
    a, b = m[b"usr/bin/perl"], m[b"usr/bin/perl5"]
    assert a.hardlink == b.hardlink == b"usr/bin/perl"
    assert (b.size, b.chunks, b.mode) == (7, a.chunks, 0o755)


def test_hardlink_chain_and_later_layer_share_one_group() -> None:
    m = merged([f(b"a", 4), link(b"b", b"a")], [link(b"c", b"b")])
    assert {m[p].hardlink for p in (b"a", b"b", b"c")} == {b"a"}


def test_hardlink_to_missing_target_refused() -> None:
    with pytest.raises(Malformed, match="does not exist"):
        Overlay().apply_layer([link(b"x", b"nope")])
    with pytest.raises(Malformed):
        Overlay().apply_layer([d(b"dir"), link(b"x", b"dir")])
    with pytest.raises(Malformed):
        Overlay().apply_layer([f(b"a"), link(b"x", b"../a")])


def test_hardlink_group_renamed_when_first_member_removed() -> None:
    m = merged([f(b"a", 4), link(b"z", b"a"), link(b"m", b"a")], [LayerEntry(b".wh.a", FILE)])
    assert m[b"m"].hardlink == m[b"z"].hardlink == b"m"


def test_hardlink_group_of_one_loses_the_field() -> None:
    m = merged([f(b"a", 4), link(b"b", b"a")], [f(b"b", 5)])
    assert m[b"a"].hardlink is None and m[b"b"].hardlink is None


def test_hardlink_groups_with_the_same_id_stay_apart() -> None:
    # Group "a" = {a, b}; then a is replaced and linked again as c: a new group also called "a".
    m = merged([f(b"a", 4), link(b"b", b"a"), link(b"b2", b"a")], [f(b"a", 5), link(b"c", b"a")])
    assert m[b"a"].hardlink == m[b"c"].hardlink == b"a"
    assert m[b"b"].hardlink == m[b"b2"].hardlink == b"b"
    assert m[b"b"].size == 4 and m[b"c"].size == 5


def test_hardlink_to_symlink_copies_node() -> None:
    m = merged([LayerEntry(b"s", NodeType.SYMLINK, target=b"x"), link(b"t", b"s")])
    assert m[b"t"].target == b"x" and m[b"t"].hardlink is None


# ------------------------------------------------------------------------------------------------
# Tree blobs: determinism, dedup, order
# ------------------------------------------------------------------------------------------------


def image(change: int = 1) -> list[LayerEntry]:
    return [
        d(b"usr"),
        f(b"usr/share/doc/a/README", 1),
        f(b"usr/share/doc/b/README", 2),
        f(b"usr/lib/x/y/z/deep", change),
        f(b"usr/lib/x/other", 3),
        f(b"etc/passwd", 4),
        f(b"etc/group", 5),
    ]


def test_root_id_deterministic_across_entry_order() -> None:
    a, b = Overlay(), Overlay()
    a.apply_layer(image())
    b.apply_layer(list(reversed(image())))
    ra, sa = build(a)
    rb, sb = build(b)
    assert ra == rb and set(sa.blobs) == set(sb.blobs)
    assert build(a)[0] == ra


def test_deep_change_rewrites_only_the_path_to_the_root() -> None:
    a, b = Overlay(), Overlay()
    a.apply_layer(image(1))
    b.apply_layer(image(99))
    ra, sa = build(a)
    rb, sb = build(b)
    assert ra != rb
    # usr/lib/x/y/z changed, so z, y, x, lib, usr and the root get new blobs; nothing else.
    assert len(set(sb.blobs) - set(sa.blobs)) == 6
    assert len(set(sa.blobs) & set(sb.blobs)) == len(sa.blobs) - 6
    fa, fb = flatten(ra, sa), flatten(rb, sb)
    for p in (b"etc", b"usr/share", b"usr/share/doc", b"usr/share/doc/a"):
        assert fa[p].tree == fb[p].tree


def test_unchanged_subdirectory_dedups_across_images() -> None:
    a, b = Overlay(), Overlay()
    a.apply_layer([f(b"opt/app/bin", 1), f(b"srv/x", 1)])
    b.apply_layer([f(b"opt/app/bin", 1), f(b"home/u/y", 2)])
    fa, fb = flatten(*build(a)), flatten(*build(b))
    assert fa[b"opt"].tree == fb[b"opt"].tree
    assert fa[b"opt/app"].tree == fb[b"opt/app"].tree


def test_children_saved_before_parents_and_root_last() -> None:
    ov = Overlay()
    ov.apply_layer(image())
    root, store = build(ov)
    assert store.order[-1] == root
    seen: set[Digest] = set()
    for tid in store.order:
        for node in decode_tree(store.blobs[tid]):
            if node.tree is not None:
                assert node.tree in seen
        seen.add(tid)


def test_deep_tree_no_recursion() -> None:
    depth = 3000
    ov = Overlay()
    ov.apply_layer([f(b"/".join([b"d"] * depth) + b"/leaf", 1)])
    root, store = build(ov)
    assert len(store.order) == depth + 1
    assert len(flatten(root, store)) == depth + 1


def test_empty_image() -> None:
    root, store = build(Overlay())
    assert decode_tree(store.blobs[root]).nodes == ()


def test_stats() -> None:
    ov = Overlay()
    ov.apply_layer(
        [
            f(b"a/x", 10),
            link(b"a/y", b"a/x"),
            f(b"b", 5),
            LayerEntry(b"s", NodeType.SYMLINK, target=b"b"),
            LayerEntry(b"p", NodeType.FIFO),
        ]
    )
    assert ov.stats() == OverlayStats(files=3, dirs=2, symlinks=1, others=1, bytes=15)
    # Two groups that share an id (the first member was replaced, then linked again) count twice.
    ov.apply_layer([f(b"a/x", 7), link(b"a/z", b"a/x")])
    assert ov.stats() == OverlayStats(files=4, dirs=2, symlinks=1, others=1, bytes=22)


# ------------------------------------------------------------------------------------------------
# Against a dict model of the OCI rules
# ------------------------------------------------------------------------------------------------

comps = st.sampled_from([b"a", b"b", b"c"])
rel_paths = st.lists(comps, min_size=1, max_size=3).map(tuple)
base_ops = st.one_of(
    st.tuples(st.just("file"), rel_paths, st.integers(0, 0o777)),
    st.tuples(st.just("dir"), rel_paths, st.integers(0, 0o777)),
    st.tuples(st.just("wh"), rel_paths, st.just(0)),
    st.tuples(st.just("opq"), st.lists(comps, max_size=2).map(tuple), st.just(0)),
)
# Hard links are rarer and mostly aim at shallow paths, so most examples do not end in an error.
link_ops = st.tuples(st.just("link"), rel_paths, st.lists(comps, min_size=1, max_size=1).map(tuple))
ops = st.one_of(base_ops, link_ops)
layers = st.lists(st.lists(ops, max_size=8), min_size=1, max_size=4)
prefixes = st.sampled_from([b"", b"./", b"/"])

Key = tuple[bytes, ...]


def _remove(state: dict[Key, tuple[str, int]], parts: Key, *, keep_self: bool = False) -> None:
    for k in [k for k in state if k[: len(parts)] == parts]:
        if not (keep_self and k == parts):
            del state[k]


def model_apply(
    state: dict[Key, tuple[str, int]],
    layer: list[tuple[str, Key, Any]],
    kept: list[tuple[str, Key, Any]],
) -> None:
    """Apply ``layer`` to ``state``; ``kept`` gets the ops without links whose target is no file.

    (Links to missing targets are refused, see test_hardlink_to_missing_target_refused; dropping
    them here keeps most generated examples valid.)
    """
    for kind, parts, _ in layer:
        if kind == "wh":
            _remove(state, parts)
        elif kind == "opq" and (not parts or parts in state):
            _remove(state, parts, keep_self=True)
    for op in layer:
        kind, parts, mode = op
        if kind == "link" and state.get(mode, ("",))[0] != "file":
            continue
        kept.append(op)
        parents = parts if kind == "opq" else parts[:-1]
        for i in range(1, len(parents) + 1):
            q = parents[:i]
            if q not in state:
                state[q] = ("dir", 0o755)
            elif state[q][0] != "dir":
                raise Malformed("parent is not a directory")
        if kind == "dir":
            if state.get(parts, ("",))[0] != "dir":
                _remove(state, parts)
            state[parts] = ("dir", mode)
        elif kind == "file":
            _remove(state, parts)
            state[parts] = ("file", mode)
        elif kind == "link":
            target = state[mode]
            _remove(state, parts)
            state[parts] = target


def to_entry(op: tuple[str, Key, Any], prefix: bytes) -> LayerEntry:
    kind, parts, mode = op
    if kind == "link":
        return link(prefix + b"/".join(parts), b"/".join(mode))
    if kind == "wh":
        parts = (*parts[:-1], b".wh." + parts[-1])
    elif kind == "opq":
        parts = (*parts, OPAQUE)
    path = prefix + b"/".join(parts)
    if kind == "dir":
        return d(path, mode)
    return LayerEntry(path, FILE, mode=mode)


@settings(max_examples=400, deadline=None)
@given(layers, prefixes)
def test_matches_dict_model(layer_ops: list[list[tuple[str, Key, Any]]], prefix: bytes) -> None:
    ov = Overlay()
    state: dict[Key, tuple[str, int]] = {}
    for layer in layer_ops:
        kept: list[tuple[str, Key, Any]] = []
        try:
            model_apply(state, layer, kept)
        except Malformed:
            with pytest.raises(Malformed):
                ov.apply_layer([to_entry(op, prefix) for op in kept])
            return
        ov.apply_layer([to_entry(op, prefix) for op in kept])
        got = {
            tuple(p.split(b"/")): ("dir" if n.type == DIR else "file", n.mode)
            for p, n in flatten(*build(ov)).items()
        }
        assert got == state
