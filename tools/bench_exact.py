#!/usr/bin/env python3
"""Exact-digest benchmark: one layer compressed by every producer, backed up and restored.

For a real layer tar (the corpus' ``bookworm-minbase`` layer by default, else files of /usr), it
makes one single-layer OCI image per producer (Go's compress/gzip at levels -1, 1 and 9, GNU
gzip -6 and -9, pigz -6, Python's zlib -6 and -9, skopeo's pgzip and zstd, and umoci's own blob
when the layer comes from the corpus) and measures, in one run:

* per producer: whether ``chunkstore backup`` reproduces the layer or keeps its bytes, whether
  ``restore oci:`` gives back the original manifest digest, the backup time with detection against
  the same backup with ``--no-detect`` (the cost of exactness, run in turn A B A B ... so drift
  hits both alike; median of the pairs' ratios), and the restore time;
* the repository after backing up all producers' images into one repository, against one holding
  a single producer's image (the issue's "at most 1.2x");
* ``restic restore`` of the same root file system (the layer unpacked, backed up by restic) against
  ``chunkstore restore ... oci:`` of the Go-made image (the issue's "no slower than restic").

Usage (from the checkout: the producers are the test kit's, ``tests/producers.py``)::

    PYTHONPATH=. .venv/bin/python tools/bench_exact.py [--corpus DIR] [--ref bookworm-minbase] [--runs 3]
                                          [--out DIR] [--json] [--only NAME ...]

Times are wall seconds of whole CLI processes (warm page cache). Units: MB = 10**6 bytes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib.common import MB, ROOT, log
from benchlib.corpus import DEFAULT_CORPUS, has_corpus, read_corpus
from benchlib.measure import run_checked, run_measured

from chunkstore.images.oci_layout import OCILayout

try:
    from tests.producers import gnu_gzip, go_gzip, oci_image, pigz, realistic_tar, zlib_gzip
except ModuleNotFoundError:
    sys.exit("bench_exact: run it from the checkout with PYTHONPATH=. (it uses tests/producers.py)")

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
CHUNKSTORE = str(ROOT / ".venv" / "bin" / "chunkstore")


# ----------------------------------------------------------------------------- inputs


def corpus_layer(corpus: Path, ref: str) -> tuple[bytes, bytes, str] | None:
    """(tar, compressed blob, media type) of the first layer of ``ref`` in the corpus, if any."""
    if not has_corpus(corpus):
        return None
    image = read_corpus(corpus / "oci").get(ref)
    if image is None:
        return None
    layer = image.layers[0]
    blob = layer.path.read_bytes()
    return gzip.decompress(blob), blob, layer.media_type


def write_image(root: Path, ref: str, tar: bytes, blob: bytes, media_type: str) -> str:
    """A one-layer OCI image; returns its manifest digest."""
    return str(oci_image(root, ref, [tar], [blob], media_type))


def skopeo_blob(work: Path, tar: bytes, compress: list[str]) -> tuple[bytes, str]:
    """The layer as ``skopeo copy`` compresses it (pgzip, or zstd)."""
    plain, out = work / "skopeo-plain", work / f"skopeo-{'-'.join(compress)}"
    shutil.rmtree(out, ignore_errors=True)
    if not (plain / "index.json").exists():
        write_image(plain, "v1", tar, tar, LAYER_TAR)
    run_checked(["skopeo", "copy", "-q", *compress, f"oci:{plain}:v1", f"oci:{out}:v1"])
    layer = read_corpus(out)["v1"].layers[0]
    return layer.path.read_bytes(), layer.media_type


def producers(
    work: Path, tar: bytes, corpus_blob: tuple[bytes, str] | None
) -> dict[str, Callable[[], tuple[bytes, str]]]:
    def gz(f: Callable[[bytes], bytes]) -> Callable[[], tuple[bytes, str]]:
        return lambda: (f(tar), LAYER_GZIP)

    out: dict[str, Callable[[], tuple[bytes, str]]] = {
        "go-default": gz(lambda t: go_gzip(t, -1)),
        "go-1": gz(lambda t: go_gzip(t, 1)),
        "go-9": gz(lambda t: go_gzip(t, 9)),
        "gnu-gzip-6": gz(lambda t: gnu_gzip(t, 6)),
        "gnu-gzip-9": gz(lambda t: gnu_gzip(t, 9)),
        "pigz-6": gz(lambda t: pigz(t, 6)),
        "zlib-6": gz(lambda t: zlib_gzip(t, 6)),
        "zlib-9": gz(lambda t: zlib_gzip(t, 9)),
        "skopeo-pgzip": lambda: skopeo_blob(work, tar, ["--dest-compress"]),
        "skopeo-zstd": lambda: skopeo_blob(work, tar, ["--dest-compress-format", "zstd"]),
    }
    if corpus_blob is not None:
        out["umoci"] = lambda: corpus_blob
    return out


# ----------------------------------------------------------------------------- running


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds and stdout of ``cmd``; exits with its stderr when it fails."""
    m = run_measured(cmd, env)
    if m.returncode != 0:
        raise SystemExit(f"bench_exact: {' '.join(cmd)} failed:\n{m.stderr}")
    return m.seconds, m.stdout


def fresh_repo(path: Path, env: dict[str, str]) -> list[str]:
    shutil.rmtree(path, ignore_errors=True)
    run([CHUNKSTORE, "--repo", str(path), "init"], env)
    return [CHUNKSTORE, "--repo", str(path)]


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_producer(
    name: str, src: Path, digest: str, work: Path, runs: int, env: dict[str, str]
) -> dict[str, Any]:
    ratios: list[float] = []
    detect_s: list[float] = []
    plain_s: list[float] = []
    outcome: dict[str, Any] = {}
    for i in range(runs):
        for mode in ("detect", "no-detect"):
            repo = fresh_repo(work / f"repo-{mode}", env)
            extra = ["--no-detect"] if mode == "no-detect" else []
            seconds, out = run(
                [*repo, "--json", "backup", f"oci:{src}:v1", "-t", "img", *extra], env
            )
            (detect_s if mode == "detect" else plain_s).append(seconds)
            if mode == "detect" and i == 0:
                outcome = json.loads(out)["layer_details"][0]
        ratios.append(detect_s[-1] / plain_s[-1])
    repo = [CHUNKSTORE, "--repo", str(work / "repo-detect")]
    dest = work / "restored"
    shutil.rmtree(dest, ignore_errors=True)
    restore_s, _ = run([*repo, "restore", "img", f"oci:{dest}:v1"], env)
    back = str(OCILayout(dest).entries[0].digest)
    return {
        "producer": name,
        "outcome": outcome.get("outcome"),
        "reproduced_by": outcome.get("reproduced_by"),
        "exact": back == digest,
        "backup_s": statistics.median(detect_s),
        "backup_no_detect_s": statistics.median(plain_s),
        "detect_overhead": statistics.median(ratios) - 1,
        "restore_s": restore_s,
        "repo_bytes": du(work / "repo-detect"),
    }


def restic_restore(work: Path, tar: bytes, env: dict[str, str]) -> float | None:
    """Seconds of ``restic restore`` of the layer's root file system (None without restic)."""
    if shutil.which("restic") is None:
        return None
    rootfs = work / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.mkdir()
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(rootfs, filter="fully_trusted")
    repo = work / "restic-repo"
    shutil.rmtree(repo, ignore_errors=True)
    renv = {**env, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(repo)}
    run(["restic", "init", "-q"], renv)
    run(["restic", "backup", "-q", str(rootfs)], renv)
    target = work / "restic-out"
    shutil.rmtree(target, ignore_errors=True)
    seconds, _ = run(["restic", "restore", "-q", "latest", "--target", str(target)], renv)
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--ref", default="bookworm-minbase", help="corpus image whose layer is used")
    ap.add_argument("--runs", type=int, default=3, help="backups per mode and producer")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--json", action="store_true", help="also write OUT/bench_exact.json")
    ap.add_argument("--only", nargs="*", help="only these producers")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-exact-", dir=args.out))
    env = {**os.environ, "CHUNKSTORE_CACHE": str(work / "cache")}
    found = corpus_layer(args.corpus, args.ref)
    if found is not None:
        tar, blob, media = found
        source = f"corpus {args.ref} layer"
        corpus_blob: tuple[bytes, str] | None = (blob, media)
    else:
        tar, corpus_blob = realistic_tar(120 << 20, "/usr"), None
        source = "files of /usr"
    log(f"layer: {source}, {len(tar) / MB:.1f} MB tar")
    rows: list[dict[str, Any]] = []
    made = producers(work, tar, corpus_blob)
    all_repo = fresh_repo(work / "repo-all", env)
    for name, make in made.items():
        if args.only and name not in args.only:
            continue
        blob, media = make()
        src = work / f"src-{name}"
        digest = write_image(src, "v1", tar, blob, media)
        log(f"{name}: {len(blob) / MB:.1f} MB blob")
        row = measure_producer(name, src, digest, work, args.runs, env)
        row["blob_bytes"] = len(blob)
        rows.append(row)
        run([*all_repo, "backup", f"oci:{src}:v1", "-t", name], env)
        shutil.rmtree(src)
    one = min((r["repo_bytes"] for r in rows), default=0)
    all_bytes = du(work / "repo-all")
    go_restore = next((r["restore_s"] for r in rows if r["producer"] == "go-default"), None)
    restic_s = restic_restore(work, tar, env)
    result = {
        "layer": source,
        "tar_bytes": len(tar),
        "sha256": hashlib.sha256(tar).hexdigest(),
        "runs": args.runs,
        "producers": rows,
        "all_producers_repo_bytes": all_bytes,
        "one_producer_repo_bytes": one,
        "all_vs_one": all_bytes / one if one else None,
        "restore_oci_go_s": go_restore,
        "restic_restore_s": restic_s,
    }
    print(render(result))
    if args.json:
        (args.out / "bench_exact.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [
        f"layer: {result['layer']}, {result['tar_bytes'] / MB:.1f} MB tar, "
        f"{result['runs']} run(s) per mode",
        "",
        "| producer | blob MB | restored digest | how | backup s | no-detect s | "
        "detection cost | restore oci: s |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in result["producers"]:
        how = r["reproduced_by"] or r["outcome"]
        lines.append(
            f"| {r['producer']} | {r['blob_bytes'] / MB:.1f} | "
            f"{'original' if r['exact'] else 'NEW'} | {how} | {r['backup_s']:.2f} | "
            f"{r['backup_no_detect_s']:.2f} | {100 * r['detect_overhead']:+.0f}% | "
            f"{r['restore_s']:.2f} |"
        )
    if result["all_vs_one"] is not None:
        lines.append(
            f"\nall producers in one repository: {result['all_producers_repo_bytes'] / MB:.1f} MB,"
            f" one producer: {result['one_producer_repo_bytes'] / MB:.1f} MB "
            f"({result['all_vs_one']:.2f}x)"
        )
    if result["restic_restore_s"] and result["restore_oci_go_s"]:
        lines.append(
            f"restore oci: of the Go-made image {result['restore_oci_go_s']:.2f} s, restic restore "
            f"of its root file system {result['restic_restore_s']:.2f} s "
            f"(chunkstore speed {result['restic_restore_s'] / result['restore_oci_go_s']:.2f}x)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
