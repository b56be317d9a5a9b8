"""Image record bodies: version 2 round trip, version 1 translation, refusals."""

from __future__ import annotations

import pytest

from index.chunklist import StreamBody
from index.errors import Malformed, UnsupportedVersion
from index.ids import sha256
from index.image import IMAGE_BODY_VERSION, ImageBody, ImageEntry, LayerEntry, Reproduce


def _layer(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "digest": str(sha256(b"b")),
        "media_type": "application/vnd.oci.image.layer.v1.tar+gzip",
        "size": 10,
        "diff_id": str(sha256(b"t")),
        "tar_size": 20,
        "recipe": sha256(b"r"),
        "compression": "gzip",
        "reproduce": None,
    }
    base.update(kw)
    return base


def _body(layer: dict[str, object], version: int | None) -> dict[str, object]:
    image = {
        "manifest": b"{}",
        "manifest_media_type": "application/vnd.oci.image.manifest.v1+json",
        "config": b"{}",
        "platform": None,
        "root": sha256(b"root"),
        "root_meta": None,
        "layers": [layer],
    }
    body: dict[str, object] = {"source": "oci:x", "index": None, "index_media_type": None}
    body["images"] = [image]
    if version is not None:
        body["version"] = version
    return body


def test_version_1_zlib_and_zstd_maps_are_translated() -> None:
    gz = {"compression": "gzip", "level": 9, "mem_level": 8, "header": "1f8b08000000000002ff"}
    body = ImageBody.from_cbor(_body(_layer(reproduce=gz), None))
    layer = body.images[0].layers[0]
    assert layer.reproduce == Reproduce(
        "zlib",
        {"level": 9, "mem_level": 8, "wbits": 15, "strategy": "default"},
        bytes.fromhex("1f8b08000000000002ff"),
    )
    assert layer.original is None and layer.exact
    zs = {"compression": "zstd", "level": 3, "checksum": True, "content_size": None}
    zlayer = ImageBody.from_cbor(_body(_layer(compression="zstd", reproduce=zs), None))
    assert zlayer.images[0].layers[0].reproduce == Reproduce(
        "zstd", {"level": 3, "checksum": True, "content_size": -1}
    )
    # Re-encoding writes version 2.
    again = ImageBody.from_cbor(body.to_cbor())
    assert again == body and body.to_cbor()["version"] == IMAGE_BODY_VERSION


def test_version_2_round_trip_with_kept_original() -> None:
    kept = LayerEntry(
        str(sha256(b"b")),
        "m",
        10,
        str(sha256(b"t")),
        20,
        sha256(b"r"),
        "gzip",
        original=StreamBody(10, (sha256(b"l"),)),
    )
    entry = ImageEntry(b"{}", "m", b"{}", None, sha256(b"root"), (kept,))
    body = ImageBody("oci:x", (entry,))
    assert ImageBody.from_cbor(body.to_cbor()) == body


def test_refusals() -> None:
    with pytest.raises(UnsupportedVersion):
        ImageBody.from_cbor(_body(_layer(original=None), 4))
    rep = {"family": "zlib", "params": {"level": 6}, "header": b"\x1f\x8b\x08\0\0\0\0\0\0\xff"}
    both = _layer(reproduce=rep, original={"size": 10, "lists": [sha256(b"l")]})
    with pytest.raises(Malformed, match="both"):
        ImageBody.from_cbor(_body(both, 2))
    # A version 1 body with an "original" key, or a version 2 layer without one, is malformed.
    with pytest.raises(Malformed):
        ImageBody.from_cbor(_body(_layer(original=None), None))
    with pytest.raises(Malformed):
        ImageBody.from_cbor(_body(_layer(), 2))
    bad = {"family": "zlib", "params": {"level": [6]}, "header": b""}
    with pytest.raises(Malformed, match="params"):
        ImageBody.from_cbor(_body(_layer(reproduce=bad, original=None), 2))
