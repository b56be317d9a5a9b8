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
from chunkstore.blob import BlobType
from chunkstore.codec import BlobCodec
from chunkstore.config import RepoConfig
from chunkstore.pack import PackWriter
from chunkstore.packindex import IndexedPack, IndexFile, encode_index
from index import cbor
from index.chunklist import ChunkRef
from index.ids import sha256
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


if __name__ == "__main__":
    main()
