//! Campaign matching and stacking. Candidates come from the per-business-unit
//! index built with the rules; each is then checked on time, merchant, category,
//! tier and tags. Budgets and per-member caps limit what each one gives.

use crate::rules::{Campaign, CampaignKind, RuleSet, Stacking};
use crate::state::MemberState;
use crate::time::Local;
use rustc_hash::FxHashMap as HashMap;

/// What a payment looks like to the campaign matcher.
pub struct PaymentView<'a> {
    pub bu_id: &'a str,
    pub merchant_id: &'a str,
    pub category: &'a str,
    pub tier_id: &'a str,
    pub amount_fen: i64,
    pub at_ms: i64,
    pub local: Local,
}

pub fn matches(c: &Campaign, p: &PaymentView, state: &MemberState) -> bool {
    if c.starts_at_ms.is_some_and(|s| p.at_ms < s) || c.ends_at_ms.is_some_and(|e| p.at_ms >= e) {
        return false;
    }
    if p.amount_fen < c.min_amount_fen {
        return false;
    }
    if c.dates.as_ref().is_some_and(|d| !d.contains(&p.local.day))
        || c.weekdays.as_ref().is_some_and(|w| !w.contains(&p.local.weekday))
        || c.hours.is_some_and(|(from, to)| p.local.hour < from || p.local.hour >= to)
    {
        return false;
    }
    let f = &c.filter;
    f.merchants.as_ref().is_none_or(|s| s.contains(p.merchant_id))
        && f.categories.as_ref().is_none_or(|s| s.contains(p.category))
        && f.tiers.as_ref().is_none_or(|s| s.contains(p.tier_id))
        && f.tags.as_ref().is_none_or(|s| state.has_any_tag(s))
        && f.enrolled_by.as_ref().is_none_or(|c| state.campaigns_reached.get(c).is_some_and(|at| *at <= p.at_ms))
}

/// The points a campaign wants to give on `on` points (before budget and caps).
fn wanted(rules: &RuleSet, c: &Campaign, on: i64) -> i64 {
    match c.kind {
        CampaignKind::Multiplier(pct) => rules.rounding.divide(on as i128 * (pct - 100) as i128, 100) as i64,
        CampaignKind::Bonus(points) => points,
    }
}

/// Limits a contribution by the campaign's remaining budget and the member's cap.
fn limited(c: &Campaign, want: i64, budget_spent: &HashMap<String, i64>, state: &MemberState) -> i64 {
    let mut give = want.max(0);
    if let Some(budget) = c.budget_points {
        give = give.min((budget - budget_spent.get(&c.id).copied().unwrap_or(0)).max(0));
    }
    if let Some(cap) = c.per_member_cap_points {
        give = give.min((cap - state.campaigns.get(&c.id).copied().unwrap_or(0)).max(0));
    }
    give
}

/// Campaign contributions (campaign index, points) on a payment whose
/// tier-adjusted points are `on`, by the rule set's stacking rule. Zero-point
/// contributions are left out. Budgets and caps are read, not consumed.
pub fn contributions(
    rules: &RuleSet,
    p: &PaymentView,
    state: &MemberState,
    on: i64,
    budget_spent: &HashMap<String, i64>,
) -> Vec<(usize, i64)> {
    let Some(candidates) = rules.campaigns_by_bu.get(p.bu_id) else {
        return Vec::new();
    };
    let matching = candidates
        .iter()
        .copied()
        .filter(|&i| matches(&rules.campaigns[i], p, state));
    let mut out: Vec<(usize, i64)> = match rules.stacking {
        Stacking::Add => matching
            .map(|i| {
                let c = &rules.campaigns[i];
                (i, limited(c, wanted(rules, c, on), budget_spent, state))
            })
            .collect(),
        Stacking::BestOf => {
            let mut best: Option<(usize, i64)> = None;
            for i in matching {
                let c = &rules.campaigns[i];
                let give = limited(c, wanted(rules, c, on), budget_spent, state);
                if best.is_none_or(|(_, b)| give > b) {
                    best = Some((i, give));
                }
            }
            best.into_iter().collect()
        }
        Stacking::Multiply => {
            let mut running = on;
            let mut v = Vec::new();
            for i in matching {
                let c = &rules.campaigns[i];
                let give = limited(c, wanted(rules, c, running), budget_spent, state);
                if matches!(c.kind, CampaignKind::Multiplier(_)) {
                    running += give;
                }
                v.push((i, give));
            }
            v
        }
    };
    out.retain(|&(_, points)| points > 0);
    out
}
