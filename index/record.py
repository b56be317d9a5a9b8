"""Records: the named roots of a repository (restic's snapshots).

A record file is the stored form (codec role ``record``) of the CBOR envelope::

    {"kind": "record", "version": 1, "data": {
        "name": tstr, "time": uint (unix ns), "type": tstr, "body": any}}

``type`` says how to read ``body``: ``"stream"`` (a byte stream, see :mod:`index.chunklist`) now,
``"image"`` with the image issue. Every blob reference in ``body`` is a tagged reference (see
:mod:`index.cbor`), so reachability never depends on ``type``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from index import cbor
from index.errors import Malformed

__all__ = ["MAX_RECORD_SIZE", "RECORD_VERSION", "Record"]

RECORD_VERSION = 1
MAX_RECORD_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Record:
    """A named root."""

    name: str
    time_ns: int
    type: str
    body: Any

    def encode(self) -> bytes:
        """Canonical CBOR envelope."""
        return cbor.encode_envelope(
            "record",
            RECORD_VERSION,
            {"name": self.name, "time": self.time_ns, "type": self.type, "body": self.body},
        )

    @classmethod
    def decode(cls, data: bytes) -> Record:
        """Parse and validate."""
        env = cbor.decode_envelope(
            data, kind="record", versions=(RECORD_VERSION, RECORD_VERSION), max_size=MAX_RECORD_SIZE
        )
        d = env.data
        if not isinstance(d, dict) or set(d) != {"name", "time", "type", "body"}:
            raise Malformed("record fields are not the expected set")
        if not isinstance(d["name"], str) or not isinstance(d["type"], str):
            raise Malformed("record name and type must be text")
        if not isinstance(d["time"], int) or isinstance(d["time"], bool) or d["time"] < 0:
            raise Malformed("record time must be an unsigned integer")
        return cls(d["name"], d["time"], d["type"], d["body"])
