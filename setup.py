"""Native extensions of chunkstore, built by the package's own build (``pip install .``).

Every ``chunkstore/native/_NAME.c`` becomes the module ``chunkstore.native._NAME``; the C files of
``chunkstore/native/NAME/`` (if that directory exists) are compiled into it as well. Everything
else about the package is in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import Extension, setup

_NATIVE = Path("chunkstore/native")


def _extensions() -> list[Extension]:
    out = []
    for main in sorted(_NATIVE.glob("_*.c")):
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
