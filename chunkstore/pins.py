"""Local pins of each repository's encryption mode: trust on first use, made explicit.

**What a pin protects.** Whoever controls the storage cannot read or forge an encrypted
repository, but can *replace* it: put an unencrypted config under the same repository id, or a
whole new unencrypted repository at the same location. Nothing in the storage can tell the client
that the repository used to be encrypted, so chunkstore remembers it locally, in the cache
directory, twice:

* per repository id (``<cache>/<repo id hex>/mode``): the mode of that repository;
* per location (``<cache>/locations/<sha256 of the location>``): the mode and id of the
  repository last used there (``init`` sets it, so re-creating a repository on purpose is fine).

An unencrypted repository where an encrypted one was pinned is refused (``CorruptMetadata``), so
backups are never silently written in the clear.

**What deleting the cache costs.** The cache can be deleted at any time, but the pins go with it:
the next use pins whatever the location then holds (trust on first use). That is announced: the
returned notices say that no pin existed and what was pinned (the CLI prints them as warnings),
and the pin file records when and how it was made (``init``, ``first use``, ``re-pinned``). An
unencrypted repository found without a pin could be a swapped one, and only the user can know.

**A pin that cannot be read is an error**, naming the file and what to do, never a silent reset
(a reset is exactly what an attacker who can also write the cache directory would want). Writes
are atomic and durable (temporary file, fsync, rename, directory fsync), so a crash leaves the old
pin or the new one, never an empty file.

File format (text)::

    chunkstore pin 1
    mode: plain | encrypted
    repository: <64 hex digits>
    location: <the repository location, for people reading the file>
    pinned: <UTC time> (<how>)

The one-line files of earlier versions (``plain``/``encrypted``, or ``<mode> <id hex>``) are read
as well.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from chunkstore.errors import CorruptMetadata
from chunkstore.fsutil import write_file_atomically

__all__ = ["Pin", "PinCheck", "check_pins", "read_pin"]

_MAGIC = "chunkstore pin 1"
_MODES = ("plain", "encrypted")
_HEX = re.compile(r"\A[0-9a-f]{64}\Z")
_MAX_PIN = 4096


@dataclass(frozen=True, slots=True)
class Pin:
    """A pinned mode (``plain`` or ``encrypted``), repository id (hex; empty in old mode files)."""

    mode: str
    repo_id: str


@dataclass(frozen=True, slots=True)
class PinCheck:
    """What :func:`check_pins` did: notices to show the user (pins made without one before)."""

    notices: tuple[str, ...] = ()


def _unreadable(path: Path, why: str, location: str) -> CorruptMetadata:
    return CorruptMetadata(
        f"the local pin file {path} cannot be used ({why}); it records whether the repository at "
        f"{location} was encrypted, so that an unencrypted repository swapped in for it is "
        "refused. Restore its permissions or content; or, if you trust the repository at "
        f"{location} as it is now, delete the file: the next run pins the repository anew"
    )


def read_pin(path: Path, location: str) -> Pin | None:
    """The pin in ``path``; None when there is none. ``CorruptMetadata`` when it is unusable."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_PIN + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unreadable(path, exc.strerror or str(exc), location) from exc
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    lines = text.splitlines()
    pin: Pin | None = None
    if len(raw) <= _MAX_PIN and lines and lines[0] == _MAGIC:
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        pin = Pin(fields.get("mode", ""), fields.get("repository", ""))
    elif len(lines) == 1 and lines[0] in _MODES:  # an old per-id mode file
        pin = Pin(lines[0], "")
    elif len(lines) == 1 and len(lines[0].split()) == 2:  # an old location pin
        mode, repo_id = lines[0].split()
        pin = Pin(mode, repo_id)
    if pin is None or pin.mode not in _MODES or not (pin.repo_id == "" or _HEX.match(pin.repo_id)):
        raise _unreadable(path, "its content is not a pin", location)
    return pin


def _write_pin(path: Path, pin: Pin, location: str, how: str) -> None:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # Control characters would break the line format (the location is informative only).
    shown = "".join(c if c.isprintable() else "?" for c in location)
    text = (
        f"{_MAGIC}\nmode: {pin.mode}\nrepository: {pin.repo_id}\nlocation: {shown}\n"
        f"pinned: {when} ({how})\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, text.encode("utf-8", "replace"))


def check_pins(
    cache_dir: Path, location: str, repo_id: bytes, encrypted: bool, *, created: bool
) -> PinCheck:
    """Check (and make or update) both pins of the repository ``repo_id`` at ``location``.

    ``created``: the repository was just made by ``init``, which pins it without a notice and
    may replace the pin of an older repository at the same location. Raises
    ``CorruptMetadata`` for a repository whose mode contradicts its pins, or for a pin file
    that cannot be read.
    """
    mode = "encrypted" if encrypted else "plain"
    current = Pin(mode, repo_id.hex())
    short = current.repo_id[:12]
    notices: list[str] = []
    by_id = cache_dir / current.repo_id / "mode"
    by_location = cache_dir / "locations" / hashlib.sha256(location.encode()).hexdigest()
    id_pin, location_pin = read_pin(by_id, location), read_pin(by_location, location)
    if id_pin is not None and id_pin.mode != mode:
        raise CorruptMetadata(
            f"repository {short} was {id_pin.mode} when last used and is now {mode}: refusing "
            "to continue (possible tampering); if this is intended, delete "
            f"{by_id.parent}"
        )
    if (
        not created
        and location_pin is not None
        and (location_pin.mode, mode)
        == (
            "encrypted",
            "plain",
        )
    ):
        raise CorruptMetadata(
            f"the repository at {location} was encrypted (id {location_pin.repo_id[:12]}) when "
            f"last used and is now an unencrypted one (id {short}): refusing to use it (it may "
            f"have been replaced); if this is intended, delete {by_location}"
        )
    how = "init" if created else "first use"
    if id_pin is None:
        _write_pin(by_id, current, location, how)
    if location_pin != current:
        if location_pin is None and not created:
            notices.append(
                f"no local pin for the repository at {location} (first use of this cache, or "
                f"the cache was deleted): pinned it as the {mode} repository {short}"
                + (
                    "; if it used to be encrypted, it has been replaced: stop and check"
                    if mode == "plain"
                    else ""
                )
            )
        elif location_pin is not None and not created:
            how = "re-pinned: another repository is at this location now"
        _write_pin(by_location, current, location, how)
    return PinCheck(tuple(notices))
