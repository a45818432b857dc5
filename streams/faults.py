"""Faults the fault tests inject (docs/reliability.md): a file `<LOYALTY_FAULTS_DIR>/<name>`
makes a process fail at the point of that name. In production the directory is unset and
nothing is looked at."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NoReturn

log = logging.getLogger(__name__)


def take(faults_dir: str, name: str) -> bool:
    """Whether the fault is injected, taken once: its file is removed, so the process that
    comes back after the fault runs normally."""
    if not faults_dir:
        return False
    try:
        (Path(faults_dir) / name).unlink()
    except FileNotFoundError:
        return False
    return True


def die_like_sigkill(what: str) -> NoReturn:
    """Ends the process at once, as a SIGKILL would (no clean-up, nothing flushed but the log)."""
    log.warning("fault injected: %s", what)
    logging.shutdown()
    os._exit(137)
