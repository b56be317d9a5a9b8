"""The contract suite every backend must pass (restic's ``internal/backend/test``).

Each test method checks one promise of :mod:`chunkstore.backends.base`. To run the suite against a
backend, subclass :class:`BackendContract` in a ``Test*`` class and provide a ``backend`` fixture
that yields a fresh, created, empty backend::

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def backend(self, tmp_path: Path) -> Iterator[Backend]:
            b = MyBackend(tmp_path)
            b.create()
            yield b
            b.close()

The base class's name does not start with ``Test``, so pytest collects only the subclasses.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from chunkstore.backends.base import Backend, FileInfo, FileType, Handle
from chunkstore.errors import NotFound, ShortRead, UsageError

__all__ = ["BackendContract", "handle_for", "payload"]

_NAMED_TYPES = [t for t in FileType if t is not FileType.CONFIG]


def handle_for(file_type: FileType, seed: str | bytes) -> Handle:
    """A valid handle of ``file_type`` whose name is derived from ``seed``."""
    if file_type is FileType.CONFIG:
        return Handle.config()
    raw = seed.encode() if isinstance(seed, str) else seed
    return Handle(file_type, hashlib.sha256(raw).hexdigest())


def payload(seed: str, size: int) -> bytes:
    """``size`` deterministic pseudo-random bytes derived from ``seed``."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def _key(info: FileInfo) -> Handle:
    """Sort key for listings."""
    return info.handle


def _listed(backend: Backend, file_type: FileType) -> list[FileInfo]:
    """The listing of ``file_type`` as a list, in a stable order."""
    return sorted(backend.list(file_type), key=_key)


class BackendContract:
    """Contract tests; subclasses supply the ``backend`` fixture (fresh, created, empty)."""

    # -- save and load -------------------------------------------------------------------------

    def test_location_is_a_nonempty_string(self, backend: Backend) -> None:
        assert isinstance(backend.location, str)
        assert backend.location

    def test_create_is_idempotent(self, backend: Backend) -> None:
        h = handle_for(FileType.KEY, "k")
        backend.save(h, b"key")
        backend.create()
        assert backend.load(h) == b"key"

    def test_new_backend_is_empty(self, backend: Backend) -> None:
        for file_type in FileType:
            assert list(backend.list(file_type)) == []

    @pytest.mark.parametrize("file_type", list(FileType))
    def test_save_load_round_trip(self, backend: Backend, file_type: FileType) -> None:
        h = handle_for(file_type, "round trip")
        data = payload("round trip", 1000)
        backend.save(h, data)
        loaded = backend.load(h)
        assert isinstance(loaded, bytes)
        assert loaded == data
        assert backend.exists(h)
        assert backend.stat(h) == FileInfo(h, len(data))

    def test_ranged_load(self, backend: Backend) -> None:
        h = handle_for(FileType.PACK, "ranged")
        data = payload("ranged", 4096 + 17)
        backend.save(h, data)
        for offset in (0, 1, 17, 4095, 4096, len(data) - 1, len(data)):
            for length in (0, 1, 2, 100, 4096):
                if offset + length <= len(data):
                    assert backend.load(h, offset, length) == data[offset : offset + length]
            assert backend.load(h, offset) == data[offset:]
            assert backend.load(h, offset, None) == data[offset:]

    def test_load_returns_exactly_length_bytes(self, backend: Backend) -> None:
        h = handle_for(FileType.PACK, "exact")
        data = payload("exact", 3 * 65536 + 5)
        backend.save(h, data)
        got = backend.load(h, 65536, 2 * 65536 + 5)
        assert len(got) == 2 * 65536 + 5
        assert got == data[65536:]
        assert backend.load(h, len(data), 0) == b""

    def test_load_past_end_is_short_read(self, backend: Backend) -> None:
        h = handle_for(FileType.PACK, "short")
        backend.save(h, b"0123456789")
        with pytest.raises(ShortRead):
            backend.load(h, 0, 11)
        with pytest.raises(ShortRead):
            backend.load(h, 5, 6)
        with pytest.raises(ShortRead):
            backend.load(h, 11)
        with pytest.raises(ShortRead):
            backend.load(h, 11, 0)

    def test_short_read_message_names_the_file_and_sizes(self, backend: Backend) -> None:
        h = handle_for(FileType.INDEX, "short message")
        backend.save(h, b"x" * 1000)
        with pytest.raises(ShortRead) as info:
            backend.load(h, 400, 777)
        message = str(info.value)
        assert h.name in message
        rest = message.replace(h.name, "")
        assert "777" in rest, "the wanted size is missing"
        assert "600" in rest, "the available size is missing"

    def test_negative_offset_or_length_is_usage_error(self, backend: Backend) -> None:
        h = handle_for(FileType.PACK, "negative")
        backend.save(h, b"abc")
        with pytest.raises(UsageError):
            backend.load(h, -1)
        with pytest.raises(UsageError):
            backend.load(h, 0, -1)

    def test_empty_file(self, backend: Backend) -> None:
        h = handle_for(FileType.RECORD, "empty")
        backend.save(h, b"")
        assert backend.load(h) == b""
        assert backend.load(h, 0, 0) == b""
        assert backend.stat(h).size == 0
        assert _listed(backend, FileType.RECORD) == [FileInfo(h, 0)]
        with pytest.raises(ShortRead):
            backend.load(h, 0, 1)

    def test_large_file_round_trip(self, backend: Backend) -> None:
        h = handle_for(FileType.PACK, "large")
        data = os.urandom(20 * 1024 * 1024 + 3)
        backend.save(h, data)
        assert backend.stat(h).size == len(data)
        assert backend.load(h) == data
        tail = len(data) - 1024 * 1024 - 1
        assert backend.load(h, tail, 1024 * 1024 + 1) == data[tail:]
        assert backend.load(h, 12345, 7 * 1024 * 1024) == data[12345 : 12345 + 7 * 1024 * 1024]

    # -- missing files -------------------------------------------------------------------------

    @pytest.mark.parametrize("file_type", list(FileType))
    def test_missing_file(self, backend: Backend, file_type: FileType) -> None:
        h = handle_for(file_type, "missing")
        assert not backend.exists(h)
        with pytest.raises(NotFound):
            backend.load(h)
        with pytest.raises(NotFound):
            backend.load(h, 0, 0)
        with pytest.raises(NotFound):
            backend.stat(h)
        with pytest.raises(NotFound):
            backend.remove(h)

    def test_remove(self, backend: Backend) -> None:
        h = handle_for(FileType.LOCK, "remove")
        backend.save(h, b"lock")
        backend.remove(h)
        assert not backend.exists(h)
        assert list(backend.list(FileType.LOCK)) == []
        with pytest.raises(NotFound):
            backend.load(h)
        with pytest.raises(NotFound):
            backend.remove(h)
        backend.save(h, b"again")
        assert backend.load(h) == b"again"

    # -- listing -------------------------------------------------------------------------------

    def test_list_each_file_once_and_types_apart(self, backend: Backend) -> None:
        expected: dict[FileType, list[FileInfo]] = {}
        for file_type in FileType:
            count = 1 if file_type is FileType.CONFIG else 7
            infos = []
            for i in range(count):
                h = handle_for(file_type, f"{file_type.value}-{i}")
                data = payload(h.name, 10 + i)
                backend.save(h, data)
                infos.append(FileInfo(h, len(data)))
            expected[file_type] = sorted(infos, key=_key)
        for file_type in FileType:
            listed = list(backend.list(file_type))
            assert len(listed) == len({info.handle for info in listed}), "listed twice"
            assert sorted(listed, key=_key) == expected[file_type]

    def test_same_name_in_different_types_are_different_files(self, backend: Backend) -> None:
        name = hashlib.sha256(b"shared").hexdigest()
        for i, file_type in enumerate(_NAMED_TYPES):
            backend.save(Handle(file_type, name), bytes([i]) * (i + 1))
        for i, file_type in enumerate(_NAMED_TYPES):
            assert backend.load(Handle(file_type, name)) == bytes([i]) * (i + 1)
            assert _listed(backend, file_type) == [FileInfo(Handle(file_type, name), i + 1)]
        backend.remove(Handle(FileType.INDEX, name))
        assert backend.exists(Handle(FileType.PACK, name))
        assert not backend.exists(Handle(FileType.INDEX, name))

    def test_list_packs_across_prefixes(self, backend: Backend) -> None:
        handles = {Handle(FileType.PACK, f"{i:02x}" + "0" * 62) for i in range(0, 256, 15)}
        handles |= {Handle(FileType.PACK, f"{i:02x}" + "f" * 62) for i in range(0, 256, 15)}
        for h in handles:
            backend.save(h, h.name.encode())
        listed = list(backend.list(FileType.PACK))
        assert len(listed) == len(handles)
        assert {info.handle for info in listed} == handles
        assert all(info.size == 64 for info in listed)

    # -- overwriting ---------------------------------------------------------------------------

    def test_saving_identical_bytes_again_is_harmless(self, backend: Backend) -> None:
        h = handle_for(FileType.PACK, "idempotent")
        data = payload("idempotent", 5000)
        backend.save(h, data)
        backend.save(h, data)
        backend.save(h, bytes(data))
        assert backend.load(h) == data
        assert _listed(backend, FileType.PACK) == [FileInfo(h, len(data))]

    @pytest.mark.parametrize("other", [b"different bytes, same size!!", b"shorter", b""])
    def test_saving_different_bytes_is_refused(self, backend: Backend, other: bytes) -> None:
        h = handle_for(FileType.INDEX, "refuse")
        original = b"the original index file bytes"
        backend.save(h, original)
        with pytest.raises(UsageError):
            backend.save(h, other)
        assert backend.load(h) == original
        assert _listed(backend, FileType.INDEX) == [FileInfo(h, len(original))]

    def test_same_size_different_bytes_is_refused(self, backend: Backend) -> None:
        h = handle_for(FileType.PACK, "same size")
        data = payload("same size", 3 * 1024 * 1024)
        backend.save(h, data)
        changed = data[:-1] + bytes([data[-1] ^ 1])
        with pytest.raises(UsageError):
            backend.save(h, changed)
        assert backend.load(h) == data

    def test_overwrite_replaces(self, backend: Backend) -> None:
        h = handle_for(FileType.LOCK, "refresh")
        backend.save(h, b"first lock contents")
        backend.save(h, b"second", overwrite=True)
        assert backend.load(h) == b"second"
        assert _listed(backend, FileType.LOCK) == [FileInfo(h, 6)]
        backend.save(h, b"second", overwrite=True)
        assert backend.load(h) == b"second"

    def test_overwrite_of_missing_file_creates_it(self, backend: Backend) -> None:
        h = handle_for(FileType.LOCK, "fresh")
        backend.save(h, b"lock", overwrite=True)
        assert backend.load(h) == b"lock"

    # -- config --------------------------------------------------------------------------------

    def test_config_handle(self, backend: Backend) -> None:
        h = Handle.config()
        assert h == handle_for(FileType.CONFIG, "anything")
        assert not backend.exists(h)
        backend.save(h, b"config v1")
        assert backend.exists(h)
        assert backend.load(h) == b"config v1"
        assert backend.load(h, 7) == b"v1"
        assert list(backend.list(FileType.CONFIG)) == [FileInfo(h, 9)]
        with pytest.raises(UsageError):
            backend.save(h, b"config v2")
        for file_type in _NAMED_TYPES:
            assert list(backend.list(file_type)) == []
        backend.remove(h)
        assert list(backend.list(FileType.CONFIG)) == []

    # -- concurrency ---------------------------------------------------------------------------

    def test_concurrent_saves_of_distinct_files(self, backend: Backend) -> None:
        files = {handle_for(FileType.PACK, f"c{i}"): payload(f"c{i}", 1000 + i) for i in range(64)}
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda item: backend.save(*item), files.items()))
        listed = _listed(backend, FileType.PACK)
        assert listed == sorted((FileInfo(h, len(d)) for h, d in files.items()), key=_key)
        for h, data in files.items():
            assert backend.load(h) == data

    def test_concurrent_saves_of_the_same_file(self, backend: Backend) -> None:
        h = handle_for(FileType.PACK, "racing")
        data = payload("racing", 100_000)
        barrier = threading.Barrier(8)

        def save() -> None:
            barrier.wait()
            backend.save(h, data)

        with ThreadPoolExecutor(max_workers=8) as pool:
            for future in [pool.submit(save) for _ in range(8)]:
                future.result()
        assert backend.load(h) == data
        assert _listed(backend, FileType.PACK) == [FileInfo(h, len(data))]
