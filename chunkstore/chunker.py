"""Content-defined chunking: cutting a byte stream into deduplicatable chunks.

A chunker decides where one chunk ends and the next begins by looking at the bytes themselves
(FastCDC: a rolling "gear" hash over the data; a cut is made where the hash matches a mask), not at
fixed offsets. Inserting or removing bytes therefore only moves the cuts near the edit; further on
the cuts land on the same content again, so the same chunks (and blob ids) reappear and are stored
once. :class:`ChunkerParams` bounds the chunk sizes: no chunk is longer than ``max_size`` and none
but the last is shorter than ``min_size``; ``avg_size`` sets the mask and so the typical size. The
parameters are part of a repository's configuration: changing them changes every cut.

:class:`Chunker` runs FastCDC (``chunkstore.native._cdc``, C, the GIL released while it scans) over
a :class:`GearTable`: the ``fastcdc`` package's own table (:func:`GearTable.standard`, cuts
identical to that package's) or, in an encrypted repository, one derived from its key
(:func:`GearTable.keyed`), so that nobody without the key can predict where the cuts fall (SPEC.md
section 8). It feeds the scan a stream through one reused buffer, so memory stays ``O(buffer_size +
max_size)`` however long the stream is. The cuts are exactly those FastCDC makes over the whole
input at once, whatever sizes the stream's reads return: FastCDC decides a cut from the bytes
between the chunk's start and the cut only, so a cut that falls strictly inside the buffered data
(made by content), or a chunk of exactly ``max_size`` bytes, is final; a chunk that merely ran into
the end of the buffer is carried over and chunked again once more data (or the end of the stream)
has arrived.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from chunkstore.errors import UsageError
from chunkstore.native import _cdc
from index.errors import Malformed

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "MAX_CHUNK_SIZE",
    "Chunker",
    "ChunkerParams",
    "GearTable",
]

KIB = 1024
MIB = 1024 * KIB
#: Largest ``max_size`` accepted (chunks are held in memory whole).
MAX_CHUNK_SIZE = 64 * MIB
#: Default size of the read buffer of :meth:`Chunker.chunks`.
DEFAULT_BUFFER_SIZE = 8 * MIB

# Lower bounds of FastCDC (the ``fastcdc`` package's MINIMUM_MIN, AVERAGE_MIN and MAXIMUM_MIN).
_MIN_MIN_SIZE = 64
_MIN_AVG_SIZE = 256
_MIN_MAX_SIZE = 1024

_CBOR_KEYS = frozenset({"min", "avg", "max"})

#: Label of the keyed table's entries: entry i is HMAC-SHA256(mac_key, label || uint8(i))[:4], LE.
GEAR_LABEL = b"chunkstore.v2.gear\x00"


@dataclass(frozen=True, slots=True)
class GearTable:
    """FastCDC's 256 gear values, as 1024 bytes (uint32 little-endian), and where they come from.

    ``kind`` is ``"standard"`` (the ``fastcdc`` package's table, public) or ``"keyed"`` (derived
    from a repository's MAC key, secret: ``repr`` never shows it).
    """

    kind: str
    table: bytes = field(repr=False)

    def __post_init__(self) -> None:
        """Check the size and kind."""
        if self.kind not in ("standard", "keyed"):
            raise UsageError(f"unknown gear table kind {self.kind!r:.40}")
        if not isinstance(self.table, bytes) or len(self.table) != 1024:
            raise UsageError("a gear table is 1024 bytes (256 uint32 little-endian)")

    @classmethod
    def standard(cls) -> GearTable:
        """The ``fastcdc`` package's table: the cuts of plain repositories and of ``analyze``."""
        return cls("standard", _cdc.standard_table())

    @classmethod
    def keyed(cls, mac_key: bytes) -> GearTable:
        """The table of an encrypted repository: ``HMAC-SHA256(mac_key, GEAR_LABEL || i)[:4]``."""
        if not isinstance(mac_key, bytes) or len(mac_key) != 32:
            raise UsageError("the gear table key must be 32 bytes")
        table = b"".join(
            hmac.digest(mac_key, GEAR_LABEL + bytes([i]), "sha256")[:4] for i in range(256)
        )
        return cls("keyed", table)

    def values(self) -> tuple[int, ...]:
        """The 256 entries as integers."""
        return struct.unpack("<256I", self.table)


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    """FastCDC chunk-size bounds, in bytes: ``min_size <= avg_size <= max_size``."""

    min_size: int = 16 * KIB
    avg_size: int = 64 * KIB
    max_size: int = 256 * KIB

    def __post_init__(self) -> None:
        """Reject sizes FastCDC cannot use, naming the values given."""
        given = (
            f"min_size={self.min_size!r}, avg_size={self.avg_size!r}, max_size={self.max_size!r}"
        )
        for name in ("min_size", "avg_size", "max_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise UsageError(f"chunker {name} must be an integer number of bytes ({given})")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise UsageError(
                f"chunker sizes must satisfy min_size <= avg_size <= max_size ({given})"
            )
        if self.min_size < _MIN_MIN_SIZE:
            raise UsageError(f"chunker min_size must be at least {_MIN_MIN_SIZE} bytes ({given})")
        if self.avg_size < _MIN_AVG_SIZE:
            raise UsageError(f"chunker avg_size must be at least {_MIN_AVG_SIZE} bytes ({given})")
        if self.max_size < _MIN_MAX_SIZE:
            raise UsageError(f"chunker max_size must be at least {_MIN_MAX_SIZE} bytes ({given})")
        if self.max_size > MAX_CHUNK_SIZE:
            raise UsageError(
                f"chunker max_size must be at most {MAX_CHUNK_SIZE} bytes (64 MiB) ({given})"
            )

    def to_cbor(self) -> dict[str, int]:
        """The CBOR form stored in a repository config: ``{"min": .., "avg": .., "max": ..}``."""
        return {"min": self.min_size, "avg": self.avg_size, "max": self.max_size}

    @classmethod
    def from_cbor(cls, value: object) -> ChunkerParams:
        """Decode :meth:`to_cbor`'s form strictly; anything else is :class:`Malformed`."""
        if not isinstance(value, dict):
            raise Malformed(f"chunker parameters must be a map, not {type(value).__name__}")
        keys = set(value)
        if keys != _CBOR_KEYS:
            missing = sorted(str(k) for k in _CBOR_KEYS - keys)
            extra = sorted(repr(k) for k in keys - _CBOR_KEYS)
            raise Malformed(
                "chunker parameters must have exactly the keys avg, max, min"
                f" (missing: {', '.join(missing) or 'none'};"
                f" unexpected: {', '.join(extra) or 'none'})"
            )
        for key in sorted(_CBOR_KEYS):
            item = value[key]
            if not isinstance(item, int) or isinstance(item, bool):
                raise Malformed(f"chunker parameter {key!r} must be an integer, not {item!r:.40}")
        try:
            return cls(min_size=value["min"], avg_size=value["avg"], max_size=value["max"])
        except UsageError as exc:
            raise Malformed(f"invalid chunker parameters: {exc}") from exc


def _reader(stream: BinaryIO) -> Callable[[memoryview], int]:
    """A function filling a memoryview from ``stream`` and returning the count (0 at EOF)."""
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:

        def fill_readinto(target: memoryview) -> int:
            n = readinto(target)
            if n is None:
                raise UsageError(
                    "the input stream has no data ready (non-blocking?); give a blocking stream"
                )
            if not isinstance(n, int) or not 0 <= n <= len(target):
                raise UsageError(f"the input stream's readinto returned an invalid count {n!r:.40}")
            return n

        return fill_readinto

    def fill_read(target: memoryview) -> int:
        data = stream.read(len(target))
        if data is None:
            raise UsageError(
                "the input stream has no data ready (non-blocking?); give a blocking stream"
            )
        if not isinstance(data, bytes | bytearray | memoryview):
            raise UsageError(
                f"the input stream returned {type(data).__name__}, not bytes;"
                " open it in binary mode"
            )
        n = len(data)
        if n > len(target):
            raise UsageError(f"the input stream returned {n} bytes where {len(target)} were asked")
        target[:n] = data
        return n

    return fill_read


class Chunker:
    """Cuts streams or byte strings into content-defined chunks with fixed :class:`ChunkerParams`.

    ``buffer_size`` is the read buffer of :meth:`chunks`; it is raised to ``2 * max_size`` when
    smaller, so each refill holds at least one full-length chunk. A chunker holds no per-stream
    state and may be used for any number of inputs, one after another or interleaved. ``gear``
    is the table (the standard one by default).
    """

    __slots__ = ("_buffer_size", "_gear", "_params", "_spare")

    def __init__(
        self,
        params: ChunkerParams,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        gear: GearTable | None = None,
    ) -> None:
        """Check the arguments."""
        if not isinstance(params, ChunkerParams):
            raise UsageError(f"chunker params must be ChunkerParams, not {type(params).__name__}")
        if gear is not None and not isinstance(gear, GearTable):
            raise UsageError(f"chunker gear must be a GearTable, not {type(gear).__name__}")
        if not isinstance(buffer_size, int) or isinstance(buffer_size, bool) or buffer_size < 1:
            raise UsageError(f"chunker buffer_size must be a positive integer, not {buffer_size!r}")
        self._params = params
        self._buffer_size = max(buffer_size, 2 * params.max_size)
        self._gear = gear or GearTable.standard()
        # One read buffer is kept between calls: allocating (and zero-filling) 8 MiB per input
        # dominated the cost of chunking many small files. Interleaved calls get their own.
        self._spare: bytearray | None = None

    @property
    def params(self) -> ChunkerParams:
        """The chunk-size bounds in use."""
        return self._params

    @property
    def gear(self) -> GearTable:
        """The gear table in use."""
        return self._gear

    @property
    def buffer_size(self) -> int:
        """The effective read-buffer size of :meth:`chunks` (at least ``2 * max_size``)."""
        return self._buffer_size

    def _cuts(self, view: memoryview) -> Iterator[tuple[int, int]]:
        """FastCDC's chunks ``(offset, length)`` of ``view`` taken alone."""
        p = self._params
        offset = 0
        for length in _cdc.cuts(view, self._gear.table, p.min_size, p.avg_size, p.max_size):
            yield offset, length
            offset += length

    def chunk_bytes(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """The chunks of ``data`` held whole in memory, as ``bytes``; none for empty input."""
        try:
            view = memoryview(data).cast("B")
        except TypeError as exc:
            raise UsageError(
                f"chunk_bytes needs contiguous bytes-like data, not {type(data).__name__}"
            ) from exc
        with view:
            for offset, length in self._cuts(view):
                yield bytes(view[offset : offset + length])

    def chunks(self, stream: BinaryIO) -> Iterator[bytes]:
        """The chunks of ``stream`` read to its end, as ``bytes``; none for an empty stream.

        Reads go through ``readinto`` into one reused buffer (``read`` when the stream has no
        ``readinto``); short reads are fine. The input is never held whole.
        """
        fill = _reader(stream)
        max_size = self._params.max_size
        capacity = self._buffer_size
        buffer, self._spare = self._spare or bytearray(capacity), None
        try:
            yield from self._chunks_into(fill, buffer, capacity, max_size, self._params.min_size)
        finally:
            self._spare = buffer

    def _chunks_into(
        self,
        fill: Callable[[memoryview], int],
        buffer: bytearray,
        capacity: int,
        max_size: int,
        min_size: int,
    ) -> Iterator[bytes]:
        with memoryview(buffer) as whole:
            filled = 0
            eof = False
            while not eof:
                while filled < capacity:
                    n = fill(whole[filled:capacity])
                    if n == 0:
                        eof = True
                        break
                    filled += n
                if filled == 0:
                    return
                if eof and filled <= min_size:
                    # FastCDC never cuts before min_size: the rest is one chunk (most files of
                    # an image are this small, and the native call would cost a GIL hand-off).
                    yield bytes(whole[:filled])
                    return
                done = 0
                with whole[:filled] as view:
                    for start, length in self._cuts(view):
                        end = start + length
                        # A cut at the end of the buffered data may only be the data running
                        # out; it is final only at EOF or when the chunk has reached max_size.
                        if end == filled and not eof and length < max_size:
                            break
                        yield bytes(view[start:end])
                        done = end
                carry = filled - done
                if carry:
                    whole[:carry] = whole[done:filled]
                filled = carry
