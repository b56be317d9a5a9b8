"""Create tests/data/repo-v1.tar.gz: small plain and encrypted repositories in format version 1.

Kept in the tree so that later versions of chunkstore prove they still read version 1 data
(restic's test-repo.tar.gz). Run only when adding a new golden repository for a new format version.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import tempfile
from pathlib import Path

from chunkstore import api
from chunkstore.chunker import ChunkerParams

PASSWORD = b"chunkstore-golden"


def content(name: str, size: int) -> bytes:
    """Deterministic, partly compressible test content."""
    out = bytearray()
    i = 0
    while len(out) < size:
        block = hashlib.sha256(f"{name}:{i}".encode()).digest()
        out += block + (b"golden repository line %d\n" % i)
        i += 1
    return bytes(out[:size])


def main() -> None:
    """Build both repositories and pack them into the tarball."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        alpha = content("alpha", 120_000)
        beta = alpha[:50_000] + b"inserted" + alpha[50_000:]
        for name, password in (("plain", None), ("encrypted", PASSWORD)):
            repo = api.init_repository(
                t / name,
                cache_dir=t / "cache",
                password=password,
                chunker=ChunkerParams(1024, 4096, 16384),
                pack_size=64 * 1024,
            )
            api.put(repo, "alpha", io.BytesIO(alpha))
            api.put(repo, "beta", io.BytesIO(beta))
            repo.close()
        out = root / "tests" / "data" / "repo-v1.tar.gz"
        with tarfile.open(out, "w:gz") as tar:
            for name in ("plain", "encrypted"):
                tar.add(t / name, arcname=name)
        shutil.rmtree(t / "cache")


if __name__ == "__main__":
    main()
