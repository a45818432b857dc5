//! Recovery: a member's wallet state rebuilt from their ledger rows alone (after a
//! Redis loss). Balance, lots, pending points, negative balance and debt, tier,
//! qualification, registration, campaign usage and the counters a payment moves (the
//! daily cap's points, today's spend per business unit, the spend streak, the month's
//! task) come back; referral and review counts and overrides start afresh.

use crate::record::{Booking, PaymentRecord, Record};
use crate::rules::RuleSet;
use crate::state::MemberState;
use crate::time::{Local, DAY_MS};
use crate::wallet;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
pub struct StoredPart {
    pub rule: String,
    #[serde(default)]
    pub id: String,
    pub points: i64,
}

#[derive(Debug, Deserialize)]
pub struct StoredRow {
    pub event_id: String,
    pub kind: String,
    pub points: i64,
    pub amount_fen: i64,
    pub bu_id: String,
    #[serde(default)]
    pub merchant_id: String,
    pub category: String,
    #[serde(default)]
    pub format: String,
    pub occurred_at_ms: i64,
    #[serde(default)]
    pub processed_at_ms: i64,
    #[serde(default)]
    pub refund_of: String,
    #[serde(default)]
    pub explain: Vec<StoredPart>,
    #[serde(default)]
    pub lots: Vec<[i64; 2]>,
}

/// One applied event's record, as the store keeps it for idempotency and refunds: the
/// payment's counts (the amount and points of any kind) and, for a payment, where it was
/// booked, the tier before it and the lots its used points came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub event_id: String,
    pub kind: String,
    pub payment: PaymentRecord,
    /// Its split and funding are left at 0 here: `encode` recomputes them.
    pub booking: Booking,
    pub applied_ms: i64,
}

impl EventRecord {
    /// The record Redis keeps (`record.rs`) for a payment or a refund; None for the
    /// other kinds (the caller writes those). The split of a payment is recomputed under
    /// today's rules: the ledger keeps where it was booked, not its split.
    pub fn encode(&self, rules: &RuleSet) -> Option<String> {
        let p = &self.payment;
        match self.kind.as_str() {
            "payment" => {
                let b = &self.booking;
                let split = rules.split_of(&b.bu_id, &b.merchant_id, p.amount_fen, p.used);
                let booking = Booking {
                    commission_fen: split.commission_fen,
                    merchant_fen: split.merchant_fen,
                    offset_fen: split.points_offset_fen,
                    funded_fen: rules.funding_fen(&b.bu_id, p.points),
                    ..b.clone()
                };
                Some(Record::Payment { applied_ms: Some(self.applied_ms), digest: 0, payment: *p, booking }.encode())
            }
            "refund" => Some(
                Record::Refund { applied_ms: Some(self.applied_ms), digest: 0, amount_fen: p.amount_fen, points: p.points }
                    .encode(),
            ),
            _ => None,
        }
    }
}

pub struct Rebuilt {
    pub state: MemberState,
    pub balance: i64,
    pub records: Vec<EventRecord>,
}

fn remove_lots(state: &mut MemberState, lots: &[[i64; 2]]) {
    for l in lots {
        if let Some(lot) = state.lots.iter_mut().find(|x| x[0] == l[0]) {
            lot[1] -= l[1];
        }
    }
    state.lots.retain(|l| l[1] > 0);
}

fn part<'a>(row: &'a StoredRow, rule: &str) -> Option<&'a StoredPart> {
    row.explain.iter().find(|p| p.rule == rule)
}

/// Rebuilds from rows in the order they were applied (oldest first).
/// The parts of a payment's points that no cap applies to (accrual.rs adds them after the
/// per-transaction and daily caps), and a debt repaid from them.
const UNCAPPED: [&str; 4] = ["spend_streak", "monthly_task", "birthday_bonus", "debt"];

/// The counters a payment's row moves, as accrual moved them when it was applied
/// (`accrual::move_counters`): the points the caps applied to are the row's parts but the
/// uncapped ones.
fn day_counters(rules: &RuleSet, state: &mut MemberState, local: &Local, row: &StoredRow) {
    let capped: i64 = row.explain.iter().filter(|p| !UNCAPPED.contains(&p.rule.as_str())).map(|p| p.points).sum();
    crate::accrual::move_counters(rules, state, local, &row.bu_id, row.amount_fen, capped);
}

pub fn rebuild_member(rules: &RuleSet, rows: &[StoredRow], now_ms: i64) -> Rebuilt {
    let mut state = MemberState::default();
    let mut balance = 0;
    let mut records: BTreeMap<String, EventRecord> = BTreeMap::new();
    // The month lot each payment's points went into: its refunds take from it first.
    let mut earned_month: BTreeMap<String, i64> = BTreeMap::new();
    // When each payment happened: its refunds take their amount out of that day's counters.
    let mut paid_at: BTreeMap<String, i64> = BTreeMap::new();
    let window = rules.tier_policy.window_months;
    for row in rows {
        balance += row.points;
        let local = Local::of(row.occurred_at_ms, rules.utc_offset_minutes);
        let month = local.month_index as i64;
        let record_kind = match row.kind.as_str() {
            "earn" => "payment",
            "clawback" => "refund",
            // Rows that go with another row of the same event (tier change, points
            // used at the till, points a refund gave back).
            "tier_change" => "",
            "redeem" if records.contains_key(&row.event_id) => "",
            "return" => "",
            other => other,
        };
        if !record_kind.is_empty() {
            records.entry(row.event_id.clone()).or_insert_with(|| EventRecord {
                event_id: row.event_id.clone(),
                kind: record_kind.to_string(),
                payment: PaymentRecord { amount_fen: row.amount_fen, points: row.points, ..PaymentRecord::default() },
                booking: Booking {
                    bu_id: row.bu_id.clone(),
                    merchant_id: row.merchant_id.clone(),
                    category: row.category.clone(),
                    format: row.format.clone(),
                    at_ms: row.occurred_at_ms,
                    // The tier change an earn caused follows its row: this is the tier before.
                    tier_before: rules.tier(state.tier.as_deref()).id.clone(),
                    ..Booking::default()
                },
                applied_ms: row.processed_at_ms,
            });
        }
        match row.kind.as_str() {
            "earn" => {
                let debt = part(row, "debt").map_or(0, |p| -p.points);
                state.owed = (state.owed - debt).max(0);
                state.add_qualification(
                    local.month_index,
                    window,
                    row.points + debt,
                    row.amount_fen,
                );
                for p in row.explain.iter().filter(|p| p.rule == "campaign") {
                    *state.campaigns.entry(p.id.clone()).or_insert(0) += p.points;
                }
                day_counters(rules, &mut state, &local, row);
                if part(row, "birthday_bonus").is_some() {
                    state.birthday_bonus_year = local.year;
                }
                let days = rules
                    .business_units
                    .get(&row.bu_id)
                    .map_or(0, |bu| rules.return_window_days(bu, &row.category));
                let pending =
                    (days > 0).then(|| (row.event_id.as_str(), row.occurred_at_ms + days * DAY_MS));
                wallet::credit(&mut state, row.points, month, pending);
                earned_month.insert(row.event_id.clone(), month);
                paid_at.insert(row.event_id.clone(), row.occurred_at_ms);
            }
            "clawback" => {
                let _ = &row.refund_of;
                let owed = part(row, "owed")
                    .and_then(|p| p.id.parse::<i64>().ok())
                    .unwrap_or(0);
                let taken = -row.points;
                let short =
                    wallet::take_back(&mut state, &row.refund_of, earned_month.get(&row.refund_of).copied(), taken);
                if let Some(&at) = paid_at.get(&row.refund_of) {
                    crate::accrual::unspend(&mut state, &Local::of(at, rules.utc_offset_minutes), &row.bu_id,
                                            row.amount_fen);
                }
                state.neg += short;
                state.owed += owed;
                state.add_qualification(
                    local.month_index,
                    window,
                    -(taken + owed),
                    -row.amount_fen,
                );
                if let Some(orig) = records.get_mut(&row.refund_of) {
                    orig.payment.refunded_amount_fen += row.amount_fen;
                    orig.payment.refunded_points += taken + owed;
                }
            }
            "redeem" | "expire" => {
                if row.kind == "redeem" {
                    if let Some(rec) = records
                        .get_mut(&row.event_id)
                        .filter(|r| r.kind == "payment")
                    {
                        rec.payment.used += -row.points;
                        rec.booking.used_lots.extend_from_slice(&row.lots);
                    }
                }
                remove_lots(&mut state, &row.lots);
                // Points used at the till beyond what the lots held went below zero.
                let from_lots: i64 = row.lots.iter().map(|l| l[1]).sum();
                state.neg += (-row.points - from_lots).max(0);
            }
            "return" => {
                // Into the lots the row names (their own expiry), the rest this month.
                wallet::restore(&mut state, &row.lots);
                let into_lots: i64 = row.lots.iter().map(|l| l[1]).sum();
                wallet::credit(&mut state, row.points - into_lots, month, None);
                if let Some(orig) = records.get_mut(&row.refund_of) {
                    orig.payment.returned_used += row.points;
                }
            }
            "reverse" => wallet::restore(&mut state, &row.lots),
            // An exchange the partner failed gives the very lots back.
            "exchange_returned" => wallet::restore(&mut state, &row.lots),
            // Spends of the engagement operations (game cost, make-up, stake, exchange
            // out) and negative adjustments name the lots they took.
            _ if row.points < 0 => remove_lots(&mut state, &row.lots),
            "tier_change" => {
                if let Some(p) = row.explain.first() {
                    let to = p.id.rsplit("->").next().unwrap_or_default();
                    let index = rules.tier_index(Some(to));
                    state.tier = (index > 0).then(|| to.to_string());
                    state.tier_since_ms = Some(row.occurred_at_ms);
                    state.review_at_ms = (index > 0).then_some(
                        row.occurred_at_ms + rules.tier_policy.review_after_days * DAY_MS,
                    );
                }
            }
            kind => {
                if kind == "register" {
                    state.registered_at_ms = Some(row.occurred_at_ms);
                }
                wallet::credit(&mut state, row.points, month, None);
            }
        }
    }
    wallet::release_due(&mut state, now_ms);
    Rebuilt {
        state,
        balance,
        records: records.into_values().collect(),
    }
}
