"""The registry backend against Debian's real ``docker-registry``: the backend contract suite,
the on-registry layout (tags, manifests, media types), and what a crash leaves behind."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator

import pytest

from chunkstore.backends.base import Backend, FileType, Handle
from chunkstore.backends.registry import (
    ARTIFACT_TYPE,
    FILE_ANNOTATION,
    RegistryBackend,
    file_media_type,
    file_tag,
)
from chunkstore.errors import CorruptMetadata, NotFound, RegistryError
from chunkstore.registry.client import RegistryClient
from chunkstore.testing.backend_suite import BackendContract, handle_for, payload
from chunkstore.testing.http_faults import FaultProxy
from index.ids import Digest
from tests.integration.registry_fixture import RunningRegistry

pytestmark = pytest.mark.integration

_names = itertools.count()


_open_clients: list[RegistryClient] = []


def _client(registry: RunningRegistry, name: str) -> RegistryClient:
    return _client_at(registry.host, name)


def _client_at(host: str, name: str) -> RegistryClient:
    client = RegistryClient(host, name, plain_http=True, retries=1, backoff=0.01)
    _open_clients.append(client)
    return client


@pytest.fixture
def reg_backend(registry: RunningRegistry) -> Iterator[RegistryBackend]:
    b = RegistryBackend(_client(registry, f"backend/t{next(_names)}"))
    b.create()
    yield b
    while _open_clients:
        _open_clients.pop().close()


class TestRegistryBackendContract(BackendContract):
    @pytest.fixture
    def backend(self, reg_backend: RegistryBackend) -> Iterator[Backend]:
        yield reg_backend


def test_layout_is_one_tagged_oci_manifest_per_file(
    reg_backend: RegistryBackend, registry: RunningRegistry
) -> None:
    handle = handle_for(FileType.PACK, "layout")
    data = payload("layout", 70_000)
    reg_backend.save(handle, data)
    client = _client(registry, reg_backend._client.name)
    assert file_tag(handle) in client.list_tags()
    fetched = client.get_manifest(file_tag(handle))
    doc = json.loads(fetched.data)
    assert doc["artifactType"] == ARTIFACT_TYPE
    assert doc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    (layer,) = doc["layers"]
    assert layer["mediaType"] == file_media_type(FileType.PACK)
    assert layer["size"] == len(data)
    assert doc["annotations"][FILE_ANNOTATION] == f"data/{handle.name}"
    assert layer["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    # A second backend (another process) sees the file through the registry alone.
    other = RegistryBackend(client)
    assert other.load(handle, 100, 50) == data[100:150]
    assert [i.size for i in other.list(FileType.PACK)] == [len(data)]


def test_a_blob_without_its_tag_is_not_a_file(
    reg_backend: RegistryBackend, registry: RunningRegistry
) -> None:
    """A crash between the blob upload and the manifest push leaves no file (C1/C2)."""
    client = _client(registry, reg_backend._client.name)
    data = payload("orphan", 5000)
    client.put_blob(data, Digest("sha256", hashlib.sha256(data).digest()))
    handle = handle_for(FileType.INDEX, "orphan")
    assert not reg_backend.exists(handle)
    assert list(reg_backend.list(FileType.INDEX)) == []
    with pytest.raises(NotFound):
        reg_backend.load(handle)


def test_a_manifest_naming_another_file_is_rejected(
    reg_backend: RegistryBackend, registry: RunningRegistry
) -> None:
    """An evil registry (or a mixed-up copy) cannot serve file A's bytes under file B's tag."""
    a, b = handle_for(FileType.RECORD, "a"), handle_for(FileType.RECORD, "b")
    reg_backend.save(a, b"record a")
    client = _client(registry, reg_backend._client.name)
    manifest = client.get_manifest(file_tag(a))
    client.put_manifest(file_tag(b), manifest.data, manifest.media_type)
    fresh = RegistryBackend(_client(registry, reg_backend._client.name))
    with pytest.raises(CorruptMetadata, match="names another file"):
        fresh.load(b)


def test_upload_acknowledged_but_absent_is_not_tagged(
    reg_backend: RegistryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B8: the registry says it stored the blob but does not serve it: nothing is tagged."""
    monkeypatch.setattr(reg_backend._client, "head_blob", lambda digest: None)
    handle = handle_for(FileType.PACK, "ghost")
    with pytest.raises(RegistryError, match="nothing was tagged"):
        reg_backend.save(handle, payload("ghost", 1000))
    monkeypatch.undo()
    assert not reg_backend.exists(handle)


def test_config_and_locks_are_replaceable_and_never_stale(
    reg_backend: RegistryBackend, registry: RunningRegistry
) -> None:
    lock = handle_for(FileType.LOCK, "l")
    reg_backend.save(lock, b"v1")
    other = RegistryBackend(_client(registry, reg_backend._client.name))
    assert other.load(lock) == b"v1"
    reg_backend.save(lock, b"v2", overwrite=True)
    assert other.load(lock) == b"v2"
    reg_backend.save(Handle.config(), b"config bytes")
    assert [i.handle for i in other.list(FileType.CONFIG)] == [Handle.config()]


def test_content_named_files_are_read_without_their_manifest(
    reg_backend: RegistryBackend, registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack named by its SHA-256 (as a repository names it) costs one request, not two."""
    data = payload("content-named", 50_000)
    handle = Handle(FileType.PACK, hashlib.sha256(data).hexdigest())
    reg_backend.save(handle, data)
    fresh = RegistryBackend(_client(registry, reg_backend._client.name))

    def no_manifest(*args: object, **kwargs: object) -> object:
        raise AssertionError("the manifest was fetched")

    monkeypatch.setattr(fresh._client, "get_manifest", no_manifest)
    assert fresh.load(handle, 1000, 200) == data[1000:1200]
    assert fresh.load(handle) == data
    monkeypatch.undo()
    # A name that is not the content's digest still goes through the manifest.
    other = handle_for(FileType.PACK, "not content named")
    reg_backend.save(other, data)
    assert fresh.load(other, 10, 5) == data[10:15]


def test_saving_a_content_named_file_asks_for_no_manifest(registry: RunningRegistry) -> None:
    """A new pack: HEAD (with the POST), PUT, the confirming HEAD, the manifest; nothing more."""
    with FaultProxy(registry.host) as proxy:
        backend = RegistryBackend(_client_at(proxy.host, f"backend/t{next(_names)}"))
        backend.create()
        data = payload("requests", 20_000)
        handle = Handle(FileType.PACK, hashlib.sha256(data).hexdigest())
        before = len(proxy.seen)
        backend.save(handle, data)
        asked = [(s.method, s.target.split("/")[4]) for s in proxy.seen[before:]]
        blob = f"blobs/sha256:{handle.name}"
        assert sorted(asked[:2]) == [("HEAD", "blobs"), ("POST", "blobs")]
        assert asked[2:] == [("PUT", "blobs"), ("HEAD", "blobs"), ("PUT", "manifests")]
        assert [s.target for s in proxy.seen[before:] if s.method == "HEAD"] == [
            f"/v2/{backend._client.name}/{blob}"
        ] * 2
        backend.save(handle, data)  # known here: no request at all
        assert len(proxy.seen) == before + 5
        backend.close()
    fresh = RegistryBackend(_client(registry, backend._client.name))
    assert fresh.load(handle) == data


def test_own_lock_is_listed_read_and_removed_without_its_manifest(
    registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock this backend pushed: one tag listing (reused while it writes nothing), the DELETE."""
    import chunkstore.backends.registry as registry_module

    monkeypatch.setattr(registry_module, "_LIST_REUSE_S", 3600.0)  # no timing in the test
    with FaultProxy(registry.host) as proxy:
        backend = RegistryBackend(_client_at(proxy.host, f"backend/t{next(_names)}"))
        backend.create()
        lock = handle_for(FileType.LOCK, "mine")
        backend.save(lock, b"lock v1")
        before = len(proxy.seen)
        assert [i.handle for i in backend.list(FileType.LOCK)] == [lock]
        assert backend.load(lock) == b"lock v1"
        assert [i.size for i in backend.list(FileType.LOCK)] == [7]
        backend.remove(lock)
        asked = proxy.seen[before:]
        assert [s.method for s in asked] == ["GET", "DELETE"]
        assert asked[0].target.endswith("/tags/list") and "/manifests/sha256:" in asked[1].target
        assert list(backend.list(FileType.LOCK)) == []  # written since: listed again
        assert proxy.seen[-1].target.endswith("/tags/list")
        backend.close()
    fresh = RegistryBackend(_client(registry, backend._client.name))
    assert not fresh.exists(lock)
