#!/usr/bin/env python3
"""Lazy-mount benchmark: ``chunkstore mount`` + chroot against ``skopeo copy`` + ``umoci unpack``.

Targets (issue 5), all measured in one run and reported as ratios:

1. **cold start**: time from starting ``chunkstore --repo registry:... mount py MNT`` to the end of
   ``chroot MNT /usr/bin/python3 -c 'print(42)'`` <= 0.25x the time of ``skopeo copy
   docker://... oci:DIR:py`` + ``umoci unpack --image DIR:py BUNDLE`` + ``chroot BUNDLE/rootfs
   /usr/bin/python3 -c 'print(42)'``;
2. **bytes fetched** by that mount (``--stats``: ``bytes_fetched``) <= 10% of the image's
   compressed size (the sum of its gzip layer sizes);
3. **cold start with a profile**: the same as 1, with a profile recorded by the first mount
   (``--record-profile``) replayed by a second, also cold, mount (``--prefetch``): <= 0.15x;
4. **warm sequential read** of a 100 MB file (random bytes) from a mount >= 0.5x the speed of
   reading the same file from local disk. Both are warm: the file is read once through the mount
   (which fetches it), then timed on a second full read; the local file is read once, then timed.

Usage (root; needs ``ip``, ``tc``, docker-registry, skopeo, umoci, fusermount3)::

    .venv/bin/python tools/bench_mount.py [--out DIR] [--repeat N] [--rtt-ms 50] [--rate-mbit 100]
                                          [--keep] [--no-netns] [--state DIR]

The network. The registry (Debian's ``/usr/bin/docker-registry``, filesystem storage) runs in a
network namespace the benchmark creates, on one end of a veth pair; both ends of the pair get a
``tc qdisc tbf rate 100mbit`` (the kernel has no netem), so every byte to and from the registry
crosses a 100 Mbit/s link in each direction. Latency comes from ``tools/delay_proxy.py`` on the
host side: it listens on 127.0.0.1 (so clients use plain HTTP, as for any loopback registry) and
holds every byte for ``rtt/2`` in each direction (and a new connection for one RTT, the
handshake), then forwards it over the veth. Every client (chunkstore, skopeo) talks only to the
proxy. If namespaces or tc do not work (or with ``--no-netns``) the registry runs on loopback and
the proxy enforces the rate itself with a token bucket; the report says which mode ran.

Cold runs. Before each timed run the page cache is dropped (``sync; echo 3 >
/proc/sys/vm/drop_caches``, which also empties the registry's own file cache), and each mount gets
a fresh chunk cache (``mount --cache-dir``) and a fresh repository cache (global ``--cache-dir``:
the merged pack index), as on a machine that has never seen the repository; the baseline writes
into fresh directories. The mount time runs from ``Popen`` of the mount to the exit of the chroot
(the ready line and the chroot's own time are reported too); unmounting is not timed.

Set-up (not timed): ``chunkstore init`` of ``registry:PROXY/bench``, ``backup
oci:CORPUS:bookworm-python3 --tag py``, ``backup dir:BIG --tag big`` (BIG holds the 100 MB file),
and ``skopeo copy oci:CORPUS:bookworm-python3 docker://PROXY/plain:py`` for the baseline, all
through the shaped path. The corpus comes from ``tools/build_corpus``.

Output: a table with times, ratios and PASS/MISS verdicts on stdout, JSON in
``OUT/bench_mount.json`` (default ``bench-out/``). Exit code 0 when every target is met, 1 when
one is missed, 2 when the benchmark cannot run (missing corpus, not root, ...). With ``--repeat
N`` the cold measurements run N times and the medians are reported (all runs are in the JSON).
Mounts are always unmounted (``fusermount3 -u``, then ``-u -z``), and the namespace, veth pair,
proxy and registry removed, in ``finally`` blocks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib.common import ROOT, log
from benchlib.corpus import DEFAULT_CORPUS, read_corpus
from benchlib.measure import drop_page_cache, run_checked
from benchlib.report import markdown_table, verdict

from chunkstore.testing.registry_server import (
    REGISTRY_BINARY,
    RegistryServer,
    start_registry,
    stop_process,
    wait_ready,
)

CORPUS = DEFAULT_CORPUS / "oci"
IMAGE_REF = "bookworm-python3"
CHUNKSTORE = [sys.executable, "-m", "chunkstore"]
PYTHON_CMD = ["/usr/bin/python3", "-c", "print(42)"]

TARGET_COLD = 0.25
TARGET_FETCHED = 0.10
TARGET_PROFILE = 0.15
TARGET_WARM = 0.5

BIG_FILE_BYTES = 100 * 10**6
READ_BLOCK = 1 << 20
RUN_TIMEOUT_S = 900
MOUNT_READY_TIMEOUT_S = 120


def run(cmd: list[str], *, timeout: float = RUN_TIMEOUT_S, cwd: Path | None = None) -> str:
    """Run ``cmd``; its stdout, or RuntimeError with its stderr on failure."""
    return run_checked(cmd, timeout=timeout, cwd=cwd).stdout


def drop_caches() -> None:
    if not drop_page_cache():
        raise RuntimeError("cannot drop the page cache (needs root)")


# ----------------------------------------------------------------------------- the shaped link


@dataclass
class Link:
    """Where clients reach the registry (``host`` = the proxy) and how the link is shaped."""

    host: str
    mode: str
    rtt_ms: float
    rate_mbit: float


class Network:
    """Namespace + veth + tbf + registry + delay proxy; ``close()`` undoes whatever was done."""

    def __init__(self, work: Path, rtt_ms: float, rate_mbit: float, use_netns: bool) -> None:
        self.work = work
        self.rtt_ms = rtt_ms
        self.rate_mbit = rate_mbit
        self.use_netns = use_netns
        tag = os.getpid() % 100000
        self.netns = f"csbench{tag}"
        self.veth_host = f"csb{tag}h"
        self.veth_ns = f"csb{tag}n"
        self.subnet = f"10.{200 + tag % 50}.{tag % 250}"
        self.netns_made = False
        self.veth_made = False
        self.registry: RegistryServer | None = None
        self.proxy: subprocess.Popen[str] | None = None

    def start(self) -> Link:
        mode = "netns"
        target: str | None = None
        if self.use_netns:
            try:
                target = self._start_netns()
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                log(f"network namespace / tc failed ({e}); falling back to the proxy's rate limit")
                self._undo_netns()
        if target is None:
            mode = "proxy-rate"
            target = self._start_loopback_registry()
        host = self._start_proxy(target, rate_in_proxy=mode == "proxy-rate")
        return Link(host, mode, self.rtt_ms, self.rate_mbit)

    def _start_netns(self) -> str:
        ns, h, n, net = self.netns, self.veth_host, self.veth_ns, self.subnet
        run(["ip", "netns", "add", ns])
        self.netns_made = True
        run(["ip", "link", "add", h, "type", "veth", "peer", "name", n])
        self.veth_made = True
        run(["ip", "link", "set", n, "netns", ns])
        run(["ip", "addr", "add", f"{net}.1/24", "dev", h])
        run(["ip", "link", "set", h, "up"])
        nsx = ["ip", "netns", "exec", ns]
        run([*nsx, "ip", "addr", "add", f"{net}.2/24", "dev", n])
        run([*nsx, "ip", "link", "set", n, "up"])
        run([*nsx, "ip", "link", "set", "lo", "up"])
        # tbf on the egress of both ends: host -> registry and registry -> host are each
        # limited to the rate. A 64 KiB bucket lets GSO segments through without drops; the
        # queue holds 100 ms at the rate.
        shape = ["tbf", "rate", f"{self.rate_mbit:g}mbit", "burst", "64kb", "latency", "100ms"]
        run(["tc", "qdisc", "add", "dev", h, "root", *shape])
        run([*nsx, "tc", "qdisc", "add", "dev", n, "root", *shape])
        target = f"{net}.2:5000"
        self.registry = start_registry(
            self.work / "registry",
            listen=target,
            prefix=nsx,
            secret="chunkstore-bench-mount-secret",
            startup_seconds=20.0,
        )
        return target

    def _start_loopback_registry(self) -> str:
        self.registry = start_registry(self.work / "registry")
        return self.registry.host

    def _start_proxy(self, target: str, *, rate_in_proxy: bool) -> str:
        cmd = [
            sys.executable,
            str(ROOT / "tools" / "delay_proxy.py"),
            "--listen",
            "127.0.0.1:0",
            "--target",
            target,
            "--delay-ms",
            f"{self.rtt_ms / 2:g}",
        ]
        if rate_in_proxy:
            cmd += ["--rate", f"{self.rate_mbit * 1e6 / 8:.0f}"]
        self.proxy = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proxy.stdout is not None
        line = self.proxy.stdout.readline()
        if not line.startswith("listening "):
            raise RuntimeError(f"delay proxy did not start: {line!r}")
        host = line.split()[1]
        if not wait_ready(self.proxy, f"http://{host}", 20.0):
            raise RuntimeError(f"no registry answer through the delay proxy at {host}")
        return host

    def _undo_netns(self) -> None:
        if self.registry is not None:
            self.registry.stop()
            self.registry = None
        if self.veth_made:
            subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True, check=False)
            self.veth_made = False
        if self.netns_made:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
            self.netns_made = False

    def close(self) -> None:
        if self.proxy is not None:
            stop_process(self.proxy)
            if self.proxy.stdout is not None:
                self.proxy.stdout.close()
        self._undo_netns()


# ----------------------------------------------------------------------------- mounts


def unmount(mnt: Path) -> None:
    if subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


class Mount:
    """One ``chunkstore mount`` process: started, ready, unmounted in ``close()``."""

    def __init__(self, repo: str, tag: str, mnt: Path, cache: Path, extra: list[str]) -> None:
        self.mnt = mnt
        self.stats = mnt.with_name(mnt.name + ".stats.json")
        self.log = mnt.with_name(mnt.name + ".log")
        mnt.mkdir(parents=True, exist_ok=True)
        self.cmd = [
            *CHUNKSTORE,
            "--repo",
            repo,
            "--cache-dir",
            str(cache / "repo-cache"),
            "mount",
            tag,
            str(mnt),
            "--cache-dir",
            str(cache / "chunks"),
            "--stats",
            str(self.stats),
            *extra,
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.ready_s = 0.0

    def start(self) -> float:
        """Start and wait for the ready line; the start time (``time.monotonic``)."""
        t0 = time.monotonic()
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                self.cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "ready" not in line:
            self.close()
            raise RuntimeError(f"mount failed: {line!r} {self.log.read_text()[-2000:]}")
        self.ready_s = time.monotonic() - t0
        return t0

    def close(self) -> dict[str, Any]:
        """Unmount, reap, and return the ``--stats`` counters (empty if none were written)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                unmount(self.mnt)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        if self.stats.exists():
            return dict(json.loads(self.stats.read_text()))
        return {}


@contextlib.contextmanager
def mounted(
    repo: str, tag: str, mnt: Path, cache: Path, extra: list[str]
) -> Iterator[tuple[Mount, float]]:
    m = Mount(repo, tag, mnt, cache, extra)
    try:
        t0 = m.start()
        yield m, t0
    finally:
        m.close()


def chroot_python(root: Path) -> float:
    t0 = time.monotonic()
    out = run(["chroot", str(root), *PYTHON_CMD], timeout=RUN_TIMEOUT_S)
    if out.strip() != "42":
        raise RuntimeError(f"chroot python printed {out!r}")
    return time.monotonic() - t0


# ----------------------------------------------------------------------------- measurements


@dataclass
class BaselineRun:
    skopeo_s: float
    umoci_s: float
    chroot_s: float
    total_s: float


@dataclass
class MountRun:
    kind: str
    ready_s: float
    chroot_s: float
    total_s: float
    stats: dict[str, Any] = field(default_factory=dict)


def baseline(link: Link, work: Path) -> BaselineRun:
    """skopeo copy + umoci unpack + chroot python3, cold, into fresh directories."""
    oci, bundle = work / "oci", work / "bundle"
    work.mkdir(parents=True)
    drop_caches()
    t0 = time.monotonic()
    run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{link.host}/plain:py",
            f"oci:{oci}:py",
        ]
    )
    t1 = time.monotonic()
    run(["umoci", "unpack", "--image", f"{oci}:py", str(bundle)])
    t2 = time.monotonic()
    chroot_s = chroot_python(bundle / "rootfs")
    total = time.monotonic() - t0
    shutil.rmtree(work)
    return BaselineRun(t1 - t0, t2 - t1, chroot_s, total)


def mount_run(repo: str, work: Path, kind: str, extra: list[str]) -> MountRun:
    """A cold mount of ``py`` (fresh caches, page cache dropped) and chroot python3 in it."""
    drop_caches()
    with mounted(repo, "py", work / "mnt", work, extra) as (m, t0):
        chroot_s = chroot_python(m.mnt)
        total = time.monotonic() - t0
        ready = m.ready_s
    stats = m.close()
    return MountRun(kind, ready, chroot_s, total, stats)


def read_file(path: Path) -> tuple[int, float]:
    """Read ``path`` sequentially in 1 MiB blocks; (bytes, seconds)."""
    buf = bytearray(READ_BLOCK)
    view = memoryview(buf)
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(view)
            if not got:
                break
            n += got
    return n, time.perf_counter() - t0


@dataclass
class WarmRead:
    """Seconds per full read of the big file; ``mount_reads[0]`` is the cold fetch."""

    bytes: int
    mount_reads: list[float]
    local_reads: list[float]
    mount_mb_s: float
    local_mb_s: float
    ratio: float
    steady_ratio: float
    stats: dict[str, Any] = field(default_factory=dict)


def warm_read(repo: str, work: Path, big: Path) -> WarmRead:
    """Read the big file four times through a mount and locally; compare the second reads.

    The first read through the mount fetches the file over the link, the first local read
    brings it into the page cache: both are warm-ups. The verdict compares the second reads (as
    the issue asks); ``steady_ratio`` compares the medians of reads 2-4, to show how far the
    mount's second read still was from a fully cached one.
    """
    name = big.name
    with mounted(repo, "big", work / "mnt-big", work / "big-cache", []) as (m, _t0):
        mount = [read_file(m.mnt / name) for _ in range(4)]
    stats = m.close()
    local = [read_file(big) for _ in range(4)]
    sizes = {n for n, _ in mount + local}
    if sizes != {BIG_FILE_BYTES}:
        raise RuntimeError(f"read {sorted(sizes)} bytes, expected {BIG_FILE_BYTES}")
    m_s, l_s = [s for _, s in mount], [s for _, s in local]
    mount_rate, local_rate = BIG_FILE_BYTES / m_s[1] / 1e6, BIG_FILE_BYTES / l_s[1] / 1e6
    steady = statistics.median(l_s[1:]) / statistics.median(m_s[1:])
    return WarmRead(
        BIG_FILE_BYTES, m_s, l_s, mount_rate, local_rate, mount_rate / local_rate, steady, stats
    )


# ----------------------------------------------------------------------------- set-up


def image_compressed_size() -> int:
    """Sum of the gzip layer sizes of IMAGE_REF in the corpus layout."""
    images = read_corpus(CORPUS)
    if IMAGE_REF not in images:
        raise RuntimeError(f"{IMAGE_REF} is not in {CORPUS}/index.json")
    return images[IMAGE_REF].compressed_bytes


def make_big_dir(path: Path) -> Path:
    """A directory with one 100 MB file of random bytes (incompressible)."""
    path.mkdir(parents=True)
    big = path / "big.bin"
    with open(big, "wb") as f:
        left = BIG_FILE_BYTES
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n
    return big


def setup(link: Link, work: Path) -> tuple[str, Path, dict[str, float]]:
    """Store the images through the shaped link, or reuse those of an earlier ``--state`` run."""
    repo = f"registry:{link.host}/bench"
    marker = work / "setup.json"
    if marker.exists():
        log(f"reusing the images stored by an earlier run in {work}")
        return repo, work / "bigdir" / "big.bin", dict(json.loads(marker.read_text()))
    cache = ["--cache-dir", str(work / "setup-cache")]
    times: dict[str, float] = {}
    t0 = time.monotonic()
    run([*CHUNKSTORE, "--repo", repo, *cache, "init"], cwd=ROOT)
    run(
        [*CHUNKSTORE, "--repo", repo, *cache, "backup", f"oci:{CORPUS}:{IMAGE_REF}", "--tag", "py"],
        cwd=ROOT,
    )
    times["chunkstore_backup_py_s"] = time.monotonic() - t0
    big = make_big_dir(work / "bigdir")
    t0 = time.monotonic()
    run([*CHUNKSTORE, "--repo", repo, *cache, "backup", f"dir:{big.parent}", "--tag", "big"])
    times["chunkstore_backup_big_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{CORPUS}:{IMAGE_REF}",
            f"docker://{link.host}/plain:py",
        ]
    )
    times["skopeo_push_s"] = time.monotonic() - t0
    marker.write_text(json.dumps(times))
    return repo, big, times


def link_check(link: Link) -> dict[str, float]:
    """Measured RTT of one small request on a kept-alive connection, and download rate."""
    import httpx

    with httpx.Client(base_url=f"http://{link.host}", timeout=60) as client:
        client.get("/v2/")
        rtts = []
        for _ in range(5):
            t0 = time.perf_counter()
            client.get("/v2/")
            rtts.append(time.perf_counter() - t0)
        tags = client.get(
            "/v2/plain/manifests/py",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ).json()
        layer = tags["layers"][0]
        t0 = time.perf_counter()
        got = 0
        with client.stream("GET", f"/v2/plain/blobs/{layer['digest']}") as r:
            for piece in r.iter_bytes():
                got += len(piece)
                if got >= 20 * 10**6:
                    break
        rate = got / (time.perf_counter() - t0) * 8 / 1e6
    return {"rtt_ms": statistics.median(rtts) * 1000, "download_mbit_s": rate}


# ----------------------------------------------------------------------------- report


def render(result: dict[str, Any]) -> str:
    m = result["medians"]
    link = result["link"]
    w = result["warm_read"]
    rows = [
        [
            "skopeo copy + umoci unpack + chroot python3",
            f"{m['baseline_s']:.2f}",
            f"copy {m['skopeo_s']:.2f} s, unpack {m['umoci_s']:.2f} s, "
            f"python {m['base_chroot_s']:.2f} s",
            "1.00",
            "",
            "",
        ],
        [
            "mount + chroot python3 (cold)",
            f"{m['cold_s']:.2f}",
            f"ready {m['cold_ready_s']:.2f} s, python {m['cold_chroot_s']:.2f} s",
            f"{m['cold_ratio']:.3f}",
            f"<= {TARGET_COLD}",
            verdict(m["cold_ratio"] <= TARGET_COLD),
        ],
        [
            "bytes fetched by that mount",
            "",
            f"{m['fetched_bytes'] / 1e6:.2f} MB in {m['requests']:.0f} requests",
            f"{m['fetched_ratio']:.3f}",
            f"<= {TARGET_FETCHED}",
            verdict(m["fetched_ratio"] <= TARGET_FETCHED),
        ],
        [
            "mount --prefetch PROFILE + chroot python3 (cold)",
            f"{m['profile_s']:.2f}",
            f"ready {m['profile_ready_s']:.2f} s, python {m['profile_chroot_s']:.2f} s, "
            f"fetched {m['profile_fetched_bytes'] / 1e6:.2f} MB",
            f"{m['profile_ratio']:.3f}",
            f"<= {TARGET_PROFILE}",
            verdict(m["profile_ratio"] <= TARGET_PROFILE),
        ],
        [
            "warm sequential read, 100 MB file, mount vs local disk (2nd reads)",
            f"{w['mount_reads'][1]:.3f}",
            f"{w['mount_mb_s']:.0f} vs {w['local_mb_s']:.0f} MB/s; "
            f"reads 2-4: {w['steady_ratio']:.2f}x; first read through the mount (fetch) "
            f"{w['mount_reads'][0]:.2f} s",
            f"{w['ratio']:.2f}",
            f">= {TARGET_WARM}",
            verdict(w["ratio"] >= TARGET_WARM),
        ],
    ]
    heading = (
        f"\nLazy mount vs skopeo+umoci, {IMAGE_REF} ({result['compressed_bytes'] / 1e6:.1f} MB "
        f"compressed), registry over {link['rtt_ms']:g} ms RTT / {link['rate_mbit']:g} Mbit/s "
        f"({link['mode']}; measured {result['link_check']['rtt_ms']:.0f} ms, "
        f"{result['link_check']['download_mbit_s']:.0f} Mbit/s); medians of "
        f"{result['repeat']} cold run(s)\n"
    )
    headers = ["measurement", "seconds", "detail", "ratio", "target", "verdict"]
    rule = ["---", "---:", "---", "---:", "---:", "---"]
    return "\n".join([heading, *markdown_table(headers, rows, rule)])


def median_of(values: list[float]) -> float:
    return float(statistics.median(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument("--rate-mbit", type=float, default=100.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--state",
        type=Path,
        help="keep the registry storage and set-up here, and reuse them on the next run",
    )
    parser.add_argument(
        "--no-netns", action="store_true", help="skip netns/tc; rate-limit in the proxy"
    )
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        log("needs root (network namespace, tc, chroot, drop_caches)")
        return 2
    index = CORPUS / "index.json"
    if not index.exists() or f'"{IMAGE_REF}"' not in index.read_text():
        log(f"{IMAGE_REF} is not in {CORPUS}: build the corpus first with tools/build_corpus")
        return 2
    for tool in ("skopeo", "umoci", "fusermount3", "chroot", str(REGISTRY_BINARY)):
        if shutil.which(tool) is None:
            log(f"{tool} is missing (tools/setup installs it)")
            return 2

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # so the finally blocks clean up

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_mount-", dir="/var/tmp"))
    state = work
    if args.state is not None:
        state = args.state.resolve()
        state.mkdir(parents=True, exist_ok=True)
    net = Network(state, args.rtt_ms, args.rate_mbit, use_netns=not args.no_netns)
    try:
        link = net.start()
        log(f"registry reached at {link.host} ({link.mode})")
        repo, big, setup_times = setup(link, state)
        log(f"set-up done: {setup_times}")
        check = link_check(link)
        log(f"link check: {check}")
        baselines: list[BaselineRun] = []
        colds: list[MountRun] = []
        profiled: list[MountRun] = []
        profile = work / "profile.jsonl"
        for i in range(args.repeat):
            baselines.append(baseline(link, work / f"base-{i}"))
            log(f"baseline {i}: {baselines[-1]}")
            extra = ["--record-profile", str(profile)] if i == 0 else []
            colds.append(mount_run(repo, work / f"cold-{i}", "cold", extra))
            log(f"cold mount {i}: {colds[-1]}")
            profiled.append(
                mount_run(repo, work / f"prof-{i}", "prefetch", ["--prefetch", str(profile)])
            )
            log(f"prefetch mount {i}: {profiled[-1]}")
        warm = warm_read(repo, work, big)
        log(f"warm read: {warm}")
    finally:
        net.close()
        for mnt in work.glob("*/mnt*"):
            if os.path.ismount(mnt):
                unmount(mnt)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")

    compressed = image_compressed_size()
    base_s = median_of([b.total_s for b in baselines])
    cold_s = median_of([c.total_s for c in colds])
    prof_s = median_of([p.total_s for p in profiled])
    fetched = median_of([float(c.stats.get("bytes_fetched", 0)) for c in colds])
    medians = {
        "baseline_s": base_s,
        "skopeo_s": median_of([b.skopeo_s for b in baselines]),
        "umoci_s": median_of([b.umoci_s for b in baselines]),
        "base_chroot_s": median_of([b.chroot_s for b in baselines]),
        "cold_s": cold_s,
        "cold_ready_s": median_of([c.ready_s for c in colds]),
        "cold_chroot_s": median_of([c.chroot_s for c in colds]),
        "cold_ratio": cold_s / base_s,
        "fetched_bytes": fetched,
        "requests": median_of([float(c.stats.get("requests", 0)) for c in colds]),
        "fetched_ratio": fetched / compressed,
        "profile_s": prof_s,
        "profile_ready_s": median_of([p.ready_s for p in profiled]),
        "profile_chroot_s": median_of([p.chroot_s for p in profiled]),
        "profile_fetched_bytes": median_of(
            [float(p.stats.get("bytes_fetched", 0)) for p in profiled]
        ),
        "profile_ratio": prof_s / base_s,
    }
    targets = {
        "cold_ratio": medians["cold_ratio"] <= TARGET_COLD,
        "fetched_ratio": medians["fetched_ratio"] <= TARGET_FETCHED,
        "profile_ratio": medians["profile_ratio"] <= TARGET_PROFILE,
        "warm_read_ratio": warm.ratio >= TARGET_WARM,
    }
    result: dict[str, Any] = {
        "benchmark": "bench_mount",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
        },
        "image": IMAGE_REF,
        "compressed_bytes": compressed,
        "link": asdict(link),
        "link_check": check,
        "setup": setup_times,
        "repeat": args.repeat,
        "baseline_runs": [asdict(b) for b in baselines],
        "cold_runs": [asdict(c) for c in colds],
        "prefetch_runs": [asdict(p) for p in profiled],
        "warm_read": asdict(warm),
        "medians": medians,
        "targets": {
            "cold_ratio_max": TARGET_COLD,
            "fetched_ratio_max": TARGET_FETCHED,
            "profile_ratio_max": TARGET_PROFILE,
            "warm_read_ratio_min": TARGET_WARM,
        },
        "met": targets,
        "total_seconds": time.monotonic() - started,
    }
    print(render(result))
    missed = [name for name, ok in targets.items() if not ok]
    print(f"\nmissed: {', '.join(missed)}" if missed else "\nall targets met")
    print(f"(total benchmark time {result['total_seconds']:.0f} s)")
    out = args.out / "bench_mount.json"
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    log(f"wrote {out}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
