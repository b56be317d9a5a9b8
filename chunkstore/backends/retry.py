"""A wrapper that retries a backend's ``Transient`` failures with exponential backoff.

Remote storage fails now and then (a dropped connection, a 503); such failures are raised as
``Transient`` by the backend and are worth retrying. Everything else (``NotFound``, ``UsageError``,
``ShortRead``, other ``BackendError``) means retrying would give the same answer, so it passes
through at once. Attempts are bounded; the delay before attempt ``k + 1`` is
``min(max_delay, base_delay * 2 ** (k - 1))`` with "equal jitter" (between half and all of it), so
many clients that failed together do not retry in lockstep (restic's ``RetryBackend``).

Retrying is safe because of the backend contracts: re-saving identical bytes is harmless, so a save
whose success was lost in transit is simply confirmed by the next attempt.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from chunkstore.backends.base import Backend, FileInfo, FileType, Handle
from chunkstore.errors import Transient, UsageError

__all__ = ["RetryBackend"]

_T = TypeVar("_T")


class RetryBackend:
    """Wraps a backend and retries its ``Transient`` errors a bounded number of times."""

    __slots__ = ("_attempts", "_base_delay", "_inner", "_max_delay", "_rng", "_sleep")

    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """Retry ``inner``'s calls up to ``attempts`` times in all, sleeping via ``sleep``."""
        if attempts < 1:
            raise UsageError(f"attempts must be at least 1, not {attempts}")
        if base_delay < 0 or max_delay < 0:
            raise UsageError(f"retry delays must be >= 0, not {base_delay} and {max_delay}")
        self._inner = inner
        self._attempts = attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()

    @property
    def inner(self) -> Backend:
        """The wrapped backend."""
        return self._inner

    @property
    def location(self) -> str:
        """The wrapped backend's location."""
        return self._inner.location

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), jitter included."""
        full = min(self._max_delay, self._base_delay * 2.0 ** (attempt - 1))
        return full / 2 + self._rng.uniform(0, full / 2)

    def create(self) -> None:
        """Create the location, retrying transient failures."""
        self._call("create", self._inner.location, self._inner.create)

    def exists(self, handle: Handle) -> bool:
        """Whether the file exists, retrying transient failures."""
        return self._call("exists", handle, lambda: self._inner.exists(handle))

    def save(self, handle: Handle, data: bytes, *, overwrite: bool = False) -> None:
        """Save ``data``, retrying transient failures (safe: identical re-saves are no-ops)."""
        self._call("save", handle, lambda: self._inner.save(handle, data, overwrite=overwrite))

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        """Load a range, retrying transient failures."""
        return self._call("load", handle, lambda: self._inner.load(handle, offset, length))

    def stat(self, handle: Handle) -> FileInfo:
        """Stat a file, retrying transient failures."""
        return self._call("stat", handle, lambda: self._inner.stat(handle))

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        """List files, restarting the listing after a transient failure.

        Files already yielded before the failure are not yielded again, so each file still appears
        once. Attempts count across the whole listing.
        """
        seen: set[Handle] = set()
        attempt = 1
        while True:
            try:
                for info in self._inner.list(file_type):
                    if info.handle not in seen:
                        seen.add(info.handle)
                        yield info
                return
            except Transient as exc:
                self._after_failure("list", f"{file_type.value} files", attempt, exc)
                attempt += 1

    def remove(self, handle: Handle) -> None:
        """Remove a file, retrying transient failures.

        ``NotFound`` passes through like any other permanent error, even after a transient failure
        (whose attempt may, unknown to us, have removed the file).
        """
        self._call("remove", handle, lambda: self._inner.remove(handle))

    def close(self) -> None:
        """Close the wrapped backend (not retried)."""
        self._inner.close()

    def _call(self, op: str, what: object, fn: Callable[[], _T]) -> _T:
        """Run ``fn``, retrying ``Transient`` until it succeeds or attempts run out."""
        attempt = 1
        while True:
            try:
                return fn()
            except Transient as exc:
                self._after_failure(op, what, attempt, exc)
                attempt += 1

    def _after_failure(self, op: str, what: object, attempt: int, exc: Transient) -> None:
        """Sleep before the next attempt, or raise if ``attempt`` was the last one."""
        if attempt >= self._attempts:
            raise Transient(
                f"{op} {what} at {self._inner.location}: gave up after {attempt} attempts, "
                f"last error: {exc}; check the connection to the storage and run the command "
                f"again later"
            ) from exc
        self._sleep(self.delay(attempt))
