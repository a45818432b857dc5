//! Members' events with sign-up (e.g. a high-value members' salon): a seat taken
//! atomically with the member's write (`ly_reserve` on the budget `event:<id>`, so the
//! seats are never overbooked), the waitlist when they are taken (promoted in order when a
//! seat is given back), cancellation with the points back into their lots, check-in at the
//! door (the engine's signed code, checked by the caller) and no-shows (the points kept, a
//! ban from signing up for a while). Pure, like every member operation.

use crate::engage::{parse, pool_lines, refused, spend, Context, Done, Rows};
use crate::engage_rules::{seats_budget_id, Gathering};
use crate::errors::{CoreError, CoreResult};
use crate::events::check_id;
use crate::ledger::Part;
use crate::rules::RuleSet;
use crate::state::{MemberState, Signup};
use crate::time::DAY_MS;
use crate::{tiers, wallet};
use serde::Deserialize;
use serde_json::json;

/// Operations of this module.
pub const OPS: [&str; 5] = ["event_signup", "event_cancel", "event_promote", "event_checkin", "event_close"];
/// A member may check in from this long before the event starts.
pub const DOORS_OPEN_MS: i64 = 2 * 3_600_000;
/// Sign-ups of events over for longer than this are forgotten by the state (the ledger keeps them).
const KEEP_AFTER_MS: i64 = 30 * DAY_MS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    member_id: String,
    event: String,
}

fn gathering<'a>(rules: &'a RuleSet, id: &str) -> CoreResult<&'a Gathering> {
    rules.engagement.gatherings.get(id).ok_or_else(|| CoreError::invalid_event("event", format!("unknown event {id:?}")))
}

/// Why this member may not sign up for the event now (None: they may).
pub fn refusal(rules: &RuleSet, state: &MemberState, g: &Gathering, now_ms: i64) -> Option<(&'static str, String)> {
    if g.signup_from_ms.is_some_and(|f| now_ms < f) {
        return Some(("event", format!("sign-up for {} opens later", g.id)));
    }
    if now_ms >= g.signup_to_ms {
        return Some(("event", format!("sign-up for {} has closed", g.id)));
    }
    if let Some(allowed) = &g.tiers {
        let tier = &tiers::effective_tier(rules, state, now_ms).id;
        if !allowed.contains(tier) {
            let mut names: Vec<&str> = allowed.iter().map(String::as_str).collect();
            names.sort();
            return Some(("tier", format!("{} is for {} members; this member is {tier}", g.id, names.join(", "))));
        }
    }
    if g.tags.as_ref().is_some_and(|t| !state.has_any_tag(t)) {
        return Some(("tags", format!("{} is for invited members (their tags)", g.id)));
    }
    if state.no_show_until_ms > now_ms {
        return Some(("no_show", format!("after a no-show, sign-ups are closed to this member until {}",
                                        crate::time::format_instant(state.no_show_until_ms))));
    }
    if let Some(s) = state.signups.get(&g.id).filter(|s| matches!(s.status.as_str(), "registered" | "waitlisted" | "attended")) {
        return Some(("event", format!("this member is {} for {} already", s.status, g.id)));
    }
    None
}

fn prune(rules: &RuleSet, state: &mut MemberState, now_ms: i64) {
    state.signups.retain(|id, _| rules.engagement.gatherings.get(id).is_some_and(|g| now_ms < g.ends_ms + KEEP_AFTER_MS));
}

fn answer(req: &Request, g: &Gathering, s: &Signup, rules: &RuleSet, state: &MemberState, now_ms: i64) -> serde_json::Value {
    json!({
        "event": g.id, "name": g.name, "member_id": req.member_id, "status": s.status, "points": s.points,
        "signed_at_ms": s.signed_at_ms,
        "starts_at_ms": g.starts_ms, "ends_at_ms": g.ends_ms, "available_after": wallet::available(rules, state, now_ms),
    })
}

/// Takes a seat for a member (a sign-up with seats left, or a promotion from the waitlist):
/// the points spent, the seat consumed, the row.
fn take_seat(rules: &RuleSet, state: &mut MemberState, g: &Gathering, rows: &mut Rows, now_ms: i64, signed_at_ms: i64) -> CoreResult<Signup> {
    let lots = if g.points > 0 { spend(rules, state, g.points, now_ms, "this event's seat")? } else { Vec::new() };
    let why = [Part::new("event_signup", g.id.clone(), -g.points), Part::new("event_seat", g.id.clone(), 0)];
    rows.points("event_signup", -g.points, "member_event", &g.id, &why, &lots, &pool_lines(-g.points));
    Ok(Signup { status: "registered".into(), points: g.points, lots, signed_at_ms, updated_at_ms: now_ms })
}

pub fn apply(rules: &RuleSet, op: &str, state: &mut MemberState, op_id: &str, body: &[u8], ctx: &Context, now_ms: i64) -> CoreResult<Done> {
    check_id("Idempotency-Key", op_id)?;
    let req: Request = parse(body, "member_id, event")?;
    check_id("member_id", &req.member_id)?;
    check_id("event", &req.event)?;
    let g = gathering(rules, &req.event)?;
    let seats_left = ctx.spent.get(&seats_budget_id(&g.id)).copied().unwrap_or(0) < g.capacity;
    let mine = state.signups.get(&g.id).cloned();
    let mut rows = Rows::new(rules, state, op_id, &req.member_id, now_ms);
    let mut consumed = Vec::new();
    let (signup, points) = match op {
        "event_signup" => {
            if let Some((field, why)) = refusal(rules, state, g, now_ms) {
                return Err(refused(field, why));
            }
            if seats_left && ctx.waiting == 0 {
                consumed.push((seats_budget_id(&g.id), 1));
                let s = take_seat(rules, state, g, &mut rows, now_ms, now_ms)?;
                (s, -g.points)
            } else {
                // Seats taken (or members waiting before this one): the waitlist, nothing spent.
                if wallet::available(rules, state, now_ms) < g.points {
                    return Err(refused("points", format!("{} needs {} points", g.id, g.points)));
                }
                let why = [Part::new("event_waitlist", g.id.clone(), 0)];
                rows.points("event_waitlist", 0, "member_event", &g.id, &why, &[], &[]);
                (Signup { status: "waitlisted".into(), points: 0, lots: Vec::new(), signed_at_ms: now_ms, updated_at_ms: now_ms }, 0)
            }
        }
        "event_promote" => {
            let Some(s) = mine.filter(|s| s.status == "waitlisted") else {
                return Err(refused("event", format!("{} is not waiting for {}", req.member_id, g.id)));
            };
            if now_ms >= g.starts_ms {
                return Err(refused("event", format!("{} has started", g.id)));
            }
            if !seats_left {
                return Err(refused("seats", format!("no seat of {} is free", g.id)));
            }
            consumed.push((seats_budget_id(&g.id), 1));
            let s = take_seat(rules, state, g, &mut rows, now_ms, s.signed_at_ms)?;
            (s, -g.points)
        }
        "event_cancel" => {
            let Some(mut s) = mine.filter(|s| matches!(s.status.as_str(), "registered" | "waitlisted")) else {
                return Err(refused("event", format!("{} has no sign-up to cancel for {}", req.member_id, g.id)));
            };
            if now_ms >= g.starts_ms {
                return Err(refused("event", format!("{} has started: too late to cancel", g.id)));
            }
            let back = if s.status == "registered" {
                // The points into the lots they came from, the seat to the next on the waitlist.
                wallet::restore(state, &s.lots);
                consumed.push((seats_budget_id(&g.id), -1));
                s.points
            } else {
                0
            };
            let why = [Part::new("event_refund", g.id.clone(), back), Part::new(if back > 0 || s.status == "registered" { "event_seat_returned" } else { "event_waitlist_left" }, g.id.clone(), 0)];
            rows.points("event_cancel", back, "member_event", &g.id, &why, &s.lots, &pool_lines(back));
            s.status = "cancelled".into();
            s.updated_at_ms = now_ms;
            (s, back)
        }
        "event_checkin" => {
            let Some(mut s) = mine.filter(|s| s.status == "registered") else {
                return Err(refused("event", format!("{} has no seat at {}", req.member_id, g.id)));
            };
            if now_ms < g.starts_ms - DOORS_OPEN_MS || now_ms >= g.ends_ms {
                return Err(refused("event", format!("check-in for {} is open from 2 h before its start to its end", g.id)));
            }
            let why = [Part::new("event_checkin", g.id.clone(), 0)];
            rows.points("event_checkin", 0, "member_event", &g.id, &why, &[], &[]);
            s.status = "attended".into();
            s.updated_at_ms = now_ms;
            (s, 0)
        }
        "event_close" => {
            // After the event: a seat taken and not used is a no-show (the points kept, the
            // ban); a member still waiting is let go.
            if now_ms < g.ends_ms {
                return Err(refused("event", format!("{} has not ended", g.id)));
            }
            let Some(mut s) = mine.filter(|s| matches!(s.status.as_str(), "registered" | "waitlisted")) else {
                return Err(refused("event", format!("{} has nothing open for {}", req.member_id, g.id)));
            };
            let kind = if s.status == "registered" { "event_no_show" } else { "event_waitlist_closed" };
            if s.status == "registered" && g.no_show_ban_days > 0 {
                state.no_show_until_ms = state.no_show_until_ms.max(now_ms + g.no_show_ban_days * DAY_MS);
            }
            let why = [Part::new(kind, g.id.clone(), 0)];
            rows.points(kind, 0, "member_event", &g.id, &why, &[], &[]);
            s.status = if s.status == "registered" { "no_show" } else { "cancelled" }.into();
            s.updated_at_ms = now_ms;
            (s, 0)
        }
        _ => return Err(CoreError::invalid_event("op", format!("must be one of {}", OPS.join(", ")))),
    };
    let result = answer(&req, g, &signup, rules, state, now_ms);
    state.signups.insert(g.id.clone(), signup);
    prune(rules, state, now_ms);
    Ok(Done { consumed, ..Done::points(points, &rows, result, None) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustc_hash::FxHashMap as HashMap;
    use serde_json::Value;

    const NOW: i64 = 1_795_395_600_000; // 2026-11-23T01:00:00Z
    const EVENTS: &str = r#"
[[member_events]]
id = "salon"
name = "Wine salon"
capacity = 2
points = 100
tiers = ["gold"]
signup_to = "2026-11-25T18:00:00+08:00"
starts_at = "2026-11-25T19:00:00+08:00"
ends_at = "2026-11-25T21:00:00+08:00"
no_show_ban_days = 30

[[member_events]]
id = "talk"
capacity = 1
starts_at = "2026-11-24T19:00:00+08:00"
ends_at = "2026-11-24T20:00:00+08:00"
"#;
    const STARTS: i64 = 1_795_604_400_000; // 2026-11-25T11:00:00Z

    fn gold(points: i64) -> MemberState {
        MemberState { lots: vec![[2026 * 12 + 10, points]], tier: Some("gold".into()), ..Default::default() }
    }

    fn run(r: &RuleSet, s: &mut MemberState, op: &str, event: &str, seats: i64, waiting: i64, at: i64) -> CoreResult<Done> {
        let ctx = Context { spent: [(seats_budget_id(event), seats)].into_iter().collect::<HashMap<_, _>>(), waiting, ..Default::default() };
        let body = json!({"member_id": "m1", "event": event}).to_string();
        apply(r, op, s, &format!("{op}-{at}"), body.as_bytes(), &ctx, at)
    }

    fn status(d: &Done) -> String {
        serde_json::from_str::<Value>(&d.result_json).unwrap()["status"].as_str().unwrap().to_string()
    }

    #[test]
    fn a_seat_costs_points_taken_with_it_and_a_cancel_gives_both_back() {
        let r = crate::tests_engine::rules_with(EVENTS).unwrap();
        let mut s = gold(500);
        let d = run(&r, &mut s, "event_signup", "salon", 0, 0, NOW).unwrap();
        assert_eq!((status(&d), d.points, d.consumed.clone()), ("registered".into(), -100, vec![("event:salon".into(), 1)]));
        assert_eq!(run(&r, &mut s, "event_signup", "salon", 1, 0, NOW + 1).unwrap_err().field(), "event", "once");
        let c = run(&r, &mut s, "event_cancel", "salon", 1, 0, NOW + 2).unwrap();
        assert_eq!((status(&c), c.points, c.consumed.clone()), ("cancelled".into(), 100, vec![("event:salon".into(), -1)]));
        assert_eq!(s.lots, gold(500).lots, "the very lots back");
        // Signed up again after cancelling.
        assert_eq!(status(&run(&r, &mut s, "event_signup", "salon", 0, 0, NOW + 3).unwrap()), "registered");
    }

    #[test]
    fn seats_taken_or_members_waiting_send_a_sign_up_to_the_waitlist_and_a_promotion_takes_the_seat() {
        let r = crate::tests_engine::rules_with(EVENTS).unwrap();
        let mut s = gold(500);
        let w = run(&r, &mut s, "event_signup", "salon", 2, 0, NOW).unwrap();
        assert_eq!((status(&w), w.points, w.consumed.clone()), ("waitlisted".into(), 0, vec![]));
        let mut t = gold(500);
        assert_eq!(status(&run(&r, &mut t, "event_signup", "salon", 1, 3, NOW).unwrap()), "waitlisted", "behind those waiting");
        assert_eq!(run(&r, &mut s, "event_promote", "salon", 2, 0, NOW + 1).unwrap_err().field(), "seats");
        let p = run(&r, &mut s, "event_promote", "salon", 1, 0, NOW + 2).unwrap();
        assert_eq!((status(&p), p.points), ("registered".into(), -100));
        assert_eq!(s.signups["salon"].signed_at_ms, NOW, "keeps the time it joined");
        // Waiting members who leave give back nothing (they took nothing).
        let l = run(&r, &mut t, "event_cancel", "salon", 2, 0, NOW + 3).unwrap();
        assert_eq!((l.points, l.consumed.clone()), (0, vec![]));
    }

    #[test]
    fn who_may_come_check_in_at_the_door_and_a_no_show_is_banned() {
        let r = crate::tests_engine::rules_with(EVENTS).unwrap();
        let mut silver = MemberState { lots: vec![[2026 * 12 + 10, 500]], ..Default::default() };
        assert_eq!(run(&r, &mut silver, "event_signup", "salon", 0, 0, NOW).unwrap_err().field(), "tier");
        let mut poor = gold(50);
        assert_eq!(run(&r, &mut poor, "event_signup", "salon", 0, 0, NOW).unwrap_err().field(), "points");
        let mut late = gold(500);
        assert_eq!(run(&r, &mut late, "event_signup", "salon", 0, 0, STARTS - 3_600_000).unwrap_err().field(), "event", "closed");
        // Check-in: not before the doors open, then attended; a no-show after the end.
        let mut a = gold(500);
        let mut b = gold(500);
        run(&r, &mut a, "event_signup", "salon", 0, 0, NOW).unwrap();
        run(&r, &mut b, "event_signup", "salon", 1, 0, NOW).unwrap();
        assert_eq!(run(&r, &mut a, "event_checkin", "salon", 2, 0, STARTS - 3 * 3_600_000).unwrap_err().field(), "event");
        assert_eq!(status(&run(&r, &mut a, "event_checkin", "salon", 2, 0, STARTS + 60_000).unwrap()), "attended");
        assert_eq!(run(&r, &mut a, "event_checkin", "salon", 2, 0, STARTS + 120_000).unwrap_err().field(), "event", "once");
        let ends = STARTS + 2 * 3_600_000;
        assert_eq!(run(&r, &mut b, "event_close", "salon", 2, 0, ends - 1).unwrap_err().field(), "event");
        let n = run(&r, &mut b, "event_close", "salon", 2, 0, ends).unwrap();
        assert_eq!((status(&n), n.points), ("no_show".into(), 0), "the points are kept");
        assert_eq!(b.no_show_until_ms, ends + 30 * DAY_MS);
        assert_eq!(run(&r, &mut b, "event_signup", "talk", 0, 0, NOW).unwrap_err().field(), "no_show");
        assert_eq!(run(&r, &mut a, "event_close", "salon", 2, 0, ends).unwrap_err().field(), "event", "attended: nothing open");
        // A free event takes no points.
        let mut free = MemberState::default();
        assert_eq!(run(&r, &mut free, "event_signup", "talk", 0, 0, NOW).unwrap().points, 0);
    }
}
