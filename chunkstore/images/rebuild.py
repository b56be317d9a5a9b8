"""Rebuilding a layer tar from its recipe, verified against the diff_id.

    recipe root -> parts (META blobs) -> operations in order
        raw      -> bytes as stored
        content  -> chunks, fetched per batch of operations with load_blobs (coalesced reads)
    pieces joined to about 1 MiB; running SHA-256 of everything yielded; at the end it must
    equal the recipe's diff_id

The caller writes what is yielded to a temporary file and publishes it only after the generator
finished without error: a mismatch raises ``CorruptMetadata`` after the last byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from chunkstore.errors import CorruptMetadata
from chunkstore.images.ingest import IngestedMember
from chunkstore.images.tarstream import Member, TarError, TarReader
from chunkstore.images.tarstream import Raw as TarRaw
from chunkstore.repository import Repository
from chunkstore.streams import read_chunk_lists, verified_chunks
from index.chunklist import ChunkRef, StreamBody
from index.ids import Digest
from index.recipe import Content, ContentLists, Raw, RecipeRoot

__all__ = ["PieceStream", "rebuild_layer", "recipe_members"]

_BATCH_BYTES = 8 << 20
_PIECE_BYTES = 1 << 20


def _ops(repo: Repository, root: RecipeRoot) -> Iterator[Raw | Content | ContentLists]:
    for part_id in root.parts:
        yield from repo.load_recipe_part(part_id)


class PieceStream:
    """A read-only stream over byte strings (a rebuilt layer) for consumers that ``read(n)``.

    Reads return at most the rest of the current piece (short reads, as a pipe gives), through a
    memoryview, so no piece is ever copied more than once.
    """

    def __init__(self, pieces: Iterable[bytes]) -> None:
        """Read ``pieces`` in order."""
        self._it = iter(pieces)
        self._buf = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (everything left when ``n`` < 0); b"" at the end."""
        if n < 0:
            rest = bytes(self._buf) + b"".join(self._it)
            self._buf = memoryview(b"")
            return rest
        while not self._buf:
            piece = next(self._it, None)
            if piece is None:
                return b""
            self._buf = memoryview(piece)
        out, self._buf = self._buf[:n], self._buf[n:]
        return bytes(out)

    def close(self) -> None:
        """Nothing to release."""


def rebuild_layer(repo: Repository, recipe_id: Digest) -> Iterator[bytes]:
    """Yield the layer tar's bytes; raises after the end if they do not hash to the diff_id.

    The bytes come in pieces of about 1 MiB (headers and chunks joined), so that consumers
    reading fixed-size blocks (the gzip recompressor) do not copy many small pieces around.
    """
    root = repo.load_recipe(recipe_id)
    h = hashlib.sha256()
    total = 0
    for piece in _joined(_tar_pieces(repo, root, recipe_id), _PIECE_BYTES):
        h.update(piece)
        total += len(piece)
        yield piece
    if total != root.size or h.digest() != root.diff_id.raw:
        raise CorruptMetadata(
            f"layer rebuilt from recipe {recipe_id.short} does not match its diff_id "
            f"{root.diff_id}; run 'chunkstore check --read-data'"
        )


def _tar_pieces(repo: Repository, root: RecipeRoot, recipe_id: Digest) -> Iterator[bytes]:
    """Header bytes and content chunks in tar order, chunks loaded per batch of ~8 MiB."""
    pending: list[Raw | list[ChunkRef]] = []
    pending_bytes = 0

    def flush() -> Iterator[bytes]:
        ids = [ref.id for item in pending if isinstance(item, list) for ref in item]
        got = dict(repo.load_blobs(ids)) if ids else {}
        for item in pending:
            if isinstance(item, Raw):
                yield item.data
                continue
            yield from verified_chunks(
                repo,
                item,
                size=sum(r.size for r in item),
                what=f"a file of layer recipe {recipe_id.short}",
                listed_by="recipe",
                sized_by="recipe",
                loaded=got,
            )
        pending.clear()

    for op in _ops(repo, root):
        if isinstance(op, Raw):
            pending.append(op)
            pending_bytes += len(op.data)
        else:
            refs = (
                list(op.chunks)
                if isinstance(op, Content)
                else list(read_chunk_lists(repo, StreamBody(op.size, op.lists)))
            )
            if sum(r.size for r in refs) != op.size:
                raise CorruptMetadata(f"recipe {recipe_id.short}: content size mismatch")
            pending.append(refs)
            pending_bytes += op.size
        if pending_bytes >= _BATCH_BYTES:
            yield from flush()
            pending_bytes = 0
    yield from flush()


def _joined(pieces: Iterator[bytes], size: int) -> Iterator[bytes]:
    """``pieces`` regrouped: each yielded piece but the last holds at least ``size`` bytes."""
    parts: list[bytes] = []
    n = 0
    for piece in pieces:
        if not piece:
            continue
        parts.append(piece)
        n += len(piece)
        if n >= size:
            yield parts[0] if len(parts) == 1 else b"".join(parts)
            parts, n = [], 0
    if parts:
        yield b"".join(parts)


class _SkeletonStream:
    """The layer tar with every content byte replaced by zeros, built from recipe operations.

    Header blocks are exact, so a tar reader lists the same members; no chunk is fetched.
    """

    def __init__(self, ops: Iterator[Raw | Content | ContentLists]) -> None:
        self._ops = ops
        self._buf = b""
        self._zeros = 0

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if self._zeros:
                take = self._zeros if n < 0 else min(self._zeros, n - len(out))
                out += bytes(take)
                self._zeros -= take
                continue
            if self._buf:
                take = len(self._buf) if n < 0 else min(len(self._buf), n - len(out))
                out += self._buf[:take]
                self._buf = self._buf[take:]
                continue
            op = next(self._ops, None)
            if op is None:
                break
            if isinstance(op, Raw):
                self._buf = op.data
            else:
                self._zeros = op.size
        return bytes(out)


def recipe_members(repo: Repository, recipe_id: Digest) -> list[IngestedMember]:
    """The members of a stored layer (with their chunks), read from its recipe alone.

    Used when a layer blob is already in the repository: the merged tree needs the members, and
    re-reading them from the recipe's header bytes is far cheaper than decompressing and chunking
    the layer again.
    """
    root = repo.load_recipe(recipe_id)
    ops = list(_ops(repo, root))
    # The k-th member with content owns the k-th content operation (ingest writes exactly one).
    contents = iter([op for op in ops if not isinstance(op, Raw)])
    members: list[IngestedMember] = []
    try:
        for event in TarReader(_SkeletonStream(iter(ops))):  # type: ignore[arg-type]
            if isinstance(event, TarRaw):
                continue
            members.append(_member(event, contents, recipe_id))
    except TarError as exc:
        # Only a recipe stored by an older chunkstore that accepted more can get here.
        raise TarError(f"stored layer recipe {recipe_id.short}: {exc}") from None
    return members


def _member(
    event: Member, contents: Iterator[Content | ContentLists | Raw], recipe_id: Digest
) -> IngestedMember:
    if event.content is None:
        return IngestedMember(event.entry)
    while event.content.read(1 << 20):
        pass
    op = next(contents, None)
    if op is None or isinstance(op, Raw) or op.size != event.entry.data_size:
        raise CorruptMetadata(f"layer recipe {recipe_id.short}: content does not match headers")
    if isinstance(op, Content):
        return IngestedMember(event.entry, chunks=op.chunks)
    return IngestedMember(event.entry, lists=op.lists)
