"""RFM segments and rule-based tags, computed in ClickHouse (sql/queries/segments/) and
written to each member's state in Redis through `segments` member events, where campaign
filters and trigger rules read them (with the member's own tags).

`loyalty segments refresh` asks the worker (POST /v1/admin/segments/refresh); the worker
also refreshes every LOYALTY_SEGMENTS_INTERVAL seconds. Only members whose segment or tags
changed get an event; members who no longer qualify (no payment in the window) get
segment `lapsed` and no computed tags.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentRules:
    window_days: int = 90
    food_categories: tuple[str, ...] = ("food", "dining", "canteen", "coffee", "fnb", "restaurant", "snacks")
    foodie_pct: int = 40
    sports_categories: tuple[str, ...] = ("sports", "fitness", "outdoor")
    sports_pct: int = 30
    parker_visits: int = 4

    def params(self, end: dt.datetime) -> dict[str, Any]:
        return {"end": end, "window_days": self.window_days, "food_categories": list(self.food_categories),
                "foodie_pct": self.foodie_pct, "sports_categories": list(self.sports_categories),
                "sports_pct": self.sports_pct, "parker_visits": self.parker_visits}


@dataclass
class RefreshReport:
    members: int = 0
    changed: int = 0
    lapsed: int = 0
    segments: dict[str, int] = field(default_factory=dict)
    tags: dict[str, int] = field(default_factory=dict)


Query = Callable[[str, dict[str, Any]], Awaitable[list[dict[str, Any]]]]


def changes(computed: Sequence[dict[str, Any]], previous: Sequence[dict[str, Any]]
            ) -> list[tuple[str, str, list[str]]]:
    """(member, segment, tags) to send: new or changed results, and `lapsed` for members
    of the previous refresh who are not in this one."""
    before = {r["member_id"]: (r["segment"], list(r["tags"])) for r in previous}
    out = []
    seen = set()
    for r in computed:
        seen.add(r["member_id"])
        now = (r["segment"], list(r["tags"]))
        if before.get(r["member_id"]) != now:
            out.append((r["member_id"], now[0], now[1]))
    for member, (segment, _tags) in before.items():
        if member not in seen and segment != "lapsed":
            out.append((member, "lapsed", []))
    return out


async def refresh(query: Query, insert: Callable[[list[dict[str, Any]]], Awaitable[None]],
                  send: Callable[[str, bytes], Awaitable[None]], rules: SegmentRules, end: dt.datetime
                  ) -> RefreshReport:
    """Computes segments and tags as of `end`, records them, and sends a `segments` member
    event (keyed by member) for each change. The event id is the member and `end`'s day, so
    a second refresh of the same day with the same result sends nothing new."""
    import orjson

    computed = await query("segments/compute", rules.params(end))
    previous = await query("segments/latest", {})
    todo = changes(computed, previous)
    report = RefreshReport(members=len(computed))
    for r in computed:
        report.segments[r["segment"]] = report.segments.get(r["segment"], 0) + 1
        for t in r["tags"]:
            report.tags[t] = report.tags.get(t, 0) + 1
    stamp = end.strftime("%Y%m%dT%H%M%S")
    for member, segment, tags in todo:
        ev = {"event_id": f"seg-{stamp}-{member}"[:64], "type": "segments", "member_id": member,
              "occurred_at": end.isoformat(timespec="milliseconds"), "segment": segment, "tags": tags}
        await send(member, orjson.dumps(ev))
        report.changed += 1
        report.lapsed += segment == "lapsed"
    rows = [{**r, "refreshed_at": end} for r in computed]
    rows += [{"member_id": m, "recency_days": 0, "frequency": 0, "monetary_fen": 0, "r": 0, "f": 0, "m": 0,
              "segment": "lapsed", "tags": [], "refreshed_at": end} for m, s, _ in todo if s == "lapsed"]
    await insert(rows)
    log.info("segments refreshed as of %s: %d members, %d changed (%d lapsed), segments %s, tags %s",
             end.isoformat(), report.members, report.changed, report.lapsed, report.segments, report.tags)
    return report
