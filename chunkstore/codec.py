"""BlobCodec: plaintext <-> stored bytes for blobs and repository files.

Stored blob (in a pack)::

    unencrypted:  frame                         frame = flag(1) || body  (see compress.py)
    encrypted:    nonce(24) || AEAD(frame) || tag(16)
                  AAD = "chunkstore.v1.blob\\0" || repo_id(32) || type(1) || id(32)

Stored file (index file, record, pack header)::

    unencrypted:  frame
    encrypted:    nonce(24) || AEAD(frame) || tag(16)
                  AAD = "chunkstore.v1.file\\0" || repo_id(32) || role (ASCII)

Decoding always verifies: AEAD (encrypted), then decompression within the expected length, then
the blob id recomputed from the plaintext. Unverified bytes are never returned.
"""

from __future__ import annotations

from chunkstore import crypto
from chunkstore.blob import BlobType, StoredBlob
from chunkstore.compress import Compressor
from chunkstore.config import RepoConfig
from chunkstore.errors import CorruptBlob, CorruptMetadata, UsageError
from chunkstore.hashing import BlobHasher
from index.errors import FormatError
from index.ids import Digest

__all__ = ["BlobCodec"]

_BLOB_AAD = b"chunkstore.v1.blob\x00"
_FILE_AAD = b"chunkstore.v1.file\x00"


class BlobCodec:
    """Compresses, seals, names and verifies blobs and files for one repository."""

    def __init__(self, config: RepoConfig, master: crypto.MasterKey | None) -> None:
        """An encrypted repository needs its master key; an unencrypted one takes none."""
        if config.encrypted != (master is not None):
            raise UsageError("master key given for an unencrypted repository, or missing")
        self.config = config
        self._master = master
        self._compressor = Compressor(config.compression_level)
        self.blob_id = BlobHasher(config.id_algorithm, master.mac if master else None)

    def _blob_aad(self, type_: BlobType, blob_id: Digest) -> bytes:
        return _BLOB_AAD + self.config.repo_id + bytes([int(type_)]) + blob_id.raw

    def encode(
        self, type_: BlobType, plaintext: bytes | memoryview, blob_id: Digest | None = None
    ) -> StoredBlob:
        """Compress and (if encrypted) seal; ``blob_id`` is computed when not given."""
        if blob_id is None:
            blob_id = self.blob_id(plaintext)
        frame = self._compressor.compress(plaintext)
        if self._master is not None:
            frame = crypto.seal(self._master.encryption, frame, self._blob_aad(type_, blob_id))
        return StoredBlob(blob_id, type_, frame, len(plaintext))

    def decode(
        self, type_: BlobType, blob_id: Digest, stored: bytes | memoryview, raw_length: int
    ) -> bytes:
        """Verify and return the plaintext; ``CorruptBlob`` naming the blob on any failure."""
        frame: bytes | memoryview = stored
        what = f"{type_.name.lower()} blob {blob_id.short}"
        if self._master is not None:
            frame = crypto.open_sealed(
                self._master.encryption, stored, self._blob_aad(type_, blob_id), what
            )
        try:
            plain = self._compressor.decompress(frame, raw_length)
        except FormatError as exc:
            raise CorruptBlob(f"{what} does not decompress: {exc}") from exc
        if len(plain) != raw_length:
            raise CorruptBlob(f"{what} has {len(plain)} bytes, the index says {raw_length}")
        if self.blob_id(plain) != blob_id:
            raise CorruptBlob(f"{what} content does not match its id")
        return plain

    def verify_encoding(self, blob: StoredBlob, plaintext: bytes | memoryview) -> None:
        """Check that ``blob`` decodes to ``plaintext`` before it is stored.

        Cheaper than :meth:`decode` (no id recomputation: the id was just computed from this very
        plaintext), and it catches a fault between chunking and sealing (bad RAM, a library bug)
        before the blob can reach storage.
        """
        try:
            frame: bytes | memoryview = blob.data
            if self._master is not None:
                frame = crypto.open_sealed(
                    self._master.encryption, blob.data, self._blob_aad(blob.type, blob.id), "blob"
                )
            ok = self._compressor.decompress(frame, blob.raw_length) == plaintext
        except (FormatError, CorruptBlob):
            ok = False
        if not ok:
            raise CorruptBlob(
                f"{blob.type.name.lower()} blob {blob.id.short} does not decode to the data it "
                "was made from (memory or library fault); nothing was stored"
            )

    def encode_file(self, role: str, plaintext: bytes) -> bytes:
        """Stored bytes of a repository file (index, record, pack header)."""
        frame = self._compressor.compress(plaintext)
        if self._master is not None:
            frame = crypto.seal(self._master.encryption, frame, self._file_aad(role))
        return frame

    def decode_file(
        self, role: str, stored: bytes | memoryview, max_length: int, what: str
    ) -> bytes:
        """Verify (encrypted) and decompress a stored file; ``CorruptMetadata`` on failure."""
        frame: bytes | memoryview = stored
        try:
            if self._master is not None:
                frame = crypto.open_sealed(
                    self._master.encryption, stored, self._file_aad(role), what
                )
            return self._compressor.decompress(frame, max_length)
        except CorruptBlob as exc:
            raise CorruptMetadata(str(exc)) from exc
        except FormatError as exc:
            raise CorruptMetadata(f"{what} does not decompress: {exc}") from exc

    def _file_aad(self, role: str) -> bytes:
        return _FILE_AAD + self.config.repo_id + role.encode("ascii")
