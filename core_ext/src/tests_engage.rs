//! Engagement operations over several days (which the HTTP tests cannot wait for):
//! sign-in cycles, make-up days and contracts; the draw-to-prize mapping, stock and
//! limits of games; partner exchange returns; stored value limits; burn-side
//! promotions on where points were earned; and rebuild over the new row kinds.

use crate::engage::{apply, Context};
use crate::rebuild::{rebuild_member, StoredRow};
use crate::rules::RuleSet;
use crate::state::MemberState;
use crate::time::DAY_MS;
use crate::wallet;
use serde_json::{json, Value};

const RULES: &str = concat!(
    r#"
version = "eng-1"
utc_offset_minutes = 0
"#,
    include_str!("../../tests/fixtures/rules/mall.toml"),
    include_str!("../../tests/fixtures/rules/hotel.toml"),
    include_str!("../../tests/fixtures/rules/normal_tier.toml"),
    r#"[[coupon_templates]]
id = "tpl"
kind = "amount_off"
amount_off_fen = 500
valid_days = 10
[[games]]
id = "wheel"
kind = "wheel"
cost_points = 10
daily_limit = 3
[[games.prizes]]
id = "pts"
odds_ppm = 200000
points = 50
[[games.prizes]]
id = "cpn"
odds_ppm = 150000
stock = 2
coupon = "tpl"
[[sign_in_plans]]
id = "week"
cycle_days = 7
rewards = [5, 10, 15, 20, 25, 30, 100]
makeup_cost_points = 20
makeup_max_per_cycle = 1
contract_min_stake = 50
contract_max_stake = 500
contract_bonus_pct = 50
[[burn_promotions]]
id = "hotel-double"
kinds = ["cash_offset"]
bus = ["mall"]
value_pct = 200
earned_bus = ["hotel"]
earned_within_days = 7
funded_by = "hotel"
[[partners]]
id = "air"
kind = "airline"
points_per_unit_out = 10
unit_value_fen = 8
daily_limit_points = 1000
answer_wait_s = 3600
[stored_value]
max_balance_fen = 100000
max_topup_fen = 50000
"#
);

/// 2026-11-02 00:00 UTC (a Monday) plus `d` days and 10 hours.
fn day(d: i64) -> i64 {
    1_793_577_600_000 + d * DAY_MS + 10 * 3_600_000
}

fn rules() -> RuleSet {
    RuleSet::from_toml(RULES, "eng.toml").expect("rules load")
}

fn with_points(points: i64) -> MemberState {
    let mut s = MemberState::default();
    wallet::credit(&mut s, points, 24_322, None);
    s
}

fn run(r: &RuleSet, op: &str, s: &mut MemberState, id: &str, body: Value, ctx: Context, now: i64) -> Result<Value, String> {
    apply(r, op, s, id, body.to_string().as_bytes(), &ctx, now)
        .map(|d| {
            let mut v: Value = serde_json::from_str(&d.result_json).unwrap();
            v["_points"] = json!(d.points);
            v["_rows"] = serde_json::from_str(&d.rows_json).unwrap();
            v["_consumed"] = json!(d.consumed);
            v
        })
        .map_err(|e| e.to_string())
}

fn sign(r: &RuleSet, s: &mut MemberState, d: i64) -> Result<Value, String> {
    run(r, "sign_in", s, &format!("si-{d}"), json!({"member_id": "m", "plan": "week"}), Context::default(), day(d))
}

#[test]
fn sign_in_rewards_escalate_with_the_days_kept_and_a_makeup_restores_the_chain() {
    let r = rules();
    let mut s = with_points(100);
    assert_eq!(sign(&r, &mut s, 0).unwrap()["points"], 5);
    assert_eq!(sign(&r, &mut s, 1).unwrap()["points"], 10);
    assert!(sign(&r, &mut s, 1).unwrap_err().contains("already signed in"));
    // Day 2 missed: day 3 starts over.
    assert_eq!(sign(&r, &mut s, 3).unwrap()["points"], 5);
    // Make up day 2 for 20 points; day 4 is then the 5th day in a row.
    let mk = json!({"member_id": "m", "plan": "week", "date": "2026-11-04"});
    let made = run(&r, "sign_in_makeup", &mut s, "mk-1", mk.clone(), Context::default(), day(3)).unwrap();
    assert_eq!(made["_points"], -20);
    assert!(run(&r, "sign_in_makeup", &mut s, "mk-2", mk, Context::default(), day(3)).unwrap_err().contains("signed in already"));
    let other = json!({"member_id": "m", "plan": "week", "date": "2026-11-03"});
    assert!(run(&r, "sign_in_makeup", &mut s, "mk-3", other, Context::default(), day(3)).is_err()); // signed, and max 1
    assert_eq!(sign(&r, &mut s, 4).unwrap()["streak"], 5);
    // A new cycle after 7 days starts at the first reward.
    assert_eq!(sign(&r, &mut s, 7).unwrap()["points"], 5);
    assert_eq!(s.wallet_total(), 100 + 5 + 10 + 5 - 20 + 25 + 5);
}

#[test]
fn a_kept_contract_pays_stake_and_bonus_a_missed_day_loses_it() {
    let r = rules();
    let mut s = with_points(1000);
    sign(&r, &mut s, 0).unwrap();
    let stake = json!({"member_id": "m", "plan": "week", "stake": 200});
    let c = run(&r, "sign_in_contract", &mut s, "ct-1", stake.clone(), Context::default(), day(0)).unwrap();
    assert_eq!(c["_points"], -200);
    assert!(run(&r, "sign_in_contract", &mut s, "ct-2", stake.clone(), Context::default(), day(0)).unwrap_err().contains("running"));
    let mut last = Value::Null;
    for d in 1..7 {
        last = sign(&r, &mut s, d).unwrap();
    }
    assert_eq!(last["contract"]["status"], "kept");
    assert_eq!(last["contract"]["paid"], 300);
    let after_won = s.wallet_total();

    // Another contract, a day missed: the next sign-in finds it lost, nothing paid.
    run(&r, "sign_in_contract", &mut s, "ct-3", stake, Context::default(), day(7)).unwrap();
    sign(&r, &mut s, 7).unwrap();
    let lost = sign(&r, &mut s, 9).unwrap();
    assert_eq!(lost["contract"]["status"], "lost");
    assert_eq!(s.wallet_total(), after_won - 200 + 5 + 5);
    assert!(s.plans["week"].contract.is_none());
}

fn play(r: &RuleSet, s: &mut MemberState, id: &str, draw: i64, spent: &[(&str, i64)], now: i64) -> Result<Value, String> {
    let ctx = Context { draw: Some(draw), spent: spent.iter().map(|(k, v)| (k.to_string(), *v)).collect(), original: None, ..Default::default() };
    run(r, "game_play", s, id, json!({"member_id": "m", "game": "wheel"}), ctx, now)
}

#[test]
fn a_draw_maps_to_its_prize_by_cumulative_odds_and_an_empty_stock_is_thanks() {
    let r = rules();
    let mut s = with_points(1000);
    let now = day(0);
    assert_eq!(play(&r, &mut s, "p1", 0, &[], now).unwrap()["prize"]["prize"], "pts");
    assert_eq!(play(&r, &mut s, "p2", 199_999, &[], now).unwrap()["prize"]["points"], 50);
    let c = play(&r, &mut s, "p3", 200_000, &[], now).unwrap();
    assert_eq!(c["prize"]["kind"], "coupon");
    assert_eq!(c["_consumed"], json!([["prize:wheel:cpn", 1]]));
    assert_eq!(s.coupons.len(), 1);
    assert!(play(&r, &mut s, "p4", 0, &[], now).unwrap_err().contains("daily limit"));
    let tomorrow = day(1);
    assert_eq!(play(&r, &mut s, "p5", 349_999, &[("prize:wheel:cpn", 2)], tomorrow).unwrap()["outcome"], "out_of_stock");
    let t = play(&r, &mut s, "p6", 350_000, &[], tomorrow).unwrap();
    assert_eq!(t["outcome"], "thanks");
    let rows = t["_rows"].as_array().unwrap();
    assert!(rows.iter().any(|x| x["table"] == "game_draws" && x["draw"] == 350_000 && x["outcome"] == "thanks"));
    assert_eq!(s.wallet_total(), 1000 - 5 * 10 + 2 * 50);
    // Refused plays change nothing.
    let mut poor = with_points(5);
    let before = poor.clone();
    assert!(play(&r, &mut poor, "p7", 0, &[], now).unwrap_err().contains("insufficient"));
    assert_eq!(poor, before);
    assert!(play(&r, &mut poor, "p8", 1_000_000, &[], now).unwrap_err().contains("draw"));
}

#[test]
fn a_failed_exchange_returns_the_very_lots_and_rebuild_agrees() {
    let r = rules();
    let mut s = MemberState::default();
    wallet::credit(&mut s, 300, 24_320, None);
    wallet::credit(&mut s, 700, 24_321, None);
    let lots_before = s.lots.clone();
    let out = json!({"member_id": "m", "partner": "air", "points": 500});
    let x = run(&r, "exchange_out", &mut s, "x1", out.clone(), Context::default(), day(0)).unwrap();
    assert_eq!((x["status"].as_str(), x["units"].as_i64()), (Some("pending"), Some(50)));
    assert_eq!(s.lots, vec![[24_321, 500]]);
    assert!(run(&r, "exchange_out", &mut s, "x2", json!({"member_id": "m", "partner": "air", "points": 600}),
                Context::default(), day(0)).unwrap_err().contains("daily limit"));
    let settle = json!({"member_id": "m", "exchange_id": "x1", "status": "failed"});
    let back = run(&r, "exchange_settle", &mut s, "x1:settle", settle.clone(), Context::default(), day(0)).unwrap();
    assert_eq!(back["points_returned"], 500);
    assert_eq!(s.lots, lots_before);
    assert!(run(&r, "exchange_settle", &mut s, "x1:settle2", settle, Context::default(), day(0)).is_err());
    // The daily limit counts only what stayed out.
    run(&r, "exchange_out", &mut s, "x3", json!({"member_id": "m", "partner": "air", "points": 1000}),
        Context::default(), day(0)).unwrap();

    let mut rows: Vec<Value> = vec![
        json!({"event_id": "e1", "kind": "earn", "points": 300, "amount_fen": 30000, "bu_id": "mall", "category": "",
               "occurred_at_ms": day(-60), "explain": []}),
        json!({"event_id": "e2", "kind": "earn", "points": 700, "amount_fen": 70000, "bu_id": "mall", "category": "",
               "occurred_at_ms": day(-30), "explain": []}),
    ];
    for (id, v) in [("x1", &x), ("x1:settle", &back)] {
        for row in v["_rows"].as_array().unwrap() {
            rows.push(json!({"event_id": id, "kind": row["kind"], "points": row["points"], "amount_fen": 0, "bu_id": "",
                             "category": "", "occurred_at_ms": day(0), "explain": [], "lots": row["lots"]}));
        }
    }
    let stored: Vec<StoredRow> = serde_json::from_value(Value::Array(rows)).unwrap();
    let rebuilt = rebuild_member(&r, &stored, day(0));
    assert_eq!(rebuilt.balance, 1000);
    assert_eq!(rebuilt.state.lots.iter().map(|l| l[1]).sum::<i64>(), 1000);
}

#[test]
fn an_exchange_the_partner_never_answers_is_failed_by_the_wallet_check_after_its_wait() {
    let r = rules();
    let mut s = MemberState::default();
    wallet::credit(&mut s, 300, 24_320, None);
    wallet::credit(&mut s, 700, 24_321, None);
    let lots_before = s.lots.clone();
    run(&r, "exchange_out", &mut s, "x1", json!({"member_id": "m", "partner": "air", "points": 500}),
        Context::default(), day(0))
    .unwrap();
    // The wallet check is due when the answer's wait runs out (3,600 s here).
    assert_eq!(wallet::next_check_ms(&r, &s), Some(day(0) + 3_600_000));
    let check = |at: i64| {
        let body = json!({"event_id": format!("wc-{at}"), "type": "wallet_check", "member_id": "m",
                          "occurred_at": crate::events::format_instant(at)});
        match crate::events::parse_event(body.to_string().as_bytes()).unwrap() {
            crate::events::Event::Member(m) => m,
            other => panic!("{other:?}"),
        }
    };
    let early = crate::behaviour::apply_member_event(&r, &check(day(0) + 3_599_000), &mut s, day(0)).unwrap();
    assert_eq!((early.points, s.exchanges.len()), (0, 1), "not yet");
    let due = crate::behaviour::apply_member_event(&r, &check(day(0) + 3_600_000), &mut s, day(0)).unwrap();
    assert_eq!(due.points, 500);
    assert!(s.exchanges.is_empty());
    assert_eq!(s.lots, lots_before, "the very lots back");
    let rows: Value = serde_json::from_str(&due.rows_json).unwrap();
    let row = &rows.as_array().unwrap()[0];
    assert_eq!((row["kind"].as_str(), row["points"].as_i64()), (Some("exchange_returned"), Some(500)));
    assert_eq!(row["explain"][0], json!({"rule": "partner_timeout", "id": "x1", "points": 500}));
    assert_eq!(row["lots"], json!([[24_320, 300], [24_321, 200]]));
    // The partner is owed nothing for it: the settlement lines cancel the exchange's.
    let owed: i64 = row["settlement"].as_array().unwrap().iter()
        .filter(|l| l["account"] == "partner:air").map(|l| l["amount_fen"].as_i64().unwrap()).sum();
    assert_eq!(owed, -400);
    // And the day's limit counts it no more.
    run(&r, "exchange_out", &mut s, "x2", json!({"member_id": "m", "partner": "air", "points": 1000}),
        Context::default(), day(0) + 3_700_000)
    .unwrap();
}

#[test]
fn stored_value_limits_and_refunds() {
    let r = rules();
    let mut s = MemberState::default();
    let top = |amount: i64| json!({"member_id": "m", "amount_fen": amount, "channel": "cash"});
    assert!(run(&r, "sv_topup", &mut s, "t0", top(60_000), Context::default(), day(0)).unwrap_err().contains("at most"));
    run(&r, "sv_topup", &mut s, "t1", top(50_000), Context::default(), day(0)).unwrap();
    run(&r, "sv_topup", &mut s, "t2", top(50_000), Context::default(), day(0)).unwrap();
    assert!(run(&r, "sv_topup", &mut s, "t3", top(1), Context::default(), day(0)).unwrap_err().contains("exceed"));
    let sale = json!({"member_id": "m", "amount_fen": 100_001, "bu_id": "mall", "merchant_id": "s", "category": "food"});
    assert!(run(&r, "sv_pay", &mut s, "p0", sale, Context::default(), day(0)).unwrap_err().contains("insufficient"));
    assert_eq!(s.sv_fen, 100_000);
    let refund = json!({"member_id": "m", "payment_id": "p1", "amount_fen": 700});
    let orig = crate::engage::Original { amount_fen: 1000, refunded_fen: 400, ..Default::default() };
    let ctx = Context { original: Some(orig), ..Context::default() };
    assert!(run(&r, "sv_refund", &mut s, "r1", refund, ctx, day(0)).unwrap_err().contains("exceeds"));
}

#[test]
fn points_earned_at_the_hotel_are_worth_double_in_the_mall_once() {
    use crate::engine::{evaluate_batch, Outcome, StoredMembers};
    let r = rules();
    let pay = |id: &str, bu: &str, amount: i64| {
        crate::events::parse_event(json!({"event_id": id, "type": "payment", "occurred_at": "2026-11-02T10:00:00Z",
            "member_id": "m", "bu_id": bu, "merchant_id": "s", "category": "food", "amount_fen": amount,
            "channel": "cash"}).to_string().as_bytes())
    };
    let events = vec![pay("h1", "hotel", 5000), pay("m1", "mall", 20000)];
    let out = evaluate_batch(&r, &events, &[false, false], &[None, None], &StoredMembers::default(), day(0));
    assert!(out.outcomes.iter().all(|o| matches!(o, Outcome::Apply(_))));
    let mut s = MemberState::from_json(Some(&out.members[0].state_json)).unwrap();
    assert_eq!(s.earned_recent.len(), 1); // only the hotel payment is kept for the promotion
    let req = crate::redemption::parse_request(br#"{"member_id":"m","bu_id":"mall","kind":"cash_offset","points":150}"#).unwrap();
    let first = crate::redemption::redeem(&r, &mut s, "r1", &req, day(1)).unwrap();
    assert_eq!(first.value_fen, 150 + 100); // the 100 hotel points count twice
    let second = crate::redemption::redeem(&r, &mut s, "r2", &req, day(1)).unwrap();
    assert_eq!(second.value_fen, 150);
    assert!(first.rows_json.contains("\"account\":\"bu:hotel\",\"amount_fen\":-100"));
}
