"""Real clients pull from ``chunkstore serve``: skopeo by tag and by digest, httpx for the rest.

skopeo checks every blob it receives against its digest, so a pull that succeeds and whose
manifest digest is the original's proves the image came back exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import httpx
import pytest

from chunkstore import api
from chunkstore.errors import IntegrityError
from chunkstore.serve.blobs import ByteRange, layer_pieces
from index.image import ImageBody
from tests.corpus import MINBASE, MINBASE_REBUILT
from tests.producers import require
from tests.serve.conftest import MINBASE_RECORD, Served

pytestmark = pytest.mark.integration


def _skopeo(*args: str) -> str:
    done = subprocess.run([require("skopeo"), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _pulled_digest(layout: Path, ref: str) -> str:
    raw = _skopeo("inspect", "--raw", f"oci:{layout}:{ref}")
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def _manifest(served: Served, ref: str) -> dict[str, object]:
    digest = served.corpus_manifest_digest(ref)
    loaded: dict[str, object] = json.loads(served.corpus_blob(digest).read_bytes())
    return loaded


def _layer_digest(served: Served, ref: str) -> str:
    layers = _manifest(served, ref)["layers"]
    assert isinstance(layers, list)
    return str(layers[0]["digest"])


def test_skopeo_pulls_a_tag_with_its_original_digest(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{served.host}/debian:bookworm-minbase",
        f"oci:{out}:pulled",
    )
    assert _pulled_digest(out, "pulled") == served.corpus_manifest_digest(MINBASE)
    inspected = json.loads(
        _skopeo("inspect", "--tls-verify=false", f"docker://{served.host}/debian:bookworm-minbase")
    )
    assert inspected["Digest"] == served.corpus_manifest_digest(MINBASE)
    layer = _layer_digest(served, MINBASE)
    assert inspected["Layers"] == [layer]
    pulled = out / "blobs" / "sha256" / layer.removeprefix("sha256:")
    assert pulled.read_bytes() == served.corpus_blob(layer).read_bytes()


def test_skopeo_pulls_by_digest_a_record_served_as_latest(served: Served, tmp_path: Path) -> None:
    digest = served.corpus_manifest_digest(MINBASE_REBUILT)
    out = tmp_path / "out"
    source = f"docker://{served.host}/minbase-rebuilt@{digest}"
    _skopeo("copy", "--src-tls-verify=false", source, f"oci:{out}:pulled")
    assert _pulled_digest(out, "pulled") == digest
    tags = json.loads(
        _skopeo("list-tags", "--tls-verify=false", f"docker://{served.host}/minbase-rebuilt")
    )
    assert tags["Tags"] == ["latest"]


def test_manifest_head_and_get(served: Served) -> None:
    digest = served.corpus_manifest_digest(MINBASE)
    stored = served.corpus_blob(digest).read_bytes()
    with httpx.Client(base_url=served.url) as client:
        v2 = client.get("/v2/")
        assert v2.status_code == 200
        assert v2.headers["docker-distribution-api-version"] == "registry/2.0"
        for ref in ("bookworm-minbase", digest):
            head = client.head(f"/v2/debian/manifests/{ref}")
            assert head.status_code == 200
            assert head.headers["docker-content-digest"] == digest
            assert head.headers["content-type"] == "application/vnd.oci.image.manifest.v1+json"
            assert int(head.headers["content-length"]) == len(stored)
            assert head.content == b""
            got = client.get(f"/v2/debian/manifests/{ref}")
            assert got.status_code == 200
            assert got.content == stored
            assert got.headers["docker-content-digest"] == digest


def test_blob_head_get_and_ranges(served: Served) -> None:
    layer = _layer_digest(served, MINBASE)
    blob = served.corpus_blob(layer).read_bytes()
    config = _manifest(served, MINBASE)["config"]
    assert isinstance(config, dict)
    path = f"/v2/debian/blobs/{layer}"
    with httpx.Client(base_url=served.url, timeout=120) as client:
        head = client.head(path)
        assert head.status_code == 200
        assert int(head.headers["content-length"]) == len(blob)
        assert head.headers["docker-content-digest"] == layer
        assert head.headers["accept-ranges"] == "bytes"
        got = client.get(f"/v2/debian/blobs/{config['digest']}")
        assert got.content == served.corpus_blob(config["digest"]).read_bytes()

        first = client.get(path, headers={"Range": "bytes=0-99"})
        assert first.status_code == 206
        assert first.headers["content-range"] == f"bytes 0-99/{len(blob)}"
        assert first.content == blob[:100]
        last = client.get(path, headers={"Range": "bytes=-1000"})
        assert last.status_code == 206
        assert last.content == blob[-1000:]
        middle = client.get(path, headers={"Range": f"bytes={len(blob) // 2}-{len(blob) // 2 + 9}"})
        assert middle.content == blob[len(blob) // 2 : len(blob) // 2 + 10]

        past = client.get(path, headers={"Range": f"bytes={len(blob)}-"})
        assert past.status_code == 416
        assert past.headers["content-range"] == f"bytes */{len(blob)}"
        assert past.json()["errors"][0]["code"] == "RANGE_INVALID"

        whole = client.get(path)
        assert whole.status_code == 200
        assert hashlib.sha256(whole.content).hexdigest() == layer.removeprefix("sha256:")


def test_errors_in_the_distribution_format(served: Served) -> None:
    def error(response: httpx.Response) -> str:
        assert response.headers["content-type"] == "application/json"
        return str(response.json()["errors"][0]["code"])

    missing = "sha256:" + "0" * 64
    with httpx.Client(base_url=served.url) as client:
        r = client.get("/v2/debian/manifests/no-such-tag")
        assert (r.status_code, error(r)) == (404, "MANIFEST_UNKNOWN")
        r = client.get(f"/v2/debian/manifests/{missing}")
        assert (r.status_code, error(r)) == (404, "MANIFEST_UNKNOWN")
        r = client.get("/v2/nobody/manifests/latest")
        assert (r.status_code, error(r)) == (404, "NAME_UNKNOWN")
        r = client.get("/v2/nobody/tags/list")
        assert (r.status_code, error(r)) == (404, "NAME_UNKNOWN")
        r = client.get(f"/v2/debian/blobs/{missing}")
        assert (r.status_code, error(r)) == (404, "BLOB_UNKNOWN")
        assert client.head(f"/v2/debian/blobs/{missing}").status_code == 404
        r = client.get("/v2/debian/blobs/sha256:nothex")
        assert (r.status_code, error(r)) == (400, "DIGEST_INVALID")
        r = client.get("/v2/Debian/tags/list")
        assert (r.status_code, error(r)) == (400, "NAME_INVALID")
        r = client.put("/v2/debian/manifests/new", content=b"{}")
        assert (r.status_code, error(r)) == (405, "UNSUPPORTED")


def test_tags_list_and_catalog_paginate(served: Served) -> None:
    with httpx.Client(base_url=served.url) as client:
        assert client.get("/v2/_catalog").json() == {"repositories": ["debian", "minbase-rebuilt"]}
        assert client.get("/v2/debian/tags/list").json() == {
            "name": "debian",
            "tags": ["bookworm-minbase"],
        }
        page = client.get("/v2/_catalog", params={"n": 1})
        assert page.json() == {"repositories": ["debian"]}
        assert page.headers["link"] == '</v2/_catalog?n=1&last=debian>; rel="next"'
        rest = client.get("/v2/_catalog", params={"n": 1, "last": "debian"})
        assert rest.json() == {"repositories": ["minbase-rebuilt"]}
        assert "link" not in rest.headers
        assert client.get("/v2/_catalog", params={"n": 0}).status_code == 400


def test_a_client_leaving_mid_blob_leaves_the_server_serving(served: Served) -> None:
    layer = _layer_digest(served, MINBASE)
    with httpx.Client(base_url=served.url, timeout=120) as client:
        with client.stream("GET", f"/v2/debian/blobs/{layer}") as r:
            assert r.status_code == 200
            assert len(next(r.iter_raw(1 << 16))) > 0
        # Closed after its first bytes; the next request is answered as usual.
        assert client.get("/v2/debian/manifests/bookworm-minbase").status_code == 200


def test_a_layer_that_does_not_match_its_digest_is_never_finished(served: Served) -> None:
    """The last piece is held back until the rebuilt blob is verified: a wrong digest raises
    first (the server then aborts the connection), for the whole blob and for a range."""
    with api.open_repository(served.repo, cache_dir=served.cache) as repo:
        _, body = repo.find_body(MINBASE_RECORD, "image", ImageBody.from_cbor)
        layer = body.images[0].layers[0]
        assert (
            b"".join(layer_pieces(repo, layer, ByteRange(5, 15)))
            == (served.corpus_blob(layer.digest).read_bytes()[5:15])
        )
        wrong = dataclasses.replace(layer, digest="sha256:" + "1" * 64)
        for want in (None, ByteRange(0, 10), ByteRange(layer.size - 10, layer.size)):
            sent = 0
            with pytest.raises(IntegrityError, match="nothing more is sent"):
                for piece in layer_pieces(repo, wrong, want):
                    sent += len(piece)
            expected = layer.size if want is None else want.end - want.start
            assert sent < expected


def test_rebuilt_layers_are_cached_and_verified_on_every_hit(served: Served) -> None:
    layer = _layer_digest(served, MINBASE)
    blob = served.corpus_blob(layer).read_bytes()
    entry = served.cache / "serve-layers" / "sha256" / layer.removeprefix("sha256:")
    path = f"/v2/debian/blobs/{layer}"
    with httpx.Client(base_url=served.url, timeout=120) as client:
        assert client.get(path).content == blob
        assert entry.read_bytes() == blob  # kept once verified
        assert client.get(path, headers={"Range": "bytes=10-19"}).content == blob[10:20]
        # A damaged entry (same size, one byte flipped) is never sent whole: the response is
        # cut short, the entry deleted, and the next request rebuilds the layer.
        damaged = bytearray(blob)
        damaged[len(blob) // 3] ^= 0xFF
        entry.write_bytes(bytes(damaged))
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(path)
        assert not entry.exists()
    with httpx.Client(base_url=served.url, timeout=120) as client:
        again = client.get(path)
        assert again.status_code == 200
        assert again.content == blob
