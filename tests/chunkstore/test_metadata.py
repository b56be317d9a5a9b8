"""Typed metadata loaders: one translation of format errors, naming the object that failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkstore.blob import BlobType
from chunkstore.errors import CorruptMetadata, UnsupportedFormat
from chunkstore.metadata import format_errors, parse_tree
from index import cbor
from index.chunklist import ChunkRef, encode_chunk_list
from index.errors import Malformed
from index.ids import Digest
from index.recipe import RecipeRoot
from index.tree import TREE_VERSION, encode_tree
from tests.helpers import new_repo


def test_typed_loaders_round_trip_and_name_what_is_damaged(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    try:
        chunk = repo.save_blob(BlobType.DATA, b"x" * 100).id
        refs = [ChunkRef(chunk, 100)]
        tree_id = repo.save_blob(BlobType.META, encode_tree([])).id
        list_id = repo.save_blob(BlobType.META, encode_chunk_list(refs)).id
        root = RecipeRoot(100, Digest("sha256", bytes(32)), (list_id,))
        recipe_id = repo.save_blob(BlobType.META, root.encode()).id
        assert list(repo.load_tree(tree_id)) == []
        assert repo.load_chunk_list(list_id) == refs
        assert repo.load_recipe(recipe_id) == root
        # Each loader refuses another kind of blob with a CorruptMetadata naming the blob.
        for load, wrong, what in (
            (repo.load_tree, list_id, "tree"),
            (repo.load_chunk_list, tree_id, "chunk list"),
            (repo.load_recipe, tree_id, "layer recipe"),
            (repo.load_recipe_part, recipe_id, "recipe part"),
        ):
            with pytest.raises(CorruptMetadata, match=f"^{what} {wrong.short} is invalid: "):
                load(wrong)
    finally:
        repo.close()


def test_a_newer_format_version_is_unsupported_not_corrupt() -> None:
    newer = cbor.encode_envelope("tree", TREE_VERSION + 1, {"nodes": []})
    tree_id = Digest("sha256", bytes(32))
    with pytest.raises(UnsupportedFormat, match=f"^tree {tree_id.short}: .*upgrade chunkstore"):
        parse_tree(newer, tree_id)


def test_format_errors_keeps_other_errors_and_adds_the_hint() -> None:
    with pytest.raises(CorruptMetadata, match=r"^tree x of a/b is invalid: bad; refusing$"):
        with format_errors("tree x of a/b", "; refusing"):
            raise Malformed("bad")
    with pytest.raises(KeyError), format_errors("anything"):
        raise KeyError("not a format error")
