#!/usr/bin/env python3
"""A small delaying TCP proxy: adds a fixed one-way latency, optionally a shared rate limit.

Used by ``tools/bench_mount.py`` to give a registry a wide-area round trip on a machine whose
kernel has no ``netem``. Every byte that arrives on one side is written to the other side
``--delay-ms`` milliseconds later, in both directions, so a request/response exchange through the
proxy costs ``2 * delay`` more than without it (25 ms each way = 50 ms RTT), and a new connection
costs one more round trip (the TCP handshake the real link would need). Delays are applied by
time stamp, not by sleeping between reads, so throughput is not reduced: data keeps flowing while
earlier data waits out its delay (bounded by ``--buffer`` bytes in flight per direction and
connection, which must exceed the bandwidth-delay product: 100 Mbit/s x 50 ms = 625 KB).

``--rate`` (bytes/s, e.g. ``12.5M``) adds a token bucket per direction shared by all connections,
the fallback when ``tc tbf`` cannot shape a real link. Without it, shape the link with ``tc``.

Usage::

    python tools/delay_proxy.py --listen 127.0.0.1:0 --target 10.0.0.2:5000 --delay-ms 25 \
        [--rate 12.5M] [--buffer 4M]

It prints ``listening HOST:PORT`` on stdout once it accepts connections, and runs until killed.
Limitation: the client's TCP connection ends at the proxy, so slow start and loss recovery over
the long path are not modelled (this favours bulk transfers slightly; both sides of a comparison
go through the same proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

READ_SIZE = 64 << 10


def parse_rate(text: str) -> float:
    """``12.5M`` -> 12_500_000.0 (decimal units: K, M, G); ``0`` means unlimited."""
    units = {"K": 1e3, "M": 1e6, "G": 1e9}
    t = text.strip().upper().removesuffix("B")
    mult = units.get(t[-1:], 1.0)
    value = float(t[:-1] if t[-1:] in units else t)
    return value * mult


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host.strip("[]"), int(port)


class TokenBucket:
    """A byte-rate limit shared by every connection in one direction (``rate`` 0 = unlimited)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        async with self.lock:  # FIFO between connections
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            if self.tokens < 0:
                await asyncio.sleep(-self.tokens / self.rate)


class Pipe:
    """One direction of one connection: read, stamp, hold for ``delay``, rate-limit, write."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        delay: float,
        bucket: TokenBucket,
        buffer: int,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.delay = delay
        self.bucket = bucket
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.in_flight = 0
        self.room = asyncio.Event()
        self.room.set()
        self.buffer = buffer

    async def pump_in(self) -> None:
        try:
            while True:
                await self.room.wait()
                data = await self.reader.read(READ_SIZE)
                self.queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    return
                self.in_flight += len(data)
                if self.in_flight >= self.buffer:
                    self.room.clear()
        except (ConnectionError, OSError):
            self.queue.put_nowait((time.monotonic() + self.delay, b""))

    async def pump_out(self) -> None:
        try:
            while True:
                due, data = await self.queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    return
                await self.bucket.take(len(data))
                self.writer.write(data)
                await self.writer.drain()
                self.in_flight -= len(data)
                if self.in_flight < self.buffer:
                    self.room.set()
        except (ConnectionError, OSError):
            return


class Proxy:
    def __init__(self, target: tuple[str, int], delay: float, rate: float, buffer: int) -> None:
        self.target = target
        self.delay = delay
        self.buffer = buffer
        burst = max(rate * 0.005, 2 * READ_SIZE)  # 5 ms worth of bytes
        self.up = TokenBucket(rate, burst)
        self.down = TokenBucket(rate, burst)
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.relay(c_reader, c_writer)
        except asyncio.CancelledError:  # the proxy is shutting down
            c_writer.close()
        finally:
            self.tasks.discard(task)

    async def relay(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            return
        # The client's handshake with the proxy took no time; on the real link it costs one
        # round trip before the first request can leave, so hold the connection that long.
        await asyncio.sleep(2 * self.delay)
        up = Pipe(c_reader, s_writer, self.delay, self.up, self.buffer)
        down = Pipe(s_reader, c_writer, self.delay, self.down, self.buffer)
        try:
            await asyncio.gather(up.pump_in(), up.pump_out(), down.pump_in(), down.pump_out())
        finally:
            for w in (s_writer, c_writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()


async def serve(args: argparse.Namespace) -> None:
    proxy = Proxy(args.target, args.delay_ms / 1000.0, args.rate, args.buffer)
    host, port = args.listen
    server = await asyncio.start_server(proxy.handle, host, port, backlog=256)
    sock = server.sockets[0].getsockname()
    print(f"listening {sock[0]}:{sock[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
        server.close()
        for task in list(proxy.tasks):
            task.cancel()
        await asyncio.gather(*proxy.tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=parse_hostport, default=("127.0.0.1", 0))
    parser.add_argument("--target", type=parse_hostport, required=True)
    parser.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay")
    parser.add_argument("--rate", type=parse_rate, default=0.0, help="bytes/s per direction")
    parser.add_argument("--buffer", type=parse_rate, default=4e6, help="bytes held per pipe")
    args = parser.parse_args(argv)
    args.buffer = int(args.buffer)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
