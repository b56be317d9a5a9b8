"""Registry faults and wrong answers (reliability.md B1-B14, A2/A3 over HTTP, C7, H1/H3/H7).

Every test talks to the real registry (Debian's ``docker-registry``) through
:class:`chunkstore.testing.http_faults.FaultProxy`, which forwards each request and misbehaves as
the test scripts it: another blob's bytes, 5xx, resets after N bytes, a dripping or silent server,
an ignored ``Range``, a wrong ``Content-Range``, a redirect to another host. The code under test is
chunkstore's own ``RegistryClient``, ``RegistryBackend`` and ``Repository``; the registry behind
the proxy is never modified except through the API, so what the tests assert afterwards (the blob
is whole, nothing was tagged, ``check`` is clean) is what a real registry holds.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.backends.base import FileType, Handle
from chunkstore.backends.registry import RegistryBackend
from chunkstore.chunker import ChunkerParams
from chunkstore.errors import (
    ChunkstoreError,
    DigestMismatch,
    ManifestTooLarge,
    RegistryError,
    RegistryUnavailable,
    SizeMismatch,
)
from chunkstore.registry.auth import Credentials, RegistryAuth
from chunkstore.registry.client import RegistryClient
from chunkstore.registry.mediatypes import OCI_MANIFEST
from chunkstore.repository import Repository
from chunkstore.testing.http_faults import (
    Drip,
    DropRequestHeaders,
    ExpireTokens,
    FaultProxy,
    LoseAnswer,
    PartialUpload,
    Redirect,
    ReplaceBody,
    ResetAfter,
    Respond,
    SetHeaders,
    Silence,
)
from index.ids import Digest, sha256
from tests.integration.registry_fixture import RunningRegistry

pytestmark = pytest.mark.integration

_names = itertools.count()
PARAMS = ChunkerParams(1024, 4096, 16384)
PAYLOAD = random.Random(7).randbytes(120_000)
OTHER = random.Random(8).randbytes(120_000)
BLOBS = r"/blobs/sha256:"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"


def new_name() -> str:
    return f"reliability/faults{next(_names)}-{random.getrandbits(32):08x}"


def client(host: str, name: str, **kwargs: object) -> RegistryClient:
    """A client with fast retries, so that the fault tests stay quick."""
    options: dict[str, object] = {
        "plain_http": True,
        "backoff": 0.01,
        "max_backoff": 0.05,
        "retries": 3,
        "timeout": 5.0,
        "deadline": 30.0,
    }
    options.update(kwargs)
    return RegistryClient(host, name, **options)  # type: ignore[arg-type]


@pytest.fixture
def proxy(registry: RunningRegistry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as p:
        yield p


@pytest.fixture
def seeded(registry: RunningRegistry) -> tuple[str, Digest, Digest]:
    """A fresh registry repository holding PAYLOAD and OTHER as blobs."""
    name = new_name()
    with client(registry.host, name) as direct:
        return name, direct.put_blob(PAYLOAD), direct.put_blob(OTHER)


def blob_gets(p: FaultProxy, digest: Digest) -> int:
    return sum(1 for s in p.seen if s.method == "GET" and s.target.endswith(f"/blobs/{digest}"))


# -- B1-B5: wrong answers to GET ------------------------------------------------------------------


def test_b1_another_blobs_bytes_is_digest_mismatch_after_bounded_retries(
    proxy: FaultProxy, seeded: tuple[str, Digest, Digest]
) -> None:
    name, digest, _ = seeded
    proxy.on("GET", BLOBS, ReplaceBody(OTHER))
    with client(proxy.host, name) as c, pytest.raises(DigestMismatch, match="hashes to"):
        c.get_blob(digest)
    assert blob_gets(proxy, digest) == 2  # one re-fetch, then the error: bounded
    proxy.clear()
    with client(proxy.host, name) as c:
        assert c.get_blob(digest) == PAYLOAD


def test_a2_bit_flipped_once_then_good_bytes_succeeds_with_a_warning(
    proxy: FaultProxy, seeded: tuple[str, Digest, Digest], caplog: pytest.LogCaptureFixture
) -> None:
    name, digest, _ = seeded
    flipped = bytearray(PAYLOAD)
    flipped[5000] ^= 0x10
    proxy.on("GET", BLOBS, ReplaceBody(bytes(flipped)), times=1)
    with caplog.at_level(logging.WARNING), client(proxy.host, name) as c:
        assert c.get_blob(digest, len(PAYLOAD)) == PAYLOAD
    assert blob_gets(proxy, digest) == 2  # exactly one retry
    assert any("fetching again" in r.getMessage() for r in caplog.records)


def test_a3_truncated_download_is_an_integrity_error(
    proxy: FaultProxy, seeded: tuple[str, Digest, Digest]
) -> None:
    name, digest, _ = seeded
    proxy.on("GET", BLOBS, ReplaceBody(PAYLOAD[:8]))
    with client(proxy.host, name) as c, pytest.raises(SizeMismatch):
        c.get_blob(digest, len(PAYLOAD))
    with client(proxy.host, name) as c, pytest.raises(DigestMismatch):
        c.get_blob(digest)  # no size known: the hash still refuses it


def test_b2_manifest_by_digest_answered_with_another_manifest(
    proxy: FaultProxy, registry: RunningRegistry
) -> None:
    name = new_name()
    with client(registry.host, name) as direct:
        empty = direct.put_blob(b"{}")
        blob = direct.put_blob(PAYLOAD)

        def manifest(layer: Digest, size: int) -> bytes:
            return json.dumps(
                {
                    "config": {"digest": str(empty), "mediaType": EMPTY_TYPE, "size": 2},
                    "layers": [
                        {
                            "digest": str(layer),
                            "mediaType": "application/octet-stream",
                            "size": size,
                        }
                    ],
                    "mediaType": OCI_MANIFEST,
                    "schemaVersion": 2,
                },
                sort_keys=True,
            ).encode()

        good, evil = manifest(blob, len(PAYLOAD)), manifest(empty, 2)
        good_digest = direct.put_manifest("good", good, OCI_MANIFEST)
        direct.put_manifest("evil", evil, OCI_MANIFEST)
    proxy.on("GET", r"/manifests/sha256:", ReplaceBody(evil))
    with client(proxy.host, name) as c, pytest.raises(DigestMismatch, match="manifest hashes to"):
        c.get_manifest(good_digest)
    proxy.clear()
    with client(proxy.host, name) as c:
        assert c.get_manifest(good_digest).data == good


def test_b3_docker_content_digest_header_is_never_trusted(
    proxy: FaultProxy, seeded: tuple[str, Digest, Digest]
) -> None:
    name, digest, other = seeded
    proxy.on(None, BLOBS, SetHeaders({"Docker-Content-Digest": str(other)}))
    with client(proxy.host, name) as c:
        with pytest.raises(DigestMismatch, match="Docker-Content-Digest"):
            c.get_blob(digest)
        with pytest.raises(DigestMismatch, match="Docker-Content-Digest"):
            c.head_blob(digest)


def test_b4_html_page_with_200_is_refused(
    proxy: FaultProxy, seeded: tuple[str, Digest, Digest]
) -> None:
    name, digest, _ = seeded
    html = b"<html><body>Please log in to the captive portal</body></html>"
    proxy.on("GET", BLOBS, ReplaceBody(html, content_type="text/html"))
    with client(proxy.host, name) as c:
        with pytest.raises(SizeMismatch):
            c.get_blob(digest, len(PAYLOAD))
        with pytest.raises(DigestMismatch):
            c.get_blob(digest)


@pytest.mark.parametrize("delta", [-1, +1], ids=["short", "extra"])
def test_b5_length_other_than_the_descriptor_is_size_mismatch(
    delta: int, proxy: FaultProxy, seeded: tuple[str, Digest, Digest]
) -> None:
    name, digest, _ = seeded
    body = PAYLOAD[:-1] if delta < 0 else PAYLOAD + b"\0"
    proxy.on("GET", BLOBS, ReplaceBody(body))
    with client(proxy.host, name) as c, pytest.raises(SizeMismatch):
        c.get_blob(digest, len(PAYLOAD))


def test_b5_body_shorter_than_its_content_length_is_an_error(
    proxy: FaultProxy, seeded: tuple[str, Digest, Digest]
) -> None:
    name, digest, _ = seeded
    # Announces the right length, then the connection dies: every attempt resumes and dies again.
    proxy.on("GET", BLOBS, ResetAfter(1000))
    with client(proxy.host, name, retries=2) as c, pytest.raises(ChunkstoreError):
        c.get_blob(digest, len(PAYLOAD))


def test_reset_once_during_download_resumes_with_range(
    proxy: FaultProxy, seeded: tuple[str, Digest, Digest]
) -> None:
    name, digest, _ = seeded
    proxy.on("GET", BLOBS, ResetAfter(50_000), times=1)
    with client(proxy.host, name) as c:
        assert c.get_blob(digest, len(PAYLOAD)) == PAYLOAD
    ranges = [s.headers.get("range") for s in proxy.seen if s.method == "GET"]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")


# -- B6, B7, B8, B13, B14: uploads -----------------------------------------------------------------


def test_b6_5xx_on_blob_and_manifest_put_is_retried(
    proxy: FaultProxy, registry: RunningRegistry
) -> None:
    name = new_name()
    data = random.Random(61).randbytes(5000)
    proxy.on("PUT", r"/blobs/uploads/", Respond(503), times=2)
    proxy.on("PUT", r"/manifests/", Respond(502), times=2)
    proxy.on("POST", r"/blobs/uploads/", Respond(500), times=1)
    with client(proxy.host, name) as c:
        digest = c.put_blob(data)
        empty = c.put_blob(b"{}")
        doc = json.dumps(
            {
                "config": {"digest": str(empty), "mediaType": EMPTY_TYPE, "size": 2},
                "layers": [],
                "mediaType": OCI_MANIFEST,
                "schemaVersion": 2,
            }
        ).encode()
        c.put_manifest("t", doc, OCI_MANIFEST)
    with client(registry.host, name) as direct:
        assert direct.get_blob(digest, len(data)) == data
        assert direct.get_manifest("t").data == doc


def _registry_repo(host: str, name: str, cache: Path, *, init: bool) -> Repository:
    backend = RegistryBackend(client(host, name))
    if init:
        return Repository.init(backend, cache_dir=cache, chunker=PARAMS, pack_size=64 << 10)
    return Repository.open(backend, cache_dir=cache)


def test_b6_exhausted_retries_leave_no_index_referencing_the_pack(
    proxy: FaultProxy, registry: RunningRegistry, tmp_path: Path
) -> None:
    name = new_name()
    with _registry_repo(proxy.host, name, tmp_path / "c0", init=True) as repo:
        api.put(repo, "base", io.BytesIO(PAYLOAD))
        proxy.on("PUT", r"/manifests/_cs\.index\.", Respond(500))
        with pytest.raises(RegistryUnavailable, match="gave up"):
            api.put(repo, "new", io.BytesIO(OTHER))
    # Without the proxy: the record is absent, packs are unindexed orphans, nothing is missing.
    with _registry_repo(registry.host, name, tmp_path / "c1", init=False) as repo:
        from chunkstore.lock import remove_all_locks

        remove_all_locks(repo.backend)
        assert [r["name"] for r in api.list_records(repo)] == ["base"]
        report = api.check(repo, read_data=True)
        assert report.ok, report.errors
        assert report.warnings and all("not in any index" in w for w in report.warnings)
        api.put(repo, "new", io.BytesIO(OTHER))
        api.prune(repo)
        report = api.check(repo, read_data=True)
        assert report.ok and report.warnings == []


def test_b7_monolithic_upload_cut_in_the_middle_is_restarted(
    proxy: FaultProxy, registry: RunningRegistry
) -> None:
    name = new_name()
    data = random.Random(71).randbytes(200_000)
    proxy.on("PUT", r"/blobs/uploads/.*digest=", PartialUpload(70_000), times=1)
    with client(proxy.host, name) as c:
        digest = c.put_blob(data)
    with client(registry.host, name) as direct:
        assert direct.head_blob(digest) == len(data)
        assert direct.get_blob(digest, len(data)) == data


def test_b7_chunked_upload_reset_mid_patch_resumes_from_the_registry_offset(
    proxy: FaultProxy, registry: RunningRegistry
) -> None:
    name = new_name()
    data = random.Random(72).randbytes(300_000)
    digest = sha256(data)
    proxy.on("PATCH", r"/blobs/uploads/", PartialUpload(10_000), times=1)
    with client(proxy.host, name) as c:
        c.put_blob_stream(
            [data[i : i + 65536] for i in range(0, len(data), 65536)],
            digest,
            len(data),
            chunk_size=100_000,
        )
    statuses = [s for s in proxy.seen if s.method == "GET" and "/blobs/uploads/" in s.target]
    assert statuses  # it asked the session where it stood
    with client(registry.host, name) as direct:
        assert direct.get_blob(digest, len(data)) == data


def test_b7_lost_answer_to_the_final_put_is_not_uploaded_twice(
    proxy: FaultProxy, registry: RunningRegistry
) -> None:
    name = new_name()
    data = random.Random(73).randbytes(30_000)
    proxy.on("PUT", r"/blobs/uploads/.*digest=", LoseAnswer(), times=1)
    with client(proxy.host, name) as c:
        digest = c.put_blob(data)
    puts = [s for s in proxy.seen if s.method == "PUT"]
    assert len(puts) == 1  # the retry found the blob with HEAD
    with client(registry.host, name) as direct:
        assert direct.get_blob(digest, len(data)) == data


def test_b8_upload_acknowledged_but_absent_on_head_is_never_tagged(
    proxy: FaultProxy, registry: RunningRegistry
) -> None:
    name = new_name()
    data = random.Random(81).randbytes(4000)
    handle = Handle(FileType.PACK, sha256(data).hex)
    backend = RegistryBackend(client(proxy.host, name))
    backend.create()
    proxy.on("HEAD", f"/blobs/{sha256(data)}", Respond(404))
    with pytest.raises(RegistryError, match="nothing was tagged"):
        backend.save(handle, data)
    backend.close()
    fresh = RegistryBackend(client(registry.host, name))
    assert not fresh.exists(handle)  # no tag (the registry may not even know the name)
    assert handle not in [i.handle for i in fresh.list(FileType.PACK)]
    fresh.close()


def test_b8_head_answering_500_while_the_registry_settles_is_asked_again(
    proxy: FaultProxy, registry: RunningRegistry
) -> None:
    # Concurrent commits of one blob make distribution answer HEAD 500 for a moment: more 500s
    # than the client's own retries (1 here) must not fail a save whose blob the registry holds.
    name = new_name()
    data = random.Random(82).randbytes(4000)
    handle = Handle(FileType.PACK, sha256(data).hex)
    backend = RegistryBackend(client(proxy.host, name, retries=1))
    backend.create()
    proxy.on("HEAD", f"/blobs/{sha256(data)}", Respond(404), times=1)  # before the upload
    rule = proxy.on("HEAD", f"/blobs/{sha256(data)}", Respond(500), times=3)
    backend.save(handle, data)
    assert rule.hits == 3
    backend.close()
    fresh = RegistryBackend(client(registry.host, name))
    assert fresh.load(handle) == data
    fresh.close()


def test_b13_416_on_patch_asks_for_the_status_and_resumes(
    proxy: FaultProxy, registry: RunningRegistry
) -> None:
    name = new_name()
    data = random.Random(131).randbytes(250_000)
    digest = sha256(data)
    proxy.on("PATCH", r"/blobs/uploads/", Respond(416), times=1)
    with client(proxy.host, name) as c:
        c.put_blob_stream([data], digest, len(data), chunk_size=100_000)
    methods = [s.method for s in proxy.seen if "/blobs/uploads/" in s.target]
    first_416 = methods.index("PATCH")
    assert "GET" in methods[first_416:]  # status asked after the 416
    with client(registry.host, name) as direct:
        assert direct.get_blob(digest, len(data)) == data


def test_b14_manifest_refused_with_413_is_a_clear_error(
    proxy: FaultProxy, registry: RunningRegistry
) -> None:
    name = new_name()
    proxy.on("PUT", r"/manifests/", Respond(413))
    with client(proxy.host, name) as c, pytest.raises(ManifestTooLarge, match="413"):
        c.put_manifest("t", b'{"schemaVersion":2}', OCI_MANIFEST)


def test_b14_image_tag_with_many_files_is_split_into_parts(
    registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chunkstore.backends.registry as registry_module

    monkeypatch.setattr(registry_module, "_PART_FILES", 2)
    name = new_name()
    backend = RegistryBackend(client(registry.host, name))
    backend.create()
    record = Handle(FileType.RECORD, sha256(b"record").hex)
    backend.save(record, b"record")
    packs = []
    for i in range(5):
        data = f"pack {i}".encode()
        packs.append(Handle(FileType.PACK, sha256(data).hex))
        backend.save(packs[-1], data)
    backend.publish("img", record, packs)
    fetched = backend._client.get_manifest(
        "img", accept=("application/vnd.oci.image.index.v1+json",)
    )
    assert fetched.media_type == "application/vnd.oci.image.index.v1+json"
    assert fetched.data.count(b'"digest"') == 3  # 5 files, 2 per part
    assert backend.published_record("img") == sha256(b"record")
    backend.close()


def test_c7_blob_collected_before_the_tag_push_is_detected(registry: RunningRegistry) -> None:
    """A registry GC deleting a pack between its upload and the image tag: no tag is pushed."""
    name = new_name()
    backend = RegistryBackend(client(registry.host, name))
    backend.create()
    record = Handle(FileType.RECORD, sha256(b"rec").hex)
    pack = Handle(FileType.PACK, sha256(b"pack").hex)
    backend.save(record, b"rec")
    backend.save(pack, b"pack")
    backend._client.delete_blob(sha256(b"pack"))  # what the collector does to a blob
    with pytest.raises(RegistryError, match="was not pushed"):
        backend.publish("img", record, [pack])
    assert "img" not in backend._client.list_tags()
    backend.close()


# -- B9, B10: range reads ----------------------------------------------------------------------------


def test_b9_range_ignored_is_sliced_at_the_right_offset(
    proxy: FaultProxy, seeded: tuple[str, Digest, Digest]
) -> None:
    name, digest, _ = seeded
    proxy.on("GET", BLOBS, DropRequestHeaders(["Range"]))
    with client(proxy.host, name) as c:
        got = c.get_blob_range(digest, 70_001, 1234, blob_size=len(PAYLOAD))
    assert got == PAYLOAD[70_001 : 70_001 + 1234]


def test_b9_range_ignored_through_a_repository_returns_the_right_bytes(
    proxy: FaultProxy, registry: RunningRegistry, tmp_path: Path
) -> None:
    name = new_name()
    with _registry_repo(registry.host, name, tmp_path / "c0", init=True) as repo:
        api.put(repo, "a", io.BytesIO(PAYLOAD))
    proxy.on("GET", BLOBS, DropRequestHeaders(["Range"]))
    with _registry_repo(proxy.host, name, tmp_path / "c1", init=False) as repo:
        out = io.BytesIO()
        api.get(repo, "a", out)
        assert out.getvalue() == PAYLOAD


@pytest.mark.parametrize(
    "content_range",
    ["bytes 0-1233/120000", "bytes 70001-71234/999", "bytes */120000", "garbage"],
    ids=["wrong-start", "wrong-total", "unsatisfied-form", "garbage"],
)
def test_b10_wrong_content_range_is_refused(
    content_range: str, proxy: FaultProxy, seeded: tuple[str, Digest, Digest]
) -> None:
    name, digest, _ = seeded
    proxy.on("GET", BLOBS, SetHeaders({"Content-Range": content_range}))
    with client(proxy.host, name) as c, pytest.raises(SizeMismatch):
        c.get_blob_range(digest, 70_001, 1234, blob_size=len(PAYLOAD))


def test_b10_truncated_206_is_refused_and_not_cached(
    proxy: FaultProxy, registry: RunningRegistry, tmp_path: Path
) -> None:
    name = new_name()
    with _registry_repo(registry.host, name, tmp_path / "c0", init=True) as repo:
        api.put(repo, "a", io.BytesIO(PAYLOAD))
    with _registry_repo(proxy.host, name, tmp_path / "c1", init=False) as repo:
        proxy.on("GET", BLOBS, ResetAfter(100))
        with pytest.raises(ChunkstoreError):
            api.get(repo, "a", io.BytesIO())
        proxy.clear()
        out = io.BytesIO()
        api.get(repo, "a", out)  # same process, same cache: nothing wrong was kept
        assert out.getvalue() == PAYLOAD


def test_b10_multipart_answer_to_a_single_range_is_refused(
    proxy: FaultProxy, seeded: tuple[str, Digest, Digest]
) -> None:
    name, digest, _ = seeded
    proxy.on("GET", BLOBS, SetHeaders({"Content-Type": "multipart/byteranges; boundary=x"}))
    with client(proxy.host, name) as c, pytest.raises(SizeMismatch, match="multipart"):
        c.get_blob_range(digest, 10, 100, blob_size=len(PAYLOAD))


# -- B11, B12: slow and silent servers ---------------------------------------------------------------


def test_b11_drip_server_trips_the_wall_clock_deadline(
    proxy: FaultProxy, seeded: tuple[str, Digest, Digest]
) -> None:
    name, digest, _ = seeded
    proxy.on("GET", BLOBS, Drip(0.3, 1))  # never silent for a whole read timeout
    start = time.monotonic()
    with client(proxy.host, name, timeout=1.0, deadline=1.5, retries=0) as c:
        with pytest.raises(RegistryUnavailable, match="deadline"):
            c.get_blob_range(digest, 0, 100, blob_size=len(PAYLOAD))
    assert time.monotonic() - start < 5.0


def test_b12_silent_server_times_out_within_the_bound(
    proxy: FaultProxy, seeded: tuple[str, Digest, Digest]
) -> None:
    name, digest, _ = seeded
    proxy.on("GET", BLOBS, Silence())
    start = time.monotonic()
    with client(proxy.host, name, timeout=0.5, deadline=10.0, retries=1) as c:
        with pytest.raises(RegistryUnavailable):
            c.get_blob(digest)
    assert time.monotonic() - start < 4.0


# -- H5: a token that expires in the middle of an upload -------------------------------------------

UPLOADS = r"/blobs/uploads/"


def _each_refusal_refreshed_once(front: FaultProxy) -> int:
    """Each request refused for its expired token was followed by one token fetch, then sent
    again as it was; how many there were."""
    seen = front.seen
    refused = [k for k, s in enumerate(seen) if isinstance(s.fault, ExpireTokens)]
    for k in refused:
        assert seen[k + 1].method == "GET" and seen[k + 1].target.startswith("/token?")
        assert (seen[k + 2].method, seen[k + 2].target) == (seen[k].method, seen[k].target)
        assert seen[k + 2].headers["authorization"] != seen[k].headers["authorization"]
    return len(refused)


def test_h5_token_expiring_during_patch_and_put_is_fetched_again_and_the_upload_completes(
    registry: RunningRegistry,
) -> None:
    """The token dies while a PATCH piece, the closing PUT, a monolithic PUT or a tag is sent."""
    name = new_name()
    pieces = [PAYLOAD[i : i + 30_000] for i in range(0, len(PAYLOAD), 30_000)]
    digest = sha256(PAYLOAD)
    with FaultProxy(registry.host, bearer=True) as front:
        front.on("PATCH", UPLOADS, SetHeaders({}), times=1)  # the first piece goes through
        front.on("PATCH", UPLOADS, ExpireTokens(), times=1)  # the second is refused: 401
        front.on("PUT", UPLOADS, ExpireTokens(), times=1)  # and so is the closing PUT
        with client(front.host, name, auth=RegistryAuth()) as c:
            assert c.put_blob_stream(pieces, digest, len(PAYLOAD), chunk_size=30_000) == digest
            patches = [s.fault for s in front.seen if s.method == "PATCH"]
            assert patches == [SetHeaders({}), ExpireTokens(), None, None, None]
            assert _each_refusal_refreshed_once(front) == 2
            # A pull token, a push token, one fresh token per refusal; no session restarted.
            assert front.token_fetches == 4
            assert [s.method for s in front.seen].count("POST") == 2  # challenged, then sent
            front.clear()
            front.on("PUT", UPLOADS, ExpireTokens(), times=1)  # a monolithic PUT with a body
            other = c.put_blob(OTHER)
            front.on("PUT", r"/manifests/", ExpireTokens(), times=1)
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": EMPTY_TYPE, "digest": str(other), "size": len(OTHER)},
                    "layers": [],
                }
            ).encode()
            c.put_manifest("t", manifest, OCI_MANIFEST)
            assert _each_refusal_refreshed_once(front) == 2
    with client(registry.host, name) as direct:
        assert direct.get_blob(digest) == PAYLOAD
        assert direct.get_blob(other) == OTHER
        assert direct.list_tags() == ["t"]


def test_h5_tokens_expiring_throughout_a_put_leave_a_clean_repository(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """Every third PUT (blob uploads and tags) loses its token as it is sent; all still works."""
    name = new_name()
    data = random.Random(75).randbytes(400_000)
    with FaultProxy(registry.host, bearer=True) as front:
        for _ in range(20):
            front.on("PUT", "", SetHeaders({}), times=2)
            front.on("PUT", "", ExpireTokens(), times=1)
        # One upload at a time: concurrent ones could send a resent request into the next rule.
        backend = RegistryBackend(
            client(front.host, name, auth=RegistryAuth()), upload_concurrency=1
        )
        with Repository.init(
            backend, cache_dir=tmp_path / "c0", chunker=PARAMS, pack_size=64 << 10
        ) as repo:
            api.put(repo, "big", io.BytesIO(data))
        assert _each_refusal_refreshed_once(front) >= 5
    with _registry_repo(registry.host, name, tmp_path / "c1", init=False) as repo:
        report = api.check(repo, read_data=True)
        assert report.ok and report.warnings == [], (report.errors, report.warnings)
        out = io.BytesIO()
        api.get(repo, "big", out)
    assert out.getvalue() == data


# -- H1, H3, H7: credentials and redirects -----------------------------------------------------------


@pytest.fixture
def storage_host(auth_registry: RunningRegistry) -> Iterator[FaultProxy]:
    """Object storage a blob GET is redirected to: another origin that needs no credentials.

    It plays a presigned URL by adding the registry credentials itself, upstream, so the client
    never needs (and must never send) its own.
    """
    assert auth_registry.user and auth_registry.password
    creds = Credentials(auth_registry.user, auth_registry.password)
    with FaultProxy(
        auth_registry.host, upstream_headers={"Authorization": creds.basic_header()}
    ) as p:
        yield p


def _auth_client(host: str, name: str, reg: RunningRegistry, **kwargs: object) -> RegistryClient:
    assert reg.user and reg.password
    return client(host, name, auth=RegistryAuth(Credentials(reg.user, reg.password)), **kwargs)


def test_h1_h3_cross_origin_redirect_carries_no_credentials_but_keeps_range(
    auth_registry: RunningRegistry, storage_host: FaultProxy
) -> None:
    name = new_name()
    with _auth_client(auth_registry.host, name, auth_registry) as direct:
        digest = direct.put_blob(PAYLOAD)
    # The registry's front sets a session cookie; the storage host is another name (localhost).
    storage_base = storage_host.url.replace("127.0.0.1", "localhost")
    with FaultProxy(
        auth_registry.host, response_headers={"Set-Cookie": "session=s3cret-cookie; Path=/"}
    ) as front:
        front.on("GET", BLOBS, Redirect(storage_base))
        with _auth_client(front.host, name, auth_registry) as c:
            assert c.head_blob(digest) == len(PAYLOAD)  # logs in at the registry itself
            assert c.get_blob(digest, len(PAYLOAD)) == PAYLOAD
            assert c.get_blob_range(digest, 1000, 500, blob_size=len(PAYLOAD)) == PAYLOAD[1000:1500]
        assert any("authorization" in s.headers for s in front.seen)  # it did log in there
    reached = [s for s in storage_host.seen if s.method == "GET"]
    assert len(reached) == 2
    for seen in reached:
        assert "authorization" not in seen.headers
        assert "cookie" not in seen.headers
        assert not any("s3cret" in v or auth_registry.password in v for v in seen.headers.values())
    assert reached[1].headers.get("range") == "bytes=1000-1499"


def test_h7_no_secret_in_logs_or_errors_after_faults(
    auth_registry: RunningRegistry, storage_host: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    assert auth_registry.password and auth_registry.user
    creds = Credentials(auth_registry.user, auth_registry.password)
    secrets = {auth_registry.password, creds.basic_header().split()[1]}
    name = new_name()
    messages: list[str] = []
    caplog.set_level(logging.DEBUG)
    with _auth_client(auth_registry.host, name, auth_registry) as direct:
        digest = direct.put_blob(PAYLOAD)
        other = direct.put_blob(OTHER)
    with FaultProxy(auth_registry.host) as front:
        front.on("GET", BLOBS, Respond(503), times=2)
        front.on("GET", BLOBS, ReplaceBody(OTHER), times=2)
        front.on(
            "GET", f"/blobs/{other}", Redirect(storage_host.url.replace("127.0.0.1", "localhost"))
        )
        front.on("PUT", r"/manifests/", Respond(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}'))
        front.on("DELETE", r"", Respond(500))
        with _auth_client(front.host, name, auth_registry) as c:
            for action in (
                lambda: c.get_blob(digest),
                lambda: c.get_blob(other),
                lambda: c.put_manifest("t", b"{}", OCI_MANIFEST),
                lambda: c.delete_blob(digest),
                lambda: messages.append(repr(c)),
            ):
                try:
                    action()
                except ChunkstoreError as exc:
                    messages.append(f"{exc!r} {exc} {exc.__cause__!r}")
    assert len(messages) >= 3
    text = "\n".join(messages) + "\n" + caplog.text
    for secret in secrets:
        assert secret not in text
