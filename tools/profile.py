#!/usr/bin/env python3
"""Where a chunkstore command spends its time, per pipeline stage: CPU on each thread and the GIL.

    tools/profile.py [--rate HZ] [--keep DIR] -- backup -t T oci:/var/tmp/chunkstore-corpus/oci:IMG

The command (a ``chunkstore`` command line, run as ``python -m chunkstore``) runs twice under
py-spy (installed by tools/setup): once sampling every thread that is on a CPU, once sampling only
the thread that holds the interpreter lock. Threads are grouped into the pipeline's stages by
name, and for each stage the report gives its CPU seconds, its GIL seconds and the functions
where they go. ``GIL held / wall`` near 1.0 says the command is serialised by the interpreter
lock: more threads cannot make it faster, only moving work off the lock can. The repository and
cache named by ``-r``/``CHUNKSTORE_REPO`` are the caller's; with ``--fresh-repo`` each run gets
a new plain local repository and cache (for ``backup``).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib.common import ROOT, base_env

PYTHON = Path(sys.executable)
PY_SPY = PYTHON.parent / "py-spy"

#: Thread names (digits and hex suffixes removed) -> the stage they run.
STAGES = {
    "MainThread": "coordinator: tar parse, chunking, recipe, records",
    "chunkstore-readahead": "read, verify and decompress the layer",
    "chunkstore_": "blob workers: hash, compress, seal, index",
    "chunkstore-probe": "exactness probe (trial compression)",
    "chunkstore-pack-upload-": "pack upload",
    "chunkstore-lock-refresh-": "lock refresh",
    "chunkstore-restore": "restore workers",
}


#: Innermost frames that are a thread waiting (py-spy's idle test misses some blocked waits).
WAITS = re.compile(
    r"^(Condition\.wait|Event\.wait|Queue\.get|Semaphore\.acquire|Thread\.join|_worker) "
    r"|^_worker \(concurrent/futures/thread\.py"
)


@dataclass
class Stage:
    """Samples of one stage: on-CPU and GIL-holding, with their leaf functions."""

    cpu: int = 0
    gil: int = 0
    cpu_funcs: collections.Counter[str] = field(default_factory=collections.Counter)
    gil_funcs: collections.Counter[str] = field(default_factory=collections.Counter)


def _stage_of(thread: str) -> str:
    name = re.sub(r"^thread \(\d+\):?\s*", "", thread).strip() or "unnamed"
    key = re.sub(r"[0-9a-f]{8}$|\d+$", "", name)
    return STAGES.get(key, name)


def _leaf(frames: list[str]) -> str:
    """The innermost frame as ``function (file:line)``, files shortened to the package path."""
    frame = frames[-1]
    m = re.match(r"(.*) \((.*?)\)$", frame)
    if not m:
        return frame
    where = re.sub(r".*/(chunkstore|index|site-packages)/", r"\1/", m.group(2))
    return f"{m.group(1)} ({where})"


def _read(raw: Path, into: dict[str, Stage], *, gil: bool) -> int:
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if WAITS.match(_leaf(frames)):
            continue
        stage = into.setdefault(_stage_of(frames[0]), Stage())
        if gil:
            stage.gil += n
            stage.gil_funcs[_leaf(frames)] += n
        else:
            stage.cpu += n
            stage.cpu_funcs[_leaf(frames)] += n
        total += n
    return total


def _run(args: list[str], raw: Path, rate: int, gil: bool, fresh: bool) -> float:
    command = [str(PYTHON), "-m", "chunkstore", *args]
    tmp = Path(tempfile.mkdtemp(prefix="chunkstore-profile-"))
    env = base_env(tmp) if fresh else dict(os.environ)
    try:
        if fresh:
            repo = tmp / "repo"
            subprocess.run(
                [str(PYTHON), "-m", "chunkstore", "-r", str(repo), "init"],
                env=env,
                check=True,
                capture_output=True,
            )
            command[3:3] = ["-r", str(repo), "--cache-dir", str(tmp / "cache")]
        spy = [str(PY_SPY), "record", "-r", str(rate), "--threads", "-f", "raw", "-o", str(raw)]
        if gil:
            spy.append("--gil")
        start = time.perf_counter()
        done = subprocess.run(
            [*spy, "--", *command], env=env, capture_output=True, text=True, cwd=ROOT
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"profile: the command failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return wall
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=int, default=250, help="samples per second (250)")
    parser.add_argument("--top", type=int, default=5, help="functions listed per stage (5)")
    parser.add_argument("--fresh-repo", action="store_true", help="a new local repo per run")
    parser.add_argument("--keep", type=Path, help="keep py-spy's raw samples in this directory")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- chunkstore arguments")
    opts = parser.parse_args()
    args = opts.command[1:] if opts.command[:1] == ["--"] else opts.command
    if not args:
        parser.error("give the chunkstore command after --")
    if not PY_SPY.exists():
        sys.exit("profile: py-spy is not installed; run tools/setup")
    out = opts.keep or Path(tempfile.mkdtemp(prefix="chunkstore-profile-raw-"))
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, Stage] = {}
    wall_cpu = _run(args, out / "cpu.raw", opts.rate, False, opts.fresh_repo)
    _read(out / "cpu.raw", stages, gil=False)
    wall_gil = _run(args, out / "gil.raw", opts.rate, True, opts.fresh_repo)
    gil_total = _read(out / "gil.raw", stages, gil=True)
    rate = opts.rate
    print(f"command: chunkstore {' '.join(args)}")
    print(f"wall: {wall_cpu:.2f} s (CPU run), {wall_gil:.2f} s (GIL run), {rate} samples/s")
    print(f"GIL held / wall: {gil_total / rate / wall_gil:.2f}")
    print()
    print(f"{'stage':52} {'CPU s':>7} {'GIL s':>7}")
    for name, st in sorted(stages.items(), key=lambda kv: -kv[1].cpu):
        print(f"{name:52} {st.cpu / rate:7.2f} {st.gil / rate:7.2f}")
    for name, st in sorted(stages.items(), key=lambda kv: -kv[1].cpu):
        if st.cpu + st.gil < rate // 10:
            continue
        print(f"\n{name}")
        for func, n in st.cpu_funcs.most_common(opts.top):
            print(f"  CPU {n / rate:6.2f} s  {func}")
        for func, n in st.gil_funcs.most_common(opts.top):
            print(f"  GIL {n / rate:6.2f} s  {func}")
    if opts.keep is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
