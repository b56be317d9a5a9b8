#!/usr/bin/env python3
"""Measure what FastCDC chunk sizes buy on a corpus of OCI images (see tools/build_corpus).

For every image of the OCI layout ``CORPUS/oci`` it reads each layer blob (a tar, gzip'd or not)
as a stream and cuts the content of each regular file into chunks (file-aligned chunking, as
chunkstore does) with several :class:`~chunkstore.chunker.ChunkerParams` (min = avg/4,
max = 4*avg). Reported, per image alone and for the whole corpus:

* logical file bytes, unique bytes after dedup by SHA-256, dedup ratio, number of unique objects;
* the zstd size of the unique objects, each compressed on its own at level 3 with chunkstore's
  own :class:`~chunkstore.compress.Compressor` (1-byte frame, raw when zstd does not help) --
  exactly what the store writes per blob;
* an index/tree metadata cost of ``--overhead`` bytes (default 80) per unique object;
* baselines: whole-layer dedup (identical layer blobs only) and whole-file dedup (SHA-256 of
  each file, each unique file compressed whole);
* the storage each image adds when the images are stored one after another;
* chunking throughput per parameter set, through ``Chunker.chunks`` (the streaming path) and
  ``Chunker.chunk_bytes`` (in memory), best of ``--repeat`` runs on one layer's files.

Whiteout entries (``.wh.*``) and empty files carry no content and are left out; hard links are
not regular-file members and are left out too (they reference content stored elsewhere in the
same layer). An image's files are all files of all its layers, i.e. what a store must hold to
give the image back layer by layer.

Usage: .venv/bin/python tools/measure_chunking.py [CORPUS] [--out tools/results/chunking.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import io
import os
import platform
import sys
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard
from benchlib.common import log
from benchlib.corpus import order_refs, read_corpus
from benchlib.report import markdown_table

from chunkstore.chunker import Chunker, ChunkerParams
from chunkstore.compress import Compressor

KIB = 1024
MIB = 1024 * KIB
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = os.environ.get("CORPUS_DIR", "/var/tmp/chunkstore-corpus")
DEFAULT_OUT = REPO / "tools" / "results" / "chunking.md"
CURRENT_DEFAULT = "64K"
#: Images in this order (the incremental table stores them one after another); others follow.
PREFERRED_ORDER = [
    "bookworm-minbase",
    "bookworm-python3-point",
    "bookworm-python3",
    "bookworm-python3-rebuilt",
    "bookworm-python3-layered",
    "trixie-minbase",
]
SIZE_BUCKETS = [
    (1, 4 * KIB, "< 4 KiB"),
    (4 * KIB, 16 * KIB, "4-16 KiB"),
    (16 * KIB, 64 * KIB, "16-64 KiB"),
    (64 * KIB, 256 * KIB, "64-256 KiB"),
    (256 * KIB, MIB, "256 KiB-1 MiB"),
    (MIB, 4 * MIB, "1-4 MiB"),
    (4 * MIB, 1 << 62, ">= 4 MiB"),
]


def _label(avg: int) -> str:
    return f"{avg // MIB}M" if avg >= MIB and avg % MIB == 0 else f"{avg // KIB}K"


PARAM_SETS: list[tuple[str, ChunkerParams]] = [
    (_label(avg), ChunkerParams(avg // 4, avg, avg * 4))
    for avg in (16 * KIB, 32 * KIB, 64 * KIB, 128 * KIB, 256 * KIB, MIB)
]


# --------------------------------------------------------------------------------------------
# Reading the layout


@dataclass
class Layer:
    digest: str
    media_type: str
    blob_size: int  # as stored (gzip'd) in the layout
    path: Path


@dataclass
class Image:
    ref: str
    manifest_digest: str
    layers: list[Layer]


def read_layout(layout: Path) -> list[Image]:
    """The layout's images (``tmp-*`` refs left out), in PREFERRED_ORDER, then by ref."""
    found = read_corpus(layout)
    refs = order_refs([r for r in found if not r.startswith("tmp-")], PREFERRED_ORDER)
    return [
        Image(
            ref,
            found[ref].manifest_digest,
            [Layer(la.digest, la.media_type, la.size, la.path) for la in found[ref].layers],
        )
        for ref in refs
    ]


class _TarTee(io.RawIOBase):
    """Reads the decompressed layer tar, counting it and feeding a zstd stream (baseline).

    ``level`` None skips the compression (``zstd_bytes`` stays 0).
    """

    def __init__(self, inner: BinaryIO, level: int | None) -> None:
        self._inner = inner
        self._z = None if level is None else zstandard.ZstdCompressor(level=level).compressobj()
        self.tar_bytes = 0
        self.zstd_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(b))
        n = len(data)
        b[:n] = data
        self.tar_bytes += n
        if n and self._z is not None:
            self.zstd_bytes += len(self._z.compress(data))
        return n

    def finish(self) -> None:
        if self._z is not None:
            self.zstd_bytes += len(self._z.flush())


def layer_stream(raw: BinaryIO, media_type: str) -> BinaryIO:
    """The uncompressed tar stream of a layer blob opened as ``raw``."""
    if media_type.endswith(("+gzip", ".gzip")):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if media_type.endswith("+zstd"):
        return zstandard.ZstdDecompressor().stream_reader(raw)
    if media_type.endswith(".tar"):
        return raw
    raise SystemExit(f"unsupported layer media type {media_type}")


def iter_files(
    layout: Path, layer: Layer, level: int | None
) -> Iterable[tuple[str, bytes] | _TarTee]:
    """(path, content) of each regular file of the layer; finally the tee with the tar counts."""
    with open(layer.path, "rb") as raw:
        tee = _TarTee(layer_stream(raw, layer.media_type), level)
        buffered = io.BufferedReader(tee, MIB)
        with tarfile.open(fileobj=buffered, mode="r|") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                f = tar.extractfile(member)
                assert f is not None
                yield member.name, f.read()
        # Drain the padding after the end-of-archive blocks so the byte count is complete.
        while buffered.read(MIB):
            pass
        tee.finish()
    yield tee


# --------------------------------------------------------------------------------------------
# Measuring


@dataclass
class LayerStats:
    digest: str
    blob_size: int
    tar_bytes: int = 0
    tar_zstd: int = 0
    files: int = 0  # non-empty regular files, whiteouts excluded
    empty_files: int = 0
    whiteouts: int = 0
    file_bytes: int = 0
    #: unique file sha -> size (within the layer)
    file_set: dict[bytes, int] = field(default_factory=dict)
    #: per parameter set: unique chunk sha -> size (within the layer)
    chunk_sets: list[dict[bytes, int]] = field(default_factory=list)
    #: per parameter set: chunk references (chunks of every file, duplicates included)
    chunk_refs: list[int] = field(default_factory=list)
    #: (path, file sha) of every non-empty regular file
    paths: list[tuple[str, bytes]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Totals:
    """What one set of objects (layers, files or chunks) costs."""

    logical: int
    unique_bytes: int
    objects: int
    compressed: int
    refs: int = 0

    def stored(self, overhead: int) -> int:
        return self.compressed + overhead * self.objects


class Measurer:
    def __init__(self, layout: Path, level: int, sample: float) -> None:
        self.layout = layout
        self.level = level
        self.sample = sample
        self.compressor = Compressor(level)
        self.chunkers = [Chunker(p) for _, p in PARAM_SETS]
        #: unique file sha -> compressed size (whole-file baseline), corpus wide
        self.file_z: dict[bytes, int] = {}
        #: per parameter set: unique chunk sha -> compressed size (or -1 when not sampled)
        self.chunk_z: list[dict[bytes, int]] = [{} for _ in PARAM_SETS]
        self.compress_seconds = [0.0 for _ in PARAM_SETS]
        self.compress_bytes = [0 for _ in PARAM_SETS]
        #: file sha -> per parameter set, the file's chunks as (sha, size) tuples
        self._file_chunks: dict[bytes, list[tuple[tuple[bytes, int], ...]]] = {}
        self.layers: dict[str, LayerStats] = {}
        #: corpus-wide unique files -> size, for the size distribution
        self.all_files: dict[bytes, int] = {}

    def _sampled(self, sha: bytes) -> bool:
        return self.sample >= 1.0 or sha[0] < self.sample * 256

    def _compress_len(self, data: bytes) -> int:
        return len(self.compressor.compress(data))

    def _chunks_of(self, data: bytes, fsha: bytes) -> list[tuple[tuple[bytes, int], ...]]:
        cached = self._file_chunks.get(fsha)
        if cached is not None:
            return cached
        result = []
        view = memoryview(data)
        for i, chunker in enumerate(self.chunkers):
            chunks = []
            zmap = self.chunk_z[i]
            for chunk in chunker.chunk_bytes(view):
                csha = hashlib.sha256(chunk).digest()
                chunks.append((csha, len(chunk)))
                if csha not in zmap:
                    if self._sampled(csha):
                        t0 = time.perf_counter()
                        zmap[csha] = self._compress_len(chunk)
                        self.compress_seconds[i] += time.perf_counter() - t0
                        self.compress_bytes[i] += len(chunk)
                    else:
                        zmap[csha] = -1
            result.append(tuple(chunks))
        self._file_chunks[fsha] = result
        return result

    def file_chunks(self, fsha: bytes) -> list[tuple[tuple[bytes, int], ...]]:
        """Per parameter set, the (sha, size) chunks of a file seen before."""
        return self._file_chunks[fsha]

    def layer(self, layer: Layer) -> LayerStats:
        if layer.digest in self.layers:
            return self.layers[layer.digest]
        t0 = time.perf_counter()
        st = LayerStats(layer.digest, layer.blob_size)
        st.chunk_sets = [{} for _ in PARAM_SETS]
        st.chunk_refs = [0 for _ in PARAM_SETS]
        for item in iter_files(self.layout, layer, self.level):
            if isinstance(item, _TarTee):
                st.tar_bytes, st.tar_zstd = item.tar_bytes, item.zstd_bytes
                continue
            name, data = item
            if os.path.basename(name).startswith(".wh."):
                st.whiteouts += 1
                continue
            if not data:
                st.empty_files += 1
                continue
            fsha = hashlib.sha256(data).digest()
            st.files += 1
            st.file_bytes += len(data)
            st.file_set[fsha] = len(data)
            st.paths.append((name, fsha))
            self.all_files[fsha] = len(data)
            if fsha not in self.file_z:
                self.file_z[fsha] = self._compress_len(data)
            for i, chunks in enumerate(self._chunks_of(data, fsha)):
                st.chunk_refs[i] += len(chunks)
                st.chunk_sets[i].update(chunks)
        st.seconds = time.perf_counter() - t0
        self.layers[layer.digest] = st
        return st

    # ---- aggregation over a set of layers (one image, or the corpus)

    def _compressed(self, objs: dict[bytes, int], zmap: dict[bytes, int]) -> int:
        if self.sample >= 1.0:
            return sum(zmap[h] for h in objs)
        z = n = 0
        for h, size in objs.items():
            if zmap[h] >= 0:
                z += zmap[h]
                n += size
        total = sum(objs.values())
        return round(z * total / n) if n else 0

    def totals(self, layer_lists: list[list[LayerStats]]) -> dict[str, Totals]:
        """Totals per method for the images given as lists of their layers' stats."""
        all_layers = [st for layers in layer_lists for st in layers]
        logical = sum(st.file_bytes for st in all_layers)
        unique_layers = {st.digest: st for st in all_layers}
        out: dict[str, Totals] = {}
        out["whole layer"] = Totals(
            logical,
            sum(st.file_bytes for st in unique_layers.values()),
            len(unique_layers),
            sum(st.tar_zstd for st in unique_layers.values()),
            refs=len(all_layers),
        )
        files: dict[bytes, int] = {}
        for st in unique_layers.values():
            files.update(st.file_set)
        out["whole file"] = Totals(
            logical,
            sum(files.values()),
            len(files),
            sum(self.file_z[h] for h in files),
            refs=sum(st.files for st in all_layers),
        )
        for i, (label, _) in enumerate(PARAM_SETS):
            chunks: dict[bytes, int] = {}
            for st in unique_layers.values():
                chunks.update(st.chunk_sets[i])
            out[label] = Totals(
                logical,
                sum(chunks.values()),
                len(chunks),
                self._compressed(chunks, self.chunk_z[i]),
                refs=sum(st.chunk_refs[i] for st in all_layers),
            )
        return out

    def byte_weighted_chunk_size(self, i: int) -> float:
        """Mean size of the chunk holding a random byte (corpus-unique chunks)."""
        seen: dict[bytes, int] = {}
        for st in self.layers.values():
            seen.update(st.chunk_sets[i])
        sizes = list(seen.values())
        return sum(s * s for s in sizes) / sum(sizes) if sizes else 0.0


def throughput(
    layout: Path, layer: Layer, repeat: int
) -> tuple[int, int, list[tuple[float, float, float]]]:
    """(files, bytes, per parameter set (stream MB/s, in-memory MB/s, sha256 MB/s))."""
    files = [
        data
        for item in iter_files(layout, layer, None)
        if isinstance(item, tuple)
        for data in [item[1]]
        if data
    ]
    total = sum(len(d) for d in files)
    t0 = time.perf_counter()
    for d in files:
        hashlib.sha256(d).digest()
    file_sha_s = time.perf_counter() - t0
    del file_sha_s
    results = []
    for _label_, params in PARAM_SETS:
        chunker = Chunker(params)
        best_stream = best_mem = best_hash = float("inf")
        for r in range(repeat):
            t0 = time.perf_counter()
            streamed = [list(chunker.chunks(io.BytesIO(d))) for d in files]
            best_stream = min(best_stream, time.perf_counter() - t0)
            t0 = time.perf_counter()
            in_mem = [list(chunker.chunk_bytes(d)) for d in files]
            best_mem = min(best_mem, time.perf_counter() - t0)
            if r == 0 and streamed != in_mem:
                raise SystemExit(f"{_label_}: chunks() and chunk_bytes() cut differently")
            t0 = time.perf_counter()
            for cs in in_mem:
                for c in cs:
                    hashlib.sha256(c).digest()
            best_hash = min(best_hash, time.perf_counter() - t0)
            del streamed, in_mem
        results.append((total / best_stream / 1e6, total / best_mem / 1e6, total / best_hash / 1e6))
    return len(files), total, results


def file_kind(path: str) -> str:
    """A coarse file class for the update breakdown."""
    name = os.path.basename(path)
    if name.endswith(".pyc"):
        return "Python bytecode (.pyc)"
    if ".so" in name or "/bin/" in path or "/sbin/" in path:
        return "executables and shared libraries"
    return "other files"


def update_diff(
    m: Measurer, old: list[LayerStats], new: list[LayerStats], overhead: int, top: int
) -> tuple[list[list[str]], list[int], int, int, dict[str, tuple[int, int, list[int]]]]:
    """What storing ``new`` costs on top of ``old``, file by file.

    Returns the table rows of the ``top`` largest changed files, the total new stored bytes
    per method (whole file, then each parameter set), the number of changed files and their
    bytes, and per :func:`file_kind` (files, bytes, new stored bytes per method).
    """
    old_files: dict[bytes, int] = {}
    old_chunks: list[set[bytes]] = [set() for _ in PARAM_SETS]
    for st in old:
        old_files.update(st.file_set)
        for i, cs in enumerate(st.chunk_sets):
            old_chunks[i].update(cs)
    seen_files: set[bytes] = set()
    per_file = []
    totals = [0] * (1 + len(PARAM_SETS))
    changed = changed_bytes = 0
    for st in new:
        for path, fsha in st.paths:
            if fsha in old_files or fsha in seen_files:
                continue
            seen_files.add(fsha)
            size = st.file_set[fsha]
            changed += 1
            changed_bytes += size
            costs = [m.file_z[fsha] + overhead]
            for i, chunks in enumerate(m.file_chunks(fsha)):
                cost = 0
                for csha, _ in chunks:
                    if csha not in old_chunks[i]:
                        old_chunks[i].add(csha)  # counted once
                        cost += m.chunk_z[i][csha] + overhead
                costs.append(cost)
            totals = [t + c for t, c in zip(totals, costs, strict=True)]
            per_file.append((size, path, costs))
    kinds: dict[str, tuple[int, int, list[int]]] = {}
    for size, path, costs in per_file:
        n, b, c = kinds.get(file_kind(path), (0, 0, [0] * len(costs)))
        kinds[file_kind(path)] = (n + 1, b + size, [x + y for x, y in zip(c, costs, strict=True)])
    per_file.sort(key=lambda x: -x[0])
    rows = [
        [f"`{path.removeprefix('./')}`", f"{size / KIB:,.0f}"] + [f"{c / KIB:,.0f}" for c in costs]
        for size, path, costs in per_file[:top]
    ]
    return rows, totals, changed, changed_bytes, kinds


# --------------------------------------------------------------------------------------------
# Reporting


def mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def mib2(n: float) -> str:
    return f"{n / MIB:,.2f}"


def table(headers: list[str], rows: list[list[str]], align: str = "") -> str:
    """A Markdown table; ``align`` has ``l`` or ``r`` per column (default: first left)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    return "\n".join(markdown_table(headers, rows, rule, padded=True))


def method_rows(tot: dict[str, Totals], overhead: int, ref_label: str) -> list[list[str]]:
    rows = []
    ref = tot[ref_label].stored(overhead)
    for method, t in tot.items():
        stored = t.stored(overhead)
        rows.append(
            [
                method if method.startswith("whole") else f"CDC avg {method}",
                mib(t.logical),
                mib(t.unique_bytes),
                f"{t.logical / t.unique_bytes:.2f}" if t.unique_bytes else "-",
                f"{t.objects:,}",
                f"{t.refs:,}",
                mib(t.compressed),
                mib2(overhead * t.objects),
                mib(stored),
                f"{100 * (stored - ref) / ref:+.1f}%",
            ]
        )
    return rows


METHOD_HEADERS = [
    "method",
    "file MiB",
    "unique MiB",
    "dedup",
    "unique objects",
    "references",
    "zstd-3 MiB",
    "metadata MiB",
    "stored MiB",
    "vs 64K",
]


def corpus_description(corpus: Path) -> str:
    desc = corpus / "CORPUS.txt"
    if desc.exists():
        return desc.read_text()
    return f"(no {desc}: corpus not built by tools/build_corpus)\n"


def package_summary(corpus: Path) -> list[str]:
    """Markdown bullets: package counts and how the bookworm package sets differ."""

    def versions(path: Path) -> dict[str, str]:
        return dict(line.split("=", 1) for line in path.read_text().split())

    rootfs = corpus / "rootfs"
    lists = {p.stem: versions(p) for p in sorted(rootfs.glob("*.packages"))}
    order = {ref: i for i, ref in enumerate(PREFERRED_ORDER)}
    names = sorted(lists, key=lambda n: (order.get(n, len(order)), n))
    base = lists.get("bookworm-minbase")
    lines = []
    for name in names:
        pkgs = lists[name]
        line = f"* `{name}`: {len(pkgs)} packages"
        if base is not None and name != "bookworm-minbase" and name.startswith("bookworm"):
            added = sorted(set(pkgs) - set(base))
            line += f"; adds to bookworm-minbase: {', '.join(added)}"
        lines.append(line)
    for other in ("bookworm-python3-rebuilt", "bookworm-python3-point"):
        if "bookworm-python3" not in lists or other not in lists:
            continue
        ref, pkgs = lists["bookworm-python3"], lists[other]
        if set(ref) != set(pkgs):
            lines.append(f"* `{other}` has a different package set than `bookworm-python3`")
            continue
        diff = [f"{n} {pkgs[n]} (vs {ref[n]})" for n in sorted(ref) if ref[n] != pkgs[n]]
        lines.append(
            f"* `{other}` has the same packages as `bookworm-python3`, "
            + (
                f"{len(diff)} at other versions: {', '.join(diff)}"
                if diff
                else "all at the same versions"
            )
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", nargs="?", default=DEFAULT_CORPUS, type=Path)
    ap.add_argument("--out", default=DEFAULT_OUT, type=Path, help="markdown results file")
    ap.add_argument("--overhead", type=int, default=80, help="metadata bytes per unique object")
    ap.add_argument("--level", type=int, default=3, help="zstd level")
    ap.add_argument(
        "--sample",
        type=float,
        default=1.0,
        help="fraction of unique chunks to compress (by hash); 1 = all",
    )
    ap.add_argument("--repeat", type=int, default=3, help="throughput runs (best is kept)")
    ap.add_argument("--top", type=int, default=12, help="files listed in the update table")
    ap.add_argument(
        "--throughput-ref",
        default="bookworm-python3",
        help="image whose first layer's files are the throughput sample",
    )
    args = ap.parse_args()
    layout = args.corpus / "oci"
    started = time.perf_counter()
    images = read_layout(layout)
    if not images:
        raise SystemExit(f"no images in {layout}")
    m = Measurer(layout, args.level, args.sample)
    per_image: dict[str, list[LayerStats]] = {}
    for im in images:
        per_image[im.ref] = [m.layer(layer) for layer in im.layers]
        log(
            f"read {im.ref}: {len(im.layers)} layer(s), "
            f"{sum(s.files for s in per_image[im.ref]):,} files, "
            f"{mib(sum(s.file_bytes for s in per_image[im.ref]))} MiB "
            f"({time.perf_counter() - started:.0f} s)"
        )

    out: list[str] = []

    def emit(text: str = "") -> None:
        out.append(text)
        print(text)

    ov = args.overhead
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    emit("# Chunk size measurements (tools/measure_chunking.py)")
    emit()
    emit(
        f"Measured {today} on {platform.node() or 'host'} ({os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, fastcdc (compiled) via chunkstore.chunker, "
        f"zstandard {zstandard.__version__}). Parameter sets: min = avg/4, max = 4*avg. "
        f"Metadata assumed {ov} bytes per unique object (index entry + tree reference). "
        + (
            "Every unique chunk was compressed (no sampling)."
            if args.sample >= 1
            else f"Compressed sizes are ESTIMATED from a {args.sample:.0%} sample of unique chunks "
            "(chosen by hash) scaled to all unique bytes."
        )
    )
    emit()
    emit("## Corpus")
    emit()
    emit("Built with `tools/build_corpus` (mmdebstrap + umoci), description as written by it:")
    emit()
    emit("```")
    emit(corpus_description(args.corpus).rstrip())
    emit("```")
    emit()
    for line in package_summary(args.corpus):
        emit(line)
    emit()
    rows = []
    for im in images:
        sts = per_image[im.ref]
        rows.append(
            [
                f"`{im.ref}`",
                str(len(sts)),
                " + ".join(mib(s.blob_size) for s in sts),
                " + ".join(mib(s.tar_bytes) for s in sts),
                f"{sum(s.files for s in sts):,}",
                mib(sum(s.file_bytes for s in sts)),
                f"{sum(s.empty_files for s in sts):,}",
                f"{sum(s.whiteouts for s in sts):,}",
            ]
        )
    all_sts = list(m.layers.values())
    rows.append(
        [
            "**unique layers**",
            str(len(all_sts)),
            mib(sum(s.blob_size for s in all_sts)),
            mib(sum(s.tar_bytes for s in all_sts)),
            f"{sum(s.files for s in all_sts):,}",
            mib(sum(s.file_bytes for s in all_sts)),
            f"{sum(s.empty_files for s in all_sts):,}",
            f"{sum(s.whiteouts for s in all_sts):,}",
        ]
    )
    emit(
        table(
            [
                "image",
                "layers",
                "gzip blob MiB",
                "tar MiB",
                "files",
                "file MiB",
                "empty files",
                "whiteouts",
            ],
            rows,
        )
    )
    emit()
    emit(
        '"files" are non-empty regular files (whiteouts and empty files excluded); an image\'s '
        "files are those of all its layers."
    )
    emit()
    emit("### File sizes (corpus-unique files)")
    emit()
    sizes = list(m.all_files.values())
    total_unique = sum(sizes)
    rows = []
    for lo, hi, name in SIZE_BUCKETS:
        sel = [s for s in sizes if lo <= s < hi]
        rows.append(
            [
                name,
                f"{len(sel):,}",
                f"{100 * len(sel) / len(sizes):.1f}%",
                mib(sum(sel)),
                f"{100 * sum(sel) / total_unique:.1f}%",
            ]
        )
    emit(table(["file size", "files", "% files", "MiB", "% bytes"], rows))
    emit()

    emit("## (a) Each image alone")
    emit()
    emit(
        'Dedup within the image only (across its files and layers). "stored" = zstd-3 of the '
        f'unique objects + {ov} B metadata per unique object; "references" = chunk references '
        "in the image's trees = requests to read every file once through a lazy mount that "
        'fetches chunk by chunk; "vs 64K" compares stored bytes with the current default. '
        "For whole layers, the zstd column is the whole layer tar compressed as one stream."
    )
    emit()
    emit("Stored MiB per image alone (details below):")
    emit()
    rows = []
    for im in images:
        tot = m.totals([per_image[im.ref]])
        rows.append([f"`{im.ref}`"] + [mib(t.stored(ov)) for t in tot.values()])
    emit(table(["image"] + [k if k.startswith("whole") else f"avg {k}" for k in tot], rows))
    emit()
    for im in images:
        emit(f"### `{im.ref}`")
        emit()
        tot = m.totals([per_image[im.ref]])
        emit(table(METHOD_HEADERS, method_rows(tot, ov, CURRENT_DEFAULT)))
        emit()

    emit("## (b) Whole corpus together")
    emit()
    corpus_tot = m.totals([per_image[im.ref] for im in images])
    emit(table(METHOD_HEADERS, method_rows(corpus_tot, ov, CURRENT_DEFAULT)))
    emit()
    gz_unique = sum(s.blob_size for s in all_sts)
    gz_all = sum(s.blob_size for im in images for s in per_image[im.ref])
    emit(
        f"For comparison, the gzip'd layer blobs as a registry stores them: {mib(gz_unique)} MiB "
        f"for the unique blobs ({mib(gz_all)} MiB without any dedup)."
    )
    emit()

    emit("## Storage each image adds, stored in this order")
    emit()
    emit(
        f"Stored MiB (zstd-3 + {ov} B per new object) that each image adds to a store holding "
        "the images above it; the last row is the total."
    )
    emit()
    methods = list(corpus_tot)
    rows = []
    prev = {k: 0 for k in methods}
    added: dict[str, dict[str, int]] = {}
    for n in range(1, len(images) + 1):
        tot = m.totals([per_image[im.ref] for im in images[:n]])
        cur = {k: tot[k].stored(ov) for k in methods}
        added[images[n - 1].ref] = {k: cur[k] - prev[k] for k in methods}
        rows.append([f"+ `{images[n - 1].ref}`"] + [mib2(cur[k] - prev[k]) for k in methods])
        prev = cur
    rows.append(["**total**"] + [mib2(prev[k]) for k in methods])
    emit(table(["image"] + [k if k.startswith("whole") else f"avg {k}" for k in methods], rows))
    emit()

    update_pair = ("bookworm-python3-point", "bookworm-python3")
    update_totals: list[int] | None = None
    update_kinds: dict[str, tuple[int, int, list[int]]] = {}
    if all(ref in per_image for ref in update_pair):
        old_ref, new_ref = update_pair
        rows, update_totals, n_changed, changed_bytes, kinds = update_diff(
            m, per_image[old_ref], per_image[new_ref], ov, args.top
        )
        emit(f"## A security update: `{old_ref}` -> `{new_ref}`")
        emit()
        emit(
            f"The same packages, {n_changed:,} files ({mib(changed_bytes)} MiB) changed by the "
            "point release -> -updates/-security upgrades listed above. New stored KiB (zstd-3 + "
            f"{ov} B per new object) of the largest changed files when `{new_ref}` is stored next "
            f"to `{old_ref}` (only the chunks not already stored count):"
        )
        emit()
        rows.append(
            ["**all changed files**", f"{changed_bytes / KIB:,.0f}"]
            + [f"**{t / KIB:,.0f}**" for t in update_totals]
        )
        emit(table(["file", "size KiB", "whole file"] + [f"avg {k}" for k, _ in PARAM_SETS], rows))
        emit()
        emit("The same, by kind of file (new stored KiB):")
        emit()
        krows = [
            [kind, f"{n:,}", f"{b / KIB:,.0f}"] + [f"{c / KIB:,.0f}" for c in costs]
            for kind, (n, b, costs) in sorted(kinds.items(), key=lambda kv: -kv[1][1])
        ]
        emit(
            table(
                ["kind", "files", "size KiB", "whole file"] + [f"avg {k}" for k, _ in PARAM_SETS],
                krows,
            )
        )
        emit()
        update_kinds = kinds

    emit("## Chunk counts, sizes and lazy-mount cost (whole corpus)")
    emit()
    rows = []
    for i, (label, params) in enumerate(PARAM_SETS):
        t = corpus_tot[label]
        multi = sum(1 for s in m.all_files.values() if s > params.min_size)
        rows.append(
            [
                f"{_label(params.min_size)}/{label}/{_label(params.max_size)}",
                f"{t.objects:,}",
                f"{t.refs:,}",
                f"{t.unique_bytes / t.objects / KIB:.1f}",
                f"{m.byte_weighted_chunk_size(i) / KIB:.0f}",
                f"{100 * (1 - t.compressed / t.unique_bytes):.1f}%",
                f"{multi:,}",
            ]
        )
    emit(
        table(
            [
                "min/avg/max",
                "unique chunks",
                "chunk references",
                "mean chunk KiB",
                "chunk holding a random byte, mean KiB",
                "zstd saving on unique bytes",
                "files above min (can split)",
            ],
            rows,
        )
    )
    emit()
    emit(
        '"chunk holding a random byte" (sum of size^2 / sum of size over unique chunks) is the '
        "read amplification of a small random read through a chunk-fetching lazy mount."
    )
    emit()

    ref_img = next((im for im in images if im.ref == args.throughput_ref), images[0])
    log(f"throughput on {ref_img.ref} ({args.repeat} runs)...")
    nfiles, nbytes, tp = throughput(layout, ref_img.layers[0], args.repeat)
    emit("## Throughput (one core)")
    emit()
    emit(
        f"Files of `{ref_img.ref}`'s first layer ({nfiles:,} files, {mib(nbytes)} MiB), each "
        f'chunked on its own, best of {args.repeat} runs; MB = 10^6 bytes. "stream" is '
        "`Chunker(params).chunks(io.BytesIO(data))` per file (the streaming path, default "
        '8 MiB buffer), "in memory" is `chunk_bytes(data)` (same cuts, checked). "sha256" '
        "hashes the chunks. zstd-3 is the compression of the corpus' unique chunks during "
        "the main pass (one Compressor per chunk). The machine was shared with other work, so "
        "expect some noise."
    )
    emit()
    rows = []
    for i, (label, params) in enumerate(PARAM_SETS):
        s, mem, h = tp[i]
        zs = (
            m.compress_bytes[i] / m.compress_seconds[i] / 1e6
            if m.compress_seconds[i]
            else float("nan")
        )
        rows.append(
            [
                f"{_label(params.min_size)}/{label}/{_label(params.max_size)}",
                f"{s:,.0f}",
                f"{mem:,.0f}",
                f"{h:,.0f}",
                f"{zs:,.0f}",
            ]
        )
    emit(
        table(
            [
                "min/avg/max",
                "chunk, stream MB/s",
                "chunk, in memory MB/s",
                "sha256 MB/s",
                "zstd-3 MB/s",
            ],
            rows,
        )
    )
    emit()
    emit(f"_(measurement took {time.perf_counter() - started:.0f} s)_")
    emit()

    emit(
        recommendation(m, images, per_image, corpus_tot, added, update_totals, update_kinds, tp, ov)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(out) + "\n")
    tmp.replace(args.out)
    log(f"wrote {args.out}")
    return 0


def recommendation(
    m: Measurer,
    images: list[Image],
    per_image: dict[str, list[LayerStats]],
    corpus: dict[str, Totals],
    added: dict[str, dict[str, int]],
    update: list[int] | None,
    kinds: dict[str, tuple[int, int, list[int]]],
    tp: list[tuple[float, float, float]],
    ov: int,
) -> str:
    """The recommendation paragraph, its numbers taken from this run.

    The verdict follows one stated rule: keep the current default when its corpus-wide stored
    bytes are within 2% of the best parameter set's; the trade-offs are then spelled out.
    """
    labels = [k for k, _ in PARAM_SETS]
    idx = {k: i for i, k in enumerate(labels)}
    cur = CURRENT_DEFAULT
    stored = {k: corpus[k].stored(ov) for k in labels}
    best = min(labels, key=lambda k: stored[k])
    gap = (stored[cur] - stored[best]) / stored[best]
    spread = (max(stored.values()) - min(stored.values())) / stored[cur]
    small, large = labels[0], "128K" if "128K" in labels else labels[-1]

    def pct(a: float, b: float) -> str:
        return f"{100 * (a - b) / b:+.0f}%"

    parts = []
    if gap <= 0.02:
        parts.append(
            f"**Keep the default at 16K/64K/256K.** On this corpus every chunk size from "
            f"{labels[0]} to {labels[-1]} stores the same within {100 * spread:.1f}% "
            f"({mib(min(stored.values()))}-{mib(max(stored.values()))} MiB including "
            f"{ov} B/chunk metadata; whole-file dedup alone: "
            f"{mib(corpus['whole file'].stored(ov))} MiB; whole-layer dedup: "
            f"{mib(corpus['whole layer'].stored(ov))} MiB), so the choice is decided by "
            "per-chunk costs and by updates, not by raw dedup."
        )
    else:
        parts.append(
            f"**Reconsider the default:** avg {best} stores {100 * gap:.1f}% less than the "
            f"current avg {cur} on this corpus ({mib(stored[best])} vs {mib(stored[cur])} MiB)."
        )
    same = [ref for ref in ("bookworm-python3-rebuilt", "bookworm-python3-layered") if ref in added]
    if same:
        zero = all(added[ref][k] == 0 for ref in same for k in [*labels, "whole file"])
        parts.append(
            "Rebuilt and re-layered images ("
            + ", ".join(f"`{r}`" for r in same)
            + ") add "
            + ("nothing" if zero else "almost nothing")
            + " at any chunk size, and already nothing with whole-file dedup (whole-layer "
            "dedup stores them again: "
            + " + ".join(f"{mib(added[r]['whole layer'])}" for r in same)
            + " MiB): "
            "identical files are the bulk of the win, and "
            f"{100 * sum(1 for v in m.all_files.values() if v < 16 * KIB) / len(m.all_files):.0f}%"
            " of the files are below 16 KiB, i.e. one chunk at any setting."
        )
    if update is not None:
        wf, u = update[0], {k: update[1 + idx[k]] for k in labels}
        text = (
            "Chunk size matters only for files that changed between package versions: a "
            f"security update of the python3 image stores {mib(u[small])} MiB at avg {small}, "
            f"{mib(u[cur])} MiB at avg {cur}, {mib(u[large])} MiB at avg {large} and "
            f"{mib(wf)} MiB with whole files ({pct(u[small], u[cur])} / "
            f"{pct(u[large], u[cur])} vs {cur}; avg {cur} gets "
            f"{100 * (wf - u[cur]) / (wf - u[small]):.0f}% of avg {small}'s saving over whole "
            "files)"
        )
        if kinds:
            saving = {k: v[2][0] - v[2][1 + idx[small]] for k, v in kinds.items()}
            top_kind = max(saving, key=lambda k: saving[k])
            bins = kinds.get("executables and shared libraries")
            text += (
                f"; {100 * saving[top_kind] / max(1, wf - u[small]):.0f}% of avg {small}'s "
                f"saving is in {top_kind}"
            )
            if top_kind.startswith("Python bytecode"):
                text += (
                    " (a timestamp-based .pyc differs from its predecessor only in the source "
                    "mtime in its 16-byte header when the package is rebuilt with an identical "
                    ".py, so only chunking can share the rest, and only of .pyc files larger "
                    "than min_size)"
                )
            if bins is not None:
                text += (
                    f", while rebuilt executables and libraries shrink only from "
                    f"{mib(bins[2][0])} to {mib(bins[2][1 + idx[small]])} MiB"
                )
        parts.append(text + ".")
    if "trixie-minbase" in added:
        t = added["trixie-minbase"]
        parts.append(
            f"A new release (trixie-minbase next to bookworm) adds {mib(t[small])} / "
            f"{mib(t[cur])} / {mib(t[large])} MiB at avg {small}/{cur}/{large} "
            f"({mib(t['whole file'])} MiB whole-file)."
        )
    rs, rc, rl = corpus[small], corpus[cur], corpus[large]
    parts.append(
        f"Against those savings, avg {small} needs {rs.objects / rc.objects:.1f}x the unique "
        f"chunks (index entries: {rs.objects:,} vs {rc.objects:,}) and "
        f"{rs.refs / rc.refs:.1f}x the chunk references, i.e. requests for a lazy mount that "
        f"reads every file ({rs.refs:,} vs {rc.refs:,}; one per file would be "
        f"{corpus['whole file'].refs:,}), and compresses slightly worse "
        f"({100 * (1 - rs.compressed / rs.unique_bytes):.1f}% vs "
        f"{100 * (1 - rc.compressed / rc.unique_bytes):.1f}% zstd saving). Going up to avg "
        f"{large} saves only {100 * (1 - rl.refs / rc.refs):.0f}% of the references and "
        f"{100 * (1 - rl.objects / rc.objects):.0f}% of the chunks but raises the data a small "
        f"random read fetches from ~{m.byte_weighted_chunk_size(idx[cur]) / KIB:.0f} KiB to "
        f"~{m.byte_weighted_chunk_size(idx[large]) / KIB:.0f} KiB and gives back part of the "
        f"update savings. Avg {cur} keeps the references at "
        f"{rc.refs / corpus['whole file'].refs:.2f}x one per file ({small}: "
        f"{rs.refs / corpus['whole file'].refs:.2f}x) and its metadata at "
        f"{100 * ov * rc.objects / rc.stored(ov):.1f}% of the stored bytes. A store dominated by "
        "many successive security rebuilds of the same images could justify avg 32K (see the "
        "update table); nothing here argues for going larger."
    )
    per_img_loss = []
    for im in images:
        tot = m.totals([per_image[im.ref]])
        per_img_loss.append(1 - tot["whole layer"].compressed / tot[cur].compressed)
    s_cur, mem_cur = tp[idx[cur]][0], tp[idx[cur]][1]
    parts.append(
        "Bigger levers than the chunk size: compressing each chunk on its own costs "
        f"{100 * min(per_img_loss):.0f}-{100 * max(per_img_loss):.0f}% per image against "
        "zstd-3 over the whole layer tar (mostly small files compressed alone - whole-file "
        "compression loses nearly as much), which packing small chunks into one compressed "
        f"frame or a zstd dictionary would recover; and `Chunker.chunks()` runs at "
        f"{s_cur:,.0f} MB/s per file against {mem_cur:,.0f} MB/s for `chunk_bytes()` on the "
        "same files, because each call allocates and zero-fills its 8 MiB read buffer - for "
        "file-aligned chunking of mostly small files, size the buffer to the file (or reuse it)."
    )
    return "## Recommendation\n\n" + " ".join(parts)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
