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
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
GENERATOR_VERSION = 1

# Targets of the issue.
TARGET_RATIO = 1.5
TARGET_RSS_BYTES = 250 * 10**6
TARGET_CHUNK_BYTES_S = 10**9

RUN_TIMEOUT_S = 600
TIME_BIN = "/usr/bin/time"
PASSWORD = "bench-store-password"


def log(msg: str) -> None:
    print(f"bench_store: {msg}", file=sys.stderr, flush=True)


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
                parts = []
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


# ----------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    seconds: float
    rss_kib: int
    user_s: float
    sys_s: float
    returncode: int
    stdout: str
    stderr: str
    rss_source: str
    other_cpu_s: float = 0.0  # CPU time the rest of the machine used during the run
    steal_s: float = 0.0  # CPU time the hypervisor took away during the run


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, first[1:9])
    except (OSError, ValueError):
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


def run_measured(
    cmd: list[str], env: dict[str, str], *, timeout: float = RUN_TIMEOUT_S
) -> Measured:
    """Run ``cmd`` to completion; wall time, and peak RSS and CPU time of that child alone."""
    use_time = os.access(TIME_BIN, os.X_OK)
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        tpath = Path(tmp) / "time"
        full = [TIME_BIN, "-f", "%M %U %S", "-o", str(tpath), *cmd] if use_time else cmd
        out_path, err_path = Path(tmp) / "out", Path(tmp) / "err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            busy0, steal0 = machine_cpu()
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                full, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            usage = _wait(proc, timeout)
            seconds = time.perf_counter() - t0
            busy1, steal1 = machine_cpu()
        m = Measured(
            seconds=seconds,
            rss_kib=int(usage.ru_maxrss),
            user_s=usage.ru_utime,
            sys_s=usage.ru_stime,
            returncode=proc.returncode,
            stdout=out_path.read_text(errors="replace"),
            stderr=err_path.read_text(errors="replace"),
            rss_source="os.wait4",
        )
        if use_time:
            # /usr/bin/time reports on its own child, the tool (first line may be an exit note).
            lines = tpath.read_text().strip().splitlines()
            try:
                rss, user, system = lines[-1].split()
                m.rss_kib, m.user_s, m.sys_s = int(rss), float(user), float(system)
                m.rss_source = TIME_BIN
            except (IndexError, ValueError):
                raise RuntimeError(f"cannot parse {TIME_BIN} output {lines!r}") from None
        m.other_cpu_s = max(0.0, busy1 - busy0 - m.user_s - m.sys_s)
        m.steal_s = steal1 - steal0
        return m


def wait_for_quiet(budget: list[float], *, threshold: float = 0.15, window: float = 1.0) -> float:
    """Wait until the other processes use < ``threshold`` cores, spending at most ``budget[0]``
    seconds (shared by all calls); returns the cores in use at the last look."""
    while True:
        b0, _ = machine_cpu()
        time.sleep(window)
        b1, _ = machine_cpu()
        busy = (b1 - b0) / window
        budget[0] -= window
        if busy < threshold or budget[0] <= 0:
            return busy
        log(f"waiting for other processes to go quiet ({busy:.2f} CPUs busy)")


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> resource.struct_rusage:
    """Reap ``proc`` with ``wait4`` (its own rusage); kill its process group on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise RuntimeError(f"timed out after {timeout:.0f} s: {proc.args!r}")
        time.sleep(0.005)


def run_checked(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run an untimed set-up command; raise with its stderr if it fails."""
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (like ``du -s``)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in [*filenames, "."]:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


class PageCache:
    """Puts the page cache in the same state before every timed run: cold if we may, else warm."""

    def __init__(self, data: Path, *, force_warm: bool) -> None:
        self.data = data
        self.mode = "warm" if force_warm else ("cold" if self._drop() else "warm")
        self.reason = (
            "--warm given"
            if force_warm
            else "page cache dropped before every run (sync; echo 3 > /proc/sys/vm/drop_caches)"
            if self.mode == "cold"
            else "cannot drop the page cache (not root?): the file is read once before every run"
        )

    @staticmethod
    def _drop() -> bool:
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError:
            return False
        return True

    def prepare(self) -> None:
        if self.mode == "cold":
            if not self._drop():
                raise RuntimeError("dropping the page cache stopped working")
        else:
            os.sync()
            self.warm()

    def warm(self) -> None:
        with open(self.data, "rb", buffering=0) as f:
            buf = bytearray(8 * MIB)
            while f.readinto(buf):
                pass


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
    from fastcdc.fastcdc_cy import chunk_generator

    from chunkstore.chunker import Chunker, ChunkerParams

    params = ChunkerParams()
    chunker = Chunker(params)
    busy0, _ = machine_cpu()
    own0 = time.process_time()
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
        if total != size:
            raise RuntimeError(f"the chunker returned {total} bytes of {size}")
    raw = []
    with open(data, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
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
    other = max(0.0, machine_cpu()[0] - busy0 - (time.process_time() - own0))
    if n != count:
        log(f"warning: raw FastCDC made {n} chunks, Chunker.chunks {count}")
    return ChunkFigures(times, count, total / max(count, 1), raw, params.to_cbor(), other)


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


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not installed"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def tool_specs(chunkstore_bin: str, with_borg: bool) -> list[ToolSpec]:
    cs = [chunkstore_bin, "--json", "-r", "{repo}"]
    cs_version = _version([chunkstore_bin, "--version"])
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
                version=_version([restic, "version"]),
                baseline=True,
            )
        )
    else:
        log("restic is not installed: no baseline, no ratios")
    borg = shutil.which("borg")
    if with_borg and borg is not None:
        borg_version = _version([borg, "--version"])
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


def base_env(work: Path) -> dict[str, str]:
    """The parent environment with every tool's home-directory state redirected into ``work``."""
    env = dict(os.environ)
    for var in ("CHUNKSTORE_REPO", "CHUNKSTORE_PASSWORD", "RESTIC_REPOSITORY", "BORG_REPO"):
        env.pop(var, None)
    env["XDG_CACHE_HOME"] = str(work / "xdg-cache")
    env["XDG_DATA_HOME"] = str(work / "xdg-data")
    env["XDG_CONFIG_HOME"] = str(work / "xdg-config")
    env["TMPDIR"] = str(work / "tmp")
    (work / "tmp").mkdir(exist_ok=True)
    return env


def _parse_details(spec: ToolSpec, m: Measured) -> dict[str, Any]:
    if spec.chunkstore:
        with contextlib.suppress(ValueError):
            info = json.loads(m.stdout)
            keys = ("bytes", "chunks", "new_chunks", "new_bytes", "stored_bytes")
            return {k: info[k] for k in keys if k in info}
    if spec.baseline:
        keys = ("data_blobs", "data_added", "total_bytes_processed", "total_duration")
        return restic_summary(m.stdout, keys)
    return {}


def restic_summary(stdout: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """``keys`` of the last ``summary`` message of restic's ``--json`` output (empty if none)."""
    for line in reversed(stdout.splitlines()):
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            if isinstance(msg, dict) and msg.get("message_type") == "summary":
                return {k: msg[k] for k in keys if k in msg}
    return {}


def run_tool(
    spec: ToolSpec,
    data: Path,
    size: int,
    work: Path,
    cache: PageCache,
    repeat: int,
    quiet_budget: list[float],
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
                cache.prepare()
                wait_for_quiet(quiet_budget)
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


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem / (1 << 30), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def library_versions() -> dict[str, str]:
    out = {}
    for dist in ("chunkstore", "fastcdc", "zstandard", "PyNaCl", "lmdb"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


# --no-optional-locks: a read-only status that never rewrites the index.
GIT_STATUS = ["git", "--no-optional-locks", "-C", str(ROOT), "status", "--porcelain", "-uno"]


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        dirty = subprocess.run(
            [*GIT_STATUS, "--", "chunkstore", "index"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + (" (chunkstore/ or index/ modified)" if dirty else "")


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def render(result: dict[str, Any]) -> str:
    ds = result["dataset"]
    ch = result["chunking"]
    rows: list[dict[str, Any]] = result["rows"]
    size = ds["size"]
    lines = []
    lines.append(
        f"bench_store: {size / MIB:.0f} MiB, {result['machine']['cpus']} CPUs "
        f"({result['machine']['cpu']}), {result['machine']['memory_gib']} GiB RAM, "
        f"kernel {result['machine']['kernel']}, Python {result['machine']['python']}"
    )
    lines.append(f"chunkstore {result['git']}; " + ", ".join(
        f"{k} {v}" for k, v in result["libraries"].items() if k != "chunkstore"
    ))  # fmt: skip
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
    head = (
        f"{'tool':<50} {'seconds':>8} {'MiB/s':>8} {'CPU s':>7} {'RSS MiB':>8} "
        f"{'repo MiB':>9} {'vs restic':>9} {'other CPU s':>11}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    best = ch["best_seconds"]
    lines.append(
        f"{'chunking alone: Chunker.chunks (in-process, warm)':<50} {best:>8.2f} "
        f"{size / MIB / best:>8.1f} {'-':>7} {'-':>8} {'-':>9} {'-':>9} "
        f"{ch['other_cpu_s']:>11.1f}"
    )
    raw_best = min(ch["raw_seconds"])
    lines.append(
        f"{'  (compiled FastCDC over mmap, no copies)':<50} {raw_best:>8.2f} "
        f"{size / MIB / raw_best:>8.1f} {'-':>7} {'-':>8} {'-':>9} {'-':>9} {'-':>11}"
    )
    for phase in ("first", "again"):
        if phase == "again":
            lines.append("-- the same file again into the same repository (dedup path):")
        for r in rows:
            if r["phase"] != phase:
                continue
            lines.append(
                f"{r['label']:<50} {r['seconds']:>8.2f} {r['mib_s']:>8.1f} {r['cpu_s']:>7.1f} "
                f"{r['rss_mib']:>8.1f} {r['repo_bytes'] / MIB:>9.1f} "
                f"{_fmt_ratio(r['ratio_vs_restic']):>9} {r['other_cpu_s']:>11.1f}"
            )
    lines.append(
        "CPU s = user + sys time of the tool (CPU s / seconds = cores kept busy); repo = size "
        "on disk;\nother CPU s = CPU time used by other processes during the run (noise)"
    )
    lines.append("")
    lines.append("targets (throughput ratio = restic seconds / chunkstore seconds):")
    for t in result["targets"]:
        lines.append(f"  {t['verdict']:<4}  {t['name']:<64} {t['value']}")
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


def chunkstore_binary() -> str:
    here = Path(sys.executable).parent / "chunkstore"
    if here.exists():
        return str(here)
    venv = ROOT / ".venv" / "bin" / "chunkstore"
    if venv.exists():
        return str(venv)
    found = shutil.which("chunkstore")
    if found is None:
        sys.exit("bench_store: no chunkstore command found; run tools/setup first")
    return found


@contextlib.contextmanager
def workdir(out: Path, keep: bool) -> Iterator[Path]:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-store-", dir=out))
    try:
        yield work
    finally:
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


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
    with workdir(out, args.keep) as work:
        data = work / f"data-{args.size}-seed{args.seed}.bin"
        log(f"generating {args.size / MIB:.0f} MiB into {data}")
        ds = generate_dataset(data, args.size, args.seed)
        log(f"generated in {ds.seconds:.1f} s; zstd-3 sample ratio {ds.zstd3_ratio_sample:.2f}x")
        cache = PageCache(data, force_warm=args.warm)
        log(f"page cache: {cache.mode}")

        quiet_budget = [float(args.max_wait)]
        log("chunking alone")
        cache.warm()
        wait_for_quiet(quiet_budget)
        chunking = measure_chunking(data, ds.size)

        rows: list[Row] = []
        failures: list[str] = []
        for spec in specs:
            try:
                rows.extend(run_tool(spec, data, ds.size, work, cache, args.repeat, quiet_budget))
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
    result["waited_s"] = args.max_wait - max(quiet_budget[0], 0.0)
    result["targets"] = evaluate_targets(result)
    result["total_seconds"] = time.perf_counter() - started
    return report(result, render(result), failures, out / "bench_store.json" if args.json else None)


def report(result: dict[str, Any], text: str, failures: list[str], json_path: Path | None) -> int:
    """Print the table and failures, write the JSON when asked; the exit code."""
    print(text)
    for failure in failures:
        print(f"FAILED {failure}")
    print(f"\n(total benchmark time {result['total_seconds']:.0f} s)")
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        log(f"wrote {json_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
