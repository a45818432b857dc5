//! Receipt points (小票积分): a member submits a receipt for a purchase the payment
//! system did not see; the rules approve it at once or leave it to a reviewer, and an
//! approved receipt earns through the accrual path as a payment (channel `receipt`, its
//! event id derived from the merchant and the receipt number). Pure, like every member
//! operation: the HTTP layer applies the result atomically in Redis and publishes the
//! payment. A receipt and a payment of the same purchase earn once (`state::Purchase`).

use crate::engage::{parse, refused, Context, Done, Rows};
use crate::errors::{CoreError, CoreResult};
use crate::events::{check_id, MAX_AMOUNT_FEN, RECEIPT_CHANNEL};
use crate::ledger::Part;
use crate::rules::RuleSet;
use crate::state::{same_purchase, MemberState, Receipt};
use crate::time::{format_instant, parse_instant_ms, Local, DAY_MS};
use serde::Deserialize;
use serde_json::{json, Value};

/// Decided receipts a member's state keeps (ClickHouse `receipts` has every one).
pub const MAX_DECIDED: usize = 20;
/// How far ahead of the engine's clock a purchase time may be (tills' clocks drift).
const AHEAD_MS: i64 = 10 * 60_000;
/// Image extensions the upload accepts (named by the image's own bytes).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "png", "webp", "gif"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitRequest {
    member_id: String,
    merchant_id: String,
    receipt_no: String,
    amount_fen: i64,
    purchased_at: String,
    image: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewRequest {
    member_id: String,
    receipt_id: String,
    decision: String,
    #[serde(default)]
    reason: String,
    reviewer: String,
}

/// FNV-1a, 64 bits, from `basis`: stable across builds and platforms (the id is kept).
fn fnv(basis: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(basis, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The receipt's id (and its payment's event id): the same merchant and receipt number give
/// the same id, whoever submits it. `rc-` and 32 hex digits.
pub fn receipt_id(merchant_id: &str, receipt_no: &str) -> String {
    let mut key = Vec::with_capacity(merchant_id.len() + receipt_no.len() + 1);
    key.extend_from_slice(merchant_id.as_bytes());
    key.push(0x1f);
    key.extend_from_slice(receipt_no.as_bytes());
    format!("rc-{:016x}{:016x}", fnv(0xcbf2_9ce4_8422_2325, &key), fnv(0x6c62_272e_07bb_0142, &key))
}

/// The operation that submits a receipt (its payment has the receipt's id itself).
pub fn submission_id(receipt_id: &str) -> String {
    format!("{receipt_id}:s")
}

/// An uploaded image's name as the upload answered it: 64 hex digits (its SHA-256) and an
/// image extension. Anything else (a path, a dot-dot, another extension) is refused.
pub fn check_image(field: &str, name: &str) -> CoreResult<()> {
    let ok = name.split_once('.').is_some_and(|(hash, ext)| {
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) && IMAGE_EXTENSIONS.contains(&ext)
    });
    if ok {
        Ok(())
    } else {
        Err(CoreError::invalid_event(field, "must name an uploaded image (<sha256>.jpg|png|webp|gif, as the upload answered)"))
    }
}

fn prune(state: &mut MemberState) {
    let mut decided: Vec<(i64, String)> =
        state.receipts.iter().filter(|(_, r)| r.status != "pending").map(|(id, r)| (r.decided_at_ms, id.clone())).collect();
    if decided.len() > MAX_DECIDED {
        decided.sort();
        for (_, id) in &decided[..decided.len() - MAX_DECIDED] {
            state.receipts.remove(id);
        }
    }
}

/// The row of `receipts` (ClickHouse) recording one step of a receipt: submitted, approved
/// (by the rules: reviewer "auto") or rejected.
/// `step`: (status, reviewer).
fn fact(rules: &RuleSet, op_id: &str, member_id: &str, id: &str, r: &Receipt, step: (&str, &str), now_ms: i64) -> Value {
    let (status, reviewer) = step;
    let bu = rules.merchants.get(&r.merchant_id).map_or("", |m| m.bu.as_str());
    json!({
        "table": "receipts", "receipt_id": id, "event_id": op_id, "member_id": member_id, "status": status,
        "merchant_id": r.merchant_id, "bu_id": bu, "amount_fen": r.amount_fen, "receipt_no": r.receipt_no,
        "purchased_at_ms": r.purchased_at_ms, "image": r.image, "reason": r.reason, "operator": reviewer,
        "submitted_at_ms": r.submitted_at_ms, "occurred_at_ms": now_ms, "processed_at_ms": now_ms,
        "rules_version": rules.version,
    })
}

/// The payment an approved receipt makes, for the accrual pipeline.
fn payment(rules: &RuleSet, member_id: &str, id: &str, r: &Receipt) -> String {
    let m = &rules.merchants[&r.merchant_id];
    json!({
        "event_id": id, "type": "payment", "occurred_at": format_instant(r.purchased_at_ms), "member_id": member_id,
        "bu_id": m.bu, "merchant_id": m.id, "category": m.category, "amount_fen": r.amount_fen,
        "channel": RECEIPT_CHANNEL, "receipt_no": r.receipt_no,
    })
    .to_string()
}

fn answer(member_id: &str, id: &str, r: &Receipt) -> Value {
    json!({
        "receipt_id": id, "member_id": member_id, "merchant_id": r.merchant_id, "receipt_no": r.receipt_no,
        "amount_fen": r.amount_fen, "purchased_at_ms": r.purchased_at_ms, "status": r.status,
        "reason": (!r.reason.is_empty()).then_some(&r.reason), "submitted_at_ms": r.submitted_at_ms,
        "decided_at_ms": (r.decided_at_ms > 0).then_some(r.decided_at_ms),
    })
}

/// Why the purchase cannot earn by receipt: a payment of it earned already (one noted in
/// the state, or one of the member's recent payments the caller read).
fn earned_already(rules: &RuleSet, state: &MemberState, ctx: &Context, r: &Receipt) -> Option<CoreError> {
    let day_of = |ms: i64| Local::of(ms, rules.utc_offset_minutes).day;
    let day = day_of(r.purchased_at_ms);
    let noted = state.payment_like(day, &r.merchant_id, r.amount_fen, &r.receipt_no).map(|p| p.4.clone());
    let read = || {
        ctx.purchases
            .iter()
            .find(|(at, m, fen, _)| same_purchase((day_of(*at), m, *fen, ""), (day, &r.merchant_id, r.amount_fen, "")))
            .map(|p| p.3.clone())
    };
    noted.or_else(read).map(|p| refused("receipt_no", format!("this purchase earned already by payment {p}")))
}

pub fn submit(rules: &RuleSet, state: &mut MemberState, op_id: &str, body: &[u8], ctx: &Context, now_ms: i64) -> CoreResult<Done> {
    let Some(cfg) = &rules.engagement.receipts else {
        return Err(refused("receipt", "receipt points are not offered (the rules have no [receipts])"));
    };
    let req: SubmitRequest = parse(body, "member_id, merchant_id, receipt_no, amount_fen, purchased_at, image")?;
    check_id("member_id", &req.member_id)?;
    check_id("merchant_id", &req.merchant_id)?;
    check_id("receipt_no", &req.receipt_no)?;
    check_image("image", &req.image)?;
    if !(1..=MAX_AMOUNT_FEN).contains(&req.amount_fen) {
        return Err(CoreError::invalid_event("amount_fen", format!("must be from 1 to {MAX_AMOUNT_FEN} fen")));
    }
    let at = parse_instant_ms(&req.purchased_at).map_err(|e| CoreError::invalid_event("purchased_at", e.reason().to_string()))?;
    if !rules.merchants.contains_key(&req.merchant_id) {
        return Err(CoreError::invalid_event("merchant_id", format!("unknown merchant {:?}", req.merchant_id)));
    }
    // The receipt's id is its payment's event id; its submission is the operation `<id>:s`.
    let id = receipt_id(&req.merchant_id, &req.receipt_no);
    if op_id != submission_id(&id) {
        return Err(CoreError::invalid_event("receipt_id", format!("the submission of this receipt is {}", submission_id(&id))));
    }
    if at > now_ms + AHEAD_MS {
        return Err(refused("purchased_at", "is in the future"));
    }
    if now_ms - at > cfg.max_age_days * DAY_MS {
        return Err(refused("purchased_at", format!("receipts are taken within {} days of the purchase", cfg.max_age_days)));
    }
    if let Some(r) = state.receipts.get(&id) {
        return Err(refused("receipt_no", format!("this receipt was submitted already ({})", r.status)));
    }
    let mut r = Receipt {
        merchant_id: req.merchant_id.clone(),
        receipt_no: req.receipt_no,
        amount_fen: req.amount_fen,
        purchased_at_ms: at,
        image: req.image,
        status: "pending".into(),
        submitted_at_ms: now_ms,
        decided_at_ms: 0,
        reason: String::new(),
    };
    if let Some(e) = earned_already(rules, state, ctx, &r) {
        return Err(e);
    }
    let today = Local::of(now_ms, rules.utc_offset_minutes).day;
    let auto_today = if state.receipts_auto[0] == today { state.receipts_auto[1] } else { 0 };
    let why_review = if !cfg.auto_merchants.contains(&r.merchant_id) {
        Some("merchant")
    } else if r.amount_fen > cfg.auto_max_fen {
        Some("amount")
    } else if now_ms - at > cfg.auto_within_days * DAY_MS {
        Some("age")
    } else if auto_today >= cfg.auto_daily_cap {
        Some("daily_cap")
    } else {
        None
    };
    let mut rows = Rows::new(rules, state, op_id, &req.member_id, now_ms);
    rows.raw(fact(rules, op_id, &req.member_id, &id, &r, ("submitted", ""), now_ms));
    let mut publish = None;
    if why_review.is_none() {
        r.status = "approved".into();
        r.decided_at_ms = now_ms;
        state.receipts_auto = [today, auto_today + 1];
        rows.raw(fact(rules, op_id, &req.member_id, &id, &r, ("approved", "auto"), now_ms));
        publish = Some(payment(rules, &req.member_id, &id, &r));
    }
    let why = [Part::new(if publish.is_some() { "receipt_approved" } else { "receipt_submitted" }, id.clone(), 0)];
    let bu = rules.merchants[&r.merchant_id].bu.clone();
    rows.points("receipt", 0, "receipt", &bu, &why, &[], &[]);
    let mut result = answer(&req.member_id, &id, &r);
    result["review"] = json!(why_review);
    state.receipts.insert(id, r);
    prune(state);
    Ok(Done::points(0, &rows, result, publish))
}

pub fn review(rules: &RuleSet, state: &mut MemberState, op_id: &str, body: &[u8], ctx: &Context, now_ms: i64) -> CoreResult<Done> {
    check_id("Idempotency-Key", op_id)?;
    let req: ReviewRequest = parse(body, "member_id, receipt_id, decision, reason, reviewer")?;
    check_id("member_id", &req.member_id)?;
    check_id("receipt_id", &req.receipt_id)?;
    check_id("reviewer", &req.reviewer)?;
    let approve = match req.decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(CoreError::invalid_event("decision", "must be approve or reject")),
    };
    let reason = req.reason.trim();
    if !approve && reason.is_empty() {
        return Err(CoreError::invalid_event("reason", "a rejection says why (the member is told)"));
    }
    if reason.chars().count() > 200 || reason.chars().any(char::is_control) {
        return Err(CoreError::invalid_event("reason", "at most 200 characters, no control characters"));
    }
    let Some(r) = state.receipts.get(&req.receipt_id).cloned() else {
        return Err(refused("receipt_id", format!("member {} has no receipt {}", req.member_id, req.receipt_id)));
    };
    if r.status != "pending" {
        return Err(refused("receipt_id", format!("receipt {} is {} already", req.receipt_id, r.status)));
    }
    if approve {
        if let Some(e) = earned_already(rules, state, ctx, &r) {
            return Err(e);
        }
    }
    let mut r = r;
    r.status = if approve { "approved" } else { "rejected" }.into();
    r.reason = reason.to_string();
    r.decided_at_ms = now_ms;
    let mut rows = Rows::new(rules, state, op_id, &req.member_id, now_ms);
    rows.raw(fact(rules, op_id, &req.member_id, &req.receipt_id, &r, (&r.status, &req.reviewer), now_ms));
    let why = [Part::new(if approve { "receipt_approved" } else { "receipt_rejected" }, req.receipt_id.clone(), 0)];
    let bu = rules.merchants.get(&r.merchant_id).map_or(String::new(), |m| m.bu.clone());
    rows.points("receipt", 0, "receipt", &bu, &why, &[], &[]);
    let publish = (approve && rules.merchants.contains_key(&r.merchant_id)).then(|| payment(rules, &req.member_id, &req.receipt_id, &r));
    let result = answer(&req.member_id, &req.receipt_id, &r);
    state.receipts.insert(req.receipt_id, r);
    prune(state);
    Ok(Done::points(0, &rows, result, publish))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accrual::accrue_payment;
    use rustc_hash::FxHashMap as HashMap;

    const NOW: i64 = 1_795_395_600_000; // 2026-11-23T01:00:00Z, 09:00 local
    const RECEIPTS: &str = r#"
[receipts]
max_age_days = 30
auto_merchants = ["x"]
auto_max_fen = 50000
auto_within_days = 3
auto_daily_cap = 2
"#;
    const IMG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.jpg";

    fn rules() -> RuleSet {
        crate::tests_engine::rules_with(&format!("{RECEIPTS}\n[[merchants]]\nid = \"x\"\nbu = \"mall\"\ncategory = \"fashion\"\n\n[[merchants]]\nid = \"y\"\nbu = \"mall\"\ncategory = \"food\"\n")).unwrap()
    }

    fn submit_one(r: &RuleSet, s: &mut MemberState, merchant: &str, no: &str, fen: i64, at: &str) -> CoreResult<Done> {
        let body = json!({"member_id": "m1", "merchant_id": merchant, "receipt_no": no, "amount_fen": fen,
                          "purchased_at": at, "image": IMG}).to_string();
        submit(r, s, &submission_id(&receipt_id(merchant, no)), body.as_bytes(), &Context::default(), NOW)
    }

    fn decide(r: &RuleSet, s: &mut MemberState, id: &str, decision: &str, reason: &str) -> CoreResult<Done> {
        let body = json!({"member_id": "m1", "receipt_id": id, "decision": decision, "reason": reason, "reviewer": "cs1"}).to_string();
        review(r, s, &format!("{id}:d"), body.as_bytes(), &Context::default(), NOW + 60_000)
    }

    fn apply(r: &RuleSet, s: &mut MemberState, payment: &str) -> crate::accrual::Applied {
        let ev = crate::events::parse_payment_event(payment.as_bytes()).unwrap();
        accrue_payment(r, &ev, "m1", s, &mut HashMap::default(), NOW).unwrap()
    }

    fn callback(id: &str, merchant: &str, fen: i64, at: &str, receipt_no: Option<&str>) -> String {
        json!({"event_id": id, "type": "payment", "occurred_at": at, "member_id": "m1", "bu_id": "mall",
               "merchant_id": merchant, "category": "fashion", "amount_fen": fen, "channel": "wechat", "receipt_no": receipt_no})
            .to_string()
    }

    #[test]
    fn the_receipt_id_is_stable_and_names_merchant_and_number() {
        assert_eq!(receipt_id("x", "R-1"), receipt_id("x", "R-1"));
        assert_ne!(receipt_id("x", "R-1"), receipt_id("y", "R-1"));
        assert_ne!(receipt_id("x1", "R"), receipt_id("x", "1R"), "the separator keeps the two apart");
        let id = receipt_id("x", "R-1");
        assert!(id.starts_with("rc-") && id.len() == 35 && id[3..].bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        // FNV-1a's published test vector: the id stays the same across builds.
        assert_eq!(fnv(0xcbf2_9ce4_8422_2325, b"a"), 0xaf63_dc4c_8601_ec8c);
        for bad in ["../etc/passwd", "a.jpg", &format!("{}.exe", &IMG[..64]), &IMG.to_uppercase(), &format!("/{IMG}")] {
            assert_eq!(check_image("image", bad).unwrap_err().field(), "image", "{bad}");
        }
        check_image("image", IMG).unwrap();
    }

    #[test]
    fn auto_approval_follows_the_rules_and_the_rest_wait_for_review() {
        let r = rules();
        let mut s = MemberState::default();
        let d = submit_one(&r, &mut s, "x", "A1", 10_000, "2026-11-23T08:00:00+08:00").unwrap();
        let res: Value = serde_json::from_str(&d.result_json).unwrap();
        assert_eq!(res["status"], "approved");
        let pay: Value = serde_json::from_str(d.publish.as_deref().unwrap()).unwrap();
        assert_eq!((pay["event_id"].as_str(), pay["channel"].as_str(), pay["amount_fen"].as_i64(), pay["category"].as_str()),
                   (Some(receipt_id("x", "A1").as_str()), Some("receipt"), Some(10_000), Some("fashion")));
        let rows: Value = serde_json::from_str(&d.rows_json).unwrap();
        assert_eq!(rows.as_array().unwrap().iter().filter(|x| x["table"] == "receipts").count(), 2, "submitted, approved");
        // Review: another merchant, too much, too old, over the daily cap.
        for (m, no, fen, at, why) in [
            ("y", "B1", 100, "2026-11-23T08:00:00+08:00", "merchant"),
            ("x", "B2", 60_000, "2026-11-23T08:00:00+08:00", "amount"),
            ("x", "B3", 100, "2026-11-10T08:00:00+08:00", "age"),
        ] {
            let d = submit_one(&r, &mut s, m, no, fen, at).unwrap();
            let res: Value = serde_json::from_str(&d.result_json).unwrap();
            assert_eq!((res["status"].as_str(), res["review"].as_str()), (Some("pending"), Some(why)), "{no}");
            assert!(d.publish.is_none());
        }
        submit_one(&r, &mut s, "x", "A2", 100, "2026-11-23T08:00:00+08:00").unwrap();
        let d = submit_one(&r, &mut s, "x", "A3", 100, "2026-11-23T08:00:00+08:00").unwrap();
        assert_eq!(serde_json::from_str::<Value>(&d.result_json).unwrap()["review"], "daily_cap");
        // Refused outright: too old, in the future, twice, an unknown merchant, a bad image.
        assert_eq!(submit_one(&r, &mut s, "x", "C1", 100, "2026-10-01T08:00:00+08:00").unwrap_err().field(), "purchased_at");
        assert_eq!(submit_one(&r, &mut s, "x", "C2", 100, "2026-11-24T08:00:00+08:00").unwrap_err().field(), "purchased_at");
        assert_eq!(submit_one(&r, &mut s, "x", "A1", 100, "2026-11-23T08:00:00+08:00").unwrap_err().field(), "receipt_no");
        assert_eq!(submit_one(&r, &mut s, "nope", "C3", 100, "2026-11-23T08:00:00+08:00").unwrap_err().field(), "merchant_id");
        let body = json!({"member_id": "m1", "merchant_id": "x", "receipt_no": "C4", "amount_fen": 1,
                          "purchased_at": "2026-11-23T08:00:00+08:00", "image": "../../etc/passwd"}).to_string();
        assert_eq!(submit(&r, &mut s, &submission_id(&receipt_id("x", "C4")), body.as_bytes(), &Context::default(), NOW).unwrap_err().field(), "image");
        let none = crate::tests_engine::rules_with("").unwrap();
        assert_eq!(submit_one(&none, &mut MemberState::default(), "x", "D1", 1, "2026-11-23T08:00:00+08:00").unwrap_err().field(), "receipt");
    }

    #[test]
    fn a_reviewer_approves_or_rejects_a_pending_receipt_once() {
        let r = rules();
        let mut s = MemberState::default();
        let id = receipt_id("y", "P1");
        submit_one(&r, &mut s, "y", "P1", 8_800, "2026-11-22T20:00:00+08:00").unwrap();
        assert_eq!(decide(&r, &mut s, &id, "reject", " ").unwrap_err().field(), "reason");
        assert_eq!(decide(&r, &mut s, &id, "maybe", "").unwrap_err().field(), "decision");
        let d = decide(&r, &mut s, &id, "approve", "").unwrap();
        let pay: Value = serde_json::from_str(d.publish.as_deref().unwrap()).unwrap();
        assert_eq!((pay["occurred_at"].as_str(), pay["merchant_id"].as_str()), (Some("2026-11-22T12:00:00.000Z"), Some("y")));
        assert_eq!(decide(&r, &mut s, &id, "reject", "late").unwrap_err().field(), "receipt_id", "decided once");
        let id2 = receipt_id("y", "P2");
        submit_one(&r, &mut s, "y", "P2", 100, "2026-11-22T20:00:00+08:00").unwrap();
        let d = decide(&r, &mut s, &id2, "reject", "blurred photo").unwrap();
        assert!(d.publish.is_none());
        assert_eq!((s.receipts[&id2].status.as_str(), s.receipts[&id2].reason.as_str()), ("rejected", "blurred photo"));
        let rows: Value = serde_json::from_str(&d.rows_json).unwrap();
        assert_eq!((rows[0]["status"].as_str(), rows[0]["operator"].as_str()), (Some("rejected"), Some("cs1")));
    }

    #[test]
    fn a_receipt_and_a_payment_of_one_purchase_earn_once_whichever_comes_first() {
        let r = rules();
        // The payment first (the member had no receipts: the caller reads it from the
        // member's event records): the receipt of the same merchant, amount and day is refused.
        let mut s = MemberState::default();
        let paid = apply(&r, &mut s, &callback("wx-1", "x", 20_000, "2026-11-23T08:30:00+08:00", None));
        assert!(paid.points > 0);
        assert!(s.purchases.is_empty(), "payments are noted only while the member has receipts");
        let at = parse_instant_ms("2026-11-23T08:30:00+08:00").unwrap();
        let ctx = Context { purchases: vec![(at, "x".into(), 20_000, "wx-1".into())], ..Default::default() };
        let body = |no: &str, fen: i64| json!({"member_id": "m1", "merchant_id": "x", "receipt_no": no, "amount_fen": fen,
                                                "purchased_at": "2026-11-23T08:31:00+08:00", "image": IMG}).to_string();
        let e = submit(&r, &mut s, &submission_id(&receipt_id("x", "R9")), body("R9", 20_000).as_bytes(), &ctx, NOW).unwrap_err();
        assert_eq!(e.field(), "receipt_no");
        assert!(e.reason().contains("wx-1"), "{}", e.reason());
        // Another amount: another purchase.
        submit(&r, &mut s, &submission_id(&receipt_id("x", "R10")), body("R10", 20_001).as_bytes(), &ctx, NOW).unwrap();
        // Now that the member has receipts, payments are noted: a callback carrying a receipt
        // number makes that receipt refused, whatever its amount.
        apply(&r, &mut s, &callback("wx-3", "x", 999, "2026-11-20T08:00:00+08:00", Some("R5")));
        assert_eq!(s.purchases.len(), 1);
        let e = submit_one(&r, &mut s, "x", "R5", 1_000, "2026-11-22T08:00:00+08:00").unwrap_err();
        assert!(e.reason().contains("wx-3"), "{}", e.reason());
        // The receipt first: its payment earns; the callback after it earns nothing, named,
        // and the spend is counted once.
        let mut s = MemberState::default();
        let d = submit_one(&r, &mut s, "x", "R1", 20_000, "2026-11-23T08:00:00+08:00").unwrap();
        let by_receipt = apply(&r, &mut s, d.publish.as_deref().unwrap());
        assert_eq!(by_receipt.points, paid.points);
        let late = apply(&r, &mut s, &callback("wx-2", "x", 20_000, "2026-11-23T08:00:05+08:00", None));
        assert_eq!(late.points, 0);
        assert!(late.rows_json.contains(&format!("\"earned_already\",\"id\":\"{}\"", receipt_id("x", "R1"))), "{}", late.rows_json);
        assert_eq!(s.window_totals(2026 * 12 + 10, 12).1, 20_000, "the spend counted once");
        // A payment noted before a pending receipt's approval: the reviewer's approval is refused.
        let mut s = MemberState::default();
        submit_one(&r, &mut s, "y", "Q1", 700, "2026-11-23T08:00:00+08:00").unwrap();
        apply(&r, &mut s, &callback("wx-6", "y", 700, "2026-11-23T08:00:00+08:00", None));
        let e = decide(&r, &mut s, &receipt_id("y", "Q1"), "approve", "").unwrap_err();
        assert!(e.reason().contains("wx-6"), "{}", e.reason());
        // Two payments of the same amount the same day are two purchases.
        let mut s = MemberState::default();
        apply(&r, &mut s, &callback("wx-4", "x", 500, "2026-11-23T08:00:00+08:00", None));
        assert!(apply(&r, &mut s, &callback("wx-5", "x", 500, "2026-11-23T08:10:00+08:00", None)).points > 0);
    }
}
