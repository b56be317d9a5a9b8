"""Every ``vector`` block in SPEC.md is checked against the code, so the spec cannot drift."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import pytest

from chunkstore import crypto
from chunkstore.backends.base import FileType, Handle
from chunkstore.backends.registry import file_manifest, file_tag
from chunkstore.blob import BlobType
from chunkstore.chunker import Chunker, ChunkerParams
from chunkstore.codec import BlobCodec
from chunkstore.config import RepoConfig
from chunkstore.errors import CorruptMetadata
from chunkstore.pack import read_pack_header
from chunkstore.packindex import IndexedPack, IndexFile, decode_index, encode_index
from index import cbor
from index.chunklist import ChunkRef, decode_chunk_list, encode_chunk_list
from index.ids import Digest, sha256
from index.tree import decode_tree, encode_tree

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "SPEC.md").read_text()
BLOCKS = re.findall(r"```vector\n(.*?)```", SPEC, re.S)


def _parse(block: str) -> dict[str, str]:
    fields = {}
    for line in block.splitlines():
        key, _, value = line.partition(": ")
        fields[key.rstrip(":")] = value
    return fields


VECTORS = {v["name"]: v for v in map(_parse, BLOCKS)}
EXPECTED = {
    "digest-text",
    "blob-id-sha256",
    "blob-id-hmac",
    "cbor-envelope",
    "config-plain",
    "pack-plain",
    "pack-index-plaintext",
    "blob-sealed",
    "key-file",
    "chunker-fastcdc",
    "chunker-fastcdc-keyed",
    "tree-blob",
    "registry-file-manifest",
    "image-layer-reproduced",
    "image-layer-kept",
    "reproduce-zlib",
    "record-stream",
    "file-sealed",
    "recipe-part",
    "lock",
    "blob-zstd",
    "registry-image-tag",
    "registry-image-tag-split",
}


def test_spec_lists_every_vector_once() -> None:
    assert len(BLOCKS) == len(VECTORS)
    assert set(VECTORS) == EXPECTED


def test_digest_text() -> None:
    v = VECTORS["digest-text"]
    d = sha256(bytes.fromhex(v["input_hex"]))
    assert str(d) == v["digest"]
    assert Digest.parse(v["digest"]) == d


def test_blob_ids() -> None:
    v = VECTORS["blob-id-sha256"]
    data = bytes.fromhex(v["input_hex"])
    plain = BlobCodec(RepoConfig(repo_id=bytes(32), encrypted=False), None)
    assert str(plain.blob_id(data)) == v["id"]
    v = VECTORS["blob-id-hmac"]
    key = bytes.fromhex(v["key_hex"])
    enc = BlobCodec(RepoConfig(repo_id=bytes(32), encrypted=True), crypto.MasterKey(bytes(32), key))
    assert str(enc.blob_id(bytes.fromhex(v["input_hex"]))) == v["id"]
    assert v["id"].endswith(hmac.digest(key, data, "sha256").hex())


def test_cbor_envelope() -> None:
    v = VECTORS["cbor-envelope"]
    raw = bytes.fromhex(v["cbor_hex"])
    env = cbor.decode_envelope(raw, kind=v["kind"], versions=(1, 1), max_size=1 << 16)
    assert env.version == int(v["version"])
    refs = decode_chunk_list(raw)
    assert refs == [ChunkRef(sha256(b"hello"), 5)]
    assert encode_chunk_list(refs) == raw


def test_config_plain() -> None:
    v = VECTORS["config-plain"]
    raw = bytes.fromhex(v["config_hex"])
    config = RepoConfig.decode(raw)
    assert config.repo_id == bytes.fromhex(v["repo_id_hex"])
    assert not config.encrypted
    assert config.chunker == ChunkerParams(16384, 65536, 262144)
    assert config.encode() == raw


def test_pack_plain_and_index() -> None:
    v = VECTORS["pack-plain"]
    data = bytes.fromhex(v["pack_hex"])
    assert str(sha256(data)) == v["pack_id"]
    codec = BlobCodec(RepoConfig(repo_id=bytes(32), encrypted=False), None)
    entries = read_pack_header(codec, lambda o, n: data[o : o + n], len(data))
    assert [e.type for e in entries] == [BlobType.DATA, BlobType.META]
    first = entries[0]
    blob = data[first.offset : first.offset + first.length]
    assert codec.decode(first.type, first.id, blob, first.raw_length) == b"hello"
    meta = entries[1]
    plain = codec.decode(
        meta.type, meta.id, data[meta.offset : meta.offset + meta.length], meta.raw_length
    )
    assert cbor.decode(plain, max_size=1024) == [sha256(b"hello")]
    vi = VECTORS["pack-index-plaintext"]
    raw_index = bytes.fromhex(vi["cbor_hex"])
    pack_id = Digest.parse(vi["pack_id"])
    index = decode_index(raw_index, "sha256")
    assert index == IndexFile((IndexedPack(pack_id, len(data), tuple(entries)),))
    assert encode_index(index) == raw_index


def test_blob_sealed() -> None:
    v = VECTORS["blob-sealed"]
    config = RepoConfig(repo_id=bytes.fromhex(v["repo_id_hex"]), encrypted=True)
    master = crypto.MasterKey(bytes.fromhex(v["enc_key_hex"]), bytes.fromhex(v["mac_key_hex"]))
    codec = BlobCodec(config, master)
    plaintext = bytes.fromhex(v["plaintext_hex"])
    blob_id = Digest.parse(v["id"])
    assert codec.blob_id(plaintext) == blob_id
    stored = bytes.fromhex(v["stored_hex"])
    assert codec.decode(BlobType(int(v["type"])), blob_id, stored, len(plaintext)) == plaintext


def test_key_file() -> None:
    v = VECTORS["key-file"]
    master = crypto.open_key_file(
        bytes.fromhex(v["key_file_hex"]), v["password"].encode(), bytes.fromhex(v["repo_id_hex"])
    )
    assert master.encryption == bytes.fromhex(v["enc_key_hex"])
    assert master.mac == bytes.fromhex(v["mac_key_hex"])


def _counter_stream(n: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"chunkstore-test-vector" + i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:n])


def test_chunker_golden_table() -> None:
    v = VECTORS["chunker-fastcdc"]
    lo, avg, hi = map(int, v["params"].split())
    data = _counter_stream(1 << 20)
    rows, offset = [], 0
    for chunk in Chunker(ChunkerParams(lo, avg, hi)).chunk_bytes(data):
        rows.append(f"{offset} {len(chunk)} {hashlib.sha256(chunk).hexdigest()}")
        offset += len(chunk)
    assert len(rows) == int(v["chunks"])
    assert rows[0] == v["first"] and rows[-1] == v["last"]
    assert hashlib.sha256("".join(r + "\n" for r in rows).encode()).hexdigest() == v["table_sha256"]
    table = (ROOT / "tests" / "data" / "chunker_vector.txt").read_text().splitlines()
    assert [r for r in table if not r.startswith("#")] == rows


def test_tree_blob() -> None:
    v = VECTORS["tree-blob"]
    raw = bytes.fromhex(v["cbor_hex"])
    tree = decode_tree(raw)
    assert [n.name.decode() for n in tree] == v["nodes"].split()
    hello = tree.lookup(b"hello.txt")
    assert hello is not None and hello.chunks[0].id == sha256(b"hello")
    assert encode_tree(list(tree)) == raw


def test_registry_file_manifest() -> None:
    v = VECTORS["registry-file-manifest"]
    data = bytes.fromhex(v["file_hex"])
    handle = Handle(FileType(v["type"]), hashlib.sha256(data).hexdigest())
    assert file_tag(handle) == v["tag"]
    manifest = file_manifest(handle, sha256(data), len(data))
    assert hashlib.sha256(manifest).hexdigest() == v["manifest_sha256"]


def _params(text: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in text.split():
        key, _, value = item.partition("=")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def test_image_layer_records() -> None:
    from index.image import LayerEntry

    rep = LayerEntry.from_cbor(
        cbor.decode(bytes.fromhex(VECTORS["image-layer-reproduced"]["cbor_hex"]), max_size=1 << 16)
    )
    assert rep.reproduce is not None and rep.original is None and rep.exact
    assert rep.reproduce.family == "zlib" and rep.reproduce.header[:2] == b"\x1f\x8b"
    kept = LayerEntry.from_cbor(
        cbor.decode(bytes.fromhex(VECTORS["image-layer-kept"]["cbor_hex"]), max_size=1 << 16)
    )
    assert kept.reproduce is None and kept.original is not None and kept.original.size == kept.size
    for name, layer in (("image-layer-reproduced", rep), ("image-layer-kept", kept)):
        assert cbor.encode(layer.to_cbor()).hex() == VECTORS[name]["cbor_hex"]


def test_reproduce_vectors() -> None:
    from chunkstore.reproduce.catalog import reproduce_blob
    from index.image import Reproduce

    for name, v in VECTORS.items():
        if not name.startswith("reproduce-"):
            continue
        reproduce = Reproduce(v["family"], _params(v["params"]), bytes.fromhex(v["header_hex"]))  # type: ignore[arg-type]
        out = b"".join(reproduce_blob(iter([bytes.fromhex(v["input_hex"])]), "gzip", reproduce))
        assert out.hex() == v["output_hex"], name


def test_record_stream_file() -> None:
    from index.record import Record

    v = VECTORS["record-stream"]
    raw = bytes.fromhex(v["record_cbor_hex"])
    record = Record.decode(raw)
    assert (record.name, record.time_ns, record.type) == (
        "hello",
        1_700_000_000_123_456_789,
        "stream",
    )
    assert record.body == {"lists": [sha256(b"list")], "size": 5}
    assert record.encode() == raw
    plain = BlobCodec(RepoConfig(repo_id=bytes(32), encrypted=False), None)
    stored = bytes.fromhex(v["stored_hex"])
    assert plain.decode_file("record", stored, 1 << 16, "record") == raw
    assert plain.encode_file("record", raw) == stored
    assert v["file"] == f"records/{hashlib.sha256(stored).hexdigest()}"


def test_file_sealed() -> None:
    v = VECTORS["file-sealed"]
    repo_id = bytes.fromhex(v["repo_id_hex"])
    config = RepoConfig(repo_id=repo_id, encrypted=True)
    codec = BlobCodec(config, crypto.MasterKey(bytes.fromhex(v["enc_key_hex"]), bytes(32)))
    stored = bytes.fromhex(v["stored_hex"])
    record = bytes.fromhex(VECTORS["record-stream"]["record_cbor_hex"])
    assert codec.decode_file(v["role"], stored, 1 << 16, "record") == record
    assert v["file"] == f"records/{hashlib.sha256(stored).hexdigest()}"
    # The role is bound: the same bytes do not open as another kind of file.
    with pytest.raises(CorruptMetadata):
        codec.decode_file("pack-index", stored, 1 << 16, "index")
    again = codec.encode_file(v["role"], record)  # a fresh random nonce, the same plaintext
    assert again != stored and codec.decode_file(v["role"], again, 1 << 16, "r") == record


def test_recipe_part_and_root() -> None:
    from index.chunklist import ChunkRef as Ref
    from index.recipe import Content, ContentLists, Raw, RecipeBuilder, RecipeRoot, decode_part

    v = VECTORS["recipe-part"]
    raw_part = bytes.fromhex(v["part_cbor_hex"])
    ops = [
        Raw(b"header block".ljust(512, b"\x00")),
        Content(5, (Ref(sha256(b"hello"), 5),)),
        ContentLists(70000, (sha256(b"list"),)),
        Raw(bytes(1024)),
    ]
    assert decode_part(raw_part) == ops
    root = RecipeRoot.decode(bytes.fromhex(v["root_cbor_hex"]))
    assert root == RecipeRoot(5 + 70000 + 512 + 1024, sha256(b"tar"), (sha256(raw_part),))
    saved: list[bytes] = []
    builder = RecipeBuilder(lambda data: saved.append(data) or sha256(data))
    for op in ops:
        if isinstance(op, Raw):
            builder.raw(op.data)
        else:
            builder.content(op)
    assert builder.finish(sha256(b"tar")).encode() == bytes.fromhex(v["root_cbor_hex"])
    assert saved == [raw_part]


def test_lock_file() -> None:
    from chunkstore.lock import _decode, _encode

    raw = bytes.fromhex(VECTORS["lock"]["lock_cbor_hex"])
    info = _decode(Handle(FileType.LOCK, "ab" * 32), raw)
    assert (info.host, info.pid, info.exclusive, info.ttl_s) == ("host-a", 4242, True, 1800)
    assert info.refreshed_ns - info.created_ns == 300 * 10**9
    assert _encode(info) == raw


def test_blob_zstd_frame() -> None:
    import zstandard

    v = VECTORS["blob-zstd"]
    stored = bytes.fromhex(v["stored_hex"])
    text = b"hello, zstd " * 40
    assert stored[0] == 1 and stored[1:5] == bytes.fromhex("28b52ffd")
    params = zstandard.get_frame_parameters(stored[1:])
    assert params.content_size == len(text)  # the size is declared, checked before inflating
    codec = BlobCodec(RepoConfig(repo_id=bytes(32), encrypted=False), None)
    assert codec.decode(BlobType.DATA, Digest.parse(v["id"]), stored, len(text)) == text
    assert codec.encode(BlobType.DATA, text).id == Digest.parse(v["id"])


def test_registry_image_tag_manifests() -> None:
    import json

    from chunkstore.backends.registry import image_tag_manifests

    rec = sha256(b"record file")
    record = (Handle(FileType.RECORD, rec.raw.hex()), rec, 100)
    files = [
        (Handle(FileType.INDEX, sha256(b"index file").raw.hex()), sha256(b"index file"), 200),
        (Handle(FileType.PACK, sha256(b"pack file").raw.hex()), sha256(b"pack file"), 300),
    ]
    v = VECTORS["registry-image-tag"]
    assert image_tag_manifests(record, files) == ([v["manifest_json"].encode()], None)
    doc = json.loads(v["manifest_json"])
    assert doc["config"]["digest"] == str(rec)
    assert [d["annotations"]["dev.chunkstore.file"] for d in doc["layers"]] == [
        f"index/{sha256(b'index file').raw.hex()}",
        f"data/{sha256(b'pack file').raw.hex()}",
    ]
    split = VECTORS["registry-image-tag-split"]
    many = []
    for i in range(8001):
        d = sha256(i.to_bytes(8, "big"))
        many.append((Handle(FileType.PACK, d.raw.hex()), d, 1000 + i))
    manifests, index = image_tag_manifests(record, many)
    assert [hashlib.sha256(m).hexdigest() for m in manifests] == split["parts"].split()
    assert index == split["index_json"].encode()
    assert [len(json.loads(m)["layers"]) for m in manifests] == [8000, 1]
    assert [d["digest"] for d in json.loads(index)["manifests"]] == [
        f"sha256:{h}" for h in split["parts"].split()
    ]


def test_decoder_caps_table_matches_the_code() -> None:
    import importlib

    section = SPEC[SPEC.index("## 11a. Decoder caps") : SPEC.index("## 12. Versioning")]
    rows = re.findall(r"^\| ([^|]+) \| ([0-9,]+)(?: bytes)? \| `([\w.]+)` \|$", section, re.M)
    assert len(rows) >= 25
    for what, cap, where in rows:
        module, _, name = where.rpartition(".")
        value = getattr(importlib.import_module(module), name)
        assert value == int(cap.replace(",", "")), (what, where, value)
    listed = {r[2] for r in rows}
    table_lines = [line for line in section.splitlines() if line.startswith("| ") and "`" in line]
    assert len(table_lines) == len(rows) == len(listed)
