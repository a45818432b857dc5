//! Tiers in motion: the tier a member earns at, qualification over the rolling
//! window, upgrade at once, review (downgrade or renewal), and progress.

use crate::rules::{Downgrade, RuleSet, Tier};
use crate::state::MemberState;
use crate::time::DAY_MS;

/// The tier a member earns at when an event happens at `at_ms`: an operator's
/// override while it lasts, else the qualified tier.
pub fn effective_tier<'r>(rules: &'r RuleSet, state: &MemberState, at_ms: i64) -> &'r Tier {
    if let (Some(t), Some(until)) = (&state.override_tier, state.override_until_ms) {
        if at_ms < until {
            return rules.tier(Some(t));
        }
    }
    rules.tier(state.tier.as_deref())
}

fn meets(tier: &Tier, points: i64, spend: i64) -> bool {
    tier.qualify_points.is_some_and(|q| points >= q) || tier.qualify_spend_fen.is_some_and(|q| spend >= q)
}

/// Index of the highest tier the window's totals qualify for (0 = the default).
pub fn qualified_index(rules: &RuleSet, state: &MemberState, month_index: i32) -> usize {
    let (points, spend) = state.window_totals(month_index, rules.tier_policy.window_months);
    (1..rules.tiers.len())
        .rev()
        .find(|&i| meets(&rules.tiers[i], points, spend))
        .unwrap_or(0)
}

/// A change of the member's qualified tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierChange {
    pub from: String,
    pub to: String,
    pub reason: &'static str,
}

fn set_tier(rules: &RuleSet, state: &mut MemberState, index: usize, at_ms: i64) {
    state.tier = if index == 0 { None } else { Some(rules.tiers[index].id.clone()) };
    state.tier_since_ms = Some(at_ms);
    state.review_at_ms = (index > 0).then_some(at_ms + rules.tier_policy.review_after_days * DAY_MS);
}

/// Upgrade at once when the window crosses a higher tier's threshold.
pub fn check_upgrade(rules: &RuleSet, state: &mut MemberState, month_index: i32, at_ms: i64) -> Option<TierChange> {
    let current = rules.tier_index(state.tier.as_deref());
    let qualified = qualified_index(rules, state, month_index);
    if qualified <= current {
        return None;
    }
    set_tier(rules, state, qualified, at_ms);
    Some(TierChange {
        from: rules.tiers[current].id.clone(),
        to: rules.tiers[qualified].id.clone(),
        reason: "upgrade",
    })
}

/// After a refund (policy `recheck`): the member falls back to the highest tier the
/// window still qualifies for, never below `floor` (the tier held before the refunded
/// payment) and never up. A fallen-back tier gets a review as any tier reached does.
pub fn recheck_after_refund(
    rules: &RuleSet,
    state: &mut MemberState,
    month_index: i32,
    floor: usize,
    at_ms: i64,
) -> Option<TierChange> {
    let current = rules.tier_index(state.tier.as_deref());
    let new = qualified_index(rules, state, month_index).max(floor);
    if new >= current {
        return None;
    }
    set_tier(rules, state, new, at_ms);
    Some(TierChange {
        from: rules.tiers[current].id.clone(),
        to: rules.tiers[new].id.clone(),
        reason: "refund",
    })
}

/// The scheduled review: downgrade (to the qualified tier, or one step) or renew.
/// Returns None when the review is not due yet.
pub fn review(rules: &RuleSet, state: &mut MemberState, month_index: i32, at_ms: i64) -> Option<TierChange> {
    let due = state.review_at_ms?;
    if at_ms < due {
        return None;
    }
    let current = rules.tier_index(state.tier.as_deref());
    let qualified = qualified_index(rules, state, month_index);
    let new = match rules.tier_policy.downgrade {
        Downgrade::ToQualified => qualified,
        Downgrade::OneStep => qualified.max(current.saturating_sub(1)),
    };
    set_tier(rules, state, new, at_ms);
    let reason = match new.cmp(&current) {
        std::cmp::Ordering::Less => "downgrade",
        std::cmp::Ordering::Equal => "renewal",
        std::cmp::Ordering::Greater => "upgrade",
    };
    Some(TierChange {
        from: rules.tiers[current].id.clone(),
        to: rules.tiers[new].id.clone(),
        reason,
    })
}

/// What the member API shows about tiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierView {
    pub tier: String,
    pub qualified_tier: String,
    pub window_points: i64,
    pub window_spend_fen: i64,
    pub next_tier: Option<String>,
    pub points_to_next: Option<i64>,
    pub spend_to_next_fen: Option<i64>,
    pub review_at_ms: Option<i64>,
    pub override_until_ms: Option<i64>,
}

pub fn view(rules: &RuleSet, state: &MemberState, month_index: i32, now_ms: i64) -> TierView {
    let effective = effective_tier(rules, state, now_ms);
    let current = rules.tier_index(state.tier.as_deref());
    let (points, spend) = state.window_totals(month_index, rules.tier_policy.window_months);
    let next = rules.tiers.get(current + 1);
    TierView {
        tier: effective.id.clone(),
        qualified_tier: rules.tiers[current].id.clone(),
        window_points: points,
        window_spend_fen: spend,
        next_tier: next.map(|t| t.id.clone()),
        points_to_next: next.and_then(|t| t.qualify_points).map(|q| (q - points).max(0)),
        spend_to_next_fen: next.and_then(|t| t.qualify_spend_fen).map(|q| (q - spend).max(0)),
        review_at_ms: state.review_at_ms,
        override_until_ms: state
            .override_until_ms
            .filter(|&u| u > now_ms && state.override_tier.is_some()),
    }
}
