//! Merging two accounts of one person, and undoing a merge within its window.
//!
//! A merge is two member events, each applied on its own member like every other one:
//! `merge_out` on the account merged away takes its wallet as a [`Bundle`] (lots with
//! their months, so their expiry; pending points; qualification; tier; coupons; debts)
//! and marks the account merged (it keeps the bundle, so the follow-up can be sent
//! again); `merge_in` on the account kept adds the bundle (tier: the better of the two)
//! and the merged account's event records, so a later refund of its payments finds them.
//! An undo is the pair the other way: `unmerge_out` on the kept account takes back what
//! came in (what it no longer holds — points spent since, coupons used — is taken from
//! its other points or stays used), `unmerge_in` gives it to the merged account again.
//! Between the two halves the points are in transit: the settlement account
//! `merge_transit` holds them, and is back to zero when both halves are applied.


use crate::accrual::Applied;
use crate::errors::{CoreError, CoreResult};
use crate::events::{MemberEvent, MemberKind};
use crate::ledger::{rows_json, LedgerRow, Part};
use crate::rules::RuleSet;
use crate::settlement::Line;
use crate::state::{Bundle, Coupon, MemberState, MergeMark, MergeSpec, MergedInto, Pending};
use crate::tiers;
use crate::wallet;

/// Marks of merges older than this are dropped (an undo is no longer possible by then).
pub const MARK_KEEP_MS: i64 = 400 * 86_400_000;

/// Where an event for a merged account must go instead (the account kept), or None.
/// The merge's own second half (`unmerge_in`) is for the merged account itself.
pub fn redirect(state: &MemberState, kind: Option<MemberKind>) -> Option<&str> {
    let m = state.merged.as_ref()?;
    match kind {
        Some(MemberKind::UnmergeIn | MemberKind::MergeOut | MemberKind::Erase) => None,
        _ => Some(&m.into),
    }
}

fn refused(field: &str, reason: impl Into<String>) -> CoreError {
    CoreError::rejected(field, reason)
}

fn add_qual(state: &mut MemberState, buckets: &[[i64; 3]], sign: i64) {
    for b in buckets {
        match state.qual.iter_mut().find(|q| q[0] == b[0]) {
            Some(q) => {
                q[1] = (q[1] + sign * b[1]).max(0);
                q[2] = (q[2] + sign * b[2]).max(0);
            }
            None if sign > 0 => state.qual.push(*b),
            None => {}
        }
    }
    state.qual.retain(|q| q[1] != 0 || q[2] != 0);
    state.qual.sort_by_key(|q| q[0]);
}

/// `merge_out`: everything the account holds leaves it as one bundle.
fn take_all(state: &mut MemberState, spec: &MergeSpec, ev: &MemberEvent) -> CoreResult<Bundle> {
    if let Some(m) = &state.merged {
        return Err(refused("member_id", format!("already merged into {} (merge {})", m.into, m.merge_id)));
    }
    if !state.holds.is_empty() {
        return Err(refused("holds", format!("{} points are held at a till; release or use the holds first",
            state.holds.values().map(|h| h.points).sum::<i64>())));
    }
    if !state.exchanges.is_empty() {
        return Err(refused("exchanges", "a partner exchange is waiting for its answer; merge after it ends"));
    }
    if state.sv_fen != 0 {
        return Err(refused("stored_value", format!(
            "the account holds {} fen of stored value, which stays with its account: refund or spend it first",
            state.sv_fen
        )));
    }
    if !state.merges_in.is_empty() && state.merges_in.values().any(|m| m.undone.is_none()) {
        return Err(refused("member_id", "other accounts were merged into this one; merge into it instead"));
    }
    let active: Vec<Coupon> = state.coupons.iter().filter(|c| c.status == "active").cloned().collect();
    state.coupons.retain(|c| c.status != "active");
    let bundle = Bundle {
        lots: std::mem::take(&mut state.lots),
        pending: std::mem::take(&mut state.pending),
        qual: std::mem::take(&mut state.qual),
        tier: state.tier.take(),
        tier_since_ms: state.tier_since_ms.take(),
        review_at_ms: state.review_at_ms.take(),
        coupons: active,
        neg: std::mem::take(&mut state.neg),
        owed: std::mem::take(&mut state.owed),
        tags: state.tags.clone(),
    };
    state.merged = Some(MergedInto {
        merge_id: spec.merge_id.clone(),
        into: spec.other.clone(),
        at_ms: ev.occurred_at_ms,
        bundle: bundle.clone(),
    });
    Ok(bundle)
}

/// `merge_in` and `unmerge_in`: the bundle joins the account's wallet.
fn add_all(rules: &RuleSet, state: &mut MemberState, b: &Bundle, keep_better_tier: bool) {
    wallet::restore(state, &b.lots);
    state.pending.extend(b.pending.iter().cloned());
    add_qual(state, &b.qual, 1);
    let better = rules.tier_index(b.tier.as_deref()) > rules.tier_index(state.tier.as_deref());
    if !keep_better_tier || better {
        state.tier = b.tier.clone();
        state.tier_since_ms = b.tier_since_ms;
        state.review_at_ms = b.review_at_ms;
    }
    for c in &b.coupons {
        if !state.coupons.iter().any(|x| x.id == c.id) {
            state.coupons.push(c.clone());
        }
    }
    state.neg += b.neg;
    state.owed += b.owed;
    for t in &b.tags {
        if !state.tags.contains(t) && state.tags.len() < 50 {
            state.tags.push(t.clone());
        }
    }
}

/// `unmerge_out`: what the merge brought goes back, as far as the account still has it.
fn take_back(rules: &RuleSet, state: &mut MemberState, spec: &MergeSpec, brought: &Bundle, now_ms: i64) -> CoreResult<Bundle> {
    let Some(mark) = state.merges_in.get(&spec.merge_id).cloned() else {
        return Err(refused("merge_id", format!("no merge {} into this account", spec.merge_id)));
    };
    if mark.undone.is_some() {
        return Err(refused("merge_id", format!("merge {} is undone already", spec.merge_id)));
    }
    let mut s = state.clone();
    let mut lots: Vec<[i64; 2]> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut short = 0;
    for p in &brought.pending {
        match s.pending.iter().position(|x| x.event_id == p.event_id) {
            Some(at) => {
                let mine = s.pending.remove(at);
                short += (p.points - mine.points).max(0);
                pending.push(Pending { points: mine.points.min(p.points), ..mine });
            }
            None => short += p.points,
        }
    }
    for l in &brought.lots {
        let got = match s.lots.iter_mut().find(|x| x[0] == l[0]) {
            Some(x) => {
                let t = x[1].min(l[1]);
                x[1] -= t;
                t
            }
            None => 0,
        };
        if got > 0 {
            lots.push([l[0], got]);
        }
        short += l[1] - got;
    }
    s.lots.retain(|l| l[1] > 0);
    if short > 0 {
        // From the account's other points: its lots oldest first, then its pending points
        // (they go back as points of their month: the payment they wait on is not moved).
        let besides = s.lots.iter().map(|l| l[1]).sum::<i64>() + s.pending.iter().map(|p| p.points).sum::<i64>();
        if besides < short {
            return Err(refused("points", format!(
                "the merge brought {} points; the account has {} of them left and {besides} besides: \
                 the undo needs {short}",
                brought.lots.iter().map(|l| l[1]).sum::<i64>() + brought.pending.iter().map(|p| p.points).sum::<i64>(),
                lots.iter().map(|l| l[1]).sum::<i64>() + pending.iter().map(|p| p.points).sum::<i64>(),
            )));
        }
        let mut left = short;
        for l in s.lots.iter_mut() {
            let t = l[1].min(left);
            if t > 0 {
                l[1] -= t;
                left -= t;
                lots.push([l[0], t]);
            }
        }
        for p in s.pending.iter_mut().rev() {
            let t = p.points.min(left);
            if t > 0 {
                p.points -= t;
                left -= t;
                lots.push([p.month, t]);
            }
        }
        s.lots.retain(|l| l[1] > 0);
        s.pending.retain(|p| p.points > 0);
    }
    lots.sort_by_key(|l| l[0]);
    let mut merged_lots: Vec<[i64; 2]> = Vec::new();
    for l in lots {
        match merged_lots.last_mut() {
            Some(last) if last[0] == l[0] => last[1] += l[1],
            _ => merged_lots.push(l),
        }
    }
    // Debts the merge brought go back with it; what the account's own points repaid of
    // them meanwhile is credited back to it.
    let neg_left = brought.neg.min(s.neg);
    s.neg -= neg_left;
    let owed_left = brought.owed.min(s.owed);
    s.owed -= owed_left;
    let repaid = (brought.neg - neg_left) + (brought.owed - owed_left);
    if repaid > 0 {
        let month = crate::time::Local::of(now_ms, rules.utc_offset_minutes).month_index as i64;
        wallet::credit(&mut s, repaid, month, None);
    }
    let mut coupons = Vec::new();
    for c in &brought.coupons {
        if let Some(at) = s.coupons.iter().position(|x| x.id == c.id && x.status == "active") {
            coupons.push(s.coupons.remove(at));
        }
    }
    add_qual(&mut s, &brought.qual, -1);
    if mark.tier_before != s.tier || mark.tier_since_before != s.tier_since_ms {
        s.tier = mark.tier_before.clone();
        s.tier_since_ms = mark.tier_since_before;
        s.review_at_ms = mark.review_at_before;
    }
    let back = Bundle {
        lots: merged_lots,
        pending,
        qual: brought.qual.clone(),
        tier: brought.tier.clone(),
        tier_since_ms: brought.tier_since_ms,
        review_at_ms: brought.review_at_ms,
        coupons,
        neg: brought.neg,
        owed: brought.owed,
        tags: Vec::new(),
    };
    if let Some(m) = s.merges_in.get_mut(&spec.merge_id) {
        m.undone = Some(back.clone());
    }
    *state = s;
    Ok(back)
}

/// Applies one of the four merge events to its member's state.
pub fn apply(rules: &RuleSet, ev: &MemberEvent, state: &mut MemberState, now_ms: i64) -> CoreResult<Applied> {
    let spec = ev.merge.as_ref().ok_or_else(|| refused("merge_id", "a merge event names its merge"))?;
    let before = state.wallet_total();
    let rule = ev.kind.as_str();
    state.merges_in.retain(|_, m| ev.occurred_at_ms - m.at_ms < MARK_KEEP_MS);
    let lots: Vec<[i64; 2]> = match ev.kind {
        MemberKind::MergeOut => {
            let b = take_all(state, spec, ev)?;
            b.lots.iter().map(|l| [l[0], -l[1]]).collect()
        }
        MemberKind::MergeIn => {
            let b = spec.bundle.clone().ok_or_else(|| refused("bundle", "merge_in carries the bundle"))?;
            if state.merged.is_some() {
                return Err(refused("member_id", "this account is merged itself"));
            }
            state.merges_in.insert(spec.merge_id.clone(), MergeMark {
                from: spec.other.clone(),
                at_ms: ev.occurred_at_ms,
                tier_before: state.tier.clone(),
                tier_since_before: state.tier_since_ms,
                review_at_before: state.review_at_ms,
                undone: None,
            });
            add_all(rules, state, &b, true);
            b.lots
        }
        MemberKind::UnmergeOut => {
            let brought = spec.bundle.as_ref().ok_or_else(|| refused("bundle", "unmerge_out carries what the merge brought"))?;
            let b = take_back(rules, state, spec, brought, ev.occurred_at_ms)?;
            b.lots.iter().map(|l| [l[0], -l[1]]).collect()
        }
        MemberKind::UnmergeIn => {
            let b = spec.bundle.clone().ok_or_else(|| refused("bundle", "unmerge_in carries what the undo took back"))?;
            match &state.merged {
                Some(m) if m.merge_id == spec.merge_id => {}
                _ => return Err(refused("merge_id", format!("this account is not merged by {}", spec.merge_id))),
            }
            state.merged = None;
            add_all(rules, state, &b, false);
            b.lots
        }
        _ => return Err(refused("type", "not a merge event")),
    };
    let points = state.wallet_total() - before;
    let parts = vec![Part::new(rule, spec.other.clone(), points)];
    let mut lines = vec![Line::points("members", points), Line::points("merge_transit", -points)];
    lines.retain(|l| l.points != 0);
    let tier = tiers::effective_tier(rules, state, ev.occurred_at_ms);
    let row = LedgerRow::console(&ev.event_id, &ev.member_id, rule, points, ev.occurred_at_ms, &tier.id,
                                 &rules.version, now_ms, &parts, &lots, &lines);
    Ok(Applied::points_only(points, rows_json(&[row])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{parse_event, Event};
    use crate::state::Hold;
    use serde_json::{json, Value};
    use std::collections::BTreeMap;

    const AT: &str = "2026-11-23T09:00:00+08:00";
    const NOW: i64 = 1_795_395_600_000; // 2026-11-23T01:00:00Z

    fn event(v: Value) -> MemberEvent {
        match parse_event(v.to_string().as_bytes()).unwrap() {
            Event::Member(m) => m,
            other => panic!("{other:?}"),
        }
    }

    fn ev(id: &str, kind: &str, member: &str, other: &str, bundle: Option<&Bundle>) -> MemberEvent {
        let mut v = json!({"event_id": id, "type": kind, "occurred_at": AT, "member_id": member,
                           "merge_id": "mg1", "other_member_id": other});
        if let Some(b) = bundle {
            v["bundle"] = serde_json::to_value(b).unwrap();
        }
        event(v)
    }

    fn coupon(id: &str, status: &str) -> Coupon {
        Coupon { id: id.into(), template: "t".into(), status: status.into(), valid_until_ms: NOW + 86_400_000, ..Default::default() }
    }

    fn source() -> MemberState {
        let month = 2026 * 12 + 10;
        MemberState {
            lots: vec![[month - 3, 100], [month, 50]],
            pending: vec![Pending { event_id: "p9".into(), release_at_ms: NOW + 3_600_000, points: 20, month }],
            qual: vec![[month, 1_200, 90_000]],
            tier: Some("gold".into()),
            tier_since_ms: Some(NOW - 1000),
            review_at_ms: Some(NOW + 1000),
            coupons: vec![coupon("c1", "active"), coupon("c0", "used")],
            tags: vec!["vip".into()],
            ..Default::default()
        }
    }

    fn row(a: &Applied) -> Value {
        serde_json::from_str::<Value>(&a.rows_json).unwrap()[0].clone()
    }

    #[test]
    fn a_merge_moves_lots_pending_tier_coupons_and_an_undo_brings_them_back() {
        let r = crate::tests_engine::rules("best_of");
        let month = 2026 * 12 + 10;
        let mut a = source();
        let mut b = MemberState { lots: vec![[month, 10]], ..Default::default() };
        let (a_total, b_total) = (a.wallet_total(), b.wallet_total());

        let out = apply(&r, &ev("mo", "merge_out", "a", "b", None), &mut a, NOW).unwrap();
        assert_eq!(out.points, -170);
        assert_eq!(a.wallet_total(), 0);
        assert_eq!(a.tier, None);
        assert_eq!(a.coupons.len(), 1, "used coupons stay with their account");
        let bundle = a.merged.as_ref().unwrap().bundle.clone();
        assert_eq!(bundle.points(), a_total);
        assert_eq!(redirect(&a, None), Some("b"));
        assert_eq!(redirect(&a, Some(MemberKind::UnmergeIn)), None);
        let r0 = row(&out);
        assert_eq!(r0["kind"], "merge_out");
        assert_eq!(r0["lots"], json!([[month - 3, -100], [month, -50]]));

        let inn = apply(&r, &ev("mi", "merge_in", "b", "a", Some(&bundle)), &mut b, NOW).unwrap();
        assert_eq!(inn.points, 170);
        assert_eq!(b.lots, vec![[month - 3, 100], [month, 60]], "lots keep their months, so their expiry");
        assert_eq!(b.pending.len(), 1);
        assert_eq!(b.tier.as_deref(), Some("gold"), "the better tier");
        assert_eq!(b.window_totals(month as i32, 12).0, 1_200);
        assert!(b.coupons.iter().any(|c| c.id == "c1" && c.status == "active"));
        assert_eq!(b.tags, vec!["vip".to_string()]);
        assert_eq!(b.wallet_total(), a_total + b_total);
        // The books: the two halves' lines net to zero in every account.
        let mut books: BTreeMap<String, i64> = BTreeMap::new();
        for a in [&out, &inn] {
            for l in row(a)["settlement"].as_array().unwrap() {
                *books.entry(l["account"].as_str().unwrap().to_string()).or_default() += l["points"].as_i64().unwrap();
            }
        }
        assert!(books.values().all(|v| *v == 0), "{books:?}");

        // The kept account spends 130 (its own 10 among them): 50 of the 170 are left.
        wallet::spend_fifo(&r, &mut b, 130, NOW).unwrap();
        let err = apply(&r, &ev("uo", "unmerge_out", "b", "a", Some(&bundle)), &mut b.clone(), NOW).unwrap_err();
        assert_eq!(err.field(), "points");
        assert!(err.to_string().contains("0 besides: the undo needs 120"), "{err}");
        wallet::restore(&mut b, &[[month, 120]]);
        let back_out = apply(&r, &ev("uo", "unmerge_out", "b", "a", Some(&bundle)), &mut b, NOW).unwrap();
        assert_eq!(back_out.points, -170);
        assert_eq!(b.tier, None, "its own tier again");
        assert_eq!(b.window_totals(month as i32, 12).0, 0);
        assert!(!b.coupons.iter().any(|c| c.id == "c1"));
        let back = b.merges_in["mg1"].undone.clone().unwrap();
        assert_eq!(back.points(), 170);
        // Undone once only.
        let again = apply(&r, &ev("uo2", "unmerge_out", "b", "a", Some(&bundle)), &mut b.clone(), NOW).unwrap_err();
        assert_eq!(again.field(), "merge_id");

        let back_in = apply(&r, &ev("ui", "unmerge_in", "a", "b", Some(&back)), &mut a, NOW).unwrap();
        assert_eq!(back_in.points, 170);
        assert_eq!(a.merged, None);
        assert_eq!(a.wallet_total(), a_total);
        assert_eq!(a.tier.as_deref(), Some("gold"));
        assert!(a.coupons.iter().any(|c| c.id == "c1" && c.status == "active"));
    }

    #[test]
    fn a_merge_is_refused_with_holds_stored_value_or_once_merged() {
        let r = crate::tests_engine::rules("best_of");
        let mut held = source();
        held.holds.insert("h1".into(), Hold { points: 10, lots: vec![], expires_at_ms: NOW + 1 });
        let before = held.clone();
        let err = apply(&r, &ev("mo", "merge_out", "a", "b", None), &mut held, NOW).unwrap_err();
        assert_eq!(err.field(), "holds");
        assert_eq!(held, before, "a refusal changes nothing");
        let mut sv = MemberState { sv_fen: 500, ..source() };
        assert_eq!(apply(&r, &ev("mo", "merge_out", "a", "b", None), &mut sv, NOW).unwrap_err().field(), "stored_value");
        let mut a = source();
        apply(&r, &ev("mo", "merge_out", "a", "b", None), &mut a, NOW).unwrap();
        let mut other = ev("mo2", "merge_out", "a", "c", None);
        other.merge.as_mut().unwrap().merge_id = "mg2".into();
        assert_eq!(apply(&r, &other, &mut a, NOW).unwrap_err().field(), "member_id");
        // Malformed events are refused by the parser.
        for (field, v) in [
            ("other_member_id", json!({"event_id": "x", "type": "merge_out", "occurred_at": AT, "member_id": "a",
                                       "merge_id": "m", "other_member_id": "a"})),
            ("bundle", json!({"event_id": "x", "type": "merge_in", "occurred_at": AT, "member_id": "a",
                              "merge_id": "m", "other_member_id": "b"})),
            ("bundle", json!({"event_id": "x", "type": "merge_in", "occurred_at": AT, "member_id": "a",
                              "merge_id": "m", "other_member_id": "b", "bundle": {"lots": "x"}})),
            ("records", json!({"event_id": "x", "type": "merge_out", "occurred_at": AT, "member_id": "a",
                               "merge_id": "m", "other_member_id": "b", "records": {"p": "P|1"}})),
        ] {
            assert_eq!(parse_event(v.to_string().as_bytes()).unwrap_err().field(), field, "{v}");
        }
    }
}
