"""klauspost compress/zstd 1.15.12 frames (see chunkstore/native/kpzstd)."""

KLAUSPOST_COMPRESS_VERSION: str
LEVEL_DEFAULT: int
LEVEL_FASTEST: int
CONTAINERS_IMAGE_PREFIX: int

class Encoder:
    """The whole zstd frame klauspost's streaming ``Encoder`` writes (``zstd.NewWriter``).

    ``level`` is klauspost's ``EncoderLevel``: 1 (``SpeedFastest``) or 2
    (``SpeedDefault``); the better and best levels are not done. ``prefix`` (1..65536):
    the producer writes its first ``prefix`` bytes with ``Write`` and the rest with ``ReadFrom``, which
    flushes those bytes as a block of their own (containers/image: 8, the bytes it peeks at to
    detect compression). The output does not depend on how the input is split across calls.
    """

    def __init__(self, level: int = 2, prefix: int = 8) -> None: ...
    @property
    def level(self) -> int: ...
    @property
    def prefix(self) -> int: ...
    def compress(self, data: bytes | bytearray | memoryview, /) -> bytes: ...
    def finish(self) -> bytes: ...
