"""Typed metadata: trees, chunk lists and recipes decoded behind one translation of format errors.

The decoders in ``index/`` raise ``index.errors.FormatError`` for bytes that break the format
(SPEC.md section 11a). :func:`format_errors` is the one place that turns such a failure into an
engine error naming the object: ``UnsupportedFormat`` for a format version this code does not read,
``CorruptMetadata`` for anything else. ``Repository.load_tree`` and its siblings load a blob and
decode it with the functions here; the mount, which fetches its blobs itself, decodes the bytes it
fetched with them directly. No caller translates by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from chunkstore.errors import CorruptMetadata, UnsupportedFormat
from index.chunklist import ChunkRef, decode_chunk_list
from index.errors import FormatError, UnsupportedVersion
from index.ids import Digest
from index.recipe import Content, ContentLists, Raw, RecipeRoot, decode_part
from index.tree import Tree, decode_tree

__all__ = [
    "RecipeOp",
    "format_errors",
    "parse_chunk_list",
    "parse_recipe",
    "parse_recipe_part",
    "parse_tree",
]

#: One operation of a layer recipe part.
RecipeOp = Raw | Content | ContentLists


@contextmanager
def format_errors(what: str, hint: str = "") -> Iterator[None]:
    """Translate a ``FormatError`` raised inside the block into an error naming ``what``.

    ``hint`` is appended to the message of a ``CorruptMetadata`` (what the caller does about it).
    """
    try:
        yield
    except UnsupportedVersion as exc:
        raise UnsupportedFormat(f"{what}: {exc}") from exc
    except FormatError as exc:
        raise CorruptMetadata(f"{what} is invalid: {exc}{hint}") from exc


def parse_tree(data: bytes, tree_id: Digest, *, where: str = "", hint: str = "") -> Tree:
    """The tree blob ``tree_id`` (``where``: the directory it describes, for the message)."""
    with format_errors(f"tree {tree_id.short}" + (f" of {where}" if where else ""), hint):
        return decode_tree(data)


def parse_chunk_list(data: bytes, list_id: Digest) -> list[ChunkRef]:
    """The chunk refs of the chunk-list blob ``list_id``."""
    with format_errors(f"chunk list {list_id.short}"):
        return decode_chunk_list(data)


def parse_recipe(data: bytes, recipe_id: Digest) -> RecipeRoot:
    """The root of the layer recipe ``recipe_id``."""
    with format_errors(f"layer recipe {recipe_id.short}"):
        return RecipeRoot.decode(data)


def parse_recipe_part(data: bytes, part_id: Digest) -> list[RecipeOp]:
    """The operations of the recipe part blob ``part_id``."""
    with format_errors(f"recipe part {part_id.short}"):
        return decode_part(data)
