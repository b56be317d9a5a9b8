"""What a container sees of one layer: its tar members as overlay entries, and what is left out.

docker and containerd read a layer with Go's ``archive/tar`` (the members
:class:`~chunkstore.images.tarstream.TarReader` yields are that reader's) and apply each member in
order. The merged view (:mod:`index.overlay`) follows them:

======================  =========================================================================
member type             in the view
======================  =========================================================================
``0``, NUL              a regular file; NUL with a name ending in ``/`` is a directory (as Go
                        and GNU tar read it)
``1`` ... ``6``         hard link, symlink, character and block device, directory, FIFO
``g`` (PAX global)      nothing is created; like the runtimes, it removes whatever its name
                        names and creates the missing parent directories (its records do not
                        apply to the members that follow)
``7`` (contiguous)      a regular file
``S`` (old GNU sparse)  a sparse regular file
``D`` (GNU dumpdir)     a directory (GNU tar's reading; the dumpdir listing is kept in the
                        recipe, not interpreted)
PAX sparse 0.0, 0.1     a sparse regular file
PAX sparse 1.0          left out: its sparse map is inside its data, which the view stores as
                        the file's content
anything else           left out
======================  =========================================================================

A member the merged view cannot hold (a ``..`` component, a hard link to nothing or to a
directory, a path below a file or symlink, an empty name, an invalid field) is left out too
(:meth:`index.overlay.Overlay.apply_layer` with ``on_refused``): the backup does not fail for it.

docker and containerd refuse to unpack a layer holding ``7``, ``S``, ``D`` or an unknown type
("unhandled tar header type"); the notes say so. Whatever the view leaves out or shows differently
is reported by :meth:`LayerView.notes` (the backup's notes, kept in the image record for
``ls-image``, ``dir:`` restores and mounts); the layer's recipe keeps every byte regardless.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from chunkstore.images.ingest import IngestedMember
from chunkstore.images.tarstream import TarEntry
from index.errors import Malformed
from index.overlay import LayerEntry, normalize_path
from index.tree import NodeType, SparseMap

__all__ = ["LayerView", "layer_view"]

_TYPES = {
    b"0": NodeType.FILE,
    b"\x00": NodeType.FILE,
    b"7": NodeType.FILE,
    b"S": NodeType.FILE,
    b"5": NodeType.DIRECTORY,
    b"D": NodeType.DIRECTORY,
    b"2": NodeType.SYMLINK,
    b"3": NodeType.CHAR_DEVICE,
    b"4": NodeType.BLOCK_DEVICE,
    b"6": NodeType.FIFO,
}
#: Types the view shows although docker and containerd refuse them, with what they are.
_RUNTIME_REFUSES = {
    b"7": "contiguous file",
    b"S": "old GNU sparse file",
    b"D": "GNU incremental directory",
}
_SHOWN_PATHS = 3


@dataclass(slots=True)
class LayerView:
    """A layer's overlay entries and the members the view leaves out or shows differently."""

    entries: list[LayerEntry] = field(default_factory=list)
    #: Members of types the view does not know, by type: their paths.
    unknown: dict[bytes, list[bytes]] = field(default_factory=dict)
    #: Members shown although the runtimes refuse their type, by type: their paths.
    refused: dict[bytes, list[bytes]] = field(default_factory=dict)
    #: PAX 1.0 sparse files, left out.
    unmapped_sparse: list[bytes] = field(default_factory=list)
    #: Why the overlay could not hold members (one reason per member left out).
    unheld: list[str] = field(default_factory=list)

    def leave_out(self, entry: LayerEntry, reason: Malformed) -> None:
        """``on_refused`` callback of :meth:`index.overlay.Overlay.apply_layer`."""
        self.unheld.append(str(reason))

    def notes(self, what: str) -> list[str]:
        """One line per kind of difference, about the layer named ``what``."""
        out: list[str] = []
        if self.unknown:
            out.append(
                f"{what}: not in the file-system view: {_counted(self.unknown, _type_name)}; "
                "docker and containerd refuse to unpack such a layer"
            )
        if self.refused:
            kinds = _counted(self.refused, lambda t: f"{_RUNTIME_REFUSES[t]} ('{t.decode()}')")
            out.append(
                f"{what}: shown in the view, though docker and containerd refuse to unpack "
                f"them: {kinds}"
            )
        if self.unheld:
            shown = "; ".join(self.unheld[:_SHOWN_PATHS])
            more = len(self.unheld) - _SHOWN_PATHS
            out.append(
                f"{what}: not in the file-system view: {len(self.unheld)} member(s) it cannot "
                f"hold: {shown}" + (f"; and {more} more" if more > 0 else "")
            )
        if self.unmapped_sparse:
            out.append(
                f"{what}: not in the file-system view: {len(self.unmapped_sparse)} PAX 1.0 "
                f"sparse file(s), whose sparse map is inside their data: "
                f"{_paths(self.unmapped_sparse)}"
            )
        return out


def _type_name(t: bytes) -> str:
    return f"of type {t.decode('latin-1')!r}"


def _paths(paths: list[bytes]) -> str:
    shown = ", ".join(p.decode("utf-8", "backslashreplace") for p in paths[:_SHOWN_PATHS])
    return shown + (f" and {len(paths) - _SHOWN_PATHS} more" if len(paths) > _SHOWN_PATHS else "")


def _counted(groups: dict[bytes, list[bytes]], name: Callable[[bytes], str]) -> str:
    return "; ".join(
        f"{len(paths)} {name(t)} ({_paths(paths)})" for t, paths in sorted(groups.items())
    )


def layer_view(members: Iterable[IngestedMember]) -> LayerView:
    """The overlay entries of a layer's members, in order (see the module docstring)."""
    view = LayerView()
    for m in members:
        e: TarEntry = m.entry
        if e.type == b"1":
            view.entries.append(LayerEntry(path=e.name, is_hardlink=True, link_target=e.linkname))
            continue
        if e.type == b"g":
            if _names_below_root(e.name):  # the runtimes ignore a member naming the root
                view.entries.append(LayerEntry(path=e.name, removes=True))
            continue
        node_type = NodeType.DIRECTORY if e.is_directory else _TYPES.get(e.type)
        if node_type is None:
            view.unknown.setdefault(e.type, []).append(e.name)
            continue
        if e.sparse_map_in_data:
            view.unmapped_sparse.append(e.name)
            continue
        if e.type in _RUNTIME_REFUSES:
            view.refused.setdefault(e.type, []).append(e.name)
        view.entries.append(_entry(m, node_type))
    return view


def _names_below_root(name: bytes) -> bool:
    try:
        return bool(normalize_path(name))
    except Malformed:
        return True  # left out by the overlay, with its reason


def _entry(m: IngestedMember, node_type: NodeType) -> LayerEntry:
    e = m.entry
    is_file = node_type is NodeType.FILE
    sparse = None
    if is_file and e.sparse is not None:
        sparse = SparseMap(e.sparse[0], e.sparse[1])
    return LayerEntry(
        path=e.name,
        type=node_type,
        mode=e.mode & 0o7777,
        uid=e.uid,
        gid=e.gid,
        mtime_ns=e.mtime_ns,
        xattrs=e.xattrs,
        target=e.linkname if node_type is NodeType.SYMLINK else b"",
        dev=(e.devmajor, e.devminor)
        if node_type in (NodeType.CHAR_DEVICE, NodeType.BLOCK_DEVICE)
        else None,
        size=e.size if is_file else 0,
        chunks=m.chunks if is_file else (),
        lists=m.lists if is_file else (),
        sparse=sparse,
    )
