"""Looking inside stored images without restoring them: ls, cat, diff and per-image stats.

Everything reads the merged root tree of a tag (index/tree.py): a path is resolved one component
at a time through tree blobs (symlinks are shown, never followed), a file is read from its chunks,
and two tags are compared tree by tree, skipping every subtree whose id is equal in both (so a diff
of two related images reads only the directories that changed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from chunkstore.errors import MissingObject, UsageError
from chunkstore.reach import walk
from chunkstore.repository import Repository
from chunkstore.streams import read_chunk_lists, verified_chunks
from index.chunklist import ChunkRef, StreamBody
from index.ids import Digest
from index.image import ImageBody, ImageEntry
from index.tree import Node, NodeType, Tree

__all__ = [
    "Change",
    "diff_images",
    "file_chunks",
    "image_stats",
    "list_path",
    "open_image",
    "read_file",
    "resolve_path",
]


def open_image(repo: Repository, name: str, platform: str | None = None) -> ImageEntry:
    """The newest image record ``name`` (one platform: the given one, or the only/first one)."""
    _, body = repo.find_body(name, "image", ImageBody.from_cbor)
    if platform is None:
        return body.images[0]
    for image in body.images:
        if image.platform == platform:
            return image
    have = ", ".join(str(i.platform) for i in body.images)
    raise UsageError(f"{name} has no platform {platform!r}; it has: {have}")


def _tree(repo: Repository, tree_id: Digest) -> Tree:
    return repo.load_tree(tree_id)


def _components(path: str) -> list[bytes]:
    parts = [p for p in path.encode("utf-8", "surrogateescape").split(b"/") if p and p != b"."]
    if b".." in parts:
        raise UsageError("paths inside an image may not contain '..'")
    return parts


def resolve_path(repo: Repository, root: Digest, path: str) -> Node | None:
    """The node at ``path`` (None for the root itself); ``MissingObject`` if absent."""
    node: Node | None = None
    tree_id = root
    for i, name in enumerate(parts := _components(path)):
        found = _tree(repo, tree_id).lookup(name)
        if found is None:
            raise MissingObject(f"no {path!r} in this image")
        node = found
        if i < len(parts) - 1:
            if found.type is not NodeType.DIRECTORY or found.tree is None:
                raise MissingObject(
                    f"{b'/'.join(parts[: i + 1]).decode(errors='replace')} is not a directory"
                )
            tree_id = found.tree
    return node


def list_path(repo: Repository, root: Digest, path: str) -> list[Node]:
    """The entries of the directory at ``path`` (or the single node when it is not one)."""
    node = resolve_path(repo, root, path)
    if node is None:
        return list(_tree(repo, root))
    if node.type is NodeType.DIRECTORY and node.tree is not None:
        return list(_tree(repo, node.tree))
    return [node]


def file_chunks(repo: Repository, node: Node) -> list[ChunkRef]:
    """A regular file's chunks in order."""
    if node.type is NodeType.SYMLINK:
        target = node.target.decode(errors="replace")
        raise UsageError(
            f"{node.name.decode(errors='replace')} is a symlink to {target}; give the target path"
        )
    if node.type is not NodeType.FILE:
        raise UsageError(f"{node.name.decode(errors='replace')} is not a regular file")
    if node.lists:
        return list(read_chunk_lists(repo, StreamBody(node.size, node.lists)))
    return list(node.chunks)


def read_file(repo: Repository, node: Node) -> Iterator[bytes]:
    """A regular file's bytes (each chunk verified), fetched in pack-grouped batches."""
    return verified_chunks(
        repo,
        file_chunks(repo, node),
        size=node.size,
        what=node.name.decode(errors="replace"),
        listed_by="chunk list" if node.lists else "tree",
        sized_by="tree",
    )


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two images: ``kind`` is "added", "removed" or "changed"."""

    kind: str
    path: str


def _content_key(n: Node) -> tuple[object, ...]:
    return (n.type, n.mode, n.uid, n.gid, n.size, n.chunks, n.lists, n.target, n.dev, n.xattrs)


def diff_images(repo: Repository, root_a: Digest, root_b: Digest) -> Iterator[Change]:
    """Files added, removed and changed from ``root_a`` to ``root_b`` (mtime-only changes ignored)."""
    stack: list[tuple[bytes, Digest | None, Digest | None]] = [(b"", root_a, root_b)]
    while stack:
        prefix, ta, tb = stack.pop()
        if ta == tb:
            continue
        a = {n.name: n for n in _tree(repo, ta)} if ta is not None else {}
        b = {n.name: n for n in _tree(repo, tb)} if tb is not None else {}
        for name in sorted(set(a) | set(b), reverse=True):
            path = prefix + b"/" + name
            na, nb = a.get(name), b.get(name)
            da = na.tree if na is not None and na.type is NodeType.DIRECTORY else None
            db = nb.tree if nb is not None and nb.type is NodeType.DIRECTORY else None
            text = path.decode("utf-8", "surrogateescape")
            if na is None:
                yield Change("added", text)
            elif nb is None:
                yield Change("removed", text)
            elif da is None and db is None and _content_key(na) != _content_key(nb):
                yield Change("changed", text)
            elif (da is None) != (db is None):
                yield Change("changed", text)
            if da is not None or db is not None:
                stack.append((path, da, db))


def image_stats(repo: Repository, image: ImageEntry) -> dict[str, Any]:
    """Logical size (layer tars), the unique and stored bytes of the blobs it needs, and per
    layer how a restore gives it back (with the bytes a kept layer's original blob takes)."""

    def lookup(blob_id: Digest) -> list[Any]:
        loc = repo.lookup(blob_id)
        return [loc] if loc else []

    roots = [
        (
            "image",
            [
                image.root,
                *(layer.recipe for layer in image.layers),
                *(d for layer in image.layers if layer.original for d in layer.original.lists),
            ],
        )
    ]
    result = walk(roots, lookup, repo.load_at)
    unique = sum(loc.entry.raw_length for loc in result.blobs.values())
    stored = sum(loc.entry.length for loc in result.blobs.values())
    per_layer: list[dict[str, Any]] = []
    for layer in image.layers:
        kept = 0
        if layer.original is not None:
            kept_walk = walk([("kept", list(layer.original.lists))], lookup, repo.load_at)
            kept = sum(loc.entry.length for loc in kept_walk.blobs.values())
        per_layer.append(
            {
                "digest": layer.digest,
                "size": layer.size,
                "tar_size": layer.tar_size,
                "outcome": layer.outcome,
                "reproduced_by": layer.reproduce.label if layer.reproduce else None,
                "kept_stored_bytes": kept,
            }
        )
    return {
        "layers": len(image.layers),
        "logical_bytes": sum(layer.tar_size for layer in image.layers),
        "compressed_bytes": sum(layer.size for layer in image.layers),
        "unique_bytes": unique,
        "stored_bytes": stored,
        "blobs": len(result.blobs),
        "missing_blobs": len(result.missing),
        "kept_stored_bytes": sum(x["kept_stored_bytes"] for x in per_layer),
        "layer_details": per_layer,
    }
