#!/usr/bin/env python3
"""Store benchmark: ``chunkstore put`` against ``restic backup`` (and borg) on the same bytes.

Target (the issue): storing 1 GiB of unique compressible data into a local repository runs at
>= 1.5x the throughput of ``restic backup`` of the same bytes in the same run, with a peak RSS of
at most 250 MB; chunking alone runs at >= 1 GB/s.

Usage::

    .venv/bin/python tools/bench_store.py [--size 1G] [--out DIR] [--json] [--repeat N]
                                          [--no-borg] [--warm] [--max-wait S] [--keep] [--seed N]

What it does, in one run:

1. Generates the data set once into a file (``--size``, default 1 GiB): about 80% text-like
   content (log/prose lines drawn from a seeded vocabulary, each block of lines tagged with a
   random id), 10% random bytes (already-compressed content) and 10% binary-like bytes (random
   bytes mapped through a table skewed towards the bytes common in machine code). It compresses
   about 2.3x with zstd-3 per 64 KiB block and has no internal duplication; the same seed gives the
   same bytes.
2. Measures chunking alone in-process: :meth:`chunkstore.chunker.Chunker.chunks` over the file,
   and, for context, the compiled FastCDC over an ``mmap`` of it (no reads, no copies); the file is
   in the page cache for both (this is a CPU figure).
3. Runs each tool in a fresh repository and cache, both under a temporary directory inside
   ``--out`` (same disk): ``chunkstore put`` into a plain and an encrypted repository, ``restic
   backup`` (repository format 2, compression auto, always encrypted), ``borg create`` (zstd,3;
   encryption none and repokey-blake2); then the same file once more into the same repository
   (the dedup path: ``restic backup --force``, ``borg create --files-cache disabled``).
   Before every timed run the page cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``,
   root only), so every run starts cold; when that is not possible (or with ``--warm``) the file is
   read once before every run instead, so every run starts warm. The report says which.
   Wall time is measured around the child process; its peak RSS and CPU time come from
   ``/usr/bin/time`` (else from ``os.wait4`` on that child alone), so each figure is per run.
   The machine may be shared: before each run the benchmark waits (at most ``--max-wait``
   seconds in all) until other processes use less than 0.15 CPU, and for each run it reports the
   CPU time the rest of the machine used meanwhile (from /proc/stat), so disturbed runs show.
4. Prints a table (seconds, MiB/s, CPU seconds, peak RSS, repository size on disk, throughput
   ratio against restic = restic seconds / tool seconds) and PASS/MISS for each target.
   ``--json`` also writes the figures to ``OUT/bench_store.json``.

Units: MiB = 2**20 bytes; the targets' "MB" and "GB" are 10**6 and 10**9 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import mmap
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib.common import (
    MIB,
    ROOT,
    base_env,
    chunkstore_binary,
    log,
    restic_summary,
    workdir,
)
from benchlib.measure import (
    Measured,
    PageCache,
    Quiet,
    disk_usage,
    measure_call,
    run_checked,
    run_measured,
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

from chunkstore.chunker import Chunker, ChunkerParams

GENERATOR_VERSION = 1

# Targets of the issue.
TARGET_RATIO = 1.5
TARGET_RSS_BYTES = 250 * 10**6
TARGET_CHUNK_BYTES_S = 10**9

PASSWORD = "bench-store-password"


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        value = float(t[: len(t) - len(unit)] if unit else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 256M, 1G)") from None
    n = int(value * units[unit])
    if n < MIB:
        raise argparse.ArgumentTypeError("the size must be at least 1M")
    return n


# ----------------------------------------------------------------------------- data set

_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
_LETTER_FREQ = [12, 9, 8, 7.5, 7, 6.7, 6.3, 6, 5.9, 4.3, 4, 2.8, 2.4, 2.4, 2.2, 2, 1.9, 1.5, 1.3]
_LETTER_FREQ += [1, 0.8, 0.15, 0.15, 0.1, 0.1, 0.07]
_WORD_LENGTHS = [2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 8, 9, 10, 12]
_LEVELS = ["INFO", "DEBUG", "WARN", "ERROR", "TRACE"]
# Bytes common in x86-64 machine code and data sections; 160 of 256 random values map onto them.
_BINARY_COMMON = [0, 0, 0, 0, 0, 0, 0x48, 0x89, 0x8B, 0xFF, 0xE8, 0x0F, 0x24, 0x44, 0x85, 0xC0]
_BINARY_COMMON += [1, 2, 4, 8]


@dataclass
class DataSet:
    path: str
    size: int
    seed: int
    seconds: float
    fractions: dict[str, float]
    zstd3_ratio_sample: float
    sample_bytes: int


def _text_units(rng: random.Random, count: int) -> list[bytes]:
    """``count`` blocks of 8 log/prose lines each, words Zipf-distributed over a vocabulary."""
    letter_cw = list(itertools.accumulate(_LETTER_FREQ))
    vocab: list[str] = []
    seen: set[str] = set()
    while len(vocab) < 2048:
        w = "".join(rng.choices(_LETTERS, cum_weights=letter_cw, k=rng.choice(_WORD_LENGTHS)))
        if w not in seen:
            seen.add(w)
            vocab.append(w)
    word_cw = list(itertools.accumulate(1 / (i + 1) ** 1.15 for i in range(len(vocab))))
    units = []
    for _ in range(count):
        lines = []
        for _ in range(8):
            words = " ".join(rng.choices(vocab, cum_weights=word_cw, k=rng.randint(3, 14)))
            lines.append(f"{rng.choice(_LEVELS)} {rng.randint(0, 99999)} {words}\n")
        units.append("".join(lines).encode())
    return units


def generate_dataset(path: Path, size: int, seed: int) -> DataSet:
    """Write ``size`` bytes of unique, compressible data to ``path`` (deterministic per seed)."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    units = _text_units(rng, 1 << 15)
    unit_avg = sum(map(len, units)) // len(units) + 12
    table = bytes(_BINARY_COMMON[i % len(_BINARY_COMMON)] if i < 160 else i for i in range(256))
    kinds = {"text": 0, "random": 0, "binary": 0}
    written = 0
    with open(path, "wb") as f:
        while written < size:
            seg = min(rng.randint(64 << 10, 2 << 20), size - written)
            r = rng.random()
            if r < 0.8:
                kind = "text"
                k = seg // unit_avg + 1
                ids = rng.randbytes(4 * k).hex().encode()
                picks = rng.choices(units, k=k)
                parts: list[bytes] = []
                for i, unit in enumerate(picks):
                    parts += (b"id=", ids[8 * i : 8 * i + 8], b" ", unit)
                buf = b"".join(parts)[:seg]
            elif r < 0.9:
                kind = "random"
                buf = rng.randbytes(seg)
            else:
                kind = "binary"
                buf = rng.randbytes(seg).translate(table)
            f.write(buf)
            written += len(buf)
            kinds[kind] += len(buf)
    seconds = time.perf_counter() - t0
    ratio, sampled = _zstd_sample_ratio(path)
    return DataSet(
        path=str(path),
        size=written,
        seed=seed,
        seconds=seconds,
        fractions={k: v / written for k, v in kinds.items()},
        zstd3_ratio_sample=ratio,
        sample_bytes=sampled,
    )


def _zstd_sample_ratio(path: Path, block: int = 64 << 10, stride: int = 16) -> tuple[float, int]:
    """zstd level 3 ratio over every ``stride``-th 64 KiB block, each compressed alone."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3)
    raw = packed = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for off in range(0, size, block * stride):
            f.seek(off)
            data = f.read(block)
            raw += len(data)
            packed += len(cctx.compress(data))
    return (raw / packed if packed else 0.0), raw


# ----------------------------------------------------------------------------- chunking alone


@dataclass
class ChunkFigures:
    chunker_seconds: list[float]
    chunker_chunks: int
    chunker_mean_size: float
    raw_seconds: list[float]
    params: dict[str, int]
    other_cpu_s: float

    @property
    def best(self) -> float:
        return min(self.chunker_seconds)


def measure_chunking(data: Path, size: int, passes: int = 2) -> ChunkFigures:
    """Chunker.chunks over the file (warm), and the compiled FastCDC over an mmap of it."""
    params = ChunkerParams()
    (times, count, total, raw, n), figures = measure_call(
        lambda: _chunk_passes(data, params, passes)
    )
    if total != size:
        raise RuntimeError(f"the chunker returned {total} bytes of {size}")
    if n != count:
        log(f"warning: raw FastCDC made {n} chunks, Chunker.chunks {count}")
    return ChunkFigures(
        times, count, total / max(count, 1), raw, params.to_cbor(), figures.other_cpu_s
    )


def _chunk_passes(
    data: Path, params: ChunkerParams, passes: int
) -> tuple[list[float], int, int, list[float], int]:
    """Seconds per pass of Chunker.chunks and of the raw FastCDC; chunks, bytes, raw chunks."""
    from fastcdc.fastcdc_cy import chunk_generator

    chunker = Chunker(params)
    times = []
    count = total = 0
    for _ in range(passes):
        count = total = 0
        with open(data, "rb", buffering=0) as f:
            t0 = time.perf_counter()
            for chunk in chunker.chunks(f):
                count += 1
                total += len(chunk)
            times.append(time.perf_counter() - t0)
    raw = []
    n = 0
    with open(data, "rb") as g, mmap.mmap(g.fileno(), 0, prot=mmap.PROT_READ) as m:
        view = memoryview(m)
        try:
            for _ in range(passes):
                t0 = time.perf_counter()
                n = sum(
                    1
                    for _c in chunk_generator(
                        view, params.min_size, params.avg_size, params.max_size, False, None
                    )
                )
                raw.append(time.perf_counter() - t0)
        finally:
            view.release()
    return times, count, total, raw, n


# ----------------------------------------------------------------------------- tools


@dataclass
class ToolSpec:
    """One tool to measure. Arguments and environment values are templates: ``{repo}``,
    ``{cache}`` (a fresh directory per repository) and ``{data}`` (the data set) are filled in."""

    key: str
    label: str
    again_label: str
    init: list[list[str]]  # untimed set-up commands
    first: list[str]  # timed: store the file into the fresh repository
    again: list[str]  # timed: store the same file once more (dedup path)
    env: dict[str, str]
    version: str
    chunkstore: bool = False
    baseline: bool = False


def _fill(template: list[str], **values: str) -> list[str]:
    return [arg.format(**values) for arg in template]


@dataclass
class Row:
    key: str
    label: str
    phase: str  # "first" or "again"
    seconds: float
    mib_s: float
    cpu_s: float
    rss_mib: float
    repo_bytes: int
    other_cpu_s: float
    all_seconds: list[float] = field(default_factory=list)
    ratio_vs_restic: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def tool_specs(chunkstore_bin: str, with_borg: bool) -> list[ToolSpec]:
    cs = [chunkstore_bin, "--json", "-r", "{repo}"]
    cs_version = tool_version([chunkstore_bin, "--version"])
    specs = []
    for mode, init_args, extra_env in (
        ("plain", [], {}),
        ("plain, zstd-2", ["--compression-level", "2"], {}),
        ("encrypted", ["--encrypt"], {"CHUNKSTORE_PASSWORD": PASSWORD}),
    ):
        specs.append(
            ToolSpec(
                key="chunkstore-" + mode.replace(", ", "-"),
                label=f"chunkstore put ({mode})",
                again_label=f"chunkstore put again ({mode})",
                init=[[*cs, "init", *init_args]],
                first=[*cs, "put", "data", "{data}"],
                again=[*cs, "put", "data-again", "{data}"],
                env={"CHUNKSTORE_CACHE": "{cache}", **extra_env},
                version=cs_version,
                chunkstore=True,
            )
        )
    restic = shutil.which("restic")
    if restic is not None:
        base = [restic, "-r", "{repo}", "--cache-dir", "{cache}"]
        backup = [*base, "backup", "--json", "--host", "bench"]
        specs.append(
            ToolSpec(
                key="restic",
                label="restic backup (repo v2, compression auto)",
                again_label="restic backup --force, again",
                init=[[*base, "init", "--repository-version", "2"]],
                first=[*backup, "{data}"],
                again=[*backup, "--force", "{data}"],
                env={"RESTIC_PASSWORD": PASSWORD},
                version=tool_version([restic, "version"]),
                baseline=True,
            )
        )
    else:
        log("restic is not installed: no baseline, no ratios")
    borg = shutil.which("borg")
    if with_borg and borg is not None:
        borg_version = tool_version([borg, "--version"])
        create = [borg, "create", "--compression", "zstd,3"]
        borg_env = {
            "BORG_BASE_DIR": "{cache}",
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }
        for mode in ("none", "repokey-blake2"):
            specs.append(
                ToolSpec(
                    key=f"borg-{mode}",
                    label=f"borg create --compression zstd,3 ({mode})",
                    again_label=f"borg create again, files cache off ({mode})",
                    init=[[borg, "init", "--encryption", mode, "{repo}"]],
                    first=[*create, "{repo}::first", "{data}"],
                    again=[*create, "--files-cache", "disabled", "{repo}::again", "{data}"],
                    env=borg_env,
                    version=borg_version,
                )
            )
    elif with_borg:
        log("borg is not installed: skipping it")
    return specs


def _parse_details(spec: ToolSpec, m: Measured) -> dict[str, Any]:
    if spec.chunkstore:
        with contextlib.suppress(ValueError):
            info = json.loads(m.stdout)
            keys: tuple[str, ...] = ("bytes", "chunks", "new_chunks", "new_bytes", "stored_bytes")
            return {k: info[k] for k in keys if k in info}
    if spec.baseline:
        keys = ("data_blobs", "data_added", "total_bytes_processed", "total_duration")
        return restic_summary(m.stdout, keys)
    return {}


def run_tool(
    spec: ToolSpec,
    data: Path,
    size: int,
    work: Path,
    cache: PageCache,
    repeat: int,
    quiet: Quiet,
) -> list[Row]:
    """Fresh repository per repetition: set-up, timed first run, timed run of the same file."""
    firsts: list[tuple[Measured, int, dict[str, Any]]] = []
    agains: list[tuple[Measured, int, dict[str, Any]]] = []
    for i in range(repeat):
        tdir = Path(tempfile.mkdtemp(prefix=f"{spec.key}-", dir=work))
        repo, cdir = tdir / "repo", tdir / "cache"
        cdir.mkdir()
        values = {"repo": str(repo), "cache": str(cdir), "data": str(data)}
        env = base_env(tdir)
        env.update({k: v.format(**values) for k, v in spec.env.items()})
        try:
            for cmd in spec.init:
                run_checked(_fill(cmd, **values), env)
            for phase, cmd, into in (("first", spec.first, firsts), ("again", spec.again, agains)):
                cache.prepare([data])
                quiet.wait()
                log(f"{spec.key}: {phase} run {i + 1}/{repeat}")
                m = run_measured(_fill(cmd, **values), env)
                if m.returncode != 0:
                    raise RuntimeError(
                        f"{spec.key} {phase} run failed ({m.returncode}): {m.stderr.strip()[-2000:]}"
                    )
                os.sync()
                into.append((m, disk_usage(repo), _parse_details(spec, m)))
        finally:
            shutil.rmtree(tdir, ignore_errors=True)
    rows = []
    for phase, runs, label in (("first", firsts, spec.label), ("again", agains, spec.again_label)):
        if not runs:
            continue
        # The median run by wall time (the single run when --repeat 1).
        ordered = sorted(runs, key=lambda r: r[0].seconds)
        m, repo_bytes, details = ordered[(len(ordered) - 1) // 2]
        rows.append(
            Row(
                key=spec.key,
                label=label,
                phase=phase,
                seconds=m.seconds,
                mib_s=size / MIB / m.seconds,
                cpu_s=m.user_s + m.sys_s,
                rss_mib=m.rss_kib * 1024 / MIB,
                repo_bytes=repo_bytes,
                other_cpu_s=m.other_cpu_s,
                all_seconds=[r[0].seconds for r in runs],
                details={
                    **details,
                    "user_s": m.user_s,
                    "sys_s": m.sys_s,
                    "steal_s": m.steal_s,
                    "rss_source": m.rss_source,
                },
            )
        )
    return rows


# ----------------------------------------------------------------------------- report


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def render(result: dict[str, Any]) -> str:
    ds = result["dataset"]
    ch = result["chunking"]
    rows: list[dict[str, Any]] = result["rows"]
    size = ds["size"]
    m = result["machine"]
    lines = [
        f"bench_store: {size / MIB:.0f} MiB, {machine_line(m)}, Python {m['python']}",
        libraries_line(result["git"], result["libraries"]),
    ]
    for key, version in result["tools"].items():
        lines.append(f"  {key}: {version}")
    fr = ds["fractions"]
    lines.append(
        f"data set: {size} bytes generated in {ds['seconds']:.1f} s (seed {ds['seed']}):\n  "
        f"{fr['text']:.0%} text, {fr['random']:.0%} random, {fr['binary']:.0%} binary-like; "
        f"zstd-3 per 64 KiB block {ds['zstd3_ratio_sample']:.2f}x "
        f"(sample of {ds['sample_bytes'] / MIB:.0f} MiB)"
    )
    dup = result.get("self_dedup")
    if dup:
        lines.append(f"self-dedup check: {dup}")
    lines.append(f"page cache: {result['page_cache']['mode']} ({result['page_cache']['reason']})")
    if result["waited_s"] >= 1:
        lines.append(f"waited {result['waited_s']:.0f} s in all for other processes to go quiet")
    if result["repeat"] > 1:
        lines.append(f"each figure is the median of {result['repeat']} runs (all listed in JSON)")
    lines.append("")
    table = Table(
        [
            Column("tool", 50),
            Column("seconds", 8, ">"),
            Column("MiB/s", 8, ">"),
            Column("CPU s", 7, ">"),
            Column("RSS MiB", 8, ">"),
            Column("repo MiB", 9, ">"),
            Column("vs restic", 9, ">"),
            Column("other CPU s", 11, ">"),
        ]
    )
    best = ch["best_seconds"]
    table.row(
        "chunking alone: Chunker.chunks (in-process, warm)",
        f"{best:.2f}",
        f"{size / MIB / best:.1f}",
        *["-"] * 4,
        f"{ch['other_cpu_s']:.1f}",
    )
    raw_best = min(ch["raw_seconds"])
    table.row(
        "  (compiled FastCDC over mmap, no copies)",
        f"{raw_best:.2f}",
        f"{size / MIB / raw_best:.1f}",
        *["-"] * 5,
    )
    for phase in ("first", "again"):
        if phase == "again":
            table.note("-- the same file again into the same repository (dedup path):")
        for r in rows:
            if r["phase"] != phase:
                continue
            table.row(
                r["label"],
                f"{r['seconds']:.2f}",
                f"{r['mib_s']:.1f}",
                f"{r['cpu_s']:.1f}",
                f"{r['rss_mib']:.1f}",
                f"{r['repo_bytes'] / MIB:.1f}",
                _fmt_ratio(r["ratio_vs_restic"]),
                f"{r['other_cpu_s']:.1f}",
            )
    lines += table.text()
    lines.append(
        "CPU s = user + sys time of the tool (CPU s / seconds = cores kept busy); repo = size "
        "on disk;\nother CPU s = CPU time used by other processes during the run (noise)"
    )
    lines.append("")
    lines.append("targets (throughput ratio = restic seconds / chunkstore seconds):")
    lines += target_lines(result["targets"], 64)
    lines.append(
        "  (MB and GB are 10**6 and 10**9 bytes: 250 MB = 238.4 MiB, 1 GB/s = 953.7 MiB/s)"
    )
    return "\n".join(lines)


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = {(r["key"], r["phase"]): r for r in result["rows"]}
    targets = []
    for key, what in (("chunkstore-plain", "plain"), ("chunkstore-encrypted", "encrypted")):
        for phase, suffix in (("first", ""), ("again", ", dedup path")):
            r = rows.get((key, phase))
            if r is None or r["ratio_vs_restic"] is None:
                continue
            ratio = r["ratio_vs_restic"]
            targets.append(
                {
                    "name": f"put ({what}{suffix}) >= {TARGET_RATIO}x restic backup throughput",
                    "value": f"{ratio:.2f}x",
                    "ok": ratio >= TARGET_RATIO,
                }
            )
    cs_rows = [r for r in result["rows"] if r["key"].startswith("chunkstore")]
    if cs_rows:
        worst = max(cs_rows, key=lambda r: r["rss_mib"])
        peak = worst["rss_mib"] * MIB
        targets.append(
            {
                "name": "peak RSS of chunkstore put <= 250 MB (every run above)",
                "value": f"{peak / 1e6:.1f} MB ({worst['label']})",
                "ok": peak <= TARGET_RSS_BYTES,
            }
        )
    ch = result["chunking"]
    rate = result["dataset"]["size"] / ch["best_seconds"]
    targets.append(
        {
            "name": "chunking alone (Chunker.chunks) >= 1 GB/s",
            "value": f"{rate / 1e9:.2f} GB/s",
            "ok": rate >= TARGET_CHUNK_BYTES_S,
        }
    )
    for t in targets:
        t["verdict"] = "PASS" if t["ok"] else "MISS"
    return targets


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=1 << 30, help="data set size (1G)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out", help="working/output dir")
    ap.add_argument("--json", action="store_true", help="also write OUT/bench_store.json")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool; the median is shown")
    ap.add_argument("--seed", type=int, default=1, help="data set seed")
    ap.add_argument("--no-borg", dest="borg", action="store_false", help="skip the borg runs")
    ap.add_argument("--warm", action="store_true", help="warm page cache instead of dropping it")
    ap.add_argument(
        "--max-wait",
        type=float,
        default=120,
        help="seconds to wait in all for other processes to go quiet before runs (120)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the data set and work directory")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    started = time.perf_counter()
    cs_bin = chunkstore_binary()
    specs = tool_specs(cs_bin, args.borg)
    out: Path = args.out.resolve()
    with workdir(out, "bench-store-", args.keep) as work:
        data = work / f"data-{args.size}-seed{args.seed}.bin"
        log(f"generating {args.size / MIB:.0f} MiB into {data}")
        ds = generate_dataset(data, args.size, args.seed)
        log(f"generated in {ds.seconds:.1f} s; zstd-3 sample ratio {ds.zstd3_ratio_sample:.2f}x")
        cache = PageCache(force_warm=args.warm, inputs_are="the file is")
        log(f"page cache: {cache.mode}")

        quiet = Quiet(args.max_wait)
        log("chunking alone")
        cache.read([data])
        quiet.wait()
        chunking = measure_chunking(data, ds.size)

        rows: list[Row] = []
        failures: list[str] = []
        for spec in specs:
            try:
                rows.extend(run_tool(spec, data, ds.size, work, cache, args.repeat, quiet))
            except RuntimeError as exc:
                log(f"{spec.key} FAILED: {exc}")
                failures.append(f"{spec.key}: {exc}")

    baseline = {r.phase: r for r in rows if r.key == "restic"}
    for r in rows:
        base = baseline.get(r.phase)
        if base is not None:
            r.ratio_vs_restic = base.seconds / r.seconds

    self_dedup = None
    first_plain = next(
        (r for r in rows if r.key == "chunkstore-plain" and r.phase == "first"), None
    )
    if first_plain is not None and "chunks" in first_plain.details:
        d = first_plain.details
        unique = d["chunks"] == d["new_chunks"]
        self_dedup = (
            f"chunkstore cut {d['chunks']} chunks, {d['new_chunks']} new "
            f"({'no internal duplication' if unique else 'THE DATA SET DEDUPLICATES WITHIN ITSELF'})"
            f"; stored {d['stored_bytes']} bytes = {d['bytes'] / max(d['stored_bytes'], 1):.2f}x"
        )

    result: dict[str, Any] = {
        "generator_version": GENERATOR_VERSION,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_revision(),
        "machine": machine_info(),
        "libraries": library_versions(),
        "tools": {s.key: s.version for s in specs},
        "dataset": asdict(ds),
        "self_dedup": self_dedup,
        "page_cache": {"mode": cache.mode, "reason": cache.reason},
        "repeat": args.repeat,
        "chunking": {
            **asdict(chunking),
            "best_seconds": chunking.best,
            "best_mib_s": ds.size / MIB / chunking.best,
        },
        "rows": [asdict(r) for r in rows],
        "failures": failures,
    }
    result["waited_s"] = quiet.waited_s
    result["targets"] = evaluate_targets(result)
    result["total_seconds"] = time.perf_counter() - started
    return report(result, render(result), failures, out / "bench_store.json" if args.json else None)


if __name__ == "__main__":
    sys.exit(main())
