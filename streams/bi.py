"""BI on the ClickHouse history: the operator's KPIs, each a parameterised query in
sql/queries/kpi/, run for a date range and an optional business unit / format filter.

The report CLI (`loyalty report`), the dashboard's JSON endpoint and the tests all go
through `run_kpis`, so a figure on the screen is the figure the query returns.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from streams.inputs import BadInput, date_in
from streams.sinks.ledger import load_query


@dataclass(frozen=True)
class Kpi:
    name: str
    title: str
    #: "one": one row of figures; "table": rows
    shape: str


KPIS: tuple[Kpi, ...] = (
    Kpi("members", "Members and new members", "one"),
    Kpi("activity", "Active / normal / dormant members", "one"),
    Kpi("growth_churn", "Growth and churn (vs the previous period)", "one"),
    Kpi("sales", "Sales: members' share and average ticket", "one"),
    Kpi("repurchase", "Repurchase rate", "one"),
    Kpi("lifetime_value", "Lifetime value", "one"),
    Kpi("points", "Points issued, spent, expired, outstanding", "one"),
    Kpi("tiers", "Tier distribution", "table"),
    Kpi("tier_movements", "Tier movements", "table"),
    Kpi("campaigns", "Campaign participation and ROI", "table"),
    Kpi("coupons", "Coupons: issued, redeemed, cost", "table"),
    Kpi("scheduled_campaigns", "Scheduled campaigns: reached, pushed, held, redeemed, ROI", "table"),
    Kpi("receipts", "Receipt points: submitted, approved, rejected, review time", "one"),
    Kpi("parking", "Parking usage and free-hour cost", "one"),
    Kpi("cross_format", "Members active in two formats", "table"),
    Kpi("points_flow", "Points earned and spent by format", "table"),
    Kpi("settlement", "Settlement per account", "table"),
    Kpi("daily", "Day by day: sales, active members, points issued and spent", "table"),
)

PARAM = re.compile(r"\{(\w+):")


@dataclass(frozen=True)
class Filters:
    start: dt.datetime
    end: dt.datetime
    bu: str = ""
    format: str = ""
    active_days: int = 30
    dormant_days: int = 90
    point_value_fen_per_100: int = 100
    utc_offset_minutes: int = 480

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError("--to must be after --from")
        if not 0 < self.active_days <= self.dormant_days:
            raise ValueError("active days must be > 0 and at most the dormant days")

    def params(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "bu": self.bu, "format": self.format,
                "active_days": self.active_days, "dormant_days": self.dormant_days,
                "point_value_fen_per_100": self.point_value_fen_per_100,
                "offset_s": self.utc_offset_minutes * 60}


def query_name(kpi: Kpi) -> str:
    return f"kpi/{kpi.name}"


def params_for(kpi: Kpi, filters: Filters) -> dict[str, Any]:
    """Only the parameters the KPI's query names."""
    used = set(PARAM.findall(load_query(query_name(kpi))))
    return {k: v for k, v in filters.params().items() if k in used}


Query = Callable[[str, dict[str, Any]], Awaitable[list[dict[str, Any]]]]


async def run_kpis(query: Query, filters: Filters, names: list[str] | None = None,
                   progress: Callable[[Kpi], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Runs the KPIs (all, or `names`) and returns each one's rows."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kpi in KPIS:
        if names and kpi.name not in names:
            continue
        if progress is not None:
            progress(kpi)
        out[kpi.name] = await query(query_name(kpi), params_for(kpi, filters))
    return out


def filters_from(query: dict[str, str], utc_offset_minutes: int, today: dt.date | None = None) -> Filters:
    """Filters from request / command-line values: `from` and `to` are local dates, both
    included (default: the last 30 days up to today); `bu`, `format`, thresholds optional.
    ValueError names the field."""
    tz = dt.timezone(dt.timedelta(minutes=utc_offset_minutes))
    today = today or dt.datetime.now(tz).date()

    def day(name: str, default: dt.date) -> dt.date:
        raw = query.get(name) or ""
        if not raw:
            return default
        try:
            return date_in(raw, name)
        except BadInput as exc:
            raise ValueError(str(exc)) from None

    def number(name: str, default: int) -> int:
        raw = query.get(name) or ""
        if not raw:
            return default
        if not raw.isdigit() or not 0 < int(raw) <= 3650:
            raise ValueError(f"{name}: {raw!r} is not a number of days (1-3650)")
        return int(raw)

    first = day("from", today - dt.timedelta(days=29))
    last = day("to", today)
    if last < first:
        raise ValueError("to: must not be before from")
    for name in ("bu", "format"):
        v = query.get(name) or ""
        if v and not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,64}", v):
            raise ValueError(f"{name}: {v!r} is not a valid id")
    start = dt.datetime.combine(first, dt.time(), tz).astimezone(dt.UTC)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tz).astimezone(dt.UTC)
    try:
        return Filters(start, end, query.get("bu") or "", query.get("format") or "",
                       number("active_days", 30), number("dormant_days", 90),
                       utc_offset_minutes=utc_offset_minutes)
    except ValueError as exc:
        raise ValueError(f"dormant_days: {exc}") from None
