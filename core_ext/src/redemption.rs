//! Spending points: redemptions (cash or parking offset at a business unit's rate,
//! points-mall exchange, lottery draws, special benefits) and their reversal. Pure:
//! the caller applies the new state atomically (sequence-checked) in Redis.

use crate::errors::{CoreError, CoreResult};
use crate::events::check_id;
use crate::ledger::{rows_json, LedgerRow, Part};
use crate::rules::RuleSet;
use crate::state::MemberState;
use crate::tiers;
use crate::wallet;
use crate::engage_rules::BurnPromotion;
use serde::Deserialize;
use serde_json::json;

fn promotion_applies(p: &BurnPromotion, req: &RedemptionRequest, format: &str, category: &str, now_ms: i64) -> bool {
    p.kinds.as_ref().is_none_or(|s| s.contains(&req.kind))
        && p.bus.as_ref().is_none_or(|s| s.contains(&req.bu_id))
        && p.formats.as_ref().is_none_or(|s| s.contains(format))
        && p.categories.as_ref().is_none_or(|s| s.contains(category))
        && p.from_ms.is_none_or(|f| now_ms >= f)
        && p.to_ms.is_none_or(|t| now_ms < t)
}

fn origin_matches(rules: &RuleSet, p: &BurnPromotion, e: &crate::state::Earned, today: i64) -> bool {
    let format = rules.business_units.get(&e.bu).map_or("", |b| b.format.as_str());
    e.day > today - p.earned_within_days
        && (p.earned_bus.as_ref().is_some_and(|s| s.contains(&e.bu))
            || p.earned_formats.as_ref().is_some_and(|s| s.contains(format)))
}

/// Points earned where and when the promotion says, not yet used by a promotion.
fn origin_points(rules: &RuleSet, state: &MemberState, p: &BurnPromotion, today: i64) -> i64 {
    state.earned_recent.iter().filter(|e| origin_matches(rules, p, e, today)).map(|e| e.points).sum()
}

fn take_origin(rules: &RuleSet, state: &mut MemberState, p: &BurnPromotion, today: i64, mut points: i64) {
    for e in state.earned_recent.iter_mut() {
        if points == 0 {
            break;
        }
        if origin_matches(rules, p, e, today) {
            let t = e.points.min(points);
            e.points -= t;
            points -= t;
        }
    }
    state.earned_recent.retain(|e| e.points > 0);
}

pub use crate::engage_rules::REDEMPTION_KINDS as KINDS;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedemptionRequest {
    pub member_id: String,
    pub bu_id: String,
    pub kind: String,
    #[serde(default)]
    pub points: Option<i64>,
    #[serde(default)]
    pub draws: Option<i64>,
    #[serde(default)]
    pub item: Option<String>,
    /// What the points are spent on (for burn-side promotions by category).
    #[serde(default)]
    pub category: Option<String>,
}

/// What a redemption did, for the answer, the stored record and a reversal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeemed {
    pub points: i64,
    pub value_fen: i64,
    pub lots: Vec<[i64; 2]>,
    pub rows_json: String,
    pub result_json: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemError {
    Invalid(CoreError),
    Insufficient { available: i64, needed: i64 },
}

pub fn parse_request(body: &[u8]) -> CoreResult<RedemptionRequest> {
    let req: RedemptionRequest = serde_json::from_slice(body)
        .map_err(|e| CoreError::invalid_event("body", format!("is not a valid redemption request: {e}")))?;
    check_id("member_id", &req.member_id)?;
    check_id("bu_id", &req.bu_id)?;
    if !KINDS.contains(&req.kind.as_str()) {
        return Err(CoreError::invalid_event("kind", format!("must be one of {}", KINDS.join(", "))));
    }
    if let Some(item) = &req.item {
        check_id("item", item)?;
    }
    if let Some(c) = &req.category {
        check_id("category", c)?;
    }
    Ok(req)
}

/// Spends points for `req` (oldest lots first), or says why not.
pub fn redeem(
    rules: &RuleSet,
    state: &mut MemberState,
    redemption_id: &str,
    req: &RedemptionRequest,
    now_ms: i64,
) -> Result<Redeemed, RedeemError> {
    let invalid = |f: &str, r: String| RedeemError::Invalid(CoreError::invalid_event(f, r));
    check_id("redemption_id", redemption_id).map_err(RedeemError::Invalid)?;
    if !rules.business_units.contains_key(&req.bu_id) {
        return Err(invalid("bu_id", format!("unknown business unit {:?}", req.bu_id)));
    }
    let points = if req.kind == "lottery" {
        if rules.wallet.lottery_cost_points == 0 {
            return Err(invalid("kind", "lottery draws are not configured ([wallet] lottery_cost_points)".into()));
        }
        match req.draws {
            Some(d @ 1..=100) => d * rules.wallet.lottery_cost_points,
            _ => return Err(invalid("draws", "must be an integer from 1 to 100".into())),
        }
    } else {
        match req.points {
            Some(p @ 1..=1_000_000_000) => p,
            _ => return Err(invalid("points", "must be an integer from 1 to 1000000000".into())),
        }
    };
    let bu = &rules.business_units[&req.bu_id];
    let category = req.category.as_deref().unwrap_or("");
    let active: Vec<&BurnPromotion> = rules
        .engagement
        .burn_promotions
        .iter()
        .filter(|p| promotion_applies(p, req, &bu.format, category, now_ms))
        .collect();
    // A limited-time points price: the lowest one that applies.
    let price = active.iter().filter(|p| p.price_pct < 100).min_by_key(|p| p.price_pct);
    let list_points = points;
    let points = match price {
        Some(p) => (points * p.price_pct + 99) / 100,
        None => points,
    };
    wallet::release_due(state, now_ms);
    let available = wallet::available(rules, state, now_ms);
    let lots = wallet::spend_fifo(rules, state, points, now_ms)
        .ok_or(RedeemError::Insufficient { available, needed: points })?;
    let tier = tiers::effective_tier(rules, state, now_ms);
    let rate = rules.redemption_rate(&req.bu_id);
    let value_of = |pts: i64| -> i64 {
        let base = pts as i128 * rate.value_fen as i128 / rate.points as i128;
        (base * (100 + tier.redemption_bonus_pct) as i128 / 100) as i64
    };
    let offsets = matches!(req.kind.as_str(), "cash_offset" | "parking_offset");
    let base_value = if offsets { value_of(points) } else { 0 };
    // A higher value per point: the promotion worth the most applies; one on where the
    // points were earned values only points from the matching recent earnings.
    let today = crate::time::Local::of(now_ms, rules.utc_offset_minutes).day;
    let mut best: Option<(&BurnPromotion, i64, i64)> = None;
    if offsets {
        for p in active.iter().filter(|p| p.value_pct != 100) {
            let promo_points = if p.needs_origin() { origin_points(rules, state, p, today).min(points) } else { points };
            let extra = value_of(promo_points) * (p.value_pct - 100) / 100;
            if extra > 0 && best.is_none_or(|b| extra > b.1) {
                best = Some((p, extra, promo_points));
            }
        }
    }
    if let Some((p, _, promo_points)) = best.filter(|b| b.0.needs_origin()) {
        take_origin(rules, state, p, today, promo_points);
    }
    let bonus_fen = best.map_or(0, |b| b.1);
    let value_fen = base_value + bonus_fen;
    let format = bu.format.as_str();
    let mut parts = vec![Part::new("redeem", req.kind.clone(), -points)];
    if let Some(p) = price {
        parts.push(Part::new("points_price", format!("{}:{}%:{list_points}", p.id, p.price_pct), 0));
    }
    if let Some((p, extra, pts)) = best {
        parts.push(Part::new("burn_promotion", format!("{}:{}%:{pts}:{extra}", p.id, p.value_pct), 0));
    }
    let mut lines = crate::settlement::spend_lines(&req.bu_id, points, rules.paid_fen(&req.bu_id, points));
    if let Some((p, extra, _)) = best {
        // The extra value is paid to the spending unit by whoever runs the promotion.
        let payer = if p.funded_by == "pool" { "pool".to_string() } else { format!("bu:{}", p.funded_by) };
        lines.push(crate::settlement::Line::money(payer, -extra));
        lines.push(crate::settlement::Line::money(format!("bu:{}", req.bu_id), extra));
    }
    let row = LedgerRow {
        event_id: redemption_id,
        member_id: &req.member_id,
        kind: "redeem",
        points: -points,
        amount_fen: value_fen,
        bu_id: &req.bu_id,
        format,
        merchant_id: req.item.as_deref().unwrap_or(""),
        category: &req.kind,
        channel: "points",
        occurred_at_ms: now_ms,
        refund_of: "",
        tier: &tier.id,
        rules_version: &rules.version,
        processed_at_ms: now_ms,
        explain: &parts,
        lots: &lots,
        settlement: &lines,
    };
    let result = json!({
        "redemption_id": redemption_id, "status": "redeemed", "member_id": req.member_id, "bu_id": req.bu_id,
        "kind": req.kind, "points": points, "value_fen": value_fen, "list_points": list_points,
        "promotion": best.map(|b| json!({"id": b.0.id, "value_pct": b.0.value_pct, "points": b.2, "bonus_value_fen": b.1}))
            .or_else(|| price.map(|p| json!({"id": p.id, "price_pct": p.price_pct}))),
        "lots": lots.iter().map(|l| json!({"month": wallet::month_label(l[0]), "points": l[1]})).collect::<Vec<_>>(),
        "available_after": wallet::available(rules, state, now_ms),
        "rules_version": rules.version,
    });
    Ok(Redeemed { points, value_fen, rows_json: rows_json(&[row]), result_json: result.to_string(), lots })
}

#[derive(Debug, Deserialize)]
struct StoredRow {
    event_id: String,
    member_id: String,
    kind: String,
    points: i64,
    bu_id: String,
    category: String,
    #[serde(default)]
    lots: Vec<[i64; 2]>,
    #[serde(default)]
    settlement: Vec<crate::settlement::Line>,
}

/// Reverses a redemption from its stored ledger rows: the same lots come back.
pub fn reverse(
    rules: &RuleSet,
    state: &mut MemberState,
    stored_rows_json: &str,
    now_ms: i64,
) -> CoreResult<Redeemed> {
    let rows: Vec<StoredRow> = serde_json::from_str(stored_rows_json)
        .map_err(|e| CoreError::rejected("redemption_id", format!("stored redemption is unreadable: {e}")))?;
    let row = rows
        .into_iter()
        .find(|r| r.kind == "redeem")
        .ok_or_else(|| CoreError::rejected("redemption_id", "is not a redemption"))?;
    wallet::restore(state, &row.lots);
    let points = -row.points;
    let reversal_id = format!("{}:reverse", row.event_id);
    let tier = tiers::effective_tier(rules, state, now_ms);
    let format = rules.business_units.get(&row.bu_id).map_or("", |b| b.format.as_str());
    let parts = [Part::new("reverse", row.event_id.clone(), points)];
    // The redemption's own lines, reversed (a promotion's extra value included).
    let lines: Vec<crate::settlement::Line> = if row.settlement.is_empty() {
        crate::settlement::spend_lines(&row.bu_id, -points, -rules.paid_fen(&row.bu_id, points))
    } else {
        row.settlement
            .iter()
            .map(|l| crate::settlement::Line { amount_fen: -l.amount_fen, points: -l.points, ..l.clone() })
            .collect()
    };
    let out = LedgerRow {
        event_id: &reversal_id,
        member_id: &row.member_id,
        kind: "reverse",
        points,
        amount_fen: 0,
        bu_id: &row.bu_id,
        format,
        merchant_id: "",
        category: &row.category,
        channel: "points",
        occurred_at_ms: now_ms,
        refund_of: &row.event_id,
        tier: &tier.id,
        rules_version: &rules.version,
        processed_at_ms: now_ms,
        explain: &parts,
        lots: &row.lots,
        settlement: &lines,
    };
    let result = json!({
        "redemption_id": row.event_id, "status": "reversed", "member_id": row.member_id, "points": points,
        "lots": row.lots.iter().map(|l| json!({"month": wallet::month_label(l[0]), "points": l[1]})).collect::<Vec<_>>(),
        "available_after": wallet::available(rules, state, now_ms),
    });
    Ok(Redeemed {
        points,
        value_fen: 0,
        rows_json: rows_json(&[out]),
        result_json: result.to_string(),
        lots: row.lots,
    })
}
