"""What the benchmarks print: tables, target verdicts, the machine and versions, the final report.

:class:`Table` renders aligned text (header lines, a dashed rule, one line per row, notes between
rows), :func:`markdown_table` a Markdown table, :func:`target_lines` the PASS/MISS list;
:func:`report` prints the text and the failures, and writes the JSON figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchlib.common import ROOT, log

__all__ = [
    "Column",
    "Table",
    "git_revision",
    "libraries_line",
    "library_versions",
    "machine_info",
    "machine_line",
    "markdown_table",
    "report",
    "target_lines",
    "tool_version",
    "verdict",
]


@dataclass(frozen=True)
class Column:
    """A column: header line(s), width, alignment (``<`` or ``>``), separator before it."""

    header: str | tuple[str, ...]
    width: int = 0
    align: str = "<"
    sep: str = " "

    @property
    def headers(self) -> tuple[str, ...]:
        """The header lines."""
        return (self.header,) if isinstance(self.header, str) else self.header


@dataclass
class Table:
    """Rows of preformatted cells under column headers; notes are lines between rows."""

    columns: Sequence[Column]
    lines: list[str | tuple[str, ...]] = field(default_factory=list)

    def row(self, *cells: str) -> None:
        """Add a row (one preformatted cell per column)."""
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.lines.append(tuple(cells))

    def note(self, text: str) -> None:
        """Add a line of text between rows."""
        self.lines.append(text)

    def _line(self, cells: Sequence[str]) -> str:
        parts = []
        for i, (col, cell) in enumerate(zip(self.columns, cells, strict=True)):
            parts.append(("" if i == 0 else col.sep) + f"{cell:{col.align}{col.width}}")
        return "".join(parts)

    def text(self, *, rule: bool = True) -> list[str]:
        """Header line(s), a rule as long as the first (unless not ``rule``), rows and notes."""
        depth = max(len(c.headers) for c in self.columns)
        heads = [
            self._line([c.headers[i] if i < len(c.headers) else "" for c in self.columns])
            for i in range(depth)
        ]
        out = [heads[0], *heads[1:], *(["-" * len(heads[0])] if rule else [])]
        for line in self.lines:
            out.append(line if isinstance(line, str) else self._line(line))
        return out


def markdown_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    rule: Sequence[str] | None = None,
    *,
    padded: bool = False,
) -> list[str]:
    """``| a | b |`` lines: headers, the alignment rule (default ``---`` each), the rows.

    ``padded`` writes the rule as ``| --- | ---: |`` (else ``|---|---:|``) and an empty cell as
    ``|  |`` (else ``| |``).
    """
    rule = rule if rule is not None else ["---"] * len(headers)
    if padded:
        return [
            "| " + " | ".join(headers) + " |",
            "| " + " | ".join(rule) + " |",
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
    return [
        "|" + "".join(f" {h} |" if h else " |" for h in headers),
        "|" + "|".join(rule) + "|",
        *("|" + "".join(f" {c} |" if c else " |" for c in row) for row in rows),
    ]


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


def target_lines(targets: list[dict[str, Any]], name_width: int) -> list[str]:
    """``  PASS  name  value`` per target (each has ``verdict``, ``name``, ``value``)."""
    return [f"  {t['verdict']:<4}  {t['name']:<{name_width}} {t['value']}" for t in targets]


def machine_info() -> dict[str, Any]:
    """CPU model and count, memory, kernel, Python."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem / (1 << 30), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def machine_line(m: dict[str, Any]) -> str:
    """``N CPUs (model), M GiB RAM, kernel K`` from :func:`machine_info`."""
    return f"{m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB RAM, kernel {m['kernel']}"


def library_versions() -> dict[str, str]:
    """Versions of chunkstore and the libraries that shape its speed."""
    out = {}
    for dist in ("chunkstore", "fastcdc", "zstandard", "PyNaCl", "lmdb"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def libraries_line(git: str, libraries: dict[str, str]) -> str:
    """``chunkstore REV; fastcdc X, zstandard Y, ...``."""
    others = ", ".join(f"{k} {v}" for k, v in libraries.items() if k != "chunkstore")
    return f"chunkstore {git}; {others}"


# --no-optional-locks: a read-only status that never rewrites the index.
_GIT_STATUS = ["git", "--no-optional-locks", "-C", str(ROOT), "status", "--porcelain", "-uno"]


def git_revision() -> str:
    """The checkout's commit, noting when chunkstore/ or index/ are modified."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        dirty = subprocess.run(
            [*_GIT_STATUS, "--", "chunkstore", "index"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + (" (chunkstore/ or index/ modified)" if dirty else "")


def tool_version(cmd: list[str]) -> str:
    """The first line ``cmd`` (e.g. ``restic version``) prints, or why there is none."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not installed"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def report(result: dict[str, Any], text: str, failures: list[str], json_path: Path | None) -> int:
    """Print the table and failures, write the JSON when asked; the exit code."""
    print(text)
    for failure in failures:
        print(f"FAILED {failure}")
    print(f"\n(total benchmark time {result['total_seconds']:.0f} s)")
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        log(f"wrote {json_path}")
    return 1 if failures else 0
