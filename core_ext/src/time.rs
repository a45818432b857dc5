//! Instants and the group's local calendar: days, weekdays, hours and months, all
//! as integers so that rules compare them without time-zone libraries.

use crate::errors::{CoreError, CoreResult};
use chrono::{DateTime, Datelike, NaiveDate, Timelike};

pub const DAY_MS: i64 = 86_400_000;

/// Parses an ISO-8601 / RFC 3339 instant with an offset; returns epoch ms.
pub fn parse_instant_ms(s: &str) -> CoreResult<i64> {
    let dt = DateTime::parse_from_rfc3339(s).map_err(|e| {
        CoreError::invalid_event(
            "",
            format!("must be an ISO-8601 time with offset, e.g. 2026-11-23T10:15:00+08:00 ({e})"),
        )
    })?;
    // chrono reads a leap second (23:59:60) as the 1,000th millisecond of the second before.
    if dt.nanosecond() >= 1_000_000_000 {
        return Err(CoreError::invalid_event("", "is a leap second (:60): send 23:59:59.999 or the next second"));
    }
    let ms = dt.timestamp_millis();
    if !(0..MAX_INSTANT_MS).contains(&ms) {
        return Err(CoreError::invalid_event("", "must be between 1970 and 2199"));
    }
    Ok(ms)
}

/// An instant as RFC 3339 in UTC with milliseconds (what the events carry).
pub fn format_instant(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// 2200-01-01T00:00:00Z: no time the engine keeps is at or after it.
pub const MAX_INSTANT_MS: i64 = 7_258_118_400_000;

/// Refuses an instant outside `max_age_days` before and `max_ahead_days` after `now_ms`
/// (the ingress's sanity window on a callback's time).
pub fn check_window(field: &str, at_ms: i64, now_ms: i64, max_age_days: i64, max_ahead_days: i64) -> CoreResult<()> {
    let (earliest, latest) = (now_ms - max_age_days * DAY_MS, now_ms + max_ahead_days * DAY_MS);
    if at_ms < earliest || at_ms > latest {
        return Err(CoreError::invalid_event(
            field,
            format!(
                "must be within {max_age_days} days before and {max_ahead_days} day(s) after the server's time, got {}",
                format_instant(at_ms)
            ),
        ));
    }
    Ok(())
}

/// A calendar date (YYYY-MM-DD) as a day number since 1970-01-01.
pub fn local_day_of_date(s: &str) -> Option<i64> {
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(d.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days())
}

/// An instant seen in the group's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// Day number since 1970-01-01 (local).
    pub day: i64,
    /// Monday = 0.
    pub weekday: u32,
    pub hour: u32,
    pub year: i32,
    /// 1..=12
    pub month: u32,
    /// year * 12 + month - 1: consecutive months are consecutive integers.
    pub month_index: i32,
}

impl Local {
    pub fn of(utc_ms: i64, offset_minutes: i64) -> Local {
        let local_ms = utc_ms + offset_minutes * 60_000;
        let dt = DateTime::from_timestamp_millis(local_ms)
            .unwrap_or_default()
            .naive_utc();
        Local {
            day: local_ms.div_euclid(DAY_MS),
            weekday: dt.weekday().num_days_from_monday(),
            hour: dt.hour(),
            year: dt.year(),
            month: dt.month(),
            month_index: dt.year() * 12 + dt.month() as i32 - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_calendar_in_shanghai() {
        // 2026-11-22T17:30Z is Monday 2026-11-23 01:30 in +08:00.
        let ms = parse_instant_ms("2026-11-22T17:30:00Z").unwrap();
        let l = Local::of(ms, 480);
        assert_eq!((l.weekday, l.hour, l.month, l.year), (0, 1, 11, 2026));
        assert_eq!(l.day, local_day_of_date("2026-11-23").unwrap());
        assert_eq!(l.month_index, 2026 * 12 + 10);
    }
}
