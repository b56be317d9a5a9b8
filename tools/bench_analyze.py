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
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchlib.common import chunkstore_binary
from benchlib.corpus import DEFAULT_CORPUS, read_corpus
from benchlib.measure import Measured, run_measured
from benchlib.report import Column, Table

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
    out: dict[str, Path] = {}
    for image in read_corpus(oci).values():
        if image.ref in refs:
            for layer in image.layers:
                out.setdefault(layer.digest, layer.path)
    return list(out.values())


def _timed(cmd: list[str]) -> Measured:
    """``cmd`` run to completion and measured; raises when it fails."""
    m = run_measured(cmd)
    if m.returncode != 0:
        raise subprocess.CalledProcessError(m.returncode, cmd, m.stdout, m.stderr)
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--images", nargs="+", default=DEFAULT_IMAGES)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-casync", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    oci = args.corpus / "oci"
    if not oci.is_dir():
        sys.exit(f"no corpus at {oci}: run tools/build_corpus first")
    exe = chunkstore_binary()
    sources = [f"oci:{oci}:{ref}" for ref in args.images]
    rows: list[dict[str, object]] = []
    doc: dict[str, Any] = {}
    for label, sizes in (("analyze 64K", "64K"), ("analyze sweep", "16K,64K,256K,1M")):
        m = _timed(
            [exe, "analyze", *sources, "--json", "--chunk-sizes", sizes,
             "--workers", str(args.workers)]
        )  # fmt: skip
        seconds, rss = m.seconds, m.rss_kib
        doc = json.loads(m.stdout)
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
    distinct_tar = int(doc["totals"]["layer_level_tar_bytes"])
    layers = _layers(oci, args.images)
    script = 'gzip -dc "$1" | sha256sum >/dev/null'
    seconds = _timed(
        ["xargs", "-P", str(args.workers), "-n", "1", "sh", "-c", script, "sh",
         *[str(p) for p in layers]]
    ).seconds  # fmt: skip
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
            seconds = 0.0
            for i, tar in enumerate(tars):
                cmd = ["casync", "make", f"--store={tmp}/store", f"{tmp}/{i}.caibx", str(tar)]
                seconds += _timed(cmd).seconds
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
    table = Table(
        [
            Column("tool", 40),
            Column("seconds", 8, ">"),
            Column("MB", 8, ">"),
            Column("MB/s", 8, ">"),
            Column("x gzip|sha", 10, ">"),
            Column("notes", sep="  "),
        ]
    )
    for r in rows:
        notes = []
        if "distinct_layer_mb_s" in r:
            notes.append(f"distinct layers {r['distinct_layer_mb_s']} MB/s")
            notes.append(f"peak RSS {r['peak_rss_mib']} MiB")
        table.row(
            str(r["tool"]),
            str(r["seconds"]),
            f"{int(str(r['bytes'])) / 1e6:.0f}",
            str(r["mb_s"]),
            str(r["vs_gzip_sha256"]),
            ", ".join(notes),
        )
    print("\n".join(table.text(rule=False)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
