"""How record names become registry names and tags (SPEC.md section 9d).

A record named ``NAME:TAG`` (the last ``:`` after the last ``/``) is served as repository
``NAME``, tag ``TAG``; a record named ``NAME`` with no such ``:`` as ``NAME:latest``. Both parts
must be valid in the OCI distribution spec (lower-case path components; tags of at most 128
characters from ``[A-Za-z0-9_.-]``), else the record is not served (the server says so once).
A name also given explicitly wins: the record ``web:latest`` over the record ``web``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ServedName", "is_valid_name", "is_valid_tag", "served_name"]

_NAME = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_MAX_NAME = 255


@dataclass(frozen=True, slots=True)
class ServedName:
    """A record's place in the served registry: repository ``name``, ``tag``, and whether the
    tag was written in the record name (``explicit``) or is the default ``latest``."""

    name: str
    tag: str
    explicit: bool


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a repository name of the distribution spec."""
    return len(name) <= _MAX_NAME and _NAME.fullmatch(name) is not None


def is_valid_tag(tag: str) -> bool:
    """Whether ``tag`` is a tag of the distribution spec."""
    return _TAG.fullmatch(tag) is not None


def served_name(record_name: str) -> ServedName | None:
    """Where the record ``record_name`` is served, or None when it makes no valid name:tag."""
    head, slash, last = record_name.rpartition("/")
    if ":" in last:
        base, _, tag = last.rpartition(":")
        served = ServedName(head + slash + base, tag, True)
    else:
        served = ServedName(record_name, "latest", False)
    if is_valid_name(served.name) and is_valid_tag(served.tag):
        return served
    return None
