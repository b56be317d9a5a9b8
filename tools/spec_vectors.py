"""Print SPEC.md's test vectors from the current code (used when the format changes).

Run: .venv/bin/python tools/spec_vectors.py. tests/vectors/test_spec.py checks every vector in
SPEC.md against the code, so SPEC.md and the implementation cannot drift apart.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import nacl.secret

from chunkstore import crypto
from chunkstore.backends.base import FileType, Handle
from chunkstore.blob import BlobType
from chunkstore.codec import BlobCodec
from chunkstore.config import RepoConfig
from chunkstore.pack import PackWriter
from chunkstore.packindex import IndexedPack, IndexFile, encode_index
from index import cbor
from index.chunklist import ChunkRef
from index.ids import Digest, sha256
from index.tree import Node, NodeType, encode_tree

REPO_ID = bytes(range(32))
ENC_KEY = bytes(range(32, 64))
MAC_KEY = bytes(range(64, 96))


def block(name: str, **fields: str) -> str:
    """One fenced vector block."""
    lines = [f"name: {name}"] + [f"{k}: {v}" for k, v in fields.items()]
    return "```vector\n" + "\n".join(lines) + "\n```\n"


def main() -> None:
    """Print every vector."""
    out = []
    out.append(block("digest-text", input_hex=b"".hex(), digest=str(sha256(b""))))
    out.append(block("blob-id-sha256", input_hex=b"hello".hex(), id=str(sha256(b"hello"))))
    mac = hmac.digest(MAC_KEY, b"hello", "sha256").hex()
    out.append(
        block(
            "blob-id-hmac", key_hex=MAC_KEY.hex(), input_hex=b"hello".hex(), id=f"hmac-sha256:{mac}"
        )
    )
    ref = sha256(b"hello")
    env = cbor.encode_envelope("chunk-list", 1, [[ref, 5]])
    out.append(block("cbor-envelope", kind="chunk-list", version="1", cbor_hex=env.hex()))
    plain_cfg = RepoConfig(repo_id=REPO_ID, encrypted=False)
    out.append(
        block("config-plain", repo_id_hex=REPO_ID.hex(), config_hex=plain_cfg.encode().hex())
    )
    codec = BlobCodec(plain_cfg, None)
    w = PackWriter(codec)
    w.add(codec.encode(BlobType.DATA, b"hello"))
    w.add(codec.encode(BlobType.META, cbor.encode([ref])))
    pack_id, data, entries = w.finish()
    out.append(block("pack-plain", pack_hex=data.hex(), pack_id=str(pack_id)))
    idx = encode_index(IndexFile((IndexedPack(pack_id, len(data), tuple(entries)),)))
    out.append(block("pack-index-plaintext", pack_id=str(pack_id), cbor_hex=idx.hex()))
    enc_cfg = RepoConfig(repo_id=REPO_ID, encrypted=True)
    master = crypto.MasterKey(ENC_KEY, MAC_KEY)
    enc_codec = BlobCodec(enc_cfg, master)
    blob_id = enc_codec.blob_id(b"hello")
    aad = b"chunkstore.v1.blob\x00" + REPO_ID + bytes([1]) + blob_id.raw
    nonce = bytes(24)
    sealed = bytes(nacl.secret.Aead(ENC_KEY).encrypt(b"\x00hello", aad, nonce))
    out.append(
        block(
            "blob-sealed",
            repo_id_hex=REPO_ID.hex(),
            enc_key_hex=ENC_KEY.hex(),
            mac_key_hex=MAC_KEY.hex(),
            type="1",
            id=str(blob_id),
            stored_hex=sealed.hex(),
            plaintext_hex=b"hello".hex(),
        )
    )
    key_file = crypto.create_key_file(master, b"correct horse", REPO_ID)
    out.append(
        block(
            "key-file",
            password="correct horse",
            repo_id_hex=REPO_ID.hex(),
            key_file_hex=key_file.hex(),
            enc_key_hex=ENC_KEY.hex(),
            mac_key_hex=MAC_KEY.hex(),
        )
    )
    file_node = Node(
        name=b"hello.txt",
        type=NodeType.FILE,
        mode=0o644,
        uid=0,
        gid=0,
        mtime_ns=1_700_000_000_123_456_789,
        size=5,
        chunks=(ChunkRef(sha256(b"hello"), 5),),
    )
    dir_node = Node(
        name=b"etc",
        type=NodeType.DIRECTORY,
        mode=0o755,
        uid=0,
        gid=0,
        mtime_ns=0,
        tree=sha256(b"subtree"),
    )
    link_node = Node(
        name=b"link",
        type=NodeType.SYMLINK,
        mode=0o777,
        uid=0,
        gid=0,
        mtime_ns=0,
        target=b"hello.txt",
    )
    tree = encode_tree([file_node, dir_node, link_node])
    out.append(block("tree-blob", cbor_hex=tree.hex(), nodes="etc hello.txt link"))
    table = Path(__file__).resolve().parent.parent / "tests" / "data" / "chunker_vector.txt"
    rows = [line.split() for line in table.read_text().splitlines() if not line.startswith("#")]
    digest = hashlib.sha256("".join(f"{o} {n} {h}\n" for o, n, h in rows).encode()).hexdigest()
    out.append(
        block(
            "chunker-fastcdc",
            input=(
                "sha256(b'chunkstore-test-vector' || uint64_be(i)) for i = 0, 1, ... "
                "concatenated, first 1048576 bytes"
            ),
            params="16384 65536 262144",
            chunks=str(len(rows)),
            first=" ".join(rows[0]),
            last=" ".join(rows[-1]),
            table_sha256=digest,
        )
    )
    out.extend(_image_vectors())
    out.extend(_file_vectors())
    out.extend(_image_tag_vectors())
    print("\n".join(out))


def _image_vectors() -> list[str]:
    """Image record layers (reproduced, kept) and a reproduction (SPEC section 9c)."""
    from chunkstore.reproduce.catalog import reproduce_blob
    from index.chunklist import StreamBody
    from index.image import LayerEntry, Reproduce

    gz = "application/vnd.oci.image.layer.v1.tar+gzip"
    params: dict[str, int | str | bool] = {
        "level": 6,
        "mem_level": 8,
        "wbits": 15,
        "strategy": "default",
    }
    reproduce = Reproduce("zlib", params, bytes.fromhex("1f8b08000000000000ff"))
    tar, recipe = str(sha256(b"tar")), sha256(b"recipe")
    rep = LayerEntry(str(sha256(b"blob")), gz, 4, tar, 3, recipe, "gzip", reproduce=reproduce)
    kept = LayerEntry(
        str(sha256(b"blob2")),
        gz,
        4,
        tar,
        3,
        recipe,
        "gzip",
        original=StreamBody(4, (sha256(b"list"),)),
    )
    data = b"hello hello hello\n"
    output = b"".join(reproduce_blob(iter([data]), "gzip", reproduce))
    return [
        block("image-layer-reproduced", cbor_hex=cbor.encode(rep.to_cbor()).hex()),
        block("image-layer-kept", cbor_hex=cbor.encode(kept.to_cbor()).hex()),
        block(
            "reproduce-zlib",
            input_hex=data.hex(),
            family="zlib",
            params=" ".join(f"{k}={v}" for k, v in sorted(params.items())),
            header_hex=reproduce.header.hex(),
            output_hex=output.hex(),
        ),
    ]


RECORD_TIME_NS = 1_700_000_000_123_456_789


def _stream_record() -> bytes:
    """A ``stream`` record's plaintext (section 9)."""
    from index.record import Record

    return Record(
        "hello", RECORD_TIME_NS, "stream", {"lists": [sha256(b"list")], "size": 5}
    ).encode()


def _file_vectors() -> list[str]:
    """Records (plain and encrypted files), recipe parts, locks and a zstd frame."""
    from chunkstore.lock import LockInfo, _encode
    from index.recipe import Content, ContentLists, RecipeBuilder

    out = []
    record = _stream_record()
    plain = BlobCodec(RepoConfig(repo_id=REPO_ID, encrypted=False), None)
    stored = plain.encode_file("record", record)
    out.append(
        block(
            "record-stream",
            record_cbor_hex=record.hex(),
            stored_hex=stored.hex(),
            file=f"records/{hashlib.sha256(stored).hexdigest()}",
        )
    )
    aad = b"chunkstore.v1.file\x00" + REPO_ID + b"record"
    sealed = bytes(nacl.secret.Aead(ENC_KEY).encrypt(b"\x00" + record, aad, bytes(24)))
    out.append(
        block(
            "file-sealed",
            repo_id_hex=REPO_ID.hex(),
            enc_key_hex=ENC_KEY.hex(),
            role="record",
            plaintext="the record-stream vector's record_cbor_hex",
            stored_hex=sealed.hex(),
            file=f"records/{hashlib.sha256(sealed).hexdigest()}",
        )
    )
    parts: list[bytes] = []

    def save(data: bytes) -> Digest:
        parts.append(data)
        return sha256(data)

    builder = RecipeBuilder(save)
    builder.raw(b"header block".ljust(512, b"\x00"))
    builder.content(Content(5, (ChunkRef(sha256(b"hello"), 5),)))
    builder.content(ContentLists(70000, (sha256(b"list"),)))
    builder.raw(bytes(1024))
    root = builder.finish(sha256(b"tar"))
    assert len(parts) == 1
    out.append(
        block(
            "recipe-part",
            ops="raw 512, content 5 inline, content 70000 by lists, raw 1024",
            part_cbor_hex=parts[0].hex(),
            root_cbor_hex=root.encode().hex(),
        )
    )
    lock = LockInfo(
        Handle(FileType.LOCK, "ab" * 32),
        host="host-a",
        pid=4242,
        exclusive=True,
        created_ns=RECORD_TIME_NS,
        refreshed_ns=RECORD_TIME_NS + 300_000_000_000,
        ttl_s=1800,
    )
    out.append(block("lock", lock_cbor_hex=_encode(lock).hex()))
    text = b"hello, zstd " * 40
    blob = plain.encode(BlobType.DATA, text)
    out.append(
        block(
            "blob-zstd",
            plaintext="b'hello, zstd ' repeated 40 times (480 bytes)",
            id=str(blob.id),
            stored_hex=bytes(blob.data).hex(),
        )
    )
    return out


def _image_tag_vectors() -> list[str]:
    """The manifests of an image tag (section 10a), and their split above 8,000 files."""
    from chunkstore.backends.registry import image_tag_manifests

    rec = sha256(b"record file")
    record = (Handle(FileType.RECORD, rec.raw.hex()), rec, 100)
    files = [
        (Handle(FileType.INDEX, sha256(b"index file").raw.hex()), sha256(b"index file"), 200),
        (Handle(FileType.PACK, sha256(b"pack file").raw.hex()), sha256(b"pack file"), 300),
    ]
    (manifest,), index = image_tag_manifests(record, files)
    assert index is None
    out = [
        block(
            "registry-image-tag",
            record="records/sha256(b'record file'), 100 bytes",
            files="index/sha256(b'index file') 200 bytes, data/sha256(b'pack file') 300 bytes",
            manifest_json=manifest.decode(),
        )
    ]
    many = [_split_file(i) for i in range(8001)]
    manifests, index = image_tag_manifests(record, many)
    assert index is not None
    out.append(
        block(
            "registry-image-tag-split",
            record="as in registry-image-tag",
            files="8001 packs: i = 0..8000, name and blob sha256(uint64_be(i)), size 1000 + i",
            parts=" ".join(str(hashlib.sha256(m).hexdigest()) for m in manifests),
            index_json=index.decode(),
        )
    )
    return out


def _split_file(i: int) -> tuple[Handle, Digest, int]:
    d = sha256(i.to_bytes(8, "big"))
    return (Handle(FileType.PACK, d.raw.hex()), d, 1000 + i)


if __name__ == "__main__":
    main()
