"""Fixtures for the FUSE-free mount tests: a small image backed up into a local repository.

``image_repo`` backs up a directory (``dir:`` source) once per module with a tiny chunker (1/4/16
KiB), so a 300 KB file has dozens of chunks; tests open it through :class:`GatedBackend`, a
backend wrapper that counts pack reads and can hold them (a hung registry) until released.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.backends.base import Backend, FileType, Handle
from chunkstore.backends.local import LocalBackend
from chunkstore.browse import file_chunks, open_image, resolve_path
from chunkstore.chunker import ChunkerParams
from chunkstore.images.backup import backup_image
from chunkstore.repository import Repository
from chunkstore.testing.faults import FaultyBackend
from index.chunklist import ChunkRef
from index.tree import Node

__all__ = ["GatedBackend", "ImageRepo", "image_repo", "open_gated"]

CONTENT = {
    "etc/hello.txt": b"hello\n",
    "usr/lib/big.bin": os.urandom(300_000),
    "usr/share/text.txt": b"the quick brown fox\n" * 5000,
}


class GatedBackend(FaultyBackend):
    """Pack loads are counted and wait while the gate is closed (no other faults)."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.gate.set()
        self.pack_loads = 0
        self._count_lock = threading.Lock()

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        if handle.type is FileType.PACK:
            with self._count_lock:
                self.pack_loads += 1
            self.gate.wait(30)
        return super().load(handle, offset, length)


@dataclass
class ImageRepo:
    path: Path
    src: Path
    tag: str

    def open(self, tmp: Path) -> tuple[Repository, GatedBackend]:
        return open_gated(self.path, tmp / "index-cache")

    def node(self, repo: Repository, path: str) -> Node:
        node = resolve_path(repo, open_image(repo, self.tag).root, path)
        assert node is not None
        return node

    def chunks(self, repo: Repository, path: str) -> list[ChunkRef]:
        return file_chunks(repo, self.node(repo, path))


def open_gated(path: Path, cache: Path) -> tuple[Repository, GatedBackend]:
    gated = GatedBackend(LocalBackend(path))
    return Repository.open(gated, cache_dir=cache), gated


@pytest.fixture(scope="module")
def image_repo(tmp_path_factory: pytest.TempPathFactory) -> ImageRepo:
    tmp = tmp_path_factory.mktemp("image-repo")
    src = tmp / "src"
    for name, data in CONTENT.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    repo = api.init_repository(
        tmp / "repo", cache_dir=tmp / "cache", chunker=ChunkerParams(1024, 4096, 16384)
    )
    with repo:
        backup_image(repo, f"dir:{src}", "img")
    return ImageRepo(tmp / "repo", src, "img")
