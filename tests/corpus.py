"""The real-image corpus the image tests read; the one place that names where it is.

``CHUNKSTORE_CORPUS`` is a directory ``tools/build_corpus`` wrote (its OCI layout is ``oci``);
``tools/test`` sets it to the small corpus it builds (``tools/build_corpus --small``, under
``/var/tmp/chunkstore-corpus-ci``). Unset, it is ``tools/build_corpus``'s default,
``/var/tmp/chunkstore-corpus``. Both corpora have ``bookworm-minbase`` and
``bookworm-minbase-rebuilt``; only the full one has the python3 and layered images.

A test that needs the corpus calls :func:`require_corpus`: without the corpus (or a ref it names)
the test is skipped, or fails when ``CI=true``, so CI cannot pass without running it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

CORPUS_DIR = Path(os.environ.get("CHUNKSTORE_CORPUS") or "/var/tmp/chunkstore-corpus")
#: The OCI image layout holding every corpus image.
CORPUS = CORPUS_DIR / "oci"
#: The refs every corpus, small or full, has.
MINBASE = "bookworm-minbase"
MINBASE_REBUILT = "bookworm-minbase-rebuilt"

__all__ = ["CORPUS", "CORPUS_DIR", "MINBASE", "MINBASE_REBUILT", "corpus_has", "require_corpus"]


def _refs() -> set[str]:
    try:
        index = json.loads((CORPUS / "index.json").read_text())
    except (OSError, ValueError):
        return set()
    return {
        m.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        for m in index.get("manifests", [])
    }


def corpus_has(ref: str) -> bool:
    """Whether the corpus holds an image tagged ``ref``."""
    return ref in _refs()


def require_corpus(*refs: str) -> Path:
    """The corpus layout, holding ``refs``; else skip the test (fail it when ``CI=true``)."""
    missing = sorted(set(refs) - _refs()) if refs else ([] if CORPUS.is_dir() else ["the layout"])
    if missing:
        message = (
            f"real-image corpus {CORPUS} lacks {', '.join(missing)} "
            "(tools/build_corpus --small builds it; tools/test does so)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CORPUS
