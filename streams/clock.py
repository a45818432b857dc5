"""The engine's notion of "now" for the things it starts by itself (scheduled campaigns
and their audiences): the system clock, or, for rehearsals and tests, the time written in
LOYALTY_CLOCK_FILE (an ISO-8601 time with offset, or epoch milliseconds), read again when
the file changes. The payments and member events keep their own times."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time

from streams.errors import ConfigError

log = logging.getLogger(__name__)

_cache: dict[str, tuple[float, int]] = {}


class ClockFileError(ConfigError):
    """The clock file does not hold a time."""


def parse(text: str) -> int:
    """Epoch milliseconds from "1764558000000" or "2026-12-01T10:00:00+08:00"."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ClockFileError(f"not a time: {text[:40]!r} (an ISO-8601 time with offset, or epoch ms)") from None
    if at.tzinfo is None:
        raise ClockFileError(f"{text[:40]!r} has no UTC offset")
    return int(at.timestamp() * 1000)


def now_ms(clock_file: str = "") -> int:
    """Now, in epoch milliseconds: from `clock_file` when one is set, else the system's."""
    if not clock_file:
        return int(time.time() * 1000)
    mtime = os.stat(clock_file).st_mtime
    cached = _cache.get(clock_file)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    with open(clock_file, encoding="utf-8") as f:
        at = parse(f.read())
    if cached is None:
        log.warning("the scheduler's clock is read from %s (a rehearsal clock, not for production)", clock_file)
    _cache[clock_file] = (mtime, at)
    return at
