"""Exact reproduction of compressed layer blobs: which compressor made a blob, and doing it again.

* :mod:`.model`: the contract of a compressor family (candidates, streaming encoders);
* :mod:`.gzipfmt`: gzip member headers and trailers (RFC 1952);
* one module per family: :mod:`.zlib_family` (Python/Java/Node zlib), :mod:`.go_family` (Go's
  standard library), :mod:`.klauspost_family` (pgzip over klauspost flate: skopeo, podman, umoci),
  :mod:`.gnu_family` (GNU gzip, pigz), :mod:`.zstd_family` (libzstd);
* :mod:`.catalog`: every family, in the order the search tries them;
* :mod:`.probe`: the search itself, run on the layer as the backup reads it (no second pass).
"""

from __future__ import annotations

__all__: list[str] = []
