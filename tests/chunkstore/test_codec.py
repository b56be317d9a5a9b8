"""Tests for :mod:`chunkstore.codec`: blob and file encoding, ids, and verification on decode.

The associated-data layouts are rebuilt here from the module docstring, so a test that seals with
them checks the documented format, not just self-consistency.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkstore import crypto
from chunkstore.blob import BlobType, StoredBlob
from chunkstore.codec import BlobCodec
from chunkstore.compress import RAW, ZSTD, Compressor
from chunkstore.config import RepoConfig
from chunkstore.errors import CorruptBlob, CorruptMetadata, UsageError
from index.ids import Digest

REPO_ID = bytes(range(100, 132))
MASTER = crypto.MasterKey(bytes(range(32)), bytes(range(32, 64)))
PLAIN_CFG = RepoConfig(repo_id=REPO_ID, encrypted=False)
ENC_CFG = RepoConfig(repo_id=REPO_ID, encrypted=True)
PLAIN = BlobCodec(PLAIN_CFG, None)
ENC = BlobCodec(ENC_CFG, MASTER)
CODECS = [pytest.param(PLAIN, id="plain"), pytest.param(ENC, id="encrypted")]

TEXT = b"The quick brown fox jumps over the lazy dog. " * 40  # compressible
NOISE = bytes(hashlib.sha256(i.to_bytes(4, "big")).digest()[0] for i in range(600))


def blob_aad(repo_id: bytes, type_: BlobType, blob_id: Digest) -> bytes:
    return b"chunkstore.v1.blob\x00" + repo_id + bytes([int(type_)]) + blob_id.raw


def file_aad(repo_id: bytes, role: str) -> bytes:
    return b"chunkstore.v1.file\x00" + repo_id + role.encode("ascii")


def flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


# ------------------------------------------------------------------------------------------------
# Construction
# ------------------------------------------------------------------------------------------------


def test_key_presence_must_match_mode() -> None:
    with pytest.raises(UsageError):
        BlobCodec(ENC_CFG, None)
    with pytest.raises(UsageError):
        BlobCodec(PLAIN_CFG, MASTER)


# ------------------------------------------------------------------------------------------------
# Round trips and ids
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@given(data=st.binary(max_size=3000), type_=st.sampled_from(BlobType))
def test_round_trip(codec: BlobCodec, data: bytes, type_: BlobType) -> None:
    blob = codec.encode(type_, data)
    assert isinstance(blob, StoredBlob)
    assert blob.type == type_
    assert blob.raw_length == len(data)
    assert codec.decode(type_, blob.id, blob.data, blob.raw_length) == data
    assert codec.decode(type_, blob.id, memoryview(blob.data), blob.raw_length) == data


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_examples(codec: BlobCodec) -> None:
    for data in (b"", b"x", TEXT, NOISE, bytes(70_000)):
        blob = codec.encode(BlobType.DATA, memoryview(data))
        assert codec.decode(BlobType.DATA, blob.id, blob.data, len(data)) == data


@given(st.binary(max_size=500))
def test_unencrypted_id_is_sha256(data: bytes) -> None:
    blob = PLAIN.encode(BlobType.DATA, data)
    assert blob.id == Digest("sha256", hashlib.sha256(data).digest())
    assert PLAIN.blob_id(data) == blob.id


@given(st.binary(max_size=500))
def test_encrypted_id_is_hmac_under_mac_key(data: bytes) -> None:
    blob = ENC.encode(BlobType.META, data)
    assert blob.id == Digest("hmac-sha256", hmac.new(MASTER.mac, data, hashlib.sha256).digest())
    assert blob.id.raw != hashlib.sha256(data).digest()
    # keyed by the MAC key, not the encryption key
    assert blob.id.raw != hmac.new(MASTER.encryption, data, hashlib.sha256).digest()


def test_encrypted_id_golden() -> None:
    # RFC 4231 test case 2 (HMAC-SHA256, key "Jefe"), computed independently of this code.
    codec = BlobCodec(ENC_CFG, crypto.MasterKey(bytes(32), b"Jefe".ljust(32, b"\x00")))
    blob = codec.encode(BlobType.DATA, b"what do ya want for nothing?")
    assert blob.id.hex == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_unencrypted_stored_form_is_the_frame() -> None:
    blob = PLAIN.encode(BlobType.DATA, TEXT)
    assert blob.data[0] == ZSTD
    assert Compressor().decompress(blob.data, len(TEXT)) == TEXT
    raw = PLAIN.encode(BlobType.DATA, NOISE)
    assert raw.data == bytes([RAW]) + NOISE


def test_encrypted_stored_form_uses_documented_aad() -> None:
    blob = ENC.encode(BlobType.META, TEXT)
    frame = crypto.open_sealed(
        MASTER.encryption, blob.data, blob_aad(REPO_ID, BlobType.META, blob.id), "x"
    )
    assert frame[0] == ZSTD
    assert Compressor().decompress(frame, len(TEXT)) == TEXT
    assert TEXT[:32] not in blob.data


def test_given_id_is_used() -> None:
    forced = Digest("sha256", bytes(32))
    blob = PLAIN.encode(BlobType.DATA, b"abc", blob_id=forced)
    assert blob.id == forced
    # and decoding verifies it: the content does not match that id
    with pytest.raises(CorruptBlob):
        PLAIN.decode(BlobType.DATA, forced, blob.data, 3)


def test_encrypting_same_blob_twice_differs() -> None:
    a = ENC.encode(BlobType.DATA, TEXT)
    b = ENC.encode(BlobType.DATA, TEXT)
    assert a.id == b.id
    assert a.data != b.data


# ------------------------------------------------------------------------------------------------
# Verification on decode
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_wrong_id_is_corrupt(codec: BlobCodec) -> None:
    blob = codec.encode(BlobType.DATA, TEXT)
    other = codec.blob_id(TEXT + b"!")
    with pytest.raises(CorruptBlob, match=other.short):
        codec.decode(BlobType.DATA, other, blob.data, len(TEXT))
    wrong_alg = Digest("hmac-sha256" if codec is PLAIN else "sha256", blob.id.raw)
    with pytest.raises(CorruptBlob):
        codec.decode(BlobType.DATA, wrong_alg, blob.data, len(TEXT))


def test_encrypted_wrong_type_is_corrupt() -> None:
    blob = ENC.encode(BlobType.DATA, TEXT)
    with pytest.raises(CorruptBlob):
        ENC.decode(BlobType.META, blob.id, blob.data, len(TEXT))


def test_encrypted_other_repository_is_corrupt() -> None:
    blob = ENC.encode(BlobType.DATA, TEXT)
    other = BlobCodec(RepoConfig(repo_id=bytes(32), encrypted=True), MASTER)
    assert other.blob_id(TEXT) == blob.id  # same keys: same id, only the AAD differs
    with pytest.raises(CorruptBlob):
        other.decode(BlobType.DATA, blob.id, blob.data, len(TEXT))


def test_encrypted_other_key_is_corrupt() -> None:
    blob = ENC.encode(BlobType.DATA, TEXT)
    other = BlobCodec(ENC_CFG, crypto.MasterKey(bytes(32), MASTER.mac))
    with pytest.raises(CorruptBlob):
        other.decode(BlobType.DATA, blob.id, blob.data, len(TEXT))


def test_encrypted_swapped_ciphertexts_are_corrupt() -> None:
    a_plain, b_plain = TEXT, TEXT[::-1]
    a = ENC.encode(BlobType.DATA, a_plain)
    b = ENC.encode(BlobType.DATA, b_plain)
    assert len(a_plain) == len(b_plain)
    with pytest.raises(CorruptBlob):
        ENC.decode(BlobType.DATA, a.id, b.data, len(a_plain))
    with pytest.raises(CorruptBlob):
        ENC.decode(BlobType.DATA, b.id, a.data, len(b_plain))


def test_unencrypted_swapped_blobs_are_corrupt() -> None:
    a = PLAIN.encode(BlobType.DATA, TEXT)
    b = PLAIN.encode(BlobType.DATA, TEXT[::-1])
    with pytest.raises(CorruptBlob):
        PLAIN.decode(BlobType.DATA, a.id, b.data, len(TEXT))


@pytest.mark.parametrize("plaintext", [TEXT[:300], NOISE[:64]], ids=["zstd", "raw"])
def test_every_bit_flip_in_unencrypted_blob_is_caught(plaintext: bytes) -> None:
    """Flips are caught by decompression or by the id check; wrong bytes are never returned.

    The single exception is the zstd frame header's "unused" bit (descriptor bit 4, RFC 8878
    §3.1.1.1.1), which decoders must ignore: flipping it leaves the content, and so the
    verified plaintext, unchanged.
    """
    blob = PLAIN.encode(BlobType.DATA, plaintext)
    tolerated = {(1 + 4, 4)} if blob.data[0] == ZSTD else set()  # flag byte, magic, descriptor
    undetected = set()
    for pos in range(len(blob.data)):
        for bit in range(8):
            try:
                out = PLAIN.decode(
                    BlobType.DATA, blob.id, flip(blob.data, pos, bit), len(plaintext)
                )
            except CorruptBlob:
                continue
            assert out == plaintext
            undetected.add((pos, bit))
    assert undetected <= tolerated


@pytest.mark.parametrize("codec", CODECS)
@given(pos=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_bit_flips_never_return_wrong_bytes(codec: BlobCodec, pos: int, bit: int) -> None:
    blob = codec.encode(BlobType.META, TEXT)
    damaged = flip(blob.data, pos % len(blob.data), bit)
    try:
        out = codec.decode(BlobType.META, blob.id, damaged, len(TEXT))
    except CorruptBlob:
        return
    assert codec is PLAIN and out == TEXT


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("plaintext", [TEXT, NOISE, b""], ids=["zstd", "raw", "empty"])
def test_raw_length_mismatch_is_corrupt(codec: BlobCodec, plaintext: bytes) -> None:
    blob = codec.encode(BlobType.DATA, plaintext)
    for raw_length in {0, len(plaintext) - 1, len(plaintext) + 1, 2 * len(plaintext) + 10}:
        if raw_length < 0 or raw_length == len(plaintext):
            continue
        with pytest.raises(CorruptBlob):
            codec.decode(BlobType.DATA, blob.id, blob.data, raw_length)


@pytest.mark.parametrize("codec", CODECS)
def test_truncated_or_empty_is_corrupt(codec: BlobCodec) -> None:
    blob = codec.encode(BlobType.DATA, TEXT)
    for stored in (b"", blob.data[:1], blob.data[:-1]):
        with pytest.raises(CorruptBlob):
            codec.decode(BlobType.DATA, blob.id, stored, len(TEXT))


@pytest.mark.parametrize(
    "codec",
    [
        pytest.param(
            PLAIN,
            id="plain",
        ),
        pytest.param(ENC, id="encrypted"),
    ],
)
def test_appended_bytes_are_corrupt(codec: BlobCodec) -> None:
    blob = codec.encode(BlobType.DATA, TEXT)
    with pytest.raises(CorruptBlob):
        codec.decode(BlobType.DATA, blob.id, blob.data + b"\x00", len(TEXT))


def test_valid_aead_with_mismatching_plaintext_is_corrupt() -> None:
    """Scenario A5: authentic ciphertext under the right AAD, but content that is not the id's."""
    good, evil = TEXT, TEXT.replace(b"fox", b"cat")
    assert len(good) == len(evil) and good != evil
    blob_id = ENC.blob_id(good)
    aad = blob_aad(REPO_ID, BlobType.DATA, blob_id)
    comp = Compressor()
    # Control: the hand-built AAD is the codec's (a correct blob sealed this way decodes).
    honest = crypto.seal(MASTER.encryption, comp.compress(good), aad)
    assert ENC.decode(BlobType.DATA, blob_id, honest, len(good)) == good
    forged = crypto.seal(MASTER.encryption, comp.compress(evil), aad)
    with pytest.raises(CorruptBlob, match="does not match its id"):
        ENC.decode(BlobType.DATA, blob_id, forged, len(evil))
    raw_forged = crypto.seal(MASTER.encryption, bytes([RAW]) + evil, aad)
    with pytest.raises(CorruptBlob):
        ENC.decode(BlobType.DATA, blob_id, raw_forged, len(evil))


def test_valid_aead_with_bad_frame_is_corrupt() -> None:
    blob_id = ENC.blob_id(TEXT)
    aad = blob_aad(REPO_ID, BlobType.DATA, blob_id)
    for frame in (b"", b"\x07" + TEXT, b"\x01not zstd", bytes([RAW]) + TEXT + b"x"):
        sealed = crypto.seal(MASTER.encryption, frame, aad)
        with pytest.raises(CorruptBlob):
            ENC.decode(BlobType.DATA, blob_id, sealed, len(TEXT))


def test_unencrypted_zstd_bomb_is_corrupt() -> None:
    big = bytes(8 << 20)
    blob = PLAIN.encode(BlobType.DATA, big)
    assert len(blob.data) < 4096
    with pytest.raises(CorruptBlob):
        PLAIN.decode(BlobType.DATA, blob.id, blob.data, 1024)


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
@given(data=st.binary(max_size=3000), role=st.sampled_from(["pack-index", "record", "x"]))
def test_file_round_trip(codec: BlobCodec, data: bytes, role: str) -> None:
    stored = codec.encode_file(role, data)
    assert codec.decode_file(role, stored, len(data), "file") == data


def test_file_encrypted_uses_documented_aad() -> None:
    stored = ENC.encode_file("record", TEXT)
    frame = crypto.open_sealed(MASTER.encryption, stored, file_aad(REPO_ID, "record"), "x")
    assert Compressor().decompress(frame, len(TEXT)) == TEXT
    hand = crypto.seal(MASTER.encryption, Compressor().compress(TEXT), file_aad(REPO_ID, "record"))
    assert ENC.decode_file("record", hand, len(TEXT), "f") == TEXT


@pytest.mark.parametrize("role", ["pack-index", "pack-header", "recor", "record\x00", ""])
def test_file_role_binding(role: str) -> None:
    stored = ENC.encode_file("record", TEXT)
    with pytest.raises(CorruptMetadata, match="record file"):
        ENC.decode_file(role, stored, len(TEXT), "record file")


def test_file_repository_binding() -> None:
    stored = ENC.encode_file("record", TEXT)
    other = BlobCodec(RepoConfig(repo_id=bytes(32), encrypted=True), MASTER)
    with pytest.raises(CorruptMetadata):
        other.decode_file("record", stored, len(TEXT), "record")


@pytest.mark.parametrize("codec", CODECS)
def test_file_max_length(codec: BlobCodec) -> None:
    for data in (TEXT, NOISE):
        stored = codec.encode_file("record", data)
        assert codec.decode_file("record", stored, len(data), "f") == data
        with pytest.raises(CorruptMetadata):
            codec.decode_file("record", stored, len(data) - 1, "f")


@pytest.mark.parametrize("codec", CODECS)
def test_file_framing_damage_is_corrupt_metadata(codec: BlobCodec) -> None:
    stored = codec.encode_file("record", TEXT)
    for damaged in (b"", stored[:1], stored[:-1], flip(stored, 0, 1)):
        with pytest.raises(CorruptMetadata):
            codec.decode_file("record", damaged, 10 * len(TEXT), "f")


def test_encrypted_file_every_bit_flip_is_corrupt_metadata() -> None:
    """Unencrypted files are checked by their content id elsewhere; encrypted ones by the AEAD."""
    stored = ENC.encode_file("record", TEXT[:200])
    for pos in range(len(stored)):
        for bit in range(8):
            with pytest.raises(CorruptMetadata):
                ENC.decode_file("record", flip(stored, pos, bit), 1000, "f")


@pytest.mark.parametrize("codec", CODECS)
@given(st.binary(max_size=200))
def test_file_garbage_is_corrupt_metadata(codec: BlobCodec, data: bytes) -> None:
    try:
        out = codec.decode_file("record", data, 1000, "f")
    except CorruptMetadata:
        return
    assert codec is PLAIN and len(out) <= 1000


def test_unencrypted_file_is_frame() -> None:
    assert PLAIN.encode_file("record", NOISE) == bytes([RAW]) + NOISE
