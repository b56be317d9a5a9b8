"""What every benchmark needs first: the project root, units, ``log()``, the chunkstore command."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "MB",
    "MIB",
    "ROOT",
    "base_env",
    "chunkstore_binary",
    "log",
    "restic_summary",
    "workdir",
]

#: The project checkout (``tools/..``).
ROOT = Path(__file__).resolve().parents[2]
MB = 10**6
MIB = 1 << 20


def log(msg: str, *, prog: str | None = None) -> None:
    """A progress line on stderr, prefixed with the running benchmark's name (``prog``)."""
    name = prog if prog is not None else Path(sys.argv[0]).stem
    print(f"{name}: {msg}", file=sys.stderr, flush=True)


def chunkstore_binary() -> str:
    """The ``chunkstore`` command of this interpreter's environment (else the venv's, else PATH)."""
    here = Path(sys.executable).parent / "chunkstore"
    if here.exists():
        return str(here)
    venv = ROOT / ".venv" / "bin" / "chunkstore"
    if venv.exists():
        return str(venv)
    found = shutil.which("chunkstore")
    if found is None:
        sys.exit(f"{Path(sys.argv[0]).stem}: no chunkstore command found; run tools/setup first")
    return found


def base_env(work: Path) -> dict[str, str]:
    """The parent environment with every tool's home-directory state redirected into ``work``."""
    env = dict(os.environ)
    for var in ("CHUNKSTORE_REPO", "CHUNKSTORE_PASSWORD", "RESTIC_REPOSITORY", "BORG_REPO"):
        env.pop(var, None)
    env["XDG_CACHE_HOME"] = str(work / "xdg-cache")
    env["XDG_DATA_HOME"] = str(work / "xdg-data")
    env["XDG_CONFIG_HOME"] = str(work / "xdg-config")
    env["TMPDIR"] = str(work / "tmp")
    (work / "tmp").mkdir(exist_ok=True)
    return env


@contextlib.contextmanager
def workdir(out: Path, prefix: str, keep: bool) -> Iterator[Path]:
    """A fresh directory under ``out`` (created), removed afterwards unless ``keep``."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=out))
    try:
        yield work
    finally:
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def restic_summary(stdout: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """``keys`` of the last ``summary`` message of restic's ``--json`` output (empty if none)."""
    for line in reversed(stdout.splitlines()):
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            if isinstance(msg, dict) and msg.get("message_type") == "summary":
                return {k: msg[k] for k in keys if k in msg}
    return {}
