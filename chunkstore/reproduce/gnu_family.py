"""GNU gzip 1.12 and pigz 2.6: the two command-line gzip compressors of Debian/Ubuntu-built images.

Both encoders are native (:mod:`chunkstore.native._gnuzip`), rewritten from how the tools work:

* ``gnu-gzip``: GNU gzip's own deflate (not zlib's): ``gzip -<level>`` and ``--rsyncable``. Exact
  for what gzip writes reading a regular file (``gzip file``, ``gzip < file``); from a pipe it
  writes the same bytes unless a short read changes what its match finder sees in the last 258
  bytes of the input (not seen in testing).
* ``pigz``: pigz's blocks (``-b``, in bytes here: ``-b 128`` is 131072), each deflated by the
  system zlib with the previous 32 KiB as dictionary (``-i``/``--independent``: none), joined on
  byte boundaries. The output does not depend on pigz's thread count, except with ``-p 1``
  (``serial``), which takes another path that differs at levels 1..3 only. ``-R``/``--rsyncable``
  (``rsyncable``) ends pieces where pigz's rolling hash says. Reproducing pigz needs a classic
  zlib (1.2.x/1.3.x), not zlib-ng in compatibility mode. One corner pigz itself leaves to chance:
  a last block shorter than 32 KiB after others is deflated by whichever thread is free, and
  zlib's match finder may peek at that thread's leftovers past the end of the input; the encoder
  uses a fresh stream there (as pigz does for a one-block input).

Both write one gzip member, also for empty input (an empty final block); the header (OS 3,
FNAME and MTIME unless ``-n``) is kept verbatim by the caller.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from chunkstore.native import _gnuzip
from chunkstore.reproduce.gzipfmt import OS_UNIX, GzipHeader, parse_gzip_header
from chunkstore.reproduce.model import Candidate, Encoder, ParamValue

__all__ = ["GnuGzipFamily", "PigzFamily"]

_FNAME = 0x08
_FCOMMENT = 0x10

#: Levels whose XFL byte is 0 (both tools write 4 for level 1, 2 for level 9), likeliest first.
_MIDDLE_LEVELS = (6, 5, 4, 7, 8, 3, 2)

#: pigz's default block size (-b 128).
PIGZ_DEFAULT_BLOCK = 128 * 1024

#: pigz's bytes are zlib's: a zlib-ng in compatibility mode ("1.3.0.zlib-ng") deflates otherwise.
CLASSIC_ZLIB = "zlib-ng" not in _gnuzip.zlib_version()

#: Threads a pigz encoder may use on one call's whole blocks (the output does not depend on it).
_PIGZ_THREADS = max(1, min(4, os.cpu_count() or 1))


class _Native:
    """An encoder of :mod:`chunkstore.native._gnuzip` behind the :class:`Encoder` protocol."""

    __slots__ = ("_enc",)

    def __init__(self, enc: _gnuzip.GzipEncoder | _gnuzip.PigzEncoder) -> None:
        self._enc = enc

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._enc.compress(data)

    def finish(self) -> bytes:
        return self._enc.finish()


def _candidate(family: GnuGzipFamily | PigzFamily, params: dict[str, ParamValue]) -> Candidate:
    def opener() -> Encoder:
        return family.open(params)

    return Candidate(family.name, params, opener)


def _levels_for(header: GzipHeader) -> tuple[int, ...]:
    """The levels the header's XFL allows, likeliest first."""
    return {4: (1,), 2: (9,), 0: _MIDDLE_LEVELS}.get(header.xfl, ())


def _int_param(params: Mapping[str, ParamValue], key: str, low: int, high: int) -> int:
    value = params[key]
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{key} must be an integer in {low}..{high}, not {value!r}")
    return value


def _bool_param(params: Mapping[str, ParamValue], key: str) -> bool:
    value = params.get(key, False)
    if type(value) is not bool:
        raise ValueError(f"{key} must be a boolean, not {value!r}")
    return value


def _check_keys(params: Mapping[str, ParamValue], allowed: set[str], family: str) -> None:
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"unknown {family} settings: {sorted(unknown)}")


class GnuGzipFamily:
    """GNU gzip 1.12 (Debian bookworm; the deflate code is the same in gzip 1.6..1.13)."""

    name = "gnu-gzip"

    def candidates(self, header: bytes) -> list[Candidate]:
        """The levels XFL allows (default 6 first), then ``--rsyncable`` at the likeliest one.

        gzip writes OS 3 (Unix) and no flag but FNAME; anything else rules it out.
        """
        parsed = parse_gzip_header(header)
        if parsed is None or parsed.os != OS_UNIX or parsed.flags & ~_FNAME:
            return []
        levels = _levels_for(parsed)
        settings: list[dict[str, ParamValue]] = [{"level": lv} for lv in levels]
        if levels:
            settings.append({"level": levels[0], "rsyncable": True})
        return [_candidate(self, p) for p in settings]

    def open(self, params: Mapping[str, ParamValue]) -> Encoder:
        """An encoder for ``{"level": 1..9}`` (optional ``"rsyncable": bool``)."""
        _check_keys(params, {"level", "rsyncable"}, self.name)
        level = _int_param(params, "level", 1, 9)
        rsyncable = _bool_param(params, "rsyncable")
        return _Native(_gnuzip.GzipEncoder(level, rsyncable=rsyncable))


class PigzFamily:
    """pigz 2.6 (Debian bookworm) over the system zlib."""

    name = "pigz"

    def candidates(self, header: bytes) -> list[Candidate]:
        """Default 128 KiB blocks at the levels XFL allows (6 first), then ``-p 1`` where it
        differs (levels 1..3), ``--independent`` and ``--rsyncable`` at the likeliest level.

        pigz writes OS 3 and no flags but FNAME and FCOMMENT (``-C``). None at all when this
        machine's zlib is not a classic one (its output could not be reproduced elsewhere).
        """
        parsed = parse_gzip_header(header)
        if (
            not CLASSIC_ZLIB
            or parsed is None
            or parsed.os != OS_UNIX
            or parsed.flags & ~(_FNAME | _FCOMMENT)
        ):
            return []
        levels = _levels_for(parsed)
        settings: list[dict[str, ParamValue]] = [self._params(lv) for lv in levels]
        settings += [self._params(lv, serial=True) for lv in levels if lv <= 3]
        if levels:
            settings.append(self._params(levels[0], independent=True))
            settings.append(self._params(levels[0], rsyncable=True))
        return [_candidate(self, p) for p in settings]

    @staticmethod
    def _params(
        level: int, *, independent: bool = False, serial: bool = False, rsyncable: bool = False
    ) -> dict[str, ParamValue]:
        params: dict[str, ParamValue] = {
            "level": level,
            "block_size": PIGZ_DEFAULT_BLOCK,
            "independent": independent,
        }
        if serial:
            params["serial"] = True
        if rsyncable:
            params["rsyncable"] = True
        return params

    def open(self, params: Mapping[str, ParamValue]) -> Encoder:
        """An encoder for ``{"level": 1..9, "block_size": bytes, "independent": bool}``.

        ``block_size`` is pigz's ``-b`` times 1024 (32 KiB..512 MiB); the optional ``"serial":
        true`` is ``-p 1``, ``"rsyncable": true`` is ``-R``.
        """
        _check_keys(
            params, {"level", "block_size", "independent", "serial", "rsyncable"}, self.name
        )
        level = _int_param(params, "level", 1, 9)
        block_size = _int_param(params, "block_size", 32 * 1024, 512 * 1024 * 1024)
        if block_size % 1024:
            raise ValueError(f"block_size must be a multiple of 1024, not {block_size}")
        independent = params["independent"]
        if type(independent) is not bool:
            raise ValueError(f"independent must be a boolean, not {independent!r}")
        serial = _bool_param(params, "serial")
        rsyncable = _bool_param(params, "rsyncable")
        return _Native(
            _gnuzip.PigzEncoder(
                level,
                block_size,
                independent=independent,
                serial=serial,
                rsyncable=rsyncable,
                threads=1 if serial else _PIGZ_THREADS,
            )
        )
