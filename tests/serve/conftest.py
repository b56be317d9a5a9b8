"""A repository holding the small corpus' two images, served by ``chunkstore serve``.

The server runs as a subprocess of the real command line on a free port (``--listen
127.0.0.1:0``); the fixture waits for its ready line, and at the end stops it with SIGTERM and
checks that it shut down cleanly (exit 0).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from chunkstore import api
from chunkstore.images.backup import backup_image
from tests.corpus import MINBASE, MINBASE_REBUILT, require_corpus

__all__ = ["Served", "running_server", "served"]

#: Record names: one NAME:TAG, one NAME alone (served as NAME:latest).
MINBASE_RECORD = "debian:bookworm-minbase"
REBUILT_RECORD = "minbase-rebuilt"


@dataclass(frozen=True, slots=True)
class Served:
    """A running server: its base URL, the corpus layout, and the repository behind it."""

    url: str
    host: str
    corpus: Path
    repo: Path
    cache: Path

    def corpus_manifest_digest(self, ref: str) -> str:
        """The digest of the corpus manifest tagged ``ref``."""
        index = json.loads((self.corpus / "index.json").read_text())
        for m in index["manifests"]:
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
                return str(m["digest"])
        raise AssertionError(f"no {ref} in the corpus")

    def corpus_blob(self, digest: str) -> Path:
        """A blob of the corpus layout."""
        algorithm, _, hex_ = digest.partition(":")
        return self.corpus / "blobs" / algorithm / hex_


@contextmanager
def running_server(repo_path: Path | str, cache: Path, log_path: Path) -> Iterator[str]:
    """``chunkstore serve`` over ``repo_path`` (or a ``registry:`` location) on a free port:
    yields HOST:PORT once it is ready; stops it with SIGTERM at the end and checks it shut down
    cleanly (exit 0)."""
    env = {**os.environ, "CHUNKSTORE_REPO": str(repo_path), "CHUNKSTORE_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "chunkstore", "serve", "--listen", "127.0.0.1:0"]
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # the ready line, or "" if the server died
        m = re.search(r"http://(127\.0\.0\.1:\d+)", line)
        assert m is not None, f"no ready line: {line!r}; log: {log_path.read_text()}"
        yield m[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            log.close()
            if proc.stdout is not None:
                proc.stdout.close()
    assert code == 0, log_path.read_text()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``chunkstore serve`` over the two corpus images (see the module docstring)."""
    corpus = require_corpus(MINBASE, MINBASE_REBUILT)
    root = tmp_path_factory.mktemp("serve")
    repo_path, cache = root / "repo", root / "cache"
    with api.init_repository(repo_path, cache_dir=cache) as repo:
        backup_image(repo, f"oci:{corpus}:{MINBASE}", MINBASE_RECORD)
        backup_image(repo, f"oci:{corpus}:{MINBASE_REBUILT}", REBUILT_RECORD)
    with running_server(repo_path, cache, root / "serve.log") as host:
        yield Served(f"http://{host}", host, corpus, repo_path, cache)
