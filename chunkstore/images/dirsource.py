"""Root filesystem directories as images (``dir:PATH``): a deterministic layer tar and its metadata.

A directory is stored as a one-layer image::

    PATH -> DirTarStream (uncompressed PAX tar, streamed) -> ingest (diff_id, recipe, members)
         -> dir_image_metadata(diff_id, size) -> OCI config (rootfs.diff_ids) and manifest

The tar is deterministic: entries in bytewise name order, depth first (a directory before its
children), numeric uid/gid only (no user or group names), mtimes with nanoseconds (PAX ``mtime``),
symlinks, hard links (detected by ``(st_dev, st_ino)``; the first path in tar order holds the
content), character and block devices, fifos, and extended attributes (``SCHILY.xattr.*``, when
the platform has ``os.listxattr``). The root itself is the member ``./``.

Memory stays bounded: file content is read in pieces as the consumer reads the stream, and only
the hard-link map and the directory stack are kept. Sockets (and anything else tar cannot hold)
are not archived; each one is listed in :attr:`DirTarStream.skipped`, never dropped silently. A
file whose size changes while it is read makes the stream fail (:class:`UsageError`): the
recorded image would not be consistent.
"""

from __future__ import annotations

import json
import os
import platform as _platform
import stat
import tarfile
from collections.abc import Generator, Iterator
from pathlib import Path

from chunkstore.errors import UsageError
from chunkstore.images.oci_layout import Platform
from chunkstore.registry.mediatypes import OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST
from index.ids import Digest, sha256

__all__ = ["DirTarStream", "dir_image_metadata", "host_platform"]

_PIECE = 1 << 20
_ZERO_BLOCKS = b"\x00" * (2 * tarfile.BLOCKSIZE)
_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def host_platform() -> Platform:
    """This machine's platform in OCI terms (``linux/amd64`` and so on)."""
    machine = _platform.machine().lower()
    if machine.startswith("armv7"):
        return Platform("linux", "arm", "v7")
    if machine.startswith("armv6"):
        return Platform("linux", "arm", "v6")
    return Platform("linux", _ARCH.get(machine, machine or "unknown"))


def _pax_mtime(mtime_ns: int) -> str:
    sign = "-" if mtime_ns < 0 else ""
    sec, frac = divmod(abs(mtime_ns), 1_000_000_000)
    return f"{sign}{sec}.{frac:09d}" if frac else f"{sign}{sec}"


def _xattrs(path: bytes) -> list[tuple[bytes, bytes]]:
    if not hasattr(os, "listxattr"):
        return []
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []  # the file system does not support extended attributes
    out = []
    for name in names:
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            raise UsageError(
                f"cannot read extended attribute {name} of {os.fsdecode(path)!r}: {exc.strerror}"
            ) from None
        out.append((os.fsencode(name), value))
    return sorted(out)


class DirTarStream:
    """A read-only stream of the PAX tar of the directory ``root`` (see the module docstring)."""

    def __init__(self, root: Path | str) -> None:
        """Check that ``root`` is a directory; the tar is produced as it is read."""
        self._root = os.fsencode(Path(root))
        try:
            st = os.stat(self._root)
        except FileNotFoundError:
            raise UsageError(f"directory {os.fsdecode(self._root)} does not exist") from None
        except OSError as exc:
            raise UsageError(f"cannot read {os.fsdecode(self._root)}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{os.fsdecode(self._root)} is not a directory")
        #: Paths (relative, decoded for display) that a tar cannot hold, with the reason.
        self.skipped: list[str] = []
        #: Bytes produced so far.
        self.size = 0
        self._it = self._generate()
        self._buf = bytearray()

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when ``n`` < 0); ``b""`` at the end."""
        while n < 0 or len(self._buf) < n:
            piece = next(self._it, None)
            if piece is None:
                break
            self._buf += piece
        if n < 0 or n >= len(self._buf):
            out = bytes(self._buf)
            self._buf.clear()
        else:
            out = bytes(self._buf[:n])
            del self._buf[:n]
        self.size += len(out)
        return out

    def close(self) -> None:
        """Stop producing (closes the generator and any open file)."""
        self._it.close()

    # -- producing ----------------------------------------------------------------------------

    def _generate(self) -> Generator[bytes, None, None]:
        links: dict[tuple[int, int], str] = {}
        # Depth first, names in bytewise order: pop from the end of a reversed-sorted list.
        stack: list[bytes] = [b""]
        while stack:
            rel = stack.pop()
            full = os.path.join(self._root, rel) if rel else self._root
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                raise UsageError(
                    f"{os.fsdecode(full)} vanished while the directory was read; "
                    "back up a directory that is not being changed"
                ) from None
            name = os.fsdecode(rel) if rel else "."
            if stat.S_ISDIR(st.st_mode):
                yield self._header(name, tarfile.DIRTYPE, st, full)
                try:
                    children = os.listdir(full)
                except OSError as exc:
                    raise UsageError(f"cannot list {os.fsdecode(full)}: {exc.strerror}") from None
                stack.extend(
                    os.path.join(rel, c) if rel else c for c in sorted(children, reverse=True)
                )
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                first = links.get(key) if st.st_nlink > 1 else None
                if first is not None:
                    yield self._header(name, tarfile.LNKTYPE, st, full, linkname=first)
                    continue
                if st.st_nlink > 1:
                    links[key] = name
                yield self._header(name, tarfile.REGTYPE, st, full, size=st.st_size)
                yield from self._content(full, st.st_size)
            elif stat.S_ISLNK(st.st_mode):
                target = os.fsdecode(os.readlink(full))
                yield self._header(name, tarfile.SYMTYPE, st, full, linkname=target)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                kind = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                yield self._header(name, kind, st, full, dev=st.st_rdev)
            elif stat.S_ISFIFO(st.st_mode):
                yield self._header(name, tarfile.FIFOTYPE, st, full)
            else:
                what = "a socket" if stat.S_ISSOCK(st.st_mode) else "of an unknown type"
                self.skipped.append(f"{name}: {what}; a tar archive cannot hold it")
        yield _ZERO_BLOCKS

    def _header(
        self,
        name: str,
        kind: bytes,
        st: os.stat_result,
        full: bytes,
        *,
        size: int = 0,
        linkname: str = "",
        dev: int | None = None,
    ) -> bytes:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.size = size
        info.linkname = linkname
        mtime_ns = st.st_mtime_ns
        info.mtime = mtime_ns // 1_000_000_000
        pax: dict[str, str] = {}
        if mtime_ns % 1_000_000_000 or mtime_ns < 0:
            pax["mtime"] = _pax_mtime(mtime_ns)
        if dev is not None:
            info.devmajor, info.devminor = os.major(dev), os.minor(dev)
        if kind != tarfile.LNKTYPE:  # a hard link shares its target's attributes
            for key, value in _xattrs(full):
                pax["SCHILY.xattr." + key.decode("utf-8", "surrogateescape")] = value.decode(
                    "utf-8", "surrogateescape"
                )
        info.pax_headers = pax
        try:
            return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        except ValueError as exc:
            raise UsageError(f"{name!r:.200} cannot be archived: {exc}") from None

    def _content(self, full: bytes, size: int) -> Iterator[bytes]:
        try:
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"cannot read {os.fsdecode(full)}: {exc.strerror}") from None
        try:
            left = size
            while left > 0:
                piece = os.read(fd, min(left, _PIECE))
                if not piece:
                    break
                left -= len(piece)
                yield piece
            if left or os.read(fd, 1):
                raise UsageError(
                    f"{os.fsdecode(full)} changed size while it was read; back up a directory "
                    "that is not being changed"
                )
        finally:
            os.close(fd)
        if size % tarfile.BLOCKSIZE:
            yield b"\x00" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)


def dir_image_metadata(
    diff_id: Digest, tar_size: int, platform: Platform | None = None
) -> tuple[bytes, bytes]:
    """The OCI config and manifest bytes of a one-layer image of an uncompressed layer tar.

    Deterministic: the same layer and platform always give the same bytes (hence the same image
    ID); there is no ``created`` time.
    """
    plat = platform if platform is not None else host_platform()
    config: dict[str, object] = {
        "architecture": plat.architecture,
        "os": plat.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [str(diff_id)]},
        "history": [{"created_by": "chunkstore backup dir:"}],
    }
    if plat.variant:
        config["variant"] = plat.variant
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": str(sha256(config_bytes)),
            "size": len(config_bytes),
        },
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": str(diff_id), "size": tar_size}],
    }
    return config_bytes, json.dumps(manifest, separators=(",", ":")).encode()
