"""Access profiles: record which blobs a run touched, replay them right after the next mount.

Starting a program from a lazy mount waits for one round trip per chunk it touches, in order. Most
programs touch the same chunks every time they start, so ``chunkstore mount --record-profile FILE``
writes down every blob a run reads (tree blobs, chunk lists and file chunks, first touch only, in
order), and ``chunkstore mount --prefetch FILE`` fetches them all in the background as soon as the
file system is up, in big coalesced reads (up to 32 MiB per request), usually before the program
asks for them.

Profile format (JSON lines, UTF-8; written as the run goes, so an interrupted run keeps what it
recorded)::

    {"format": "chunkstore-profile", "version": 1}        first line
    {"id": "sha256:9f86d0...", "ms": 12}                   one line per blob, in first-touch order

``id`` is the blob id (``algorithm:hex``); ``ms`` the milliseconds since recording started
(informational). Readers ignore unknown keys, skip ids of another algorithm than the
repository's, and refuse other formats or versions. A profile holds blob ids only (no paths or
content); in an encrypted repository the ids are keyed MACs that reveal nothing on their own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from chunkstore import jsonsafe
from chunkstore.errors import UsageError
from chunkstore.mount.fetch import Fetcher
from index.errors import FormatError
from index.ids import Digest

__all__ = [
    "PROFILE_FORMAT",
    "PROFILE_VERSION",
    "ProfileRecorder",
    "read_profile",
    "replay_profile",
]

PROFILE_FORMAT = "chunkstore-profile"
PROFILE_VERSION = 1
#: Most ids read from one profile (about 64 GiB of 64 KiB chunks).
_MAX_IDS = 1_000_000
_MAX_LINE = 512


class ProfileRecorder:
    """Appends each blob id to a profile file the first time it is touched (thread-safe)."""

    def __init__(self, path: Path) -> None:
        """Create (truncate) ``path`` and write the header line."""
        self.path = path
        self._seen: set[Digest] = set()
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._file: IO[str] | None = open(path, "w", encoding="utf-8")
        self._write({"format": PROFILE_FORMAT, "version": PROFILE_VERSION})

    def _write(self, obj: dict[str, object]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
            self._file.flush()

    def touch(self, blob_id: Digest) -> None:
        """Record ``blob_id`` unless it was recorded before."""
        with self._lock:
            if blob_id in self._seen or self._file is None:
                return
            self._seen.add(blob_id)
            self._write({"id": str(blob_id), "ms": int((time.monotonic() - self._start) * 1000)})

    def __len__(self) -> int:
        """Blobs recorded."""
        with self._lock:
            return len(self._seen)

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _lines(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if len(line) > _MAX_LINE:
                raise UsageError(f"{path}:{n}: line too long for a profile")
            try:
                obj = jsonsafe.loads(line)
            except ValueError as exc:
                raise UsageError(f"{path}:{n}: not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise UsageError(f"{path}:{n}: expected a JSON object")
            yield n, obj


def read_profile(path: Path, algorithm: str | None = None) -> list[Digest]:
    """The blob ids of a profile, in order, without repeats (only ``algorithm`` ids if given)."""
    ids: dict[Digest, None] = {}
    lines = _lines(path)
    first = next(lines, None)
    if first is None or first[1].get("format") != PROFILE_FORMAT:
        raise UsageError(f"{path} is not a chunkstore profile (no header line)")
    if first[1].get("version") != PROFILE_VERSION:
        raise UsageError(
            f"{path} is a version {first[1].get('version')!r} profile; "
            f"this chunkstore reads version {PROFILE_VERSION}"
        )
    for n, obj in lines:
        text = obj.get("id")
        try:
            blob_id = Digest.parse(text) if isinstance(text, str) else None
        except FormatError:
            blob_id = None
        if blob_id is None:
            raise UsageError(f'{path}:{n}: expected an "id" of the form algorithm:hex')
        if algorithm is None or blob_id.algorithm == algorithm:
            ids[blob_id] = None
        if len(ids) > _MAX_IDS:
            raise UsageError(f"{path} lists more than {_MAX_IDS} blobs")
    return list(ids)


def replay_profile(
    fetcher: Fetcher, ids: Iterable[Digest], *, batch: int = 4096
) -> threading.Thread:
    """Start fetching ``ids`` in the background (in order, ``batch`` ids per scheduling round).

    Returns the (daemon) thread that schedules them; the fetches themselves run on the
    fetcher's background workers, coalesced per pack into reads of up to
    ``FetchPolicy.prefetch_span`` bytes.
    """
    todo = list(ids)

    def run() -> None:
        for i in range(0, len(todo), batch):
            fetcher.prefetch(todo[i : i + batch])

    thread = threading.Thread(target=run, name="profile-prefetch", daemon=True)
    thread.start()
    return thread
