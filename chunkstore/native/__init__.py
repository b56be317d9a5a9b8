"""Native code: faithful re-implementations of the compressors that make image layers.

Each ``_NAME`` module is a C extension built from ``chunkstore/native/_NAME.c`` (see setup.py),
written here from the algorithms' descriptions, and releasing the GIL while it works. Python code
reaches them through :mod:`chunkstore.reproduce`, never directly -- except ``_cdc`` (FastCDC over a
given gear table), which :mod:`chunkstore.chunker` wraps.
"""

from __future__ import annotations

__all__: list[str] = []
