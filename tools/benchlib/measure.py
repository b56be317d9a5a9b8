"""One measured run: wall time, peak RSS and CPU time of a command (or a callable), and the noise.

A command runs to completion under ``/usr/bin/time`` (else reaped with ``os.wait4``), so peak RSS
and CPU time are that child's alone; the CPU time the rest of the machine used meanwhile (from
``/proc/stat``) is reported next to it, so runs disturbed by other processes on a shared machine
show. :class:`Quiet` waits, within a budget, for the machine to go quiet before a run;
:class:`PageCache` drops the page cache before every run (root only), else reads the run's inputs
once so that every run starts warm.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from benchlib.common import log

__all__ = [
    "RUN_TIMEOUT_S",
    "TIME_BIN",
    "CallFigures",
    "Measured",
    "PageCache",
    "Quiet",
    "disk_usage",
    "drop_page_cache",
    "machine_cpu",
    "measure_call",
    "run_checked",
    "run_measured",
    "tree_size",
]

RUN_TIMEOUT_S = 600
TIME_BIN = "/usr/bin/time"
T = TypeVar("T")


@dataclass
class Measured:
    """A command's run: wall seconds, its own peak RSS and CPU time, its output, the noise."""

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

    @property
    def cpu_s(self) -> float:
        """User + system CPU seconds of the command."""
        return self.user_s + self.sys_s


@dataclass(frozen=True)
class CallFigures:
    """A callable's run in this process: wall and CPU seconds, peak RSS so far, the noise."""

    seconds: float
    cpu_s: float
    rss_kib: int
    other_cpu_s: float


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
    cmd: list[str], env: dict[str, str] | None = None, *, timeout: float = RUN_TIMEOUT_S
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


def measure_call(fn: Callable[[], T]) -> tuple[T, CallFigures]:
    """Run ``fn()`` here; its result and figures (peak RSS is this process' peak so far)."""
    busy0, _ = machine_cpu()
    own0 = time.process_time()
    t0 = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - t0
    own = time.process_time() - own0
    other = max(0.0, machine_cpu()[0] - busy0 - own)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value, CallFigures(seconds, own, int(rss), other)


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


class Quiet:
    """Waits before runs until other processes use < ``threshold`` cores, within one budget."""

    def __init__(self, budget_s: float, *, threshold: float = 0.15, window: float = 1.0) -> None:
        self.budget_s = float(budget_s)
        self.left_s = float(budget_s)
        self.threshold = threshold
        self.window = window

    @property
    def waited_s(self) -> float:
        """Seconds spent waiting so far."""
        return self.budget_s - max(self.left_s, 0.0)

    def wait(self) -> float:
        """Wait (at most what is left of the budget); the cores in use at the last look."""
        while True:
            b0, _ = machine_cpu()
            time.sleep(self.window)
            b1, _ = machine_cpu()
            busy = (b1 - b0) / self.window
            self.left_s -= self.window
            if busy < self.threshold or self.left_s <= 0:
                return busy
            log(f"waiting for other processes to go quiet ({busy:.2f} CPUs busy)")


def run_checked(
    cmd: list[str],
    env: dict[str, str] | None = None,
    *,
    timeout: float = RUN_TIMEOUT_S,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run an untimed set-up command; raise ``RuntimeError`` with its stderr if it fails."""
    proc = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
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


def tree_size(path: Path) -> tuple[int, int]:
    """(regular files, their bytes) under ``path``; hard links counted once."""
    seen: set[tuple[int, int]] = set()
    files = total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if not (st.st_mode & 0o170000 == 0o100000):
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            files += 1
            total += st.st_size
    return files, total


def drop_page_cache() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False when not allowed (not root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


class PageCache:
    """Puts the page cache in the same state before every timed run: cold if we may, else warm.

    Cold: the page cache is dropped before every run. Warm (not root, or ``force_warm``): the
    run's inputs (files, or every file under directories) are read once before it.
    ``inputs_are`` words the report line (e.g. "the file is", "inputs are").
    """

    def __init__(self, *, force_warm: bool, inputs_are: str = "inputs are") -> None:
        self.mode = "warm" if force_warm else ("cold" if drop_page_cache() else "warm")
        self.reason = (
            "--warm given"
            if force_warm
            else "page cache dropped before every run (sync; echo 3 > /proc/sys/vm/drop_caches)"
            if self.mode == "cold"
            else f"cannot drop the page cache (not root?): {inputs_are} read once before every run"
        )

    def prepare(self, inputs: list[Path]) -> None:
        """Before a timed run: drop the cache (cold), or sync and read ``inputs`` (warm)."""
        if self.mode == "cold":
            if not drop_page_cache():
                raise RuntimeError("dropping the page cache stopped working")
            return
        os.sync()
        self.read(inputs)

    @staticmethod
    def read(inputs: list[Path]) -> None:
        """Read every file of ``inputs`` (files, or directories walked) once."""
        buf = bytearray(8 << 20)
        for top in inputs:
            files = (
                [str(top)]
                if top.is_file()
                else [os.path.join(d, n) for d, _dirs, names in os.walk(top) for n in names]
            )
            for p in files:
                if os.path.isfile(p) and not os.path.islink(p):
                    with open(p, "rb", buffering=0) as f:
                        while f.readinto(buf):
                            pass
