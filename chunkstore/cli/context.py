"""Shared state of the command line: the :class:`Ctx` object, ``pass_ctx`` and small helpers.

:class:`Ctx` resolves the repository, cache directory and remote options from the options and the
environment (``CHUNKSTORE_REPO``, ``CHUNKSTORE_CACHE``, ``CHUNKSTORE_PASSWORD``,
``XDG_DATA_HOME``/``XDG_CACHE_HOME``), prompts for passwords, and writes results and progress.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from chunkstore import api
from chunkstore.backends import BackendHooks, RemoteOptions
from chunkstore.environment import Environment
from chunkstore.errors import UsageError
from chunkstore.repository import Repository
from chunkstore.testing.crashpoints import crash_hooks, crash_point_from

__all__ = ["Ctx", "ProgressBar", "parse_size", "pass_ctx"]


class Ctx:
    """Per-invocation state: where the repository is, how to reach it, how to write output."""

    def __init__(
        self, repo: str | None, cache_dir: str | None, as_json: bool, plain_http: bool = False
    ) -> None:
        env = Environment(os.environ)  # a copy that never prints its values (passwords)
        data_home = Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        cache_home = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.location = repo or env.get("CHUNKSTORE_REPO") or str(data_home / "chunkstore" / "repo")
        self.cache_dir = Path(cache_dir or env.get("CHUNKSTORE_CACHE") or cache_home / "chunkstore")
        self.as_json = as_json
        self.remote = RemoteOptions(env=env, plain_http=plain_http)
        # Testing: CHUNKSTORE_CRASH_AT kills this process at a commit step (tests/reliability).
        point = crash_point_from(env)
        self.hooks: BackendHooks | None = crash_hooks(point) if point is not None else None
        self.err = Console(stderr=True)

    def password(
        self,
        *,
        confirm: bool = False,
        var: str = "CHUNKSTORE_PASSWORD",
        what: str = "Repository password",
    ) -> bytes:
        pw = os.environ.get(var)
        if pw is None:
            if not sys.stdin.isatty():
                raise UsageError(f"password needed: set {var} or run on a terminal")
            pw = click.prompt(what, hide_input=True, confirmation_prompt=confirm, err=True)
        return pw.encode("utf-8")

    def open_other(self, location: str, var: str, what: str) -> Repository:
        """Another repository (copy's destination, init's key source); password from ``var``."""
        return api.open_repository(
            location,
            cache_dir=self.cache_dir,
            password=lambda: self.password(var=var, what=what),
            remote=self.remote,
            hooks=self.hooks,
        )

    def open(self) -> Repository:
        return api.open_repository(
            self.location,
            cache_dir=self.cache_dir,
            password=self.password,
            remote=self.remote,
            hooks=self.hooks,
        )

    def emit(self, value: Any, text: str) -> None:
        if self.as_json:
            click.echo(json.dumps(value, indent=2, sort_keys=True))
        else:
            click.echo(text)

    def warn(self, msg: str) -> None:
        click.echo(f"chunkstore: note: {msg}", err=True)

    def say(self, msg: str) -> None:
        if not self.as_json and sys.stderr.isatty():
            self.err.print(f"[dim]{msg}[/dim]")

    @contextmanager
    def bytes_progress(self, total: int | None, label: str) -> Iterator[ProgressBar]:
        """A bar on a terminal (nothing otherwise): call it with bytes done; ``total`` may come later."""
        if not sys.stderr.isatty():
            yield ProgressBar(lambda _n: None, lambda _n: None)
            return
        columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=self.err, transient=True) as prog:
            task = prog.add_task(label, total=total)
            yield ProgressBar(lambda n: prog.advance(task, n), lambda n: prog.update(task, total=n))


class ProgressBar:
    """``bar(n)``: ``n`` more bytes done; ``bar.set_total(n)``: the total, once it is known."""

    __slots__ = ("_advance", "set_total")

    def __init__(self, advance: Callable[[int], None], set_total: Callable[[int], None]) -> None:
        """Report through ``advance`` and ``set_total``."""
        self._advance = advance
        self.set_total = set_total

    def __call__(self, n: int) -> None:
        """``n`` more bytes done."""
        self._advance(n)


pass_ctx = click.make_pass_decorator(Ctx)
"""Decorator passing the command's :class:`Ctx` as its first argument."""


def parse_size(text: str) -> int:
    """``64K``, ``16M``, ``2GiB`` ... as bytes (a usage error otherwise)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        return int(t[: len(t) - len(unit)] if unit else t) * units[unit]
    except ValueError:
        raise click.BadParameter(f"not a size: {text!r} (use e.g. 64K, 16M)") from None
