"""The ``analyze --html`` report: one self-contained HTML file with its plots embedded.

:func:`render_html` turns an :class:`~chunkstore.analyze.Analysis` into a page that needs nothing
else: the plots are drawn with matplotlib's Agg backend (bare ``Figure`` objects: no display, no
pyplot state), saved as PNG and embedded as ``data:image/png;base64`` URIs, and the tables are
plain HTML. The figures are the same exact integers ``--json`` prints; the page adds human units
(``1.5 MiB``) beside them.

Plots: bytes left after dedup at each level (bar chart), the pairwise similarity heatmap, per-image
unique and shared bytes (stacked bars), the chunk-size sweep (dedup ratio and metadata overhead
against chunk size), the chunk size distribution of the primary size, and, with ``--sequence``, the
update cost per version at layer, file and chunk level.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from chunkstore.analyze import Analysis

__all__ = ["human_bytes", "render_html", "render_plots"]

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; margin: 1em 0; display: block; }
.note { color: #666; font-size: 0.9em; }
"""


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _subplots(width: float, height: float) -> tuple[Figure, Any]:
    # A bare Figure draws with the Agg backend and touches no global pyplot state, so no display
    # is needed and nothing is left open between reports.
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def render_plots(a: Analysis) -> dict[str, str]:
    """The report's plots as base64 PNG strings, by title."""
    plots: dict[str, str] = {}
    t = a.totals
    mib = 1 << 20

    fig, ax = _subplots(7, 3.5)
    labels = ["logical", "layer level", "file level"]
    values = [t.logical_file_bytes, t.layer_level_file_bytes, t.file_level_bytes]
    for size, nbytes in t.chunk_level_bytes.items():
        labels.append(f"chunks {human_bytes(size)}")
        values.append(nbytes)
    if t.stored_estimate_bytes is not None:
        labels.append("stored (zstd est.)")
        values.append(t.stored_estimate_bytes)
    ax.barh(labels[::-1], [v / mib for v in values[::-1]], color="#4a7ab5")
    ax.set_xlabel("MiB")
    ax.set_title("File content left after dedup at each level")
    plots["Bytes after dedup"] = _png(fig)

    names = [_short(n) for n in a.similarity.images]
    k = len(names)
    fig, ax = _subplots(2 + 0.9 * k, 1.5 + 0.8 * k)
    image = ax.imshow(a.similarity.jaccard, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    for i in range(k):
        for j in range(k):
            value = a.similarity.shared_bytes[i][j] / mib
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax, label="Jaccard (shared / union of chunk bytes)")
    ax.set_title("Shared chunk bytes between images (MiB)")
    plots["Similarity heatmap"] = _png(fig)

    fig, ax = _subplots(7, 1 + 0.5 * k)
    unique = [im.unique_chunk_bytes / mib for im in a.images]
    shared = [im.shared_chunk_bytes / mib for im in a.images]
    ax.barh(names, unique, label="unique to the image", color="#c0504d")
    ax.barh(names, shared, left=unique, label="shared with others", color="#4a7ab5")
    ax.invert_yaxis()
    ax.set_xlabel("MiB of distinct chunks")
    ax.legend(loc="lower right")
    ax.set_title("Per image: unique and shared chunk bytes")
    plots["Per-image unique and shared bytes"] = _png(fig)

    fig, ax = _subplots(7, 3.5)
    xs = [s.avg_size for s in a.sizes]
    ax.plot(xs, [s.dedup_ratio for s in a.sizes], "o-", color="#4a7ab5", label="dedup ratio")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [human_bytes(x) for x in xs])
    ax.set_xlabel("average chunk size")
    ax.set_ylabel("logical / unique bytes")
    ax2 = ax.twinx()
    ax2.plot(xs, [s.metadata_bytes / mib for s in a.sizes], "s--", color="#c0504d")
    ax2.set_ylabel("metadata MiB (index + trees)", color="#c0504d")
    ax.set_title("Chunk-size sweep: dedup ratio vs metadata overhead")
    plots["Chunk-size sweep"] = _png(fig)

    primary = next(s for s in a.sizes if s.primary)
    fig, ax = _subplots(7, 3.5)
    bins = primary.histogram
    ax.bar(range(len(bins)), [b.bytes / mib for b in bins], color="#4a7ab5")
    ax.set_xticks(range(len(bins)), [f"≤{human_bytes(b.upper)}" for b in bins], rotation=60)
    ax.set_ylabel("MiB of unique chunks")
    ax.set_title(f"Chunk size distribution ({human_bytes(primary.avg_size)} average)")
    plots["Chunk size distribution"] = _png(fig)

    if a.sequence:
        fig, ax = _subplots(7, 3.5)
        steps = [f"{i + 1}→{i + 2}" for i in range(len(a.sequence))]
        width = 0.27
        for offset, (label, key) in enumerate(
            [
                ("layers (compressed)", "layer_compressed_bytes"),
                ("files", "file_bytes"),
                ("chunks", "chunk_bytes"),
            ]
        ):
            pos = [i + (offset - 1) * width for i in range(len(steps))]
            ax.bar(pos, [getattr(c, key) / mib for c in a.sequence], width, label=label)
        ax.set_xticks(range(len(steps)), steps)
        ax.set_ylabel("MiB to fetch")
        ax.legend()
        ax.set_title("Update cost from version N to N+1")
        plots["Update cost"] = _png(fig)
    return plots


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def _b(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,} ({human_bytes(n)})"


def render_html(a: Analysis, title: str = "chunkstore analyze") -> str:
    """The whole report as one HTML document (plots embedded as data: URIs)."""
    t = a.totals
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>{t.images} images, {t.distinct_layers} distinct layers, "
        f"{a.seconds:.1f} s, {a.workers} worker(s); chunk figures per image at "
        f"{human_bytes(a.primary_chunk_size)}. Stored estimate: "
        f"{html.escape(t.stored_estimate_method)}.</p>",
        "<h2>Totals</h2>",
        _table(
            ["figure", "bytes"],
            [
                ["logical file bytes (layer storage)", _b(t.logical_file_bytes)],
                ["tar bytes", _b(t.tar_bytes)],
                ["compressed layer bytes", _b(t.compressed_bytes)],
                ["layer level (distinct layers, file bytes)", _b(t.layer_level_file_bytes)],
                ["layer level (distinct layers, compressed)", _b(t.layer_level_compressed_bytes)],
                ["file level", _b(t.file_level_bytes)],
                *[
                    [f"chunk level {human_bytes(size)}", _b(nbytes)]
                    for size, nbytes in t.chunk_level_bytes.items()
                ],
                ["stored estimate (zstd 3)", _b(t.stored_estimate_bytes)],
                ["merged view file bytes", _b(t.merged_file_bytes)],
                ["merged view, chunk level", _b(t.merged_chunk_level_bytes)],
            ],
        ),
    ]
    plots = render_plots(a)
    for name, data in plots.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Images</h2>")
    parts.append(
        _table(
            ["image", "layers", "logical", "distinct chunks", "unique", "shared", "merged"],
            [
                [
                    im.name,
                    len(im.layers),
                    _b(im.file_bytes),
                    _b(im.distinct_chunk_bytes),
                    _b(im.unique_chunk_bytes),
                    _b(im.shared_chunk_bytes),
                    _b(im.merged.file_bytes),
                ]
                for im in a.images
            ],
        )
    )
    parts.append("<h2>Top duplicated files</h2>")
    parts.append(
        _table(
            ["path", "size", "copies", "redundant bytes"],
            [
                [", ".join(f.paths), _b(f.size), f.occurrences, _b(f.redundant_bytes)]
                for f in a.top_files
            ],
        )
    )
    parts.append("<h2>Top directories by redundant bytes</h2>")
    parts.append(
        _table(
            ["directory", "redundant bytes", "files"],
            [[d.path, _b(d.redundant_bytes), d.files] for d in a.top_directories],
        )
    )
    parts.append("</body></html>")
    return "\n".join(parts)
