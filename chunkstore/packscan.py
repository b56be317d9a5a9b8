"""Finding the blobs of an unencrypted pack whose header is lost, by scanning its bytes.

A pack is ``blob_0 || ... || blob_n-1 || header || trailer`` (SPEC.md §5) and only the header says
where one blob ends and the next begins. When the header cannot be read, the blobs of an
*unencrypted* pack can still be found where their encoding delimits them:

* a zstd-framed blob (flag ``0x01``, then one zstd frame) is self-delimiting: the frame header and
  the size of every block give its length. Such blobs are found by their 5-byte signature
  ``01 28 b5 2f fd`` and walked block by block;
* a raw blob (flag ``0x00``, then the plaintext) has no length of its own: it is recovered only
  where it exactly fills the gap between two known positions (the start of the pack or the end of
  a found frame, and the start of the next found frame or of the header when the trailer can
  still be read).

Blob ids are computed from the plaintext found, so whatever a scan returns is exactly what its id
names: a wrong guess (two raw blobs taken for one, a damaged frame that still decodes) only yields
a blob nobody references, never wrong bytes under a known id. In an *encrypted* pack every blob is
``nonce || ciphertext || tag`` with no visible length, so nothing can be found: only an older index
can name those blobs (see :mod:`chunkstore.reindex`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from chunkstore.compress import RAW, ZSTD, Compressor
from chunkstore.pack import HEADER_VERSION, MAGIC, TRAILER_SIZE
from index import cbor
from index.errors import FormatError

__all__ = ["MAX_SCANNED_BLOB", "ScannedBlob", "looks_like_metadata", "scan_pack"]

#: Largest plaintext a scanned blob may have (the largest chunk or metadata blob a writer makes).
MAX_SCANNED_BLOB = 64 * 1024 * 1024
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SIGNATURE = bytes([ZSTD]) + _ZSTD_MAGIC
_META_KEYS = frozenset({"data", "kind", "version"})


@dataclass(frozen=True, slots=True)
class ScannedBlob:
    """A blob found by a scan: where its stored bytes are and what they decode to."""

    offset: int
    length: int
    plaintext: bytes


def _frame_length(data: bytes, start: int, end: int) -> int | None:
    """Length of the zstd frame at ``data[start:end]`` from its header and block sizes."""
    pos = start + 4
    if pos >= end:
        return None
    descriptor = data[pos]
    fcs_flag, single, checksum, dict_flag = (
        descriptor >> 6,
        (descriptor >> 5) & 1,
        (descriptor >> 2) & 1,
        descriptor & 3,
    )
    if descriptor & 0x08:  # reserved bit
        return None
    pos += 1 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    pos += (1 if single else 0, 2, 4, 8)[fcs_flag]
    while pos + 3 <= end:
        (head,) = struct.unpack_from("<I", data[pos : pos + 3] + b"\x00")
        last, kind, size = head & 1, (head >> 1) & 3, head >> 3
        if kind == 3:
            return None
        pos += 3 + (1 if kind == 1 else size)
        if last:
            pos += 4 * checksum
            return pos - start if pos <= end else None
    return None


def _frame_at(data: bytes, at: int, end: int, zstd: Compressor) -> ScannedBlob | None:
    """The zstd-framed blob whose flag byte is at ``at``, if one decodes there."""
    length = _frame_length(data, at + 1, end)
    if length is None:
        return None
    stored = data[at : at + 1 + length]
    try:
        plain = zstd.decompress(stored, MAX_SCANNED_BLOB)
    except FormatError:
        return None
    return ScannedBlob(at, len(stored), plain)


def _is_pack_header(plain: bytes) -> bool:
    try:
        cbor.decode_envelope(
            plain,
            kind="pack-header",
            versions=(HEADER_VERSION, HEADER_VERSION),
            max_size=len(plain),
        )
    except FormatError:
        return False
    return True


def looks_like_metadata(plain: bytes) -> bool:
    """Whether ``plain`` is a chunkstore metadata envelope (how a scan tells ``META`` packs)."""
    if not plain.startswith(b"\xa3"):
        return False
    try:
        value = cbor.decode(plain, max_size=len(plain))
    except FormatError:
        return False
    return isinstance(value, dict) and set(value) == _META_KEYS


def scan_pack(data: bytes) -> list[ScannedBlob]:
    """The blobs of an unencrypted pack that can be delimited without its header, in order."""
    end = len(data)
    header_start: int | None = None
    trailer = data[-TRAILER_SIZE:]
    if end >= TRAILER_SIZE and trailer[4:7] == MAGIC:
        end -= TRAILER_SIZE
        (header_len,) = struct.unpack("<I", trailer[:4])
        if header_len <= end:
            header_start = end - header_len
    zstd = Compressor()
    frames: list[ScannedBlob] = []
    pos = 0
    while (at := data.find(_SIGNATURE, pos, end)) >= 0:
        blob = _frame_at(data, at, end, zstd)
        if blob is None or _is_pack_header(blob.plaintext):
            pos = at + 1
            continue
        frames.append(blob)
        pos = at + blob.length
    found: list[ScannedBlob] = []
    cursor = 0  # a position where a blob is known to start
    for frame in [*frames, None]:
        gap_end = frame.offset if frame is not None else header_start
        if gap_end is not None and cursor < gap_end and data[cursor] == RAW:
            if gap_end - cursor - 1 <= MAX_SCANNED_BLOB:
                found.append(ScannedBlob(cursor, gap_end - cursor, data[cursor + 1 : gap_end]))
        if frame is not None:
            found.append(frame)
            cursor = frame.offset + frame.length
    return found
