"""Overlay entries that only remove (docker's and containerd's handling of a PAX global header),
and entries left out of the view through ``on_refused`` instead of failing the layer."""

from __future__ import annotations

import pytest

from index.errors import Malformed
from index.overlay import LayerEntry, Overlay
from index.tree import NodeType


def _tree(overlay: Overlay) -> dict[bytes, object]:
    def walk(d: object) -> dict[bytes, object]:
        children = getattr(d, "children", {})
        return {k: walk(v) if hasattr(v, "children") else v.type for k, v in children.items()}

    return walk(overlay.root)


def test_removing_entries_delete_in_order_and_create_parents() -> None:
    ov = Overlay()
    ov.apply_layer([LayerEntry(b"etc/conf"), LayerEntry(b"etc/keep")])
    ov.apply_layer(
        [
            LayerEntry(b"late", NodeType.FILE),
            LayerEntry(b"etc/conf", removes=True),
            LayerEntry(b"late", removes=True),  # same layer, earlier entry: removed too
            LayerEntry(b"new/dir/name", removes=True),  # nothing there: parents appear
            LayerEntry(b"etc/.wh.keep", removes=True),  # a whiteout by its name, as in containerd
        ]
    )
    assert _tree(ov) == {b"etc": {}, b"new": {b"dir": {}}}


def test_on_refused_leaves_entries_out_and_goes_on() -> None:
    refused: list[tuple[bytes, str]] = []
    ov = Overlay()
    ov.apply_layer([LayerEntry(b"link", NodeType.SYMLINK, target=b"/elsewhere")])
    ov.apply_layer(
        [
            LayerEntry(b"../up"),
            LayerEntry(b""),
            LayerEntry(b".wh.x/y"),
            LayerEntry(b"hard", is_hardlink=True, link_target=b"missing"),
            LayerEntry(b"link/below"),
            LayerEntry(b"bad-mode", mode=0o17777),
            LayerEntry(b"fine"),
        ],
        on_refused=lambda e, exc: refused.append((e.path, str(exc))),
    )
    assert [p for p, _ in refused] == [b"../up", b"", b".wh.x/y", b"hard", b"link/below",
                                       b"bad-mode"]  # fmt: skip
    assert all(reason for _, reason in refused)
    assert _tree(ov) == {b"link": NodeType.SYMLINK, b"fine": NodeType.FILE}


def test_without_on_refused_the_layer_fails() -> None:
    with pytest.raises(Malformed, match=r"'\.\.'"):
        Overlay().apply_layer([LayerEntry(b"fine"), LayerEntry(b"a/../b")])
