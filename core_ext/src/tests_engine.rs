//! Rule kinds and their combinations, through the batch entry point.

use crate::accrual::PaymentRecord;
use crate::engine::{evaluate_batch, BatchResult, Outcome, StoredMembers};
use crate::errors::CoreError;
use crate::events::parse_event;
use crate::rules::RuleSet;
use crate::state::MemberState;
use serde_json::{json, Value};

const RULES: &str = concat!(
    r#"
version = "t-2"
utc_offset_minutes = 480
"#,
    include_str!("../../tests/fixtures/rules/mall.toml"),
    include_str!("../../tests/fixtures/rules/hotel.toml"),
    include_str!("../../tests/fixtures/rules/normal_tier.toml"),
    r#"[caps]
per_transaction_points = 5000
per_member_daily_points = 8000
[[merchants]]
id = "gadgets"
bu = "mall"
category = "electronics"
points = 1
per_fen = 500
[[merchants]]
id = "cafe"
bu = "mall"
category = "food"
[[categories]]
id = "tobacco"
excluded = true
[[categories]]
id = "jewelry"
formats = ["mall"]
points = 1
per_fen = 200
[tier_policy]
window_months = 12
review_after_days = 30
[[tiers]]
id = "gold"
multiplier_pct = 150
qualify_points = 1000
birthday_multiplier_pct = 200
[[tiers]]
id = "diamond"
multiplier_pct = 200
qualify_points = 10000
[campaign_policy]
stacking = "STACKING"
[[campaigns]]
id = "weekend-food"
multiplier_pct = 200
weekdays = ["sat", "sun"]
categories = ["food"]
budget_points = 300
per_member_cap_points = 150
[[campaigns]]
id = "lunch-bonus"
bonus_points = 10
hours = [11, 14]
formats = ["mall"]
min_amount_fen = 2000
[[campaigns]]
id = "gold-window"
multiplier_pct = 300
tiers = ["gold"]
tags = ["vip"]
starts_at = "2026-11-23T10:00:00+08:00"
ends_at = "2026-11-23T12:00:00+08:00"
[behaviour]
registration_gift = 200
birthday_month_bonus = 500
[behaviour.sign_in]
points = 5
streak_bonuses = [{ days = 7, points = 50 }]
[behaviour.spend_streak]
days = 3
points = 100
min_amount_fen = 1000
[behaviour.monthly_task]
spend_fen = 100000
points = 1000
[behaviour.referral]
points = 300
max_per_month = 2
[behaviour.review]
points = 20
max_per_day = 1
"#
);

pub(crate) fn rules(stacking: &str) -> RuleSet {
    RuleSet::from_toml(&RULES.replace("STACKING", stacking), "t.toml").unwrap()
}

/// The test rules with more sections appended (a points mall...).
pub(crate) fn rules_with(extra: &str) -> Result<RuleSet, crate::errors::CoreError> {
    RuleSet::from_toml(&format!("{}\n{extra}", RULES.replace("STACKING", "best_of")), "t.toml")
}

/// A Monday, 09:00 local.
const MON: &str = "2026-11-23T09:00:00+08:00";
/// A Saturday, 12:30 local.
const SAT_NOON: &str = "2026-11-21T12:30:00+08:00";

fn pay(
    id: &str,
    member: &str,
    bu: &str,
    merchant: &str,
    category: &str,
    amount: i64,
    at: &str,
) -> Value {
    json!({"event_id": id, "type": "payment", "occurred_at": at, "member_id": member, "bu_id": bu,
           "merchant_id": merchant, "category": category, "amount_fen": amount, "channel": "wechat"})
}

fn refund(id: &str, member: &str, of: &str, amount: i64) -> Value {
    json!({"event_id": id, "type": "refund", "occurred_at": MON, "member_id": member, "bu_id": "mall",
           "merchant_id": "x", "category": "fashion", "amount_fen": amount, "channel": "wechat", "refund_of": of})
}

fn member_ev(id: &str, member: &str, kind: &str, at: &str) -> Value {
    json!({"event_id": id, "type": kind, "occurred_at": at, "member_id": member})
}

struct Run {
    result: BatchResult,
}

impl Run {
    fn points(&self) -> Vec<Option<i64>> {
        self.result
            .outcomes
            .iter()
            .map(|o| match o {
                Outcome::Apply(a) => Some(a.points),
                _ => None,
            })
            .collect()
    }

    fn explain(&self, i: usize) -> Vec<(String, String, i64)> {
        let Outcome::Apply(a) = &self.result.outcomes[i] else {
            panic!("not applied: {:?}", self.result.outcomes[i])
        };
        let rows: Value = serde_json::from_str(&a.rows_json).unwrap();
        rows[0]["explain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["rule"].as_str().unwrap().to_string(),
                    p["id"].as_str().unwrap_or("").to_string(),
                    p["points"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    fn rows(&self, i: usize) -> Value {
        let Outcome::Apply(a) = &self.result.outcomes[i] else {
            panic!()
        };
        serde_json::from_str(&a.rows_json).unwrap()
    }

    fn state(&self, member: &str) -> MemberState {
        let m = self
            .result
            .members
            .iter()
            .find(|m| m.member_id == member)
            .unwrap();
        serde_json::from_str(&m.state_json).unwrap()
    }

    fn rejected_field(&self, i: usize) -> String {
        match &self.result.outcomes[i] {
            Outcome::Rejected(e) | Outcome::Held(e) => e.field().to_string(),
            other => panic!("{other:?}"),
        }
    }
}

fn run_with(r: &RuleSet, evs: &[Value], stored: StoredMembers) -> Run {
    let events: Vec<_> = evs
        .iter()
        .map(|v| parse_event(v.to_string().as_bytes()))
        .collect();
    let n = events.len();
    Run {
        result: evaluate_batch(r, &events, &vec![false; n], &vec![None; n], &stored, 7),
    }
}

fn run(r: &RuleSet, evs: &[Value]) -> Run {
    run_with(r, evs, StoredMembers::default())
}

fn with_state(member: &str, state: MemberState) -> StoredMembers {
    let mut s = StoredMembers::default();
    s.members.insert(member.into(), (3, Some(state.to_json())));
    s
}

#[test]
fn rates_by_format_category_and_merchant() {
    let r = rules("best_of");
    let out = run(
        &r,
        &[
            pay("a", "m1", "mall", "x", "fashion", 12_399, MON),
            pay("b", "m2", "hotel", "x", "room", 50_050, MON),
            pay("c", "m3", "mall", "x", "tobacco", 10_000, MON),
            pay("d", "m4", "mall", "x", "jewelry", 10_000, MON),
            pay("e", "m5", "hotel", "x", "jewelry", 10_000, MON),
            // The merchant's rate (1 per 5 yuan) and category (electronics) win.
            pay("f", "m6", "mall", "gadgets", "fashion", 10_000, MON),
        ],
    );
    assert_eq!(
        out.points(),
        vec![
            Some(123),
            Some(1001),
            Some(0),
            Some(50),
            Some(200),
            Some(20)
        ]
    );
    assert_eq!(out.rows(5)[0]["category"], "electronics");
    assert_eq!(
        out.explain(2),
        vec![("excluded".into(), "tobacco".into(), 0)]
    );
}

#[test]
fn tier_multiplier_is_explained_and_rounds_down() {
    let r = rules("best_of");
    let state = MemberState {
        tier: Some("gold".into()),
        ..Default::default()
    };
    let out = run_with(
        &r,
        &[pay("a", "m1", "mall", "x", "fashion", 1_099, MON)],
        with_state("m1", state),
    );
    assert_eq!(out.points(), vec![Some(16)]);
    assert_eq!(
        out.explain(0),
        vec![
            ("base".into(), "".into(), 10),
            ("tier".into(), "gold".into(), 6)
        ]
    );
    assert_eq!(out.result.members[0].expected_seq, 3);
}

#[test]
fn birthday_month_doubles_for_gold_and_gives_the_bonus_once_a_year() {
    let r = rules("best_of");
    let state = MemberState {
        tier: Some("gold".into()),
        birthday: Some("11-02".into()),
        ..Default::default()
    };
    let out = run_with(
        &r,
        &[
            pay("a", "m1", "mall", "x", "fashion", 10_000, MON),
            pay("b", "m1", "mall", "x", "fashion", 10_000, MON),
        ],
        with_state("m1", state),
    );
    // base 100, tier +50, birthday x2 on 150 = +150, bonus 500 (first payment only)
    assert_eq!(out.points(), vec![Some(800), Some(300)]);
}

#[test]
fn campaigns_match_on_weekday_category_hours_and_stack_best_of() {
    let r = rules("best_of");
    let out = run(
        &r,
        &[
            pay("a", "m1", "mall", "cafe", "whatever", 5_000, SAT_NOON),
            pay("b", "m2", "mall", "x", "fashion", 5_000, SAT_NOON),
            pay("c", "m3", "mall", "cafe", "food", 5_000, MON),
        ],
    );
    // a: food on Saturday at lunch: weekend-food (+50) beats lunch-bonus (+10).
    assert_eq!(out.points(), vec![Some(100), Some(60), Some(50)]);
    assert_eq!(
        out.explain(0)[1],
        ("campaign".into(), "weekend-food".into(), 50)
    );
}

#[test]
fn stacking_add_and_multiply() {
    let evs = [pay("a", "m1", "mall", "cafe", "food", 5_000, SAT_NOON)];
    assert_eq!(run(&rules("add"), &evs).points(), vec![Some(110)]);
    // multiply: 50 -> x2 = 100; the bonus adds 10.
    assert_eq!(run(&rules("multiply"), &evs).points(), vec![Some(110)]);
}

#[test]
fn campaign_time_window_tier_and_tag_filters() {
    let r = rules("best_of");
    let gold_vip = MemberState {
        tier: Some("gold".into()),
        tags: vec!["vip".into()],
        ..Default::default()
    };
    let at = |h: &str| format!("2026-11-23T{h}:00+08:00");
    let evs = [
        pay("before", "m1", "mall", "x", "fashion", 1_000, &at("09:59")),
        pay("open", "m1", "mall", "x", "fashion", 1_000, &at("10:00")),
        pay("closed", "m1", "mall", "x", "fashion", 1_000, &at("12:00")),
    ];
    let out = run_with(&r, &evs, with_state("m1", gold_vip.clone()));
    // 10 base -> 15 at gold; the window adds 15 x 2 = 30 (lunch bonus needs 20 yuan).
    assert_eq!(out.points(), vec![Some(15), Some(45), Some(15)]);
    let not_vip = MemberState {
        tags: vec![],
        ..gold_vip
    };
    let out = run_with(&r, &evs[1..2], with_state("m1", not_vip));
    assert_eq!(out.points(), vec![Some(15)]);
}

#[test]
fn budget_and_member_cap_limit_and_are_consumed_once() {
    let r = rules("best_of");
    let mut stored = StoredMembers::default();
    stored.budget_spent.insert("weekend-food".into(), 200);
    let evs = [
        pay("a", "m1", "mall", "cafe", "food", 10_000, SAT_NOON), // wants 100, cap 150
        pay("b", "m1", "mall", "cafe", "food", 10_000, SAT_NOON), // cap left 50, budget left 0
        pay("c", "m2", "mall", "cafe", "food", 10_000, SAT_NOON),
    ];
    let out = run_with(&r, &evs, stored);
    // Budget left 100: a takes it all; b and c fall back to the lunch bonus (+10).
    assert_eq!(out.points(), vec![Some(200), Some(110), Some(110)]);
    let Outcome::Apply(a) = &out.result.outcomes[0] else {
        panic!()
    };
    assert_eq!(a.campaigns, vec![("weekend-food".to_string(), 100)]);
    assert_eq!(out.state("m1").campaigns.get("weekend-food"), Some(&100));
}

#[test]
fn per_transaction_and_daily_caps_cut_campaigns_first() {
    let r = rules("best_of");
    let evs = [
        pay("a", "m1", "hotel", "x", "room", 400_000, MON), // 8000 -> cap 5000
        pay("b", "m1", "hotel", "x", "room", 200_000, MON), // 4000, 3000 left today
        pay(
            "c",
            "m1",
            "hotel",
            "x",
            "room",
            200_000,
            "2026-11-24T09:00:00+08:00",
        ),
    ];
    let out = run(&r, &evs);
    let pts = out.points();
    // a: 8000 capped to 5000, plus the monthly task (1,000 yuan, not capped): 6000,
    // and gold from then on. b: 6000 at gold, capped to 5000, 3000 left today.
    // c: the next day, 6000 at gold, capped to 5000.
    assert_eq!(pts, vec![Some(6000), Some(3000), Some(5000)]);
    assert!(out
        .explain(0)
        .iter()
        .any(|p| p.0 == "cap" && p.1 == "cut 3000"));
    assert!(out
        .explain(1)
        .iter()
        .any(|p| p.0 == "daily_cap" && p.1 == "cut 2000"));
}

#[test]
fn spend_streak_and_monthly_task() {
    let r = rules("best_of");
    let day = |d: u32| format!("2026-11-{d:02}T10:00:00+08:00");
    let evs = [
        pay("a", "m1", "mall", "x", "fashion", 1_000, &day(2)),
        pay("b", "m1", "mall", "x", "fashion", 1_000, &day(3)),
        pay("c", "m1", "mall", "x", "fashion", 99_000, &day(4)),
        pay("d", "m1", "mall", "x", "fashion", 1_000, &day(5)),
    ];
    let out = run(&r, &evs);
    // c: third day in a row (+100) and 1,010 yuan this month (+1000), which also
    // qualifies for gold: d earns 1.5x.
    assert_eq!(out.points(), vec![Some(10), Some(10), Some(2090), Some(15)]);
}

#[test]
fn member_events_registration_sign_in_referral_review() {
    let r = rules("best_of");
    let day = |d: u32| format!("2026-11-{d:02}T08:00:00+08:00");
    let mut evs = vec![
        member_ev("reg", "m1", "register", &day(1)),
        member_ev("reg2", "m1", "register", &day(1)),
    ];
    for d in 1..=7 {
        evs.push(member_ev(&format!("s{d}"), "m1", "sign_in", &day(d)));
    }
    evs.push(member_ev("s7b", "m1", "sign_in", &day(7)));
    let mut refer = member_ev("r1", "m1", "referral", &day(8));
    refer["referred_member_id"] = json!("m9");
    for k in 0..3 {
        let mut e = refer.clone();
        e["event_id"] = json!(format!("r{k}"));
        evs.push(e);
    }
    evs.push(member_ev("v1", "m1", "review", &day(8)));
    evs.push(member_ev("v2", "m1", "review", &day(8)));
    let out = run(&r, &evs);
    let pts = out.points();
    assert_eq!(pts[..2], [Some(200), Some(0)]);
    assert_eq!(pts[2..8], [Some(5); 6]);
    assert_eq!(pts[8], Some(55)); // day 7 of the streak
    assert_eq!(pts[9], Some(0)); // second sign-in the same day
    assert_eq!(pts[10..13], [Some(300), Some(300), Some(0)]);
    assert_eq!(pts[13..], [Some(20), Some(0)]);
    assert_eq!(out.state("m1").sign_in_streak, 7);
}

#[test]
fn upgrade_on_the_payment_that_crosses_the_threshold() {
    let r = rules("best_of");
    let evs = [
        pay("a", "m1", "mall", "x", "fashion", 50_000, MON), // 500
        pay("b", "m1", "mall", "x", "fashion", 50_000, MON), // 500 + 100 task? no: task needs 1,000 yuan
        pay("c", "m1", "mall", "x", "fashion", 10_000, MON), // earned at gold
    ];
    let out = run(&r, &evs);
    // b brings the month to 1,000 yuan: +1000 task; window points 2000 >= 1000: gold.
    assert_eq!(out.points(), vec![Some(500), Some(1500), Some(150)]);
    let rows = out.rows(1);
    assert_eq!(rows[1]["kind"], "tier_change");
    assert_eq!(rows[1]["explain"][0]["id"], "normal->gold");
    let st = out.state("m1");
    assert_eq!(st.tier.as_deref(), Some("gold"));
    assert!(st.review_at_ms.is_some());
}

#[test]
fn review_downgrades_or_renews_and_override_wins_until_its_end() {
    let r = rules("best_of");
    let due = crate::time::parse_instant_ms(MON).unwrap() - 1;
    let gold = MemberState {
        tier: Some("gold".into()),
        review_at_ms: Some(due),
        ..Default::default()
    };
    let out = run_with(
        &r,
        &[member_ev("rv", "m1", "tier_review", MON)],
        with_state("m1", gold.clone()),
    );
    assert_eq!(out.rows(0)[0]["explain"][0]["id"], "gold->normal");
    assert_eq!(out.state("m1").tier, None);

    let month = crate::time::Local::of(due, 480).month_index as i64;
    let kept = MemberState {
        qual: vec![[month, 1500, 0]],
        ..gold.clone()
    };
    let out = run_with(
        &r,
        &[member_ev("rv", "m1", "tier_review", MON)],
        with_state("m1", kept),
    );
    assert_eq!(out.rows(0)[0]["explain"][0]["rule"], "renewal");

    let mut ov = member_ev("ov", "m2", "tier_override", MON);
    ov["tier"] = json!("diamond");
    ov["until"] = json!("2026-11-23T10:00:00+08:00");
    let evs = [
        ov,
        pay(
            "a",
            "m2",
            "mall",
            "x",
            "fashion",
            1_000,
            "2026-11-23T09:30:00+08:00",
        ),
        pay(
            "b",
            "m2",
            "mall",
            "x",
            "fashion",
            1_000,
            "2026-11-23T10:30:00+08:00",
        ),
    ];
    assert_eq!(run(&r, &evs).points(), vec![Some(0), Some(20), Some(10)]);
}

#[test]
fn refunds_claw_back_pro_rata_and_refuse_what_they_cannot() {
    let r = rules("best_of");
    let evs = [
        pay("p", "m1", "mall", "x", "fashion", 999, MON),
        refund("r1", "m1", "p", 333),
        refund("r2", "m1", "p", 333),
        refund("r3", "m1", "p", 333),
        refund("r4", "m1", "p", 1),
        refund("r5", "m1", "ghost", 1),
    ];
    let out = run(&r, &evs);
    assert_eq!(out.points()[..4], [Some(9), Some(-3), Some(-3), Some(-3)]);
    assert_eq!(out.rejected_field(4), "amount_fen");
    assert_eq!(out.rejected_field(5), "refund_of");

    let events: Vec<_> = [refund("r", "m1", "p", 5_000)]
        .iter()
        .map(|v| parse_event(v.to_string().as_bytes()))
        .collect();
    let orig = PaymentRecord {
        amount_fen: 10_000,
        points: 150,
        ..Default::default()
    };
    let res = evaluate_batch(
        &r,
        &events,
        &[false],
        &[Some(orig.into())],
        &StoredMembers::default(),
        0,
    );
    assert!(
        matches!(&res.outcomes[0], Outcome::Apply(a) if a.points == -75 && a.clawback_points == 75)
    );
}

#[test]
fn cumulative_refunds_apply_the_rest_in_any_order() {
    // Alipay reports refund_fee as the refunded total, and notifications may come out of order.
    let r = rules("best_of");
    let cum = |id: &str, total: i64| {
        let mut v = refund(id, "m1", "p", total);
        v["cumulative"] = json!(true);
        v
    };
    let evs = [
        pay("p", "m1", "mall", "x", "fashion", 999, MON),
        cum("r1", 300),
        cum("r3", 999),
        cum("r2", 600),
    ];
    let out = run(&r, &evs);
    // 300 refunded, then the rest (699); the total of 600 arriving late is covered already.
    assert_eq!(out.points()[..3], [Some(9), Some(-2), Some(-7)]);
    assert_eq!(out.rows(2)[0]["amount_fen"], json!(699));
    assert_eq!(out.rejected_field(3), "amount_fen");
    assert_eq!(
        run(&r, &[evs[0].clone(), cum("r4", 1_000)]).rejected_field(1),
        "amount_fen"
    );

    let in_order = [
        pay("p", "m1", "mall", "x", "fashion", 999, MON),
        cum("r1", 333),
        cum("r2", 666),
        cum("r3", 999),
    ];
    assert_eq!(
        run(&r, &in_order).points(),
        vec![Some(9), Some(-3), Some(-3), Some(-3)]
    );
}

#[test]
fn duplicates_guests_and_refused_events_change_no_state() {
    let r = rules("best_of");
    let mut guest = pay("g", "x", "mall", "x", "fashion", 1_000, MON);
    guest.as_object_mut().unwrap().remove("member_id");
    guest["payer"] = json!({"kind": "wechat", "id": "o-123"});
    let evs = [
        pay("a", "m1", "mall", "x", "fashion", 1_000, MON),
        pay("a", "m1", "mall", "x", "fashion", 1_000, MON),
        pay("z", "m1", "closed", "x", "fashion", 1_000, MON),
        guest,
    ];
    let out = run(&r, &evs);
    assert_eq!(out.result.outcomes[1], Outcome::Duplicate);
    assert_eq!(out.rejected_field(2), "bu_id");
    assert!(matches!(&out.result.outcomes[3], Outcome::Guest(f) if f.contains("o-123")));
    assert_eq!(out.state("m1").qual[0][2], 1_000);
    assert!(matches!(
        &out.result.outcomes[2],
        Outcome::Rejected(CoreError::Rejected { .. })
    ));
}

#[test]
fn deterministic() {
    let r = rules("add");
    let evs = [
        pay("a", "m1", "mall", "cafe", "food", 5_000, SAT_NOON),
        refund("r", "m1", "a", 10),
    ];
    let a = run(&r, &evs);
    let b = run(&r, &evs);
    assert_eq!(a.result.outcomes, b.result.outcomes);
    assert_eq!(a.result.members, b.result.members);
}

#[test]
fn rules_errors_name_file_line_and_field() {
    let err = |text: String| match RuleSet::from_toml(&text, "r.toml").unwrap_err() {
        CoreError::InvalidRules {
            line,
            field,
            reason,
            file,
        } => (file, line, field, reason),
        other => panic!("{other:?}"),
    };
    let base = RULES.replace("STACKING", "add");
    let spa = base.replace("format = \"hotel\"", "format = \"spa\"");
    let spa_line = spa.lines().position(|l| l == "format = \"spa\"").expect("the line") + 1;
    let (file, line, field, _) = err(spa);
    assert_eq!(
        (file.as_str(), line, field.as_str()),
        ("r.toml", spa_line, "business_units[1].format")
    );
    let (_, _, field, reason) =
        err(base.replace("weekdays = [\"sat\", \"sun\"]", "weekdays = [\"caturday\"]"));
    assert_eq!(field, "campaigns[0].weekdays");
    assert!(reason.contains("caturday"));
    let (_, _, field, _) = err(base.replace("tiers = [\"gold\"]", "tiers = [\"platinum\"]"));
    assert_eq!(field, "campaigns[2].tiers");
    let (_, _, field, _) = err(base.replace("qualify_points = 10000", "qualify_points = 10"));
    assert_eq!(field, "tiers[2]");
    let (_, _, field, reason) = err(base.replace("stacking = \"add\"", "stacking = \"sum\""));
    assert_eq!(field, "campaign_policy.stacking");
    assert!(reason.contains("unknown variant"), "{reason}");
}

#[test]
fn refused_events_change_no_state() {
    // The engine evaluates in place: every refusal must come before any change.
    let r = rules("add");
    let start = MemberState {
        tier: Some("gold".into()),
        tags: vec!["vip".into()],
        ..Default::default()
    };
    let mut bad_override = member_ev("ov", "m1", "tier_override", MON);
    bad_override["tier"] = json!("platinum");
    bad_override["until"] = json!("2027-01-01T00:00:00+08:00");
    let mut past_override = bad_override.clone();
    past_override["tier"] = json!("gold");
    past_override["until"] = json!("2020-01-01T00:00:00+08:00");
    let evs = [
        bad_override,
        past_override,
        refund("r1", "m1", "ghost", 10),
        pay("p", "m1", "closed", "x", "fashion", 10_000, MON),
        member_ev("s", "m1", "sign_in", MON), // applied: makes the member's state come back
    ];
    let out = run_with(&r, &evs, with_state("m1", start.clone()));
    for i in 0..4 {
        assert!(
            matches!(out.result.outcomes[i], Outcome::Rejected(_) | Outcome::Held(_)),
            "{i}"
        );
    }
    assert!(matches!(out.result.outcomes[2], Outcome::Held(_)), "a refund of an unknown payment waits");
    let after = out.state("m1");
    let expected = MemberState {
        sign_in_last_day: after.sign_in_last_day,
        sign_in_streak: 1,
        lots: after.lots.clone(),
        ..start
    };
    assert_eq!(after.lots.iter().map(|l| l[1]).sum::<i64>(), 5);
    assert_eq!(after, expected);
}

#[test]
fn points_used_at_the_till_are_spent_and_a_refund_gives_them_back_pro_rata() {
    let r = rules("add");
    let rich = MemberState {
        lots: vec![[24310, 1_000]],
        ..Default::default()
    };
    let mut p = pay("p", "m1", "mall", "x", "fashion", 10_000, MON);
    p["points_used"] = json!(400);
    let evs = [
        p,
        refund("r1", "m1", "p", 5_000),
        refund("r2", "m1", "p", 5_000),
    ];
    let out = run_with(&r, &evs, with_state("m1", rich));
    // Earns 100, uses 400; each half refund claws back 50 and gives 200 back.
    assert_eq!(out.points(), vec![Some(-300), Some(150), Some(150)]);
    let rows = out.rows(0);
    assert_eq!(rows[1]["kind"], "redeem");
    assert_eq!(rows[1]["lots"], json!([[24310, 400]]));
    let Outcome::Apply(a) = &out.result.outcomes[0] else {
        panic!()
    };
    assert_eq!((a.record_points, a.used_points), (100, 400));
    assert_eq!(out.rows(1)[1]["kind"], "return");
    let st = out.state("m1");
    assert_eq!(st.wallet_total(), 1_000);
}

#[test]
fn liability_by_expiry_month_sums_lots_pending_and_holds() {
    let mut r = rules("best_of");
    r.wallet.validity_months = Some(24);
    let m = 2026 * 12 + 10; // 2026-11
    let mut s = MemberState {
        lots: vec![[m, 100], [m + 1, 50]],
        ..Default::default()
    };
    s.pending.push(crate::state::Pending {
        event_id: "p".into(),
        release_at_ms: 0,
        points: 20,
        month: m + 1,
    });
    s.holds.insert(
        "h".into(),
        crate::state::Hold {
            points: 10,
            lots: vec![[m, 10]],
            expires_at_ms: 0,
        },
    );
    let other = MemberState {
        lots: vec![[m, 5]],
        neg: 3,
        ..Default::default()
    };
    let got = crate::wallet::liability_by_expiry(&r, &[s, other]);
    assert_eq!(
        got,
        vec![("2028-11".to_string(), 115), ("2028-12".to_string(), 70)]
    );
    r.wallet.validity_months = None;
    assert_eq!(
        crate::wallet::liability_by_expiry(
            &r,
            &[MemberState {
                lots: vec![[m, 7]],
                ..Default::default()
            }]
        ),
        vec![("never".to_string(), 7)]
    );
}

#[test]
fn manual_adjustments_add_take_from_the_oldest_lots_and_never_overdraw() {
    let r = rules("best_of");
    let adj = |id: &str, points: i64, reason: &str| {
        let mut e = member_ev(id, "m1", "adjustment", MON);
        e["points"] = json!(points);
        e["reason"] = json!(reason);
        e
    };
    let evs = [
        pay("p", "m1", "mall", "x", "fashion", 10_000, MON),
        adj("a1", 500, "goodwill: lost receipt"),
        adj("a2", -300, "duplicate manual credit"),
        adj("a3", -1_000_000, "too much"),
    ];
    let out = run(&r, &evs);
    assert_eq!(out.points()[1..3], [Some(500), Some(-300)]);
    assert_eq!(out.rejected_field(3), "points");
    let rows = out.rows(2);
    assert_eq!(rows[0]["kind"], "adjustment");
    assert_eq!(rows[0]["explain"][0]["id"], "duplicate manual credit");
    assert!(
        !rows[0]["lots"].as_array().unwrap().is_empty(),
        "the lots the points came from"
    );
    // A reason is required, the points must be a non-zero integer within bounds.
    for (field, bad) in [
        ("reason", adj("b1", 5, "")),
        ("points", adj("b2", 0, "zero")),
        ("points", adj("b3", 20_000_000, "huge")),
    ] {
        let err = crate::events::parse_event(bad.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.field(), field);
    }
}

/// Money and points per settlement account over the rows of the applied events.
fn books(runs: &[(&Run, usize)]) -> std::collections::BTreeMap<String, (i64, i64)> {
    let mut out = std::collections::BTreeMap::new();
    for (run, i) in runs {
        for row in run.rows(*i).as_array().unwrap() {
            for l in row["settlement"].as_array().into_iter().flatten() {
                let e = out.entry(l["account"].as_str().unwrap().to_string()).or_insert((0, 0));
                e.0 += l["amount_fen"].as_i64().unwrap();
                e.1 += l["points"].as_i64().unwrap();
            }
        }
    }
    out
}

fn settled_rules(commission_bp: i64) -> RuleSet {
    let toml = format!(
        "{}\n[settlement]\ndefault_commission_bp = {commission_bp}\ndefault_fund_fen_per_100 = 50\n",
        RULES.replace("STACKING", "best_of")
    );
    RuleSet::from_toml(&toml, "t.toml").unwrap()
}

#[test]
fn a_refund_books_where_its_payment_was_or_is_refused_naming_the_field() {
    let r = settled_rules(500);
    let named = |id: &str, bu: &str, merchant: &str, category: &str| {
        let mut v = refund(id, "m1", "p", 58_800);
        v["bu_id"] = json!(bu);
        v["merchant_id"] = json!(merchant);
        v["category"] = json!(category);
        v
    };
    let mut cafe_refund = refund("rc", "m1", "c", 1_000);
    cafe_refund["merchant_id"] = json!("cafe");
    cafe_refund["category"] = json!("fashion"); // the cafe's configured category wins, as for payments
    let evs = [
        pay("p", "m1", "hotel", "hotel-shop16", "rooms", 58_800, MON),
        named("r1", "mall", "hotel-shop16", "rooms"),
        named("r2", "hotel", "mall-shop0", "rooms"),
        named("r3", "hotel", "hotel-shop16", "fashion"),
        named("r4", "hotel", "hotel-shop16", "rooms"),
        pay("c", "m1", "mall", "cafe", "food", 1_000, MON),
        cafe_refund,
    ];
    let out = run(&r, &evs);
    for (i, field, named, booked) in
        [(1, "bu_id", "mall", "hotel"), (2, "merchant_id", "mall-shop0", "hotel-shop16"), (3, "category", "fashion", "rooms")]
    {
        let Outcome::Rejected(e) = &out.result.outcomes[i] else { panic!("{:?}", out.result.outcomes[i]) };
        assert_eq!(e.field(), field);
        assert!(e.reason().contains(&format!("{named:?}")) && e.reason().contains(&format!("{booked:?}")), "{e:?}");
    }
    let row = &out.rows(4)[0];
    assert_eq!((row["bu_id"].as_str(), row["format"].as_str(), row["merchant_id"].as_str()),
               (Some("hotel"), Some("hotel"), Some("hotel-shop16")));
    // The payment and its full refund cancel out on every account, in fen and in points.
    for (account, net) in books(&[(&out, 0), (&out, 4)]) {
        assert_eq!(net, (0, 0), "{account}");
    }
    assert_eq!(out.points()[0], Some(1_176));
    assert_eq!(out.points()[4], Some(-1_176));
    assert_eq!(out.rows(6)[0]["category"].as_str(), Some("food"));
    assert_eq!(out.points()[6], out.points()[5].map(|p| -p));
}

#[test]
fn a_refund_reverses_the_split_its_payment_booked_not_todays_contract() {
    // The payment books 5% commission; the contract then changes to 8%.
    let (before, after) = (settled_rules(500), settled_rules(800));
    let paid = run(&before, &[pay("p", "m1", "mall", "x", "fashion", 1_455, MON)]);
    let Outcome::Apply(a) = &paid.result.outcomes[0] else { panic!() };
    let original = crate::engine::Original {
        payment: PaymentRecord { amount_fen: 1_455, points: a.record_points, ..Default::default() },
        booking: a.booking.clone(),
    };
    let refunds = [refund("r1", "m1", "p", 455), refund("r2", "m1", "p", 1_000)];
    let events: Vec<_> = refunds.iter().map(|v| parse_event(v.to_string().as_bytes())).collect();
    let mut stored = StoredMembers::default();
    let state = paid.result.members[0].state_json.clone();
    stored.members.insert("m1".into(), (1, Some(state)));
    let refunded = Run {
        result: evaluate_batch(&after, &events, &[false, false], &[Some(original.clone()), Some(original)], &stored, 9),
    };
    for (account, net) in books(&[(&paid, 0), (&refunded, 0), (&refunded, 1)]) {
        assert_eq!(net, (0, 0), "{account}: two partial refunds reverse exactly what the payment booked");
    }
}

#[test]
fn a_refund_takes_back_from_its_payments_lot_and_its_days_spend() {
    let r = rules("best_of");
    let at = |d: &str| format!("{d}T09:00:00+08:00");
    let evs = [
        pay("sep", "m1", "mall", "x", "fashion", 40_000, &at("2026-09-07")),
        pay("oct", "m1", "mall", "x", "fashion", 20_000, &at("2026-10-05")),
        pay("nov", "m1", "mall", "x", "fashion", 30_000, &at("2026-11-23")),
    ];
    let paid = run(&r, &evs);
    assert_eq!(paid.points(), [Some(400), Some(200), Some(300)]);
    let month = |y: i64, m: i64| y * 12 + m - 1;
    assert_eq!(paid.state("m1").lots, vec![[month(2026, 9), 400], [month(2026, 10), 200], [month(2026, 11), 300]]);
    // December: the September payment is returned in full.
    let Outcome::Apply(a) = &paid.result.outcomes[0] else { panic!() };
    let original = crate::engine::Original {
        payment: PaymentRecord { amount_fen: 40_000, points: 400, ..Default::default() },
        booking: a.booking.clone(),
    };
    let mut back = refund("r-sep", "m1", "sep", 40_000);
    back["occurred_at"] = json!(at("2026-12-07"));
    let events = vec![parse_event(back.to_string().as_bytes())];
    let mut stored = StoredMembers::default();
    stored.members.insert("m1".into(), (3, Some(paid.result.members[0].state_json.clone())));
    let out = Run { result: evaluate_batch(&r, &events, &[false], &[Some(original)], &stored, 9) };
    assert_eq!(out.points(), [Some(-400)]);
    assert_eq!(out.state("m1").lots, vec![[month(2026, 10), 200], [month(2026, 11), 300]],
               "October's and November's points stay; September's lot is what the refund takes");

    // Bought 250 yuan and returned 100 the same day: the day's spend at the mall is 150.
    let day = [pay("p", "m2", "mall", "x", "fashion", 25_000, MON), {
        let mut v = refund("r", "m2", "p", 10_000);
        v["member_id"] = json!("m2");
        v
    }];
    let out = run(&r, &day);
    assert_eq!(out.state("m2").spend_by_bu.get("mall"), Some(&15_000));
}

#[test]
fn points_used_come_back_into_the_lots_they_came_from() {
    let mut r = rules("best_of");
    r.wallet.validity_months = Some(2);
    let month = |y: i64, m: i64| y * 12 + m - 1;
    // 2,000 September points (they expire at the end of November) and 500 of October.
    let rich = MemberState { lots: vec![[month(2026, 9), 2_000], [month(2026, 10), 500]], ..Default::default() };
    let mut p = pay("p", "m1", "mall", "x", "fashion", 30_000, MON);
    p["points_used"] = json!(2_300);
    let paid = run_with(&r, &[p], with_state("m1", rich));
    assert_eq!(paid.rows(0)[1]["lots"], json!([[month(2026, 9), 2_000], [month(2026, 10), 300]]));
    let Outcome::Apply(a) = &paid.result.outcomes[0] else { panic!() };
    let booking = a.booking.clone().unwrap();
    assert_eq!(booking.used_lots, vec![[month(2026, 9), 2_000], [month(2026, 10), 300]]);
    // Two refunds of half each: the first gives back the oldest lot's points first.
    let mut st = paid.state("m1");
    let mut original = PaymentRecord { amount_fen: 30_000, points: 300, used: 2_300, ..Default::default() };
    for (id, want_lots) in [
        ("r1", vec![[month(2026, 9), 1_150]]),
        ("r2", vec![[month(2026, 9), 850], [month(2026, 10), 300]]),
    ] {
        let events = vec![parse_event(refund(id, "m1", "p", 15_000).to_string().as_bytes())];
        let mut stored = StoredMembers::default();
        stored.members.insert("m1".into(), (3, Some(st.to_json())));
        let orig = crate::engine::Original { payment: original, booking: Some(booking.clone()) };
        let out = Run { result: evaluate_batch(&r, &events, &[false], &[Some(orig)], &stored, 9) };
        let rows = out.rows(0);
        assert_eq!(rows[1]["kind"], "return");
        assert_eq!(rows[1]["lots"], json!(want_lots), "{id}");
        st = out.state("m1");
        original.refunded_amount_fen += 15_000;
        original.refunded_points += 150;
        original.returned_used += 1_150;
    }
    // Back where they were: September's 2,000 (still expiring in November), October's 500;
    // the 300 earned and taken back leave nothing in November.
    assert_eq!(st.lots, vec![[month(2026, 9), 2_000], [month(2026, 10), 500]]);
}

#[test]
fn a_refund_rechecks_a_tier_reached_with_its_spend_never_below_the_tier_before() {
    let mut r = rules("best_of");
    let at = |d: &str| format!("{d}T09:00:00+08:00");
    // 500 points, then 600 more: gold (1,000) is reached by the second payment (a month
    // apart: no monthly task bonus).
    let evs = [
        pay("a", "m1", "mall", "x", "fashion", 50_000, &at("2026-10-02")),
        pay("b", "m1", "mall", "x", "fashion", 60_000, &at("2026-11-03")),
    ];
    let paid = run(&r, &evs);
    assert_eq!(paid.state("m1").tier.as_deref(), Some("gold"));
    let booking_of = |i: usize| {
        let Outcome::Apply(a) = &paid.result.outcomes[i] else { panic!() };
        a.booking.clone().unwrap()
    };
    assert_eq!((booking_of(0).tier_before.as_str(), booking_of(1).tier_before.as_str()), ("normal", "normal"));
    let refund_of = |r: &RuleSet, of: &str, amount: i64, points: i64, booking: crate::record::Booking| {
        let events = vec![parse_event(refund("r", "m1", of, amount).to_string().as_bytes())];
        let mut stored = StoredMembers::default();
        stored.members.insert("m1".into(), (3, Some(paid.result.members[0].state_json.clone())));
        let payment = PaymentRecord { amount_fen: amount, points, ..Default::default() };
        let orig = crate::engine::Original { payment, booking: Some(booking) };
        Run { result: evaluate_batch(r, &events, &[false], &[Some(orig)], &stored, 9) }
    };
    // Refunding the first payment leaves 600 points in the window: back to normal, in
    // the ledger as a tier change.
    let out = refund_of(&r, "a", 50_000, 500, booking_of(0));
    assert_eq!(out.state("m1").tier, None);
    let rows = out.rows(0);
    assert_eq!(rows[1]["kind"], "tier_change");
    assert_eq!(rows[1]["explain"][0], json!({"rule": "refund", "id": "gold->normal", "points": 0}));
    // A payment made at gold never takes the member below gold.
    let mut at_gold = booking_of(1);
    at_gold.tier_before = "gold".into();
    let out = refund_of(&r, "b", 60_000, 600, at_gold);
    assert_eq!(out.state("m1").tier.as_deref(), Some("gold"));
    assert_eq!(out.rows(0).as_array().map(Vec::len), Some(1));
    // A record from before the tier was kept, or the policy keep_until_review: kept.
    let mut unknown = booking_of(0);
    unknown.tier_before.clear();
    assert_eq!(refund_of(&r, "a", 50_000, 500, unknown).state("m1").tier.as_deref(), Some("gold"));
    r.tier_policy.on_refund = crate::rules::OnRefund::KeepUntilReview;
    assert_eq!(refund_of(&r, "a", 50_000, 500, booking_of(0)).state("m1").tier.as_deref(), Some("gold"));
}

#[test]
fn a_rebuilt_member_has_the_counters_its_payments_moved() {
    // Payments over three days: the daily cap reached on the last, a 3-day spend streak
    // and the month's task completed; the rebuild from the ledger rows must give the same
    // counters, or a member rebuilt mid-day would earn past the cap (or the task) again.
    let r = rules("best_of");
    let days = ["2026-11-21T10:00:00+08:00", "2026-11-22T10:00:00+08:00", "2026-11-23T10:00:00+08:00"];
    let mut evs = Vec::new();
    for (d, at) in days.iter().enumerate() {
        for i in 0..3 {
            evs.push(pay(&format!("p{d}{i}"), "m1", if i == 2 { "hotel" } else { "mall" }, "x", "fashion",
                         200_000 + 10_000 * i as i64, at));
        }
    }
    // A refund the same day as its payment takes its amount out of the day's spend.
    let mut refund_today = refund("r20", "m1", "p20", 50_000);
    refund_today["occurred_at"] = json!(days[2]);
    evs.push(refund_today);
    let out = run(&r, &evs);
    let live = out.state("m1");
    assert!(live.task_done && live.earned_day > 0 && !live.spend_by_bu.is_empty());
    let mut stored: Vec<crate::rebuild::StoredRow> = Vec::new();
    for i in 0..evs.len() {
        stored.extend(serde_json::from_value::<Vec<crate::rebuild::StoredRow>>(out.rows(i)).unwrap());
    }
    let rebuilt = crate::rebuild::rebuild_member(&r, &stored, crate::time::parse_instant_ms(days[2]).unwrap() + 3_600_000);
    let s = rebuilt.state;
    assert_eq!((s.day, s.earned_day), (live.day, live.earned_day), "the daily cap's points");
    assert_eq!((s.spend_day, &s.spend_by_bu), (live.spend_day, &live.spend_by_bu), "today's spend per BU");
    assert_eq!((s.spend_last_day, s.spend_streak), (live.spend_last_day, live.spend_streak), "the spend streak");
    assert_eq!((s.task_month, s.task_spend_fen, s.task_done), (live.task_month, live.task_spend_fen, live.task_done));
}

#[test]
fn an_erasure_forfeits_the_balance_as_breakage_and_empties_the_state() {
    let r = rules("best_of");
    let mut erase = member_ev("e1", "m1", "erase", MON);
    erase["reason"] = json!("PIPL request");
    let mut reg = member_ev("r1", "m1", "register", MON);
    reg["birthday"] = json!("05-06");
    reg["tags"] = json!(["vip"]);
    let evs = [reg, pay("p", "m1", "mall", "x", "fashion", 10_000, MON), erase.clone()];
    let out = run(&r, &evs);
    let before: i64 = out.points()[..2].iter().map(|p| p.unwrap()).sum();
    assert!(before > 0);
    assert_eq!(out.points()[2], Some(-before));
    assert_eq!(out.state("m1"), MemberState::default(), "nothing of the person is left");
    let rows = out.rows(2);
    assert_eq!(rows[0]["kind"], "erase");
    let points: i64 = rows[0]["settlement"].as_array().unwrap().iter().map(|l| l["points"].as_i64().unwrap()).sum();
    assert_eq!(points, 0, "the books balance: members -x, pool +x");
    // Stored value is the member's money: refused until refunded.
    let held = MemberState { sv_fen: 100, ..Default::default() };
    let refused = run_with(&r, &[erase], with_state("m1", held));
    assert_eq!(refused.rejected_field(0), "stored_value");
}
