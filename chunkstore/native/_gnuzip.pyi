"""Raw deflate encoders byte-identical to GNU gzip 1.12 and pigz 2.6 (see chunkstore/native/gnuzip)."""

class GzipEncoder:
    """GNU gzip 1.12's deflate stream (``gzip -<level>``, optionally ``--rsyncable``)."""

    def __init__(self, level: int = 6, *, rsyncable: bool = False) -> None: ...
    def compress(self, data: bytes | bytearray | memoryview, /) -> bytes: ...
    def finish(self) -> bytes: ...

class PigzEncoder:
    """pigz 2.6's deflate stream over the system zlib (``pigz -<level> -b <block_size/1024>``)."""

    def __init__(
        self,
        level: int = 6,
        block_size: int = 131072,
        *,
        independent: bool = False,
        serial: bool = False,
        rsyncable: bool = False,
        threads: int = 1,
    ) -> None: ...
    def compress(self, data: bytes | bytearray | memoryview, /) -> bytes: ...
    def finish(self) -> bytes: ...

def zlib_version() -> str: ...
