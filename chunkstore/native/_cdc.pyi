"""FastCDC (2016, normalized) over a caller-given gear table (see chunkstore/native/_cdc.c)."""

def cuts(
    data: bytes | bytearray | memoryview,
    table: bytes,
    min_size: int,
    avg_size: int,
    max_size: int,
    /,
) -> list[int]: ...
def standard_table() -> bytes: ...
