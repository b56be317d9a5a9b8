"""ls, cat, diff and stats of stored images, without restoring them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from chunkstore.browse import (
    diff_images,
    image_stats,
    list_path,
    open_image,
    read_file,
    resolve_path,
)
from chunkstore.errors import MissingObject, UsageError
from chunkstore.images.backup import backup_image

sys.path.insert(0, str(Path(__file__).parent))
from test_backup_restore import layer_tar, new_repo, write_image


def test_browse_and_diff(tmp_path: Path) -> None:
    base = {"etc/hostname": b"box\n", "usr/bin/tool": b"\x7fELF" + bytes(5000), "srv/a": b"a"}
    write_image(tmp_path / "src", "v1", [layer_tar(base)])
    changed = {**base, "etc/hostname": b"other\n", "srv/new": b"n"}
    del changed["srv/a"]
    write_image(tmp_path / "src", "v2", [layer_tar(changed)])
    repo = new_repo(tmp_path)
    backup_image(repo, f"oci:{tmp_path / 'src'}:v1", "one")
    backup_image(repo, f"oci:{tmp_path / 'src'}:v2", "two")
    one, two = open_image(repo, "one"), open_image(repo, "two")
    assert sorted(n.name for n in list_path(repo, one.root, "/")) == [b"etc", b"srv", b"usr"]
    node = resolve_path(repo, one.root, "usr/bin/tool")
    assert node is not None and b"".join(read_file(repo, node)) == base["usr/bin/tool"]
    with pytest.raises(MissingObject):
        resolve_path(repo, one.root, "/nope")
    with pytest.raises(UsageError):
        resolve_path(repo, one.root, "etc/../etc")
    changes = {(c.kind, c.path) for c in diff_images(repo, one.root, two.root)}
    assert changes == {
        ("changed", "/etc/hostname"),
        ("removed", "/srv/a"),
        ("added", "/srv/new"),
    }
    assert list(diff_images(repo, one.root, one.root)) == []
    s1, s2 = image_stats(repo, one), image_stats(repo, two)
    assert s1["missing_blobs"] == 0 and s1["unique_bytes"] > 0 and s1["blobs"] > 3
    assert s1["logical_bytes"] == one.layers[0].tar_size
    assert s2["stored_bytes"] > 0
    repo.close()
