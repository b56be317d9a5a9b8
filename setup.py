"""Native extensions of chunkstore, built by the package's own build (``pip install .``).

Every ``chunkstore/native/_NAME.c`` becomes the module ``chunkstore.native._NAME``; the C files of
``chunkstore/native/NAME/`` (if that directory exists) are compiled into it as well. Everything
else about the package is in pyproject.toml. To rebuild in place while developing:
``CHUNKSTORE_NATIVE_ONLY=NAME .venv/bin/python setup.py build_ext --inplace``.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup

_NATIVE = Path("chunkstore/native")


def _extensions() -> list[Extension]:
    out = []
    # CHUNKSTORE_NATIVE_ONLY=a,b builds only _a and _b (a developer rebuilding one module).
    only = {n for n in os.environ.get("CHUNKSTORE_NATIVE_ONLY", "").split(",") if n}
    for main in sorted(_NATIVE.glob("_*.c")):
        if only and main.stem.lstrip("_") not in only:
            continue
        extra = sorted((_NATIVE / main.stem.lstrip("_")).glob("*.c"))
        out.append(
            Extension(
                f"chunkstore.native.{main.stem}",
                [str(p) for p in (main, *extra)],
                extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function"],
                libraries=["z"],
            )
        )
    return out


setup(ext_modules=_extensions())
