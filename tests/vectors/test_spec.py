"""Every ``vector`` block in SPEC.md is checked against the code, so the spec cannot drift."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from chunkstore import crypto
from chunkstore.backends.base import FileType, Handle
from chunkstore.backends.registry import file_manifest, file_tag
from chunkstore.blob import BlobType
from chunkstore.chunker import Chunker, ChunkerParams
from chunkstore.codec import BlobCodec
from chunkstore.config import RepoConfig
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
