"""Image locations in skopeo's transport syntax: ``oci:DIR[:REF]``, ``docker-archive:FILE[:REF]``,
``dir:PATH`` (and ``docker://HOST[:PORT]/NAME[:TAG|@DIGEST]``, parsed by
:mod:`chunkstore.images.registry_image`), shared by backup, restore and analyze.
"""

from __future__ import annotations

from pathlib import Path

from chunkstore.errors import UsageError

__all__ = ["TRANSPORTS", "USAGE", "parse_source"]

#: The image locations understood, in skopeo's transport syntax.
TRANSPORTS = ("oci", "docker-archive", "dir")
USAGE = "use oci:DIR[:REF], docker-archive:FILE[:REF], dir:PATH or docker://HOST[:PORT]/NAME[:TAG]"


def parse_source(text: str) -> tuple[str, Path, str | None]:
    """Split an image location into (transport, path, ref); see :data:`TRANSPORTS`.

    ``oci:DIR[:REF]`` and ``docker-archive:FILE[:REF]`` split at the first ``:`` after the path
    (a docker reference such as ``app:1.0`` keeps its own colon); ``dir:PATH`` takes the whole
    rest as the path (ref is always None).
    """
    transport, sep, rest = text.partition(":")
    if not sep or transport not in TRANSPORTS or not rest:
        raise UsageError(f"unsupported image location {text!r:.100}; {USAGE}")
    if transport == "dir":
        return transport, Path(rest), None
    path, sep, ref = rest.partition(":")
    if not path:
        raise UsageError(f"image location {text!r:.100} names no path; {USAGE}")
    return transport, Path(path), (ref or None) if sep else None
