"""``docker save`` archives (``docker-archive:``): reading and writing.

An archive is an uncompressed tar holding ``manifest.json``::

    [{"Config": "<hex>.json", "RepoTags": ["name:tag"], "Layers": ["<id>/layer.tar", ...]}]

Legacy archives (docker < 25, skopeo) store each layer as an uncompressed tar whose SHA-256 is the
layer's diff_id; there is no registry manifest, so the reader synthesizes a Docker v2 schema 2
manifest with uncompressed layer descriptors (:attr:`ImageRef.synthesized` is set). OCI-style
archives (docker >= 25) also hold ``oci-layout``, ``index.json`` and ``blobs/sha256/<hex>``; the
real manifest is then used when one in the archive names the same config.

Every layer stream is verified against its descriptor (for legacy archives, against the config's
diff_id); a config whose member name encodes a digest is verified against it. Members are read
from the (seekable) archive one at a time: open one layer stream, read it, close it.

:func:`write_docker_archive` writes an archive readable by both ``docker load`` style readers
(``manifest.json``) and OCI readers (``index.json``, ``blobs/sha256``), which ``skopeo`` accepts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, BinaryIO

from chunkstore import jsonsafe
from chunkstore.errors import BackendError, MissingObject, UsageError
from chunkstore.fsutil import atomic_file
from chunkstore.images.blobs import BlobDigestMismatch, VerifiedReader
from chunkstore.images.oci_layout import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    REF_NAME,
    Descriptor,
    ImageRef,
    Platform,
    parse_descriptor,
)
from chunkstore.registry.mediatypes import (
    DOCKER_CONFIG,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
)
from index.errors import Malformed
from index.ids import Digest, parse_sha256, sha256

__all__ = ["DockerArchive", "write_docker_archive"]

_MAX_MEMBERS = 1_000_000
_NAMED = re.compile(r"\A(?:blobs/sha256/([0-9a-f]{64})|([0-9a-f]{64})\.(?:json|tar))\Z")
_CHUNK = 1 << 20


def _normalise(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _name_digest(name: str) -> Digest | None:
    """The digest a member name encodes (``blobs/sha256/<hex>``, ``<hex>.json``, ``<hex>.tar``)."""
    m = _NAMED.match(name)
    if m is None:
        return None
    return Digest.from_hex(m.group(1) or m.group(2))


def _json(data: bytes, what: str) -> Any:
    try:
        return jsonsafe.loads(data)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None


class DockerArchive:
    """A read-only view of a ``docker save`` tar archive."""

    def __init__(self, path: Path | str) -> None:
        """Open the archive at ``path`` and read its ``manifest.json``."""
        self._path = Path(path)
        try:
            with open(self._path, "rb") as f:
                head = f.read(4)
        except FileNotFoundError:
            raise UsageError(f"docker archive {self._path} does not exist") from None
        except OSError as exc:
            raise BackendError(f"cannot read {self._path}: {exc.strerror}") from exc
        if head.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd")):
            raise UsageError(
                f"{self._path} is compressed; decompress it first (docker-archive must be a "
                "plain tar)"
            )
        try:
            self._tar = tarfile.open(self._path, "r:")
        except (tarfile.TarError, OSError) as exc:
            raise UsageError(f"{self._path} is not a tar archive: {exc}") from None
        self._members: dict[str, tarfile.TarInfo] = {}
        for count, info in enumerate(self._tar):
            if count >= _MAX_MEMBERS:
                raise UsageError(f"{self._path} has more than {_MAX_MEMBERS} members")
            self._members[_normalise(info.name)] = info
        entries = _json(self._read_member("manifest.json", MAX_MANIFEST_SIZE), "manifest.json")
        if not isinstance(entries, list) or not entries:
            raise UsageError(f"{self._path}: manifest.json must be a non-empty list")
        self._entries: list[dict[str, Any]] = []
        for i, e in enumerate(entries):
            if (
                not isinstance(e, dict)
                or not isinstance(e.get("Config"), str)
                or not isinstance(e.get("Layers"), list)
                or not all(isinstance(x, str) for x in e["Layers"])
            ):
                raise UsageError(f"{self._path}: manifest.json entry {i} is malformed")
            tags = e.get("RepoTags") or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise UsageError(f"{self._path}: manifest.json entry {i} has bad RepoTags")
            self._entries.append(e)
        self._layer_members: dict[Digest, str] = {}

    def close(self) -> None:
        """Close the archive file."""
        self._tar.close()

    def __enter__(self) -> DockerArchive:
        """Use as a context manager."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the archive."""
        self.close()

    def tags(self) -> list[str]:
        """Every RepoTag in the archive."""
        return [t for e in self._entries for t in (e.get("RepoTags") or [])]

    def _member(self, name: str) -> tarfile.TarInfo:
        info = self._members.get(_normalise(name))
        if info is None:
            raise MissingObject(f"{self._path} has no member {name!r:.120}")
        # Follow hard and symbolic links inside the archive (legacy archives link duplicates).
        for _ in range(16):
            if info.isreg():
                return info
            if info.islnk() or info.issym():
                target = info.linkname
                if info.issym():
                    target = os.path.normpath(os.path.join(os.path.dirname(info.name), target))
                nxt = self._members.get(_normalise(target))
                if nxt is None:
                    break
                info = nxt
                continue
            break
        raise UsageError(f"{self._path}: member {name!r:.120} is not a regular file")

    def _open_member(self, name: str) -> IO[bytes]:
        info = self._member(name)
        f = self._tar.extractfile(info)
        if f is None:
            raise UsageError(f"{self._path}: member {name!r:.120} cannot be read")
        return f

    def _read_member(self, name: str, cap: int) -> bytes:
        info = self._member(name)
        if info.size > cap:
            raise UsageError(f"{self._path}: {name} is larger than {cap} bytes")
        with self._open_member(name) as f:
            return f.read()

    def resolve(self, ref: str | None = None) -> ImageRef:
        """The image tagged ``ref`` (or the only image when None)."""
        if ref is None:
            if len(self._entries) != 1:
                raise UsageError(
                    f"{self._path} holds {len(self._entries)} images; name one of: "
                    f"{', '.join(self.tags()) or '(untagged)'}"
                )
            entry = self._entries[0]
        else:
            found = [e for e in self._entries if ref in (e.get("RepoTags") or [])]
            if not found:
                raise UsageError(
                    f"no image tagged {ref!r:.100} in {self._path}; available: "
                    f"{', '.join(self.tags()) or '(untagged)'}"
                )
            entry = found[0]
        config_name = entry["Config"]
        config_bytes = self._read_member(config_name, MAX_CONFIG_SIZE)
        config_digest = sha256(config_bytes)
        named = _name_digest(_normalise(config_name))
        if named is not None and named != config_digest:
            raise BlobDigestMismatch(
                f"{self._path}: config {config_name} hashes to {config_digest}; the archive "
                "is damaged"
            )
        config = _json(config_bytes, f"config {config_name}")
        if not isinstance(config, dict):
            raise UsageError(f"config {config_name} must be a JSON object")
        platform = None
        if isinstance(config.get("os"), str) and isinstance(config.get("architecture"), str):
            platform = Platform.from_json(config, f"config {config_name}")
        layer_names = [_normalise(x) for x in entry["Layers"]]
        real = self._find_manifest(config_digest, layer_names)
        if real is not None:
            manifest_bytes, desc, layers = real
            return ImageRef(
                manifest_bytes=manifest_bytes,
                manifest_digest=desc.digest,
                media_type=desc.media_type,
                config_bytes=config_bytes,
                config_digest=config_digest,
                config_media_type=OCI_CONFIG if desc.media_type == OCI_MANIFEST else DOCKER_CONFIG,
                layers=layers,
                ref_name=ref,
                platform=platform,
            )
        rootfs = config.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names):
            raise UsageError(
                f"{self._path}: config {config_name} lists "
                f"{len(diff_ids) if isinstance(diff_ids, list) else 'no'} diff_ids for "
                f"{len(layer_names)} layers"
            )
        layers_list = []
        for i, (name, diff_id) in enumerate(zip(layer_names, diff_ids, strict=True)):
            try:
                digest = parse_sha256(diff_id, f"config {config_name}: diff_id {i}")
            except Malformed as exc:
                raise UsageError(str(exc)) from None
            named = _name_digest(name)
            if named is not None and named != digest:
                raise BlobDigestMismatch(
                    f"{self._path}: layer {name} is named for {named} but the config says its "
                    f"diff_id is {digest}; the archive is damaged"
                )
            info = self._member(name)
            self._layer_members[digest] = name
            layers_list.append(Descriptor(DOCKER_LAYER_TAR, digest, info.size))
        layers = tuple(layers_list)
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG,
                "size": len(config_bytes),
                "digest": str(config_digest),
            },
            "layers": [d.to_json() for d in layers],
        }
        manifest_bytes = json.dumps(manifest, indent=3).encode()
        return ImageRef(
            manifest_bytes=manifest_bytes,
            manifest_digest=sha256(manifest_bytes),
            media_type=DOCKER_MANIFEST,
            config_bytes=config_bytes,
            config_digest=config_digest,
            config_media_type=DOCKER_CONFIG,
            layers=layers,
            ref_name=ref,
            platform=platform,
            synthesized=True,
        )

    def _find_manifest(
        self, config_digest: Digest, layer_names: list[str]
    ) -> tuple[bytes, Descriptor, tuple[Descriptor, ...]] | None:
        """The archive's own manifest for ``config_digest`` (OCI-style archives), if any."""
        if "index.json" not in self._members:
            return None
        index = _json(self._read_member("index.json", MAX_MANIFEST_SIZE), "index.json")
        todo = list(index.get("manifests") or []) if isinstance(index, dict) else []
        seen = 0
        while todo and seen < 1000:
            seen += 1
            desc = parse_descriptor(todo.pop(0), f"{self._path} index.json")
            name = f"blobs/sha256/{desc.digest.hex}"
            if name not in self._members:
                continue
            data = self._read_verified(name, desc, MAX_MANIFEST_SIZE)
            obj = _json(data, f"manifest {desc.digest}")
            if not isinstance(obj, dict):
                continue
            if desc.media_type in INDEX_MEDIA_TYPES:
                todo.extend(obj.get("manifests") or [])
                continue
            if desc.media_type not in MANIFEST_MEDIA_TYPES:
                continue
            if obj.get("mediaType", desc.media_type) != desc.media_type:
                raise UsageError(
                    f"manifest {desc.digest} declares mediaType {obj.get('mediaType')!r:.80} "
                    f"but its descriptor says {desc.media_type}"
                )
            config = parse_descriptor(obj.get("config"), f"manifest {desc.digest} config")
            if config.digest != config_digest:
                continue
            layers = tuple(
                parse_descriptor(x, f"manifest {desc.digest} layer")
                for x in obj.get("layers") or []
            )
            for layer in layers:
                member = f"blobs/sha256/{layer.digest.hex}"
                if member not in self._members:
                    raise MissingObject(f"{self._path} lacks layer blob {layer.digest}")
                self._layer_members[layer.digest] = member
            return data, desc, layers
        return None

    def _read_verified(self, name: str, desc: Descriptor, cap: int) -> bytes:
        if desc.size > cap:
            raise UsageError(f"{self._path}: {name} declares more than {cap} bytes")
        with VerifiedReader(self._open_member(name), desc.digest, desc.size) as r:
            return r.read_all_verified()

    def open_blob(self, descriptor: Descriptor) -> VerifiedReader:
        """A verified stream of a layer of an image returned by :meth:`resolve`."""
        name = self._layer_members.get(descriptor.digest)
        if name is None:
            raise MissingObject(
                f"{self._path} has no layer {descriptor.digest}; resolve its image first"
            )
        return VerifiedReader(
            self._open_member(name), descriptor.digest, descriptor.size, name=name
        )


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _add_bytes(f: BinaryIO, name: str, data: bytes) -> None:
    f.write(_header(name, len(data)))
    f.write(data)
    f.write(b"\x00" * (-len(data) % tarfile.BLOCKSIZE))


def _add_stream(f: BinaryIO, name: str, digest: Digest, chunks: Iterable[bytes]) -> int:
    """Write a member of unknown size, then patch its header; verify ``digest``."""
    start = f.tell()
    f.write(_header(name, 0))
    h = hashlib.sha256()
    size = 0
    for chunk in chunks:
        h.update(chunk)
        size += len(chunk)
        f.write(chunk)
    if h.digest() != digest.raw:
        raise BlobDigestMismatch(
            f"layer content hashes to sha256:{h.hexdigest()}, not the diff_id {digest}"
        )
    f.write(b"\x00" * (-size % tarfile.BLOCKSIZE))
    end = f.tell()
    header = _header(name, size)
    if len(header) != tarfile.BLOCKSIZE:
        raise UsageError(f"layer {digest} is too large for a tar header")
    f.seek(start)
    f.write(header)
    f.seek(end)
    return size


def write_docker_archive(
    path: Path | str,
    config_bytes: bytes,
    layers: list[tuple[Digest, Iterable[bytes]]],
    repo_tags: list[str],
) -> None:
    """Write a docker-archive at ``path`` (atomically) from a config and uncompressed layers.

    ``layers`` pairs each diff_id with the uncompressed tar's bytes; each must hash to its
    diff_id, and the diff_ids must be the config's ``rootfs.diff_ids``. The archive holds
    ``manifest.json`` (for docker/skopeo) and ``oci-layout``/``index.json`` with an OCI manifest
    (for OCI-aware readers); every blob lives at ``blobs/sha256/<hex>``.
    """
    path = Path(path)
    config = _json(config_bytes, "config")
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if diff_ids != [str(d) for d, _ in layers]:
        raise UsageError("the layers given do not match the config's rootfs.diff_ids")
    for tag in repo_tags:
        if not tag or ":" not in tag.rsplit("/", 1)[-1] or any(c.isspace() for c in tag):
            raise UsageError(f"invalid repo tag {tag!r:.100}; use name:tag")
    config_digest = sha256(config_bytes)
    tmp = path.parent / f".tmp-{secrets.token_hex(8)}-{path.name}"
    try:
        with atomic_file(path, tmp=tmp) as f:  # fsync, rename, directory fsync
            _add_bytes(f, f"blobs/sha256/{config_digest.hex}", config_bytes)
            descriptors = []
            written: dict[Digest, int] = {}
            for diff_id, chunks in layers:
                if diff_id not in written:  # a repeated layer is stored once
                    written[diff_id] = _add_stream(
                        f, f"blobs/sha256/{diff_id.hex}", diff_id, chunks
                    )
                descriptors.append(Descriptor(OCI_LAYER_TAR, diff_id, written[diff_id]))
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": str(config_digest),
                    "size": len(config_bytes),
                },
                "layers": [d.to_json() for d in descriptors],
            }
            manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
            manifest_digest = sha256(manifest_bytes)
            _add_bytes(f, f"blobs/sha256/{manifest_digest.hex}", manifest_bytes)
            entries = []
            tag_list: list[str | None] = list(repo_tags) or [None]
            for entry_tag in tag_list:
                ann: dict[str, str] = {}
                if entry_tag is not None:
                    ann[REF_NAME] = entry_tag.rsplit(":", 1)[1]
                    ann["io.containerd.image.name"] = entry_tag
                desc: dict[str, Any] = {
                    "mediaType": OCI_MANIFEST,
                    "digest": str(manifest_digest),
                    "size": len(manifest_bytes),
                }
                if ann:
                    desc["annotations"] = ann
                entries.append(desc)
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
            _add_bytes(f, "index.json", json.dumps(index, separators=(",", ":")).encode())
            _add_bytes(f, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            docker_manifest = [
                {
                    "Config": f"blobs/sha256/{config_digest.hex}",
                    "RepoTags": list(repo_tags),
                    "Layers": [f"blobs/sha256/{d.digest.hex}" for d in descriptors],
                }
            ]
            _add_bytes(f, "manifest.json", json.dumps(docker_manifest).encode())
            f.write(b"\x00" * (2 * tarfile.BLOCKSIZE))
    except OSError as exc:
        raise BackendError(f"cannot write {path}: {exc.strerror}") from exc
