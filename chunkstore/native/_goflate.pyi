"""Raw deflate encoder byte-identical to Go's ``compress/flate`` (go1.7 to go1.26).

See chunkstore/native/goflate for the encoder; chunkstore.reproduce.go_family for its use.
"""

class Deflater:
    """Go's ``flate.Writer`` at ``level`` (-2 HuffmanOnly, -1 default = 6, 0 stored, 1 to 9).

    The output is what Go writes when the same bytes are written and the writer is closed, however
    the input is split across :meth:`compress` calls. ``ValueError`` for a level outside -2..9.
    """

    def __init__(self, level: int = -1) -> None: ...
    @property
    def level(self) -> int:
        """The level as given."""
    def compress(self, data: bytes | bytearray | memoryview, /) -> bytes:
        """Consume ``data``; return the output that is final so far (maybe empty)."""
    def finish(self) -> bytes:
        """End the stream; return the rest. Any later call raises ``ValueError``."""
