#!/usr/bin/env python3
"""A synthetic repository of N images: variants of a corpus image, a few files changed in each.

    .venv/bin/python tools/make_many_images.py --count 100 --layout /tmp/many/oci \\
        [--repo /tmp/many/repo --cache /tmp/many/cache] [--corpus DIR] [--base REF]

Every variant is a two-layer OCI image, written by the project's own
:class:`chunkstore.images.oci_layout.OCILayoutWriter` into ``--layout`` under the reference name
``variant-NNNN``: the base image's layers as they are (their blobs hard-linked from the corpus)
and one small layer of its own, like an application image built on a shared base:

* ``--changed`` files of the base (picked per variant, deterministically, among its small
  regular files) with 64 bytes overwritten at one offset;
* ``/etc/variant`` (its name) and ``/opt/app-NNNN/app.bin``: ``--unique`` bytes new to the
  repository, half random, half compressible text (new chunks, packs and index entries);

gzip'd by Python's zlib (level 6, no name, mtime 0); its config is the base's with the layer's
diff_id and a history entry appended. With ``--repo``, the variants are then backed up one by one
(``chunkstore backup``'s code, in this process: a hundred take two to three minutes, without a
hundred interpreter starts): the repository holds N tags, N records, one index file and one or
more packs per backup, the base layer stored once and reused by every later backup.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from benchlib.common import log
from benchlib.corpus import DEFAULT_CORPUS

from chunkstore import api
from chunkstore.images.backup import backup_image
from chunkstore.images.oci_layout import OCILayout, OCILayoutWriter
from chunkstore.registry.mediatypes import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from chunkstore.repository import Repository
from index.ids import Digest

__all__ = ["BaseImage", "Variant", "fill_repository", "load_base", "make_variants", "variant_ref"]

DEFAULT_BASE = "bookworm-minbase"
#: Files of the base considered for changing: regular, at most this big.
MAX_CHANGED_SIZE = 256 * 1024
#: How many such files are kept in memory to pick from.
CANDIDATES = 64


def variant_ref(i: int) -> str:
    """The reference name (and record name) of variant ``i``."""
    return f"variant-{i:04d}"


@dataclass(frozen=True)
class BaseImage:
    """The corpus image the variants are built on, and files of it to change."""

    ref: str
    layout: Path
    manifest: dict[str, object]
    config: dict[str, object]
    config_media_type: str
    layers: tuple[dict[str, object], ...]  # descriptors as JSON
    layer_paths: tuple[Path, ...]
    files: tuple[tuple[tarfile.TarInfo, bytes], ...]  # candidates to change
    dirs: dict[str, tarfile.TarInfo]  # directory entries of the base, by path


@dataclass(frozen=True)
class Variant:
    """One variant written to the layout: its name and its own layer's sizes."""

    ref: str
    layer_bytes: int  # compressed
    tar_bytes: int


def load_base(corpus: Path, ref: str) -> BaseImage:
    """The corpus image ``ref`` and, from ``CORPUS/rootfs/REF.tar``, candidate files to change."""
    layout = OCILayout(corpus / "oci")
    found = layout.resolve(ref)
    if len(found) != 1:
        raise SystemExit(f"make_many_images: {ref} in {corpus}/oci is {len(found)} images")
    image = found[0]
    rootfs = corpus / "rootfs" / f"{ref}.tar"
    files: list[tuple[tarfile.TarInfo, bytes]] = []
    dirs: dict[str, tarfile.TarInfo] = {}
    with tarfile.open(rootfs, "r:") as tar:
        for member in tar:
            name = member.name.removeprefix("./").rstrip("/")
            if member.isdir():
                dirs[name] = member
            elif (
                member.isreg()
                and 4096 <= member.size <= MAX_CHANGED_SIZE
                and name.startswith(("usr/bin/", "usr/lib/", "etc/"))
                and len(files) < CANDIDATES
            ):
                f = tar.extractfile(member)
                if f is not None:
                    member.name = name
                    files.append((member, f.read()))
    if not files:
        raise SystemExit(f"make_many_images: no small regular files found in {rootfs}")
    return BaseImage(
        ref=ref,
        layout=corpus / "oci",
        manifest=json.loads(image.manifest_bytes),
        config=json.loads(image.config_bytes),
        config_media_type=image.config_media_type,
        layers=tuple(d.to_json() for d in image.layers),
        layer_paths=tuple(layout.blob_path(d.digest) for d in image.layers),
        files=tuple(files),
        dirs=dirs,
    )


def _content(rng: random.Random, size: int, name: str) -> bytes:
    """``size`` bytes: half random, half text that compresses about 3x."""
    half = size // 2
    words = [f"{name}-{rng.getrandbits(32):08x}" for _ in range(256)]
    text = bytearray()
    while len(text) < size - half:
        text += (" ".join(rng.choices(words, k=16)) + "\n").encode()
    return rng.randbytes(half) + bytes(text[: size - half])


def _top_layer(base: BaseImage, i: int, changed: int, unique: int) -> bytes:
    """The tar of variant ``i``'s own layer (deterministic)."""
    rng = random.Random(i)
    ref = variant_ref(i)
    entries: list[tuple[tarfile.TarInfo, bytes]] = []
    for info, data in rng.sample(list(base.files), min(changed, len(base.files))):
        body = bytearray(data)
        at = rng.randrange(0, max(1, len(body) - 64))
        body[at : at + 64] = rng.randbytes(64)
        new = tarfile.TarInfo(info.name)
        new.mode, new.uid, new.gid, new.mtime = info.mode, info.uid, info.gid, info.mtime
        new.size = len(body)
        entries.append((new, bytes(body)))
    app = f"opt/app-{i:04d}"
    own = (("etc/variant", f"{ref}\n".encode()), (f"{app}/app.bin", _content(rng, unique, ref)))
    for name, payload in own:
        info = tarfile.TarInfo(name)
        info.mode, info.mtime = 0o644, 1_700_000_000 + i
        info.size = len(payload)
        entries.append((info, payload))
    needed: set[str] = set()
    for info, _ in entries:
        parts = info.name.split("/")[:-1]
        needed.update("/".join(parts[: k + 1]) for k in range(len(parts)))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(needed):
            have = base.dirs.get(d)
            dinfo = tarfile.TarInfo(d)
            dinfo.type = tarfile.DIRTYPE
            if have is not None:
                dinfo.mode, dinfo.uid, dinfo.gid, dinfo.mtime = (
                    have.mode, have.uid, have.gid, have.mtime,
                )  # fmt: skip
            else:
                dinfo.mode, dinfo.mtime = 0o755, 1_700_000_000 + i
            tar.addfile(dinfo)
        for info, payload in sorted(entries, key=lambda e: e[0].name):
            tar.addfile(info, io.BytesIO(payload))
    return out.getvalue()


def _link_blob(src: Path, digest: str, writer: OCILayoutWriter) -> None:
    """The corpus blob ``src`` in the layout: hard-linked (copied across file systems)."""
    if writer.has_blob(Digest.parse(digest)):
        return
    dest = writer.path / "blobs" / "sha256" / digest.removeprefix("sha256:")
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def make_variants(
    base: BaseImage, layout: Path, indices: range, *, changed: int = 5, unique: int = 2 << 20
) -> list[Variant]:
    """Write variants ``indices`` of ``base`` into the OCI layout ``layout`` (created)."""
    writer = OCILayoutWriter(layout)
    for desc, path in zip(base.layers, base.layer_paths, strict=True):
        _link_blob(path, str(desc["digest"]), writer)
    out = []
    for i in indices:
        tar = _top_layer(base, i, changed, unique)
        blob = gzip.compress(tar, compresslevel=6, mtime=0)
        top = writer.add_bytes(blob, OCI_LAYER_GZIP)
        diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
        config = json.loads(json.dumps(base.config))
        config["rootfs"]["diff_ids"].append(diff_id)
        config.setdefault("history", []).append(
            {"created_by": f"make_many_images {variant_ref(i)}", "comment": "synthetic"}
        )
        cfg = writer.add_bytes(json.dumps(config, separators=(",", ":")).encode(), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": cfg.to_json(),
            "layers": [*base.layers, top.to_json()],
        }
        data = json.dumps(manifest, separators=(",", ":")).encode()
        writer.add_manifest(data, OCI_MANIFEST, variant_ref(i))
        out.append(Variant(variant_ref(i), len(blob), len(tar)))
    return out


@contextlib.contextmanager
def _opened(repo: Path, cache: Path, password: bytes | None) -> Iterator[Repository]:
    if not (repo / "config").exists():
        opened = api.init_repository(repo, cache_dir=cache, password=password)
    else:
        opened = api.open_repository(repo, cache_dir=cache, password=password)
    try:
        yield opened
    finally:
        opened.close()


def fill_repository(
    repo: Path,
    cache: Path,
    layout: Path,
    refs: list[str],
    *,
    password: bytes | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> None:
    """Back up the layout's ``refs`` into ``repo`` (created if needed), one record each."""
    with _opened(repo, cache, password) as opened:
        for ref in refs:
            t0 = time.perf_counter()
            with api.locked(opened, exclusive=False):
                backup_image(opened, f"oci:{layout}:{ref}", ref)
            if progress is not None:
                progress(ref, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus directory")
    ap.add_argument("--base", default=DEFAULT_BASE, help=f"base image ({DEFAULT_BASE})")
    ap.add_argument("--count", type=int, default=100, help="variants to make (100)")
    ap.add_argument("--first", type=int, default=0, help="index of the first variant (0)")
    ap.add_argument("--changed", type=int, default=5, help="base files changed per variant (5)")
    ap.add_argument("--unique", type=int, default=2 << 20, help="new bytes per variant (2 MiB)")
    ap.add_argument("--layout", type=Path, required=True, help="OCI layout to write")
    ap.add_argument("--repo", type=Path, help="also back the variants up into this repository")
    ap.add_argument("--cache", type=Path, help="the repository's cache directory")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    base = load_base(args.corpus, args.base)
    variants = make_variants(
        base,
        args.layout,
        range(args.first, args.first + args.count),
        changed=args.changed,
        unique=args.unique,
    )
    log(f"{len(variants)} variants written to {args.layout} in {time.perf_counter() - t0:.1f} s")
    if args.repo is not None:
        cache = args.cache or args.repo.with_name(args.repo.name + "-cache")
        password = os.environ.get("CHUNKSTORE_PASSWORD")
        t1 = time.perf_counter()
        fill_repository(
            args.repo,
            cache,
            args.layout,
            [v.ref for v in variants],
            password=password.encode() if password else None,
            progress=lambda ref, s: log(f"backed up {ref} in {s:.2f} s"),
        )
        log(f"backed up {len(variants)} variants in {time.perf_counter() - t1:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
