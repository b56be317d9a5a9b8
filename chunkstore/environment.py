"""A read-only copy of the process environment that never shows its values.

The command line is the only reader of ``os.environ`` (tests/test_architecture.py); it hands the
rest of the code an :class:`Environment`, because the environment holds passwords
(``CHUNKSTORE_PASSWORD``, ``CHUNKSTORE_REGISTRY_PASSWORD``, cloud tokens, ...). Its ``repr`` and
``str`` name how many variables it holds and nothing else, so an object that carries it (such as
``RemoteOptions``), a log line, or a traceback rendered with its local variables (Python's
``capture_locals``, rich's ``show_locals``, pytest's ``--showlocals``) cannot print a secret.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

__all__ = ["Environment"]


class Environment(Mapping[str, str]):
    """An immutable ``Mapping`` of environment variables whose ``repr`` shows no value."""

    __slots__ = ("_vars",)

    def __init__(self, variables: Mapping[str, str] | None = None) -> None:
        """Copy ``variables`` (nothing is read from the process here)."""
        self._vars: dict[str, str] = dict(variables or {})

    def __getitem__(self, name: str) -> str:
        """The value of ``name``; ``KeyError`` naming the variable (never a value) if unset."""
        return self._vars[name]

    def __iter__(self) -> Iterator[str]:
        """The variable names."""
        return iter(self._vars)

    def __len__(self) -> int:
        """How many variables."""
        return len(self._vars)

    def __repr__(self) -> str:
        """``Environment(variables=n)``: no name, no value."""
        return f"Environment(variables={len(self._vars)})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[type[Environment], tuple[dict[str, str]]]:
        """Pickling keeps the variables (a child process may need them); printing never does."""
        return (Environment, (self._vars,))
