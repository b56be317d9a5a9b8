#!/usr/bin/env python3
"""Costs against the number of images in the repository: backup, ``tags``, ``ls-image``, mount.

Issue 12, item 4: backing up a new image into a repository that already holds a hundred images
takes the same time as into an empty one (within 10%), and ``tags``, ``ls-image`` and the mount's
time-to-ready do not grow with the number of tags.

    .venv/bin/python tools/bench_scale_images.py [--sizes 1,10,100] [--repeat 3] [--corpus DIR]
                                                 [--probe REF] [--cold] [--json] [--keep]

The repository is filled by ``tools/make_many_images.py`` (variants of ``bookworm-minbase`` with
a few changed files and 2 MiB of new bytes each, two layers, the base shared). At 0 images and
then at every size, a snapshot of the repository is kept (packs hard-linked, cache copied); then
``--repeat`` rounds run every job at every size in turn (so a busy moment of a shared machine
hits all sizes alike; the fastest run and the median are reported, ratios of the fastest), every
command a fresh ``chunkstore`` process with the repository's warm cache:

* ``backup``: ``chunkstore backup oci:CORPUS/oci:PROBE -t probe`` (``bookworm-python3``, not a
  variant) into a copy of the repository as it is (packs hard-linked, the cache copied), so
  every run backs up the same new image into the same repository;
* ``tags``: ``chunkstore tags``;
* ``ls-image``: ``chunkstore ls-image variant-0000 /``;
* ``mount ready``: ``chunkstore mount variant-0000 DIR`` until its ready line (then unmounted).

The page cache is left warm (the inputs read once before each run; ``--cold`` drops it
instead, root only): the question is what grows with the repository, not disk speed, and
dropping the cache would disturb everyone else on a shared machine. Ratios are to the smallest
non-empty repository measured in this run (into the empty one, the new image also stores the
variants' base files: more work, so that row is shown but not compared).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib.common import MB, ROOT, base_env, chunkstore_binary, log, workdir
from benchlib.corpus import DEFAULT_CORPUS, has_corpus, read_corpus
from benchlib.measure import Measured, PageCache, Quiet, disk_usage, run_checked, run_measured
from benchlib.report import (
    Column,
    Table,
    git_revision,
    machine_info,
    machine_line,
    markdown_table,
    report,
)
from make_many_images import fill_repository, load_base, make_variants, variant_ref

from chunkstore import api

TARGET_GROWTH = 0.10
PROBE_TAG = "probe"
READY_TIMEOUT_S = 120.0

#: The jobs measured at every size, in report order.
JOBS = ("backup", "tags", "ls-image", "mount ready")


@dataclass
class Point:
    """The figures at one repository size."""

    images: int
    repo: str = ""  # a snapshot of the repository at this size
    cache: str = ""  # and of its cache
    records: int = 0
    index_files: int = 0
    packs: int = 0
    blobs: int = 0
    repo_bytes: int = 0
    fill_s: float = 0.0  # seconds to back the variants up to this size (in one process)
    seconds: dict[str, list[float]] = field(default_factory=dict)  # job -> every run
    cpu_s: dict[str, list[float]] = field(default_factory=dict)
    rss_kib: dict[str, int] = field(default_factory=dict)
    other_cpu_s: float = 0.0  # CPU time other processes used during the timed runs

    def median(self, job: str) -> float | None:
        runs = self.seconds.get(job)
        return statistics.median(runs) if runs else None

    def fastest(self, job: str) -> float | None:
        runs = self.seconds.get(job)
        return min(runs) if runs else None


def _shape(repo: Path, cache: Path, point: Point) -> None:
    """Records, index files, packs, blobs and bytes of the repository."""
    with api.open_repository(repo, cache_dir=cache) as opened:
        stats = api.repository_stats(opened)
    files: dict[str, dict[str, int]] = stats["files"]  # type: ignore[assignment]
    blobs: dict[str, int] = stats["blobs"]  # type: ignore[assignment]
    point.records = files["records"]["count"]
    point.index_files = files["index"]["count"]
    point.packs = files["data"]["count"]
    point.blobs = sum(blobs.values())
    point.repo_bytes = disk_usage(repo)


def _record(point: Point, job: str, m: Measured) -> None:
    point.seconds.setdefault(job, []).append(m.seconds)
    point.cpu_s.setdefault(job, []).append(m.cpu_s)
    point.rss_kib[job] = max(point.rss_kib.get(job, 0), m.rss_kib)
    point.other_cpu_s += m.other_cpu_s


@contextlib.contextmanager
def _copy_of(repo: Path, cache: Path, where: Path) -> Iterator[tuple[Path, Path]]:
    """The repository with its packs hard-linked (files are written once) and its cache copied."""
    copy, cache_copy = where / "repo", where / "cache"
    where.mkdir()
    run_checked(["cp", "-al", str(repo), str(copy)])
    run_checked(["cp", "-a", str(cache), str(cache_copy)])
    try:
        yield copy, cache_copy
    finally:
        shutil.rmtree(where, ignore_errors=True)


class Bench:
    """The commands and their environment."""

    def __init__(self, work: Path, corpus: Path, probe: str, pages: PageCache, quiet: Quiet):
        self.work = work
        self.repo = work / "repo"
        self.cache = work / "cache"
        self.corpus = corpus
        self.probe = probe
        self.pages = pages
        self.quiet = quiet
        self.bin = chunkstore_binary()
        self.env = base_env(work)
        images = read_corpus(corpus / "oci")
        if probe not in images:
            raise SystemExit(f"bench_scale_images: no image {probe!r} in {corpus}/oci")
        self.probe_inputs = list(images[probe].blob_paths)

    def cmd(self, repo: Path, cache: Path, *args: str) -> list[str]:
        return [self.bin, "-r", str(repo), "--cache-dir", str(cache), *args]

    def _run(self, cmd: list[str], inputs: list[Path]) -> Measured:
        self.pages.prepare(inputs)
        self.quiet.wait()
        m = run_measured(cmd, self.env)
        if m.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({m.returncode}): {m.stderr[-2000:]}")
        return m

    def backup(self, point: Point, k: int) -> None:
        """The probe backed up into a copy of the point's repository (``k``: the round)."""
        source = f"oci:{self.corpus / 'oci'}:{self.probe}"
        where = self.work / f"copy-{point.images}-{k}"
        with _copy_of(Path(point.repo), Path(point.cache), where) as (repo, cache):
            cmd = self.cmd(repo, cache, "backup", source, "-t", PROBE_TAG)
            _record(point, "backup", self._run(cmd, [*self.probe_inputs, repo, cache]))

    def reads(self, point: Point) -> None:
        """``tags``, ``ls-image`` and the mount, once each."""
        name = variant_ref(0)
        repo, cache = Path(point.repo), Path(point.cache)
        inputs = [repo, cache]
        _record(point, "tags", self._run(self.cmd(repo, cache, "tags"), inputs))
        cmd = self.cmd(repo, cache, "ls-image", name, "/")
        _record(point, "ls-image", self._run(cmd, inputs))
        self.pages.prepare(inputs)
        self.quiet.wait()
        point.seconds.setdefault("mount ready", []).append(self.mount_ready(repo, cache, name))

    def mount_ready(self, repo: Path, cache: Path, name: str) -> float:
        """Seconds from starting ``chunkstore mount`` to its ready line; then unmounted."""
        mnt = self.work / "mnt"
        mnt.mkdir(exist_ok=True)
        chunks = self.work / "mount-chunks"
        shutil.rmtree(chunks, ignore_errors=True)
        cmd = [
            *self.cmd(repo, cache, "mount", name, str(mnt)),
            "--cache-dir",
            str(chunks),
        ]
        log_path = self.work / "mount.log"
        t0 = time.perf_counter()
        with log_path.open("w") as err:
            proc = subprocess.Popen(
                cmd, env=self.env, stdout=subprocess.PIPE, stderr=err, text=True
            )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            seconds = time.perf_counter() - t0
            if "ready" not in line:
                raise RuntimeError(f"mount failed: {line!r} {log_path.read_text()[-2000:]}")
            if not os.path.ismount(mnt):
                raise RuntimeError(f"{mnt} is not a mount point after the ready line")
            return seconds
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


# ----------------------------------------------------------------------------- report


def ratios(points: list[Point]) -> dict[str, dict[int, float]]:
    """job -> images -> fastest run / the fastest at the smallest non-empty repository measured.

    The backup is compared with a repository that already holds the variants' base (one image),
    not with the empty one: into the empty repository the probe stores the base's files too, so
    it does more work and that comparison would hide growth.
    """
    out: dict[str, dict[int, float]] = {}
    for job in JOBS:
        have = [(p.images, p.fastest(job)) for p in points if p.fastest(job) is not None]
        base = next((s for n, s in have if n > 0), None)
        if base is None:
            continue
        out[job] = {n: (s or 0.0) / base for n, s in have}
    return out


def evaluate(points: list[Point]) -> list[dict[str, Any]]:
    r = ratios(points)
    first = next((p.images for p in points if p.images > 0), None)
    targets = []
    for job in JOBS:
        got = {n: v for n, v in r.get(job, {}).items() if n > 0}
        if len(got) >= 2:
            worst = max(got.items(), key=lambda kv: kv[1])
            what = "backup of a new image" if job == "backup" else job
            targets.append(
                {
                    "name": f"{what} within {TARGET_GROWTH:.0%} of its time at {first} image(s)",
                    "value": f"worst {worst[1]:.2f}x at {worst[0]} images",
                    "ok": worst[1] <= 1 + TARGET_GROWTH,
                }
            )
    for t in targets:
        t["verdict"] = "PASS" if t["ok"] else "MISS"
    return targets


def _cell(p: Point, job: str, base: dict[int, float]) -> str:
    s, m = p.fastest(job), p.median(job)
    if s is None or m is None:
        return "-"
    return f"{s:.2f} / {m:.2f} ({base.get(p.images, 0.0):.2f}x)"


def render(result: dict[str, Any], points: list[Point]) -> tuple[str, list[str]]:
    r = ratios(points)
    lines = [
        f"bench_scale_images: a new image ({result['probe']}) and reads of {variant_ref(0)}, "
        f"against the number of images in the repository; {machine_line(result['machine'])}",
        f"chunkstore {result['git']}; page cache {result['page_cache']}; "
        f"{result['repeat']} rounds; other CPU-s during the runs: {result['other_cpu_s']:.0f}",
        "",
    ]
    table = Table(
        [
            Column("images", 6, ">"),
            Column("records", 7, ">"),
            Column(("index", "files"), 6, ">"),
            Column("packs", 6, ">"),
            Column("blobs", 7, ">"),
            Column("repo MB", 8, ">"),
            *(Column((job, "s (ratio)"), 20, ">") for job in JOBS),
        ]
    )
    md_rows = []
    for p in points:
        cells = [
            str(p.images),
            str(p.records),
            str(p.index_files),
            str(p.packs),
            str(p.blobs),
            f"{p.repo_bytes / MB:.1f}",
            *(_cell(p, job, r.get(job, {})) for job in JOBS),
        ]
        table.row(*cells)
        md_rows.append([cells[0], cells[1], cells[3], cells[4], *cells[6:]])
    lines += table.text()
    lines.append(
        "s = wall seconds of one chunkstore process, fastest / median run; ratio (of the fastest) = "
        "to the smallest non-empty "
        "repository (the empty one\nstores the base's files too: more work, not comparable)"
    )
    lines.append("")
    lines.append("targets:")
    lines += [f"  {t['verdict']:<4}  {t['name']:<66} {t['value']}" for t in result["targets"]]
    md = markdown_table(
        ["images", "records", "packs", "blobs", *(f"{j} s" for j in JOBS)],
        md_rows,
        ["---:"] * (4 + len(JOBS)),
    )
    return "\n".join(lines), md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus directory")
    ap.add_argument("--base", default="bookworm-minbase", help="image the variants build on")
    ap.add_argument("--probe", default="bookworm-python3", help="the new image backed up")
    ap.add_argument("--sizes", default="1,10,100", help="images in the repository (1,10,100)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per job and size (3)")
    ap.add_argument("--unique", type=int, default=2 << 20, help="new bytes per variant")
    ap.add_argument("--changed", type=int, default=5, help="base files changed per variant")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out", help="working/output dir")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before runs")
    ap.add_argument("--json", action="store_true", help="also write OUT/bench_scale_images.json")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--max-wait", type=float, default=60, help="seconds to wait for quiet (60)")
    args = ap.parse_args(argv)
    corpus: Path = args.corpus.resolve()
    if not has_corpus(corpus):
        print(f"bench_scale_images: SKIPPED: no corpus at {corpus}", file=sys.stderr)
        return 0
    sizes = sorted({int(s) for s in args.sizes.split(",") if s})
    started = time.perf_counter()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    pages = PageCache(force_warm=not args.cold)
    quiet = Quiet(args.max_wait)
    points: list[Point] = []
    failures: list[str] = []
    with workdir(out, "bench-scale-", args.keep) as work:
        try:
            base = load_base(corpus, args.base)
            layout = work / "oci"
            t0 = time.perf_counter()
            make_variants(base, layout, range(sizes[-1]), changed=args.changed, unique=args.unique)
            log(f"{sizes[-1]} variants of {args.base} written in {time.perf_counter() - t0:.1f} s")
            bench = Bench(work, corpus, args.probe, pages, quiet)
            api.init_repository(bench.repo, cache_dir=bench.cache).close()
            have = 0
            for n in [0, *sizes]:
                point = Point(images=n)
                if n > have:
                    t0 = time.perf_counter()
                    refs = [variant_ref(i) for i in range(have, n)]
                    fill_repository(bench.repo, bench.cache, layout, refs)
                    point.fill_s = time.perf_counter() - t0
                    log(f"{n} images in the repository ({point.fill_s:.1f} s to add {len(refs)})")
                    have = n
                _shape(bench.repo, bench.cache, point)
                snap = work / f"at-{n}"
                snap.mkdir()
                point.repo, point.cache = str(snap / "repo"), str(snap / "cache")
                run_checked(["cp", "-al", str(bench.repo), point.repo])
                run_checked(["cp", "-a", str(bench.cache), point.cache])
                points.append(point)
            # Rounds over every size, so that a busy moment of the machine hits all sizes alike.
            for k in range(args.repeat):
                for point in points:
                    log(f"round {k + 1}/{args.repeat}, {point.images} images")
                    bench.backup(point, k)
                    if point.images > 0:
                        bench.reads(point)
        except RuntimeError as exc:
            failures.append(str(exc))
            log(f"FAILED: {exc}")
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_revision(),
        "machine": machine_info(),
        "corpus": str(corpus),
        "probe": args.probe,
        "base": args.base,
        "repeat": args.repeat,
        "page_cache": f"{pages.mode} ({pages.reason})",
        "points": [asdict(p) for p in points],
        "other_cpu_s": sum(p.other_cpu_s for p in points),
        "failures": failures,
    }
    result["targets"] = evaluate(points)
    text, md = render(result, points)
    result["markdown"] = md
    result["total_seconds"] = time.perf_counter() - started
    return report(
        result,
        text + "\n\n" + "\n".join(md),
        failures,
        out / "bench_scale_images.json" if args.json else None,
    )


if __name__ == "__main__":
    sys.exit(main())
