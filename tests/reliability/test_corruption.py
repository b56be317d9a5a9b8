"""Corruption: damaged packs, index files and records are detected and named, never served."""

from __future__ import annotations

import hashlib
import io
import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.backends.base import Backend, FileType, Handle
from chunkstore.backends.local import LocalBackend
from chunkstore.backends.memory import MemoryBackend
from chunkstore.blob import BlobType, Location
from chunkstore.chunker import ChunkerParams
from chunkstore.errors import (
    CorruptBlob,
    CorruptMetadata,
    IntegrityError,
    ShortRead,
)
from chunkstore.repository import Repository
from chunkstore.streams import read_chunk_lists
from chunkstore.testing.faults import FaultyBackend
from index import cbor
from index.chunklist import StreamBody
from index.ids import Digest

PARAMS = ChunkerParams(1024, 4096, 16384)
PACK_SIZE = 64 * 1024
PASSWORD = b"corruption test password"
A = random.Random(1).randbytes(200_000)
B = random.Random(2).randbytes(200_000)


def init(backend: Backend, cache: Path, password: bytes | None = None) -> Repository:
    return Repository.init(
        backend, cache_dir=cache, password=password, chunker=PARAMS, pack_size=PACK_SIZE
    )


def restore(repo: Repository, name: str, out: io.BytesIO | None = None) -> bytes:
    out = out if out is not None else io.BytesIO()
    api.get(repo, name, out)
    return out.getvalue()


def data_locations(repo: Repository, name: str) -> list[Location]:
    _, rec = repo.find_record(name)
    refs = read_chunk_lists(repo, StreamBody.from_cbor(rec.body))
    locs = [repo.lookup(r.id) for r in refs]
    assert all(loc is not None for loc in locs)
    return locs  # type: ignore[return-value]


def flip_on_disk(path: Path, offset: int, mask: int = 0x01) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= mask
    path.write_bytes(bytes(raw))


@pytest.fixture(params=[False, True], ids=["plain", "encrypted"])
def local_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    """Records 'a' and 'b' in a LocalBackend repository (plain or encrypted)."""
    password = PASSWORD if request.param else None
    repo = init(LocalBackend(tmp_path / "repo"), tmp_path / "cache", password)
    api.put(repo, "a", io.BytesIO(A))
    api.put(repo, "b", io.BytesIO(B))
    yield repo
    repo.close()


def test_flipped_byte_in_pack_is_never_served(local_repo: Repository) -> None:
    backend = local_repo.backend
    assert isinstance(backend, LocalBackend)
    locs = data_locations(local_repo, "a")
    victim = locs[3]
    flip_on_disk(
        backend.path(Handle(FileType.PACK, victim.pack_id.hex)),
        victim.entry.offset + victim.entry.length - 1,
        0x80,
    )
    with pytest.raises(CorruptBlob) as exc:
        local_repo.load_blob(victim.entry.id)
    assert victim.entry.id.short in str(exc.value) and victim.pack_id.short in str(exc.value)
    assert isinstance(exc.value, IntegrityError)

    out = io.BytesIO()
    with pytest.raises(CorruptBlob, match=victim.pack_id.short):
        restore(local_repo, "a", out)
    # What was written before the error is a correct prefix, never damaged bytes.
    assert A.startswith(out.getvalue())
    assert len(out.getvalue()) <= sum(loc.entry.raw_length for loc in locs[:3])
    # Undamaged blobs of the same pack, and other records, still read fine.
    for loc in locs:
        if loc.pack_id == victim.pack_id and loc is not victim:
            assert len(local_repo.load_blob(loc.entry.id)) == loc.entry.raw_length
    assert restore(local_repo, "b") == B


def test_truncated_pack_is_an_error_not_garbage(local_repo: Repository) -> None:
    backend = local_repo.backend
    assert isinstance(backend, LocalBackend)
    locs = data_locations(local_repo, "a")
    victim = locs[0]
    path = backend.path(Handle(FileType.PACK, victim.pack_id.hex))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    in_pack = [loc for loc in locs if loc.pack_id == victim.pack_id]
    lost = [loc for loc in in_pack if loc.entry.offset + loc.entry.length > len(raw) // 2]
    assert lost
    with pytest.raises(ShortRead, match=victim.pack_id.hex):
        local_repo.load_blob(lost[-1].entry.id)
    out = io.BytesIO()
    with pytest.raises(IntegrityError):
        restore(local_repo, "a", out)
    assert A.startswith(out.getvalue())
    report = api.check(local_repo)
    assert not report.ok
    assert any(victim.pack_id.short in e and "the index says" in e for e in report.errors)
    assert restore(local_repo, "b") == B


class FlipOnce(FaultyBackend):
    """Flips one bit of the first load of a pack that covers ``offset``; later loads are clean."""

    def __init__(self, inner: Backend, pack: Handle, offset: int) -> None:
        super().__init__(inner)
        self.pack = pack
        self.offset = offset
        self.flipped = 0

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        got = super().load(handle, offset, length)
        if handle == self.pack and not self.flipped and offset <= self.offset < offset + len(got):
            self.flipped += 1
            buf = bytearray(got)
            buf[self.offset - offset] ^= 0x04
            return bytes(buf)
        return got


@pytest.mark.parametrize("path", ["load_blob", "get"])
def test_flip_once_is_retried(path: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inner = MemoryBackend()
    with init(inner, tmp_path / "c0") as repo:
        api.put(repo, "a", io.BytesIO(A))
        locs = data_locations(repo, "a")
    victim = locs[2]
    start = sum(loc.entry.raw_length for loc in locs[:2])
    expected = A[start : start + victim.entry.raw_length]
    pack = Handle(FileType.PACK, victim.pack_id.hex)
    faulty = FlipOnce(inner, pack, victim.entry.offset + 5)
    with Repository.open(faulty, cache_dir=tmp_path / "c1") as repo:
        faulty.clear_log()
        if path == "load_blob":
            assert repo.load_blob(victim.entry.id) == expected
            assert faulty.calls("load").count(pack) == 2
        else:
            assert restore(repo, "a") == A
        assert faulty.flipped == 1
    assert any("verified on the second attempt" in r.getMessage() for r in caplog.records)


def test_persistent_flip_fails_after_retry(tmp_path: Path) -> None:
    inner = MemoryBackend()
    with init(inner, tmp_path / "c0") as repo:
        api.put(repo, "a", io.BytesIO(A))
        victim = data_locations(repo, "a")[2]
    faulty = FaultyBackend(inner)
    pack = Handle(FileType.PACK, victim.pack_id.hex)
    faulty.flip_bit(pack, victim.entry.offset + 5, 3)
    with Repository.open(faulty, cache_dir=tmp_path / "c1") as repo:
        faulty.clear_log()
        with pytest.raises(CorruptBlob, match=victim.pack_id.short):
            repo.load_blob(victim.entry.id)
        assert faulty.calls("load").count(pack) == 2


def test_damaged_index_file_is_named_on_open(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "repo")
    with init(backend, tmp_path / "c0") as repo:
        api.put(repo, "a", io.BytesIO(A))
        api.put(repo, "b", io.BytesIO(B))
        index_id = repo.index_files()[0]
    flip_on_disk(backend.path(Handle(FileType.INDEX, index_id.hex)), 20)
    with pytest.raises(CorruptMetadata, match=f"index/{index_id.hex}"):
        Repository.open(backend, cache_dir=tmp_path / "fresh-cache")
    # A cache that merged the file before the damage still opens; check then reports it.
    with Repository.open(backend, cache_dir=tmp_path / "c0") as repo:
        report = api.check(repo)
        assert not report.ok
        assert any(f"index file {index_id.short}" in e for e in report.errors)


def test_index_file_that_is_well_named_but_invalid_is_corrupt_metadata(tmp_path: Path) -> None:
    backend = MemoryBackend()
    with init(backend, tmp_path / "c0") as repo:
        repo.save_blob(BlobType.DATA, b"x" * 100)
        repo.flush()
        # A file named by its hash (so it passes the name check) holding no valid index.
        bogus = repo.save_file(FileType.INDEX, "pack-index", b"\xa0")
    with pytest.raises(CorruptMetadata, match=f"index file {bogus.short}"):
        Repository.open(backend, cache_dir=tmp_path / "c1")


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_damaged_record_is_corrupt_metadata(encrypted: bool, tmp_path: Path) -> None:
    backend = MemoryBackend()
    password = PASSWORD if encrypted else None
    with init(backend, tmp_path / "c0", password) as repo:
        rid_a, _ = api.put(repo, "a", io.BytesIO(A))
        api.put(repo, "b", io.BytesIO(B))
        handle = Handle(FileType.RECORD, rid_a.hex)
        raw = bytearray(backend.load(handle))
        raw[len(raw) // 2] ^= 0x01
        backend.remove(handle)
        backend.save(handle, bytes(raw))
        with pytest.raises(CorruptMetadata, match=rid_a.hex):
            repo.load_record(rid_a)
        with pytest.raises(CorruptMetadata):
            restore(repo, "a")
        report = api.check(repo)
        assert not report.ok and report.records == 1
        assert any(rid_a.short in e for e in report.errors)

        # Stored under its correct name but not decodable (encrypted: wrong key role).
        bogus = repo.save_file(FileType.RECORD, "pack-index" if encrypted else "record", b"\x00")
        with pytest.raises(CorruptMetadata, match=bogus.short):
            repo.load_record(bogus)


def test_pack_verification_before_upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario A7: a fault between compressing and sealing never reaches storage."""
    faulty = FaultyBackend(MemoryBackend())
    payload = random.Random(7).randbytes(20_000)
    with init(faulty, tmp_path / "c0") as repo:
        good = repo.save_blob(BlobType.DATA, b"fine " * 1000).id
        compressor = repo.codec._compressor
        real = compressor.compress

        def corrupting(data: bytes | memoryview) -> bytes:
            out = real(data)
            if bytes(data) != payload:
                return out
            damaged = bytearray(out)
            damaged[len(damaged) // 2] ^= 0x20
            return bytes(damaged)

        monkeypatch.setattr(compressor, "compress", corrupting)
        with pytest.raises(IntegrityError, match="does not decode to the data"):
            repo.save_blob(BlobType.DATA, payload)
        assert [h for h in faulty.calls("save") if getattr(h, "type", None) is FileType.PACK] == []
        assert list(faulty.inner.list(FileType.PACK)) == []
        assert list(faulty.inner.list(FileType.INDEX)) == []
        assert repo.lookup(good) is None
        bad_id = repo.codec.blob_id(payload)
        assert not repo.has_blob(bad_id)
        repo.flush()  # the good blob is stored, the damaged one never was
        assert repo.load_blob(good) == b"fine " * 1000
        assert repo.lookup(bad_id) is None


def test_a_pack_header_that_does_not_read_back_is_never_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC.md §5: the header is parsed back from the finished pack bytes before the pack is
    stored (blobs were each verified when they were encoded, see the test above)."""
    faulty = FaultyBackend(MemoryBackend())
    with init(faulty, tmp_path / "c0") as repo:
        repo.save_blob(BlobType.DATA, random.Random(9).randbytes(5000))
        real = repo.codec.encode_file

        def lying_header(role: str, plaintext: bytes) -> bytes:
            if role == "pack-header":  # a header that lists another blob id
                rows = cbor.decode(plaintext, max_size=1 << 20)
                rows["data"][0][1] = bytes(32)
                plaintext = cbor.encode(rows)
            return real(role, plaintext)

        monkeypatch.setattr(repo.codec, "encode_file", lying_header)
        with pytest.raises(IntegrityError, match="does not read back"):
            repo.flush()
        assert list(faulty.inner.list(FileType.PACK)) == []


def test_pack_verification_stops_put(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = MemoryBackend()
    with init(inner, tmp_path / "c0") as repo:
        api.put(repo, "a", io.BytesIO(A))
        before = {i.handle for t in FileType if t is not FileType.CONFIG for i in inner.list(t)}
        compressor = repo.codec._compressor
        real = compressor.compress
        calls = itertools.count(1)

        def corrupting(data: bytes | memoryview) -> bytes:
            out = real(data)
            if next(calls) != 10:  # one chunk, somewhere in the first pack
                return out
            return out[:-1] + bytes([out[-1] ^ 0x01])

        monkeypatch.setattr(compressor, "compress", corrupting)
        with pytest.raises(IntegrityError):
            api.put(repo, "b", io.BytesIO(B))
        after = {i.handle for t in FileType if t is not FileType.CONFIG for i in inner.list(t)}
        added = after - before
        # Packs that verified may have been stored, but no index or record refers to bad data.
        assert {h.type for h in added} <= {FileType.PACK}
    with Repository.open(inner, cache_dir=tmp_path / "c1") as repo:
        report = api.check(repo, read_data=True)
        assert report.ok, report.errors
        assert [r["name"] for r in api.list_records(repo)] == ["a"]
        assert restore(repo, "a") == A


def test_digest_of_pack_names_content(tmp_path: Path) -> None:
    """Every pack on disk is named by the SHA-256 of its bytes (what --read-data relies on)."""
    backend = LocalBackend(tmp_path / "repo")
    with init(backend, tmp_path / "c0") as repo:
        api.put(repo, "a", io.BytesIO(A))
    for info in backend.list(FileType.PACK):
        content = backend.load(info.handle)
        assert Digest.from_hex(info.handle.name) == Digest(
            "sha256", hashlib.sha256(content).digest()
        )
