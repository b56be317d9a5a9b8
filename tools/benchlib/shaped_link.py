"""A shaped link to registries: a network namespace behind a veth pair with ``tc tbf``, plus delay.

The registries a benchmark starts run inside a network namespace (``ip netns``) on one end of a
veth pair whose both ends carry ``tc qdisc tbf rate RATE`` (so each direction is limited to the
rate), and clients reach each of them through ``tools/delay_proxy.py`` on the host, which holds
every byte ``rtt/2`` in each direction (this kernel has no ``netem``; the proxy also charges a new
connection one round trip, its handshake). Path of a request::

    client -> 127.0.0.1:PROXY (delay) -> host veth (tbf) ==wire== ns veth (tbf) -> registry

Bytes on the wire are the veth's own counters (``/sys/class/net/VETH/statistics``: every byte
that crossed the link, TCP/IP headers included; host ``tx`` = client to registry). Nothing else
uses the pair, so a difference of two readings is what one push cost.

:class:`ShapedLink` needs root, ``ip`` and ``tc``; :meth:`ShapedLink.close` removes whatever was
made (registries, proxies, the pair, the namespace) and is safe to call after a failed start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchlib.common import ROOT
from chunkstore.testing.registry_server import (
    RegistryServer,
    start_registry,
    stop_process,
    wait_ready,
)

__all__ = ["LinkEnd", "ShapedLink", "WireBytes"]


@dataclass(frozen=True)
class WireBytes:
    """Bytes that crossed the link, each way (TCP/IP headers included), and packets."""

    sent: int  # client -> registry
    received: int  # registry -> client
    packets: int

    def __sub__(self, other: WireBytes) -> WireBytes:
        return WireBytes(
            self.sent - other.sent, self.received - other.received, self.packets - other.packets
        )


@dataclass
class LinkEnd:
    """A registry in the namespace and the delay proxy in front of it (``host``: the proxy)."""

    registry: RegistryServer
    proxy: subprocess.Popen[str]
    host: str

    def close(self) -> None:
        """Stop the proxy, then the registry."""
        stop_process(self.proxy)
        if self.proxy.stdout is not None:
            self.proxy.stdout.close()
        self.registry.stop()


@dataclass
class ShapedLink:
    """The namespace, the veth pair and its shaping; registries are added with :meth:`serve`."""

    rate_mbit: float = 100.0
    rtt_ms: float = 50.0
    tag: int = field(default_factory=lambda: os.getpid() % 100000)
    _made: list[str] = field(default_factory=list)
    _ends: list[LinkEnd] = field(default_factory=list)
    _next_port: int = 5000

    @property
    def netns(self) -> str:
        return f"csreg{self.tag}"

    @property
    def veth_host(self) -> str:
        return f"csr{self.tag}h"

    @property
    def veth_ns(self) -> str:
        return f"csr{self.tag}n"

    @property
    def subnet(self) -> str:
        # 10.150-199.x: apart from tools/bench_mount.py's 10.200-249.x
        return f"10.{150 + self.tag % 50}.{self.tag % 250}"

    @property
    def nsx(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.netns]

    def describe(self) -> str:
        """One line for reports."""
        return (
            f"veth pair + tc tbf {self.rate_mbit:g} Mbit/s each way, "
            f"{self.rtt_ms:g} ms RTT from tools/delay_proxy.py"
        )

    def start(self) -> None:
        """Create the namespace and the shaped pair (RuntimeError when ip or tc fail)."""
        ns, h, n, net = self.netns, self.veth_host, self.veth_ns, self.subnet
        _run(["ip", "netns", "add", ns])
        self._made.append("netns")
        _run(["ip", "link", "add", h, "type", "veth", "peer", "name", n])
        self._made.append("veth")
        _run(["ip", "link", "set", n, "netns", ns])
        _run(["ip", "addr", "add", f"{net}.1/24", "dev", h])
        _run(["ip", "link", "set", h, "up"])
        _run([*self.nsx, "ip", "addr", "add", f"{net}.2/24", "dev", n])
        _run([*self.nsx, "ip", "link", "set", n, "up"])
        _run([*self.nsx, "ip", "link", "set", "lo", "up"])
        # tbf on the egress of both ends limits each direction to the rate; a 64 KiB bucket lets
        # GSO segments through without drops, the queue holds 100 ms at the rate.
        shape = ["tbf", "rate", f"{self.rate_mbit:g}mbit", "burst", "64kb", "latency", "100ms"]
        _run(["tc", "qdisc", "add", "dev", h, "root", *shape])
        _run([*self.nsx, "tc", "qdisc", "add", "dev", n, "root", *shape])

    def serve(self, root: Path, *, secret: str, access_log: bool = True) -> LinkEnd:
        """A fresh registry (storage under ``root``) in the namespace, behind its delay proxy."""
        listen = f"{self.subnet}.2:{self._next_port}"
        self._next_port += 1
        registry = start_registry(
            root, listen=listen, prefix=self.nsx, secret=secret, access_log=access_log
        )
        try:
            proxy = self._proxy(listen)
        except OSError:
            registry.stop()
            raise
        assert proxy.stdout is not None
        line = proxy.stdout.readline()
        end = LinkEnd(registry, proxy, line.split()[1] if line.startswith("listening ") else "")
        self._ends.append(end)
        if not end.host:
            raise RuntimeError(f"tools/delay_proxy.py did not start: {line!r}")
        if not wait_ready(proxy, f"http://{end.host}", 20.0):
            raise RuntimeError(f"no registry answer through the delay proxy at {end.host}")
        return end

    def _proxy(self, target: str) -> subprocess.Popen[str]:
        cmd = [sys.executable, str(ROOT / "tools" / "delay_proxy.py"), "--listen", "127.0.0.1:0"]
        cmd += ["--target", target, "--delay-ms", f"{self.rtt_ms / 2:g}"]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    def wire(self) -> WireBytes:
        """The host end's counters now."""
        stats = Path("/sys/class/net") / self.veth_host / "statistics"

        def read(name: str) -> int:
            return int((stats / name).read_text())

        return WireBytes(
            read("tx_bytes"), read("rx_bytes"), read("tx_packets") + read("rx_packets")
        )

    def release(self, end: LinkEnd) -> None:
        """Stop one registry and its proxy."""
        if end in self._ends:
            self._ends.remove(end)
        end.close()

    def close(self) -> None:
        """Stop every registry and proxy, remove the pair and the namespace."""
        for end in list(self._ends):
            self.release(end)
        if "veth" in self._made:
            subprocess.run(["ip", "link", "del", self.veth_host], capture_output=True, check=False)
        if "netns" in self._made:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        self._made.clear()


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-300:]}")
