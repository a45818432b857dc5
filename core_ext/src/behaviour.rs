//! Member events: registration gift, profile changes, daily sign-in with streak
//! bonuses, referral and review points, an operator's tier override, and the
//! scheduled tier review.

use crate::accrual::Applied;
use crate::errors::{CoreError, CoreResult};
use crate::events::{MemberEvent, MemberKind};
use crate::ledger::{rows_json, LedgerRow, Part};
use crate::rules::RuleSet;
use crate::state::MemberState;
use crate::tiers::{self, TierChange};
use crate::time::Local;
use crate::wallet;

pub fn apply_member_event(
    rules: &RuleSet,
    ev: &MemberEvent,
    state: &mut MemberState,
    now_ms: i64,
) -> CoreResult<Applied> {
    if matches!(ev.kind, MemberKind::MergeOut | MemberKind::MergeIn | MemberKind::UnmergeOut | MemberKind::UnmergeIn) {
        return crate::merge::apply(rules, ev, state, now_ms);
    }
    if ev.kind == MemberKind::Erase {
        return erase(rules, ev, state, now_ms);
    }
    let local = Local::of(ev.occurred_at_ms, rules.utc_offset_minutes);
    let b = &rules.behaviour;
    let mut parts: Vec<Part> = Vec::new();
    let mut change: Option<TierChange> = None;
    let mut expired: Vec<[i64; 2]> = Vec::new();
    let mut notice: Option<String> = None;
    let mut grant: Option<(String, String)> = None;
    // Exchanges out whose partner never answered (the wallet check fails them).
    let mut timed_out: Vec<(String, crate::state::PendingExchange)> = Vec::new();
    // Refusals first: nothing below may fail once the state has changed.
    if ev.kind == MemberKind::TierOverride {
        let tier = ev.tier.as_deref().unwrap_or_default();
        if !rules.tiers.iter().any(|t| t.id == tier) {
            return Err(CoreError::rejected(
                "tier",
                format!("unknown tier {tier:?}"),
            ));
        }
        if ev.until_ms.unwrap_or(0) <= ev.occurred_at_ms {
            return Err(CoreError::rejected("until", "must be after occurred_at"));
        }
    }
    let mut spent: Vec<[i64; 2]> = Vec::new();
    if ev.kind == MemberKind::Adjustment && ev.points < 0 {
        // Taken from the oldest spendable lots, like a redemption; never below zero.
        spent =
            wallet::spend_fifo(rules, state, -ev.points, ev.occurred_at_ms).ok_or_else(|| {
                CoreError::rejected(
                    "points",
                    format!(
                        "the member has {} points available, the adjustment takes {}",
                        wallet::available(rules, state, ev.occurred_at_ms),
                        -ev.points
                    ),
                )
            })?;
    }
    if matches!(ev.kind, MemberKind::Register | MemberKind::Profile) {
        if let Some(bd) = &ev.birthday {
            state.birthday = Some(bd.clone());
        }
        if let Some(tags) = &ev.tags {
            state.tags = tags.clone();
        }
        // Fields filled in are kept only when some profile reward may need them.
        let mut filled: Vec<String> = ev.profile_fields.clone();
        if ev.birthday.is_some() {
            filled.push("birthday".into());
        }
        if rules.engagement.profile_rewards.is_empty() {
            filled.clear();
        }
        for f in filled {
            if !state.profile_fields.contains(&f) {
                state.profile_fields.push(f);
            }
        }
        // Completing the profile: each reward once, when all of its fields are filled in.
        for r in &rules.engagement.profile_rewards {
            if !state.profile_rewarded.contains(&r.id) && r.fields.iter().all(|f| state.profile_fields.contains(f)) {
                state.profile_rewarded.push(r.id.clone());
                parts.push(Part::new("profile_reward", r.id.clone(), r.points));
            }
        }
    }
    match ev.kind {
        MemberKind::Register => {
            if state.registered_at_ms.is_none() {
                state.registered_at_ms = Some(ev.occurred_at_ms);
                parts.push(Part::new("registration_gift", "", b.registration_gift));
            } else {
                parts.push(Part::new("already_registered", "", 0));
            }
        }
        MemberKind::Profile => parts.push(Part::new("profile", "", 0)),
        MemberKind::Adjustment => {
            parts.push(Part::new(
                "adjustment",
                ev.reason.clone().unwrap_or_default(),
                ev.points,
            ));
        }
        MemberKind::ParkingExit => parts.push(Part::new("parking_exit", "", 0)),
        MemberKind::MergeOut | MemberKind::MergeIn | MemberKind::UnmergeOut | MemberKind::UnmergeIn | MemberKind::Erase => {
            unreachable!("merge and erase events are applied before this")
        }
        MemberKind::CouponGrant => {
            let send = ev.grant.as_ref().map_or(String::new(), |(_, s)| s.clone());
            parts.push(Part::new("coupon_grant", send, 0));
        }
        MemberKind::CampaignPush => {
            let (cid, run) = ev.campaign.as_ref().map(|(c, r)| (c.as_str(), r.as_str())).unwrap_or_default();
            match crate::coupons::campaign_push(rules, &ev.member_id, &ev.event_id, (cid, run), state, ev.occurred_at_ms) {
                crate::coupons::CampaignOutcome::Skipped(why) => {
                    parts.push(Part::new("campaign_skipped", format!("{cid}:{run}:{why}"), 0));
                }
                crate::coupons::CampaignOutcome::Notice(n) => {
                    notice = Some(n);
                    parts.push(Part::new("campaign_notice", format!("{cid}:{run}"), 0));
                }
                crate::coupons::CampaignOutcome::Coupon { template, trigger } => {
                    grant = Some((template, trigger));
                    parts.push(Part::new("campaign_coupon", format!("{cid}:{run}"), 0));
                }
            }
        }
        MemberKind::Segments => {
            state.segment_tags = ev.tags.clone().unwrap_or_default();
            state.segment = ev.segment.clone();
            parts.push(Part::new(
                "segments",
                ev.segment.clone().unwrap_or_default(),
                0,
            ));
        }
        MemberKind::SignIn => {
            if state.sign_in_last_day == Some(local.day) {
                parts.push(Part::new("already_signed_in_today", "", 0));
            } else {
                state.sign_in_streak = if state.sign_in_last_day == Some(local.day - 1) {
                    state.sign_in_streak + 1
                } else {
                    1
                };
                state.sign_in_last_day = Some(local.day);
                parts.push(Part::new("sign_in", "", b.sign_in_points));
                for s in &b.sign_in_streaks {
                    if state.sign_in_streak % s.days == 0 {
                        parts.push(Part::new(
                            "sign_in_streak",
                            format!("{}d", s.days),
                            s.points,
                        ));
                    }
                }
            }
        }
        MemberKind::Referral => {
            if state.referral_month != local.month_index {
                state.referral_month = local.month_index;
                state.referrals_month = 0;
            }
            let lifetime_full = b.referral_max_total.is_some_and(|m| state.referrals_total >= m);
            if state.referrals_month < b.referral_max_per_month && !lifetime_full {
                state.referrals_month += 1;
                if b.referral_max_total.is_some() {
                    state.referrals_total += 1; // kept only for a lifetime cap
                }
                parts.push(Part::new(
                    "referral",
                    ev.referred_member_id.clone().unwrap_or_default(),
                    b.referral_points,
                ));
            } else {
                parts.push(Part::new("referral_limit", "", 0));
            }
        }
        MemberKind::Review => {
            if state.review_day != local.day {
                state.review_day = local.day;
                state.reviews_today = 0;
            }
            if state.reviews_today < b.review_max_per_day {
                state.reviews_today += 1;
                parts.push(Part::new("review", "", b.review_points));
            } else {
                parts.push(Part::new("review_limit", "", 0));
            }
        }
        MemberKind::TierOverride => {
            let tier = ev.tier.as_deref().unwrap_or_default();
            let until = ev.until_ms.unwrap_or(0);
            state.override_tier = Some(tier.to_string());
            state.override_until_ms = Some(until);
            parts.push(Part::new("override", tier, 0));
        }
        MemberKind::TierReview => {
            change = tiers::review(rules, state, local.month_index, ev.occurred_at_ms);
            if change.is_none() {
                parts.push(Part::new("review_not_due", "", 0));
            }
        }
        MemberKind::WalletCheck => {
            for (id, points) in wallet::release_expired_holds(state, ev.occurred_at_ms) {
                parts.push(Part::new("hold_released", format!("{id}:{points}"), 0));
            }
            timed_out = wallet::exchanges_timed_out(rules, state, ev.occurred_at_ms);
            for (_id, x) in &timed_out {
                wallet::restore(state, &x.lots);
                let day = Local::of(x.at_ms, rules.utc_offset_minutes).day;
                if let Some(d) = state.exchange_days.get_mut(&x.partner).filter(|d| d[0] == day) {
                    d[1] -= x.points;
                }
            }
            let released = wallet::release_due(state, ev.occurred_at_ms);
            if released > 0 {
                parts.push(Part::new("released", format!("{released}"), 0));
            }
            expired = wallet::expire_due(rules, state, ev.occurred_at_ms);
            for l in &expired {
                parts.push(Part::new("expire", wallet::month_label(l[0]), -l[1]));
            }
            if let Some((month, points, expires_at_ms)) =
                wallet::reminder_due(rules, state, ev.occurred_at_ms)
            {
                notice = Some(
                    serde_json::json!({
                        "kind": "points_expiring", "member_id": ev.member_id, "event_id": ev.event_id,
                        "lot": wallet::month_label(month), "points": points, "expires_at_ms": expires_at_ms,
                    })
                    .to_string(),
                );
                parts.push(Part::new("reminder", wallet::month_label(month), 0));
            }
            if parts.is_empty() && timed_out.is_empty() {
                parts.push(Part::new("nothing_due", "", 0));
            }
        }
    }
    let points: i64 = parts.iter().map(|p| p.points).sum();
    if ev.kind != MemberKind::WalletCheck && points > 0 {
        // Behaviour points are spendable at once, in the lot of the month they were earned.
        wallet::credit(state, points, local.month_index as i64, None);
    }
    let tier = tiers::effective_tier(rules, state, ev.occurred_at_ms);
    let kind = if expired.is_empty() {
        ev.kind.as_str()
    } else {
        "expire"
    };
    let lines = if expired.is_empty() {
        // Behaviour points are the group's marketing: the pool issues them.
        let mut l = vec![
            crate::settlement::Line::points("members", points),
            crate::settlement::Line::points("pool", -points),
        ];
        l.retain(|x| x.points != 0);
        l
    } else {
        let s = &rules.settlement;
        crate::settlement::expiry_lines(
            -points,
            crate::settlement::value_of(-points, s.breakage_fen_per_100, 100),
            &s.breakage_to,
        )
    };
    let base = LedgerRow {
        event_id: &ev.event_id,
        member_id: &ev.member_id,
        kind,
        points,
        amount_fen: 0,
        bu_id: "",
        format: "",
        merchant_id: "",
        category: "",
        channel: "",
        occurred_at_ms: ev.occurred_at_ms,
        refund_of: "",
        tier: &tier.id,
        rules_version: &rules.version,
        processed_at_ms: now_ms,
        explain: &parts,
        lots: if expired.is_empty() { &spent } else { &expired },
        settlement: &lines,
    };
    // A failed exchange's own row, as the partner's "failed" answer makes it: the very lots
    // back, and the partner owed nothing for them.
    let returned: Vec<(Vec<Part>, Vec<crate::settlement::Line>)> = timed_out
        .iter()
        .map(|(id, x)| {
            let value = x.units * rules.engagement.partners.get(&x.partner).map_or(0, |p| p.unit_value_fen);
            (vec![Part::new("partner_timeout", id.clone(), x.points)], crate::engage::partner_lines(x.points, &x.partner, -value))
        })
        .collect();
    let returned_rows: Vec<LedgerRow> = timed_out
        .iter()
        .zip(&returned)
        .map(|((id, x), (explain, lines))| LedgerRow {
            kind: "exchange_returned",
            points: x.points,
            category: &x.partner,
            merchant_id: id,
            channel: "engagement",
            explain,
            lots: &x.lots,
            settlement: lines,
            ..base.clone()
        })
        .collect();
    let returned_points: i64 = timed_out.iter().map(|(_, x)| x.points).sum();
    let rows = match &change {
        None if !returned_rows.is_empty() && parts.is_empty() => rows_json(&returned_rows),
        None if !returned_rows.is_empty() => rows_json(&std::iter::once(base).chain(returned_rows).collect::<Vec<_>>()),
        None => rows_json(&[base]),
        Some(c) => {
            let explain = [Part::new(c.reason, format!("{}->{}", c.from, c.to), 0)];
            rows_json(&[LedgerRow {
                kind: "tier_change",
                tier: &c.to,
                explain: &explain,
                settlement: &[],
                ..base
            }])
        }
    };
    Ok(Applied {
        points: points + returned_points,
        amount_fen: 0,
        refund_of: None,
        clawback_points: 0,
        campaigns: Vec::new(),
        rows_json: rows,
        history_json: None,
        notice,
        record_points: points + returned_points,
        used_points: 0,
        returned_points: 0,
        booking: None,
        boards: Vec::new(),
        grant,
    })
}

/// A personal data erasure (PIPL): refused while points are held at a till, a partner
/// exchange waits or stored value (money owed to the member) is left; otherwise the balance
/// is forfeited like an expiry (its breakage booked as the rules say) and the state emptied
/// (profile, tags, tier, coupons, counters): the ledger keeps the amounts, nothing of the person.
fn erase(rules: &RuleSet, ev: &MemberEvent, state: &mut MemberState, now_ms: i64) -> CoreResult<Applied> {
    if !state.holds.is_empty() {
        return Err(CoreError::rejected("holds", "points are held at a till: release or use the holds first"));
    }
    if !state.exchanges.is_empty() {
        return Err(CoreError::rejected("exchanges", "a partner exchange is waiting for its answer"));
    }
    if state.sv_fen != 0 {
        return Err(CoreError::rejected(
            "stored_value",
            format!("{} fen of stored value are the member's money: refund them first", state.sv_fen),
        ));
    }
    let forfeited = state.wallet_total();
    let lots = std::mem::take(&mut state.lots);
    *state = MemberState::default();
    let parts = [Part::new("erase", "", -forfeited)];
    let s = &rules.settlement;
    let mut lines = crate::settlement::expiry_lines(
        forfeited,
        crate::settlement::value_of(forfeited, s.breakage_fen_per_100, 100),
        &s.breakage_to,
    );
    lines.retain(|l| l.points != 0 || l.amount_fen != 0);
    let tier = rules.tier(None);
    let taken: Vec<[i64; 2]> = lots.iter().map(|l| [l[0], -l[1]]).collect();
    let row = LedgerRow::console(&ev.event_id, &ev.member_id, "erase", -forfeited, ev.occurred_at_ms, &tier.id,
                                 &rules.version, now_ms, &parts, &taken, &lines);
    Ok(Applied::points_only(-forfeited, rows_json(&[row])))
}
