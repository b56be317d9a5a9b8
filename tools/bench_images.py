#!/usr/bin/env python3
"""Image benchmark: ``chunkstore backup``/``restore``/``analyze`` of the Debian corpus, against restic
and borg in the same run.

Targets (the image issue and issue 12), all measured in one run on the corpus built by
``tools/build_corpus``:

* backup throughput >= 2x ``restic backup`` of the same images' root filesystems, into a plain
  and into an encrypted repository (like for like: restic always encrypts);
* repository size on disk after all backups <= restic's;
* backing up ``bookworm-minbase-rebuilt`` after ``bookworm-minbase`` stores at most 3% of its
  layer's compressed size (the same figure is printed for restic and borg);
* restore throughput >= 2x ``restic restore latest --target DIR`` (per snapshot), compared with
  ``chunkstore restore REF dir:DIR`` (both write the root filesystem's files);
* ``chunkstore analyze`` of every image >= 300 MB/s of uncompressed layer bytes (with
  ``gzip -dc | sha256sum`` of the distinct layers, the floor of any reader, measured next to it);
* peak RSS of every chunkstore run <= 250 MB.

Every job is reported by wall time, with its CPU utilisation ((user + sys) / wall).

Usage::

    .venv/bin/python tools/bench_images.py [--corpus DIR] [--images REF ...] [--out DIR]
                                           [--json] [--keep] [--no-borg] [--no-encrypted]
                                           [--no-analyze] [--warm] [--max-wait S]

What it does:

1. Reads the OCI layout ``CORPUS/oci`` and, for every selected image, its layers: compressed size
   and uncompressed tar size (each distinct layer blob is decompressed once, untimed).
2. Unpacks every image's root filesystem once into its own directory under a temporary work
   directory (``CORPUS/rootfs/NAME.tar`` extracted the way ``tools/build_corpus`` fills a bundle,
   i.e. without ``/dev``; ``bookworm-python3-layered`` is ``bookworm-python3``'s tree; images
   without a tarball are unpacked with ``umoci unpack``). Its size is the sum of the sizes of its
   regular files (hard links once).
3. For each tool, in a fresh repository and cache: backs up the images one by one in the order
   given (``bookworm-minbase-rebuilt`` right after ``bookworm-minbase`` by default; older corpora:
   the python3 rebuild):
   ``chunkstore backup oci:CORPUS/oci:REF -t REF``; ``restic backup --tag REF DIR`` (repository
   format 2, compression auto, always encrypted) and ``borg create --compression zstd,3
   REPO::REF DIR`` (encryption none), one snapshot/archive per image directory. The repository's
   size on disk is taken after each backup (bytes newly stored = its growth). Then restores every
   image into a fresh directory: ``chunkstore restore REF dir:DIR`` (the root filesystem, like
   ``restic restore latest --tag REF --target DIR`` and ``borg extract REPO::REF``; all three
   trees are checked against the source tree's file count and bytes), and, as a row of its own
   (phase ``restore-oci``), ``chunkstore restore REF oci:DIR:REF``: every layer tar rebuilt
   bit-exact, checked against its diff_id and recompressed exactly; the corpus' layers are
   umoci-made (klauspost pgzip, 256 KiB blocks), so that row includes reproducing that
   compression for every layer, which restic and borg do not do. The encrypted chunkstore
   repository (``init --encrypt``) gets the same backups and ``dir:`` restores.
   Before every timed run the page cache is dropped (root only; otherwise the inputs are read
   once so every run starts warm) and the benchmark waits (at most ``--max-wait`` s in all) for
   the rest of the machine to go quiet; peak RSS and CPU time come from ``/usr/bin/time``.
4. Runs ``chunkstore analyze --json`` over every image at once, then its floor (see above).
5. Prints a table per tool and phase (wall seconds, MB/s, CPU seconds and utilisation, peak RSS,
   repository size, ratios to restic), the analyze table, a per-image table, and PASS/MISS for
   each target; ``--json`` also writes ``OUT/bench_images.json``.

Throughput: chunkstore's backup and ``restore-oci`` are MB of uncompressed layer tar per second;
every ``dir:`` restore, restic's and borg's figures are MB of root-filesystem file bytes per
second (tar and files differ by the tar headers, about 3-5%). Ratios of throughput are "tool
MB/s / restic MB/s" (``restore-oci`` is divided by restic's restore). Units: MB = 10**6 bytes,
MiB = 2**20 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib.common import MB, ROOT, base_env, chunkstore_binary, log, restic_summary, workdir
from benchlib.corpus import (
    DEFAULT_CORPUS,
    REBUILT_PAIRS,
    CorpusImage,
    has_corpus,
    order_refs,
    read_corpus,
    uncompressed_size,
)
from benchlib.measure import (
    Measured,
    PageCache,
    Quiet,
    disk_usage,
    run_checked,
    run_measured,
    tree_size,
)
from benchlib.report import (
    Column,
    Table,
    git_revision,
    libraries_line,
    library_versions,
    machine_info,
    machine_line,
    report,
    target_lines,
    tool_version,
)

from chunkstore.errors import ChunkstoreError
from chunkstore.images.oci_layout import OCILayout

PASSWORD = "bench-images-password"

# Targets of the issue.
TARGET_THROUGHPUT_RATIO = 2.0
TARGET_REBUILT_FRACTION = 0.03
TARGET_RSS_BYTES = 250 * MB
TARGET_ANALYZE_MB_S = 300.0

# Images whose root filesystem is another corpus tarball's tree.
ROOTFS_OF = {
    "bookworm-python3-layered": "bookworm-python3",
    "bookworm-nginx-layered": "bookworm-nginx",
}

# ----------------------------------------------------------------------------- corpus


@dataclass
class Image:
    ref: str
    layers: list[dict[str, Any]]  # digest, size (compressed), media_type, tar_bytes
    rootfs_source: str = ""  # the tarball (or "umoci unpack") the tree came from
    rootfs_dir: str = ""
    rootfs_bytes: int = 0
    rootfs_files: int = 0

    @property
    def compressed_bytes(self) -> int:
        return sum(la["size"] for la in self.layers)

    @property
    def tar_bytes(self) -> int:
        return sum(la["tar_bytes"] for la in self.layers)


def select_refs(images: dict[str, CorpusImage], wanted: list[str] | None) -> list[str]:
    """The refs ``wanted`` names (exactly, or by a unique suffix), else all in default order."""
    if not wanted:
        return order_refs(list(images))
    refs: list[str] = []
    for name in wanted:
        matches = [r for r in images if r == name] or [
            r for r in images if r.endswith("-" + name) or r == f"bookworm-{name}"
        ]
        if len(matches) != 1:
            raise SystemExit(
                f"bench_images: --images {name!r} matches {matches or 'nothing'} "
                f"(refs in the corpus: {', '.join(sorted(images))})"
            )
        if matches[0] not in refs:
            refs.append(matches[0])
    return refs


def load_images(corpus: Path, wanted: list[str] | None) -> list[Image]:
    found = read_corpus(corpus / "oci")
    sizes: dict[str, int] = {}
    images = []
    for ref in select_refs(found, wanted):
        layers = []
        for la in found[ref].layers:
            if la.digest not in sizes:
                sizes[la.digest] = uncompressed_size(la.path, la.media_type)
            layers.append(
                {
                    "digest": la.digest,
                    "size": la.size,
                    "media_type": la.media_type,
                    "tar_bytes": sizes[la.digest],
                    "path": str(la.path),
                }
            )
        images.append(Image(ref=ref, layers=layers))
    return images


def unpack_rootfs(corpus: Path, image: Image, dest: Path) -> None:
    """The image's root filesystem, once, into ``dest``."""
    env = dict(os.environ)
    name = ROOTFS_OF.get(image.ref, image.ref)
    tar = corpus / "rootfs" / f"{name}.tar"
    if tar.exists():
        dest.mkdir(parents=True)
        cmd = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(tar)]
        run_checked([*cmd, "-C", str(dest), "--exclude=./dev/*"], env)
        image.rootfs_source = str(tar)
        image.rootfs_dir = str(dest)
    else:
        bundle = dest.with_name(dest.name + "-bundle")
        run_checked(
            ["umoci", "unpack", "--image", f"{corpus / 'oci'}:{image.ref}", str(bundle)], env
        )
        image.rootfs_source = "umoci unpack"
        image.rootfs_dir = str(bundle / "rootfs")
    image.rootfs_files, image.rootfs_bytes = tree_size(Path(image.rootfs_dir))


# ----------------------------------------------------------------------------- tools


#: Phases in report order, and the restic phase each is compared with.
PHASES = {"backup": "backup", "restore": "restore", "restore-oci": "restore"}


@dataclass
class Run:
    image: str
    phase: str  # "backup", "restore" or "restore-oci" (chunkstore only)
    seconds: float
    bytes: int  # tar bytes (chunkstore) or rootfs bytes (restic, borg)
    cpu_s: float
    rss_kib: int
    other_cpu_s: float
    repo_bytes: int = 0  # after the run (backups)
    added_bytes: int = 0  # repository growth (backups)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolResult:
    key: str
    label: str
    version: str
    units: str  # what "bytes" counts
    runs: list[Run] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def phase(self, phase: str) -> list[Run]:
        return [r for r in self.runs if r.phase == phase]


class Tool:
    key = ""
    label = ""
    units = ""

    def __init__(self, work: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.key}-", dir=work))
        self.repo = self.dir / "repo"
        self.cache = self.dir / "cache"
        self.cache.mkdir()
        self.env = base_env(self.dir)

    def version(self) -> str:
        raise NotImplementedError

    def init(self) -> None:
        raise NotImplementedError

    def backup_cmd(self, image: Image) -> list[str]:
        raise NotImplementedError

    def backup_inputs(self, image: Image, corpus: Path) -> list[Path]:
        return [Path(image.rootfs_dir)]

    def image_bytes(self, image: Image) -> int:
        return image.rootfs_bytes

    def restore_bytes(self, image: Image) -> int:
        return image.rootfs_bytes

    def restore_cmd(self, image: Image, target: Path) -> list[str]:
        raise NotImplementedError

    def check_restore(self, image: Image, target: Path) -> str | None:
        """An error message if the restored tree differs from the source tree."""
        restored = target / image.rootfs_dir.lstrip("/")
        if not restored.is_dir():
            return f"{restored} missing after restore"
        got = tree_size(restored)
        want = (image.rootfs_files, image.rootfs_bytes)
        if got != want:
            return f"restored {got[0]} files / {got[1]} bytes, source has {want[0]} / {want[1]}"
        return None

    def details(self, m: Measured) -> dict[str, Any]:
        return {}

    def extra_restores(self) -> list[str]:
        """Phases restored after ``restore`` (see :meth:`extra_restore_cmd`)."""
        return []

    def extra_restore_cmd(self, phase: str, image: Image, target: Path) -> list[str]:
        raise NotImplementedError

    def extra_restore_bytes(self, phase: str, image: Image) -> int:
        raise NotImplementedError

    def check_extra_restore(self, phase: str, image: Image, target: Path) -> str | None:
        raise NotImplementedError


class ChunkstoreTool(Tool):
    key = "chunkstore"
    label = "chunkstore (plain, zstd-3)"
    units = "rootfs bytes for dir: restores, layer tar bytes for backup and oci: restores"

    def __init__(self, work: Path, binary: str, corpus: Path) -> None:
        super().__init__(work)
        self.bin = binary
        self.layout = corpus / "oci"
        self.env["CHUNKSTORE_CACHE"] = str(self.cache)
        self.base = [binary, "--json", "-r", str(self.repo)]

    def version(self) -> str:
        return tool_version([self.bin, "--version"])

    def init(self) -> None:
        run_checked([*self.base, "init"], self.env)

    def backup_cmd(self, image: Image) -> list[str]:
        return [*self.base, "backup", f"oci:{self.layout}:{image.ref}", "-t", image.ref]

    def backup_inputs(self, image: Image, corpus: Path) -> list[Path]:
        return [Path(la["path"]) for la in image.layers]

    def image_bytes(self, image: Image) -> int:
        return image.tar_bytes

    def restore_bytes(self, image: Image) -> int:
        return image.rootfs_bytes

    def restore_cmd(self, image: Image, target: Path) -> list[str]:
        return [*self.base, "restore", image.ref, f"dir:{target}"]

    def check_restore(self, image: Image, target: Path) -> str | None:
        got = tree_size(target)
        want = (image.rootfs_files, image.rootfs_bytes)
        if got != want:
            return f"restored {got[0]} files / {got[1]} bytes, source has {want[0]} / {want[1]}"
        return None

    def extra_restores(self) -> list[str]:
        return ["restore-oci"]

    def extra_restore_cmd(self, phase: str, image: Image, target: Path) -> list[str]:
        return [*self.base, "restore", image.ref, f"oci:{target}:{image.ref}"]

    def extra_restore_bytes(self, phase: str, image: Image) -> int:
        return image.tar_bytes

    def check_extra_restore(self, phase: str, image: Image, target: Path) -> str | None:
        try:
            refs = OCILayout(target).refs()
        except (OSError, ValueError, ChunkstoreError) as exc:
            return f"restored layout unreadable: {exc}"
        if image.ref not in refs:
            return f"restored layout has refs {sorted(refs)}, not {image.ref}"
        return None

    def details(self, m: Measured) -> dict[str, Any]:
        with contextlib.suppress(ValueError):
            info = json.loads(m.stdout)
            if isinstance(info, dict):
                return {k: v for k, v in info.items() if k not in ("id",)}
        return {}


class EncryptedChunkstoreTool(ChunkstoreTool):
    """The same backups into an encrypted repository (like for like: restic always encrypts);
    restored to ``dir:`` only (``oci:`` adds the same recompression to either)."""

    key = "chunkstore-enc"
    label = "chunkstore (encrypted, zstd-3)"

    def __init__(self, work: Path, binary: str, corpus: Path) -> None:
        super().__init__(work, binary, corpus)
        self.env["CHUNKSTORE_PASSWORD"] = PASSWORD

    def init(self) -> None:
        run_checked([*self.base, "init", "--encrypt"], self.env)

    def extra_restores(self) -> list[str]:
        return []


class ResticTool(Tool):
    key = "restic"
    label = "restic (repo v2, compression auto)"
    units = "rootfs bytes"

    def __init__(self, work: Path, binary: str) -> None:
        super().__init__(work)
        self.bin = binary
        self.env["RESTIC_PASSWORD"] = PASSWORD
        self.base = [binary, "-r", str(self.repo), "--cache-dir", str(self.cache)]

    def version(self) -> str:
        return tool_version([self.bin, "version"])

    def init(self) -> None:
        run_checked([*self.base, "init", "--repository-version", "2"], self.env)

    def backup_cmd(self, image: Image) -> list[str]:
        return [
            *self.base, "backup", "--json", "--host", "bench", "--tag", image.ref, image.rootfs_dir,
        ]  # fmt: skip

    def restore_cmd(self, image: Image, target: Path) -> list[str]:
        return [
            *self.base, "restore", "latest", "--host", "bench", "--tag", image.ref,
            "--target", str(target),
        ]  # fmt: skip

    def details(self, m: Measured) -> dict[str, Any]:
        keys = ("data_added", "total_bytes_processed", "files_new", "total_duration")
        return restic_summary(m.stdout, keys)


class BorgTool(Tool):
    key = "borg"
    label = "borg (zstd,3, encryption none)"
    units = "rootfs bytes"

    def __init__(self, work: Path, binary: str) -> None:
        super().__init__(work)
        self.bin = binary
        self.env.update(
            {
                "BORG_BASE_DIR": str(self.cache),
                "BORG_PASSPHRASE": PASSWORD,
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
            }
        )

    def version(self) -> str:
        return tool_version([self.bin, "--version"])

    def init(self) -> None:
        run_checked([self.bin, "init", "--encryption", "none", str(self.repo)], self.env)

    def backup_cmd(self, image: Image) -> list[str]:
        return [
            self.bin, "create", "--json", "--compression", "zstd,3",
            f"{self.repo}::{image.ref}", image.rootfs_dir,
        ]  # fmt: skip

    def restore_cmd(self, image: Image, target: Path) -> list[str]:
        # borg extracts into the current directory.
        return ["env", "-C", str(target), self.bin, "extract", f"{self.repo}::{image.ref}"]

    def details(self, m: Measured) -> dict[str, Any]:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return dict(json.loads(m.stdout)["archive"]["stats"])
        return {}


def measure_tool(
    tool: Tool, images: list[Image], corpus: Path, cache: PageCache, quiet: Quiet
) -> ToolResult:
    res = ToolResult(tool.key, tool.label, tool.version(), tool.units)
    tool.init()
    os.sync()
    before = disk_usage(tool.repo)
    for image in images:
        cache.prepare(tool.backup_inputs(image, corpus))
        quiet.wait()
        log(f"{tool.key}: backup {image.ref}")
        m = run_measured(tool.backup_cmd(image), tool.env)
        if m.returncode != 0:
            msg = f"backup {image.ref} failed ({m.returncode}): {m.stderr.strip()[-2000:]}"
            log(f"{tool.key}: {msg}")
            res.failures.append(msg)
            continue
        os.sync()
        after = disk_usage(tool.repo)
        res.runs.append(_run(image, "backup", tool.image_bytes(image), m, tool.details(m)))
        res.runs[-1].repo_bytes, res.runs[-1].added_bytes = after, after - before
        if m.stderr.strip():
            res.runs[-1].details["stderr"] = m.stderr.strip()[-1000:]
        before = after
    backed_up = {r.image for r in res.phase("backup")}
    phases: list[tuple[str, RestoreCmd, Callable[[Image], int], RestoreCheck]] = [
        ("restore", tool.restore_cmd, tool.restore_bytes, tool.check_restore),
        *[
            (
                phase,
                functools.partial(tool.extra_restore_cmd, phase),
                functools.partial(tool.extra_restore_bytes, phase),
                functools.partial(tool.check_extra_restore, phase),
            )
            for phase in tool.extra_restores()
        ],
    ]
    for phase, cmd, nbytes, check in phases:
        for image in images:
            if image.ref in backed_up:
                _restore_one(tool, res, image, phase, cmd, nbytes, check, cache, quiet)
    return res


RestoreCmd = Callable[[Image, Path], list[str]]
RestoreCheck = Callable[[Image, Path], str | None]


def _restore_one(
    tool: Tool,
    res: ToolResult,
    image: Image,
    phase: str,
    cmd: Callable[[Image, Path], list[str]],
    nbytes: Callable[[Image], int],
    check: Callable[[Image, Path], str | None],
    cache: PageCache,
    quiet: Quiet,
) -> None:
    target = tool.dir / f"{phase}-{image.ref}"
    target.mkdir()
    cache.prepare([tool.repo])
    quiet.wait()
    log(f"{tool.key}: {phase} {image.ref}")
    m = run_measured(cmd(image, target), tool.env)
    if m.returncode != 0:
        msg = f"{phase} {image.ref} failed ({m.returncode}): {m.stderr.strip()[-2000:]}"
        log(f"{tool.key}: {msg}")
        res.failures.append(msg)
    else:
        run = _run(image, phase, nbytes(image), m, tool.details(m))
        if m.stderr.strip():
            run.details["stderr"] = m.stderr.strip()[-1000:]
        problem = check(image, target)
        if problem:
            log(f"{tool.key}: {phase} {image.ref}: {problem}")
            res.failures.append(f"{phase} {image.ref}: {problem}")
        res.runs.append(run)
    shutil.rmtree(target, ignore_errors=True)


def _run(image: Image, phase: str, nbytes: int, m: Measured, details: dict[str, Any]) -> Run:
    return Run(
        image=image.ref,
        phase=phase,
        seconds=m.seconds,
        bytes=nbytes,
        cpu_s=m.user_s + m.sys_s,
        rss_kib=m.rss_kib,
        other_cpu_s=m.other_cpu_s,
        details={**details, "steal_s": m.steal_s, "rss_source": m.rss_source},
    )


def measure_analyze(
    binary: str, corpus: Path, images: list[Image], work: Path, cache: PageCache, quiet: Quiet
) -> dict[str, Any]:
    """``chunkstore analyze`` of every image in one run, and its floor measured right after it.

    analyze: ``chunkstore analyze --json oci:CORPUS/oci:REF ...`` (default chunk-size sweep,
    worker processes as many as cores); MB/s counts every image's tar bytes (a layer two images
    share is content analysed for both). The floor: every distinct layer blob decompressed and
    hashed, ``gzip -dc | sha256sum``, as many at a time as there are cores.
    """
    env = base_env(work)
    layers = {la["digest"]: la for i in images for la in i.layers}
    inputs = [Path(la["path"]) for la in layers.values()]
    sources = [f"oci:{corpus / 'oci'}:{i.ref}" for i in images]
    cache.prepare(inputs)
    quiet.wait()
    log("chunkstore: analyze")
    m = run_measured([binary, "analyze", "--json", *sources], env)
    if m.returncode != 0:
        raise RuntimeError(f"analyze failed ({m.returncode}): {m.stderr.strip()[-2000:]}")
    doc = json.loads(m.stdout)
    tar = int(doc["totals"]["tar_bytes"])
    scanned = int(doc.get("scanned_tar_bytes", sum(la["tar_bytes"] for la in layers.values())))
    cores = str(os.cpu_count() or 1)
    cache.prepare(inputs)
    quiet.wait()
    log("floor: gzip -dc | sha256sum")
    # xargs reads the file names from its stdin (the measured command's stdin is /dev/null).
    one = 'gzip -dc "$1" | sha256sum >/dev/null'
    script = f'printf "%s\\0" "$@" | xargs -0 -P {cores} -n 1 sh -c \'{one}\' sh'
    floor = run_measured(["sh", "-c", script, "sh", *map(str, inputs)], env)
    distinct = sum(la["tar_bytes"] for la in layers.values())
    return {
        "seconds": m.seconds,
        "cpu_s": m.cpu_s,
        "cpu_util": m.cpu_s / m.seconds,
        "rss_mb": m.rss_kib * 1024 / MB,
        "tar_bytes": tar,
        "mb_s": tar / MB / m.seconds,
        "scanned_tar_bytes": scanned,
        "distinct_mb_s": scanned / MB / m.seconds,
        "other_cpu_s": m.other_cpu_s,
        "floor_seconds": floor.seconds,
        "floor_cpu_s": floor.cpu_s,
        "floor_bytes": distinct,
        "floor_mb_s": distinct / MB / floor.seconds,
    }


# ----------------------------------------------------------------------------- report


def summarize(tools: list[ToolResult]) -> list[dict[str, Any]]:
    """One row per tool and phase, with ratios to restic."""
    rows: list[dict[str, Any]] = []
    for t in tools:
        for phase in PHASES:
            runs = t.phase(phase)
            if not runs:
                continue
            seconds = sum(r.seconds for r in runs)
            nbytes = sum(r.bytes for r in runs)
            backups = t.phase("backup")
            row: dict[str, Any] = {
                "key": t.key,
                "label": t.label,
                "phase": phase,
                "images": len(runs),
                "seconds": seconds,
                "bytes": nbytes,
                "mb_s": nbytes / MB / seconds,
                "cpu_s": sum(r.cpu_s for r in runs),
                "rss_mb": max(r.rss_kib for r in runs) * 1024 / MB,
                "repo_bytes": backups[-1].repo_bytes if backups else 0,
                "other_cpu_s": sum(r.other_cpu_s for r in runs),
            }
            row["cpu_util"] = row["cpu_s"] / seconds
            rows.append(row)
    base = {r["phase"]: r for r in rows if r["key"] == "restic"}
    for r in rows:
        b = base.get(PHASES[r["phase"]])
        r["throughput_vs_restic"] = r["mb_s"] / b["mb_s"] if b else None
        r["rss_vs_restic"] = r["rss_mb"] / b["rss_mb"] if b and b["rss_mb"] else None
        r["repo_vs_restic"] = r["repo_bytes"] / b["repo_bytes"] if b and b["repo_bytes"] else None
    return rows


def rebuilt_figures(tools: list[ToolResult], images: list[Image]) -> dict[str, Any] | None:
    """Bytes each tool newly stored for the rebuilt image backed up after its original."""
    refs = [i.ref for i in images]
    pairs = [
        (rebuilt, base)
        for rebuilt, base in REBUILT_PAIRS
        if rebuilt in refs and base in refs and refs.index(base) < refs.index(rebuilt)
    ]
    if not pairs:
        return None
    rebuilt, base = pairs[0]
    layer = next(i for i in images if i.ref == rebuilt).compressed_bytes
    out: dict[str, Any] = {
        "image": rebuilt,
        "base": base,
        "compressed_layer_bytes": layer,
        "tools": {},
    }
    for t in tools:
        run = next((r for r in t.phase("backup") if r.image == rebuilt), None)
        if run is None:
            continue
        reported = run.details.get("stored_bytes", run.details.get("data_added"))
        if reported is None:
            reported = run.details.get("deduplicated_size")
        out["tools"][t.key] = {
            "added_bytes": run.added_bytes,
            "fraction": run.added_bytes / layer,
            "reported_bytes": reported,
        }
    return out


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = {(r["key"], r["phase"]): r for r in result["rows"]}
    targets = []
    for key, phase in (
        ("chunkstore", "backup"),
        ("chunkstore-enc", "backup"),
        ("chunkstore", "restore"),
        ("chunkstore-enc", "restore"),
    ):
        r = rows.get((key, phase))
        if r and r["throughput_vs_restic"] is not None:
            ratio = r["throughput_vs_restic"]
            what = "encrypted " if key == "chunkstore-enc" else ""
            targets.append(
                {
                    "name": f"{what}{phase} throughput >= {TARGET_THROUGHPUT_RATIO:g}x restic "
                    + phase
                    + (" (dir:)" if phase == "restore" else ""),
                    "value": f"{ratio:.2f}x ({r['mb_s']:.1f} vs "
                    f"{rows[('restic', phase)]['mb_s']:.1f} MB/s)",
                    "ok": ratio >= TARGET_THROUGHPUT_RATIO,
                }
            )
    r = rows.get(("chunkstore", "backup"))
    b = rows.get(("restic", "backup"))
    if r and b:
        targets.append(
            {
                "name": "repository size <= restic's",
                "value": f"{r['repo_bytes'] / MB:.1f} MB vs {b['repo_bytes'] / MB:.1f} MB "
                f"({r['repo_vs_restic']:.2f}x)",
                "ok": r["repo_bytes"] <= b["repo_bytes"],
            }
        )
    rb = result.get("rebuilt")
    if rb and "chunkstore" in rb["tools"]:
        c = rb["tools"]["chunkstore"]
        value = (
            f"{c['added_bytes'] / MB:.3f} MB = {c['fraction']:.2%} of "
            f"{rb['compressed_layer_bytes'] / MB:.1f} MB"
        )
        if "restic" in rb["tools"]:
            rr = rb["tools"]["restic"]
            value += f" (restic {rr['added_bytes'] / MB:.3f} MB = {rr['fraction']:.2%})"
        targets.append(
            {
                "name": f"{rb['image']} after {rb['base']} adds <= 3% of its compressed layer",
                "value": value,
                "ok": c["fraction"] <= TARGET_REBUILT_FRACTION,
            }
        )
    an = result.get("analyze")
    if an:
        targets.append(
            {
                "name": f"analyze throughput >= {TARGET_ANALYZE_MB_S:g} MB/s (uncompressed layer "
                "bytes)",
                "value": f"{an['mb_s']:.1f} MB/s (gzip -dc | sha256sum floor "
                f"{an['floor_mb_s']:.1f} MB/s of distinct layers)",
                "ok": an["mb_s"] >= TARGET_ANALYZE_MB_S,
            }
        )
    cs = [r for r in result["rows"] if r["key"].startswith("chunkstore")]
    if cs:
        worst = max(cs, key=lambda r: r["rss_mb"])
        targets.append(
            {
                "name": "peak RSS of chunkstore <= 250 MB (every backup and restore)",
                "value": f"{worst['rss_mb']:.1f} MB ({worst['phase']})",
                "ok": worst["rss_mb"] * MB <= TARGET_RSS_BYTES,
            }
        )
    for t in targets:
        t["verdict"] = "PASS" if t["ok"] else "MISS"
    return targets


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"bench_images: {len(result['images'])} images from {result['corpus']}; "
        f"{machine_line(m)}, Python {m['python']}",
        libraries_line(result["git"], result["libraries"]),
    ]
    for t in result["tools"]:
        lines.append(f"  {t['key']}: {t['version']} ({t['label']}; throughput in {t['units']})")
    lines.append(f"page cache: {result['page_cache']['mode']} ({result['page_cache']['reason']})")
    if result["waited_s"] >= 1:
        lines.append(f"waited {result['waited_s']:.0f} s in all for other processes to go quiet")
    lines.append("")
    images = Table(
        [
            Column("image", 26),
            Column("layers", 6, ">"),
            Column("gz MB", 8, ">"),
            Column("tar MB", 8, ">"),
            Column("rootfs MB", 9, ">"),
            Column("files", 6, ">"),
        ]
    )
    for i in result["images"]:
        images.row(
            i["ref"],
            str(len(i["layers"])),
            f"{sum(la['size'] for la in i['layers']) / MB:.1f}",
            f"{sum(la['tar_bytes'] for la in i['layers']) / MB:.1f}",
            f"{i['rootfs_bytes'] / MB:.1f}",
            str(i["rootfs_files"]),
        )
    lines += images.text()
    lines.append("")
    phases = Table(
        [
            Column("tool", 36),
            Column("phase", 11),
            Column("seconds", 8, ">"),
            Column("MB/s", 7, ">"),
            Column("CPU s", 7, ">"),
            Column(("CPU", "%"), 5, ">"),
            Column("RSS MB", 7, ">"),
            Column("repo MB", 8, ">"),
            Column(("MB/s vs", "restic"), 8, ">"),
            Column(("repo vs", "restic"), 8, ">"),
            Column(("RSS vs", "restic"), 7, ">"),
            Column(("other CPU", "s"), 9, ">"),
        ]
    )
    for r in result["rows"]:
        backup = r["phase"] == "backup"
        phases.row(
            r["label"],
            r["phase"],
            f"{r['seconds']:.2f}",
            f"{r['mb_s']:.1f}",
            f"{r['cpu_s']:.1f}",
            f"{r['cpu_util']:.0%}".rstrip("%"),
            f"{r['rss_mb']:.1f}",
            f"{r['repo_bytes'] / MB:.1f}" if backup else "-",
            _x(r["throughput_vs_restic"]),
            _x(r["repo_vs_restic"]) if backup else "-",
            _x(r["rss_vs_restic"]),
            f"{r['other_cpu_s']:.1f}",
        )
    lines += phases.text()
    lines.append(
        "seconds and MB/s over all images (chunkstore backup and restore-oci: layer tar bytes, "
        "every restore: rootfs file bytes);\nCPU % = (user + sys) / wall of the tool's "
        "processes (200 = two cores busy); RSS = the largest peak of any run; "
        "repo = size on disk after all backups; "
        "other CPU s = CPU time other processes used meanwhile (noise);\n"
        "restore = the root filesystem written as files (chunkstore: restore dir:); restore-oci = "
        "chunkstore restore oci: (layer tars rebuilt,\nchecked against their diff_ids and gzip'd "
        "again exactly with the umoci compressor: most of its time), compared with restic "
        "restore"
    )
    an = result.get("analyze")
    if an:
        lines.append("")
        table = Table(
            [
                Column("job", 36),
                Column("seconds", 8, ">"),
                Column("MB/s", 7, ">"),
                Column(("distinct", "MB/s"), 8, ">"),
                Column("CPU s", 7, ">"),
                Column(("CPU", "%"), 5, ">"),
                Column("RSS MB", 7, ">"),
                Column(("vs", "floor"), 6, ">"),
            ]
        )
        table.row(
            "chunkstore analyze (every image)",
            f"{an['seconds']:.2f}",
            f"{an['mb_s']:.1f}",
            f"{an['distinct_mb_s']:.1f}",
            f"{an['cpu_s']:.1f}",
            f"{an['cpu_util']:.0%}".rstrip("%"),
            f"{an['rss_mb']:.1f}",
            f"{an['distinct_mb_s'] / an['floor_mb_s']:.2f}x",
        )
        table.row(
            "gzip -dc | sha256sum (distinct layers)",
            f"{an['floor_seconds']:.2f}",
            "-",
            f"{an['floor_mb_s']:.1f}",
            f"{an['floor_cpu_s']:.1f}",
            f"{an['floor_cpu_s'] / an['floor_seconds']:.0%}".rstrip("%"),
            "-",
            "1.00x",
        )
        lines += table.text()
        lines.append(
            "analyze MB/s: every image's layer tar bytes (a shared layer counts for each image); "
            "distinct: each layer once,\nthe floor's unit (any tool reading these layers "
            "decompresses and hashes them); restic and borg have no analyze"
        )
    lines.append("")
    keys = [t["key"] for t in result["tools"]]
    columns = [Column("per image", 26)]
    for k in keys:
        columns += [Column(k + " backup s", 18, ">"), Column("+MB", 8, ">")]
        columns += [Column("restore s", 9, ">")]
        if k == "chunkstore":
            columns.append(Column("oci s", 6, ">"))
    per_image = Table(columns)
    per: dict[tuple[str, str, str], dict[str, Any]] = {}
    for t in result["tools"]:
        for r in t["runs"]:
            per[(t["key"], r["image"], r["phase"])] = r
    for i in result["images"]:
        cells = [i["ref"]]
        for k in keys:
            b, rs = per.get((k, i["ref"], "backup")), per.get((k, i["ref"], "restore"))
            cells.append(f"{b['seconds']:.2f}" if b else "failed")
            cells.append(f"{b['added_bytes'] / MB:.2f}" if b else "-")
            cells.append(f"{rs['seconds']:.2f}" if rs else "failed")
            if k == "chunkstore":
                ro = per.get((k, i["ref"], "restore-oci"))
                cells.append(f"{ro['seconds']:.2f}" if ro else "failed")
        per_image.row(*cells)
    lines += per_image.text()
    lines.append("+MB = repository growth on disk from that backup (bytes newly stored)")
    rb = result.get("rebuilt")
    if rb:
        lines.append("")
        lines.append(
            f"{rb['image']} backed up after {rb['base']} (compressed layer "
            f"{rb['compressed_layer_bytes']} bytes):"
        )
        for k, v in rb["tools"].items():
            lines.append(
                f"  {k:<11} repository grew {v['added_bytes']:>10} bytes = {v['fraction']:7.3%} "
                f"of the layer (the tool reports {v['reported_bytes']} bytes stored)"
            )
    lines.append("")
    lines.append("targets:")
    lines += target_lines(result["targets"], 66)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus directory")
    ap.add_argument(
        "--images",
        nargs="+",
        metavar="REF",
        help="a subset of the corpus refs, in this order (commas also separate; a unique "
        "suffix such as 'minbase' or 'python3-rebuilt' is enough)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out", help="working/output dir")
    ap.add_argument("--json", action="store_true", help="also write OUT/bench_images.json")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--no-borg", dest="borg", action="store_false", help="skip borg")
    ap.add_argument(
        "--no-encrypted",
        dest="encrypted",
        action="store_false",
        help="skip the encrypted chunkstore repository",
    )
    ap.add_argument(
        "--no-analyze", dest="analyze", action="store_false", help="skip chunkstore analyze"
    )
    ap.add_argument("--warm", action="store_true", help="warm page cache instead of dropping it")
    ap.add_argument(
        "--max-wait",
        type=float,
        default=120,
        help="seconds to wait in all for other processes to go quiet before runs (120)",
    )
    args = ap.parse_args(argv)
    corpus: Path = args.corpus.resolve()
    if not has_corpus(corpus):
        print(
            f"bench_images: SKIPPED: no corpus at {corpus} (no oci/index.json); build it with "
            f"tools/build_corpus {corpus} (needs root and network), or pass --corpus DIR",
            file=sys.stderr,
        )
        return 0
    wanted = None
    if args.images:
        wanted = [n for arg in args.images for n in arg.split(",") if n]

    started = time.perf_counter()
    cs_bin = chunkstore_binary()
    log("reading the corpus (decompressing each layer once to size it)")
    images = load_images(corpus, wanted)
    if not images:
        print(f"bench_images: SKIPPED: the corpus at {corpus} has no images", file=sys.stderr)
        return 0
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tools: list[ToolResult] = []
    failures: list[str] = []
    analyzed: dict[str, Any] | None = None
    cache = PageCache(force_warm=args.warm)
    quiet = Quiet(args.max_wait)
    with workdir(out, "bench-images-", args.keep) as work:
        for image in images:
            log(f"unpacking the root filesystem of {image.ref}")
            unpack_rootfs(corpus, image, work / "rootfs" / image.ref)
        log(f"page cache: {cache.mode}")
        candidates: list[Tool] = [ChunkstoreTool(work, cs_bin, corpus)]
        if args.encrypted:
            candidates.append(EncryptedChunkstoreTool(work, cs_bin, corpus))
        restic = shutil.which("restic")
        if restic:
            candidates.append(ResticTool(work, restic))
        else:
            log("restic is not installed: no baseline, no ratios")
        borg = shutil.which("borg")
        if args.borg and borg:
            candidates.append(BorgTool(work, borg))
        elif args.borg:
            log("borg is not installed: skipping it")
        for tool in candidates:
            try:
                tr = measure_tool(tool, images, corpus, cache, quiet)
            except RuntimeError as exc:
                log(f"{tool.key} FAILED: {exc}")
                failures.append(f"{tool.key}: {exc}")
                continue
            finally:
                if not args.keep:
                    shutil.rmtree(tool.dir, ignore_errors=True)
            tools.append(tr)
            failures += [f"{tr.key}: {f}" for f in tr.failures]
        if args.analyze:
            try:
                analyzed = measure_analyze(cs_bin, corpus, images, work, cache, quiet)
            except RuntimeError as exc:
                log(f"analyze FAILED: {exc}")
                failures.append(f"analyze: {exc}")

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_revision(),
        "machine": machine_info(),
        "libraries": library_versions(),
        "corpus": str(corpus),
        "images": [
            {**asdict(i), "compressed_bytes": i.compressed_bytes, "tar_bytes": i.tar_bytes}
            for i in images
        ],
        "page_cache": {"mode": cache.mode, "reason": cache.reason},
        "tools": [asdict(t) for t in tools],
        "rows": summarize(tools),
        "rebuilt": rebuilt_figures(tools, images),
        "analyze": analyzed,
        "failures": failures,
        "waited_s": quiet.waited_s,
    }
    result["targets"] = evaluate(result)
    result["total_seconds"] = time.perf_counter() - started
    return report(
        result, render(result), failures, out / "bench_images.json" if args.json else None
    )


if __name__ == "__main__":
    sys.exit(main())
