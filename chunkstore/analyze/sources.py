"""Turning ``SOURCE`` strings into the images and layers ``chunkstore analyze`` scans.

:func:`resolve` reads a source with the same readers backup uses and returns one :class:`Image`
per platform, each a list of :class:`Layer`. A layer does not hold its bytes: it holds an opener
(:class:`Opener`) that yields the *uncompressed* layer tar when the scan gets to it:

* ``oci:DIR[:REF]``: :class:`OCIBlob`, a blob of an OCI layout;
* ``docker-archive:FILE[:REF]``: :class:`ArchiveBlob`, a layer of a ``docker save`` archive;
* ``dir:PATH``: :class:`DirLayer`, the deterministic one-layer tar backup makes of a directory;
* ``docker://HOST/NAME[:TAG]``: a blob fetched through an open registry session;
* ``tag:NAME``: the layer recipes of an image record of the repository; the tar is rebuilt from
  the stored chunks (:func:`~chunkstore.images.rebuild.rebuild_layer` checks its diff_id) and read
  through :class:`~chunkstore.images.rebuild.PieceStream`.

The first three are small frozen dataclasses that name a file, so they pickle and are opened
again inside a worker process (``parallel`` is true). The last two depend on a live registry
session or repository of this process: they are :class:`InProcess` and are scanned here.

A layer is keyed by its compressed digest (``dir:`` layers by their resolved path), so a base
layer shared by several images is scanned once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from chunkstore.backends import RemoteOptions
from chunkstore.errors import UsageError
from chunkstore.images.decompress import layer_compression, open_decompressed
from chunkstore.images.dirsource import DirTarStream
from chunkstore.images.docker_archive import DockerArchive
from chunkstore.images.locations import parse_source
from chunkstore.images.oci_layout import Descriptor, ImageRef, OCILayout
from chunkstore.images.rebuild import PieceStream, rebuild_layer
from chunkstore.images.registry_image import (
    DOCKER_PREFIX,
    RegistrySource,
    open_client,
    parse_docker_reference,
)
from chunkstore.readable import Readable
from chunkstore.repository import Repository
from index.ids import Digest
from index.image import ImageBody

__all__ = [
    "ArchiveBlob",
    "DirLayer",
    "Image",
    "InProcess",
    "Layer",
    "OCIBlob",
    "Opener",
    "resolve",
]


class Opener(Protocol):
    """Opens a layer as its uncompressed tar; ``parallel``: may be opened in a worker process."""

    @property
    def parallel(self) -> bool: ...

    def open(self) -> AbstractContextManager[BinaryIO]: ...


def _decompressed(blob: Readable, desc: Descriptor) -> BinaryIO:
    """The layer tar inside ``blob``, decompressed as its media type says (bomb-guarded)."""
    return cast(BinaryIO, open_decompressed(blob, layer_compression(desc.media_type)))


@dataclass(frozen=True, slots=True)
class OCIBlob:
    """A layer blob of an OCI layout (picklable: opened again in a worker process)."""

    layout: str
    desc: Descriptor
    parallel: bool = True

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        with OCILayout(self.layout).open_blob(self.desc) as blob:
            yield _decompressed(blob, self.desc)


@dataclass(frozen=True, slots=True)
class ArchiveBlob:
    """A layer of a docker-archive file (picklable)."""

    path: str
    ref: str | None
    desc: Descriptor
    parallel: bool = True

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        with DockerArchive(self.path) as archive:
            archive.resolve(self.ref)
            with archive.open_blob(self.desc) as blob:
                yield _decompressed(blob, self.desc)


@dataclass(frozen=True, slots=True)
class DirLayer:
    """A directory, read as the deterministic one-layer tar backup makes of it (picklable)."""

    path: str
    parallel: bool = True

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        stream = DirTarStream(self.path)
        try:
            yield cast(BinaryIO, stream)
        finally:
            stream.close()


@dataclass(frozen=True, slots=True)
class InProcess:
    """A layer that can only be read in this process (a repository or a registry session)."""

    opener: Callable[[], AbstractContextManager[BinaryIO]]
    parallel: bool = False

    def open(self) -> AbstractContextManager[BinaryIO]:
        return self.opener()


@dataclass(frozen=True, slots=True)
class Layer:
    """A distinct layer: its key (compressed digest), media type, blob size and opener."""

    key: str
    media_type: str
    compressed_bytes: int
    opener: Opener


@dataclass(slots=True)
class Image:
    """One image (one platform) of a source, with its layers bottom first."""

    name: str
    source: str
    platform: str | None
    layers: list[Layer]


def _registry_layer(registry: RegistrySource, desc: Descriptor) -> InProcess:
    @contextmanager
    def opener() -> Iterator[BinaryIO]:
        with registry.open_blob(desc) as blob:
            yield _decompressed(blob, desc)

    return InProcess(opener)


def _recipe_layer(repo: Repository, recipe: Digest) -> InProcess:
    @contextmanager
    def opener() -> Iterator[BinaryIO]:
        yield cast(BinaryIO, PieceStream(rebuild_layer(repo, recipe)))

    return InProcess(opener)


def _image_name(source: str, image: ImageRef | None, count: int) -> str:
    if count > 1 and image is not None and image.platform is not None:
        return f"{source} [{image.platform}]"
    return source


def _from_refs(
    source: str, images: list[ImageRef], layer: Callable[[Descriptor], Opener]
) -> list[Image]:
    return [
        Image(
            name=_image_name(source, image, len(images)),
            source=source,
            platform=None if image.platform is None else str(image.platform),
            layers=[Layer(str(d.digest), d.media_type, d.size, layer(d)) for d in image.layers],
        )
        for image in images
    ]


def resolve(
    source: str, stack: ExitStack, repo: Repository | None, remote: RemoteOptions | None
) -> list[Image]:
    """The images at ``source`` (one per platform), with openers for their layers.

    Registry sessions are entered on ``stack`` and stay open until the scan is over; ``tag:``
    sources need ``repo``, ``docker://`` sources use ``remote``.
    """
    if source.startswith("tag:"):
        name = source[4:]
        if repo is None:
            raise UsageError(f"{source!r:.100} needs a repository (--repo)")
        _, body = repo.find_body(name, "image", ImageBody.from_cbor)
        out = []
        for entry in body.images:
            label = f"{source} [{entry.platform}]" if len(body.images) > 1 else source
            layers = [
                Layer(lay.digest, lay.media_type, lay.size, _recipe_layer(repo, lay.recipe))
                for lay in entry.layers
            ]
            out.append(Image(label, source, entry.platform, layers))
        return out
    if source.startswith(DOCKER_PREFIX):
        ref = parse_docker_reference(source)
        registry = stack.enter_context(RegistrySource(open_client(ref, remote), ref))
        return _from_refs(source, registry.resolve(None), lambda d: _registry_layer(registry, d))
    transport, path, ref_name = parse_source(source)
    if transport == "oci":
        layout = OCILayout(path)
        where = str(path.resolve())
        return _from_refs(source, layout.resolve(ref_name), lambda d: OCIBlob(where, d))
    if transport == "docker-archive":
        with DockerArchive(path) as archive:
            image = archive.resolve(ref_name)
        where = str(path.resolve())
        return _from_refs(source, [image], lambda d: ArchiveBlob(where, ref_name, d))
    where = str(Path(path).resolve())
    DirTarStream(where).close()  # checks that it is a directory, now rather than mid-scan
    return [Image(source, source, None, [Layer(f"dir:{where}", "dir", 0, DirLayer(where))])]
