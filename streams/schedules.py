"""When scheduled campaigns run and who they reach (docs/marketing.md): pure functions
over a campaign as the rules define it (`RuleSet.scheduled_campaigns_json`), a time in
epoch milliseconds and the rules' UTC offset. The leader's scheduler
(streams/http/campaigns.py) calls them with the engine's clock (streams/clock.py)."""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any

DAY_MS = 86_400_000


def _tz(offset_minutes: int) -> dt.timezone:
    return dt.timezone(dt.timedelta(minutes=offset_minutes))


def local(at_ms: int, offset_minutes: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(at_ms / 1000, _tz(offset_minutes))


def _ms(at: dt.datetime) -> int:
    return int(at.timestamp() * 1000)


def latest_occurrence(schedule: dict[str, Any], now_ms: int, offset_minutes: int) -> int | None:
    """The schedule's latest time at or before `now_ms` (None: a one-off still to come)."""
    every = schedule["every"]
    if every == "once":
        at: int = schedule["at_ms"]
        return at if at <= now_ms else None
    now = local(now_ms, offset_minutes)
    minute = int(schedule["minute"])
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    at_time = dt.timedelta(minutes=minute)
    if every == "day":
        cand = midnight + at_time
        if cand > now:
            cand -= dt.timedelta(days=1)
    elif every == "week":
        cand = midnight - dt.timedelta(days=(now.weekday() - int(schedule["weekday"])) % 7) + at_time
        if cand > now:
            cand -= dt.timedelta(days=7)
    elif every == "month":
        cand = midnight.replace(day=int(schedule["day"])) + at_time
        if cand > now:
            year, month = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
            cand = cand.replace(year=year, month=month)
    else:
        raise ValueError(f"unknown schedule {every!r}")
    return _ms(cand)


def run_id(at_ms: int, offset_minutes: int) -> str:
    """A run's id: its scheduled local time, "YYYYMMDDHHMM"."""
    return local(at_ms, offset_minutes).strftime("%Y%m%d%H%M")


def due_run(campaign: dict[str, Any], now_ms: int, offset_minutes: int, grace_ms: int) -> tuple[str, int] | None:
    """The run of `campaign` due at `now_ms` — (run id, scheduled time) — if its latest
    time is at most `grace_ms` ago and within the campaign's from / to; else None."""
    at = latest_occurrence(campaign["schedule"], now_ms, offset_minutes)
    if at is None or now_ms - at > grace_ms:
        return None
    if campaign.get("from_ms") is not None and at < campaign["from_ms"]:
        return None
    if campaign.get("to_ms") is not None and at >= campaign["to_ms"]:
        return None
    return run_id(at, offset_minutes), at


def month_index(at_ms: int, offset_minutes: int) -> int:
    """The core's month index of a time (year * 12 + month - 1, local)."""
    t = local(at_ms, offset_minutes)
    return t.year * 12 + t.month - 1


def audience_params(audience: dict[str, Any], at_ms: int, offset_minutes: int, validity_months: int | None,
                    default_tier: str) -> dict[str, Any]:
    """The parameters of sql/queries/campaign_audience.sql for an audience at `at_ms`.

    Points expiring within N days: a lot of month m expires at the start of month
    m + validity + 1, so the lots expiring in (at, at + N days] are those with
    month_index(at) - validity - 1 < m <= month_index(at + N days) - validity - 1."""
    def since(days: int) -> int:
        return at_ms - days * DAY_MS if days else 0

    expiring = int(audience.get("points_expiring_within_days") or 0)
    after_lot = to_lot = 0
    if expiring and validity_months is not None:
        after_lot = month_index(at_ms, offset_minutes) - validity_months - 1
        to_lot = month_index(at_ms + expiring * DAY_MS, offset_minutes) - validity_months - 1
    return {
        "tiers": audience.get("tiers") or [], "tags": audience.get("tags") or [],
        "segments": audience.get("segments") or [], "formats": audience.get("formats") or [],
        "bu": audience.get("bu") or "", "default_tier": default_tier,
        "dormant_before_ms": since(int(audience.get("dormant_days") or 0)),
        "paid_since_ms": since(int(audience.get("paid_within_days") or 0)),
        "birthday_mm": f"{local(at_ms, offset_minutes).month:02d}" if audience.get("birthday_month") else "",
        "expiring": 1 if expiring else 0, "expiring_after_lot": after_lot, "expiring_to_lot": to_lot,
        "min_points": int(audience.get("min_points") or 0),
        "registered_since_ms": since(int(audience.get("registered_within_days") or 0)),
        "holds_coupon": audience.get("holds_coupon") or "", "at_ms": at_ms,
    }


def push_event_id(campaign: str, run: str, member_id: str) -> str:
    """The event id of a run's push to one member (an id of at most 64 characters: a long
    member id is replaced by a digest, stable for the same member)."""
    eid = f"cp-{campaign}-{run}-{member_id}"
    if len(eid) <= 64:
        return eid
    import hashlib

    return f"cp-{campaign}-{run}-" + hashlib.sha256(member_id.encode()).hexdigest()[:16]


def describe(schedule: dict[str, Any], offset_minutes: int) -> str:
    """A schedule in words, for the console and logs."""
    every = schedule["every"]
    if every == "once":
        return "once, " + local(schedule["at_ms"], offset_minutes).strftime("%Y-%m-%d %H:%M")
    hm = f"{int(schedule['minute']) // 60:02d}:{int(schedule['minute']) % 60:02d}"
    if every == "day":
        return f"every day at {hm}"
    if every == "week":
        return f"every {calendar.day_name[int(schedule['weekday'])]} at {hm}"
    return f"on day {schedule['day']} of every month at {hm}"
