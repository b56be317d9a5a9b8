"""klauspost compress/flate 1.15.12 and pgzip 1.2.5 raw deflate streams (see chunkstore/native/kpflate)."""

KLAUSPOST_COMPRESS_VERSION: str
PGZIP_VERSION: str
PGZIP_TAIL: int
PGZIP_DEFAULT_BLOCK: int

class PgzipDeflater:
    """The deflate body pgzip writes (``pgzip.NewWriterLevel`` + ``SetConcurrency(block_size, _)``).

    Levels -2 (HuffmanOnly), -1 (default, same as 5), 0 (stored), 1..9; ``block_size`` > 16384.
    ``threads`` blocks are compressed at once (0: up to 4, by CPU count); the output does not
    depend on it, only when it is returned. With one thread the input is coded as it comes (the
    bytes of each full 64 KiB window are returned at once); with more, output waits for a batch
    of ``threads`` whole blocks.
    """

    def __init__(self, level: int = -1, block_size: int = 1048576, threads: int = 0) -> None: ...
    @property
    def level(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def threads(self) -> int: ...
    def compress(self, data: bytes | bytearray | memoryview, /) -> bytes: ...
    def finish(self) -> bytes: ...

class Deflater:
    """One klauspost flate stream (``flate.NewWriter``; klauspost's gzip and zlib writers)."""

    def __init__(self, level: int = -1) -> None: ...
    def compress(self, data: bytes | bytearray | memoryview, /) -> bytes: ...
    def flush(self) -> bytes: ...
    def finish(self) -> bytes: ...
