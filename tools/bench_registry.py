#!/usr/bin/env python3
"""Registry benchmark: ``chunkstore backup`` into a registry repository against ``skopeo copy``.

Targets, measured in one run on the corpus built by ``tools/build_corpus`` (ratio = skopeo seconds
/ chunkstore seconds, above 1 when chunkstore is faster):

* on the shaped link (issue 13, the default): the corpus push >= 1.3x faster than ``skopeo copy``
  of the same images from their OCI layout, and the push of the rebuilt image (the same files
  bootstrapped again: new layer digest) right after its original >= 20x faster;
* on loopback (``--no-shape``, the earlier registry issue): the corpus push >= 1.5x faster;
* both: the rebuilt image's push sends <= 5% of the bytes skopeo sends for it (counted on the
  wire when the link is shaped, else through the counting proxy).

Usage::

    .venv/bin/python tools/bench_registry.py [--corpus DIR] [--out DIR] [--repeat N]
        [--images REF ...] [--keep] [--warm] [--max-wait S]
        [--no-shape] [--rate-mbit 100] [--rtt-ms 50] [--base-tree DIR]

The link (``benchlib.shaped_link``, root, ``ip`` and ``tc``): every registry runs in a network
namespace on one end of a veth pair shaped with ``tc tbf rate 100mbit`` on both ends; a client
reaches it through ``tools/delay_proxy.py`` (25 ms each way: this kernel has no ``netem``) on the
host. Bytes on the wire are the veth's counters (TCP/IP included). ``--no-shape``: registries on
127.0.0.1, no delay, no rate.

What it does, per run (``--repeat`` runs it again and reports every run):

1. Phase ``corpus``: for each tool, a fresh registry (Debian's ``/usr/bin/docker-registry``,
   distribution 2.8, filesystem storage in a temporary directory, access log on, started by
   ``chunkstore.testing.registry_server`` like the tests' registry), so no tool benefits from
   another's blobs. chunkstore: ``chunkstore --repo registry:HOST/bench init`` (untimed, its own
   row), then ``chunkstore --repo registry:HOST/bench backup oci:CORPUS/oci:REF --tag REF`` per
   image, with a fresh ``--cache-dir``. skopeo: ``skopeo copy --dest-tls-verify=false
   oci:CORPUS/oci:REF docker://HOST/plain/REF:latest`` per image (one registry repository per
   image, as one would push them; skopeo may mount a layer it already pushed to another
   repository of the same registry, which is fair registry-side dedup). Images in the order of
   ``tools/bench_images.py`` (the rebuilt image right after its original).
2. Phase ``rebuilt``: again fresh registries, the original then the rebuilt image (the first
   pair of ``benchlib.corpus.REBUILT_PAIRS`` in the corpus) with each tool; the second push is
   the incremental one the targets speak of.

``--base-tree DIR`` adds a tool ``cs-base``: the same ``chunkstore`` command with
``PYTHONPATH=DIR`` (a ``git worktree`` of an earlier commit, with the native ``.so`` files copied
in), so a change is measured before and after on the same link in the same run.

Every client talks to the registry through a counting TCP proxy in this process (127.0.0.1, own
port, one thread per direction per connection; on the shaped link it forwards to the delay
proxy): ``sent`` is every byte the client sent (HTTP request lines, headers and bodies),
``received`` every byte it got back, ``conns`` the TCP connections. The registry's storage growth
(apparent size of the files under ``docker/registry/v2/blobs``) is reported as well: what the
registry kept. Requests per HTTP method come from the registry's access log.

Before every timed push the page cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``,
root only; otherwise, or with ``--warm``, the image's blobs are read once so every push starts
warm), and the benchmark waits (at most ``--max-wait`` s in all) for the machine to go quiet.
Each push is timed around the client process; its CPU time and peak RSS come from
``/usr/bin/time``. The registry's CPU time (``/proc/PID/stat``) and this process' (the proxy's)
are measured per push too; ``other CPU`` is what the rest of the machine used meanwhile (noise:
other engineers' tests on a shared machine), i.e. machine busy time minus client, registry and
proxy.

Throughput (MB/s) is the images' own bytes (compressed layers + config + manifest as stored in
the OCI layout, each image counted whole) per wall second, the same numerator for every tool, so
the MB/s ratio equals the time ratio. MB = 10**6 bytes. Prints a table per run and PASS/MISS for
each target; writes ``OUT/bench_registry.json``. Exit code 1 when a push failed, 2 without the
corpus, the tools or (unless ``--no-shape``) a shaped link; a missed target is not an error (this
is a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib.common import MB, ROOT, base_env, chunkstore_binary, log
from benchlib.corpus import (
    DEFAULT_CORPUS,
    REBUILT_PAIRS,
    CorpusImage,
    has_corpus,
    order_refs,
    read_corpus,
)
from benchlib.measure import PageCache, Quiet, machine_cpu, run_checked, run_measured
from benchlib.report import (
    Column,
    Table,
    git_revision,
    library_versions,
    machine_info,
    machine_line,
    report,
    target_lines,
    tool_version,
)
from benchlib.shaped_link import LinkEnd, ShapedLink, WireBytes

from chunkstore.testing.registry_server import REGISTRY_BINARY, RegistryServer, start_registry

SKOPEO = "skopeo"
BLOBS_DIR = Path("docker/registry/v2/blobs")

# Targets: on loopback (the registry issue) the corpus push >= 1.5x skopeo's speed; on the shaped
# link (issue 13) >= 1.3x, and the rebuilt image's push >= 20x skopeo's speed.
TARGET_SPEED_RATIO = {"loopback": 1.5, "shaped": 1.3}
TARGET_REBUILT_SPEED_RATIO = 20.0
TARGET_REBUILT_BYTES_FRACTION = 0.05

TOOLS = ("chunkstore", "skopeo")
#: The extra tool of ``--base-tree``: chunkstore from another checkout (PYTHONPATH).
BASE_TOOL = "cs-base"
ACCESS_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) ')


# ----------------------------------------------------------------------------- corpus


def load_images(layout: Path, wanted: list[str] | None) -> list[CorpusImage]:
    """The selected images of the layout, in benchmark order."""
    found = read_corpus(layout)
    if wanted:
        missing = [r for r in wanted if r not in found]
        if missing:
            raise SystemExit(
                f"bench_registry: no image {', '.join(missing)} in the corpus "
                f"(refs: {', '.join(sorted(found))})"
            )
        refs = wanted
    else:
        refs = order_refs(list(found))
    return [found[ref] for ref in refs]


# ----------------------------------------------------------------------------- registry


def blob_bytes(registry: RegistryServer) -> int:
    """Apparent size of every file under the blob store (what the registry kept)."""
    total = 0
    for dirpath, _dirs, names in os.walk(registry.storage / BLOBS_DIR):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def requests_since(registry: RegistryServer, offset: int) -> dict[str, int]:
    """Requests per method (and in all) in the access log after byte ``offset``."""
    with registry.log_path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    counts: Counter[str] = Counter()
    for match in ACCESS_LINE.finditer(text):
        counts[match.group(1)] += 1
        counts["all"] += 1
    return dict(counts)


class CountingProxy:
    """A TCP proxy 127.0.0.1:port -> 127.0.0.1:target counting bytes in each direction."""

    BUFFER = 256 << 10

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listen = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listen.getsockname()[1])
        self._lock = threading.Lock()
        self.sent = 0  # client -> registry
        self.received = 0  # registry -> client
        self.connections = 0
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def counters(self) -> tuple[int, int, int]:
        with self._lock:
            return self.sent, self.received, self.connections

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._listen.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self._open.update((client, upstream))
            done = threading.Semaphore(0)
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, up, done, (client, upstream)), daemon=True
                ).start()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        up: bool,
        done: threading.Semaphore,
        pair: tuple[socket.socket, socket.socket],
    ) -> None:
        buf = bytearray(self.BUFFER)
        view = memoryview(buf)
        try:
            while n := src.recv_into(buf):
                dst.sendall(view[:n])
                with self._lock:
                    if up:
                        self.sent += n
                    else:
                        self.received += n
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        done.release()
        if up:  # the client->registry pump closes both once both directions are done
            done.acquire()
            done.acquire()
            with self._lock:
                self._open.difference_update(pair)
            for s in pair:
                s.close()

    def close(self) -> None:
        self._listen.close()
        with self._lock:
            socks = list(self._open)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


# ----------------------------------------------------------------------------- pushing


@dataclass
class Push:
    """One timed push (or chunkstore's untimed ``init``) and what it cost."""

    tool: str
    phase: str  # "corpus" or "rebuilt"
    image: str  # corpus ref, or "(init)"
    image_bytes: int
    seconds: float
    cpu_s: float
    rss_kib: int
    sent: int  # bytes client -> registry (proxy)
    received: int  # bytes registry -> client (proxy)
    connections: int  # TCP connections opened
    stored: int  # growth of the registry's blob store
    requests: dict[str, int]  # per HTTP method, from the access log
    registry_cpu_s: float
    proxy_cpu_s: float
    other_cpu_s: float
    steal_s: float
    wire_sent: int = 0  # bytes on the shaped link's wire, client -> registry (0: loopback)
    wire_received: int = 0
    ok: bool = True
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class Target:
    """A fresh registry, the proxies in front of it, and the push command of one tool.

    On loopback the counting proxy forwards to the registry; on the shaped link the registry runs
    in the link's namespace, and the counting proxy forwards to its delay proxy.
    """

    def __init__(
        self,
        tool: str,
        work: Path,
        corpus: Path,
        cs_bin: str,
        link: ShapedLink | None,
        base_tree: Path | None,
    ) -> None:
        self.tool = tool
        self.dir = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=work))
        self.layout = corpus / "oci"
        self.link = link
        self.end: LinkEnd | None = None
        secret = "chunkstore-bench-secret"
        if link is None:
            self.registry = start_registry(self.dir / "registry", access_log=True, secret=secret)
            upstream = self.registry.port
        else:
            self.end = link.serve(self.dir / "registry", secret=secret)
            self.registry = self.end.registry
            upstream = int(self.end.host.rsplit(":", 1)[1])
        self.proxy = CountingProxy(upstream)
        self.host = f"127.0.0.1:{self.proxy.port}"
        self.env = base_env(self.dir)
        if tool == BASE_TOOL and base_tree is not None:
            self.env["PYTHONPATH"] = str(base_tree)
        self.cs = [cs_bin, "--repo", f"registry:{self.host}/bench", "--cache-dir"]
        self.cs += [str(self.dir / "cache"), "--json"]

    @property
    def is_chunkstore(self) -> bool:
        return self.tool != SKOPEO

    def wire(self) -> WireBytes:
        """The shaped link's counters (zeros on loopback)."""
        return self.link.wire() if self.link is not None else WireBytes(0, 0, 0)

    def init_cmd(self) -> list[str] | None:
        return [*self.cs, "init"] if self.is_chunkstore else None

    def push_cmd(self, image: CorpusImage) -> list[str]:
        if self.is_chunkstore:
            return [*self.cs, "backup", f"oci:{self.layout}:{image.ref}", "--tag", image.ref]
        return [
            SKOPEO,
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{self.layout}:{image.ref}",
            f"docker://{self.host}/plain/{image.ref}:latest",
        ]

    def close(self, keep: bool) -> None:
        self.proxy.close()
        if self.link is not None and self.end is not None:
            self.link.release(self.end)
        else:
            self.registry.stop()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def measure(
    target: Target,
    phase: str,
    image: CorpusImage | None,
    cmd: list[str],
    cache: PageCache,
    quiet: Quiet,
) -> Push:
    """Run one push command against ``target`` and collect every figure around it."""
    cache.prepare(list(image.blob_paths) if image else [])
    quiet.wait()
    reg = target.registry
    sent0, recv0, conn0 = target.proxy.counters()
    wire0 = target.wire()
    stored0, log0, reg_cpu0 = blob_bytes(reg), reg.log_path.stat().st_size, reg.cpu_seconds()
    own0 = time.process_time()
    m = run_measured(cmd, target.env)
    own1 = time.process_time()
    time.sleep(0.2)  # let the access log and the proxy counters settle
    sent1, recv1, conn1 = target.proxy.counters()
    wire = target.wire() - wire0
    reg_cpu = reg.cpu_seconds() - reg_cpu0
    proxy_cpu = own1 - own0
    push = Push(
        tool=target.tool,
        phase=phase,
        image=image.ref if image else "(init)",
        image_bytes=image.stored_bytes if image else 0,
        seconds=m.seconds,
        cpu_s=m.user_s + m.sys_s,
        rss_kib=m.rss_kib,
        sent=sent1 - sent0,
        received=recv1 - recv0,
        connections=conn1 - conn0,
        stored=blob_bytes(reg) - stored0,
        requests=requests_since(reg, log0),
        registry_cpu_s=reg_cpu,
        proxy_cpu_s=proxy_cpu,
        other_cpu_s=max(0.0, m.other_cpu_s - reg_cpu - proxy_cpu),
        steal_s=m.steal_s,
        wire_sent=wire.sent,
        wire_received=wire.received,
    )
    if m.returncode != 0:
        push.ok = False
        push.error = f"exit {m.returncode}: {m.stderr.strip()[-800:]}"
    elif target.is_chunkstore and image is not None:
        with contextlib.suppress(ValueError):
            info = json.loads(m.stdout)
            if isinstance(info, dict):
                push.details = {
                    k: v for k, v in info.items() if isinstance(v, (int, float, str)) and k != "id"
                }
    log(
        f"{target.tool:<10} {phase:<7} {push.image:<26} {push.seconds:6.2f} s "
        f"sent {push.sent / MB:8.2f} MB wire {push.wire_sent / MB:8.2f} MB "
        f"stored {push.stored / MB:8.2f} MB "
        f"other CPU {push.other_cpu_s:4.1f} s" + ("" if push.ok else f"  FAILED {push.error}")
    )
    return push


def run_phase(
    tool: str,
    phase: str,
    images: list[CorpusImage],
    ctx: dict[str, Any],
) -> list[Push]:
    """Fresh registry for ``tool``; (init and) push ``images`` in order."""
    target = Target(tool, ctx["work"], ctx["corpus"], ctx["cs_bin"], ctx["link"], ctx["base_tree"])
    pushes: list[Push] = []
    try:
        init = target.init_cmd()
        if init is not None:
            pushes.append(measure(target, phase, None, init, ctx["cache"], ctx["quiet"]))
        for image in images:
            pushes.append(
                measure(target, phase, image, target.push_cmd(image), ctx["cache"], ctx["quiet"])
            )
    finally:
        target.close(ctx["keep"])
    return pushes


# ----------------------------------------------------------------------------- report


def _total(pushes: list[Push], tool: str, phase: str) -> dict[str, Any]:
    """Sums over the timed pushes (no init) of one tool in one phase."""
    rows = [p for p in pushes if p.tool == tool and p.phase == phase and p.image != "(init)"]
    keys = ["seconds", "cpu_s", "sent", "received", "stored", "image_bytes"]
    keys += ["registry_cpu_s", "proxy_cpu_s", "other_cpu_s", "connections"]
    keys += ["wire_sent", "wire_received"]
    out: dict[str, Any] = {k: sum(getattr(p, k) for p in rows) for k in keys}
    requests: Counter[str] = Counter()
    for p in rows:
        requests.update(p.requests)
    out["requests"] = dict(requests)
    out["rss_kib"] = max((p.rss_kib for p in rows), default=0)
    out["ok"] = bool(rows) and all(p.ok for p in rows)
    out["mb_s"] = out["image_bytes"] / MB / out["seconds"] if out["seconds"] else 0.0
    return out


def _ratio(num: dict[str, Any] | None, den: dict[str, Any] | None, key: str) -> float | None:
    """``num[key] / den[key]`` when both pushes succeeded and the divisor is not zero."""
    if not num or not den or not num["ok"] or not den["ok"] or not den[key]:
        return None
    return float(num[key]) / float(den[key])


def summarize(
    pushes: list[Push], rebuilt: str, base: str, tools: tuple[str, ...] = TOOLS
) -> dict[str, Any]:
    """Per tool and phase totals, the push of ``rebuilt`` (after ``base``), the ratios.

    Speed ratios are skopeo's seconds / the tool's (above 1: the tool is faster); byte fractions
    the tool's / skopeo's (on the wire when the link is shaped, else through the counting proxy).
    """
    totals = {f"{t}/{ph}": _total(pushes, t, ph) for t in tools for ph in ("corpus", "rebuilt")}
    second = {
        t: next(
            (asdict(p) for p in pushes if (p.tool, p.phase, p.image) == (t, "rebuilt", rebuilt)),
            None,
        )
        for t in tools
    }
    inits = [asdict(p) for p in pushes if p.image == "(init)"]
    sent = "wire_sent" if any(p.wire_sent for p in pushes) else "sent"
    sk, s2 = totals[f"{SKOPEO}/corpus"], second[SKOPEO]
    per_tool = {
        t: {
            "speed_ratio": _ratio(sk, totals[f"{t}/corpus"], "seconds"),
            "rebuilt_speed_ratio": _ratio(s2, second[t], "seconds"),
            "rebuilt_sent_fraction": _ratio(second[t], s2, sent),
            "rebuilt_stored_fraction": _ratio(second[t], s2, "stored"),
        }
        for t in tools
        if t != SKOPEO
    }
    return {
        "totals": totals,
        "rebuilt_image": rebuilt,
        "rebuilt_base": base,
        "rebuilt_push": second,
        "inits": inits,
        "bytes_counted": sent,
        "per_tool": per_tool,
        **per_tool["chunkstore"],
    }


def evaluate(summary: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    out = []
    cs, sk = summary["totals"]["chunkstore/corpus"], summary["totals"]["skopeo/corpus"]
    speed, target = summary["speed_ratio"], TARGET_SPEED_RATIO[mode]
    out.append(
        {
            "name": f"corpus push >= {target}x faster than skopeo copy (skopeo s / chunkstore s)",
            "value": "-"
            if speed is None
            else f"{speed:.2f}x ({cs['seconds']:.1f} s vs skopeo {sk['seconds']:.1f} s)",
            "ok": speed is not None and speed >= target,
        }
    )
    c2, s2 = summary["rebuilt_push"]["chunkstore"], summary["rebuilt_push"]["skopeo"]
    if mode == "shaped":
        rspeed = summary["rebuilt_speed_ratio"]
        out.append(
            {
                "name": f"{summary['rebuilt_image']} after {summary['rebuilt_base']}: "
                f">= {TARGET_REBUILT_SPEED_RATIO:g}x faster than skopeo copy",
                "value": "-"
                if rspeed is None
                else f"{rspeed:.2f}x ({c2['seconds']:.1f} s vs skopeo {s2['seconds']:.1f} s)",
                "ok": rspeed is not None and rspeed >= TARGET_REBUILT_SPEED_RATIO,
            }
        )
    frac, key = summary["rebuilt_sent_fraction"], summary["bytes_counted"]
    where = "on the wire" if key == "wire_sent" else "sent"
    out.append(
        {
            "name": f"{summary['rebuilt_image']} after {summary['rebuilt_base']}: "
            f"bytes {where} <= 5% of skopeo's",
            "value": "-"
            if frac is None
            else f"{frac:.2%} ({c2[key] / MB:.2f} MB vs skopeo {s2[key] / MB:.2f} MB)",
            "ok": frac is not None and frac <= TARGET_REBUILT_BYTES_FRACTION,
        }
    )
    for t in out:
        t["verdict"] = "PASS" if t["ok"] else "MISS"
    return out


def _req(requests: dict[str, int]) -> str:
    letters = {"HEAD": "H", "GET": "G", "POST": "O", "PATCH": "A", "PUT": "U", "DELETE": "D"}
    return " ".join(f"{c}{requests[m]}" for m, c in letters.items() if requests.get(m))


def render_run(run: dict[str, Any], number: int) -> str:
    s = run["summary"]
    lines = [f"run {number}: started {run['date']}", ""]
    pushes = Table(
        [
            Column("tool", 11),
            Column("phase", 8),
            Column("image", 26),
            Column("seconds", 8, ">"),
            Column("MB/s", 7, ">"),
            Column("sent MB", 9, ">"),
            Column("recv MB", 8, ">"),
            Column("wire MB", 8, ">"),
            Column("stored MB", 9, ">"),
            Column("conns", 5, ">"),
            Column("CPU s", 6, ">"),
            Column("reg CPU", 7, ">"),
            Column("other CPU", 9, ">"),
            Column("requests", sep="  "),
        ]
    )
    for p in run["pushes"]:
        pushes.row(
            p["tool"],
            p["phase"],
            p["image"],
            f"{p['seconds']:.2f}",
            f"{p['image_bytes'] / MB / p['seconds']:.1f}" if p["image_bytes"] else "-",
            f"{p['sent'] / MB:.2f}",
            f"{p['received'] / MB:.2f}",
            f"{(p['wire_sent'] + p['wire_received']) / MB:.2f}",
            f"{p['stored'] / MB:.2f}",
            str(p["connections"]),
            f"{p['cpu_s']:.1f}",
            f"{p['registry_cpu_s']:.1f}",
            f"{p['other_cpu_s']:.1f}",
            _req(p["requests"]) + ("" if p["ok"] else "  FAILED"),
        )
    lines += pushes.text()
    lines.append("")
    totals = Table(
        [
            Column("totals (no init)", 20),
            Column("seconds", 8, ">"),
            Column("MB/s", 7, ">"),
            Column("sent MB", 9, ">"),
            Column("wire MB", 8, ">"),
            Column("stored MB", 9, ">"),
            Column("CPU s", 6, ">"),
            Column("reg CPU", 7, ">"),
            Column("proxy CPU", 9, ">"),
            Column("other CPU", 9, ">"),
            Column("requests", sep="  "),
        ]
    )
    for key, t in s["totals"].items():
        totals.row(
            key,
            f"{t['seconds']:.2f}",
            f"{t['mb_s']:.1f}",
            f"{t['sent'] / MB:.2f}",
            f"{(t['wire_sent'] + t['wire_received']) / MB:.2f}",
            f"{t['stored'] / MB:.2f}",
            f"{t['cpu_s']:.1f}",
            f"{t['registry_cpu_s']:.1f}",
            f"{t['proxy_cpu_s']:.1f}",
            f"{t['other_cpu_s']:.1f}",
            _req(t["requests"]),
        )
    lines += totals.text()
    lines.append("")
    lines.append("targets:")
    lines += target_lines(run["targets"], 72)
    if s["rebuilt_stored_fraction"] is not None:
        lines.append(
            f"        (registry storage growth for {s['rebuilt_image']}: chunkstore "
            f"{s['rebuilt_stored_fraction']:.2%} of skopeo's)"
        )
    if len(s["per_tool"]) > 1:
        lines += [
            "",
            "against skopeo in this run (speed: skopeo s / tool s; bytes: tool / skopeo):",
        ]
        for tool, r in s["per_tool"].items():
            cells = [f"{k.replace('_', ' ')} {v:.4g}" for k, v in r.items() if v is not None]
            lines.append(f"  {tool:<11} " + ", ".join(cells))
        base, now = s["totals"][f"{BASE_TOOL}/corpus"], s["totals"]["chunkstore/corpus"]
        if base["ok"] and now["ok"] and now["seconds"]:
            lines.append(
                f"  chunkstore vs {BASE_TOOL}: corpus push {base['seconds'] / now['seconds']:.2f}x "
                f"faster ({now['seconds']:.2f} s vs {base['seconds']:.2f} s)"
            )
    return "\n".join(lines)


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"bench_registry: {len(result['images'])} images from {result['corpus']} "
        f"({sum(i['bytes'] for i in result['images']) / MB:.1f} MB as stored in the layout); "
        f"{machine_line(m)}",
        f"chunkstore {result['git']}; {result['versions']['skopeo']}; "
        f"{result['versions']['registry']}",
        f"page cache: {result['page_cache']['mode']} ({result['page_cache']['reason']})",
        f"link: {result['link']}",
        "MB/s = image bytes (manifest + config + compressed layers) per second; sent/recv = "
        "bytes client->registry / back through the\ncounting proxy (HTTP included); wire = both "
        "ways on the shaped link (TCP/IP included); stored = "
        "growth of the registry's blob store; conns = TCP connections; CPU s = the client's;\n"
        "reg CPU = the registry's; other CPU = the rest of the machine during the push (noise); "
        "requests: H=HEAD G=GET O=POST A=PATCH U=PUT D=DELETE",
    ]
    if result["waited_s"] >= 1:
        lines.append(f"waited {result['waited_s']:.0f} s in all for other processes to go quiet")
    for i, run in enumerate(result["runs"], 1):
        lines += ["", render_run(run, i)]
    if len(result["runs"]) > 1:
        lines += ["", *render_medians(result["runs"])]
    return "\n".join(lines)


def render_medians(runs: list[dict[str, Any]]) -> list[str]:
    """Median seconds per tool and push over the runs, and the speed ratios of the medians."""
    rows: dict[tuple[str, str, str], list[float]] = {}
    for run in runs:
        for p in run["pushes"]:
            if p["ok"] and p["image"] != "(init)":
                rows.setdefault((p["tool"], p["phase"], p["image"]), []).append(p["seconds"])
    med = {key: statistics.median(v) for key, v in rows.items()}
    lines = [f"medians over {len(runs)} runs (seconds; speed = skopeo s / tool s):"]
    for (tool, phase, image), seconds in med.items():
        peer = med.get((SKOPEO, phase, image))
        ratio = f"  speed {peer / seconds:.2f}x" if peer and tool != SKOPEO else ""
        lines.append(f"  {tool:<11} {phase:<8} {image:<26} {seconds:7.2f}{ratio}")
    return lines


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus directory")
    ap.add_argument("--images", nargs="+", metavar="REF", help="corpus refs for phase corpus")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out", help="working/output dir")
    ap.add_argument("--repeat", type=int, default=1, help="measure N times (1)")
    ap.add_argument("--keep", action="store_true", help="keep registries and caches")
    ap.add_argument("--warm", action="store_true", help="warm page cache instead of dropping it")
    ap.add_argument(
        "--max-wait",
        type=float,
        default=120,
        help="seconds to wait in all for other processes to go quiet before pushes (120)",
    )
    ap.add_argument(
        "--no-shape", action="store_true", help="registries on loopback, no shaped link"
    )
    ap.add_argument("--rate-mbit", type=float, default=100.0, help="link rate (100 Mbit/s)")
    ap.add_argument("--rtt-ms", type=float, default=50.0, help="link round trip (50 ms)")
    ap.add_argument(
        "--base-tree",
        type=Path,
        help=f"also push with chunkstore from this checkout (PYTHONPATH), as tool {BASE_TOOL}",
    )
    args = ap.parse_args(argv)
    corpus: Path = args.corpus.resolve()
    layout = corpus / "oci"
    if not has_corpus(corpus):
        print(
            f"bench_registry: no corpus at {corpus} (no oci/index.json); build it with "
            f"tools/build_corpus {corpus} (needs root and network), or pass --corpus DIR",
            file=sys.stderr,
        )
        return 2
    for need, hint in ((REGISTRY_BINARY, "docker-registry"), (shutil.which(SKOPEO), "skopeo")):
        if need is None or not Path(need).exists():
            print(f"bench_registry: {hint} is missing (apt-get install {hint})", file=sys.stderr)
            return 2
    images = load_images(layout, args.images)
    by_ref = {i.ref: i for i in load_images(layout, None)}
    pairs = [(r, b) for r, b in REBUILT_PAIRS if r in by_ref and b in by_ref]
    if not pairs:
        print("bench_registry: the corpus has no rebuilt image and its original", file=sys.stderr)
        return 2
    rebuilt, rebuilt_base = pairs[0]
    started = time.perf_counter()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-registry-", dir=out))
    cache = PageCache(force_warm=args.warm)
    quiet = Quiet(args.max_wait)
    link: ShapedLink | None = None
    mode, link_text = "loopback", "loopback (--no-shape)"
    if not args.no_shape:
        link = ShapedLink(rate_mbit=args.rate_mbit, rtt_ms=args.rtt_ms)
        try:
            link.start()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            link.close()
            shutil.rmtree(work, ignore_errors=True)
            print(f"bench_registry: cannot shape a link ({exc}); try --no-shape", file=sys.stderr)
            return 2
        mode, link_text = "shaped", link.describe()
    tools = (*TOOLS, BASE_TOOL) if args.base_tree else TOOLS
    ctx = {
        "link": link,
        "base_tree": args.base_tree.resolve() if args.base_tree else None,
        "work": work,
        "corpus": corpus,
        "cs_bin": chunkstore_binary(),
        "cache": cache,
        "quiet": quiet,
        "keep": args.keep,
    }
    log(f"page cache: {cache.mode}; link: {link_text}; work directory {work}")
    runs = []
    failures: list[str] = []
    try:
        for _ in range(max(1, args.repeat)):
            date = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            busy0, _steal = machine_cpu()
            pushes: list[Push] = []
            for phase, phase_images in (
                ("corpus", images),
                ("rebuilt", [by_ref[rebuilt_base], by_ref[rebuilt]]),
            ):
                for tool in tools:
                    pushes += run_phase(tool, phase, phase_images, ctx)
            failures += [f"{p.tool} {p.phase} {p.image}: {p.error}" for p in pushes if not p.ok]
            summary = summarize(pushes, rebuilt, rebuilt_base, tools)
            runs.append(
                {
                    "date": date,
                    "pushes": [asdict(p) for p in pushes],
                    "summary": summary,
                    "targets": evaluate(summary, mode),
                    "machine_busy_cpu_s": machine_cpu()[0] - busy0,
                }
            )
    finally:
        if link is not None:
            link.close()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    registry_version = run_checked([str(REGISTRY_BINARY), "--version"], dict(os.environ))
    result: dict[str, Any] = {
        "git": git_revision(),
        "machine": machine_info(),
        "libraries": library_versions(),
        "versions": {
            "skopeo": tool_version([SKOPEO, "--version"]),
            "registry": registry_version.stdout.strip(),
        },
        "corpus": str(corpus),
        "images": [{"ref": i.ref, "blobs": i.blobs, "bytes": i.stored_bytes} for i in images],
        "page_cache": {"mode": cache.mode, "reason": cache.reason},
        "link": link_text,
        "link_mode": mode,
        "runs": runs,
        "failures": failures,
        "waited_s": quiet.waited_s,
    }
    result["total_seconds"] = time.perf_counter() - started
    return report(result, render(result), failures, out / "bench_registry.json")


if __name__ == "__main__":
    sys.exit(main())
