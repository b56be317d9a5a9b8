"""Content-addressed image blobs: a verifying reader and an atomic, verifying writer.

:class:`VerifiedReader` wraps a stream whose SHA-256 and length are known from a descriptor. It
hashes and counts while reading, never hands out a byte past the declared size, and raises
:class:`BlobDigestMismatch` as soon as the stream proves to be longer than declared, or at the end
when it is shorter or hashes differently. The last bytes of the blob are returned only after the
digest has been checked, so a consumer that stops exactly at ``size`` still gets a verified blob.

:func:`write_blob_atomically` stores ``<directory>/sha256/<hex>`` the way the local backend stores
repository files: a ``.tmp-`` file in the target directory, fsync, verify, rename, directory fsync.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from chunkstore.errors import BackendError, IntegrityError, UsageError
from chunkstore.fsutil import fsync_dir
from chunkstore.readable import Readable
from index.ids import Digest

__all__ = [
    "BlobDigestMismatch",
    "VerifiedReader",
    "blob_path",
    "write_blob_atomically",
]

_TEMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


class BlobDigestMismatch(IntegrityError):
    """A blob's bytes do not match the digest or size its descriptor declares."""


def blob_path(directory: Path, digest: Digest) -> Path:
    """``directory/<algorithm>/<hex>``; only ``sha256`` content digests are accepted."""
    if digest.algorithm != "sha256":
        raise UsageError(f"image blobs are named by sha256 digests, not {digest.algorithm}")
    return directory / digest.algorithm / digest.hex


class VerifiedReader(io.RawIOBase):
    """A read-only stream over ``raw`` that checks it holds exactly ``size`` bytes hashing to ``digest``."""

    def __init__(self, raw: Readable, digest: Digest, size: int, *, name: str = "") -> None:
        """Verify ``raw`` against ``digest`` (sha256) and ``size``; ``name`` is used in messages."""
        super().__init__()
        if digest.algorithm != "sha256":
            raise UsageError(f"cannot verify a blob named by {digest.algorithm}; use sha256")
        if size < 0:
            raise UsageError(f"blob {digest} has a negative size {size}")
        self._raw = raw
        self._digest = digest
        self._size = size
        self._name = name or str(digest)
        self._hash = hashlib.sha256()
        self._count = 0
        self._verified = False

    @property
    def digest(self) -> Digest:
        """The expected digest."""
        return self._digest

    @property
    def size(self) -> int:
        """The expected size in bytes."""
        return self._size

    @property
    def verified(self) -> bool:
        """Whether every byte has been read and matched."""
        return self._verified

    def readable(self) -> bool:
        """Always true."""
        return True

    def _fail(self, what: str) -> BlobDigestMismatch:
        name = self._name
        if name != str(self._digest):
            name = f"{name} ({self._digest})"
        return BlobDigestMismatch(
            f"blob {name} is damaged: {what}; the source does not hold the blob its "
            "descriptor names (re-fetch or re-export the image)"
        )

    def _finish(self) -> None:
        """At ``size`` bytes: the stream must end here and the hash must match."""
        if self._raw.read(1):
            raise self._fail(f"it is longer than the declared {self._size} bytes")
        got = self._hash.hexdigest()
        if got != self._digest.hex:
            raise self._fail(f"its content hashes to sha256:{got}")
        self._verified = True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        """Read into ``buffer``; 0 at the (verified) end."""
        view = memoryview(buffer).cast("B")
        remaining = self._size - self._count
        if remaining == 0:
            if not self._verified:
                self._finish()
            return 0
        want = min(len(view), remaining, _CHUNK)
        if want == 0:
            return 0
        data = self._raw.read(want)
        if not data:
            raise self._fail(f"it ends after {self._count} bytes, its descriptor says {self._size}")
        if len(data) > want:
            raise self._fail(f"it is longer than the declared {self._size} bytes")
        n = len(data)
        self._hash.update(data)
        self._count += n
        if self._count == self._size:
            self._finish()
        view[:n] = data
        return n

    def read_all_verified(self) -> bytes:
        """Every byte of the blob, verified (for small blobs: manifests, configs)."""
        parts = []
        while True:
            block = self.read(_CHUNK)
            if not block:
                break
            parts.append(block)
        return b"".join(parts)

    def close(self) -> None:
        """Close this reader and the underlying stream."""
        if not self.closed:
            close = getattr(self._raw, "close", None)
            if close is not None:
                close()
        super().close()


def _fsync_dir(path: Path) -> None:
    try:
        fsync_dir(path)
    except OSError as exc:
        raise BackendError(f"cannot fsync directory {path}: {exc.strerror}") from exc


def write_blob_atomically(directory: Path, digest: Digest, chunks: Iterable[bytes]) -> None:
    """Store ``chunks`` as ``directory/sha256/<hex>`` if, and only if, they hash to ``digest``.

    The bytes go to a temporary file that is fsynced, verified and renamed into place, then the
    directory is fsynced. On a mismatch the temporary file is removed and
    :class:`BlobDigestMismatch` raised; an existing blob of that name is left as it was.
    """
    final = blob_path(directory, digest)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(f"cannot create directory {final.parent}: {exc.strerror}") from exc
    tmp = final.parent / f"{_TEMP_PREFIX}{secrets.token_hex(16)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except OSError as exc:
        raise BackendError(f"cannot create temporary file {tmp}: {exc.strerror}") from exc
    published = False
    try:
        h = hashlib.sha256()
        size = 0
        try:
            for chunk in chunks:
                h.update(chunk)
                size += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            raise BackendError(f"cannot write {tmp}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        got = h.hexdigest()
        if got != digest.hex:
            raise BlobDigestMismatch(
                f"refusing to store blob {digest}: the {size} bytes given hash to sha256:{got}"
            )
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise BackendError(f"cannot rename {tmp} to {final}: {exc.strerror}") from exc
        published = True
    finally:
        if not published:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    _fsync_dir(final.parent)
