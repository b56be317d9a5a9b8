"""Canonical CBOR and the versioned envelope every chunkstore metadata object is wrapped in.

Encoding uses cbor2's canonical mode (RFC 7049 §3.9: shortest integer forms, definite lengths,
map keys sorted length-first then bytewise), so equal content always gives equal bytes and equal ids.
Decoding is strict: the input size is capped by the caller, nesting depth is capped, indefinite
lengths, duplicate keys, floats and every tag except :data:`REF_TAG` are rejected, and the bytes
must re-encode to themselves (a non-canonical encoding is malformed). Any failure raises
:class:`~index.errors.FormatError`, never a cbor2 or Python exception.

Blob references inside metadata are encoded as ``tag(REF_TAG, bstr .size 33)``: one algorithm byte
(1 = sha256, 2 = hmac-sha256) then the 32 digest bytes. Because the tag marks every reference, the
engine can walk any metadata object for reachability (check, prune, copy) without knowing its kind.

The envelope is a map ``{"data": any, "kind": tstr, "version": uint}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cbor2

from index.errors import FormatError, LimitExceeded, Malformed, UnsupportedVersion
from index.ids import Digest

__all__ = [
    "MAX_DEPTH",
    "REF_TAG",
    "Envelope",
    "decode",
    "decode_envelope",
    "encode",
    "encode_envelope",
    "iter_refs",
]

#: CBOR tag number marking a blob reference (first-come-first-served range, unregistered).
REF_TAG = 40434
#: Deepest container nesting accepted when decoding.
MAX_DEPTH = 64
_ALG_CODES = {"sha256": 1, "hmac-sha256": 2}
_CODE_ALGS = {v: k for k, v in _ALG_CODES.items()}


def _default(encoder: Any, value: Any) -> None:
    if isinstance(value, Digest):
        encoder.encode(cbor2.CBORTag(REF_TAG, bytes([_ALG_CODES[value.algorithm]]) + value.raw))
        return
    raise TypeError(f"cannot encode {type(value).__name__} as chunkstore CBOR")


def encode(value: Any) -> bytes:
    """Encode ``value`` (ints, bytes, str, bool, None, lists, dicts, Digest refs) canonically."""
    _check_encodable(value, 0)
    return bytes(cbor2.dumps(value, canonical=True, default=_default))


_SCALARS = frozenset({bytes, str, bool, type(None)})
_INT_LOW, _INT_HIGH = -(1 << 64), 1 << 64


def _check_encodable(value: Any, depth: int) -> None:
    # Refuse, before cbor2 sees it, anything decode() would refuse: other Python types (cbor2
    # would encode datetimes, sets, decimals as tags), integers needing bignum tags, map keys that
    # are not int/text/bytes, and nesting that decodes deeper than MAX_DEPTH (a reference's tag
    # counts as one more level). Exact built-in types take a fast path (records hold hundreds of
    # thousands of values); anything else, subclasses included, the general one.
    if depth > MAX_DEPTH:
        raise LimitExceeded(f"nesting deeper than {MAX_DEPTH}")
    t = type(value)
    if t is list or t is tuple:
        values = value
    elif t is dict:
        for k in value:
            tk = type(k)
            if not ((tk is str or tk is bytes) and depth < MAX_DEPTH):
                if isinstance(k, bool) or not isinstance(k, int | str | bytes):
                    raise TypeError("map keys must be integers, text or bytes")
                _check_encodable(k, depth + 1)
        values = value.values()
    else:
        _check_other(value, depth)
        return
    for v in values:
        tv = type(v)
        if tv in _SCALARS and depth < MAX_DEPTH:
            continue
        if tv is int and _INT_LOW <= v < _INT_HIGH and depth < MAX_DEPTH:
            continue
        if tv is Digest and depth + 2 <= MAX_DEPTH:
            continue
        _check_encodable(v, depth + 1)


def _check_other(value: Any, depth: int) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, bytes | str):
        return
    if isinstance(value, int):
        if not _INT_LOW <= value < _INT_HIGH:
            raise TypeError("integers outside the 64-bit CBOR range are not allowed")
        return
    if isinstance(value, Digest):
        if depth + 1 > MAX_DEPTH:
            raise LimitExceeded(f"nesting deeper than {MAX_DEPTH}")
        return
    if isinstance(value, list | tuple | dict):
        _check_encodable(list(value) if not isinstance(value, dict) else dict(value), depth)
        return
    raise TypeError(f"cannot encode {type(value).__name__} as chunkstore CBOR")


def _tag_hook(*args: Any) -> Any:
    # cbor2 has passed (decoder, tag) and (tag, immutable) in different releases: find the tag.
    tag = next((a for a in args if isinstance(a, cbor2.CBORTag)), None)
    if tag is None or tag.tag != REF_TAG:
        raise Malformed("unexpected CBOR tag")
    v = tag.value
    if not isinstance(v, bytes) or len(v) != 33 or v[0] not in _CODE_ALGS:
        raise Malformed("malformed blob reference")
    return Digest(_CODE_ALGS[v[0]], v[1:])


def _reject_tag(*args: Any) -> Any:
    raise Malformed("CBOR semantic tags other than blob references are not allowed")


# Tags cbor2 would otherwise interpret itself (dates, bignums, shared values that can form cycles,
# string references, sets, ...). All are refused.
_REJECTED_TAGS = {
    n: _reject_tag
    for n in (*range(6), *range(21, 38), 52, 54, 100, 256, 258, 260, 261, 1004, 55799)
}

_ALLOWED_SCALARS = (int, bytes, str, bool, type(None), Digest)


def _validate(value: Any) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, int | str | bytes):
                    raise Malformed("map keys must be integers, text or bytes")
                stack.append(item)
        elif not isinstance(v, _ALLOWED_SCALARS):
            raise Malformed(f"unexpected CBOR value of type {type(v).__name__}")


def decode(data: bytes, *, max_size: int) -> Any:
    """Decode canonical chunkstore CBOR of at most ``max_size`` bytes."""
    if len(data) > max_size:
        raise LimitExceeded(f"object of {len(data)} bytes exceeds the {max_size}-byte cap")
    try:
        value = cbor2.loads(
            data,
            tag_hook=_tag_hook,
            semantic_decoders=_REJECTED_TAGS,
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
    except FormatError:
        raise
    except RecursionError as exc:
        raise LimitExceeded("CBOR nesting too deep") from exc
    except Exception as exc:  # cbor2 raises several unrelated types on garbage
        raise Malformed(f"invalid CBOR: {exc}") from exc
    _validate(value)
    try:
        again = encode(value)
    except (TypeError, FormatError) as exc:
        raise Malformed(f"CBOR value cannot be re-encoded: {exc}") from exc
    if again != bytes(data):
        raise Malformed("CBOR is not in canonical form (or has trailing bytes)")
    return value


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded envelope: the object kind, its format version and its body."""

    kind: str
    version: int
    data: Any


def encode_envelope(kind: str, version: int, data: Any) -> bytes:
    """Wrap ``data`` in the versioned envelope and encode it canonically."""
    return encode({"kind": kind, "version": version, "data": data})


def decode_envelope(
    data: bytes, *, kind: str, versions: tuple[int, int], max_size: int
) -> Envelope:
    """Decode an envelope, requiring ``kind`` and a version within ``versions`` (inclusive)."""
    value = decode(data, max_size=max_size)
    if not isinstance(value, dict) or set(value) != {"kind", "version", "data"}:
        raise Malformed(f"not a chunkstore {kind} envelope")
    found_kind, version = value["kind"], value["version"]
    if found_kind != kind:
        raise Malformed(f"expected a {kind} object, found {found_kind!r:.40}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise Malformed(f"{kind} version is not an unsigned integer")
    if not versions[0] <= version <= versions[1]:
        raise UnsupportedVersion(kind, version, versions)
    return Envelope(kind, version, value["data"])


def iter_refs(value: Any) -> Iterator[Digest]:
    """Yield every blob reference inside a decoded value (iteratively, no recursion)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, Digest):
            yield v
        elif isinstance(v, list):
            stack.extend(reversed(v))
        elif isinstance(v, dict):
            stack.extend(reversed(list(v.values())))
