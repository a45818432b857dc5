//! The accrual plan: rounds against replies given by hand (the real Redis runs in the
//! Python integration tests), and the rule that every call names one hash slot.

use crate::batch::{AccrualBatch, Config, Kind};
use crate::envelope;
use crate::record::Record;
use crate::resp::{slot, Reply};
use crate::rules::RuleSet;
use serde_json::json;
use std::sync::Arc;

const RULES: &str = concat!(
    r#"
version = "b-1"
utc_offset_minutes = 480
"#,
    include_str!("../../tests/fixtures/rules/mall.toml"),
    include_str!("../../tests/fixtures/rules/normal_tier.toml"),
    r#"[[campaigns]]
id = "double"
multiplier_pct = 200
budget_points = 150
[[leaderboards]]
period = "week"
scope = "group"
"#
);

const NOW: i64 = 1_764_400_000_000; // 2025-11-29

fn pay(id: &str, member: Option<&str>, amount: i64) -> Vec<u8> {
    let mut v = json!({"event_id": id, "type": "payment", "occurred_at": "2025-11-28T10:00:00+08:00",
                       "bu_id": "mall", "merchant_id": "shop-1", "category": "fashion", "amount_fen": amount, "channel": "wechat"});
    match member {
        Some(m) => v["member_id"] = json!(m),
        None => v["payer"] = json!({"kind": "wechat", "id": "o-1"}),
    }
    serde_json::to_vec(&v).unwrap()
}

fn refund(id: &str, member: &str, of: &str, amount: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({"event_id": id, "type": "refund", "occurred_at": "2025-11-28T11:00:00+08:00",
        "member_id": member, "refund_of": of, "bu_id": "mall", "merchant_id": "shop-1", "category": "fashion",
        "amount_fen": amount, "channel": "wechat"}))
    .unwrap()
}

fn digest_of(body: &[u8]) -> u64 {
    crate::record::digest(&crate::events::parse_event(body).unwrap())
}

fn cfg() -> Config {
    Config { ns: "t".into(), horizon_ms: 400 * 86_400_000, history_len: 5, members_per_call: 1 }
}

/// The arguments of a RESP array command.
fn args(cmd: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let text = cmd;
    let mut at = text.iter().position(|&c| c == b'\n').unwrap() + 1;
    while at < text.len() {
        assert_eq!(text[at], b'$');
        let nl = at + text[at..].iter().position(|&c| c == b'\n').unwrap();
        let len: usize = std::str::from_utf8(&text[at + 1..nl - 1]).unwrap().parse().unwrap();
        out.push(text[nl + 1..nl + 1 + len].to_vec());
        at = nl + 1 + len + 2;
    }
    out
}

/// The keys a command names: FCALL name numkeys keys..., else its first argument.
fn keys(cmd: &[u8]) -> Vec<Vec<u8>> {
    let a = args(cmd);
    match a[0].as_slice() {
        b"FCALL" | b"FCALL_RO" => {
            let n: usize = std::str::from_utf8(&a[2]).unwrap().parse().unwrap();
            a[3..3 + n].to_vec()
        }
        _ => vec![a[1].clone()],
    }
}

fn one_slot(plan: &[Vec<u8>]) {
    for cmd in plan {
        let ks = keys(cmd);
        assert!(!ks.is_empty());
        let s = slot(&ks[0]);
        assert!(ks.iter().all(|k| slot(k) == s), "keys of one call in several slots: {:?}",
                ks.iter().map(|k| String::from_utf8_lossy(k).to_string()).collect::<Vec<_>>());
    }
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

/// A member's two read replies: head, and the record of each asked id.
fn read_reply(seq: i64, state: Option<&str>, found: &[Option<&str>]) -> Vec<Reply> {
    let mut head = vec![bulk(&seq.to_string()), state.map_or(Reply::Nil, bulk)];
    head.extend(std::iter::repeat_n(Reply::Nil, 7));
    let recs = found.iter().map(|r| r.map_or(Reply::Nil, bulk)).collect();
    vec![Reply::Array(head), Reply::Array(recs)]
}

#[test]
fn a_round_applies_members_and_keeps_guests_with_one_slot_per_call() {
    let rules = Arc::new(RuleSet::from_toml(RULES, "b.toml").unwrap());
    let env = envelope::pack(&[pay("p1", Some("m1"), 10_000), pay("g1", None, 5_000), pay("p2", Some("m2"), 3_000)]);
    let single = pay("p3", Some("m1"), 2_000);
    let mut b = AccrualBatch::decode(rules, cfg(), &[&env, &single], NOW);
    assert_eq!(b.len(), 4);
    let read = b.read_plan();
    one_slot(&read);
    assert_eq!(read.len(), 2 * 2 + 1, "two members (head, records) and one budget");
    let mut replies = read_reply(0, None, &[None, None]);
    replies.extend(read_reply(7, None, &[None]));
    replies.push(Reply::Nil);
    b.read_done(&replies).unwrap();
    let reserve = b.reserve_plan();
    one_slot(&reserve);
    assert_eq!(reserve.len(), 1);
    let r = args(&reserve[0]);
    assert_eq!(r[3], b"t:budget:{double}");
    // p1 takes 100 of the 150 budget, then p3 20 (m1), p2 takes the last 30: all fit.
    assert_eq!(&r[6..], &[b"p1".to_vec(), b"100".to_vec(), b"m1".to_vec(), b"p3".to_vec(), b"20".to_vec(),
                          b"m1".to_vec(), b"p2".to_vec(), b"30".to_vec(), b"m2".to_vec()]);
    b.reserve_done(&[Reply::Array(vec![Reply::Int(1), Reply::Int(1), Reply::Int(1)])]).unwrap();
    let outbox = b.outbox_plan("tok1", 604_800);
    one_slot(&outbox);
    assert_eq!(args(&outbox[1])[..2], [b"ZADD".to_vec(), b"t:outboxes".to_vec()], "the sweeper's index");
    let o = args(&outbox[0]);
    assert_eq!((o[0].as_slice(), o[1].as_slice()), (&b"SET"[..], &b"t:outbox:{tok1}"[..]));
    assert_eq!(o[2][4], envelope::COMPRESSED, "the outbox is kept compressed");
    let plain = envelope::inflate(&o[2]).unwrap();
    let held = envelope::unpack(&plain).unwrap();
    assert_eq!(held.len(), 2 * 3, "(event id, rows) of the three events written");
    assert_eq!(held[0], b"p1");
    let write = b.write_plan();
    one_slot(&write);
    assert_eq!(write.len(), 2);
    let w = args(&write[0]);
    // FCALL ly_apply 4 keys(4) n day before ttl hlen seq state balance ...
    assert_eq!(w[1], b"ly_apply");
    assert_eq!(&w[3..7], &[b"t:m:{m1}".to_vec(), b"t:ev:{m1}".to_vec(), b"t:ob:{m1}".to_vec(), b"t:h:{m1}".to_vec()]);
    assert_eq!(w[12], b"0", "expected seq");
    assert_eq!(w[13], b"a", "the counters' new values");
    assert_eq!(w[15], b"240", "balance: 200 + 40");
    let rec = String::from_utf8(w[23].clone()).unwrap();
    assert_eq!(w[22], b"p1");
    assert!(rec.starts_with("P|~|") && rec.ends_with("|@tok1"), "{rec}");
    match Record::decode(&rec).unwrap() {
        Record::Payment { payment, booking, .. } => {
            assert_eq!((payment.amount_fen, payment.points), (10_000, 200));
            assert_eq!((booking.bu_id.as_str(), booking.format.as_str()), ("mall", "mall"));
            assert_eq!(booking.commission_fen + booking.merchant_fen, 10_000);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(b.write_done(&[Reply::Array(vec![bulk("ok")]), Reply::Array(vec![bulk("c:8")])]).unwrap(), 1);
    let settle = b.settle_plan();
    one_slot(&settle);
    let s = args(&settle[0]);
    assert_eq!(&s[4..], &[b"p1".to_vec(), b"1".to_vec(), b"p3".to_vec(), b"1".to_vec(), b"p2".to_vec(),
                          b"0".to_vec()]);
    assert_eq!(b.kind(2), Kind::Pending, "m2 conflicted: evaluated again");
    assert_eq!((b.kind(0), b.kind(1), b.kind(3)), (Kind::Applied, Kind::Guest, Kind::Applied));

    // Round two: only m2, against its fresh state.
    let read = b.read_plan();
    assert_eq!(read.len(), 2 + 1);
    let mut replies = read_reply(8, None, &[None]);
    replies.push(bulk("120"));
    b.read_done(&replies).unwrap();
    b.reserve_done(&[Reply::Array(vec![Reply::Int(1)])]).unwrap();
    b.outbox_plan("tok2", 604_800);
    let write = b.write_plan();
    let w = args(&write[0]);
    assert_eq!(w[12], b"8");
    assert_eq!(w[15], b"60", "30 base + 30 of the budget's last 30");
    b.write_done(&[Reply::Array(vec![bulk("ok")])]).unwrap();
    assert!(b.read_plan().is_empty());
    let guests = b.guest_plan(86_400);
    one_slot(&guests);
    assert_eq!(keys(&guests[0]), vec![b"t:guest:{wechat:o-1}".to_vec()]);
    b.guest_done(&[Reply::Int(1)]);
    let r = b.report();
    assert_eq!((r.applied, r.guests, r.duplicates, r.conflicts, r.rounds), (3, 1, 0, 1, 2));
    let msgs = b.ledger_messages();
    assert_eq!(msgs.len(), 1);
    let m: serde_json::Value = serde_json::from_slice(&msgs[0]).unwrap();
    let ledger = m["ledger"].as_array().unwrap();
    let (states, rows): (Vec<_>, Vec<_>) = ledger.iter().partition(|r| r["table"] == "member_states");
    assert_eq!(rows.len(), 3);
    // Each member written carries its state after the write, with the seq it got.
    let mut written: Vec<(String, i64)> =
        states.iter().map(|s| (s["member_id"].as_str().unwrap().to_string(), s["seq"].as_i64().unwrap())).collect();
    written.sort();
    let mut members: Vec<String> = rows.iter().map(|r| r["member_id"].as_str().unwrap().to_string()).collect();
    members.sort();
    members.dedup();
    assert_eq!(written.iter().map(|w| w.0.clone()).collect::<Vec<_>>(), members);
    assert!(states.iter().all(|s| s["state"].is_object() && s["seq"].as_i64().unwrap() >= 1), "{states:?}");
    assert_eq!(m["guests"].as_array().unwrap().len(), 1);
    assert!(m["ledger"][0]["boards"][0][0].as_str().unwrap().starts_with("w:2025-W48"));
    let trims = b.trim_plan();
    one_slot(&trims);
    assert_eq!(trims.len(), 2 + 1 + 2 * 3, "a DEL of each round's outbox, its index entries, then histories");
    assert_eq!(args(&trims[0]), vec![b"DEL".to_vec(), b"t:outbox:{tok1}".to_vec()]);
}

#[test]
fn on_a_single_redis_several_members_share_one_apply_call_and_each_gets_its_answer() {
    let rules = Arc::new(RuleSet::from_toml(RULES, "b.toml").unwrap());
    let env = envelope::pack(&[pay("p1", Some("m1"), 10_000), pay("p2", Some("m2"), 3_000), pay("p3", Some("m3"), 100)]);
    let mut b = AccrualBatch::decode(rules, Config { members_per_call: 2, ..cfg() }, &[&env], NOW);
    assert_eq!(b.read_plan().len(), 3 * 2 + 1);
    let mut replies = read_reply(0, None, &[None]);
    replies.extend(read_reply(4, None, &[None]));
    replies.extend(read_reply(0, None, &[None]));
    replies.push(Reply::Nil);
    b.read_done(&replies).unwrap();
    let reserve = b.reserve_plan();
    let units = (args(&reserve[0]).len() - 6) / 3;
    b.reserve_done(&[Reply::Array(vec![Reply::Int(1); units])]).unwrap();
    b.outbox_plan("tok1", 604_800);
    let write = b.write_plan();
    assert_eq!(write.len(), 2, "three members in calls of two");
    let w = args(&write[0]);
    assert_eq!(w[2], b"8", "the keys of two members");
    assert_eq!(&w[3..11], &[b"t:m:{m1}".to_vec(), b"t:ev:{m1}".to_vec(), b"t:ob:{m1}".to_vec(), b"t:h:{m1}".to_vec(),
                            b"t:m:{m2}".to_vec(), b"t:ev:{m2}".to_vec(), b"t:ob:{m2}".to_vec(), b"t:h:{m2}".to_vec()]);
    assert_eq!(w[11], b"2", "members in this call");
    assert_eq!(keys(&write[1]).len(), 4);
    // A reply that does not answer every member of its call is an error, not a guess.
    assert!(b.write_done(&[Reply::Array(vec![bulk("ok")]), Reply::Array(vec![bulk("ok")])]).is_err());
    assert_eq!(b.write_done(&[Reply::Array(vec![bulk("ok"), bulk("c:5")]), Reply::Array(vec![bulk("ok")])]).unwrap(), 1);
    assert_eq!((b.kind(0), b.kind(1), b.kind(2)), (Kind::Applied, Kind::Pending, Kind::Applied), "m2 conflicted");
}

#[test]
fn duplicates_resend_their_outbox_and_refunds_rewrite_their_payment() {
    let rules = Arc::new(RuleSet::from_toml(RULES, "b.toml").unwrap());
    let stored = Record::Payment {
        applied_ms: Some(NOW - 1000),
        digest: digest_of(&pay("p1", Some("m1"), 10_000)),
        payment: crate::accrual::PaymentRecord { amount_fen: 10_000, points: 200, ..Default::default() },
        booking: crate::record::Booking { bu_id: "mall".into(), format: "mall".into(), ..Default::default() },
    }
    .encode();
    let dup = pay("p1", Some("m1"), 10_000);
    let r1 = refund("r1", "m1", "p1", 2_500);
    let ghost = refund("r2", "m1", "nope", 100);
    let mut b = AccrualBatch::decode(rules, cfg(), &[&dup, &r1, &ghost], NOW);
    let read = b.read_plan();
    // ids asked: p1, r1, p1 (the refund's payment), r2, nope
    assert_eq!(args(&read[1]).len(), 2 + 5);
    let named = format!("{stored}|@old7");
    let mut replies = read_reply(3, None, &[Some(&named), None, Some(&named), None, None]);
    replies.push(Reply::Nil);
    b.read_done(&replies).unwrap();
    b.reserve_done(&[]).unwrap();
    b.outbox_plan("new8", 604_800);
    let write = b.write_plan();
    let w = args(&write[0]);
    assert_eq!(w[15], b"-50", "a quarter of 200 points back");
    // Records: the refund's, then the payment's again with the refund counted.
    assert_eq!(w[21], b"2");
    assert_eq!(w[22], b"r1");
    assert_eq!(w[24], b"p1");
    let again = std::str::from_utf8(&w[25]).unwrap();
    assert!(!again.contains("|@"), "the payment's record keeps no outbox of this round: {again}");
    let again = Record::decode(again).unwrap();
    assert!(matches!(again, Record::Payment { applied_ms: Some(_), payment, .. }
                     if payment.refunded_amount_fen == 2_500 && payment.refunded_points == 50));
    b.write_done(&[Reply::Array(vec![bulk("ok")])]).unwrap();
    assert_eq!((b.kind(0), b.kind(1), b.kind(2)), (Kind::Duplicate, Kind::Applied, Kind::Held));
    // The duplicate's record names an outbox an earlier delivery left: its rows are sent again.
    let resend = b.resend_plan();
    assert_eq!(args(&resend[0]), vec![b"GET".to_vec(), b"t:outbox:{old7}".to_vec()]);
    let blob = envelope::pack(&[&b"p1"[..], br#"[{"event_id":"p1","kind":"earn"}]"#, b"zz", b"[]"]);
    b.resend_done(&[Reply::Bulk(blob)]).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&b.ledger_messages()[0]).unwrap();
    assert_eq!(m["ledger"][0]["event_id"], "p1", "the duplicate's rows are sent again");
    assert_eq!(m["ledger"][0]["kind"], "earn");
    let trims = b.trim_plan();
    // Its own outbox goes; the earlier one stays for the sweeper (it may hold rows of events
    // that are not in this batch).
    assert_eq!(args(&trims[0]), vec![b"DEL".to_vec(), b"t:outbox:{new8}".to_vec()]);
    assert_eq!(args(&trims[1]), vec![b"ZREM".to_vec(), b"t:outboxes".to_vec(), b"new8".to_vec()]);
    // An outbox already deleted (its rows acked) sends nothing again.
    let mut b2 = AccrualBatch::decode(
        Arc::new(RuleSet::from_toml(RULES, "b.toml").unwrap()),
        cfg(),
        &[&pay("p1", Some("m1"), 10_000)],
        NOW,
    );
    b2.read_plan();
    let mut replies = read_reply(3, None, &[Some(&named)]);
    replies.push(Reply::Nil);
    b2.read_done(&replies).unwrap();
    b2.write_done(&[]).unwrap();
    b2.resend_done(&[Reply::Nil]).unwrap();
    assert!(b2.ledger_messages().is_empty());
}

#[test]
fn old_events_and_corrupt_envelopes_are_refused_with_a_reason() {
    let rules = Arc::new(RuleSet::from_toml(RULES, "b.toml").unwrap());
    let old = serde_json::to_vec(&json!({"event_id": "old", "type": "payment", "occurred_at": "2024-01-01T00:00:00Z",
        "member_id": "m1", "bu_id": "mall", "merchant_id": "s", "category": "c", "amount_fen": 100, "channel": "wechat"})).unwrap();
    let mut env = envelope::pack(&[pay("p1", Some("m1"), 100)]);
    env.push(0);
    let b = AccrualBatch::decode(rules, cfg(), &[&old, &env], NOW);
    assert_eq!(b.len(), 2);
    assert_eq!((b.kind(0), b.kind(1)), (Kind::Rejected, Kind::Rejected));
    assert_eq!(b.error(0).unwrap().field(), "occurred_at");
    assert!(b.error(0).unwrap().reason().contains("refund horizon of 400 days"));
    assert_eq!(b.error(1).unwrap().field(), "envelope");
    assert_eq!(b.body(1), &env[..], "a corrupt envelope is dead-lettered whole");
}

#[test]
fn the_same_id_with_other_content_is_refused_naming_what_differs() {
    let rules = Arc::new(RuleSet::from_toml(RULES, "b.toml").unwrap());
    let first = pay("p1", Some("m1"), 10_000);
    let stored = Record::Payment {
        applied_ms: Some(NOW - 1000),
        digest: digest_of(&first),
        payment: crate::accrual::PaymentRecord { amount_fen: 10_000, points: 100, ..Default::default() },
        booking: crate::record::Booking { bu_id: "mall".into(), merchant_id: "shop-1".into(), ..Default::default() },
    }
    .encode();
    // p1 again as sent (a duplicate), p1 with another amount (a conflict with the stored
    // record), p2 twice in this batch with other amounts (the second conflicts with the first).
    let same = first.clone();
    let more = pay("p1", Some("m1"), 12_000);
    let (p2, p2b) = (pay("p2", Some("m1"), 3_000), pay("p2", Some("m1"), 3_300));
    let mut b = AccrualBatch::decode(rules, cfg(), &[&same, &more, &p2, &p2b], NOW);
    b.read_plan();
    let mut replies = read_reply(3, None, &[Some(&stored), Some(&stored), None, None]);
    replies.push(Reply::Nil);
    b.read_done(&replies).unwrap();
    let granted: Vec<Reply> =
        b.reserve_plan().iter().map(|c| Reply::Array(vec![Reply::Int(1); (args(c).len() - 6) / 3])).collect();
    b.reserve_done(&granted).unwrap();
    b.outbox_plan("t1", 604_800);
    b.write_plan();
    b.write_done(&[Reply::Array(vec![bulk("ok")])]).unwrap();
    assert_eq!((b.kind(0), b.kind(1), b.kind(2), b.kind(3)),
               (Kind::Duplicate, Kind::Rejected, Kind::Applied, Kind::Rejected));
    let report = b.report();
    assert_eq!((report.duplicates, report.rejected, report.mismatched), (1, 2, 2));
    let e = b.error(1).unwrap();
    assert_eq!(e.field(), "event_id");
    let (d1, d2) = (format!("{:012x}", digest_of(&first)), format!("{:012x}", digest_of(&more)));
    assert!(e.reason().contains("amount_fen") && e.reason().contains(&d1) && e.reason().contains(&d2), "{e:?}");
    let e = b.error(3).unwrap();
    assert!(e.reason().contains("differs in amount_fen;"), "{e:?}");
}

#[test]
fn a_guest_payment_reusing_an_event_id_with_another_body_is_refused_and_its_fact_not_sent() {
    let rules = Arc::new(RuleSet::from_toml(RULES, "t").unwrap());
    let guest = pay("g1", None, 5_000);
    let mut b = AccrualBatch::decode(rules.clone(), cfg(), &[&guest], NOW);
    let read = b.read_plan();
    assert_eq!(read.len(), 1, "the payer's binding only");
    b.read_done(&[Reply::Nil]).unwrap();
    assert!(b.read_plan().is_empty());
    assert_eq!(b.guest_plan(86_400).len(), 1);
    b.guest_done(&[Reply::Int(2)]);
    let r = b.report();
    assert_eq!((r.guests, r.duplicates, r.mismatched), (0, 1, 1));
    assert!(b.ledger_messages().is_empty(), "the first fact stays the durable one");
    // The same payment again (0): its fact is sent again, in case the first send was lost.
    let mut again = AccrualBatch::decode(rules, cfg(), &[&guest], NOW);
    assert_eq!(again.read_plan().len(), 1);
    again.read_done(&[Reply::Nil]).unwrap();
    again.guest_done(&[Reply::Int(0)]);
    let r = again.report();
    assert_eq!((r.guests, r.duplicates, r.mismatched), (0, 1, 0));
    let m: serde_json::Value = serde_json::from_slice(&again.ledger_messages()[0]).unwrap();
    assert_eq!(m["guests"].as_array().unwrap().len(), 1);
}

#[test]
fn the_history_written_with_the_rows_is_the_one_read_off_their_json() {
    // A payment and its refund (written with their rows), and a payment paying with points
    // (a row added after: its entry is read off the JSON), for one member.
    let rules = Arc::new(RuleSet::from_toml(RULES, "b.toml").unwrap());
    let mut used = serde_json::from_slice::<serde_json::Value>(&pay("p2", Some("m1"), 6_000)).unwrap();
    used["points_used"] = json!(50);
    let env = envelope::pack(&[pay("p1", Some("m1"), 10_000), refund("r1", "m1", "p1", 4_000),
                               serde_json::to_vec(&used).unwrap()]);
    let mut b = AccrualBatch::decode(rules, cfg(), &[&env], NOW);
    let read = b.read_plan();
    let asked = args(&read[1]).len() - 2;
    let mut replies = read_reply(3, Some(r#"{"balance":500}"#), &vec![None; asked]);
    replies.extend(std::iter::repeat_n(Reply::Nil, read.len() - 2));
    b.read_done(&replies).unwrap();
    let reserve = b.reserve_plan();
    let grants = reserve.iter().map(|c| Reply::Array(vec![Reply::Int(1); (args(c).len() - 6) / 3])).collect::<Vec<_>>();
    b.reserve_done(&grants).unwrap();
    b.outbox_plan("tok", 600);
    let write = b.write_plan();
    b.write_done(&vec![Reply::Array(vec![bulk("ok")]); write.len()]).unwrap();
    assert_eq!((b.kind(0), b.kind(1), b.kind(2)), (Kind::Applied, Kind::Applied, Kind::Applied));
    let msgs = b.ledger_messages();
    let m: serde_json::Value = serde_json::from_slice(&msgs[0]).unwrap();
    let trims = b.trim_plan();
    let push = trims.iter().map(|c| args(c)).find(|a| a[0] == b"LPUSH").expect("the history is written");
    assert_eq!(push.len(), 2 + 3);
    for (entry, id) in push[2..].iter().zip(["p1", "r1", "p2"]) {
        let rows: Vec<&serde_json::Value> =
            m["ledger"].as_array().unwrap().iter().filter(|r| r["event_id"] == id && r.get("table").is_none()).collect();
        let want = crate::batch::history_entry(&serde_json::to_string(&rows).unwrap()).unwrap();
        let got = std::str::from_utf8(entry).unwrap();
        let parsed = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(parsed(got), parsed(&want), "{id}");
        assert!(got.starts_with(&format!(r#"[{{"event_id":"{id}","kind":"#)), "the rows' order: {got}");
    }
    assert!(std::str::from_utf8(&push[4]).unwrap().contains(r#""kind":"redeem""#), "p2 has its points row");
    assert!(std::str::from_utf8(&push[3]).unwrap().contains(r#""refund_of":"p1""#));
}
