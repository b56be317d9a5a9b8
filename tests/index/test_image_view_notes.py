"""Image record bodies with ``view_notes`` (version 3): written only when present, read back,
refused where they do not belong."""

from __future__ import annotations

import pytest

from index.errors import Malformed, UnsupportedVersion
from index.ids import sha256
from index.image import IMAGE_BODY_VERSION, MAX_IMAGE_BODY_VERSION, ImageBody, ImageEntry


def _body(notes: tuple[str, ...]) -> ImageBody:
    entry = ImageEntry(b"{}", "m", b"{}", None, sha256(b"root"), (), view_notes=notes)
    return ImageBody("oci:x", (entry,))


def test_notes_round_trip_as_version_3() -> None:
    body = _body(("layer sha256:ab: not in the file-system view: 1 member of type 'V' (label)",))
    encoded = body.to_cbor()
    assert encoded["version"] == MAX_IMAGE_BODY_VERSION == 3
    assert encoded["images"][0]["view_notes"] == list(body.images[0].view_notes)
    assert ImageBody.from_cbor(encoded) == body


def test_bodies_without_notes_stay_version_2() -> None:
    encoded = _body(()).to_cbor()
    assert encoded["version"] == IMAGE_BODY_VERSION == 2
    assert "view_notes" not in encoded["images"][0]
    assert ImageBody.from_cbor(encoded).images[0].view_notes == ()


@pytest.mark.parametrize(
    ("version", "notes"),
    [(2, ["a note in a version 2 body"]), (3, []), (3, ["ok", 7]), (3, "text"), (3, ["x"] * 1001)],
)
def test_misplaced_or_malformed_notes_are_refused(version: int, notes: object) -> None:
    encoded = _body(("placeholder",)).to_cbor()
    encoded["version"] = version
    encoded["images"][0]["view_notes"] = notes
    with pytest.raises(Malformed, match="view_notes"):
        ImageBody.from_cbor(encoded)


def test_newer_versions_are_refused() -> None:
    encoded = _body(("n",)).to_cbor()
    encoded["version"] = 4
    with pytest.raises(UnsupportedVersion):
        ImageBody.from_cbor(encoded)
