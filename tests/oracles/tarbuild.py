"""Hand-built tar archives of every form issue 17 names, as hypothesis strategies, and mutations.

An archive is built from items (members with optional extended headers before them, PAX global
headers) and an ending. The *classes* each stress one form and keep the others plain:

* ``end``: the archive ends with two zero blocks, one, none, after trailing zeros or junk, or padded
  to a 10 KiB record;
* ``global``: PAX global headers between members (path, ids, times, names, comments, xattrs);
* ``repeated``: several PAX ``x`` headers, several GNU long names or links, before one member;
* ``dumpdir``: GNU incremental directories (type ``D``) with their dumpdir listings;
* ``numeric``: numeric fields empty, all NUL, all spaces, with leading NULs or spaces, base-256;
* ``mixed``: all of them at once.

:func:`mutations` damages a built archive (a header byte changed with its checksum fixed, another
type flag, a numeric field blanked, a block dropped or repeated, a cut, bytes appended).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

BLOCK = 512
CLASSES = ("end", "global", "repeated", "dumpdir", "numeric", "mixed")
_NUMERIC = {"mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "mtime": (136, 12)}
_DEV = {"devmajor": (329, 8), "devminor": (337, 8)}
MAGIC = {"ustar": b"ustar\x0000", "gnu": b"ustar  \x00", "v7": bytes(8)}


def fix_checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)


def header(
    name: bytes,
    typ: bytes = b"0",
    size: int = 0,
    linkname: bytes = b"",
    *,
    fmt: str = "ustar",
    fields: dict[str, bytes] | None = None,
    uname: bytes = b"",
    gname: bytes = b"",
) -> bytes:
    """A header block; ``fields`` replaces numeric fields by raw bytes (mode, uid, ..., size)."""
    b = bytearray(BLOCK)
    b[0 : len(name[:100])] = name[:100]
    b[100:108] = b"0000644\x00"
    b[108:116] = b"0001750\x00"
    b[116:124] = b"0001750\x00"
    b[124:136] = b"%011o\x00" % size
    b[136:148] = b"14537000000\x00"
    b[156:157] = typ
    b[157 : 157 + len(linkname[:100])] = linkname[:100]
    b[257:265] = MAGIC[fmt]
    if fmt != "v7":
        b[265 : 265 + len(uname[:31])] = uname[:31]
        b[297 : 297 + len(gname[:31])] = gname[:31]
        b[329:345] = b"0000000\x000000000\x00"
    for key, raw in (fields or {}).items():
        off, width = {**_NUMERIC, **_DEV, "size": (124, 12)}[key]
        b[off : off + width] = raw[:width].ljust(width, b"\x00")
    fix_checksum(b)
    return bytes(b)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def extended(records: list[tuple[bytes, bytes]], typ: bytes = b"x") -> bytes:
    data = b"".join(record(k, v) for k, v in records)
    name = b"PaxHeaders/x" if typ == b"x" else b"GlobalHead.0.1"
    return header(name, typ, len(data)) + pad(data)


def long_name(typ: bytes, value: bytes) -> bytes:
    return header(b"././@LongLink", typ, len(value) + 1, fmt="gnu") + pad(value + b"\x00")


@dataclass
class Built:
    """An archive and the offsets of its header blocks (for mutations)."""

    data: bytes
    headers: list[int]


_component = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12)
_short_names = st.lists(_component, min_size=1, max_size=3).map(lambda p: "/".join(p).encode())
_long_names = st.integers(101, 260).map(lambda n: b"long/" + b"n" * (n - 5))
_values = st.binary(max_size=12).map(lambda b: b.replace(b"\x00", b"").replace(b"\n", b"n"))
_pax_keys = st.sampled_from(
    [b"path", b"linkpath", b"uname", b"gname", b"uid", b"gid", b"mtime", b"comment",
     b"SCHILY.xattr.user.a", b"SCHILY.xattr.user.b", b"VENDOR.key"]
)  # fmt: skip


@st.composite
def _pax_records(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    """Records of an ``x`` or ``g`` header (never a size: a global size is refused on purpose)."""
    out = []
    for key in draw(st.lists(_pax_keys, max_size=4)):
        if key in (b"uid", b"gid"):
            value = str(draw(st.integers(0, 2**40))).encode()
        elif key == b"mtime":
            value = draw(st.sampled_from([b"1700000000", b"1700000000.5", b"-1.25", b""]))
        elif key in (b"path", b"linkpath"):
            value = draw(st.one_of(_short_names, _long_names, st.just(b"")))
        else:
            value = draw(_values)
        out.append((key, value))
    return out


@st.composite
def _numeric_fields(draw: st.DrawFn) -> dict[str, bytes]:
    forms = st.sampled_from(
        [bytes(12), b" " * 12, b"\x00\x00\x000017\x00", b" 17 ", b"17", b"0000000017 \x00",
         b"\x80" + (5).to_bytes(7, "big")]
    )  # fmt: skip
    keys = draw(st.lists(st.sampled_from(list(_NUMERIC) + list(_DEV)), max_size=3, unique=True))
    out = {key: draw(forms) for key in keys}
    if draw(st.booleans()):
        out["size"] = bytes(12)  # an empty size field, on a member without data
    return out


@st.composite
def _member(draw: st.DrawFn, cls: str, names_seen: list[bytes], gnu_dirs: list[bytes]) -> bytes:
    kinds = ["file", "file", "dir", "symlink", "hardlink", "fifo", "regA", "regA-dir"]
    if cls in ("dumpdir", "mixed"):
        kinds += ["dumpdir", "dumpdir"]
    if cls == "mixed":
        kinds += ["contiguous", "volume"]
    kind = draw(st.sampled_from(kinds))
    if kind == "hardlink" and not names_seen:
        kind = "file"
    fmt = draw(
        st.sampled_from(["ustar", "gnu", "v7"] if cls in ("numeric", "mixed") else ["ustar"])
    )
    name = draw(st.one_of(_short_names, _long_names) if cls != "numeric" else _short_names)
    prefix = b""
    if cls in ("repeated", "mixed"):
        for _ in range(draw(st.integers(0, 3))):
            which = draw(st.sampled_from(["x", "L", "K"]))
            if which == "x":
                prefix += extended(draw(_pax_records()))
            else:
                value = draw(st.one_of(_short_names, _long_names, st.just(b"")))
                prefix += long_name(which.encode(), value)
    if len(name) > 100:  # the member needs a long name of its own, last
        prefix += long_name(b"L", name) if draw(st.booleans()) else extended([(b"path", name)])
    fields = draw(_numeric_fields()) if cls in ("numeric", "mixed") and draw(st.booleans()) else {}
    owner = {"uname": draw(_values), "gname": draw(_values)} if fmt != "v7" else {}
    body = b""
    if kind in ("file", "contiguous", "regA"):
        data = draw(st.binary(max_size=1200))
        typ = {"file": b"0", "contiguous": b"7", "regA": b"\x00"}[kind]
        fields.pop("size", None)
        head = header(name.rstrip(b"/"), typ, len(data), fmt=fmt, fields=fields, **owner)
        body = pad(data)
        names_seen.append(name)
    elif kind == "dumpdir":
        entries = draw(st.lists(st.tuples(st.sampled_from(b"YND"), _component), max_size=4))
        listing = b"".join(bytes([t]) + c.encode() + b"\x00" for t, c in entries) + b"\x00"
        fields.pop("size", None)
        head = header(name + b"/", b"D", len(listing), fmt="gnu", fields=fields, **owner)
        body = pad(listing)
        gnu_dirs.append(name)
    elif kind == "volume":
        label = draw(st.binary(max_size=40))
        fields.pop("size", None)
        head = header(name, b"V", len(label), fmt="gnu", fields=fields)
        body = pad(label)
    else:
        typ = {"dir": b"5", "symlink": b"2", "hardlink": b"1", "fifo": b"6", "regA-dir": b"\x00"}[
            kind
        ]
        link = b""
        if kind == "symlink":
            link = draw(_short_names)
        elif kind == "hardlink":
            link = draw(st.sampled_from(names_seen))
        target = name + b"/" if kind in ("dir", "regA-dir") else name
        if len(link) > 100:
            prefix += long_name(b"K", link)
        head = header(target[:100], typ, 0, link, fmt=fmt, fields=fields, **owner)
    return prefix + head + body


@st.composite
def archives(draw: st.DrawFn, cls: str) -> Built:
    """An archive of class ``cls`` (see the module docstring)."""
    parts: list[bytes] = []
    names_seen: list[bytes] = []
    gnu_dirs: list[bytes] = []
    for _ in range(draw(st.integers(0 if cls == "end" else 1, 5))):
        if cls in ("global", "mixed") and draw(st.integers(0, 2)) == 0:
            parts.append(extended(draw(_pax_records()), b"g"))
        parts.append(draw(_member(cls, names_seen, gnu_dirs)))
    if cls in ("global", "mixed") and draw(st.booleans()):
        parts.append(extended(draw(_pax_records()), b"g"))
    data = b"".join(parts)
    ending = "eoa"
    if cls in ("end", "mixed"):
        ending = draw(st.sampled_from(["eoa", "none", "one", "zeros", "junk", "record"]))
    data += {
        "eoa": bytes(2 * BLOCK),
        "none": b"",
        "one": bytes(BLOCK),
        "zeros": bytes(2 * BLOCK) + bytes(draw(st.integers(1, 3000))),
        "junk": bytes(2 * BLOCK) + draw(st.binary(min_size=1, max_size=700)),
        "record": bytes(2 * BLOCK),
    }[ending]
    if ending == "record":
        data += bytes(-len(data) % 10240)
    if not data:
        data = bytes(2 * BLOCK)
    return Built(data, _header_offsets(data))


def _header_offsets(data: bytes) -> list[int]:
    """Offsets of blocks that carry a valid-looking header (for targeted mutations)."""
    out = []
    for off in range(0, len(data) - BLOCK + 1, BLOCK):
        block = bytearray(data[off : off + BLOCK])
        if not any(block):
            continue
        stored = bytes(block[148:156])
        fix_checksum(block)
        if bytes(block[148:156]) == stored:
            out.append(off)
    return out


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    """An archive of any class, damaged once to three times."""
    built = draw(archives(draw(st.sampled_from(CLASSES))))
    data = bytearray(built.data)
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["byte", "type", "numeric", "drop", "repeat", "cut", "append"]))
        heads = [h for h in built.headers if h + BLOCK <= len(data)]
        if what in ("byte", "type", "numeric") and heads:
            off = draw(st.sampled_from(heads))
            block = bytearray(data[off : off + BLOCK])
            if what == "byte":
                block[draw(st.integers(0, 499))] = draw(st.integers(0, 255))
            elif what == "type":
                block[156] = draw(st.sampled_from(b"0125673DVMNSXgxLKA\x00"))
            else:
                start, width = draw(st.sampled_from([*_NUMERIC.values(), (124, 12)]))
                blank = draw(st.sampled_from([b"\x00", b" ", b"7"]))
                block[start : start + width] = blank * width
            fix_checksum(block)
            data[off : off + BLOCK] = block
        elif what in ("drop", "repeat") and len(data) >= BLOCK:
            off = draw(st.integers(0, len(data) // BLOCK - 1)) * BLOCK
            piece = data[off : off + BLOCK]
            data[off : off + BLOCK] = piece * 2 if what == "repeat" else b""
        elif what == "cut" and data:
            at = draw(st.integers(0, len(data) - 1))
            at = at - at % BLOCK if draw(st.booleans()) else at
            del data[at:]
        else:
            data += draw(st.binary(min_size=1, max_size=600))
    return bytes(data)
