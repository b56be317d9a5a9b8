"""RegistryClient against Debian's real ``docker-registry`` (distribution 2.8) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import threading

import httpx
import pytest

from chunkstore.errors import AuthError, RegistryObjectMissing
from chunkstore.registry import Credentials, RegistryAuth, RegistryClient
from chunkstore.registry.mediatypes import OCI_MANIFEST
from index.ids import sha256
from tests.integration.registry_fixture import RunningRegistry

pytestmark = pytest.mark.integration

DATA = bytes(range(256)) * 4096  # 1 MiB


def client_for(reg: RunningRegistry, name: str, **kw: object) -> RegistryClient:
    return RegistryClient(reg.host, name, plain_http=True, **kw)  # type: ignore[arg-type]


def test_ping(registry: RunningRegistry) -> None:
    with client_for(registry, "ping/x") as client:
        client.ping()


def test_blob_round_trips(registry: RunningRegistry) -> None:
    with client_for(registry, "it/blobs") as client:
        small = client.put_blob(b"hello, registry")
        assert client.head_blob(small) == 15
        assert client.get_blob(small, 15) == b"hello, registry"
        digest = sha256(DATA)
        pieces = [DATA[i : i + 100_000] for i in range(0, len(DATA), 100_000)]
        assert client.head_blob(digest) is None
        assert client.put_blob_stream(pieces, digest, len(DATA), chunk_size=300_000) == digest
        assert client.head_blob(digest) == len(DATA)
        assert client.get_blob(digest, len(DATA)) == DATA
        assert b"".join(client.iter_blob(digest, len(DATA))) == DATA
        assert (
            client.get_blob_range(digest, 123_456, 1000, blob_size=len(DATA))
            == (DATA[123_456:124_456])
        )
        client.delete_blob(small)
        assert client.head_blob(small) is None


class DropSecondPatchAnswer(httpx.BaseTransport):
    """Lets the second PATCH reach the registry, then loses its answer (a reset)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.patches = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "PATCH":
            self.patches += 1
            if self.patches == 2:
                response.read()
                response.close()
                raise httpx.ReadError("connection reset by peer")
        return response

    def close(self) -> None:
        self.inner.close()


def test_chunked_upload_survives_a_lost_answer(registry: RunningRegistry) -> None:
    data = DATA[::-1]
    digest = sha256(data)
    transport = DropSecondPatchAnswer()
    with client_for(registry, "it/resume", transport=transport, backoff=0.0) as client:
        pieces = [data[i : i + 200_000] for i in range(0, len(data), 200_000)]
        assert client.put_blob_stream(pieces, digest, len(data), chunk_size=250_000) == digest
        assert client.get_blob(digest, len(data)) == data
    assert transport.patches > 5


def test_cross_repository_mount(registry: RunningRegistry) -> None:
    data = b"shared layer" * 1000
    with client_for(registry, "it/mount-src") as src, client_for(registry, "it/mount-dst") as dst:
        digest = src.put_blob(data)
        assert dst.head_blob(digest) is None
        assert dst.mount_blob(digest, "it/mount-src") is True
        assert dst.get_blob(digest) == data
        assert dst.mount_blob(sha256(b"never uploaded"), "it/mount-src") is False


def artifact_manifest(client: RegistryClient, payload: bytes) -> bytes:
    config = client.put_blob(b"{}")
    layer = client.put_blob(payload)
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.chunkstore.test.v1",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": str(config),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.chunkstore.pack.v1",
                    "digest": str(layer),
                    "size": len(payload),
                }
            ],
        }
    ).encode()


def test_manifest_put_get_delete(registry: RunningRegistry) -> None:
    with client_for(registry, "it/manifests") as client:
        manifest = artifact_manifest(client, b"pack bytes")
        digest = client.put_manifest("v1", manifest, OCI_MANIFEST)
        assert digest == sha256(manifest)
        assert client.get_manifest("v1") == (OCI_MANIFEST, manifest, digest)
        assert client.get_manifest(digest).data == manifest
        client.delete_manifest(digest)
        with pytest.raises(RegistryObjectMissing, match="MANIFEST_UNKNOWN"):
            client.get_manifest(digest)


def test_tag_pagination(registry: RunningRegistry) -> None:
    with client_for(registry, "it/tags") as client:
        manifest = artifact_manifest(client, b"tagged")
        names = [f"t{i}" for i in range(5)]
        for tag in names:
            client.put_manifest(tag, manifest, OCI_MANIFEST)
        assert sorted(client.list_tags(page_size=2)) == names
        assert sorted(client.list_tags()) == names


def test_basic_auth(auth_registry: RunningRegistry) -> None:
    assert auth_registry.user is not None and auth_registry.password is not None
    good = RegistryAuth(Credentials(auth_registry.user, auth_registry.password))
    with client_for(auth_registry, "it/private", auth=good) as client:
        client.ping()
        digest = client.put_blob(b"private")
        assert client.get_blob(digest) == b"private"
    wrong_password = "not-the-password-42"
    bad = RegistryAuth(Credentials(auth_registry.user, wrong_password))
    with client_for(auth_registry, "it/private", auth=bad) as client:
        with pytest.raises(AuthError, match="check the user name and password") as info:
            client.head_blob(digest)
    assert wrong_password not in str(info.value)
    with client_for(auth_registry, "it/private") as client:
        with pytest.raises(AuthError, match="CHUNKSTORE_REGISTRY_USER"):
            client.ping()


def small_image_layer() -> tuple[bytes, str]:
    """A gzip'd tar with one file, and the diff_id (sha256 of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        content = b"hello from chunkstore\n"
        info = tarfile.TarInfo("etc/hello.txt")
        info.size, info.mode, info.mtime = len(content), 0o644, 0
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_inspects_a_pushed_image(registry: RunningRegistry) -> None:
    layer, diff_id = small_image_layer()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    with client_for(registry, "it/image") as client:
        layer_digest = client.put_blob(layer)
        config_digest = client.put_blob(config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": str(config_digest),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": str(layer_digest),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        digest = client.put_manifest("v1", manifest, OCI_MANIFEST)
    done = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--tls-verify=false",
            f"docker://{registry.host}/it/image:v1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["Digest"] == str(digest)
    assert info["Layers"] == [str(layer_digest)]
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"


class _ConnectionCounter:
    """A TCP forwarder to the registry that counts the connections clients open through it."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._listen = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._listen.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listen.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(self._upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listen.close()


def test_one_connection_carries_requests_whose_answers_are_not_read(
    registry: RunningRegistry,
) -> None:
    """HEAD, POST and PUT answers (and 404s) are read to their end: the connection is reused."""
    counter = _ConnectionCounter(registry.host)
    try:
        with RegistryClient(counter.host, "it/reuse", plain_http=True) as client:
            client.ping()
            digest = client.put_blob(b"reused connection" * 100)  # HEAD 404, POST, PUT
            assert client.head_blob(digest) == 1700
            assert client.head_blob(sha256(b"absent")) is None
            session = client.open_upload()
            client.put_blob(b"second blob", session=session)
            with pytest.raises(RegistryObjectMissing):
                client.get_manifest("absent")
            assert client.get_blob(digest) == b"reused connection" * 100
        assert counter.connections == 1
    finally:
        counter.close()
