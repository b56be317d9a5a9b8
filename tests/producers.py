"""Real layer compressors for tests: Go's compress/gzip, GNU gzip, pigz, Python's zlib.

Each produces the bytes the real tool writes (the tools are installed by ``tools/setup``). A
missing tool skips the test on a developer machine and fails it under ``CI=true``, so CI never
passes by skipping what it is meant to check.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
import threading
import zlib
from pathlib import Path
from typing import NoReturn

import pytest

from chunkstore.images.oci_layout import OCILayoutWriter
from chunkstore.registry.mediatypes import OCI_CONFIG, OCI_MANIFEST
from index.ids import Digest, sha256

__all__ = [
    "GoServer",
    "build_go",
    "gnu_gzip",
    "go_gzip",
    "missing",
    "oci_image",
    "pigz",
    "realistic_tar",
    "require",
    "zlib_gzip",
    "zlib_raw",
]

_GO_GZIP = """package main

import (
	"compress/gzip"
	"io"
	"os"
	"strconv"
)

func main() {
	level, _ := strconv.Atoi(os.Args[1])
	w, err := gzip.NewWriterLevel(os.Stdout, level)
	if err != nil {
		panic(err)
	}
	if _, err := io.Copy(w, os.Stdin); err != nil {
		panic(err)
	}
	if err := w.Close(); err != nil {
		panic(err)
	}
}
"""


def missing(message: str) -> NoReturn:
    """Skip the test on a developer machine; fail it under ``CI=true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require(tool: str) -> str:
    """The path of ``tool``; skip without it, or fail under CI (where setup installs it)."""
    path = shutil.which(tool)
    if path is None:
        missing(f"{tool} is not installed (tools/setup installs it)")
    return path


def oci_image(
    root: Path, ref: str, tars: list[bytes], blobs: list[bytes], media_type: str
) -> Digest:
    """An OCI image layout at ``root`` whose layers are ``blobs`` (``tars`` compressed as
    ``media_type`` says, or the tars themselves); returns the manifest digest."""
    writer = OCILayoutWriter(root)
    descs = [writer.add_bytes(blob, media_type) for blob in blobs]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [str(sha256(t)) for t in tars]},
            "config": {},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": writer.add_bytes(config, OCI_CONFIG).to_json(),
            "layers": [d.to_json() for d in descs],
        }
    ).encode()
    writer.add_manifest(manifest, OCI_MANIFEST, ref)
    return sha256(manifest)


def build_go(source: str, work: Path, name: str, *, gopath: str | None = None) -> Path:
    """Compile the Go program ``source`` (a ``main.go``) into ``work/name``, offline.

    GOPATH mode: the standard library, plus Debian's Go sources when ``gopath`` names
    ``/usr/share/gocode``. A missing ``go`` skips the test, or fails it under ``CI=true``.
    """
    go = require("go")
    work.mkdir(parents=True, exist_ok=True)
    (work / "main.go").write_text(source)
    env = {
        **os.environ,
        "GOCACHE": str(work / "gocache"),
        "GOPATH": gopath or str(work / "gopath"),
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    }
    binary = work / name
    subprocess.run(
        [go, "build", "-o", str(binary), "main.go"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return binary


class GoServer:
    """A Go reference program kept running: each request is two int32 settings and the input
    (little-endian, length-prefixed), each answer the output, length-prefixed."""

    def __init__(self, binary: Path, *args: str) -> None:
        """Start ``binary`` with ``args``."""
        self._proc = subprocess.Popen(
            [str(binary), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self._lock = threading.Lock()

    def request(self, first: int, second: int, data: bytes) -> bytes:
        """The program's output for ``data`` under the two settings."""
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        with self._lock:
            proc.stdin.write(struct.pack("<iiI", first, second, len(data)) + data)
            proc.stdin.flush()
            (n,) = struct.unpack("<I", proc.stdout.read(4))
            return proc.stdout.read(n)

    def close(self) -> None:
        """Stop the program."""
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()


def _go_binary() -> Path:
    """The gzip writer, built once per machine (cached in the temporary directory)."""
    key = hashlib.sha256(_GO_GZIP.encode()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"chunkstore-go-gzip-{key}"
    if not out.exists():
        with tempfile.TemporaryDirectory() as tmp:
            shutil.move(str(build_go(_GO_GZIP, Path(tmp), "gogzip")), out)
    return out


def _run(argv: list[str], data: bytes) -> bytes:
    done = subprocess.run(argv, input=data, capture_output=True, check=True)
    return done.stdout


def go_gzip(data: bytes, level: int = -1) -> bytes:
    """``gzip.NewWriterLevel(w, level)`` of Go's standard library (Debian's golang-go)."""
    return _run([str(_go_binary()), str(level)], data)


def gnu_gzip(data: bytes, level: int = 6) -> bytes:
    """``gzip -n -LEVEL``."""
    return _run([require("gzip"), "-n", f"-{level}", "-c"], data)


def pigz(data: bytes, level: int = 6, block_kib: int = 128) -> bytes:
    """``pigz -n -LEVEL -b BLOCK``."""
    return _run([require("pigz"), "-n", f"-{level}", "-b", str(block_kib), "-c"], data)


def zlib_gzip(data: bytes, level: int = 6) -> bytes:
    """Python's ``gzip.compress`` (zlib, header mtime 0)."""
    import gzip

    return gzip.compress(data, compresslevel=level, mtime=0)


def realistic_tar(limit: int = 3 << 20, root: str = "/usr/share/doc") -> bytes:
    """A layer-like tar of real files (text, compressed docs, binaries), about ``limit`` bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _files_under(root):
            data = path.read_bytes()[: 256 << 10]
            info = tarfile.TarInfo(str(path).lstrip("/"))
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
            if buf.tell() >= limit:
                break
    return buf.getvalue()


def _files_under(root: str) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                out.append(path)
    return out


def zlib_raw(data: bytes, level: int) -> bytes:
    """Raw deflate by zlib (for comparisons)."""
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()
