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
use serde::Deserialize;
use serde_json::json;

pub const KINDS: [&str; 5] = ["cash_offset", "parking_offset", "mall_exchange", "lottery", "benefit"];

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
    wallet::release_due(state, now_ms);
    let available = wallet::available(rules, state, now_ms);
    let lots = wallet::spend_fifo(rules, state, points, now_ms)
        .ok_or(RedeemError::Insufficient { available, needed: points })?;
    let tier = tiers::effective_tier(rules, state, now_ms);
    let value_fen = match req.kind.as_str() {
        "cash_offset" | "parking_offset" => {
            let rate = rules.redemption_rate(&req.bu_id);
            let base = points as i128 * rate.value_fen as i128 / rate.points as i128;
            (base * (100 + tier.redemption_bonus_pct) as i128 / 100) as i64
        }
        _ => 0,
    };
    let format = rules.business_units[&req.bu_id].format.as_str();
    let parts = [Part::new("redeem", req.kind.clone(), -points)];
    let lines = crate::settlement::spend_lines(&req.bu_id, points, rules.paid_fen(&req.bu_id, points));
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
        "kind": req.kind, "points": points, "value_fen": value_fen,
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
    let lines = crate::settlement::spend_lines(&row.bu_id, -points, -rules.paid_fen(&row.bu_id, points));
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
