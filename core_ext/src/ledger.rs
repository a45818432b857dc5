//! Ledger rows and their explanations, serialised once in the core so that the
//! store keeps the exact rows a replay must reproduce.

use serde::Serialize;

/// One contribution to a movement: base, tier, a campaign, a behaviour rule, a cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    pub rule: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub points: i64,
}

impl Part {
    pub fn new(rule: &'static str, id: impl Into<String>, points: i64) -> Part {
        Part { rule, id: id.into(), points }
    }
}

/// One row of the points ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerRow<'a> {
    pub event_id: &'a str,
    pub member_id: &'a str,
    pub kind: &'a str,
    pub points: i64,
    pub amount_fen: i64,
    pub bu_id: &'a str,
    pub format: &'a str,
    pub merchant_id: &'a str,
    pub category: &'a str,
    pub channel: &'a str,
    pub occurred_at_ms: i64,
    pub refund_of: &'a str,
    pub tier: &'a str,
    pub rules_version: &'a str,
    pub processed_at_ms: i64,
    pub explain: &'a [Part],
    /// Lots a spend, reversal or expiry touched: [month_index, points].
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub lots: &'a [[i64; 2]],
    /// The event's settlement lines (on its first row only); they sum to zero.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub settlement: &'a [crate::settlement::Line],
}

impl<'a> LedgerRow<'a> {
    /// The row of an operator's action on a member from the console (a merge's half, an
    /// erasure): points only, no business unit, merchant or amount.
    #[allow(clippy::too_many_arguments)]
    pub fn console(
        event_id: &'a str,
        member_id: &'a str,
        kind: &'a str,
        points: i64,
        occurred_at_ms: i64,
        tier: &'a str,
        rules_version: &'a str,
        processed_at_ms: i64,
        explain: &'a [Part],
        lots: &'a [[i64; 2]],
        settlement: &'a [crate::settlement::Line],
    ) -> Self {
        LedgerRow {
            event_id,
            member_id,
            kind,
            points,
            amount_fen: 0,
            bu_id: "",
            format: "",
            merchant_id: "",
            category: "",
            channel: "console",
            occurred_at_ms,
            refund_of: "",
            tier,
            rules_version,
            processed_at_ms,
            explain,
            lots,
            settlement,
        }
    }
}

/// The rows of one event, as a JSON array.
pub fn rows_json(rows: &[LedgerRow]) -> String {
    serde_json::to_string(rows).expect("ledger rows always serialise")
}

/// A ledger row as the member API's history shows it: the fields of batch.rs's
/// `HISTORY_DROPS` left out, and an empty `refund_of`; the others in the row's order.
#[derive(Serialize)]
struct HistoryRow<'r> {
    event_id: &'r str,
    kind: &'r str,
    points: i64,
    amount_fen: i64,
    bu_id: &'r str,
    merchant_id: &'r str,
    occurred_at_ms: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    refund_of: &'r str,
    rules_version: &'r str,
    explain: &'r [Part],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    lots: &'r [[i64; 2]],
}

/// The member history's entry for an event's rows, written from the rows themselves
/// (what batch.rs would otherwise read back out of their JSON).
pub fn history_json(rows: &[LedgerRow]) -> String {
    let kept: Vec<HistoryRow> = rows
        .iter()
        .map(|r| HistoryRow {
            event_id: r.event_id,
            kind: r.kind,
            points: r.points,
            amount_fen: r.amount_fen,
            bu_id: r.bu_id,
            merchant_id: r.merchant_id,
            occurred_at_ms: r.occurred_at_ms,
            refund_of: r.refund_of,
            rules_version: r.rules_version,
            explain: r.explain,
            lots: r.lots,
        })
        .collect();
    serde_json::to_string(&kept).expect("history rows always serialise")
}
