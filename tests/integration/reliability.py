"""The reliability table's rows: each fault test appends what it counted (events in,
applied, lost, doubled) to .local/artifacts/reliability.jsonl; docs/reliability.md shows
the latest run."""

from __future__ import annotations

import time

import orjson

from streams.settings import ROOT

ARTIFACTS = ROOT / ".local" / "artifacts"


def record(fault: str, events_in: int, applied: int, lost: int, doubled: int, note: str = "") -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    row = {"fault": fault, "events_in": events_in, "applied": applied, "lost": lost, "doubled": doubled,
           "note": note, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with open(ARTIFACTS / "reliability.jsonl", "ab") as f:
        f.write(orjson.dumps(row) + b"\n")
