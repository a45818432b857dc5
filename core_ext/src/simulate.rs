//! Backtest: replay a payment history through a rule set without touching any
//! store, from empty member states, and total what it would have issued.

use crate::accrual::{self, PaymentRecord};
use crate::errors::CoreResult;
use crate::events::{Event, EventKind};
use crate::rules::RuleSet;
use crate::state::MemberState;
use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    pub events: i64,
    pub refused: i64,
    pub points_issued: i64,
    pub points_clawed_back: i64,
    pub points_by_bu: BTreeMap<String, i64>,
    pub points_by_format: BTreeMap<String, i64>,
    /// campaign id -> points given
    pub campaign_points: BTreeMap<String, i64>,
    /// tier id -> members who reached it by upgrade
    pub upgrades: BTreeMap<String, i64>,
    /// tier id -> members at the end
    pub final_tiers: BTreeMap<String, i64>,
    /// What the issuing business units pay the points pool for the net points (fen).
    pub cost_fen_by_bu: BTreeMap<String, i64>,
    /// Net points per member (to count the members a change of rules affects).
    pub points_by_member: BTreeMap<String, i64>,
}

pub fn simulate(rules: &RuleSet, events: &[CoreResult<Event>]) -> SimReport {
    let mut report = SimReport::default();
    let mut states: HashMap<String, MemberState> = HashMap::default();
    let mut payments: HashMap<(String, String), PaymentRecord> = HashMap::default();
    let mut budgets: HashMap<String, i64> = HashMap::default();
    for ev in events {
        let Ok(Event::Payment(p)) = ev else {
            report.refused += 1;
            continue;
        };
        let Some(member) = p.member_id.clone() else { continue };
        report.events += 1;
        let state = states.entry(member.clone()).or_default();
        let tier_before = rules.tier_index(state.tier.as_deref());
        let mut trial = state.clone();
        let result = if p.kind == EventKind::Payment {
            accrual::accrue_payment(rules, p, &member, &mut trial, &mut budgets, 0).inspect(|a| {
                payments.insert(
                    (member.clone(), p.event_id.clone()),
                    PaymentRecord { amount_fen: p.amount_fen, points: a.record_points, ..Default::default() },
                );
            })
        } else {
            let key = (member.clone(), p.refund_of.clone().unwrap_or_default());
            match payments.get(&key).copied() {
                None => {
                    report.refused += 1;
                    continue;
                }
                Some(orig) => accrual::accrue_refund(rules, p, &member, orig, None, &mut trial, 0).map(|(a, after)| {
                    payments.insert(key, after);
                    a
                }),
            }
        };
        let Ok(applied) = result else {
            report.refused += 1;
            continue;
        };
        *state = trial;
        let format = rules.business_units.get(&p.bu_id).map_or("", |b| b.format.as_str()).to_string();
        if applied.points >= 0 {
            report.points_issued += applied.points;
        } else {
            report.points_clawed_back -= applied.points;
        }
        *report.points_by_bu.entry(p.bu_id.clone()).or_default() += applied.points;
        *report.cost_fen_by_bu.entry(p.bu_id.clone()).or_default() += rules.funding_fen(&p.bu_id, applied.points);
        *report.points_by_member.entry(member.clone()).or_default() += applied.points;
        *report.points_by_format.entry(format).or_default() += applied.points;
        for (id, pts) in &applied.campaigns {
            *report.campaign_points.entry(id.clone()).or_default() += pts;
        }
        let tier_after = rules.tier_index(state.tier.as_deref());
        if tier_after > tier_before {
            *report.upgrades.entry(rules.tiers[tier_after].id.clone()).or_default() += 1;
        }
    }
    for state in states.values() {
        *report.final_tiers.entry(rules.tier(state.tier.as_deref()).id.clone()).or_default() += 1;
    }
    report
}
