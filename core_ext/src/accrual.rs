//! Payments and refunds of a member: base rate, tier, birthday multiplier,
//! campaigns, caps, the behaviour rules a payment drives (spend streak, monthly
//! task, birthday-month bonus), and the tier upgrade it may cause.

use crate::campaigns::{self, PaymentView};
use crate::errors::{CoreError, CoreResult};
use crate::events::{EventKind, PaymentEvent, RECEIPT_CHANNEL};
use crate::ledger::{history_json, rows_json, LedgerRow, Part};
use crate::rules::{OnRefund, RuleSet, Shortfall};
use crate::state::{same_purchase, MemberState, Purchase};
use crate::tiers::{self, TierChange};
use crate::time::{Local, DAY_MS};
use crate::settlement;
use crate::wallet;
use rustc_hash::FxHashMap as HashMap;

pub use crate::record::PaymentRecord;

/// A movement to apply to one member, with the ledger rows that record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub points: i64,
    pub amount_fen: i64,
    pub refund_of: Option<String>,
    pub clawback_points: i64,
    /// Campaign budget consumed: (campaign id, points).
    pub campaigns: Vec<(String, i64)>,
    pub rows_json: String,
    /// The member history's entry for the event, when it was written with the rows (a
    /// payment or refund with no row added after); otherwise it is read off `rows_json`.
    pub history_json: Option<String>,
    /// A notification for the member (an expiry reminder), as JSON.
    pub notice: Option<String>,
    /// What the event's record keeps as its points (a payment: what it earned).
    pub record_points: i64,
    /// Points used at the till (payments) and given back (refunds).
    pub used_points: i64,
    pub returned_points: i64,
    /// A payment's booking (where and what split), kept in its record for its refunds.
    pub booking: Option<crate::record::Booking>,
    /// Leaderboards the event moved, with the member's new absolute score on each.
    pub boards: Vec<(String, i64)>,
    /// A scheduled campaign's coupon to issue: (template, trigger).
    pub grant: Option<(String, String)>,
}

impl Applied {
    /// A member operation that moves points only (its record keeps them), with its rows.
    pub fn points_only(points: i64, rows_json: String) -> Applied {
        Applied {
            points,
            amount_fen: 0,
            refund_of: None,
            clawback_points: 0,
            campaigns: Vec::new(),
            rows_json,
            history_json: None,
            notice: None,
            record_points: points,
            used_points: 0,
            returned_points: 0,
            booking: None,
            boards: Vec::new(),
            grant: None,
        }
    }
}

/// Removes `excess` points from the parts: campaigns first (last listed first),
/// then the rest (last first). The cut is recorded as a zero-point part naming it,
/// so the parts always sum to what the member gets.
fn cut(parts: &mut Vec<Part>, excess: i64, rule: &'static str) {
    if excess <= 0 {
        return;
    }
    let mut left = excess;
    for campaigns_pass in [true, false] {
        for p in parts.iter_mut().rev() {
            if left == 0 {
                break;
            }
            if (p.rule == "campaign") == campaigns_pass {
                let take = p.points.min(left).max(0);
                p.points -= take;
                left -= take;
            }
        }
    }
    parts.push(Part::new(rule, format!("cut {excess}"), 0));
}

fn earned(parts: &[Part]) -> i64 {
    parts.iter().map(|p| p.points).sum()
}

/// Points of a payment and the state changes it causes.
pub fn accrue_payment(
    rules: &RuleSet,
    ev: &PaymentEvent,
    member_id: &str,
    state: &mut MemberState,
    budget_spent: &mut HashMap<String, i64>,
    now_ms: i64,
) -> CoreResult<Applied> {
    let bu = rules
        .business_units
        .get(&ev.bu_id)
        .ok_or_else(|| CoreError::rejected("bu_id", format!("unknown business unit {:?}", ev.bu_id)))?;
    let local = Local::of(ev.occurred_at_ms, rules.utc_offset_minutes);
    let tier = tiers::effective_tier(rules, state, ev.occurred_at_ms);
    let category = rules.category_of(&ev.merchant_id, &ev.category);
    let amount = ev.amount_fen as i128;
    let mut parts: Vec<Part> = Vec::with_capacity(4);
    // With receipt points offered: a receipt and a payment of one purchase earn once (the
    // first applied); the later is applied, its money settled, and earns nothing.
    let receipt_no = ev.receipt_no.as_deref().unwrap_or("");
    let from_receipt = ev.channel == RECEIPT_CHANNEL;
    let earned_already = match &rules.engagement.receipts {
        None => None,
        Some(_) if from_receipt => state.payment_like(local.day, &ev.merchant_id, ev.amount_fen, receipt_no).map(|p| p.4.clone()),
        Some(_) => state
            .receipts
            .iter()
            .find(|(_, r)| {
                r.status == "approved" && {
                    let day = Local::of(r.purchased_at_ms, rules.utc_offset_minutes).day;
                    same_purchase((day, &r.merchant_id, r.amount_fen, &r.receipt_no), (local.day, &ev.merchant_id, ev.amount_fen, receipt_no))
                }
            })
            .map(|(id, _)| id.clone()),
    };
    if let Some(other) = &earned_already {
        parts.push(Part::new("earned_already", other.clone(), 0));
    } else if let Some(rate) = rules.base_rate(bu, &ev.merchant_id, category) {
        // i128: amount (<= 1e12) * points (<= 1e4) * pct (<= 1e4) stays far below 2^127.
        let base = rules.rounding.divide(amount * rate.points as i128, rate.per_fen as i128) as i64;
        let with_tier = rules.rounding.divide(
            amount * rate.points as i128 * tier.multiplier_pct as i128,
            rate.per_fen as i128 * 100,
        ) as i64;
        parts.push(Part::new("base", "", base));
        if with_tier != base {
            parts.push(Part::new("tier", tier.id.clone(), with_tier - base));
        }
        if tier.birthday_multiplier_pct > 100 && state.birthday_month() == Some(local.month) {
            let extra = rules
                .rounding
                .divide(with_tier as i128 * (tier.birthday_multiplier_pct - 100) as i128, 100) as i64;
            parts.push(Part::new("birthday", tier.id.clone(), extra));
        }
        if let Some(&pct) = rules.engagement.channel_multiplier_pct.get(&ev.channel) {
            // A payment channel with its own earning rate (stored value at the till).
            let extra = rules.rounding.divide(with_tier as i128 * (pct - 100) as i128, 100) as i64;
            parts.push(Part::new("channel", ev.channel.clone(), extra));
        }
        let view = PaymentView {
            bu_id: &ev.bu_id,
            merchant_id: &ev.merchant_id,
            category,
            tier_id: &tier.id,
            amount_fen: ev.amount_fen,
            at_ms: ev.occurred_at_ms,
            local,
        };
        for (i, points) in campaigns::contributions(rules, &view, state, with_tier, budget_spent) {
            parts.push(Part::new("campaign", rules.campaigns[i].id.clone(), points));
        }
    } else {
        parts.push(Part::new("excluded", category, 0));
    }

    if let Some(cap) = rules.per_transaction_cap {
        let excess = earned(&parts) - cap;
        cut(&mut parts, excess, "cap");
    }
    if let Some(cap) = rules.per_member_daily_cap {
        let today = if state.day == local.day { state.earned_day } else { 0 };
        let excess = earned(&parts) - (cap - today).max(0);
        cut(&mut parts, excess, "daily_cap");
    }
    let capped = earned(&parts);

    // Budgets and per-member caps are consumed by what the campaigns finally give.
    let mut consumed = Vec::new();
    for p in parts.iter().filter(|p| p.rule == "campaign" && p.points > 0) {
        *budget_spent.entry(p.id.clone()).or_insert(0) += p.points;
        *state.campaigns.entry(p.id.clone()).or_insert(0) += p.points;
        consumed.push((p.id.clone(), p.points));
    }
    // Behaviour rules a payment drives; not subject to the caps above (nor moved twice by
    // one purchase).
    let b = &rules.behaviour;
    let spend_fen = if earned_already.is_some() { 0 } else { ev.amount_fen };
    if earned_already.is_none() {
        let (streak_bonus, task_bonus) = move_counters(rules, state, &local, &ev.bu_id, ev.amount_fen, capped);
        if let (true, Some((streak, _))) = (streak_bonus, b.spend_streak) {
            parts.push(Part::new("spend_streak", format!("{}d", streak.days), streak.points));
        }
        if let (true, Some((_, points))) = (task_bonus, b.monthly_task) {
            parts.push(Part::new("monthly_task", "", points));
        }
        if b.birthday_month_bonus > 0 && state.birthday_month() == Some(local.month)
            && state.birthday_bonus_year != local.year
        {
            state.birthday_bonus_year = local.year;
            parts.push(Part::new("birthday_bonus", "", b.birthday_month_bonus));
        }
    }

    let mut total: i64 = parts.iter().map(|p| p.points).sum();
    state.add_qualification(local.month_index, rules.tier_policy.window_months, total, spend_fen);
    if let (Some(r), None, false, false) = (&rules.engagement.receipts, &earned_already, from_receipt, state.receipts.is_empty()) {
        let p = Purchase(local.day, ev.merchant_id.clone(), ev.amount_fen, receipt_no.to_string(), ev.event_id.clone());
        state.note_purchase(p, r.max_age_days + 1);
    }
    let tier_before = rules.tier(state.tier.as_deref()).id.clone();
    let change = tiers::check_upgrade(rules, state, local.month_index, ev.occurred_at_ms);
    // A debt a refund left (policy record_debt) is taken from these points first.
    if state.owed > 0 && total > 0 {
        let repay = state.owed.min(total);
        state.owed -= repay;
        total -= repay;
        parts.push(Part::new("debt", "", -repay));
    }
    if let Some(order_id) = &ev.mall_order {
        // The cash part of a points-mall order (积分换购): the payment earns and settles like
        // any; a zero-point part records whether it paid the order, and why not.
        let paid = match state.orders.get_mut(order_id) {
            None => Err("no such order".to_string()),
            Some(o) => {
                let days = rules.engagement.mall_items.get(&o.item).map_or(30, |it| it.collect_days);
                o.pay_cash(&ev.event_id, ev.amount_fen, ev.occurred_at_ms, days * DAY_MS)
            }
        };
        parts.push(match paid {
            Ok(()) => Part::new("mall_cash", order_id.clone(), 0),
            Err(why) => Part::new("mall_cash_unmatched", format!("{order_id}: {why}"), 0),
        });
    }
    let window = rules.return_window_days(bu, category);
    let pending = (window > 0).then(|| (ev.event_id.as_str(), ev.occurred_at_ms + window * DAY_MS));
    wallet::credit(state, total, local.month_index as i64, pending);
    crate::engage::note_earned(rules, state, &ev.event_id, &ev.bu_id, local.day, total);
    let split = rules.split_of(&ev.bu_id, &ev.merchant_id, ev.amount_fen, ev.points_used);
    let funded_fen = rules.funding_fen(&ev.bu_id, total);
    let lines = settlement::payment_lines(&ev.bu_id, &ev.merchant_id, &split, total, funded_fen, ev.points_used, 1);
    let mut booking = crate::record::Booking {
        bu_id: ev.bu_id.clone(),
        merchant_id: ev.merchant_id.clone(),
        category: category.to_string(),
        format: bu.format.clone(),
        commission_fen: split.commission_fen,
        merchant_fen: split.merchant_fen,
        offset_fen: split.points_offset_fen,
        funded_fen,
        at_ms: ev.occurred_at_ms,
        tier_before,
        used_lots: Vec::new(),
    };
    let (mut rows, mut history) =
        payment_rows(rules, ev, member_id, "earn", total, &parts, &tier.id, change.as_ref(), &lines, now_ms);
    if ev.points_used > 0 {
        history = None;
        let (lots, short) = wallet::spend_used(rules, state, ev.hold_id.as_deref(), ev.points_used, ev.occurred_at_ms);
        let mut used_parts = vec![Part::new("points_used", ev.hold_id.clone().unwrap_or_default(), -ev.points_used)];
        if short > 0 {
            used_parts.push(Part::new("below_zero", format!("{short}"), 0));
        }
        rows = append_row(rows, &extra_row(rules, ev, member_id, "redeem", -ev.points_used, &used_parts, &lots, &tier.id, now_ms));
        booking.used_lots = lots;
    }
    Ok(Applied {
        points: total - ev.points_used,
        amount_fen: ev.amount_fen,
        refund_of: None,
        clawback_points: 0,
        campaigns: consumed,
        rows_json: rows,
        history_json: history,
        notice: None,
        record_points: total,
        used_points: ev.points_used,
        returned_points: 0,
        booking: Some(booking),
        boards: Vec::new(),
        grant: None,
    })
}

/// Points to claw back for a refund of `refund_fen` against `original`: the
/// cumulative clawback is floor(points * refunded / amount), so a full refund,
/// in one go or in parts, returns exactly the points the payment earned.
pub fn clawback_for_refund(original: &PaymentRecord, refund_fen: i64) -> CoreResult<i64> {
    let remaining = original.amount_fen - original.refunded_amount_fen;
    if refund_fen > remaining {
        return Err(CoreError::rejected(
            "amount_fen",
            format!("refund of {refund_fen} fen exceeds the {remaining} fen not yet refunded of the payment"),
        ));
    }
    let refunded_after = (original.refunded_amount_fen + refund_fen) as i128;
    let total = original.points as i128 * refunded_after / original.amount_fen as i128;
    Ok(total as i64 - original.refunded_points)
}

pub fn accrue_refund(
    rules: &RuleSet,
    ev: &PaymentEvent,
    member_id: &str,
    original: PaymentRecord,
    booking: Option<&crate::record::Booking>,
    state: &mut MemberState,
    now_ms: i64,
) -> CoreResult<(Applied, PaymentRecord)> {
    let clawback = clawback_for_refund(&original, ev.amount_fen)?;
    // When the payment happened, if its record says: its lot, its day's spend, its month's task.
    let paid = booking.filter(|b| b.at_ms != 0).map(|b| Local::of(b.at_ms, rules.utc_offset_minutes));
    let lot_month = paid.map(|l| l.month_index as i64);
    let short = wallet::take_back(state, ev.refund_of.as_deref().unwrap_or_default(), lot_month, clawback);
    if let Some(paid) = paid {
        unspend(state, &paid, &ev.bu_id, ev.amount_fen);
    }
    let taken = match rules.wallet.shortfall {
        Shortfall::AllowNegative => {
            state.neg += short;
            clawback
        }
        Shortfall::RecordDebt => {
            state.owed += short;
            clawback - short
        }
    };
    crate::engage::unnote_earned(state, ev.refund_of.as_deref().unwrap_or_default(), clawback);
    let refunded_after = (original.refunded_amount_fen + ev.amount_fen) as i128;
    let returned = (original.used as i128 * refunded_after / original.amount_fen as i128) as i64 - original.returned_used;
    let after = PaymentRecord {
        refunded_amount_fen: original.refunded_amount_fen + ev.amount_fen,
        refunded_points: original.refunded_points + clawback,
        returned_used: original.returned_used + returned,
        ..original
    };
    let local = Local::of(ev.occurred_at_ms, rules.utc_offset_minutes);
    state.add_qualification(local.month_index, rules.tier_policy.window_months, -clawback, -ev.amount_fen);
    // A tier reached with the refunded spend (policy `recheck`; a record from before the
    // tier was kept: kept until review).
    let change = match booking.filter(|b| !b.tier_before.is_empty()) {
        Some(b) if rules.tier_policy.on_refund == OnRefund::Recheck => {
            let floor = rules.tier_index(Some(&b.tier_before));
            tiers::recheck_after_refund(rules, state, local.month_index, floor, ev.occurred_at_ms)
        }
        _ => None,
    };
    let tier = tiers::effective_tier(rules, state, ev.occurred_at_ms);
    let mut parts = vec![Part::new("refund", ev.refund_of.clone().unwrap_or_default(), -taken)];
    if taken < clawback {
        parts.push(Part::new("owed", format!("{}", clawback - taken), 0));
    }
    // The split and the funding the payment booked are reversed, never recomputed under
    // today's rules or contracts (a record without its booking: the rules' split).
    let (original_split, funded) = match booking {
        Some(b) => {
            let split = settlement::Split {
                gross_fen: original.amount_fen,
                commission_fen: b.commission_fen,
                merchant_fen: b.merchant_fen,
                points_offset_fen: b.offset_fen,
            };
            // The funding's cumulative share of the points taken back so far.
            let share = |taken_back: i64| {
                if original.points == 0 {
                    0
                } else {
                    (b.funded_fen as i128 * taken_back as i128 / original.points as i128) as i64
                }
            };
            (split, share(original.refunded_points + taken) - share(original.refunded_points))
        }
        None => (
            rules.split_of(&ev.bu_id, &ev.merchant_id, original.amount_fen, original.used),
            rules.funding_fen(&ev.bu_id, taken),
        ),
    };
    let reversed = settlement::split_refund(&original_split, original.refunded_amount_fen, ev.amount_fen);
    let lines = settlement::payment_lines(&ev.bu_id, &ev.merchant_id, &reversed, taken, funded, returned, -1);
    let (mut rows, mut history) =
        payment_rows(rules, ev, member_id, "clawback", -taken, &parts, &tier.id, change.as_ref(), &lines, now_ms);
    if returned > 0 {
        history = None;
        // Points the member used in the payment come back with the refund, into the lots
        // they came from (with those lots' expiry; a record without them: this month's).
        let used_lots = booking.map_or(&[][..], |b| b.used_lots.as_slice());
        let lots = wallet::give_back(state, used_lots, original.returned_used, returned, local.month_index as i64);
        let back = [Part::new("points_returned", ev.refund_of.clone().unwrap_or_default(), returned)];
        rows = append_row(rows, &extra_row(rules, ev, member_id, "return", returned, &back, &lots, &tier.id, now_ms));
    }
    Ok((
        Applied {
            points: returned - taken,
            amount_fen: ev.amount_fen,
            refund_of: ev.refund_of.clone(),
            clawback_points: clawback,
            campaigns: Vec::new(),
            rows_json: rows,
            history_json: history,
            notice: None,
            record_points: returned - taken,
            used_points: 0,
            returned_points: returned,
            booking: None,
            boards: Vec::new(),
            grant: None,
        },
        after,
    ))
}

/// The counters a payment moves: the points counted against the daily cap today (`capped`:
/// what the caps applied to), today's spend per business unit, the spend streak and the
/// month's task. Returns whether the streak and the task earn their bonus with this payment
/// (the payment's rows carry those parts; a rebuild from the rows moves the same counters).
pub(crate) fn move_counters(rules: &RuleSet, state: &mut MemberState, local: &Local, bu_id: &str, amount_fen: i64,
                            capped: i64) -> (bool, bool) {
    if state.day != local.day {
        state.day = local.day;
        state.earned_day = 0;
    }
    state.earned_day += capped;
    if state.spend_day != local.day {
        state.spend_day = local.day;
        state.spend_by_bu.clear();
    }
    *state.spend_by_bu.entry(bu_id.to_string()).or_insert(0) += amount_fen;
    let b = &rules.behaviour;
    let mut streak_bonus = false;
    if let Some((streak, min_amount)) = b.spend_streak {
        if amount_fen >= min_amount {
            match state.spend_last_day {
                Some(d) if d == local.day => {}
                Some(d) if d == local.day - 1 => state.spend_streak += 1,
                _ => state.spend_streak = 1,
            }
            state.spend_last_day = Some(local.day);
            if state.spend_streak >= streak.days {
                state.spend_streak = 0;
                streak_bonus = true;
            }
        }
    }
    let mut task_bonus = false;
    if let Some((target, _)) = b.monthly_task {
        if state.task_month != local.month_index {
            state.task_month = local.month_index;
            state.task_spend_fen = 0;
            state.task_done = false;
        }
        state.task_spend_fen += amount_fen;
        if !state.task_done && state.task_spend_fen >= target {
            state.task_done = true;
            task_bonus = true;
        }
    }
    (streak_bonus, task_bonus)
}

/// A refund takes its amount out of what its payment counted towards: the business
/// unit's spend of the day (what parking rewards) if that day is still the member's
/// current one, and the monthly task's spend if its month is the task's (a task already
/// done stays done: its bonus was part of the points the refund claws back pro rata).
pub(crate) fn unspend(state: &mut MemberState, paid: &Local, bu_id: &str, amount_fen: i64) {
    if state.spend_day == paid.day {
        if let Some(spent) = state.spend_by_bu.get_mut(bu_id) {
            *spent = (*spent - amount_fen).max(0);
        }
    }
    if state.task_month == paid.month_index && !state.task_done {
        state.task_spend_fen = (state.task_spend_fen - amount_fen).max(0);
    }
}

/// The ledger row of a payment or refund event, before any kind-specific field.
#[allow(clippy::too_many_arguments)]
fn row_of<'a>(
    rules: &'a RuleSet,
    ev: &'a PaymentEvent,
    member_id: &'a str,
    kind: &'a str,
    points: i64,
    parts: &'a [Part],
    tier: &'a str,
    now_ms: i64,
) -> LedgerRow<'a> {
    LedgerRow {
        event_id: &ev.event_id,
        member_id,
        kind,
        points,
        amount_fen: ev.amount_fen,
        bu_id: &ev.bu_id,
        format: rules.business_units.get(&ev.bu_id).map_or("", |b| b.format.as_str()),
        merchant_id: &ev.merchant_id,
        category: rules.category_of(&ev.merchant_id, &ev.category),
        channel: &ev.channel,
        occurred_at_ms: ev.occurred_at_ms,
        refund_of: ev.refund_of.as_deref().unwrap_or(""),
        tier,
        rules_version: &rules.version,
        processed_at_ms: now_ms,
        explain: parts,
        lots: &[],
        settlement: &[],
    }
}

/// The rows of a payment or refund (its own, and a tier change it caused) and the
/// member history's entry for them.
#[allow(clippy::too_many_arguments)]
fn payment_rows(
    rules: &RuleSet,
    ev: &PaymentEvent,
    member_id: &str,
    kind: &str,
    points: i64,
    parts: &[Part],
    tier: &str,
    change: Option<&TierChange>,
    lines: &[settlement::Line],
    now_ms: i64,
) -> (String, Option<String>) {
    let row = LedgerRow { settlement: lines, ..row_of(rules, ev, member_id, kind, points, parts, tier, now_ms) };
    match change {
        None => {
            let rows = [row];
            (rows_json(&rows), Some(history_json(&rows)))
        }
        Some(c) => {
            let explain = [Part::new(c.reason, format!("{}->{}", c.from, c.to), 0)];
            let change_row = LedgerRow {
                kind: "tier_change",
                points: 0,
                amount_fen: 0,
                tier: &c.to,
                explain: &explain,
                settlement: &[],
                ..row.clone()
            };
            let rows = [row, change_row];
            (rows_json(&rows), Some(history_json(&rows)))
        }
    }
}

/// A second row of a payment or refund: points used at the till, or given back.
#[allow(clippy::too_many_arguments)]
fn extra_row(
    rules: &RuleSet,
    ev: &PaymentEvent,
    member_id: &str,
    kind: &str,
    points: i64,
    parts: &[Part],
    lots: &[[i64; 2]],
    tier: &str,
    now_ms: i64,
) -> String {
    let row = LedgerRow {
        amount_fen: 0,
        channel: "points",
        lots,
        ..row_of(rules, ev, member_id, kind, points, parts, tier, now_ms)
    };
    serde_json::to_string(&row).expect("a ledger row always serialises")
}

/// Adds one row (a JSON object) to an event's rows (a JSON array).
fn append_row(mut rows: String, row: &str) -> String {
    rows.pop();
    rows.push(',');
    rows.push_str(row);
    rows.push(']');
    rows
}

/// A guest payment (no member): the fact kept for BI, as JSON.
pub fn guest_fact(rules: &RuleSet, ev: &PaymentEvent, now_ms: i64) -> String {
    let (kind, id) = ev.payer.clone().unwrap_or_default();
    serde_json::json!({
        "event_id": ev.event_id,
        "type": match ev.kind { EventKind::Payment => "payment", EventKind::Refund => "refund" },
        "payer_kind": kind,
        "payer_id": id,
        "amount_fen": ev.amount_fen,
        "bu_id": ev.bu_id,
        "format": rules.business_units.get(&ev.bu_id).map_or("", |b| b.format.as_str()),
        "merchant_id": ev.merchant_id,
        "category": rules.category_of(&ev.merchant_id, &ev.category),
        "channel": ev.channel,
        "occurred_at_ms": ev.occurred_at_ms,
        "refund_of": ev.refund_of.as_deref().unwrap_or(""),
        "processed_at_ms": now_ms,
    })
    .to_string()
}
