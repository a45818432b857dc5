//! One batch of events against the members' states: a pure function of
//! (events, states, budgets, rules, now). Member state is threaded through the
//! batch in event order; an event that is refused leaves it untouched.

use crate::accrual::{self, Applied, PaymentRecord};
use crate::behaviour;
use crate::coupons;
use crate::errors::{CoreError, CoreResult};
use crate::events::{Event, EventKind, PaymentEvent};
use crate::record::Booking;
use crate::rules::RuleSet;
use crate::state::MemberState;
use memchr::memmem::Finder;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::LazyLock;

pub use crate::record::Original;

/// Why a refund cannot be booked where its payment was: a field its callback names
/// differs from the payment's booking (a field either leaves empty is not compared;
/// the refund takes the payment's). The category counts only where
/// the till's category was what the payment booked (a merchant's configured category
/// replaces whatever a callback says, for payments and refunds alike).
fn misbooked(rules: &RuleSet, p: &PaymentEvent, of: &str, b: &Booking) -> Option<CoreError> {
    let category_matters = !rules.merchants.contains_key(&b.merchant_id);
    let fields = [
        ("bu_id", &p.bu_id, &b.bu_id, true),
        ("merchant_id", &p.merchant_id, &b.merchant_id, true),
        ("category", &p.category, &b.category, category_matters),
    ];
    fields.into_iter().find(|(_, named, booked, matters)| *matters && !named.is_empty() && !booked.is_empty() && named != booked).map(
        |(field, named, booked, _)| {
            CoreError::rejected(
                field,
                format!("the refund names {named:?} but its payment {of:?} was booked at {booked:?}"),
            )
        },
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one per event of a batch, consumed at once
pub enum Outcome {
    Apply(Applied),
    /// A payment or refund of a payer with no member: a fact for BI, no points.
    Guest(String),
    /// Applied before (an earlier batch, or earlier in this one): no new effect.
    Duplicate,
    Rejected(CoreError),
    /// A refund of a payment not known yet: held until that payment is applied.
    Held(CoreError),
}

/// A member's state after the batch, to be written only if the stored sequence
/// number is still `expected_seq` (optimistic concurrency).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberUpdate {
    pub member_id: String,
    pub expected_seq: i64,
    pub state_json: String,
    pub review_at_ms: Option<i64>,
    /// When the wallet next needs the scheduled check (release, expiry, reminder).
    pub next_check_ms: Option<i64>,
}

/// What the store holds for the members of a batch, read before it.
#[derive(Debug, Clone, Default)]
pub struct StoredMembers {
    /// member id -> (sequence number, state JSON)
    pub members: HashMap<String, (i64, Option<String>)>,
    /// campaign id -> points of its budget already spent
    pub budget_spent: HashMap<String, i64>,
}

pub struct BatchResult {
    pub outcomes: Vec<Outcome>,
    pub members: Vec<MemberUpdate>,
    /// Payments applied or refunded in the batch, as their records stand after it:
    /// (member id, payment id) -> record.
    pub payments: HashMap<(String, String), PaymentRecord>,
}

struct Working {
    expected_seq: i64,
    state: MemberState,
    touched: bool,
}

pub fn evaluate_batch(
    rules: &RuleSet,
    events: &[CoreResult<Event>],
    applied: &[bool],
    originals: &[Option<Original>],
    stored: &StoredMembers,
    now_ms: i64,
) -> BatchResult {
    let refs: Vec<&CoreResult<Event>> = events.iter().collect();
    evaluate_refs(rules, &refs, applied, originals, stored, now_ms)
}

/// `evaluate_batch` over events held elsewhere (the accrual batch's pending ones).
pub fn evaluate_refs(
    rules: &RuleSet,
    events: &[&CoreResult<Event>],
    applied: &[bool],
    originals: &[Option<Original>],
    stored: &StoredMembers,
    now_ms: i64,
) -> BatchResult {
    assert!(events.len() == applied.len() && events.len() == originals.len(), "one flag and record per event");
    let mut seen: HashSet<(&str, &str)> = HashSet::default();
    // Keyed by (member id, payment id) borrowed from the events: no copies per payment.
    let mut payments: HashMap<(&str, &str), PaymentRecord> = HashMap::default();
    // A payment applied in this batch -> its outcome's index (its booking is in it).
    let mut bookings: HashMap<(&str, &str), usize> = HashMap::default();
    let mut working: HashMap<String, Working> = HashMap::default();
    let mut order: Vec<String> = Vec::new();
    let mut budget_spent = stored.budget_spent.clone();
    let mut outcomes = Vec::with_capacity(events.len());

    for ((&ev, &was_applied), original) in events.iter().zip(applied).zip(originals) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                outcomes.push(Outcome::Rejected(e.clone()));
                continue;
            }
        };
        let Some(member_id) = ev.member_id() else {
            outcomes.push(match ev {
                Event::Payment(p) => Outcome::Guest(accrual::guest_fact(rules, p, now_ms)),
                Event::Member(_) => Outcome::Rejected(CoreError::rejected("member_id", "is required")),
            });
            continue;
        };
        if was_applied || seen.contains(&(member_id, ev.event_id())) {
            outcomes.push(Outcome::Duplicate);
            continue;
        }
        if !working.contains_key(member_id) {
            let (seq, json) = stored.members.get(member_id).cloned().unwrap_or((0, None));
            match MemberState::from_json(json.as_deref()) {
                Ok(state) => {
                    working.insert(member_id.to_string(), Working { expected_seq: seq, state, touched: false });
                    order.push(member_id.to_string());
                }
                Err(reason) => {
                    outcomes.push(Outcome::Rejected(CoreError::rejected("member_id", reason)));
                    continue;
                }
            }
        }
        // An account merged into another: its events belong to the account kept (the
        // worker sends them there, member id replaced).
        let kind = match ev {
            Event::Member(m) => Some(m.kind),
            Event::Payment(_) => None,
        };
        if let Some(into) = crate::merge::redirect(&working[member_id].state, kind) {
            outcomes.push(Outcome::Rejected(CoreError::rejected("merged_into", into)));
            continue;
        }
        // A refund books where its payment was: the payment's business unit, merchant
        // and category, whatever its own callback says (a different one is refused).
        let event_id = ev.event_id();
        let refund_of = match ev {
            Event::Payment(p) => p.refund_of.as_deref().unwrap_or_default(),
            Event::Member(_) => "",
        };
        let mut refund_booking: Option<Booking> = None;
        if let Event::Payment(p) = ev {
            if let (EventKind::Refund, Some(of)) = (p.kind, &p.refund_of) {
                let booked = bookings
                    .get(&(member_id, refund_of))
                    .and_then(|&at| match &outcomes[at] {
                        Outcome::Apply(a) => a.booking.clone(),
                        _ => None,
                    })
                    .or_else(|| original.as_ref().and_then(|o| o.booking.clone()))
                    .filter(|b| !b.bu_id.is_empty());
                if let Some(b) = booked {
                    if let Some(err) = misbooked(rules, p, of, &b) {
                        outcomes.push(Outcome::Rejected(err));
                        continue;
                    }
                    refund_booking = Some(b);
                }
            }
        }
        let rebooked = match (ev, &refund_booking) {
            (Event::Payment(p), Some(b)) => {
                // A field the booking left empty (a record from before bookings named it)
                // keeps the refund's own.
                let pick = |booked: &String, named: &String| if booked.is_empty() { named.clone() } else { booked.clone() };
                Some(Event::Payment(PaymentEvent {
                    bu_id: b.bu_id.clone(),
                    merchant_id: pick(&b.merchant_id, &p.merchant_id),
                    category: pick(&b.category, &p.category),
                    ..p.clone()
                }))
            }
            _ => None,
        };
        let ev: &Event = rebooked.as_ref().unwrap_or(ev);
        let w = working.get_mut(member_id).expect("inserted above");
        // Every refusal happens before an evaluation changes the state or the budgets
        // (checked by `refused_events_change_no_state`), so they are used in place.
        let state = &mut w.state;
        let marketing = !rules.triggers.is_empty() || !state.coupons.is_empty()
            || matches!(ev, Event::Payment(p) if !p.coupon_ids.is_empty());
        let before = marketing.then(|| (coupons::before(rules, state, ev.occurred_at_ms()), state.registered_at_ms));
        let result = match ev {
            Event::Payment(p) if p.kind == EventKind::Payment => {
                accrual::accrue_payment(rules, p, member_id, state, &mut budget_spent, now_ms).inspect(|a| {
                    if a.booking.is_some() {
                        // Its outcome is the next one pushed (an applied event's, below).
                        bookings.insert((member_id, event_id), outcomes.len());
                    }
                    payments.insert(
                        (member_id, event_id),
                        PaymentRecord {
                            amount_fen: p.amount_fen,
                            points: a.record_points,
                            used: a.used_points,
                            ..Default::default()
                        },
                    );
                })
            }
            Event::Payment(p) => {
                let of = refund_of;
                let key = (member_id, of);
                match payments.get(&key).copied().or(original.as_ref().map(|o| o.payment)) {
                    None => {
                        outcomes.push(Outcome::Held(CoreError::rejected(
                            "refund_of",
                            format!("no payment {of:?} of member {member_id:?} is known"),
                        )));
                        continue;
                    }
                    Some(orig) if p.cumulative && p.amount_fen <= orig.refunded_amount_fen => Err(CoreError::rejected(
                        "amount_fen",
                        format!(
                            "refunded total {} fen is already covered: {} fen of {of:?} is refunded",
                            p.amount_fen, orig.refunded_amount_fen
                        ),
                    )),
                    Some(orig) if p.cumulative => {
                        // The gateway reported the refunded total: this refund is the rest.
                        let this = PaymentEvent { amount_fen: p.amount_fen - orig.refunded_amount_fen, ..p.clone() };
                        accrual::accrue_refund(rules, &this, member_id, orig, refund_booking.as_ref(), state, now_ms).map(|(applied, after)| {
                            payments.insert(key, after);
                            applied
                        })
                    }
                    Some(orig) => accrual::accrue_refund(rules, p, member_id, orig, refund_booking.as_ref(), state, now_ms).map(
                        |(applied, after)| {
                            payments.insert(key, after);
                            applied
                        },
                    ),
                }
            }
            Event::Member(m) => behaviour::apply_member_event(rules, m, state, now_ms),
        };
        match result {
            Ok(mut applied) => {
                if let Some((before, was_registered)) = &before {
                    let refund_done = match ev {
                        Event::Payment(p) if p.kind == EventKind::Refund => payments
                            .get(&(member_id, refund_of))
                            .is_some_and(|r| r.refunded_amount_fen >= r.amount_fen)
                            .then(|| refund_of.to_string()),
                        _ => None,
                    };
                    let m = Marketing { member_id, before, was_registered: was_registered.is_some(), refund_done };
                    m.run(rules, ev, state, &mut budget_spent, &mut applied, now_ms);
                }
                if let Event::Payment(p) = ev {
                    let delta = if p.kind == EventKind::Payment { applied.record_points } else { -applied.clawback_points };
                    applied.boards = crate::boards::score(rules, state, &p.bu_id, p.occurred_at_ms, delta);
                }
                let version = crate::boards::version(w.expected_seq + 1, outcomes.len());
                applied.rows_json = stamp(&applied.rows_json, outcomes.len(), &applied.boards, version);
                w.touched = true;
                seen.insert((member_id, event_id));
                outcomes.push(Outcome::Apply(applied));
            }
            Err(e) => outcomes.push(Outcome::Rejected(e)),
        }
    }

    let members = order
        .into_iter()
        .filter_map(|id| {
            let w = working.remove(&id)?;
            w.touched.then(|| MemberUpdate {
                review_at_ms: w.state.review_at_ms,
                next_check_ms: crate::wallet::next_check_ms(rules, &w.state),
                state_json: w.state.to_json(),
                expected_seq: w.expected_seq,
                member_id: id,
            })
        })
        .collect();
    let payments = payments.into_iter().map(|((m, p), r)| ((m.to_string(), p.to_string()), r)).collect();
    BatchResult { outcomes, members, payments }
}

/// Coupons around an applied event: redemptions a payment carries, coupons a full
/// refund gives back, coupons past their validity, and the triggers.
struct Marketing<'a> {
    member_id: &'a str,
    before: &'a coupons::Before,
    was_registered: bool,
    refund_done: Option<String>,
}

impl Marketing<'_> {
    fn run(
        &self,
        rules: &RuleSet,
        ev: &Event,
        state: &mut MemberState,
        budget_spent: &mut HashMap<String, i64>,
        applied: &mut Applied,
        now_ms: i64,
    ) {
        let (event_id, at_ms) = (ev.event_id(), ev.occurred_at_ms());
        let at = coupons::At { rules, member_id: self.member_id, event_id, at_ms, now_ms };
        let mut rows = coupons::expire(&at, state);
        if let Event::Payment(p) = ev {
            for cid in &p.coupon_ids {
                if state.coupons.iter().any(|c| c.id == *cid && c.used_by.as_deref() == Some(event_id)) {
                    continue; // redeemed at the till beforehand, for this payment
                }
                let u = coupons::Use {
                    bu_id: &p.bu_id,
                    merchant_id: &p.merchant_id,
                    // A merchant's configured category replaces the one its till sends.
                    category: rules.category_of(&p.merchant_id, &p.category),
                    paid_fen: p.amount_fen,
                    at_ms,
                };
                match coupons::redeem(&at, state, cid, &u) {
                    Ok(row) => rows.push(row),
                    Err(e) => rows.push(coupons::refused(&at, cid, e.reason())),
                }
            }
        }
        if let Some(of) = &self.refund_done {
            rows.extend(coupons::give_back(&at, state, of));
        }
        let tier = crate::tiers::effective_tier(rules, state, at_ms);
        let rank = rules.tiers.iter().position(|t| t.id == tier.id).unwrap_or(0);
        // An audience send's grant, or the coupon of a scheduled campaign's push.
        let grant: Option<(String, String)> = match ev {
            Event::Member(m) => m.grant.as_ref().map(|(t, s)| (t.clone(), format!("audience:{s}"))),
            Event::Payment(_) => None,
        }
        .or_else(|| applied.grant.clone());
        let h = coupons::Happened {
            event_id,
            member_id: self.member_id,
            at_ms,
            payment: match ev {
                Event::Payment(p) => Some(p),
                Event::Member(_) => None,
            },
            registered: !self.was_registered && state.registered_at_ms.is_some(),
            // An expiry reminder (a campaign's notice is not one).
            reminder: applied.notice.is_some()
                && matches!(ev, Event::Member(m) if m.kind == crate::events::MemberKind::WalletCheck),
            parking_exit: matches!(ev, Event::Member(m) if m.kind == crate::events::MemberKind::ParkingExit),
            grant: grant.as_ref().map(|(t, g)| (t.as_str(), g.as_str())),
            tier_after: (&tier.id, rank),
        };
        let (issued, consumed) = coupons::after_event(rules, &h, self.before, state, budget_spent, now_ms);
        rows.extend(issued);
        if rows.is_empty() {
            return;
        }
        applied.campaigns.extend(consumed);
        applied.history_json = None; // the history is read off the rows with these added
        let extra = coupons::rows_json(&rows).join(",");
        let body = applied.rows_json.trim_end();
        applied.rows_json = match body.strip_suffix(']') {
            Some(head) if head.trim_end().ends_with('[') => format!("{head}{extra}]"),
            Some(head) => format!("{head},{extra}]"),
            None => format!("[{extra}]"),
        };
    }
}

/// Stamps an event's ledger rows, in one copy of their text: the event's index in the
/// batch on each row (the rows of one batch share processed_at, and recovery replays them
/// in the order they were applied), and the boards the event moved on its first row,
/// `"boards":[[board, score, version], ...]`, for the leaderboard consumer of the ledger topic.
fn stamp(rows_json: &str, index: usize, boards: &[(String, i64)], version: i64) -> String {
    const ROW: &str = r#"{"event_id":"#;
    // (memchr's SIMD search, built once: std's two-way search was ~2% of the core)
    static ROWS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(ROW));
    let boards_json = (!boards.is_empty()).then(|| {
        let list: Vec<(&str, i64, i64)> = boards.iter().map(|(b, s)| (b.as_str(), *s, version)).collect();
        serde_json::to_string(&list).expect("boards always serialise")
    });
    let index = index.to_string();
    // Room for the stamps of a payment's rows (its own, a tier change, points used).
    let mut out = String::with_capacity(
        rows_json.len() + 3 * (index.len() + 16) + boards_json.as_ref().map_or(0, |b| b.len() + 10),
    );
    let mut rest = rows_json;
    if let (Some(b), Some(after)) = (&boards_json, rows_json.strip_prefix("[{")) {
        out.push_str("[{\"boards\":");
        out.push_str(b);
        out.push(',');
        rest = after;
        if let Some(tail) = after.strip_prefix(&ROW[1..]) {
            push_index(&mut out, &index);
            rest = tail;
        }
    }
    while let Some(at) = ROWS.find(rest.as_bytes()) {
        out.push_str(&rest[..at]);
        out.push('{');
        push_index(&mut out, &index);
        rest = &rest[at + ROW.len()..];
    }
    out.push_str(rest);
    out
}

/// `"batch_index":N,"event_id":` (a row's opening brace written before).
fn push_index(out: &mut String, index: &str) {
    out.push_str("\"batch_index\":");
    out.push_str(index);
    out.push_str(",\"event_id\":");
}

#[cfg(test)]
mod stamp_tests {
    use super::stamp;

    /// The stamps as they were first written: a textual replace, then the boards.
    fn two_passes(rows_json: &str, index: usize, boards: &[(String, i64)], version: i64) -> String {
        let rows = rows_json.replace(r#"{"event_id":"#, &format!(r#"{{"batch_index":{index},"event_id":"#));
        if boards.is_empty() {
            return rows;
        }
        let list: Vec<(&str, i64, i64)> = boards.iter().map(|(b, s)| (b.as_str(), *s, version)).collect();
        match rows.strip_prefix("[{") {
            Some(rest) => format!("[{{\"boards\":{},{rest}", serde_json::to_string(&list).unwrap()),
            None => rows,
        }
    }

    #[test]
    fn one_pass_stamps_what_the_two_passes_did() {
        let boards = [("w:2025-W48:group:0".to_string(), 120), ("m:2025-11:bu:mall:3".to_string(), 7)];
        let cases = [
            r#"[{"event_id":"p1","kind":"earn","points":12}]"#,
            r#"[{"event_id":"p1","kind":"earn"},{"event_id":"p1","kind":"tier_change","explain":[{"rule":"x"}]}]"#,
            r#"[{"event_id":"p1","kind":"earn"},{"table":"coupon_events","event_id":"p1","coupon_id":"c"}]"#,
            r#"[{"table":"coupon_events","event_id":"p1"},{"event_id":"p1","kind":"earn"}]"#,
            r#"[]"#,
            "",
        ];
        for rows in cases {
            for (index, b) in [(0, &boards[..0]), (7, &boards[..1]), (1234, &boards[..])] {
                assert_eq!(stamp(rows, index, b, 99), two_passes(rows, index, b, 99), "{rows} {index}");
            }
        }
        assert_eq!(
            stamp(r#"[{"event_id":"p1"}]"#, 3, &boards[..1], 5),
            r#"[{"boards":[["w:2025-W48:group:0",120,5]],"batch_index":3,"event_id":"p1"}]"#
        );
    }
}
