"""The ``analyze`` command and its rich tables: what images share, and what a chunk size buys."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress

from chunkstore.cli.context import Ctx, parse_size, pass_ctx

__all__ = ["analyze_cmd"]


def _analyze_sizes(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def _analyze_tables(a: Any) -> list[Any]:
    """Rich tables of an :class:`chunkstore.analyze.Analysis` (exact bytes, human units beside)."""
    from rich.table import Table

    from chunkstore.analyze_report import human_bytes

    def b(n: int | None) -> str:
        return "n/a" if n is None else f"{n:,} ({human_bytes(n)})"

    t = a.totals
    totals = Table(title="Totals (file content; chunk figures exclude tar headers)")
    totals.add_column("figure")
    totals.add_column("bytes", justify="right")
    for label, value in [
        ("logical, layer storage", t.logical_file_bytes),
        ("tar bytes", t.tar_bytes),
        ("compressed layers", t.compressed_bytes),
        ("after layer dedup (files)", t.layer_level_file_bytes),
        ("after layer dedup (compressed)", t.layer_level_compressed_bytes),
        ("after file dedup", t.file_level_bytes),
        *[(f"after chunk dedup {human_bytes(s)}", v) for s, v in t.chunk_level_bytes.items()],
        ("stored estimate (zstd 3)", t.stored_estimate_bytes),
        ("merged view, logical", t.merged_file_bytes),
        ("merged view, after chunk dedup", t.merged_chunk_level_bytes),
    ]:
        totals.add_row(label, b(value))
    images = Table(title=f"Images (chunks of {human_bytes(a.primary_chunk_size)})")
    for col in ("image", "layers", "logical", "distinct", "unique", "shared", "merged", "hidden"):
        images.add_column(col, justify="left" if col == "image" else "right")
    for im in a.images:
        images.add_row(
            im.name,
            str(len(im.layers)),
            b(im.file_bytes),
            b(im.distinct_chunk_bytes),
            b(im.unique_chunk_bytes),
            b(im.shared_chunk_bytes),
            b(im.merged.file_bytes),
            b(im.merged.hidden_file_bytes),
        )
    layers = Table(title="Distinct layers")
    for col in ("layer", "compressed", "files", "unique", "shared", "images"):
        layers.add_column(col, justify="left" if col in ("layer", "images") else "right")
    for la in a.layers:
        layers.add_row(
            la.digest[:19],
            b(la.compressed_bytes),
            b(la.file_bytes),
            b(la.unique_chunk_bytes),
            b(la.shared_chunk_bytes),
            str(len(la.images)),
        )
    sim = Table(title="Shared chunk bytes between images (Jaccard)")
    sim.add_column("")
    for i in range(len(a.similarity.images)):
        sim.add_column(f"#{i + 1}", justify="right")
    for i, name in enumerate(a.similarity.images):
        row = [
            f"{human_bytes(a.similarity.shared_bytes[i][j])} ({a.similarity.jaccard[i][j]:.2f})"
            for j in range(len(a.similarity.images))
        ]
        sim.add_row(f"#{i + 1} {name}", *row)
    sweep = Table(title="Chunk-size sweep")
    for col in ("avg size", "unique chunks", "unique bytes", "ratio", "metadata", "total"):
        sweep.add_column(col, justify="right")
    for s in a.sizes:
        sweep.add_row(
            human_bytes(s.avg_size) + (" *" if s.primary else ""),
            f"{s.unique_chunks:,}",
            b(s.unique_bytes),
            f"{s.dedup_ratio:.2f}",
            b(s.metadata_bytes),
            b(s.total_bytes),
        )
    dups = Table(title="Top duplicated files")
    for col in ("path", "size", "copies", "redundant"):
        dups.add_column(col, justify="left" if col == "path" else "right")
    for f in a.top_files[:10]:
        dups.add_row(f.paths[0] if f.paths else f.sha256[:12], b(f.size), str(f.occurrences),
                     b(f.redundant_bytes))  # fmt: skip
    dirs = Table(title="Top directories by redundant bytes")
    for col in ("directory", "redundant", "files"):
        dirs.add_column(col, justify="left" if col == "directory" else "right")
    for d in a.top_directories[:10]:
        dirs.add_row(d.path, b(d.redundant_bytes), str(d.files))
    out = [totals, images, layers, sim, sweep, dups, dirs]
    if a.sequence is not None:
        seq = Table(title="Update cost: bytes to fetch from version N to N+1")
        for col in ("from → to", "layers (compressed)", "files", "chunks"):
            seq.add_column(col, justify="left" if col == "from → to" else "right")
        for c in a.sequence:
            seq.add_row(f"{c.source} → {c.target}", b(c.layer_compressed_bytes), b(c.file_bytes),
                        b(c.chunk_bytes))  # fmt: skip
        out.append(seq)
    return out


@click.command("analyze")
@click.argument("sources", nargs=-1, required=True)
@click.option("--json", "json_out", is_flag=True, help="Every figure as JSON on stdout.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML report with plots.")  # fmt: skip
@click.option("--chunk-sizes", default="16K,64K,256K,1M", show_default=True,
              help="FastCDC average sizes to sweep (min avg/4, max 4*avg).")  # fmt: skip
@click.option("--sequence", is_flag=True, help="SOURCES are versions in order: update costs.")
@click.option("--workers", type=click.IntRange(1, 64), help="Scanning processes [cores, <=4].")
@click.option("--compression-sample", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Compress 1 unique chunk in N for the stored estimate (1: all).")  # fmt: skip
@pass_ctx
def analyze_cmd(
    c: Ctx,
    sources: tuple[str, ...],
    json_out: bool,
    html_file: Path | None,
    chunk_sizes: str,
    sequence: bool,
    workers: int | None,
    compression_sample: int,
) -> None:
    """What images share at layer, file and chunk level, and what a chunk size buys.

    SOURCE is oci:DIR[:REF], docker-archive:FILE[:REF], dir:PATH, docker://HOST/NAME[:TAG] or
    tag:NAME (an image record of --repo; only this form opens the repository).
    """
    from contextlib import ExitStack

    from chunkstore import analyze as analysis

    as_json = json_out or c.as_json
    with ExitStack() as stack:
        repo = stack.enter_context(c.open()) if any(s.startswith("tag:") for s in sources) else None
        progress = None
        if sys.stderr.isatty():
            prog = stack.enter_context(
                Progress(*Progress.get_default_columns(), console=c.err, transient=True)
            )
            task = prog.add_task("scanning layers", total=None)

            def progress(done: int, total: int) -> None:
                prog.update(task, completed=done, total=total)

        result = analysis.analyze(
            sources,
            chunk_sizes=_analyze_sizes(chunk_sizes),
            sequence=sequence,
            workers=workers or analysis.default_workers(),
            compression_sample=compression_sample,
            repo=repo,
            remote=c.remote,
            progress=progress,
        )
    if html_file is not None:
        from chunkstore.analyze_report import render_html

        html_file.write_text(render_html(result), encoding="utf-8")
        c.say(f"wrote {html_file}")
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
        return
    out = Console()
    for table in _analyze_tables(result):
        out.print(table)
    out.print(f"[dim]{result.totals.stored_estimate_method}; {result.seconds:.1f} s[/dim]")
