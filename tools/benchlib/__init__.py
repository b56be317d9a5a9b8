"""The benchmark kit shared by ``tools/bench_*.py``, ``measure_chunking.py`` and ``scale_sim.py``.

* :mod:`benchlib.common` -- the project root, units, ``log()``, the chunkstore command, a clean
  environment for the tools measured, work directories;
* :mod:`benchlib.measure` -- one measured run (wall time, peak RSS, CPU time, the CPU the rest of
  the machine used meanwhile) of a command or of a callable, waiting for a quiet machine, the page
  cache made cold (or warm) before each run, disk usage;
* :mod:`benchlib.corpus` -- the Debian corpus of ``tools/build_corpus``, read through the
  project's own :class:`chunkstore.images.oci_layout.OCILayout`;
* :mod:`benchlib.report` -- tables (aligned text or Markdown), target verdicts, the machine and
  version header, and the final report (text, failures, JSON).

The registry the benchmarks push to is started by :mod:`chunkstore.testing.registry_server`, the
launcher the integration tests use too. Scripts run as ``.venv/bin/python tools/NAME.py``: their
directory is on ``sys.path``, so ``from benchlib.measure import run_measured`` just works.
"""

from __future__ import annotations

__all__: list[str] = []
