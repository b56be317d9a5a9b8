"""The chunker's gear table: keyed in encrypted repositories, standard in plain ones (SPEC §7-8)."""

from __future__ import annotations

import hashlib
import io
import itertools
import random
import re
from pathlib import Path

import pytest

from chunkstore import crypto
from chunkstore.backends.base import Backend, Handle
from chunkstore.backends.memory import MemoryBackend
from chunkstore.blob import BlobType
from chunkstore.chunker import Chunker, ChunkerParams, GearTable
from chunkstore.codec import BlobCodec
from chunkstore.config import KEYED_GEAR_VERSION, RepoConfig
from chunkstore.errors import UsageError
from chunkstore.pack import PackWriter
from chunkstore.repository import Repository
from chunkstore.streams import iter_stream, store_stream
from index import cbor
from index.errors import Malformed, UnsupportedVersion
from index.ids import Digest

PARAMS = ChunkerParams(1024, 4096, 16384)
PACK_SIZE = 64 * 1024
PASSWORD = b"correct horse battery staple"
DATA = random.Random(7).randbytes(1 << 20)


def _lengths(gear: GearTable | None) -> list[int]:
    return [len(c) for c in Chunker(PARAMS, gear=gear).chunk_bytes(DATA)]


def _init(backend: Backend, cache: Path, **kw: object) -> Repository:
    return Repository.init(
        backend,
        cache_dir=cache,
        chunker=PARAMS,
        pack_size=PACK_SIZE,
        **kw,  # type: ignore[arg-type]
    )


def test_keyed_tables_cut_differently_from_each_other_and_the_standard_table() -> None:
    standard = _lengths(None)
    one = _lengths(GearTable.keyed(bytes(range(32))))
    two = _lengths(GearTable.keyed(bytes(range(1, 33))))
    assert _lengths(GearTable.keyed(bytes(range(32)))) == one  # a function of the key alone
    assert len({tuple(standard), tuple(one), tuple(two)}) == 3
    # Not merely shifted: almost no cut position is shared.
    cuts = [set(itertools.accumulate(x)) for x in (standard, one, two)]
    assert len(cuts[0] & cuts[1]) < len(cuts[0]) // 4
    assert len(cuts[1] & cuts[2]) < len(cuts[1]) // 4
    for lengths in (one, two):
        assert sum(lengths) == len(DATA)
        assert all(PARAMS.min_size <= n <= PARAMS.max_size for n in lengths[:-1])
        assert 2048 < len(DATA) / len(lengths) < 8192  # the average still follows avg


def test_the_keyed_table_never_shows_in_a_repr() -> None:
    gear = GearTable.keyed(bytes(32))
    assert gear.table.hex()[:16] not in repr(gear)
    assert repr(gear) == "GearTable(kind='keyed')"
    with pytest.raises(UsageError):
        GearTable.keyed(bytes(31))
    with pytest.raises(UsageError):
        GearTable("other", bytes(1024))


def test_new_encrypted_repositories_use_a_keyed_table_and_still_deduplicate(
    tmp_path: Path,
) -> None:
    backend = MemoryBackend()
    with _init(backend, tmp_path / "c", password=PASSWORD) as repo:
        assert repo.config.gear == "keyed" and repo.config.version == KEYED_GEAR_VERSION
        assert repo.gear_table.kind == "keyed"
        assert repo._master is not None
        assert repo.gear_table == GearTable.keyed(repo._master.mac)
        assert not any("public FastCDC table" in n for n in repo.notices)
        body, _stats = store_stream(repo, io.BytesIO(DATA))
        repo.flush()
        blobs = len(repo.index)
        again, _stats2 = store_stream(repo, io.BytesIO(DATA[:5000] + DATA))
        repo.flush()
        # Only the chunks around the edit are new: dedup works under the keyed table.
        assert len(repo.index) - blobs <= 4
        assert b"".join(iter_stream(repo, again)) == DATA[:5000] + DATA
    config = RepoConfig.decode(backend.load(Handle.config()))
    assert config.gear == "keyed" and config.version == 2
    with Repository.open(backend, cache_dir=tmp_path / "c2", password=PASSWORD) as repo:
        assert repo.gear_table.kind == "keyed"
        assert b"".join(iter_stream(repo, body)) == DATA


def test_plain_repositories_keep_the_standard_table(tmp_path: Path) -> None:
    with _init(MemoryBackend(), tmp_path / "c") as repo:
        assert repo.config.gear == "standard" and repo.config.version == 1
        assert repo.gear_table == GearTable.standard()


def test_keys_from_shares_the_table(tmp_path: Path) -> None:
    with _init(MemoryBackend(), tmp_path / "a", password=PASSWORD) as src:
        with _init(MemoryBackend(), tmp_path / "b", password=b"other", keys_from=src) as dst:
            assert dst.config.gear == "keyed"
            assert dst.gear_table == src.gear_table
            _a, _ = store_stream(src, io.BytesIO(DATA))
            _b, _ = store_stream(dst, io.BytesIO(DATA))
            src.flush()
            dst.flush()
            assert {loc.entry.id for loc in src.index} == {loc.entry.id for loc in dst.index}


def _downgrade_to_v1(backend: Backend, repo: Repository) -> None:
    """Rewrite a repository's config as one written before format 2 (no keyed table)."""
    assert repo._master is not None
    old = RepoConfig(
        repo_id=repo.config.repo_id, encrypted=True, chunker=PARAMS, pack_size=PACK_SIZE
    )
    backend.save(Handle.config(), old.encode(repo._master.mac), overwrite=True)


def test_encrypted_version_1_repositories_keep_the_standard_table_and_say_so(
    tmp_path: Path,
) -> None:
    backend = MemoryBackend()
    with _init(backend, tmp_path / "c", password=PASSWORD) as repo:
        _downgrade_to_v1(backend, repo)
    with Repository.open(backend, cache_dir=tmp_path / "c", password=PASSWORD) as repo:
        assert repo.config.version == 1 and repo.config.gear == "standard"
        assert repo.gear_table == GearTable.standard()
        assert any("public FastCDC table" in n for n in repo.notices)
        body, _ = store_stream(repo, io.BytesIO(DATA))
        repo.flush()
        assert b"".join(iter_stream(repo, body)) == DATA
        # A repository made from its keys keeps its table, so both still cut alike.
        with _init(MemoryBackend(), tmp_path / "d", password=b"x", keys_from=repo) as twin:
            assert twin.config.gear == "standard" and twin.config.version == 1


def test_config_rules_for_the_keyed_table() -> None:
    rid = bytes(32)
    with pytest.raises(Malformed, match="encrypted"):
        RepoConfig(repo_id=rid, encrypted=False, version=2, gear="keyed")
    with pytest.raises(Malformed, match="version 2"):
        RepoConfig(repo_id=rid, encrypted=True, version=1, gear="keyed")
    keyed = RepoConfig(repo_id=rid, encrypted=True, version=2, gear="keyed")
    raw = keyed.encode(bytes(32))
    assert RepoConfig.decode(raw) == keyed
    # A keyed chunker written under version 1 is refused, not read with the wrong table.
    env = cbor.decode_envelope(raw, kind="config", versions=(2, 2), max_size=1 << 16)
    with pytest.raises(Malformed, match="needs config version 2"):
        RepoConfig.decode(cbor.encode_envelope("config", 1, env.data))
    with pytest.raises(UnsupportedVersion, match="version 3"):
        RepoConfig.decode(cbor.encode_envelope("config", 3, env.data))


def _pack_order(codec: BlobCodec, n: int) -> tuple[list[Digest], list[Digest]]:
    writer = PackWriter(codec)
    added = []
    for i in range(n):
        data = b"blob %d" % i
        blob = codec.encode(BlobType.DATA, data, codec.blob_id(data))
        writer.add(blob)
        added.append(blob.id)
    _, pack, entries = writer.finish()
    for e in entries:  # every entry still describes its bytes
        stored = pack[e.offset : e.offset + e.length]
        assert codec.decode(e.type, e.id, stored, e.raw_length) == b"blob %d" % added.index(e.id)
    return added, [e.id for e in entries]


def test_encrypted_packs_do_not_keep_the_order_of_arrival() -> None:
    master = crypto.MasterKey(bytes(range(32)), bytes(range(32, 64)))
    enc = BlobCodec(RepoConfig(repo_id=bytes(32), encrypted=True), master)
    orders = [_pack_order(enc, 40) for _ in range(3)]
    for added, written in orders:
        assert sorted(written) == sorted(added) and written != added
    assert len({tuple(w) for _, w in orders}) == 3  # a fresh permutation per pack
    added, written = _pack_order(
        BlobCodec(RepoConfig(repo_id=bytes(32), encrypted=False), None), 40
    )
    assert written == added  # plain packs stay deterministic


def test_spec_vector_of_the_keyed_table() -> None:
    spec = (Path(__file__).resolve().parents[2] / "SPEC.md").read_text()
    block = re.search(r"```vector\nname: chunker-fastcdc-keyed\n(.*?)```", spec, re.S)
    assert block is not None
    v = dict(line.split(": ", 1) for line in block.group(1).splitlines())
    gear = GearTable.keyed(bytes.fromhex(v["mac_key_hex"]))
    assert hashlib.sha256(gear.table).hexdigest() == v["gear_table_sha256"]
    assert list(gear.values()[:4]) == [int(x) for x in v["gear_0_3"].split()]
    assert gear.values()[255] == int(v["gear_255"])
    # The same input as the chunker-fastcdc vector: sha256(label || uint64_be(i)) concatenated.
    data = b"".join(
        hashlib.sha256(b"chunkstore-test-vector" + i.to_bytes(8, "big")).digest()
        for i in range((1 << 20) // 32)
    )
    lengths = [
        len(c)
        for c in Chunker(ChunkerParams(*map(int, v["params"].split())), gear=gear).chunk_bytes(data)
    ]
    assert len(lengths) == int(v["chunks"])
    assert lengths == [int(x) for x in v["lengths"].split()]
