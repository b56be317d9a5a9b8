"""chunkstore formats: canonical CBOR envelopes, ids, trees, layer recipes and tag records.

Pure code: bytes in, records out, no I/O, and no import of the ``chunkstore`` engine.
"""

from __future__ import annotations

from index.errors import FormatError, LimitExceeded, Malformed, UnsupportedVersion
from index.ids import Digest

__all__ = ["Digest", "FormatError", "LimitExceeded", "Malformed", "UnsupportedVersion"]
