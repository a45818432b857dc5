"""The latest figures, merged into benchmarks/results/latest.json (one object; each key
with the commit and time it was measured at), so that a script can check them."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

import orjson

from streams.settings import ROOT

LATEST = ROOT / "benchmarks" / "results" / "latest.json"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def record(**figures: Any) -> dict[str, Any]:
    """Merges these figures; every key also records its commit and time under `measured`."""
    path = Path(LATEST)
    data: dict[str, Any] = orjson.loads(path.read_bytes()) if path.exists() else {}
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    at = commit()
    measured = data.setdefault("measured", {})
    for key, value in figures.items():
        data[key] = value
        measured[key] = {"commit": at, "measured_at": now}
    data["commit"], data["measured_at"] = at, now
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    return data
