"""Keys, passwords and nonces (reliability.md F8, G1-G6), on real repositories and the CLI."""

from __future__ import annotations

import hashlib
import io
import logging
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from chunkstore import api, crypto
from chunkstore.backends.base import Handle
from chunkstore.backends.local import LocalBackend
from chunkstore.blob import BlobType
from chunkstore.chunker import ChunkerParams
from chunkstore.cli import main
from chunkstore.codec import BlobCodec
from chunkstore.config import RepoConfig
from chunkstore.errors import ChunkstoreError, CorruptMetadata, IntegrityError, WrongPassword
from chunkstore.repository import Repository
from index import cbor
from index.ids import sha256

PARAMS = ChunkerParams(1024, 4096, 16384)
PASSWORD = b"reliability keys password"
SMALL = ["--chunk-min", "1K", "--chunk-avg", "4K", "--chunk-max", "16K", "--pack-size", "64K"]


def init(root: Path, cache: Path, password: bytes | None = PASSWORD) -> Repository:
    return Repository.init(
        LocalBackend(root), cache_dir=cache, password=password, chunker=PARAMS, pack_size=64 << 10
    )


def pack_path(root: Path, pack_hex: str) -> Path:
    return root / "data" / pack_hex[:2] / pack_hex


# -- F8: ciphertexts swapped inside a pack -----------------------------------------------------------


def test_f8_swapped_ciphertexts_in_a_pack_are_rejected_naming_the_blob(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    rnd = random.Random(8)
    plain = [rnd.randbytes(3000) for _ in range(4)]  # incompressible, same stored length
    with init(root, tmp_path / "c0") as repo:
        ids = [repo.save_blob(BlobType.DATA, p).id for p in plain]
        repo.flush()
        locs = [repo.lookup(i) for i in ids]
    assert all(loc is not None for loc in locs)
    a, b = locs[0], locs[1]
    assert (
        a is not None
        and b is not None
        and a.pack_id == b.pack_id
        and a.entry.length == b.entry.length
    )
    path = pack_path(root, a.pack_id.hex)
    raw = bytearray(path.read_bytes())
    blob_a = raw[a.entry.offset : a.entry.offset + a.entry.length]
    raw[a.entry.offset : a.entry.offset + a.entry.length] = raw[
        b.entry.offset : b.entry.offset + b.entry.length
    ]
    raw[b.entry.offset : b.entry.offset + b.entry.length] = blob_a
    path.write_bytes(bytes(raw))
    with Repository.open(LocalBackend(root), cache_dir=tmp_path / "c1", password=PASSWORD) as repo:
        with pytest.raises(IntegrityError) as info:
            repo.load_blob(ids[0])
        assert ids[0].hex[:12] in str(info.value) or a.pack_id.hex[:12] in str(info.value)
        assert repo.load_blob(ids[2]) == plain[2]  # the rest of the pack is still served
        report = api.check(repo, read_data=True)
        assert not report.ok
        assert any(a.pack_id.hex[:12] in e for e in report.errors)


def test_f8_retyped_blob_is_rejected() -> None:
    config = RepoConfig(repo_id=bytes(32), encrypted=True, chunker=PARAMS, pack_size=64 << 10)
    codec = BlobCodec(config, crypto.MasterKey.generate())
    stored = codec.encode(BlobType.DATA, b"a data chunk" * 10)
    with pytest.raises(IntegrityError):
        codec.decode(BlobType.META, stored.id, stored.data, 120)


# -- G1, G2: wrong password and damaged key file, also after local state was rolled back ---------


def _cli(root: Path, cache: Path, password: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        main,
        ["--repo", str(root), *args],
        env={"CHUNKSTORE_CACHE": str(cache), "CHUNKSTORE_PASSWORD": password},
    )
    return result.exit_code, result.stdout, result.stderr


def test_g1_g2_wrong_password_and_damaged_key_give_the_same_error(tmp_path: Path) -> None:
    root, cache = tmp_path / "repo", tmp_path / "cache"
    code, _, err = _cli(root, cache, PASSWORD.decode(), "init", "--encrypt", *SMALL)
    assert code == 0, err
    source = tmp_path / "a.bin"
    source.write_bytes(random.Random(1).randbytes(50_000))
    assert _cli(root, cache, PASSWORD.decode(), "put", "a", str(source))[0] == 0
    # Roll the local state back to a copy taken now, then use the repository some more.
    shutil.copytree(cache, tmp_path / "cache-snapshot")
    assert _cli(root, cache, PASSWORD.decode(), "put", "b", str(source))[0] == 0
    shutil.rmtree(cache)
    shutil.copytree(tmp_path / "cache-snapshot", cache)
    files_before = sorted(p.relative_to(root) for p in root.rglob("*"))
    cache_before = sorted(p.relative_to(cache) for p in cache.rglob("*"))

    wrong = _cli(root, cache, "not the password", "ls")
    (key_file,) = (root / "keys").iterdir()
    raw = bytearray(key_file.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # inside the metadata or the wrapped key
    key_file.write_bytes(bytes(raw))
    damaged = _cli(root, cache, PASSWORD.decode(), "ls")
    for code, out, err in (wrong, damaged):
        assert code == 12, err
        assert out == ""
        assert err.strip() == "chunkstore: error: wrong password, or the key file is damaged"
        assert PASSWORD.decode() not in err
    assert wrong[2] == damaged[2]
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == files_before  # nothing written
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == cache_before


def test_g2_every_single_byte_change_of_a_key_file_is_wrong_password() -> None:
    master = crypto.MasterKey.generate()
    repo_id = bytes(range(32))
    data = crypto.create_key_file(master, b"pw", repo_id)
    rnd = random.Random(2)
    for offset in rnd.sample(range(len(data)), 12):
        damaged = bytearray(data)
        damaged[offset] ^= 1 << rnd.randrange(8)
        with pytest.raises(WrongPassword, match="wrong password, or the key file is damaged"):
            crypto.open_key_file(bytes(damaged), b"pw", repo_id)


# -- G3: the repository replaced behind our back --------------------------------------------------


def test_g3_other_key_repository_with_the_same_id_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    with init(root, tmp_path / "cache") as repo:
        api.put(repo, "a", io.BytesIO(b"secret" * 1000))
        repo_id = repo.config.repo_id
    # Another key holder re-creates key and config under the same id (no old key opens it).
    shutil.rmtree(root)
    with init(root, tmp_path / "c-other", password=b"attacker") as other:
        assert other.config.repo_id != repo_id
    with pytest.raises(WrongPassword):
        Repository.open(LocalBackend(root), cache_dir=tmp_path / "cache", password=PASSWORD)


def test_g3_unencrypted_config_under_a_known_id_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    cache = tmp_path / "cache"
    with init(root, cache) as repo:
        config = repo.config
    plain = RepoConfig(repo_id=config.repo_id, encrypted=False, chunker=PARAMS, pack_size=64 << 10)
    LocalBackend(root).save(Handle.config(), plain.encode(), overwrite=True)
    with pytest.raises(ChunkstoreError, match="encrypted when last used"):
        Repository.open(LocalBackend(root), cache_dir=cache, password=PASSWORD)


def test_g3_unencrypted_repository_swapped_in_at_a_known_location_is_refused(
    tmp_path: Path,
) -> None:
    root = tmp_path / "repo"
    cache = tmp_path / "cache"
    init(root, cache).close()
    Repository.open(LocalBackend(root), cache_dir=cache, password=PASSWORD).close()
    shutil.rmtree(root)
    init(root, tmp_path / "attacker-cache", password=None).close()
    with pytest.raises(ChunkstoreError, match=r"was encrypted .* now an unencrypted one"):
        Repository.open(LocalBackend(root), cache_dir=cache, password=PASSWORD).close()
    # Re-creating the repository on purpose (init with this cache) is not refused later.
    shutil.rmtree(root)
    init(root, cache, password=None).close()
    Repository.open(LocalBackend(root), cache_dir=cache).close()


# -- the pins themselves: deleted with the cache, unreadable, from older versions --------------------


def location_pin(cache: Path, root: Path) -> Path:
    return cache / "locations" / hashlib.sha256(str(root).encode()).hexdigest()


def test_g3_a_deleted_cache_repins_with_a_visible_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, cache = tmp_path / "repo", tmp_path / "cache"
    init(root, cache).close()
    # The cache is deleted (allowed at any time), then the repository is swapped: the client has
    # nothing left to compare with (the trade-off), and says so instead of staying silent.
    shutil.rmtree(cache)
    shutil.rmtree(root)
    init(root, tmp_path / "attacker-cache", password=None).close()
    with caplog.at_level(logging.WARNING, logger="chunkstore"):
        with Repository.open(LocalBackend(root), cache_dir=cache) as repo:
            (notice,) = repo.notices
    assert "no local pin" in notice and "plain repository" in notice and "replaced" in notice
    assert notice in caplog.messages
    recorded = location_pin(cache, root).read_text()
    assert "mode: plain" in recorded and "(first use)" in recorded
    # Pinned now: the next open is quiet.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chunkstore"):
        with Repository.open(LocalBackend(root), cache_dir=cache) as repo:
            assert repo.notices == []
    assert caplog.messages == []


def test_g3_the_cli_prints_the_repin_warning(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    init(root, tmp_path / "cache", password=None).close()
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "chunkstore",
            "--repo",
            str(root),
            "--cache-dir",
            str(tmp_path / "new"),
            "ls",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert b"no local pin for the repository at" in child.stderr


@pytest.mark.parametrize("which", ["location", "id"])
@pytest.mark.parametrize("damage", ["garbage", "empty", "binary", "directory"])
def test_g3_an_unreadable_pin_is_an_error_never_a_reset(
    which: str, damage: str, tmp_path: Path
) -> None:
    root, cache = tmp_path / "repo", tmp_path / "cache"
    with init(root, cache) as repo:
        repo_id = repo.config.repo_id.hex()
    pin = location_pin(cache, root) if which == "location" else cache / repo_id / "mode"
    pin.unlink()
    if damage == "directory":
        pin.mkdir()
    else:
        pin.write_bytes(
            {"garbage": b"plain but not a pin\n", "empty": b"", "binary": b"\xff" * 9}[damage]
        )
    before = pin.read_bytes() if pin.is_file() else None
    with pytest.raises(CorruptMetadata, match="pin file") as err:
        Repository.open(LocalBackend(root), cache_dir=cache, password=PASSWORD)
    assert str(pin) in str(err.value) and "delete the file" in str(err.value)
    assert (pin.read_bytes() if pin.is_file() else None) == before  # not reset


def test_g3_pins_of_earlier_versions_still_protect(tmp_path: Path) -> None:
    root, cache = tmp_path / "repo", tmp_path / "cache"
    with init(root, cache) as repo:
        repo_id = repo.config.repo_id.hex()
    location_pin(cache, root).write_text(f"encrypted {repo_id}\n")
    (cache / repo_id / "mode").write_text("encrypted\n")
    with Repository.open(LocalBackend(root), cache_dir=cache, password=PASSWORD) as repo:
        assert repo.notices == []
    shutil.rmtree(root)
    init(root, tmp_path / "attacker-cache", password=None).close()
    with pytest.raises(ChunkstoreError, match=r"was encrypted .* now an unencrypted one"):
        Repository.open(LocalBackend(root), cache_dir=cache).close()


# -- G4: no nonce reuse, also after local state is rolled back --------------------------------------


@pytest.mark.slow
def test_g4_a_million_seals_repeat_no_nonce() -> None:
    key = crypto.MasterKey.generate().encryption
    seal = crypto.seal
    n = 1_000_000
    start = time.monotonic()
    nonces = {seal(key, b"x", b"aad")[: crypto.NONCE_SIZE] for _ in range(n)}
    assert len(nonces) == n
    assert time.monotonic() - start < 120


def test_g4_rolled_back_cache_repeats_no_nonce(tmp_path: Path) -> None:
    """Seal blobs, roll the cache back to a copy, seal more: every stored nonce is distinct."""
    root, cache = tmp_path / "repo", tmp_path / "cache"
    rnd = random.Random(4)
    first = [rnd.randbytes(200) for _ in range(3000)]
    second = [rnd.randbytes(200) for _ in range(3000)]
    with init(root, cache) as repo:
        repo.flush()
    shutil.copytree(cache, tmp_path / "snapshot")
    ids = []
    with Repository.open(LocalBackend(root), cache_dir=cache, password=PASSWORD) as repo:
        ids += [repo.save_blob(BlobType.DATA, p).id for p in first]
        repo.flush()
    shutil.rmtree(cache)
    shutil.copytree(tmp_path / "snapshot", cache)  # the VM snapshot / LMDB copy is restored
    with Repository.open(LocalBackend(root), cache_dir=cache, password=PASSWORD) as repo:
        ids += [repo.save_blob(BlobType.DATA, p).id for p in second]
        repo.flush()
        locs = [repo.lookup(i) for i in ids]
    nonces = []
    for loc in locs:
        assert loc is not None
        with open(pack_path(root, loc.pack_id.hex), "rb") as f:
            f.seek(loc.entry.offset)
            nonces.append(f.read(crypto.NONCE_SIZE))
    assert len(nonces) == 6000 and len(set(nonces)) == 6000
    # Sealed files (pack headers, index files, records) too.
    headers = [p.read_bytes()[: crypto.NONCE_SIZE] for p in (root / "index").iterdir()]
    assert len(set(headers)) == len(headers)


# -- G5: dedup keys do not confirm public content ------------------------------------------------------


def test_g5_ids_are_keyed_and_ciphertexts_differ(tmp_path: Path) -> None:
    public = b"#!/bin/sh\necho a well-known public file\n" * 200
    stored = []
    for n in range(2):
        with init(tmp_path / f"r{n}", tmp_path / f"c{n}") as repo:
            blob = repo.save_blob(BlobType.DATA, public)
            again = repo.save_blob(BlobType.DATA, public)
            assert again.id == blob.id  # deduplicated inside one repository
            repo.flush()
            assert blob.id != sha256(public) and blob.id.algorithm == "hmac-sha256"
            loc = repo.lookup(blob.id)
            assert loc is not None
            raw = pack_path(tmp_path / f"r{n}", loc.pack_id.hex).read_bytes()
            stored.append((blob.id, raw[loc.entry.offset : loc.entry.offset + loc.entry.length]))
            assert public not in raw and sha256(public).raw not in raw
    assert stored[0][0] != stored[1][0]  # another key, another id
    assert stored[0][1] != stored[1][1]


# -- G6: the KDF cost is a fixed floor ---------------------------------------------------------------


def test_g6_key_files_use_at_least_the_fixed_argon2id_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A "slow machine": the clock jumps a minute on every reading; nothing may adapt to it.
    ticks = iter(range(0, 10**9, 60))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(ticks)))
    root = tmp_path / "repo"
    init(root, tmp_path / "cache").close()
    monkeypatch.undo()
    (key_file,) = (root / "keys").iterdir()
    env = cbor.decode_envelope(key_file.read_bytes(), kind="key", versions=(1, 1), max_size=1 << 16)
    assert env.data["kdf"] == "argon2id"
    assert env.data["ops"] >= crypto.KDF_FLOOR.opslimit >= 3
    assert env.data["mem"] >= crypto.KDF_FLOOR.memlimit >= 64 << 20
    below = crypto.KdfParams(opslimit=2, memlimit=64 << 20)
    with pytest.raises(ChunkstoreError):
        crypto.create_key_file(crypto.MasterKey.generate(), b"pw", bytes(32), params=below)
