#!/usr/bin/env python3
"""Which ASGI server ``chunkstore serve`` runs on: uvicorn against hypercorn, one large response.

Each server runs in its own process (the same bare ASGI app: a 100 MB body in 1 MiB pieces, each
piece produced in a worker thread as ``serve`` produces reconstructed layers); a client fetches
it ``--rounds`` times and reports time to first byte and throughput (the fastest and the median
round). Usage: ``.venv/bin/python tools/bench_asgi_servers.py [--size-mb 100] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

_PIECE = 1 << 20


def _app_factory(size: int) -> Any:
    piece = b"x" * _PIECE

    def produce(i: int) -> bytes:
        return piece if (i + 1) * _PIECE <= size else piece[: size - i * _PIECE]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", str(size).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range((size + _PIECE - 1) // _PIECE):
            body = await asyncio.to_thread(produce, i)
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def _serve(server: str, port: int, size: int) -> None:
    app = _app_factory(size)
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    else:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.loglevel = "WARNING"
        asyncio.run(serve(app, config))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _measure(port: int) -> tuple[float, float]:
    with httpx.Client(timeout=60) as client:
        t0 = time.perf_counter()
        with client.stream("GET", f"http://127.0.0.1:{port}/") as r:
            ttfb = 0.0
            total = 0
            for chunk in r.iter_raw(1 << 20):
                if not ttfb:
                    ttfb = time.perf_counter() - t0
                total += len(chunk)
        return ttfb, total / (time.perf_counter() - t0) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = args.size_mb * 1_000_000
    if args.serve:
        _serve(args.serve, args.port, size)
        return
    for server in ("uvicorn", "hypercorn"):
        port = _free_port()
        cmd = [sys.executable, __file__, "--serve", server, "--port", str(port)]
        proc = subprocess.Popen([*cmd, "--size-mb", str(args.size_mb)])
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            _measure(port)  # warm-up
            runs = [_measure(port) for _ in range(args.rounds)]
        finally:
            proc.terminate()
            proc.wait()
        ttfbs = sorted(r[0] * 1000 for r in runs)
        rates = sorted(r[1] for r in runs)
        print(
            f"{server:10} ttfb ms best {ttfbs[0]:.2f} median {statistics.median(ttfbs):.2f}; "
            f"MB/s best {rates[-1]:.0f} median {statistics.median(rates):.0f}"
        )


if __name__ == "__main__":
    main()
