"""The Debian image corpus of ``tools/build_corpus``, read through chunkstore's own OCI reader.

``CORPUS/oci`` is an OCI image layout with one single-platform image per reference name;
``CORPUS/rootfs/NAME.tar`` holds the root filesystems the images were made from. Images are read
with :class:`chunkstore.images.oci_layout.OCILayout` (digests strictly parsed, manifests and
configs verified), never by hand.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from chunkstore.images.oci_layout import OCILayout

__all__ = [
    "DEFAULT_CORPUS",
    "PREFERRED_ORDER",
    "REBUILT_PAIRS",
    "CorpusImage",
    "Layer",
    "has_corpus",
    "order_refs",
    "read_corpus",
    "uncompressed_size",
]

DEFAULT_CORPUS = Path(os.environ.get("CORPUS_DIR", "/var/tmp/chunkstore-corpus"))

#: Default order of the image benchmarks: each rebuilt image right after the image it rebuilds.
PREFERRED_ORDER = [
    "bookworm-minbase",
    "bookworm-minbase-rebuilt",
    "bookworm-python3",
    "bookworm-python3-rebuilt",
    "bookworm-python3-point",
    "bookworm-python3-layered",
    "bookworm-nginx-layered",
    "trixie-minbase",
]
#: (rebuilt image, its original), the first pair a corpus has is the one measured.
REBUILT_PAIRS = [
    ("bookworm-minbase-rebuilt", "bookworm-minbase"),
    ("bookworm-python3-rebuilt", "bookworm-python3"),
]


@dataclass(frozen=True)
class Layer:
    """One layer blob of an image: digest, media type, compressed size, its file."""

    digest: str
    media_type: str
    size: int
    path: Path


@dataclass(frozen=True)
class CorpusImage:
    """One image of the layout: its manifest, config and layers as stored."""

    ref: str
    manifest_digest: str
    manifest_size: int
    config_digest: str
    config_size: int
    layers: tuple[Layer, ...]
    blob_paths: tuple[Path, ...]  # manifest, config, layers

    @property
    def compressed_bytes(self) -> int:
        """The layers' compressed sizes, summed."""
        return sum(la.size for la in self.layers)

    @property
    def stored_bytes(self) -> int:
        """Manifest + config + compressed layers: the image's own bytes in the layout."""
        return self.manifest_size + self.config_size + self.compressed_bytes

    @property
    def blobs(self) -> list[str]:
        """Digests of the manifest, the config and the layers."""
        return [self.manifest_digest, self.config_digest, *(la.digest for la in self.layers)]


def has_corpus(corpus: Path) -> bool:
    """Whether ``corpus/oci/index.json`` exists."""
    return (corpus / "oci" / "index.json").is_file()


def read_corpus(layout: Path) -> dict[str, CorpusImage]:
    """ref -> image, for every reference name of the layout, in ``index.json`` order."""
    oci = OCILayout(layout)
    out: dict[str, CorpusImage] = {}
    for ref in oci.refs():
        found = oci.resolve(ref)
        if len(found) != 1:
            raise ValueError(f"{ref} in {layout} is {len(found)} images, not one")
        image = found[0]
        layers = tuple(
            Layer(str(d.digest), d.media_type, d.size, oci.blob_path(d.digest))
            for d in image.layers
        )
        out[ref] = CorpusImage(
            ref=ref,
            manifest_digest=str(image.manifest_digest),
            manifest_size=len(image.manifest_bytes),
            config_digest=str(image.config_digest),
            config_size=len(image.config_bytes),
            layers=layers,
            blob_paths=(
                oci.blob_path(image.manifest_digest),
                oci.blob_path(image.config_digest),
                *(la.path for la in layers),
            ),
        )
    return out


def order_refs(refs: list[str], preferred: list[str] = PREFERRED_ORDER) -> list[str]:
    """``refs`` in the ``preferred`` order, the others after them, sorted."""
    first = [r for r in preferred if r in refs]
    return first + sorted(r for r in refs if r not in first)


def uncompressed_size(path: Path, media_type: str) -> int:
    """Bytes of the layer tar inside a (gzip, zstd or plain) layer blob."""
    total = 0
    with open(path, "rb") as f:
        if media_type.endswith("+zstd"):
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
            while chunk := reader.read(1 << 20):
                total += len(chunk)
            return total
        if not media_type.endswith("+gzip"):
            return os.fstat(f.fileno()).st_size
        d = zlib.decompressobj(wbits=31)
        while chunk := f.read(1 << 20):
            while chunk:
                total += len(d.decompress(chunk))
                if d.eof:  # concatenated gzip members
                    chunk = d.unused_data
                    d = zlib.decompressobj(wbits=31)
                else:
                    chunk = b""
        total += len(d.flush())
    return total
