"""The merged view of an image: the root file system a container sees, from the scanned entries.

Layer storage counts everything the layers hold; the merged view counts only what survives once
the layers are applied in order with their whiteouts (:class:`index.overlay.Overlay`, the same
code backup uses to build an image's tree). A file deleted or replaced by a later layer is hidden
and does not count; the members of a hard-link group count once.

:func:`merged_view` feeds the :data:`~chunkstore.analyze.scan.Entry` tuples of each layer's
:class:`~chunkstore.analyze.scan.Scan` to an overlay, standing a file's content digest in for its
chunk list (one pseudo-chunk per file), and walks the merged root for the contents left.
"""

from __future__ import annotations

from chunkstore.analyze.scan import HARDLINK, Scan
from chunkstore.analyze.sources import Image
from chunkstore.errors import UsageError
from index.chunklist import ChunkRef
from index.errors import Malformed
from index.ids import Digest
from index.overlay import LayerEntry, MergedDir, Overlay
from index.tree import NodeType

__all__ = ["merged_view"]


def merged_view(image: Image, scans: dict[str, Scan]) -> tuple[int, int, dict[bytes, int]]:
    """(files, bytes, {content: size}) of the image's merged root (hard links count once)."""
    overlay = Overlay()
    for layer in image.layers:
        entries = []
        for path, kind, size, digest, target in scans[layer.key].entries:
            if kind == HARDLINK:
                entries.append(LayerEntry(path=path, is_hardlink=True, link_target=target))
            elif kind == NodeType.FILE:
                chunks = (ChunkRef(Digest("sha256", digest), size),) if size else ()
                entries.append(LayerEntry(path=path, size=size, chunks=chunks))
            else:
                node_type = NodeType(kind)
                dev = (0, 0) if node_type in (NodeType.CHAR_DEVICE, NodeType.BLOCK_DEVICE) else None
                entries.append(LayerEntry(path=path, type=node_type, target=target, dev=dev))
        try:
            overlay.apply_layer(entries)
        except Malformed as exc:
            raise UsageError(
                f"layer {layer.key} of {image.name} cannot be merged into a file system: {exc}"
            ) from None
    stats = overlay.stats()
    contents: dict[bytes, int] = {}
    groups: set[bytes] = set()
    stack: list[MergedDir] = [overlay.root]
    while stack:
        d = stack.pop()
        for child in d.children.values():
            if isinstance(child, MergedDir):
                stack.append(child)
            elif child.type == NodeType.FILE and child.chunks:
                if child.hardlink is not None:
                    if child.hardlink in groups:
                        continue
                    groups.add(child.hardlink)
                digest = child.chunks[0].id.raw
                contents[digest] = child.size
    return stats.files, stats.bytes, contents
