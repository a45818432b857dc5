//! Coupon templates, triggers and the coupon wallet, through the batch entry point.

use crate::engine::{evaluate_batch, BatchResult, Outcome, StoredMembers};
use crate::events::parse_event;
use crate::rules::RuleSet;
use crate::state::MemberState;
use serde_json::{json, Value};

const RULES: &str = concat!(
    r#"
version = "c-1"
utc_offset_minutes = 480
"#,
    include_str!("../../tests/fixtures/rules/mall.toml"),
    include_str!("../../tests/fixtures/rules/hotel.toml"),
    include_str!("../../tests/fixtures/rules/normal_tier.toml"),
    r#"[formats.parking]
points = 0
per_fen = 100
[[business_units]]
id = "park"
format = "parking"
[[parking.car_parks]]
bu = "park"
free_minutes = 15
price_per_hour_fen = 1000
daily_cap_fen = 6000
[[tiers]]
id = "gold"
multiplier_pct = 100
qualify_points = 1000
[behaviour]
registration_gift = 10

[[coupon_templates]]
id = "welcome-20"
kind = "amount_off"
amount_off_fen = 2000
threshold_fen = 10000
valid_days = 30
per_member_limit = 1
bus = ["mall"]
categories = ["food", "fashion"]
merchant_share_pct = 40

[[coupon_templates]]
id = "pct-10"
kind = "percent_off"
percent_off = 10
max_off_fen = 5000
valid_days = 7

[[coupon_templates]]
id = "coffee"
kind = "item"
item = "latte"
item_value_fen = 1800
valid_from = "2026-11-01T00:00:00+08:00"
valid_to = "2026-12-01T00:00:00+08:00"
stock = 2

[[coupon_templates]]
id = "park-2h"
kind = "parking"
parking_minutes = 120
valid_days = 1

[[triggers]]
id = "welcome"
on = "register"
coupon = "welcome-20"

[[triggers]]
id = "big-spender"
on = "spend"
min_amount_fen = 100000
coupon = "pct-10"
max_per_member = 1
per_days = 30

[[triggers]]
id = "weekly-500"
on = "spend_window"
min_total_fen = 50000
window_days = 7
coupon = "pct-10"

[[triggers]]
id = "come-back"
on = "win_back"
dormant_days = 60
coupon = "coffee"
budget = 1

[[triggers]]
id = "try-hotel"
on = "first_format"
formats = ["hotel"]
coupon = "coffee"

[[triggers]]
id = "gold-welcome"
on = "tier_upgrade"
to_tiers = ["gold"]
coupon = "pct-10"

[[triggers]]
id = "birthday"
on = "birthday_month"
coupon = "coffee"
tags = ["vip"]

[[triggers]]
id = "after-parking"
on = "parking_exit"
coupon = "park-2h"
"#
);

const MON: &str = "2026-11-23T09:00:00+08:00";

fn rules() -> RuleSet {
    RuleSet::from_toml(RULES, "c.toml").unwrap()
}

fn pay(id: &str, member: &str, bu: &str, category: &str, amount: i64, at: &str) -> Value {
    json!({"event_id": id, "type": "payment", "occurred_at": at, "member_id": member, "bu_id": bu,
           "merchant_id": "shop", "category": category, "amount_fen": amount, "channel": "wechat"})
}

fn with_coupons(mut v: Value, ids: &[&str]) -> Value {
    v["coupon_ids"] = json!(ids);
    v
}

fn member_ev(id: &str, member: &str, kind: &str, at: &str) -> Value {
    json!({"event_id": id, "type": kind, "occurred_at": at, "member_id": member})
}

fn run_with(r: &RuleSet, evs: &[Value], stored: StoredMembers) -> BatchResult {
    let events: Vec<_> = evs.iter().map(|v| parse_event(v.to_string().as_bytes())).collect();
    let n = events.len();
    evaluate_batch(r, &events, &vec![false; n], &vec![None; n], &stored, 7)
}

fn state_of(res: &BatchResult, member: &str) -> MemberState {
    let m = res.members.iter().find(|m| m.member_id == member).unwrap();
    serde_json::from_str(&m.state_json).unwrap()
}

fn stored(member: &str, state: &MemberState) -> StoredMembers {
    let mut s = StoredMembers::default();
    s.members.insert(member.into(), (1, Some(state.to_json())));
    s
}

/// The coupon rows of event `i`: (kind, trigger or template, reason).
fn coupon_rows(res: &BatchResult, i: usize) -> Vec<(String, String, String)> {
    let Outcome::Apply(a) = &res.outcomes[i] else { panic!("event {i} not applied: {:?}", res.outcomes[i]) };
    let rows: Vec<Value> = serde_json::from_str(&a.rows_json).unwrap();
    rows.iter()
        .filter(|r| r["table"] == "coupon_events")
        .map(|r| {
            let what = if r["trigger"].as_str().unwrap_or("").is_empty() { &r["coupon_id"] } else { &r["trigger"] };
            (r["kind"].as_str().unwrap().into(), what.as_str().unwrap().into(), r["reason"].as_str().unwrap_or("").into())
        })
        .collect()
}

fn issued(res: &BatchResult, i: usize) -> Vec<String> {
    coupon_rows(res, i).into_iter().filter(|r| r.0 == "issued").map(|r| r.1).collect()
}

#[test]
fn each_trigger_kind_fires_on_its_event() {
    let r = rules();
    // Registration: welcome. A first payment in the mall: nothing (not "another" format).
    let res = run_with(&r, &[member_ev("reg", "m1", "register", MON), pay("p1", "m1", "mall", "food", 5_000, MON)], StoredMembers::default());
    assert_eq!(issued(&res, 0), ["welcome"]);
    assert!(issued(&res, 1).is_empty());
    let s = state_of(&res, "m1");
    // First visit to the hotel: try-hotel. 100,000 fen in one payment: big-spender, and the
    // week's total crosses 500 yuan: weekly-500. 1,000+ points: gold -> gold-welcome.
    let res = run_with(&r, &[pay("p2", "m1", "hotel", "room", 100_000, MON)], stored("m1", &s));
    let mut got = issued(&res, 0);
    got.sort();
    assert_eq!(got, ["big-spender", "gold-welcome", "try-hotel", "weekly-500"]);
    let s = state_of(&res, "m1");
    // 70 days later: win-back (budget 1: a second dormant member gets nothing).
    let later = "2026-02-01T10:00:00+08:00".replace("2026-02", "2027-02");
    let res = run_with(&r, &[pay("p3", "m1", "mall", "food", 1_000, &later)], stored("m1", &s));
    assert!(issued(&res, 0).contains(&"come-back".to_string()));
    // Parking exit.
    let res = run_with(&r, &[member_ev("exit-1", "m2", "parking_exit", MON)], StoredMembers::default());
    assert_eq!(issued(&res, 0), ["after-parking"]);
}

#[test]
fn birthday_month_needs_the_tag_and_fires_once_a_year() {
    let r = rules();
    let mut s = MemberState { birthday: Some("11-02".into()), ..Default::default() };
    let res = run_with(&r, &[member_ev("si", "m1", "sign_in", MON)], stored("m1", &s));
    assert!(issued(&res, 0).is_empty(), "no vip tag");
    s.tags = vec!["vip".into()];
    let evs = [member_ev("si1", "m1", "sign_in", MON), member_ev("si2", "m1", "sign_in", "2026-11-24T09:00:00+08:00")];
    let res = run_with(&r, &evs, stored("m1", &s));
    assert_eq!(issued(&res, 0), ["birthday"]);
    assert!(issued(&res, 1).is_empty());
}

#[test]
fn caps_limits_stock_and_budgets_hold_under_a_burst() {
    let r = rules();
    // big-spender: at most 1 per member per 30 days, whatever the burst.
    let evs: Vec<Value> = (0..5).map(|i| pay(&format!("b{i}"), "m1", "mall", "food", 200_000, MON)).collect();
    let res = run_with(&r, &evs, StoredMembers::default());
    let n: usize = (0..5).map(|i| issued(&res, i).iter().filter(|t| *t == "big-spender").count()).sum();
    assert_eq!(n, 1);
    // The coffee template's stock is 2 across all members: the 3rd hotel first-timer gets none.
    let mut evs = Vec::new();
    for m in ["a", "b", "c"] {
        evs.push(pay(&format!("{m}-0"), m, "mall", "food", 100, MON));
        evs.push(pay(&format!("{m}-1"), m, "hotel", "room", 100, MON));
    }
    let res = run_with(&r, &evs, StoredMembers::default());
    let coffees: usize = (0..6).map(|i| issued(&res, i).iter().filter(|t| *t == "try-hotel").count()).sum();
    assert_eq!(coffees, 2);
    // Budget consumption is reported for the atomic Lua step: stock:coffee twice.
    let stock: i64 = res
        .outcomes
        .iter()
        .filter_map(|o| if let Outcome::Apply(a) = o { Some(a) } else { None })
        .flat_map(|a| a.campaigns.iter())
        .filter(|(id, _)| id == "stock:coffee")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(stock, 2);
    // A stored budget already spent stops issuing.
    let mut st = StoredMembers::default();
    st.budget_spent.insert("stock:coffee".into(), 2);
    let res = run_with(&r, &[pay("d-0", "d", "mall", "food", 100, MON), pay("d-1", "d", "hotel", "room", 100, MON)], st);
    assert!(issued(&res, 1).is_empty());
}

#[test]
fn a_redelivered_event_issues_nothing_twice() {
    let r = rules();
    let res = run_with(&r, &[member_ev("reg", "m1", "register", MON), member_ev("reg", "m1", "register", MON)],
                       StoredMembers::default());
    assert_eq!(issued(&res, 0), ["welcome"]);
    assert!(matches!(res.outcomes[1], Outcome::Duplicate));
    // The coupon id is a function of event and trigger: the same after a restart.
    let again = run_with(&r, &[member_ev("reg", "m1", "register", MON)], StoredMembers::default());
    assert_eq!(state_of(&res, "m1").coupons[0].id, state_of(&again, "m1").coupons[0].id);
}

fn welcomed(member: &str) -> (RuleSet, MemberState, String) {
    let r = rules();
    let res = run_with(&r, &[member_ev(&format!("reg-{member}"), member, "register", MON)], StoredMembers::default());
    let s = state_of(&res, member);
    let id = s.coupons[0].id.clone();
    (r, s, id)
}

#[test]
fn redemption_validation_table() {
    let (r, s, id) = welcomed("m1");
    let (_, other, other_id) = welcomed("m2");
    let _ = other;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("ok", with_coupons(pay("t1", "m1", "mall", "food", 8_000, MON), &[&id]), ""),
        ("wrong owner", with_coupons(pay("t2", "m1", "mall", "food", 8_000, MON), &[&other_id]), "not this member's"),
        ("expired", with_coupons(pay("t3", "m1", "mall", "food", 8_000, "2027-01-01T10:00:00+08:00"), &[&id]),
         "has expired"),
        ("below threshold", with_coupons(pay("t4", "m1", "mall", "food", 7_999, MON), &[&id]), "needs a spend of 10000"),
        ("out of scope (BU)", with_coupons(pay("t5", "m1", "hotel", "food", 8_000, MON), &[&id]), "not valid at"),
        ("out of scope (category)", with_coupons(pay("t6", "m1", "mall", "tobacco", 8_000, MON), &[&id]),
         "not valid at"),
    ];
    for (name, ev, want) in cases {
        let res = run_with(&r, &[ev], stored("m1", &s));
        let rows = coupon_rows(&res, 0);
        let used = rows.iter().find(|r| r.0 == "redeemed" || r.0 == "refused").unwrap_or_else(|| panic!("{name}: {rows:?}"));
        if want.is_empty() {
            assert_eq!(used.0, "redeemed", "{name}");
        } else {
            assert_eq!(used.0, "refused", "{name}");
            assert!(used.2.contains(want), "{name}: {}", used.2);
        }
        // The payment itself always counts.
        assert!(matches!(res.outcomes[0], Outcome::Apply(_)), "{name}");
    }
    // Used twice: in one batch, and after the first use was stored.
    let evs = [
        with_coupons(pay("u1", "m1", "mall", "food", 8_000, MON), &[&id]),
        with_coupons(pay("u2", "m1", "mall", "food", 8_000, MON), &[&id]),
    ];
    let res = run_with(&r, &evs, stored("m1", &s));
    assert_eq!(coupon_rows(&res, 0)[0].0, "redeemed");
    assert!(coupon_rows(&res, 1)[0].2.contains("used already"));
}

#[test]
fn redemption_shares_cost_and_a_full_refund_gives_the_coupon_back() {
    let (r, s, id) = welcomed("m1");
    let p = with_coupons(pay("p", "m1", "mall", "food", 8_000, MON), &[&id]);
    let res = run_with(&r, std::slice::from_ref(&p), stored("m1", &s));
    let Outcome::Apply(a) = &res.outcomes[0] else { panic!() };
    let rows: Vec<Value> = serde_json::from_str(&a.rows_json).unwrap();
    let red = rows.iter().find(|r| r["kind"] == "redeemed").unwrap();
    assert_eq!((red["discount_fen"].as_i64(), red["merchant_share_fen"].as_i64(), red["issuer_share_fen"].as_i64()),
               (Some(2000), Some(800), Some(1200)));
    // The business unit pays the merchant the 60% of the discount the merchant does not bear.
    assert_eq!(red["settlement"], json!([{"account": "bu:mall", "amount_fen": -1200, "points": 0},
                                         {"account": "merchant:shop", "amount_fen": 1200, "points": 0}]));
    let s2 = state_of(&res, "m1");
    assert_eq!(s2.coupons[0].status, "used");
    // Half refunded: still used. Fully refunded: back in the wallet.
    let half = json!({"event_id": "r1", "type": "refund", "occurred_at": MON, "member_id": "m1", "bu_id": "mall",
                      "merchant_id": "shop", "category": "food", "amount_fen": 4_000, "channel": "wechat", "refund_of": "p"});
    let rest = json!({"event_id": "r2", "type": "refund", "occurred_at": MON, "member_id": "m1", "bu_id": "mall",
                      "merchant_id": "shop", "category": "food", "amount_fen": 4_000, "channel": "wechat", "refund_of": "p"});
    let res = run_with(&r, &[p, half, rest], stored("m1", &s));
    assert!(coupon_rows(&res, 1).is_empty());
    assert_eq!(coupon_rows(&res, 2)[0].0, "returned");
    let Outcome::Apply(a) = &res.outcomes[2] else { panic!() };
    let rows: Vec<Value> = serde_json::from_str(&a.rows_json).unwrap();
    let back = rows.iter().find(|r| r["kind"] == "returned").unwrap();
    assert_eq!(back["settlement"][0]["amount_fen"], 1200);
    assert_eq!(back["settlement"][1]["amount_fen"], -1200);
    assert_eq!(state_of(&res, "m1").coupons[0].status, "active");
}

#[test]
fn percent_off_is_computed_from_what_was_paid_and_capped() {
    let r = rules();
    let mut s = MemberState::default();
    let res = run_with(&r, &[pay("big", "m1", "mall", "food", 200_000, MON)], stored("m1", &s));
    s = state_of(&res, "m1");
    let pct = s.coupons.iter().find(|c| c.template == "pct-10").unwrap().id.clone();
    // 9,000 paid after 10% off: 1,000 off.
    let res = run_with(&r, &[with_coupons(pay("q", "m1", "mall", "food", 9_000, MON), &[&pct])], stored("m1", &s));
    let Outcome::Apply(a) = &res.outcomes[0] else { panic!() };
    let rows: Vec<Value> = serde_json::from_str(&a.rows_json).unwrap();
    assert_eq!(rows.iter().find(|r| r["kind"] == "redeemed").unwrap()["discount_fen"], 1_000);
    // 900,000 paid: 100,000 would be off, capped at 5,000.
    let res = run_with(&r, &[with_coupons(pay("q2", "m1", "mall", "food", 900_000, MON), &[&pct])], stored("m1", &s));
    let Outcome::Apply(a) = &res.outcomes[0] else { panic!() };
    let rows: Vec<Value> = serde_json::from_str(&a.rows_json).unwrap();
    assert_eq!(rows.iter().find(|r| r["kind"] == "redeemed").unwrap()["discount_fen"], 5_000);
}

#[test]
fn expired_coupons_are_marked_by_the_wallet_check() {
    let (r, s, _) = welcomed("m1");
    let res = run_with(&r, &[member_ev("wc", "m1", "wallet_check", "2027-01-01T00:00:00+08:00")], stored("m1", &s));
    assert_eq!(coupon_rows(&res, 0)[0].0, "expired");
    assert_eq!(state_of(&res, "m1").coupons[0].status, "expired");
    // The wallet check is scheduled for the coupon's end.
    assert_eq!(crate::wallet::next_check_ms(&r, &s), Some(s.coupons[0].valid_until_ms));
}

#[test]
fn rules_errors_name_the_coupon_field() {
    for (bad, field) in [
        (r#"kind = "percent_off""#, "percent_off"),
        (r#"kind = "voucher""#, "kind"),
    ] {
        let text = RULES.replacen(r#"kind = "amount_off""#, bad, 1);
        let e = RuleSet::from_toml(&text, "c.toml").unwrap_err();
        assert!(e.field().contains(field), "{bad}: {}", e.field());
    }
    let text = RULES.replacen(r#"coupon = "welcome-20""#, r#"coupon = "nope""#, 1);
    assert!(RuleSet::from_toml(&text, "c.toml").unwrap_err().field().contains("triggers[0].coupon"));
    let text = RULES.replacen(r#"on = "register""#, r#"on = "lunar_new_year""#, 1);
    assert!(RuleSet::from_toml(&text, "c.toml").unwrap_err().field().contains("triggers[0].on"));
}

#[test]
fn a_parking_coupon_pays_for_minutes_at_the_exit_once() {
    let r = rules();
    let res = run_with(&r, &[member_ev("exit-0", "m1", "parking_exit", MON)], StoredMembers::default());
    let s = state_of(&res, "m1");
    let park = r.car_parks.get("park").unwrap();
    let entry = crate::time::parse_instant_ms(MON).unwrap();
    let exit = entry + 180 * 60_000; // 3 hours: 3 started hours = 3,000 fen without the coupon
    let mut st = s.clone();
    let (fee, rows) = crate::parking::settle_exit(&r, park, "exit-1", Some("m1"), Some(&mut st), entry, exit, 0, false);
    assert_eq!(fee.fee_fen, 1_000); // 180 - 120 minutes: one started hour
    assert!(fee.deductions.iter().any(|d| d.rule == "coupon" && d.minutes == 120));
    let rows: Vec<Value> = serde_json::from_str(&rows.expect("the coupon's row")).unwrap();
    assert_eq!(rows[0]["kind"], "redeemed");
    assert_eq!(st.coupons[0].status, "used");
    // Used: the next exit pays in full. A free short stay does not spend a coupon.
    let (fee, _) = crate::parking::settle_exit(&r, park, "exit-2", Some("m1"), Some(&mut st), entry, exit, 0, false);
    assert_eq!(fee.fee_fen, 3_000);
    let mut fresh = s.clone();
    let (fee, rows) =
        crate::parking::settle_exit(&r, park, "exit-3", Some("m1"), Some(&mut fresh), entry, entry + 10 * 60_000, 0, false);
    assert_eq!((fee.fee_fen, rows), (0, None));
    assert_eq!(fresh.coupons[0].status, "active");
}

#[test]
fn computed_segment_tags_drive_tag_filters() {
    let r = rules();
    let s = MemberState { birthday: Some("11-02".into()), ..Default::default() };
    let seg = json!({"event_id": "seg-1", "type": "segments", "occurred_at": "2026-10-01T09:00:00+08:00",
                     "member_id": "m1", "tags": ["vip", "foodie"], "segment": "champions"});
    let res = run_with(&r, &[seg, member_ev("si", "m1", "sign_in", MON)], stored("m1", &s));
    let st = state_of(&res, "m1");
    assert_eq!((st.segment_tags.clone(), st.segment.clone()), (vec!["vip".to_string(), "foodie".into()], Some("champions".into())));
    assert!(st.tags.is_empty(), "the member's own tags are untouched");
    assert_eq!(issued(&res, 1), ["birthday"], "the vip filter saw the computed tag");
    assert!(parse_event(json!({"event_id": "s", "type": "segments", "occurred_at": MON, "member_id": "m1"})
        .to_string().as_bytes()).is_err(), "a segments event names its segment");
}

#[test]
fn coupon_scope_takes_the_merchants_configured_category_not_the_tills() {
    // welcome-20 is for food and fashion at the mall; the noodle bar is configured as f&b.
    let text = format!("{RULES}\n[[merchants]]\nid = \"noodles\"\nbu = \"mall\"\ncategory = \"fnb\"\n");
    let r = RuleSet::from_toml(&text, "c.toml").unwrap();
    let res = run_with(&r, &[member_ev("reg", "m1", "register", MON)], StoredMembers::default());
    let s = state_of(&res, "m1");
    let coupon = s.coupons[0].id.clone();
    let mut at_noodles = pay("p1", "m1", "mall", "fashion", 20_000, MON); // the till says fashion
    at_noodles["merchant_id"] = json!("noodles");
    let res = run_with(&r, &[with_coupons(at_noodles, &[&coupon])], stored("m1", &s));
    let rows = coupon_rows(&res, 0);
    assert!(rows.iter().any(|(kind, id, reason)| kind == "refused" && *id == coupon && reason.contains("noodles / fnb")),
            "{rows:?}");
    assert_eq!(state_of(&res, "m1").coupons[0].status, "active", "the coupon is still the member's");
    // At a shop the rules do not configure, the till's category counts.
    let res = run_with(&r, &[with_coupons(pay("p2", "m1", "mall", "fashion", 20_000, MON), &[&coupon])], stored("m1", &s));
    assert!(coupon_rows(&res, 0).iter().any(|(kind, _, _)| kind == "redeemed"), "{:?}", coupon_rows(&res, 0));
}

#[test]
fn an_audience_grant_issues_once_per_member_and_send_within_stock() {
    let r = rules();
    let grant = |id: &str, member: &str, template: &str, send: &str| {
        json!({"event_id": id, "type": "coupon_grant", "occurred_at": MON, "member_id": member,
               "template": template, "send_id": send})
    };
    let res = run_with(&r, &[grant("g1", "m1", "pct-10", "s1"), grant("g1b", "m1", "pct-10", "s1"),
                             grant("g2", "m1", "pct-10", "s2")], StoredMembers::default());
    assert_eq!(issued(&res, 0), ["audience:s1"]);
    assert!(issued(&res, 1).is_empty(), "the same send reaches a member once, whatever the event id");
    assert_eq!(issued(&res, 2), ["audience:s2"], "another send is another coupon");
    let s = state_of(&res, "m1");
    assert_eq!(s.coupons.iter().filter(|c| c.trigger.starts_with("audience:")).count(), 2);
    // Stock 2 of "coffee": the third member gets none; an unknown template gives nothing.
    let res = run_with(&r, &[grant("c1", "a", "coffee", "s3"), grant("c2", "b", "coffee", "s3"),
                             grant("c3", "c", "coffee", "s3"), grant("x", "d", "no-such", "s3")],
                       StoredMembers::default());
    let got: Vec<usize> = (0..4).map(|i| issued(&res, i).len()).collect();
    assert_eq!(got, [1, 1, 0, 0]);
    // A send id is required.
    assert!(parse_event(json!({"event_id": "y", "type": "coupon_grant", "occurred_at": MON,
                               "member_id": "m", "template": "coffee"}).to_string().as_bytes()).is_err());
}

const CAMPAIGNS: &str = r#"
[frequency_cap]
pushes = 2
days = 7

[audiences.dormant]
dormant_days = 90

[[scheduled_campaigns]]
id = "win-back"
every = "day"
at = "10:00"
coupon = "pct-10"
audience_id = "dormant"

[[scheduled_campaigns]]
id = "birthday"
every = "month"
day = 1
at = "09:00"
coupon = "park-2h"
audience = { birthday_month = true }

[[scheduled_campaigns]]
id = "double-day"
every = "once"
at = "2026-11-28T09:00:00+08:00"
notice = "Double points today"
capped = false

[[campaigns]]
id = "double-for-reached"
multiplier_pct = 200
dates = ["2026-11-28"]
enrolled_by = "double-day"

[[scheduled_campaigns]]
id = "expiring"
every = "week"
weekday = "mon"
at = "09:30"
notice = "Your points expire soon"
audience = { points_expiring_within_days = 7 }
"#;

fn campaign_rules() -> RuleSet {
    RuleSet::from_toml(&format!("{RULES}{CAMPAIGNS}"), "c.toml").unwrap()
}

fn push(id: &str, member: &str, campaign: &str, run: &str, at: &str) -> Value {
    json!({"event_id": id, "type": "campaign_push", "occurred_at": at, "member_id": member,
           "campaign": campaign, "run": run})
}

/// The explanation of event `i`'s first ledger row: (rule, id).
fn explained(res: &BatchResult, i: usize) -> Vec<(String, String)> {
    let Outcome::Apply(a) = &res.outcomes[i] else { panic!("event {i} not applied: {:?}", res.outcomes[i]) };
    let rows: Vec<Value> = serde_json::from_str(&a.rows_json).unwrap();
    rows[0]["explain"].as_array().unwrap().iter()
        .map(|p| (p["rule"].as_str().unwrap().into(), p["id"].as_str().unwrap_or("").into()))
        .collect()
}

#[test]
fn a_win_back_reaches_a_dormant_member_once_per_dormancy() {
    let r = campaign_rules();
    // Paid on 2026-08-20, then nothing: dormant 95 days on 2026-11-23.
    let res = run_with(&r, &[pay("p0", "m1", "mall", "food", 5_000, "2026-08-20T12:00:00+08:00")],
                       StoredMembers::default());
    let s = state_of(&res, "m1");
    let res = run_with(&r, &[push("wb-1", "m1", "win-back", "202611231000", MON),
                             push("wb-2", "m1", "win-back", "202611241000", "2026-11-24T10:00:00+08:00")],
                       stored("m1", &s));
    assert_eq!(issued(&res, 0), ["campaign:win-back:202611231000"]);
    assert_eq!(explained(&res, 0), [("campaign_coupon".to_string(), "win-back:202611231000".to_string())]);
    assert!(issued(&res, 1).is_empty(), "the next day's run does not reach the member again");
    assert_eq!(explained(&res, 1)[0].1, "win-back:202611241000:reached_this_dormancy");
    let s = state_of(&res, "m1");
    assert_eq!(s.campaigns_reached.get("win-back").copied(), Some(1_795_395_600_000));
    // The member pays, then goes dormant again: the campaign may win them back again.
    let res = run_with(&r, &[pay("p1", "m1", "mall", "food", 5_000, "2026-11-25T12:00:00+08:00"),
                             push("wb-3", "m1", "win-back", "202612011000", "2026-12-01T10:00:00+08:00"),
                             push("wb-4", "m1", "win-back", "202703011000", "2027-03-01T10:00:00+08:00")],
                       stored("m1", &s));
    assert_eq!(explained(&res, 1)[0].1, "win-back:202612011000:paid_since", "a member who paid meanwhile");
    assert_eq!(issued(&res, 2), ["campaign:win-back:202703011000"], "dormant 96 days again");
}

#[test]
fn the_frequency_cap_holds_campaigns_and_triggers_alike() {
    let r = campaign_rules();
    let mut s = MemberState { birthday: Some("11-30".into()), ..MemberState::default() };
    s.lots.push([2026 * 12 + 10, 100]);
    let res = run_with(&r, &[
        push("b-1", "m1", "birthday", "202611010900", MON),
        push("x-1", "m1", "expiring", "202611230930", "2026-11-23T09:30:00+08:00"),
        // Third within 7 days: held, whether a campaign or a trigger.
        push("b-2", "m1", "birthday", "202611240900", "2026-11-24T09:00:00+08:00"),
        pay("p1", "m1", "mall", "food", 150_000, "2026-11-24T12:00:00+08:00"),
        // A week after the first push, one fits again.
        pay("p2", "m1", "mall", "food", 150_000, "2026-11-30T12:00:00+08:00"),
    ], stored("m1", &s));
    assert_eq!(issued(&res, 0), ["campaign:birthday:202611010900"]);
    let Outcome::Apply(a) = &res.outcomes[1] else { panic!() };
    let n: Value = serde_json::from_str(a.notice.as_ref().expect("the campaign's notice")).unwrap();
    assert_eq!((n["kind"].as_str(), n["message"].as_str()), (Some("campaign_notice"), Some("Your points expire soon")));
    assert_eq!(n["push_id"], "campaign:expiring:202611230930:m1");
    assert!(issued(&res, 1).is_empty(), "a notice is not an expiry reminder: no points_expiring trigger");
    assert_eq!(explained(&res, 2)[0].1, "birthday:202611240900:frequency_cap");
    assert!(issued(&res, 3).is_empty(), "the big-spender trigger is held by the cap too");
    assert_eq!(issued(&res, 4), ["big-spender"], "a week on, the cap lets one through");
    assert_eq!(state_of(&res, "m1").pushes_at, [1_796_011_200_000], "only the window's pushes are kept");
}

#[test]
fn campaign_pushes_of_campaigns_not_in_the_rules_give_nothing() {
    let r = campaign_rules();
    let res = run_with(&r, &[push("z", "m1", "gone", "1", MON)], StoredMembers::default());
    assert_eq!(explained(&res, 0)[0].1, "gone:1:not_in_rules");
    assert!(parse_event(json!({"event_id": "y", "type": "campaign_push", "occurred_at": MON,
                               "member_id": "m", "campaign": "win-back"}).to_string().as_bytes()).is_err(),
            "a run is required");
}

#[test]
fn scheduled_campaign_rules_errors_name_their_field() {
    for (bad, good, field) in [
        (r#"at = "25:00""#, r#"at = "10:00""#, "scheduled_campaigns[0].at"),
        (r#"every = "fortnight""#, r#"every = "day""#, "scheduled_campaigns[0].every"),
        (r#"coupon = "nope""#, r#"coupon = "pct-10""#, "scheduled_campaigns[0].coupon"),
        (r#"audience = { birthday_month = true, shoe_size = 3 }"#, r#"audience = { birthday_month = true }"#, "scheduled_campaigns"),
        (r#"audience_id = "sleepy""#, r#"audience_id = "dormant""#, "scheduled_campaigns[0].audience_id"),
        ("dormant_days = 0", "dormant_days = 90", "audiences.dormant.dormant_days"),
        (r#"day = 31"#, r#"day = 1"#, "scheduled_campaigns[1].day"),
        (r#"weekday = "someday""#, r#"weekday = "mon""#, "scheduled_campaigns[3].weekday"),
        (r#"pushes = 0"#, r#"pushes = 2"#, "frequency_cap.pushes"),
        (r#"enrolled_by = "nobody""#, r#"enrolled_by = "double-day""#, "campaigns[0].enrolled_by"),
    ] {
        let text = format!("{RULES}{}", CAMPAIGNS.replacen(good, bad, 1));
        let e = RuleSet::from_toml(&text, "c.toml").unwrap_err();
        assert!(e.field().contains(field), "{bad}: {} ({e:?})", e.field());
    }
    let both = CAMPAIGNS.replacen(r#"coupon = "pct-10""#, "coupon = \"pct-10\"\nnotice = \"hi\"", 1);
    assert!(RuleSet::from_toml(&format!("{RULES}{both}"), "c.toml").is_err(), "coupon and notice both");
}

#[test]
fn a_campaign_window_for_an_audience_gives_only_the_members_reached() {
    let r = campaign_rules();
    let sat = "2026-11-28T12:00:00+08:00";
    let res = run_with(&r, &[push("d-1", "m1", "double-day", "202611280900", "2026-11-28T09:00:00+08:00"),
                             pay("p1", "m1", "mall", "food", 10_000, sat),
                             pay("p2", "m2", "mall", "food", 10_000, sat),
                             pay("p3", "m1", "mall", "food", 10_000, "2026-11-29T12:00:00+08:00")],
                       StoredMembers::default());
    let points = |i: usize| match &res.outcomes[i] { Outcome::Apply(a) => a.points, o => panic!("{o:?}") };
    assert_eq!(points(1), 2 * points(2), "the member reached earns double that day");
    assert!(explained(&res, 1).iter().any(|(rule, id)| rule == "campaign" && id == "double-for-reached"));
    assert_eq!(points(3), points(2), "and not the next day");
}
