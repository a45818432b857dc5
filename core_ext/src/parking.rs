//! Car park fees: a schedule (free minutes, price per started hour, daily cap), then
//! the deductions a member earns (tier free minutes, free minutes from same-day spend
//! at the mall, parking coupons), then an optional points offset through the wallet.
//! Pure and exact to the fen.

use crate::rules::RuleSet;
use crate::state::MemberState;
use crate::time::Local;
use serde::Serialize;

pub use crate::parking_rules::CarPark;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deduction {
    pub rule: &'static str,
    pub minutes: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitFee {
    pub minutes: i64,
    pub gross_fee_fen: i64,
    pub deductions: Vec<Deduction>,
    pub billable_minutes: i64,
    pub fee_fen: i64,
    pub points_used: i64,
    pub points_value_fen: i64,
    pub due_fen: i64,
}

/// The fee for `minutes` of parking: per started hour, each 24 hours capped.
pub fn charge(park: &CarPark, minutes: i64) -> i64 {
    if minutes <= 0 {
        return 0;
    }
    let hours = (minutes + 59) / 60;
    let (days, rest) = (hours / 24, hours % 24);
    days * park.daily_cap_fen + (rest * park.price_per_hour_fen).min(park.daily_cap_fen)
}

/// Same-day spend of a member at `bu` (the state keeps today's spend per business unit).
pub fn spend_today(state: &MemberState, bu: &str, day: i64) -> i64 {
    if state.spend_day != day {
        return 0;
    }
    state.spend_by_bu.get(bu).copied().unwrap_or(0)
}

/// What an exit costs. `member` is None for a guest; `auto_pay` lets the wallet pay
/// what is left with points (ticketless exit), `available` of them at most.
#[allow(clippy::too_many_arguments)]
pub fn exit_fee(
    rules: &RuleSet,
    park: &CarPark,
    entry_ms: i64,
    exit_ms: i64,
    member: Option<&MemberState>,
    coupon_minutes: i64,
    auto_pay: bool,
    available: i64,
) -> ExitFee {
    let minutes = ((exit_ms - entry_ms).max(0) + 59_999) / 60_000;
    let mut deductions = vec![Deduction { rule: "free", minutes: park.free_minutes }];
    if let Some(state) = member {
        let tier = crate::tiers::effective_tier(rules, state, exit_ms);
        if tier.free_parking_minutes > 0 {
            deductions.push(Deduction { rule: "tier", minutes: tier.free_parking_minutes });
        }
        if let Some(bu) = &park.spend_bu {
            let day = Local::of(exit_ms, rules.utc_offset_minutes).day;
            let spent = spend_today(state, bu, day);
            if let Some(&(_, free)) = park.spend_steps.iter().rev().find(|(min, _)| spent >= *min) {
                deductions.push(Deduction { rule: "spend", minutes: free });
            }
        }
    }
    if coupon_minutes > 0 {
        deductions.push(Deduction { rule: "coupon", minutes: coupon_minutes });
    }
    // The free minutes of the schedule apply only to short stays; the member's
    // deductions come off any stay.
    let free = if minutes <= park.free_minutes { minutes } else { 0 };
    let earned: i64 = deductions.iter().skip(1).map(|d| d.minutes).sum();
    let billable_minutes = (minutes - free - earned).max(0);
    let gross_fee_fen = charge(park, minutes);
    let fee_fen = if free > 0 { 0 } else { charge(park, billable_minutes) };
    let (mut points_used, mut points_value_fen) = (0, 0);
    if auto_pay && fee_fen > 0 && member.is_some() {
        let rate = rules.redemption_rate(&park.bu);
        // Points needed for the fee, rounded up; then what the points used are worth, capped at the fee.
        let (num, den) = (fee_fen as i128 * rate.points as i128, rate.value_fen as i128);
        let needed = ((num + den - 1) / den) as i64;
        points_used = needed.min(available.max(0));
        points_value_fen = ((points_used as i128 * rate.value_fen as i128 / rate.points as i128) as i64).min(fee_fen);
    }
    ExitFee {
        minutes,
        gross_fee_fen,
        deductions,
        billable_minutes,
        fee_fen,
        points_used,
        points_value_fen,
        due_fen: fee_fen - points_value_fen,
    }
}

/// An exit priced and, when points pay, spent from the wallet: (fee, new state and
/// the ledger rows of the points used, if any).
#[allow(clippy::too_many_arguments)]
pub fn settle_exit(
    rules: &RuleSet,
    park: &CarPark,
    exit_event_id: &str,
    member_id: Option<&str>,
    state: Option<&mut MemberState>,
    entry_ms: i64,
    exit_ms: i64,
    coupon_minutes: i64,
    auto_pay: bool,
) -> (ExitFee, Option<String>) {
    let Some(state) = state else {
        return (exit_fee(rules, park, entry_ms, exit_ms, None, coupon_minutes, false, 0), None);
    };
    crate::wallet::release_due(state, exit_ms);
    // A parking coupon in the member's wallet pays for minutes the stay would be charged for.
    let mut coupon_row = None;
    let mut coupon_minutes = coupon_minutes;
    if exit_fee(rules, park, entry_ms, exit_ms, Some(state), coupon_minutes, false, 0).fee_fen > 0 {
        if let Some((id, minutes)) = crate::coupons::parking_coupon(rules, state, &park.bu, exit_ms) {
            let at = crate::coupons::At { rules, member_id: member_id.unwrap_or(""), event_id: exit_event_id,
                                          at_ms: exit_ms, now_ms: exit_ms };
            let u = crate::coupons::Use { bu_id: &park.bu, merchant_id: &park.bu, category: "parking", paid_fen: 0,
                                          at_ms: exit_ms };
            if let Ok(row) = crate::coupons::redeem(&at, state, &id, &u) {
                coupon_minutes += minutes;
                coupon_row = Some(crate::coupons::rows_json(&[row]).join(","));
            }
        }
    }
    let available = crate::wallet::available(rules, state, exit_ms);
    let fee = exit_fee(rules, park, entry_ms, exit_ms, Some(state), coupon_minutes, auto_pay, available);
    if fee.points_used == 0 {
        return (fee, coupon_row.map(|r| format!("[{r}]")));
    }
    let lots = crate::wallet::spend_fifo(rules, state, fee.points_used, exit_ms).unwrap_or_default();
    let tier = crate::tiers::effective_tier(rules, state, exit_ms);
    let parts = [crate::ledger::Part::new("parking_offset", park.bu.clone(), -fee.points_used)];
    let lines = crate::settlement::spend_lines(&park.bu, fee.points_used, rules.paid_fen(&park.bu, fee.points_used));
    let row = crate::ledger::LedgerRow {
        event_id: exit_event_id,
        member_id: member_id.unwrap_or(""),
        kind: "redeem",
        points: -fee.points_used,
        amount_fen: fee.points_value_fen,
        bu_id: &park.bu,
        format: rules.business_units.get(&park.bu).map_or("", |b| b.format.as_str()),
        merchant_id: "",
        category: "parking_offset",
        channel: "points",
        occurred_at_ms: exit_ms,
        refund_of: "",
        tier: &tier.id,
        rules_version: &rules.version,
        processed_at_ms: exit_ms,
        explain: &parts,
        lots: &lots,
        settlement: &lines,
    };
    let rows = crate::ledger::rows_json(&[row]);
    let rows = match coupon_row {
        Some(c) => format!("{},{c}]", &rows[..rows.len() - 1]),
        None => rows,
    };
    (fee, Some(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn park() -> CarPark {
        CarPark {
            bu: "park".into(),
            free_minutes: 30,
            price_per_hour_fen: 1_000,
            daily_cap_fen: 6_000,
            spend_bu: Some("mall".into()),
            spend_steps: vec![(20_000, 120), (50_000, 240)],
        }
    }

    fn rules() -> RuleSet {
        RuleSet::from_toml(
            r#"
version = "p"
[formats.mall]
points = 1
per_fen = 100
[formats.parking]
points = 1
per_fen = 100
[[business_units]]
id = "mall"
format = "mall"
[[business_units]]
id = "park"
format = "parking"
[[tiers]]
id = "normal"
multiplier_pct = 100
[[tiers]]
id = "gold"
multiplier_pct = 100
qualify_points = 10
free_parking_minutes = 60
[wallet.default_rate]
points = 100
value_fen = 100
"#,
            "p.toml",
        )
        .unwrap()
    }

    const H: i64 = 3_600_000;

    #[test]
    fn table_of_cases() {
        let r = rules();
        let p = park();
        let gold = MemberState { tier: Some("gold".into()), ..Default::default() };
        let day = Local::of(10 * H, 480).day;
        let spender = MemberState { spend_day: day, spend_by_bu: [("mall".to_string(), 25_000)].into(), ..Default::default() };
        let both = MemberState { tier: Some("gold".into()), ..spender.clone() };
        let f = |m: Option<&MemberState>, mins: i64, coupon: i64, auto: bool, avail: i64| {
            exit_fee(&r, &p, 0, mins * 60_000, m, coupon, auto, avail)
        };
        // (case, fee, due)
        let cases = [
            ("free short stay", f(None, 30, 0, false, 0), 0, 0),
            ("guest 31 min = 1 started hour", f(None, 31, 0, false, 0), 1_000, 1_000),
            ("guest 3 h 1 min", f(None, 181, 0, false, 0), 4_000, 4_000),
            ("daily cap", f(None, 20 * 60, 0, false, 0), 6_000, 6_000),
            ("overnight 30 h: cap + 6 h", f(None, 30 * 60, 0, false, 0), 12_000, 12_000),
            ("gold: 1 h free, 121 min = 3 h", f(Some(&gold), 181, 0, false, 0), 3_000, 3_000),
            ("spend 250 yuan: 2 h free", f(Some(&spender), 181, 0, false, 0), 2_000, 2_000),
            ("gold + spend: 3 h free, 1 min left", f(Some(&both), 181, 0, false, 0), 1_000, 1_000),
            ("coupon 1 h", f(None, 181, 60, false, 0), 3_000, 3_000),
            ("points pay all", f(Some(&gold), 181, 0, true, 5_000), 3_000, 0),
            ("points pay part", f(Some(&gold), 181, 0, true, 1_500), 3_000, 1_500),
            ("guest cannot pay with points", f(None, 181, 0, true, 5_000), 4_000, 4_000),
        ];
        for (name, fee, want_fee, want_due) in cases {
            assert_eq!((fee.fee_fen, fee.due_fen), (want_fee, want_due), "{name}");
            assert_eq!(fee.fee_fen, fee.points_value_fen + fee.due_fen, "{name}");
        }
        let paid = f(Some(&gold), 181, 0, true, 5_000);
        assert_eq!(paid.points_used, 3_000);
        assert_eq!(f(None, 0, 0, false, 0).minutes, 0);
    }
}
