//! Point accrual for a batch of payment and refund events: a pure function of
//! (events, member states, rules, now). Payments earn by rate and tier; refunds
//! claw back, pro rata, what their payment earned. State is threaded through the
//! batch, so a refund may follow its payment in the same batch.

use crate::errors::{CoreError, CoreResult};
use crate::events::{EventKind, PaymentEvent};
use crate::rules::RuleSet;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// What the store knows about an applied payment (the target of a refund).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PaymentRecord {
    pub amount_fen: i64,
    pub points: i64,
    pub refunded_amount_fen: i64,
    pub refunded_points: i64,
}

/// Per-event context read from the store before the batch.
#[derive(Debug, Clone, Default)]
pub struct EventContext {
    /// The member's current tier (None: not a member yet, or no tier set).
    pub tier: Option<String>,
    /// For a refund: the payment it refunds, as stored (None: unknown).
    pub original: Option<PaymentRecord>,
    /// The event id was already applied by an earlier batch.
    pub already_applied: bool,
}

/// One row of the points ledger, serialised once here so that the store keeps
/// the exact row that a replay must reproduce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerRow<'a> {
    pub event_id: &'a str,
    pub member_id: &'a str,
    pub kind: &'static str,
    pub points: i64,
    pub amount_fen: i64,
    pub bu_id: &'a str,
    pub format: &'a str,
    pub merchant_id: &'a str,
    pub category: &'a str,
    pub channel: &'a str,
    pub occurred_at_ms: i64,
    pub refund_of: &'a str,
    pub tier: &'a str,
    pub rules_version: &'a str,
    pub processed_at_ms: i64,
}

/// A balance movement to apply, with the ledger row that records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    pub points: i64,
    /// The event's amount (the payment's, or the amount refunded).
    pub amount_fen: i64,
    /// For refunds: the refunded payment, the amount refunded and points clawed back.
    pub refund_of: Option<String>,
    pub refund_amount_fen: i64,
    pub clawback_points: i64,
    pub row_json: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Apply(Movement),
    /// Applied before (an earlier batch, or earlier in this one): no new effect.
    Duplicate,
    Rejected(CoreError),
}

/// Points a payment of `amount_fen` earns in `bu` at `tier` (never negative).
pub fn points_for_payment(rules: &RuleSet, ev: &PaymentEvent, tier_pct: i64) -> CoreResult<i64> {
    let bu = rules
        .business_units
        .get(&ev.bu_id)
        .ok_or_else(|| CoreError::rejected("bu_id", format!("unknown business unit {:?}", ev.bu_id)))?;
    let Some(rate) = rules.base_rate(bu, &ev.category) else {
        return Ok(0);
    };
    // i128: amount (<= 1e12) * points (<= 1e4) * pct (<= 1e4) stays far below 2^127.
    let num = ev.amount_fen as i128 * rate.points as i128 * tier_pct as i128;
    let den = rate.per_fen as i128 * 100;
    Ok(rules.rounding.divide(num, den) as i64)
}

/// Points to claw back for a refund of `refund_fen` against `original`: the
/// cumulative clawback is floor(points * refunded / amount), so a full refund,
/// in one go or in parts, returns exactly the points the payment earned.
pub fn clawback_for_refund(original: &PaymentRecord, refund_fen: i64) -> CoreResult<i64> {
    let remaining = original.amount_fen - original.refunded_amount_fen;
    if refund_fen > remaining {
        return Err(CoreError::rejected(
            "amount_fen",
            format!(
                "refund of {refund_fen} fen exceeds the {remaining} fen not yet refunded of the payment"
            ),
        ));
    }
    let refunded_after = (original.refunded_amount_fen + refund_fen) as i128;
    let total = original.points as i128 * refunded_after / original.amount_fen as i128;
    Ok(total as i64 - original.refunded_points)
}

/// Computes the outcome of every event of a batch, in order.
pub fn accrue_batch(
    rules: &RuleSet,
    events: &[CoreResult<PaymentEvent>],
    contexts: &[EventContext],
    now_ms: i64,
) -> Vec<Outcome> {
    assert_eq!(events.len(), contexts.len(), "one context per event");
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    // Payments as they stand after the events of this batch so far.
    let mut payments: HashMap<(String, String), PaymentRecord> = HashMap::new();
    let mut out = Vec::with_capacity(events.len());
    for (ev, ctx) in events.iter().zip(contexts) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                out.push(Outcome::Rejected(e.clone()));
                continue;
            }
        };
        if ctx.already_applied || !seen.insert((&ev.member_id, &ev.event_id)) {
            out.push(Outcome::Duplicate);
            continue;
        }
        let outcome = match ev.kind {
            EventKind::Payment => accrue_payment(rules, ev, ctx, now_ms, &mut payments),
            EventKind::Refund => accrue_refund(rules, ev, ctx, now_ms, &mut payments),
        };
        if outcome.is_err() {
            // A rejected event may be retried later (e.g. once its payment arrives).
            seen.remove(&(ev.member_id.as_str(), ev.event_id.as_str()));
        }
        out.push(outcome.map_or_else(Outcome::Rejected, Outcome::Apply));
    }
    out
}

fn accrue_payment(
    rules: &RuleSet,
    ev: &PaymentEvent,
    ctx: &EventContext,
    now_ms: i64,
    payments: &mut HashMap<(String, String), PaymentRecord>,
) -> CoreResult<Movement> {
    let tier = rules.tier(ctx.tier.as_deref());
    let points = points_for_payment(rules, ev, tier.multiplier_pct)?;
    payments.insert(
        (ev.member_id.clone(), ev.event_id.clone()),
        PaymentRecord {
            amount_fen: ev.amount_fen,
            points,
            ..PaymentRecord::default()
        },
    );
    let format = &rules.business_units[&ev.bu_id].format;
    Ok(Movement {
        points,
        amount_fen: ev.amount_fen,
        refund_of: None,
        refund_amount_fen: 0,
        clawback_points: 0,
        row_json: ledger_json(rules, ev, "earn", points, format, &tier.id, now_ms),
    })
}

fn accrue_refund(
    rules: &RuleSet,
    ev: &PaymentEvent,
    ctx: &EventContext,
    now_ms: i64,
    payments: &mut HashMap<(String, String), PaymentRecord>,
) -> CoreResult<Movement> {
    let of = ev.refund_of.as_deref().unwrap_or_default();
    let key = (ev.member_id.clone(), of.to_string());
    let original = match payments.get(&key).copied().or(ctx.original) {
        Some(p) => p,
        None => {
            return Err(CoreError::rejected(
                "refund_of",
                format!("no payment {of:?} of member {:?} is known", ev.member_id),
            ))
        }
    };
    let clawback = clawback_for_refund(&original, ev.amount_fen)?;
    payments.insert(
        key,
        PaymentRecord {
            refunded_amount_fen: original.refunded_amount_fen + ev.amount_fen,
            refunded_points: original.refunded_points + clawback,
            ..original
        },
    );
    let tier = rules.tier(ctx.tier.as_deref());
    let format = rules
        .business_units
        .get(&ev.bu_id)
        .map_or("", |bu| bu.format.as_str());
    Ok(Movement {
        points: -clawback,
        amount_fen: ev.amount_fen,
        refund_of: Some(of.to_string()),
        refund_amount_fen: ev.amount_fen,
        clawback_points: clawback,
        row_json: ledger_json(rules, ev, "clawback", -clawback, format, &tier.id, now_ms),
    })
}

fn ledger_json(
    rules: &RuleSet,
    ev: &PaymentEvent,
    kind: &'static str,
    points: i64,
    format: &str,
    tier: &str,
    now_ms: i64,
) -> String {
    let row = LedgerRow {
        event_id: &ev.event_id,
        member_id: &ev.member_id,
        kind,
        points,
        amount_fen: ev.amount_fen,
        bu_id: &ev.bu_id,
        format,
        merchant_id: &ev.merchant_id,
        category: &ev.category,
        channel: &ev.channel,
        occurred_at_ms: ev.occurred_at_ms,
        refund_of: ev.refund_of.as_deref().unwrap_or(""),
        tier,
        rules_version: &rules.version,
        processed_at_ms: now_ms,
    };
    serde_json::to_string(&row).expect("a ledger row always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::parse_payment_event;

    const RULES: &str = include_str!("../../rules/demo.toml");

    fn rules() -> RuleSet {
        RuleSet::from_toml(RULES, "rules/demo.toml").unwrap()
    }

    fn payment(id: &str, member: &str, bu: &str, category: &str, amount: i64) -> CoreResult<PaymentEvent> {
        parse_payment_event(
            format!(
                r#"{{"event_id":"{id}","type":"payment","occurred_at":"2026-11-23T10:00:00+08:00",
                "member_id":"{member}","bu_id":"{bu}","merchant_id":"shop-1","category":"{category}",
                "amount_fen":{amount},"channel":"wechat"}}"#
            )
            .as_bytes(),
        )
    }

    fn refund(id: &str, member: &str, of: &str, amount: i64) -> CoreResult<PaymentEvent> {
        parse_payment_event(
            format!(
                r#"{{"event_id":"{id}","type":"refund","occurred_at":"2026-11-23T11:00:00+08:00",
                "member_id":"{member}","bu_id":"sh-mall","merchant_id":"shop-1","category":"fashion",
                "amount_fen":{amount},"channel":"wechat","refund_of":"{of}"}}"#
            )
            .as_bytes(),
        )
    }

    fn points(out: &[Outcome]) -> Vec<Option<i64>> {
        out.iter()
            .map(|o| match o {
                Outcome::Apply(m) => Some(m.points),
                _ => None,
            })
            .collect()
    }

    fn ctx(n: usize) -> Vec<EventContext> {
        vec![EventContext::default(); n]
    }

    #[test]
    fn mall_earns_one_point_per_yuan_rounded_down() {
        let r = rules();
        let evs = vec![payment("a", "m1", "sh-mall", "fashion", 12_399)];
        assert_eq!(points(&accrue_batch(&r, &evs, &ctx(1), 0)), vec![Some(123)]);
    }

    #[test]
    fn hotel_earns_two_points_per_yuan() {
        let r = rules();
        let evs = vec![payment("a", "m1", "sh-hotel", "room", 50_050)];
        assert_eq!(points(&accrue_batch(&r, &evs, &ctx(1), 0)), vec![Some(1001)]);
    }

    #[test]
    fn gold_earns_one_and_a_half_and_rounds_down() {
        let r = rules();
        let evs = vec![payment("a", "m1", "sh-mall", "fashion", 1_099)];
        let c = vec![EventContext { tier: Some("gold".into()), ..Default::default() }];
        // 10.99 yuan -> 10.99 * 1.5 = 16.485 -> 16
        assert_eq!(points(&accrue_batch(&r, &evs, &c, 0)), vec![Some(16)]);
    }

    #[test]
    fn excluded_category_earns_nothing_and_category_rate_applies() {
        let r = rules();
        let evs = vec![
            payment("a", "m1", "sh-mall", "tobacco", 10_000),
            payment("b", "m1", "sh-mall", "jewelry", 10_000),
        ];
        assert_eq!(points(&accrue_batch(&r, &evs, &ctx(2), 0)), vec![Some(0), Some(50)]);
    }

    #[test]
    fn unknown_business_unit_is_rejected_with_the_field() {
        let r = rules();
        let evs = vec![payment("a", "m1", "nowhere", "fashion", 100)];
        match &accrue_batch(&r, &evs, &ctx(1), 0)[0] {
            Outcome::Rejected(e) => assert_eq!(e.field(), "bu_id"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refund_in_the_same_batch_claws_back_everything() {
        let r = rules();
        let evs = vec![payment("p", "m1", "sh-mall", "fashion", 10_000), refund("r", "m1", "p", 10_000)];
        assert_eq!(points(&accrue_batch(&r, &evs, &ctx(2), 0)), vec![Some(100), Some(-100)]);
    }

    #[test]
    fn partial_refunds_sum_to_the_points_earned() {
        let r = rules();
        let evs = vec![
            payment("p", "m1", "sh-mall", "fashion", 999),
            refund("r1", "m1", "p", 333),
            refund("r2", "m1", "p", 333),
            refund("r3", "m1", "p", 333),
        ];
        let pts = points(&accrue_batch(&r, &evs, &ctx(4), 0));
        // 9 points earned; cumulative floor: 3, 6, 9 -> -3 each.
        assert_eq!(pts, vec![Some(9), Some(-3), Some(-3), Some(-3)]);
    }

    #[test]
    fn refund_against_a_stored_payment_uses_its_record() {
        let r = rules();
        let evs = vec![refund("r", "m1", "p", 5_000)];
        let c = vec![EventContext {
            original: Some(PaymentRecord { amount_fen: 10_000, points: 150, refunded_amount_fen: 0, refunded_points: 0 }),
            ..Default::default()
        }];
        // The payment was earned at gold (150 for 100 yuan): half of it comes back.
        assert_eq!(points(&accrue_batch(&r, &evs, &c, 0)), vec![Some(-75)]);
    }

    #[test]
    fn over_refund_and_unknown_payment_are_rejected() {
        let r = rules();
        let evs = vec![
            payment("p", "m1", "sh-mall", "fashion", 1_000),
            refund("r1", "m1", "p", 1_001),
            refund("r2", "m1", "zzz", 10),
            refund("r3", "m2", "p", 10),
        ];
        let out = accrue_batch(&r, &evs, &ctx(4), 0);
        let fields: Vec<_> = out
            .iter()
            .map(|o| match o {
                Outcome::Rejected(e) => e.field().to_string(),
                _ => "ok".into(),
            })
            .collect();
        assert_eq!(fields, vec!["ok", "amount_fen", "refund_of", "refund_of"]);
    }

    #[test]
    fn duplicates_have_no_second_effect() {
        let r = rules();
        let evs = vec![
            payment("p", "m1", "sh-mall", "fashion", 1_000),
            payment("p", "m1", "sh-mall", "fashion", 1_000),
            payment("q", "m1", "sh-mall", "fashion", 1_000),
        ];
        let mut c = ctx(3);
        c[2].already_applied = true;
        let out = accrue_batch(&r, &evs, &c, 0);
        assert!(matches!(out[0], Outcome::Apply(_)));
        assert_eq!(out[1], Outcome::Duplicate);
        assert_eq!(out[2], Outcome::Duplicate);
    }

    #[test]
    fn deterministic_for_the_same_inputs() {
        let r = rules();
        let evs = vec![payment("p", "m1", "sh-mall", "fashion", 1_000), refund("r", "m1", "p", 10)];
        assert_eq!(accrue_batch(&r, &evs, &ctx(2), 42), accrue_batch(&r, &evs, &ctx(2), 42));
    }

    #[test]
    fn ledger_row_records_the_rule_version_and_tier() {
        let r = rules();
        let evs = vec![payment("p", "m1", "sh-mall", "fashion", 1_000)];
        let Outcome::Apply(m) = &accrue_batch(&r, &evs, &ctx(1), 7)[0] else { panic!() };
        let row: serde_json::Value = serde_json::from_str(&m.row_json).unwrap();
        assert_eq!(row["rules_version"], r.version.as_str());
        assert_eq!(row["tier"], "normal");
        assert_eq!(row["points"], 10);
        assert_eq!(row["processed_at_ms"], 7);
    }
}
