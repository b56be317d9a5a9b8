#!/usr/bin/env python3
"""Scale by simulation: a synthetic repository index of N blobs, and what it costs to use.

Builds, in a local repository directory, the index files a repository of ``--blobs`` unique 64 KiB
data blobs would have (packs of ``--pack-blobs`` blobs, 16 MiB by default), with no blob data: the
packs are sparse files of the right size, so listing sees them and nothing is stored. Then, each in
a fresh process so peak RSS is its own:

* ``open``:   ``Repository.open`` with an empty cache (list, read, decode and merge every index
              file into the LMDB cache), wall time and peak RSS;
* ``lookup``: random ``Repository.lookup`` of known ids (a warm LMDB cache), lookups per second;
* ``prune``:  ``prune --dry-run`` planning (index snapshot, pack listing, per-pack classification;
              no records, so every pack is planned for deletion and the record walk costs nothing),
              wall time and peak RSS;
* index files: count and total bytes (encrypted repositories add 40 bytes per file).

    .venv/bin/python tools/scale_sim.py --blobs 1000000 --dir /tmp/sim1m
    .venv/bin/python tools/scale_sim.py --sizes 1000000,4000000,16000000 --dir /tmp/sim

Prints one JSON object per size (and a Markdown table at the end).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchlib.measure import measure_call
from benchlib.report import markdown_table

from chunkstore.backends.base import FileType, Handle
from chunkstore.backends.local import LocalBackend
from chunkstore.blob import BlobType, PackEntry
from chunkstore.packindex import INDEX_MAX_BLOBS, IndexedPack, IndexFile, encode_index
from chunkstore.repository import Repository
from index.ids import Digest

BLOB = 64 * 1024
STORED = BLOB + 29  # a stored (incompressible) blob: frame byte + a little
HEADER = 120  # a pack header's share per pack (approximate; only sizes matter)


@dataclass(frozen=True, slots=True)
class Result:
    """Measurements at one size."""

    blobs: int
    packs: int
    index_files: int
    index_bytes: int
    build_s: float
    open_s: float
    open_rss_mib: float
    lookups_per_s: float
    prune_plan_s: float
    prune_rss_mib: float


def _ids(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def build(root: Path, blobs: int, pack_blobs: int) -> tuple[int, int, int]:
    """Write the repository: config, sparse packs, index files. Returns (packs, files, bytes)."""
    if root.exists():
        shutil.rmtree(root)
    repo = Repository.init(LocalBackend(root), cache_dir=root / ".build-cache")
    files = total = packs = 0
    per_file = INDEX_MAX_BLOBS // pack_blobs  # whole packs per file, as split_index writes
    n_packs = -(-blobs // pack_blobs)
    for first in range(0, n_packs, per_file):
        group = []
        for p in range(first, min(first + per_file, n_packs)):
            count = min(pack_blobs, blobs - p * pack_blobs)
            ids = _ids(p, count)
            entries = tuple(
                PackEntry(BlobType.DATA, Digest("sha256", i), k * STORED, STORED, BLOB)
                for k, i in enumerate(ids)
            )
            size = count * STORED + HEADER
            pack_id = Digest("sha256", random.Random(-1 - p).randbytes(32))
            path = repo.backend.path(Handle(FileType.PACK, pack_id.hex))  # type: ignore[attr-defined]
            with open(path, "wb") as f:
                f.truncate(size)  # sparse: listing sees the size, the disk holds nothing
            group.append(IndexedPack(pack_id, size, entries))
            packs += 1
        plain = encode_index(IndexFile(tuple(group)))
        repo.save_file(FileType.INDEX, "pack-index", plain)
        files += 1
        total += len(plain)
    repo.close()
    shutil.rmtree(root / ".build-cache", ignore_errors=True)
    return packs, files, total


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints JSON."""
    root = Path(args.dir)
    cache = root / ".cache"
    if args.phase == "open":
        shutil.rmtree(cache, ignore_errors=True)
        repo, opened = measure_call(lambda: Repository.open(LocalBackend(root), cache_dir=cache))
        out = {"s": opened.seconds, "rss": opened.rss_kib / 1024, "blobs": len(repo.index)}
    elif args.phase == "lookup":
        repo = Repository.open(LocalBackend(root), cache_dir=cache)
        rng = random.Random(5)
        pack_ids = [rng.randrange(args.packs) for _ in range(200)]
        targets = [Digest("sha256", _ids(p, args.pack_blobs)[rng.randrange(16)]) for p in pack_ids]
        targets *= 100
        t = time.perf_counter()
        found = sum(repo.lookup(d) is not None for d in targets)
        s = time.perf_counter() - t
        assert found == len(targets), found
        out = {"rate": len(targets) / s}
    else:
        from chunkstore.prune import prune

        repo = Repository.open(LocalBackend(root), cache_dir=cache)
        base = _rss_mib()
        report, planned = measure_call(lambda: prune(repo, dry_run=True))
        out = {"s": planned.seconds, "rss": planned.rss_kib / 1024, "rss_before": base}
        assert report.packs_deleted == args.packs, report
    repo.close()
    print(json.dumps(out))


def _run(args: argparse.Namespace, name: str, packs: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--phase", name, "--dir", args.dir, "--packs", str(packs)]
    cmd += ["--pack-blobs", str(args.pack_blobs)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    value: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return value


def measure(args: argparse.Namespace, blobs: int) -> Result:
    """Build at one size and run every phase."""
    t = time.perf_counter()
    packs, files, total = build(Path(args.dir), blobs, args.pack_blobs)
    built = time.perf_counter() - t
    opened = _run(args, "open", packs)
    looked = _run(args, "lookup", packs)
    pruned = _run(args, "prune", packs)
    return Result(
        blobs=blobs,
        packs=packs,
        index_files=files,
        index_bytes=total,
        build_s=round(built, 1),
        open_s=round(opened["s"], 1),
        open_rss_mib=round(opened["rss"]),
        lookups_per_s=round(looked["rate"]),
        prune_plan_s=round(pruned["s"], 1),
        prune_rss_mib=round(pruned["rss"]),
    )


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1000000", help="blob counts, comma-separated")
    ap.add_argument("--dir", default="/tmp/chunkstore-scale-sim")
    ap.add_argument("--pack-blobs", type=int, default=256, help="blobs per pack (256 = 16 MiB)")
    ap.add_argument("--keep", action="store_true", help="keep the last repository")
    ap.add_argument("--phase", choices=["open", "lookup", "prune"], help=argparse.SUPPRESS)
    ap.add_argument("--packs", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        phase(args)
        return
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        r = measure(args, size)
        results.append(r)
        print(json.dumps(asdict(r)), flush=True)
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)
    headers = ["blobs", "packs", "index files", "index MiB", "open s", "open RSS MiB"]
    headers += ["lookups/s", "prune plan s", "prune RSS MiB"]
    rows = [
        [
            f"{r.blobs:,}",
            f"{r.packs:,}",
            str(r.index_files),
            f"{r.index_bytes / 2**20:.0f}",
            str(r.open_s),
            str(r.open_rss_mib),
            f"{r.lookups_per_s:,}",
            str(r.prune_plan_s),
            str(r.prune_rss_mib),
        ]
        for r in results
    ]
    print("\n" + "\n".join(markdown_table(headers, rows, ["---:"] * len(headers))))


if __name__ == "__main__":
    main()
