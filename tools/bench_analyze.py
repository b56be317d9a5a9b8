#!/usr/bin/env python3
"""Benchmark of ``chunkstore analyze`` over the Debian corpus, against simple peers in the same run.

Target (issue 6): >= 300 MB/s of uncompressed layer content on this 2-core machine for one chunk
size, gzip decompression included, all sweep sizes in one pass over the data.

Usage::

    .venv/bin/python tools/bench_analyze.py [--corpus DIR] [--images REF ...] [--workers N]
                                            [--no-casync] [--json]

Rows, each timed wall-clock in this run (the machine may be shared: compare ratios, not MB/s
across runs):

* ``analyze 64K``: ``chunkstore analyze --json --chunk-sizes 64K`` over every image;
* ``analyze sweep``: the same with ``--chunk-sizes 16K,64K,256K,1M`` (one pass for all sizes);
* ``gzip -dc | sha256sum``: every distinct layer blob decompressed and hashed, two at a time
  (``xargs -P``), the floor of any tool that reads these layers;
* ``casync make``: casync chunking, hashing and compressing the images' root filesystem tars
  (``CORPUS/rootfs/NAME.tar``, uncompressed: no gzip to do) into one store, when available.

MB/s is uncompressed content per second: for analyze, the tar bytes of every image (a layer
shared by two images counts twice, as it is content analysed for both; the distinct-layer figure is
printed too); for the gzip peer, the tar bytes of the distinct layers; for casync, the tar sizes.
Peak RSS of the analyze process is printed (``resource.getrusage`` of the child).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = [
    "bookworm-minbase",
    "bookworm-python3",
    "bookworm-python3-layered",
    "bookworm-python3-point",
    "bookworm-python3-rebuilt",
    "trixie-minbase",
]


def _layers(oci: Path, refs: list[str]) -> list[Path]:
    """Distinct layer blob paths of the images ``refs``, in order."""
    index = json.loads((oci / "index.json").read_text())
    blobs = oci / "blobs" / "sha256"
    out: dict[str, Path] = {}
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") in refs:
            manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_bytes())
            for layer in manifest["layers"]:
                digest = layer["digest"].split(":")[1]
                out.setdefault(digest, blobs / digest)
    return list(out.values())


def _timed(cmd: list[str], **kw: object) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - start, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("/var/tmp/chunkstore-corpus"))
    ap.add_argument("--images", nargs="+", default=DEFAULT_IMAGES)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-casync", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    oci = args.corpus / "oci"
    if not oci.is_dir():
        sys.exit(f"no corpus at {oci}: run tools/build_corpus first")
    exe = str(ROOT / ".venv" / "bin" / "chunkstore")
    sources = [f"oci:{oci}:{ref}" for ref in args.images]
    rows: list[dict[str, object]] = []
    doc: dict[str, object] = {}
    for label, sizes in (("analyze 64K", "64K"), ("analyze sweep", "16K,64K,256K,1M")):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        seconds, proc = _timed(
            [exe, "analyze", *sources, "--json", "--chunk-sizes", sizes,
             "--workers", str(args.workers)]
        )  # fmt: skip
        rss = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        doc = json.loads(proc.stdout)
        tar = doc["totals"]["tar_bytes"]
        rows.append(
            {
                "tool": label,
                "seconds": round(seconds, 2),
                "bytes": tar,
                "mb_s": round(tar / seconds / 1e6, 1),
                "distinct_layer_mb_s": round(doc["scanned_tar_bytes"] / seconds / 1e6, 1),
                "peak_rss_mib": round(rss / 1024),
            }
        )
    distinct_tar = int(doc["totals"]["layer_level_tar_bytes"])  # type: ignore[index]
    layers = _layers(oci, args.images)
    script = 'gzip -dc "$1" | sha256sum >/dev/null'
    seconds, _ = _timed(
        ["xargs", "-P", str(args.workers), "-n", "1", "sh", "-c", script, "sh",
         *[str(p) for p in layers]]
    )  # fmt: skip
    rows.append(
        {
            "tool": "gzip -dc | sha256sum",
            "seconds": round(seconds, 2),
            "bytes": distinct_tar,
            "mb_s": round(distinct_tar / seconds / 1e6, 1),
        }
    )
    tars = [args.corpus / "rootfs" / f"{ref}.tar" for ref in args.images]
    tars = [t for t in tars if t.is_file()]
    if not args.no_casync and shutil.which("casync") and tars:
        with tempfile.TemporaryDirectory(prefix="bench-analyze-") as tmp:
            start = time.perf_counter()
            for i, tar in enumerate(tars):
                subprocess.run(
                    ["casync", "make", f"--store={tmp}/store", f"{tmp}/{i}.caibx", str(tar)],
                    check=True,
                    capture_output=True,
                )
            seconds = time.perf_counter() - start
        total = sum(t.stat().st_size for t in tars)
        rows.append(
            {
                "tool": f"casync make ({len(tars)} rootfs tars)",
                "seconds": round(seconds, 2),
                "bytes": total,
                "mb_s": round(total / seconds / 1e6, 1),
            }
        )
    base = {str(r["tool"]): float(str(r["mb_s"])) for r in rows}
    for r in rows:
        r["vs_gzip_sha256"] = round(float(str(r["mb_s"])) / base["gzip -dc | sha256sum"], 2)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'tool':40} {'seconds':>8} {'MB':>8} {'MB/s':>8} {'x gzip|sha':>10}  notes")
    for r in rows:
        notes = []
        if "distinct_layer_mb_s" in r:
            notes.append(f"distinct layers {r['distinct_layer_mb_s']} MB/s")
            notes.append(f"peak RSS {r['peak_rss_mib']} MiB")
        print(
            f"{r['tool']!s:40} {r['seconds']!s:>8} {int(str(r['bytes'])) / 1e6:8.0f} "
            f"{r['mb_s']!s:>8} {r['vs_gzip_sha256']!s:>10}  {', '.join(notes)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
