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
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

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
    "bookworm-python3",
    "bookworm-python3-rebuilt",
    "bookworm-python3-layered",
    "trixie-minbase",
]
REF_ANNOTATION = "org.opencontainers.image.ref.name"
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


@dataclass
class Image:
    ref: str
    manifest_digest: str
    layers: list[Layer]


def read_layout(layout: Path) -> list[Image]:
    index = json.loads((layout / "index.json").read_text())
    images = []
    for desc in index.get("manifests", []):
        ref = (desc.get("annotations") or {}).get(REF_ANNOTATION)
        if not ref or ref.startswith("tmp-"):
            continue
        manifest = json.loads(blob_path(layout, desc["digest"]).read_text())
        layers = [Layer(d["digest"], d["mediaType"], d["size"]) for d in manifest["layers"]]
        images.append(Image(ref, desc["digest"], layers))
    rank = {ref: i for i, ref in enumerate(PREFERRED_ORDER)}
    images.sort(key=lambda im: (rank.get(im.ref, len(rank)), im.ref))
    return images


def blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexpart = digest.partition(":")
    return layout / "blobs" / algo / hexpart


class _TarTee(io.RawIOBase):
    """Reads the decompressed layer tar, counting it and feeding a zstd-3 stream (baseline)."""

    def __init__(self, inner: BinaryIO, level: int) -> None:
        self._inner = inner
        self._z = zstandard.ZstdCompressor(level=level).compressobj()
        self.tar_bytes = 0
        self.zstd_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(b))
        n = len(data)
        b[:n] = data
        self.tar_bytes += n
        if n:
            self.zstd_bytes += len(self._z.compress(data))
        return n

    def finish(self) -> None:
        self.zstd_bytes += len(self._z.flush())


def open_layer_stream(path: Path, media_type: str) -> BinaryIO:
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller through the wrapper
    if media_type.endswith("+gzip") or media_type.endswith(".gzip"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if media_type.endswith("+zstd"):
        return zstandard.ZstdDecompressor().stream_reader(raw)  # type: ignore[return-value]
    if media_type.endswith(".tar") or media_type.endswith("layer.v1.tar"):
        return raw
    raise SystemExit(f"unsupported layer media type {media_type}")


def iter_files(layout: Path, layer: Layer, level: int) -> Iterable[tuple[str, bytes] | _TarTee]:
    """(path, content) of each regular file of the layer; finally the tee with the tar counts."""
    stream = open_layer_stream(blob_path(layout, layer.digest), layer.media_type)
    tee = _TarTee(stream, level)
    with stream:
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
        sizes = [s for st in self.layers.values() for s in st.chunk_sets[i].values()]
        seen: dict[bytes, int] = {}
        for st in self.layers.values():
            seen.update(st.chunk_sets[i])
        sizes = list(seen.values())
        return sum(s * s for s in sizes) / sum(sizes) if sizes else 0.0


def throughput(
    layout: Path, layer: Layer, repeat: int
) -> tuple[int, int, list[tuple[float, float, float]]]:
    """(files, bytes, per parameter set (stream MB/s, in-memory MB/s, sha256 MB/s))."""
    files = [data for item in iter_files(layout, layer, 1) if isinstance(item, tuple)
             for data in [item[1]] if data]
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


# --------------------------------------------------------------------------------------------
# Reporting


def mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def mib2(n: float) -> str:
    return f"{n / MIB:,.2f}"


def table(headers: list[str], rows: list[list[str]], align: str = "") -> str:
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def method_rows(tot: dict[str, Totals], overhead: int, ref_label: str) -> list[list[str]]:
    rows = []
    ref = tot[ref_label].stored(overhead)
    for method, t in tot.items():
        stored = t.stored(overhead)
        rows.append([
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
        ])
    return rows


METHOD_HEADERS = [
    "method", "file MiB", "unique MiB", "dedup", "unique objects", "references",
    "zstd-3 MiB", "metadata MiB", "stored MiB", "vs 64K",
]


def corpus_description(corpus: Path) -> str:
    desc = corpus / "CORPUS.txt"
    if desc.exists():
        return desc.read_text()
    return f"(no {desc}: corpus not built by tools/build_corpus)\n"


def package_summary(corpus: Path) -> list[str]:
    lines = []
    rootfs = corpus / "rootfs"
    lists = {p.stem: set(p.read_text().split()) for p in sorted(rootfs.glob("*.packages"))}
    base = lists.get("bookworm-minbase")
    for name, pkgs in lists.items():
        line = f"* `{name}`: {len(pkgs)} packages"
        if base is not None and name != "bookworm-minbase" and name.startswith("bookworm"):
            added = sorted(p.split("=")[0] for p in pkgs - base)
            removed = sorted(p.split("=")[0] for p in base - pkgs)
            line += f"; over bookworm-minbase adds {len(added)}: {', '.join(added)}"
            if removed:
                line += f"; differs in {', '.join(removed)}"
        lines.append(line)
    if "bookworm-python3" in lists and "bookworm-python3-rebuilt" in lists:
        same = lists["bookworm-python3"] == lists["bookworm-python3-rebuilt"]
        lines.append(
            "* `bookworm-python3-rebuilt` has "
            + ("exactly the same package versions as" if same else "DIFFERENT package versions from")
            + " `bookworm-python3`"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", nargs="?", default=DEFAULT_CORPUS, type=Path)
    ap.add_argument("--out", default=DEFAULT_OUT, type=Path, help="markdown results file")
    ap.add_argument("--overhead", type=int, default=80, help="metadata bytes per unique object")
    ap.add_argument("--level", type=int, default=3, help="zstd level")
    ap.add_argument("--sample", type=float, default=1.0,
                    help="fraction of unique chunks to compress (by hash); 1 = all")
    ap.add_argument("--repeat", type=int, default=3, help="throughput runs (best is kept)")
    ap.add_argument("--throughput-ref", default="bookworm-python3",
                    help="image whose first layer's files are the throughput sample")
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
        print(f"read {im.ref}: {len(im.layers)} layer(s), "
              f"{sum(s.files for s in per_image[im.ref]):,} files, "
              f"{mib(sum(s.file_bytes for s in per_image[im.ref]))} MiB "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    out: list[str] = []

    def emit(text: str = "") -> None:
        out.append(text)
        print(text)

    ov = args.overhead
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    emit("# Chunk size measurements (tools/measure_chunking.py)")
    emit()
    emit(f"Measured {today} on {platform.node() or 'host'} ({os.cpu_count()} CPUs, "
         f"Python {platform.python_version()}, fastcdc (compiled) via chunkstore.chunker, "
         f"zstandard {zstandard.__version__}). Parameter sets: min = avg/4, max = 4*avg. "
         f"Metadata assumed {ov} bytes per unique object (index entry + tree reference). "
         + ("Every unique chunk was compressed (no sampling)."
            if args.sample >= 1 else
            f"Compressed sizes are ESTIMATED from a {args.sample:.0%} sample of unique chunks "
            "(chosen by hash) scaled to all unique bytes."))
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
        rows.append([
            f"`{im.ref}`", str(len(sts)), " + ".join(mib(s.blob_size) for s in sts),
            " + ".join(mib(s.tar_bytes) for s in sts), f"{sum(s.files for s in sts):,}",
            mib(sum(s.file_bytes for s in sts)),
            f"{sum(s.empty_files for s in sts):,}", f"{sum(s.whiteouts for s in sts):,}",
        ])
    all_sts = list(m.layers.values())
    rows.append([
        "**unique layers**", str(len(all_sts)), mib(sum(s.blob_size for s in all_sts)),
        mib(sum(s.tar_bytes for s in all_sts)), f"{sum(s.files for s in all_sts):,}",
        mib(sum(s.file_bytes for s in all_sts)), f"{sum(s.empty_files for s in all_sts):,}",
        f"{sum(s.whiteouts for s in all_sts):,}",
    ])
    emit(table(["image", "layers", "gzip blob MiB", "tar MiB", "files", "file MiB",
                "empty files", "whiteouts"], rows))
    emit()
    emit("\"files\" are non-empty regular files (whiteouts and empty files excluded); an image's "
         "files are those of all its layers.")
    emit()
    emit("### File sizes (corpus-unique files)")
    emit()
    sizes = list(m.all_files.values())
    total_unique = sum(sizes)
    rows = []
    for lo, hi, name in SIZE_BUCKETS:
        sel = [s for s in sizes if lo <= s < hi]
        rows.append([name, f"{len(sel):,}", f"{100 * len(sel) / len(sizes):.1f}%",
                     mib(sum(sel)), f"{100 * sum(sel) / total_unique:.1f}%"])
    emit(table(["file size", "files", "% files", "MiB", "% bytes"], rows))
    emit()

    emit("## (a) Each image alone")
    emit()
    emit("Dedup within the image only (across its files and layers). \"stored\" = zstd-3 of the "
         f"unique objects + {ov} B metadata per unique object; \"references\" = chunk references "
         "in the image's trees = requests to read every file once through a lazy mount that "
         "fetches chunk by chunk; \"vs 64K\" compares stored bytes with the current default. "
         "For whole layers, the zstd column is the whole layer tar compressed as one stream.")
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
    emit(f"For comparison, the gzip'd layer blobs as a registry stores them: {mib(gz_unique)} MiB "
         f"for the unique blobs ({mib(gz_all)} MiB without any dedup).")
    emit()

    emit("## Storage each image adds, stored in this order")
    emit()
    emit(f"Stored MiB (zstd-3 + {ov} B per new object) that each image adds to a store holding "
         "the images above it; the last row is the total.")
    emit()
    methods = list(corpus_tot)
    rows = []
    prev = {k: 0 for k in methods}
    for n in range(1, len(images) + 1):
        tot = m.totals([per_image[im.ref] for im in images[:n]])
        cur = {k: tot[k].stored(ov) for k in methods}
        new_objs = {k: tot[k].objects for k in methods}
        rows.append([f"+ `{images[n - 1].ref}`"] + [mib2(cur[k] - prev[k]) for k in methods])
        prev = cur
        del new_objs
    rows.append(["**total**"] + [mib2(prev[k]) for k in methods])
    emit(table(["image"] + [k if k.startswith("whole") else f"avg {k}" for k in methods], rows))
    emit()

    emit("## Chunk counts, sizes and lazy-mount cost (whole corpus)")
    emit()
    rows = []
    for i, (label, params) in enumerate(PARAM_SETS):
        t = corpus_tot[label]
        multi = sum(1 for s in m.all_files.values() if s > params.min_size)
        rows.append([
            f"{_label(params.min_size)}/{label}/{_label(params.max_size)}",
            f"{t.objects:,}", f"{t.refs:,}", f"{t.unique_bytes / t.objects / KIB:.1f}",
            f"{m.byte_weighted_chunk_size(i) / KIB:.0f}",
            f"{100 * (1 - t.compressed / t.unique_bytes):.1f}%",
            f"{multi:,}",
        ])
    emit(table(["min/avg/max", "unique chunks", "chunk references", "mean chunk KiB",
                "chunk holding a random byte, mean KiB", "zstd saving on unique bytes",
                "files above min (can split)"], rows))
    emit()
    emit("\"chunk holding a random byte\" (sum of size^2 / sum of size over unique chunks) is the "
         "read amplification of a small random read through a chunk-fetching lazy mount.")
    emit()

    ref_img = next((im for im in images if im.ref == args.throughput_ref), images[0])
    print(f"throughput on {ref_img.ref} ({args.repeat} runs)...", file=sys.stderr)
    nfiles, nbytes, tp = throughput(layout, ref_img.layers[0], args.repeat)
    emit("## Throughput (one core)")
    emit()
    emit(f"Files of `{ref_img.ref}`'s first layer ({nfiles:,} files, {mib(nbytes)} MiB), each "
         f"chunked on its own, best of {args.repeat} runs; MB = 10^6 bytes. \"stream\" is "
         "`Chunker(params).chunks(io.BytesIO(data))` per file (the streaming path, default "
         "8 MiB buffer), \"in memory\" is `chunk_bytes(data)` (same cuts, checked). \"sha256\" "
         "hashes the chunks. zstd-3 is the compression of the corpus' unique chunks during "
         "the main pass (one Compressor per chunk). The machine was shared with other work, so "
         "expect some noise.")
    emit()
    rows = []
    for i, (label, params) in enumerate(PARAM_SETS):
        s, mem, h = tp[i]
        zs = (m.compress_bytes[i] / m.compress_seconds[i] / 1e6
              if m.compress_seconds[i] else float("nan"))
        rows.append([f"{_label(params.min_size)}/{label}/{_label(params.max_size)}",
                     f"{s:,.0f}", f"{mem:,.0f}", f"{h:,.0f}", f"{zs:,.0f}"])
    emit(table(["min/avg/max", "chunk, stream MB/s", "chunk, in memory MB/s", "sha256 MB/s",
                "zstd-3 MB/s"], rows))
    emit()
    emit(f"_(measurement took {time.perf_counter() - started:.0f} s)_")
    emit()

    rec_path = args.out.with_name("chunking.recommendation.md")
    recommendation = RECOMMENDATION_HEADER
    emit(recommendation)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(out) + "\n")
    tmp.replace(args.out)
    del rec_path
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


RECOMMENDATION_HEADER = "## Recommendation\n\n(see below)"


if __name__ == "__main__":
    try:
        subprocess  # noqa: B018 - kept for future mmdebstrap version probes
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
