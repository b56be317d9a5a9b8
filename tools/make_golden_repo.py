"""Create the golden repositories of format version 1 in tests/data.

* ``repo-v1.tar.gz`` (``stream``, the default): small plain and encrypted repositories holding two
  stream records;
* ``repo-v1-image.tar.gz`` (``image``): a plain repository (config version 1) holding one image
  record (body version 2) of :func:`image_layout`'s image: a gzip layer the zlib family reproduces,
  a two-member gzip layer nothing reproduces (kept as the original stream), an uncompressed layer.

Kept in the tree so that later versions of chunkstore prove they still read version 1 data
(restic's test-repo.tar.gz). Run only when adding a new golden repository for a new format version:
``.venv/bin/python tools/make_golden_repo.py [stream|image]``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

from chunkstore import api
from chunkstore.chunker import ChunkerParams
from chunkstore.images.oci_layout import OCILayoutWriter
from chunkstore.registry.mediatypes import OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST
from index.ids import sha256

PASSWORD = b"chunkstore-golden"
#: The image record's name in repo-v1-image.tar.gz, and the ref of image_layout's image.
IMAGE = "golden-image"


def content(name: str, size: int) -> bytes:
    """Deterministic, partly compressible test content."""
    out = bytearray()
    i = 0
    while len(out) < size:
        block = hashlib.sha256(f"{name}:{i}".encode()).digest()
        out += block + (b"golden repository line %d\n" % i)
        i += 1
    return bytes(out[:size])


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _gzip(data: bytes, level: int = 6) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def image_layout(root: Path) -> None:
    """Write the golden image (ref :data:`IMAGE`) as an OCI layout at ``root``; deterministic."""
    alpha = content("alpha", 120_000)
    tars = [
        _tar({"etc/alpha": alpha, "etc/hostname": b"golden\n"}),
        _tar({"usr/beta": alpha[:50_000] + b"inserted" + alpha[50_000:]}),
        _tar({"usr/gamma": content("gamma", 30_000), "etc/.wh.hostname": b""}),
    ]
    half = len(tars[1]) // 2
    blobs = [
        (_gzip(tars[0]), OCI_LAYER_GZIP),
        (_gzip(tars[1][:half], 9) + _gzip(tars[1][half:], 1), OCI_LAYER_GZIP),
        (tars[2], OCI_LAYER_TAR),
    ]
    writer = OCILayoutWriter(root)
    descs = [writer.add_bytes(blob, media_type) for blob, media_type in blobs]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [str(sha256(t)) for t in tars]},
        "config": {"Cmd": ["/bin/sh"]},
    }
    config_desc = writer.add_bytes(json.dumps(config).encode(), OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [d.to_json() for d in descs],
    }
    writer.add_manifest(json.dumps(manifest).encode(), OCI_MANIFEST, IMAGE)


def build_image_repo(root: Path) -> None:
    """tests/data/repo-v1-image.tar.gz: a plain repository with the golden image record."""
    from chunkstore.images.backup import backup_image

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        image_layout(t / "layout")
        repo = api.init_repository(
            t / "image",
            cache_dir=t / "cache",
            chunker=ChunkerParams(1024, 4096, 16384),
            pack_size=64 * 1024,
        )
        backup_image(repo, f"oci:{t / 'layout'}:{IMAGE}", IMAGE)
        repo.close()
        with tarfile.open(root / "tests" / "data" / "repo-v1-image.tar.gz", "w:gz") as tar:
            tar.add(t / "image", arcname="image")


def main() -> None:
    """Build the golden repositories asked for and pack them into their tarball."""
    root = Path(__file__).resolve().parent.parent
    which = sys.argv[1] if len(sys.argv) > 1 else "stream"
    if which == "image":
        build_image_repo(root)
        return
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        alpha = content("alpha", 120_000)
        beta = alpha[:50_000] + b"inserted" + alpha[50_000:]
        for name, password in (("plain", None), ("encrypted", PASSWORD)):
            repo = api.init_repository(
                t / name,
                cache_dir=t / "cache",
                password=password,
                chunker=ChunkerParams(1024, 4096, 16384),
                pack_size=64 * 1024,
            )
            api.put(repo, "alpha", io.BytesIO(alpha))
            api.put(repo, "beta", io.BytesIO(beta))
            repo.close()
        out = root / "tests" / "data" / "repo-v1.tar.gz"
        with tarfile.open(out, "w:gz") as tar:
            for name in ("plain", "encrypted"):
                tar.add(t / name, arcname=name)
        shutil.rmtree(t / "cache")


if __name__ == "__main__":
    main()
