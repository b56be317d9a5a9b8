"""JSON from untrusted sources (manifests, configs, registry answers): failures are ValueErrors.

``json.loads`` reports malformed text and bad UTF-8 as ``ValueError`` subclasses, but deeply
nested input (``[`` repeated 10^5 times fits easily under the 4 MiB manifest cap) makes it raise
``RecursionError``, which no caller expects and which would end the program with a traceback.
:func:`loads` turns that into a ``ValueError`` too, so one ``except ValueError`` at each call
site covers every way a document can be bad.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads"]


def loads(data: bytes | str) -> Any:
    """``json.loads(data)``, raising only ``ValueError`` for bad input (including deep nesting)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
