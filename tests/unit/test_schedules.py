"""When scheduled campaigns run and who they reach: streams/schedules.py's pure functions,
and the clock file the rehearsals and tests move."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from streams import clock, schedules

TZ = dt.timezone(dt.timedelta(hours=8))


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


DAILY = {"id": "win-back", "schedule": {"every": "day", "minute": 600}, "from_ms": None, "to_ms": None}
GRACE = 6 * 3600 * 1000


@pytest.mark.parametrize(("schedule", "now", "latest"), [
    ({"every": "day", "minute": 600}, "2026-12-01T09:59:00+08:00", "2026-11-30T10:00:00+08:00"),
    ({"every": "day", "minute": 600}, "2026-12-01T10:00:00+08:00", "2026-12-01T10:00:00+08:00"),
    ({"every": "week", "weekday": 5, "minute": 540}, "2026-12-05T09:30:00+08:00", "2026-12-05T09:00:00+08:00"),
    ({"every": "week", "weekday": 5, "minute": 540}, "2026-12-05T08:59:00+08:00", "2026-11-28T09:00:00+08:00"),
    ({"every": "month", "day": 1, "minute": 540}, "2026-12-01T09:00:00+08:00", "2026-12-01T09:00:00+08:00"),
    ({"every": "month", "day": 1, "minute": 540}, "2026-12-01T08:00:00+08:00", "2026-11-01T09:00:00+08:00"),
    ({"every": "month", "day": 15, "minute": 0}, "2027-01-10T00:00:00+08:00", "2026-12-15T00:00:00+08:00"),
])
def test_the_latest_time_of_each_schedule(schedule: dict[str, int | str], now: str, latest: str) -> None:
    assert schedules.latest_occurrence(schedule, ms(now), 480) == ms(latest)


def test_a_run_is_due_within_the_grace_and_the_campaign_s_window() -> None:
    assert schedules.due_run(DAILY, ms("2026-12-01T10:00:30+08:00"), 480, GRACE) == (
        "202612011000", ms("2026-12-01T10:00:00+08:00"))
    assert schedules.due_run(DAILY, ms("2026-12-01T09:59:00+08:00"), 480, GRACE) is None, "yesterday's: too late"
    assert schedules.due_run(DAILY, ms("2026-12-01T15:59:00+08:00"), 480, GRACE) is not None
    ended = {**DAILY, "to_ms": ms("2026-12-01T00:00:00+08:00")}
    assert schedules.due_run(ended, ms("2026-12-01T10:00:30+08:00"), 480, GRACE) is None
    later = {**DAILY, "from_ms": ms("2026-12-02T00:00:00+08:00")}
    assert schedules.due_run(later, ms("2026-12-01T10:00:30+08:00"), 480, GRACE) is None
    once = {**DAILY, "schedule": {"every": "once", "at_ms": ms("2026-12-05T09:00:00+08:00")}}
    assert schedules.due_run(once, ms("2026-12-05T08:59:00+08:00"), 480, GRACE) is None
    assert schedules.due_run(once, ms("2026-12-05T09:01:00+08:00"), 480, GRACE) == (
        "202612050900", ms("2026-12-05T09:00:00+08:00"))


def test_audience_parameters_at_the_run_s_time() -> None:
    at = ms("2026-12-24T09:30:00+08:00")
    p = schedules.audience_params({"dormant_days": 90, "birthday_month": True, "points_expiring_within_days": 10,
                                   "tiers": ["gold"]}, at, 480, 12, "normal")
    assert p["dormant_before_ms"] == at - 90 * 86_400_000 and p["paid_since_ms"] == 0
    assert p["birthday_mm"] == "12" and p["tiers"] == ["gold"] and p["default_tier"] == "normal"
    # Lots of month m expire at the start of month m + 13: on 2026-12-24, within 10 days, the
    # lots of 2025-12 (they expire on 2027-01-01), and none already expired.
    assert (p["expiring"], p["expiring_after_lot"], p["expiring_to_lot"]) == (1, 2025 * 12 + 10, 2025 * 12 + 11)
    assert schedules.audience_params({}, at, 480, 12, "normal")["expiring"] == 0


def test_push_event_ids_are_ids_of_at_most_64_characters() -> None:
    assert schedules.push_event_id("win-back", "202612011000", "m-1") == "cp-win-back-202612011000-m-1"
    long = schedules.push_event_id("x" * 24, "202612011000", "m" * 60)
    assert len(long) <= 64 and long == schedules.push_event_id("x" * 24, "202612011000", "m" * 60)


def test_the_clock_file_moves_the_clock(tmp_path: Path) -> None:
    f = tmp_path / "clock"
    f.write_text("2026-12-01T10:00:00+08:00")
    assert clock.now_ms(str(f)) == ms("2026-12-01T10:00:00+08:00")
    f.write_text("1800000000000\n")
    assert clock.now_ms(str(f)) == 1_800_000_000_000
    with pytest.raises(clock.ClockFileError, match="no UTC offset"):
        clock.parse("2026-12-01T10:00:00")
    with pytest.raises(clock.ClockFileError, match="not a time"):
        clock.parse("tomorrow")
    assert abs(clock.now_ms("") - int(dt.datetime.now(TZ).timestamp() * 1000)) < 5_000
