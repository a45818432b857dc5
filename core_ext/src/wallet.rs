//! The points wallet of a member: lots by earning month, pending points, FIFO
//! spending, expiry, reminders, refund shortfalls. Pure functions over
//! `MemberState`; every movement keeps balance = lots + pending - neg.

use crate::rules::RuleSet;
use crate::state::{Hold, MemberState, Pending};
use crate::time::DAY_MS;
use chrono::NaiveDate;

/// When the lot of `month_index` expires: the end of the month `validity_months`
/// later (local time), as UTC ms. None: points never expire.
pub fn expiry_ms(rules: &RuleSet, month_index: i64) -> Option<i64> {
    let validity = rules.wallet.validity_months?;
    let first_after = month_index + validity + 1;
    let (year, month0) = (first_after.div_euclid(12), first_after.rem_euclid(12));
    let date = NaiveDate::from_ymd_opt(year as i32, month0 as u32 + 1, 1)?;
    let day = date.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days();
    Some(day * DAY_MS - rules.utc_offset_minutes * 60_000)
}

fn spendable(rules: &RuleSet, month: i64, now_ms: i64) -> bool {
    expiry_ms(rules, month).is_none_or(|e| now_ms < e)
}

/// Points that can be spent now: lots not past their expiry.
pub fn available(rules: &RuleSet, state: &MemberState, now_ms: i64) -> i64 {
    state.lots.iter().filter(|l| spendable(rules, l[0], now_ms)).map(|l| l[1]).sum()
}

pub fn pending_total(state: &MemberState) -> i64 {
    state.pending.iter().map(|p| p.points).sum()
}

fn add_to_lot(state: &mut MemberState, month: i64, points: i64) {
    if points <= 0 {
        return;
    }
    match state.lots.binary_search_by_key(&month, |l| l[0]) {
        Ok(i) => state.lots[i][1] += points,
        Err(i) => state.lots.insert(i, [month, points]),
    }
}

/// Puts earned points in the wallet: first repaying a negative balance, then into
/// the month's lot, or pending until `release_at_ms` when the payment's category
/// has a return window.
pub fn credit(state: &mut MemberState, points: i64, month: i64, pending: Option<(&str, i64)>) {
    if points <= 0 {
        return;
    }
    let repay = points.min(state.neg);
    state.neg -= repay;
    let rest = points - repay;
    if rest == 0 {
        return;
    }
    match pending {
        Some((event_id, release_at_ms)) => state.pending.push(Pending {
            event_id: event_id.to_string(),
            release_at_ms,
            points: rest,
            month,
        }),
        None => add_to_lot(state, month, rest),
    }
}

/// Moves pending points whose return window has passed into their lots.
pub fn release_due(state: &mut MemberState, now_ms: i64) -> i64 {
    let mut released = 0;
    let mut keep = Vec::with_capacity(state.pending.len());
    for p in std::mem::take(&mut state.pending) {
        if p.release_at_ms <= now_ms {
            released += p.points;
            add_to_lot(state, p.month, p.points);
        } else {
            keep.push(p);
        }
    }
    state.pending = keep;
    released
}

/// Takes `points` back for a refund of `payment_id`: from that payment's pending
/// points first (a refund inside the return window takes back points that were
/// never spendable), then the newest lots, then other pending points. Returns what
/// could not be taken.
pub fn take_back(state: &mut MemberState, payment_id: &str, lot_month: Option<i64>, points: i64) -> i64 {
    let mut left = points;
    for p in state.pending.iter_mut().filter(|p| p.event_id == payment_id) {
        let t = p.points.min(left);
        p.points -= t;
        left -= t;
    }
    // Then what is left of the lot the payment's points went into (its month's).
    for l in state.lots.iter_mut().filter(|l| Some(l[0]) == lot_month) {
        let t = l[1].min(left);
        l[1] -= t;
        left -= t;
    }
    for l in state.lots.iter_mut().rev() {
        let t = l[1].min(left);
        l[1] -= t;
        left -= t;
    }
    for p in state.pending.iter_mut().rev() {
        let t = p.points.min(left);
        p.points -= t;
        left -= t;
    }
    state.lots.retain(|l| l[1] > 0);
    state.pending.retain(|p| p.points > 0);
    left
}

/// Spends `points` from spendable lots, oldest first. Returns the lots used, or None
/// (and leaves the state alone) when there is not enough.
pub fn spend_fifo(rules: &RuleSet, state: &mut MemberState, points: i64, now_ms: i64) -> Option<Vec<[i64; 2]>> {
    if points <= 0 || available(rules, state, now_ms) < points {
        return None;
    }
    let mut left = points;
    let mut used = Vec::new();
    for l in state.lots.iter_mut() {
        if left == 0 {
            break;
        }
        if !spendable(rules, l[0], now_ms) {
            continue;
        }
        let t = l[1].min(left);
        if t > 0 {
            l[1] -= t;
            left -= t;
            used.push([l[0], t]);
        }
    }
    state.lots.retain(|l| l[1] > 0);
    Some(used)
}

/// Puts spent points back into the very lots they came from.
pub fn restore(state: &mut MemberState, lots: &[[i64; 2]]) {
    for l in lots {
        add_to_lot(state, l[0], l[1]);
    }
}

/// Gives back `points` of the points a payment used at the till (a refund's share):
/// into the lots they came from (`used_lots`, oldest first, past the `returned_before`
/// points earlier refunds gave back), keeping those lots' expiry; what the lots do not
/// cover (used below zero) is credited in `month`. Returns the lots given back.
pub fn give_back(
    state: &mut MemberState,
    used_lots: &[[i64; 2]],
    returned_before: i64,
    points: i64,
    month: i64,
) -> Vec<[i64; 2]> {
    let (mut skip, mut left) = (returned_before.max(0), points.max(0));
    let mut back = Vec::new();
    for l in used_lots {
        let skipped = skip.min(l[1]);
        skip -= skipped;
        let t = (l[1] - skipped).min(left);
        if t > 0 {
            add_to_lot(state, l[0], t);
            back.push([l[0], t]);
            left -= t;
        }
    }
    credit(state, left, month, None);
    back
}

/// Removes the lots whose expiry has come; returns them.
pub fn expire_due(rules: &RuleSet, state: &mut MemberState, now_ms: i64) -> Vec<[i64; 2]> {
    let (expired, kept): (Vec<_>, Vec<_>) = state.lots.iter().partition(|l| !spendable(rules, l[0], now_ms));
    state.lots = kept;
    expired
}

/// A reminder is due for the oldest lot expiring within `reminder_days` that has not
/// been reminded yet: (month, points, expires_at_ms).
pub fn reminder_due(rules: &RuleSet, state: &mut MemberState, now_ms: i64) -> Option<(i64, i64, i64)> {
    let days = rules.wallet.reminder_days?;
    let lot = state.lots.iter().find(|l| {
        l[0] > state.reminded_month
            && expiry_ms(rules, l[0]).is_some_and(|e| now_ms < e && e - now_ms <= days * DAY_MS)
    })?;
    let (month, points) = (lot[0], lot[1]);
    state.reminded_month = month;
    Some((month, points, expiry_ms(rules, month)?))
}

/// The next moment the wallet needs the scheduled check: a pending release, a lot
/// expiry, or a reminder.
pub fn next_check_ms(rules: &RuleSet, state: &MemberState) -> Option<i64> {
    let pending = state.pending.iter().map(|p| p.release_at_ms).min();
    let expiry = state.lots.first().and_then(|l| expiry_ms(rules, l[0]));
    let reminder = rules.wallet.reminder_days.and_then(|days| {
        state
            .lots
            .iter()
            .find(|l| l[0] > state.reminded_month)
            .and_then(|l| expiry_ms(rules, l[0]))
            .map(|e| e - days * DAY_MS)
    });
    let hold = state.holds.values().map(|h| h.expires_at_ms).min();
    let coupon = state.coupons.iter().filter(|c| c.status == "active").map(|c| c.valid_until_ms).min();
    let exchange = state.exchanges.values().map(|x| x.at_ms + answer_wait_ms(rules, &x.partner)).min();
    [pending, expiry, reminder, hold, coupon, exchange].into_iter().flatten().min()
}

/// How long an exchange out to `partner` waits for the answer (a partner no longer in
/// the rules: the default 48 h).
pub fn answer_wait_ms(rules: &RuleSet, partner: &str) -> i64 {
    rules.engagement.partners.get(partner).map_or(48 * 3_600_000, |p| p.answer_wait_ms)
}

/// Exchanges out whose partner has not answered within its wait, taken out of the
/// state (failed: the caller gives their lots back), oldest first.
pub fn exchanges_timed_out(rules: &RuleSet, state: &mut MemberState, now_ms: i64) -> Vec<(String, crate::state::PendingExchange)> {
    let due: Vec<String> = state
        .exchanges
        .iter()
        .filter(|(_, x)| x.at_ms + answer_wait_ms(rules, &x.partner) <= now_ms)
        .map(|(id, _)| id.clone())
        .collect();
    let mut out: Vec<_> = due.into_iter().filter_map(|id| state.exchanges.remove(&id).map(|x| (id, x))).collect();
    out.sort_by_key(|(id, x)| (x.at_ms, id.clone()));
    out
}

/// Locks `points` (oldest lots first) for a checkout; None when not enough.
pub fn hold(
    rules: &RuleSet,
    state: &mut MemberState,
    hold_id: &str,
    points: i64,
    expires_at_ms: i64,
    now_ms: i64,
) -> Option<Vec<[i64; 2]>> {
    let lots = spend_fifo(rules, state, points, now_ms)?;
    state.holds.insert(hold_id.to_string(), Hold { points, lots: lots.clone(), expires_at_ms });
    Some(lots)
}

/// Gives a hold's points back to the lots they came from.
pub fn release_hold(state: &mut MemberState, hold_id: &str) -> Option<Hold> {
    let h = state.holds.remove(hold_id)?;
    restore(state, &h.lots);
    Some(h)
}

/// Releases the holds whose time is up; returns their ids and points.
pub fn release_expired_holds(state: &mut MemberState, now_ms: i64) -> Vec<(String, i64)> {
    let due: Vec<String> = state.holds.iter().filter(|(_, h)| h.expires_at_ms <= now_ms).map(|(k, _)| k.clone()).collect();
    due.into_iter()
        .filter_map(|id| release_hold(state, &id).map(|h| (id, h.points)))
        .collect()
}

/// Spends `points` used at the till for a payment: the hold if it is still there,
/// else the oldest lots, and below zero if even they are short (the member already
/// had the discount). Returns the lots spent and what went below zero.
pub fn spend_used(
    rules: &RuleSet,
    state: &mut MemberState,
    hold_id: Option<&str>,
    points: i64,
    now_ms: i64,
) -> (Vec<[i64; 2]>, i64) {
    if let Some(h) = hold_id.and_then(|id| state.holds.remove(id)) {
        if h.points == points {
            return (h.lots, 0);
        }
        restore(state, &h.lots);
    }
    let have = available(rules, state, now_ms).min(points);
    let lots = spend_fifo(rules, state, have, now_ms).unwrap_or_default();
    let short = points - have;
    state.neg += short;
    (lots, short)
}

/// Month label of a lot ("2026-11").
pub fn month_label(month_index: i64) -> String {
    format!("{:04}-{:02}", month_index.div_euclid(12), month_index.rem_euclid(12) + 1)
}

/// The live points liability by the month the points expire in ("YYYY-MM", or "never"
/// without a validity): available lots, pending points (in the lot of their month) and
/// held points, summed over `states`. Points below zero (`neg`) are not a liability.
pub fn liability_by_expiry(rules: &RuleSet, states: &[MemberState]) -> Vec<(String, i64)> {
    let mut by: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    let label = |month: i64| match rules.wallet.validity_months {
        Some(v) => month_label(month + v),
        None => "never".to_string(),
    };
    for s in states {
        for l in &s.lots {
            *by.entry(label(l[0])).or_insert(0) += l[1];
        }
        for p in &s.pending {
            *by.entry(label(p.month)).or_insert(0) += p.points;
        }
        for h in s.holds.values() {
            for l in &h.lots {
                *by.entry(label(l[0])).or_insert(0) += l[1];
            }
        }
    }
    by.into_iter().filter(|(_, p)| *p != 0).collect()
}
