//! Ledger-topic messages into ClickHouse blocks: the JSON rows every producer sends
//! (accrual, HTTP operations, parking, the notifier) become one RowBinary block per
//! table, so the sink inserts them without touching a row in Python. Pure: no I/O.
//!
//! RowBinary (ClickHouse's documented row format): a String (LowCardinality too) is a
//! LEB128 length and its bytes, Int64 / UInt16 / UInt32 little-endian, DateTime64(3) the
//! Int64 milliseconds. The columns of each table are listed here in insert order and
//! checked against the live schema at start (`schema_mismatches`).

use crate::text::opt_cow;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A column's type as the block encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Str,
    I64,
    U16,
    U32,
    Ms,
}

impl Type {
    /// Whether a ClickHouse type name (from DESCRIBE) is this encoding.
    pub fn matches(self, ch: &str) -> bool {
        match self {
            Type::Str => ch == "String" || ch == "LowCardinality(String)",
            Type::I64 => ch == "Int64",
            Type::U16 => ch == "UInt16",
            Type::U32 => ch == "UInt32",
            Type::Ms => ch.starts_with("DateTime64(3"),
        }
    }
}

pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Type)],
}

use Type::*;

pub const LEDGER: Table = Table {
    name: "ledger",
    columns: &[
        ("event_id", Str), ("member_id", Str), ("kind", Str), ("points", I64), ("amount_fen", I64), ("bu_id", Str),
        ("format", Str), ("merchant_id", Str), ("category", Str), ("channel", Str), ("occurred_at", Ms),
        ("refund_of", Str), ("tier", Str), ("rules_version", Str), ("processed_at", Ms), ("explain", Str),
        ("lots", Str), ("batch_index", U32),
    ],
};
pub const GUESTS: Table = Table {
    name: "guest_payments",
    columns: &[
        ("event_id", Str), ("type", Str), ("payer_kind", Str), ("payer_id", Str), ("amount_fen", I64),
        ("bu_id", Str), ("format", Str), ("merchant_id", Str), ("category", Str), ("channel", Str),
        ("occurred_at", Ms), ("refund_of", Str), ("processed_at", Ms),
    ],
};
pub const SETTLEMENT: Table = Table {
    name: "settlement_lines",
    columns: &[
        ("event_id", Str), ("kind", Str), ("line_no", U16), ("member_id", Str), ("account", Str),
        ("amount_fen", I64), ("points", I64), ("bu_id", Str), ("merchant_id", Str), ("occurred_at", Ms),
        ("processed_at", Ms),
    ],
};
pub const PARKING: Table = Table {
    name: "parking_sessions",
    columns: &[
        ("event_id", Str), ("status", Str), ("plate", Str), ("car_park", Str), ("member_id", Str),
        ("entry_at", Ms), ("exit_at", Ms), ("minutes", I64), ("gross_fee_fen", I64), ("fee_fen", I64),
        ("points_used", I64), ("points_value_fen", I64), ("due_fen", I64), ("deductions", Str),
    ],
};
pub const COUPONS: Table = Table {
    name: "coupon_events",
    columns: &[
        ("event_id", Str), ("member_id", Str), ("kind", Str), ("coupon_id", Str), ("template", Str),
        ("trigger", Str), ("coupon_kind", Str), ("face_value_fen", I64), ("discount_fen", I64),
        ("merchant_share_fen", I64), ("issuer_share_fen", I64), ("valid_until", Ms), ("occurred_at", Ms),
        ("processed_at", Ms), ("rules_version", Str), ("reason", Str), ("bu_id", Str), ("merchant_id", Str),
    ],
};
pub const DRAWS: Table = Table {
    name: "game_draws",
    columns: &[
        ("event_id", Str), ("member_id", Str), ("game_id", Str), ("game_kind", Str), ("draw", I64),
        ("odds_total", I64), ("odds", Str), ("prize_id", Str), ("outcome", Str), ("cost_points", I64),
        ("rules_version", Str), ("occurred_at", Ms), ("processed_at", Ms),
    ],
};
pub const STORED: Table = Table {
    name: "stored_value",
    columns: &[
        ("event_id", Str), ("member_id", Str), ("kind", Str), ("amount_fen", I64), ("balance_after_fen", I64),
        ("bu_id", Str), ("merchant_id", Str), ("category", Str), ("channel", Str), ("refund_of", Str),
        ("occurred_at", Ms), ("processed_at", Ms),
    ],
};

/// Each member's state after a write (the durable copy `loyalty rebuild` restores):
/// a ReplacingMergeTree on the member, the highest sequence number kept.
pub const STATES: Table = Table {
    name: "member_states",
    columns: &[("member_id", Str), ("seq", I64), ("state", Str), ("processed_at", Ms)],
};
/// Who each external id, plate and referral phone is bound to (the last record per key).
pub const BINDINGS: Table = Table {
    name: "bindings",
    columns: &[("key", Str), ("kind", Str), ("member_id", Str), ("value", Str), ("processed_at", Ms)],
};

/// The records of the HTTP operations (what a retry answers), the newest per event.
pub const OP_RECORDS: Table = Table {
    name: "op_records",
    columns: &[("member_id", Str), ("event_id", Str), ("record", Str), ("processed_at", Ms)],
};

/// Refunds held for a payment not applied yet: held, then released or expired.
pub const HELD: Table = Table {
    name: "held_refunds",
    columns: &[
        ("member_id", Str), ("payment_id", Str), ("event_id", Str), ("status", Str), ("body", Str),
        ("deadline_ms", I64), ("processed_at", Ms),
    ],
};

/// The operators' audit trail: one row per change made through the console or the admin
/// API (who, role, what, before and after), keyed by the request id.
pub const AUDIT: Table = Table {
    name: "audit_log",
    columns: &[
        ("request_id", Str), ("at", Ms), ("operator", Str), ("role", Str), ("scope", Str), ("action", Str),
        ("member_id", Str), ("target", Str), ("status", I64), ("before", Str), ("after", Str),
    ],
};

/// Receipts submitted for points (小票积分): one row per step (submitted, approved,
/// rejected), keyed by the receipt and its status.
pub const RECEIPTS: Table = Table {
    name: "receipts",
    columns: &[
        ("receipt_id", Str), ("status", Str), ("event_id", Str), ("member_id", Str), ("merchant_id", Str),
        ("bu_id", Str), ("amount_fen", I64), ("receipt_no", Str), ("purchased_at", Ms), ("image", Str),
        ("reason", Str), ("reviewer", Str), ("submitted_at", Ms), ("occurred_at", Ms), ("processed_at", Ms),
        ("rules_version", Str),
    ],
};

/// Every table; the sink inserts them in this order but the ledger last (bindings_batch.rs).
pub const TABLES: [&Table; 13] = [
    &LEDGER, &GUESTS, &SETTLEMENT, &PARKING, &COUPONS, &DRAWS, &STORED, &STATES, &BINDINGS, &OP_RECORDS, &HELD, &AUDIT,
    &RECEIPTS,
];

/// Columns whose ClickHouse type is not what the block writes: (table, column, found).
pub fn schema_mismatches(describe: &[(String, String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for t in TABLES {
        for (col, ty) in t.columns {
            match describe.iter().find(|(tb, c, _)| tb == t.name && c == col) {
                None => out.push(format!("{}.{col}: missing", t.name)),
                Some((_, _, found)) if !ty.matches(found) => {
                    out.push(format!("{}.{col}: is {found}, the sink writes {ty:?}", t.name))
                }
                Some(_) => {}
            }
        }
    }
    out
}

/// An optional text of a row: read with `opt_cow`, borrowed from the message when it has no
/// escapes (serde's derive copies every `Option<Cow<str>>`). A newtype deserialising through
/// it measured ~2% slower on the blocks than the attribute on each field.
type S<'a> = Option<Cow<'a, str>>;

#[derive(Deserialize)]
struct LineIn<'a> {
    #[serde(borrow)]
    account: Cow<'a, str>,
    amount_fen: i64,
    points: i64,
}

/// Any row of a message's "ledger" or "coupons" list: points rows, coupon events, game
/// draws and stored-value rows share it (unknown fields are ignored).
#[derive(Deserialize)]
struct Row<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    table: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    event_id: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    member_id: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    kind: S<'a>,
    points: Option<i64>,
    amount_fen: Option<i64>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    bu_id: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    format: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    merchant_id: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    category: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    channel: S<'a>,
    occurred_at_ms: Option<i64>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    refund_of: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    tier: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    rules_version: S<'a>,
    processed_at_ms: Option<i64>,
    #[serde(borrow)]
    explain: Option<&'a RawValue>,
    #[serde(borrow)]
    lots: Option<&'a RawValue>,
    batch_index: Option<u32>,
    #[serde(borrow)]
    settlement: Option<Vec<LineIn<'a>>>,
    #[serde(borrow)]
    boards: Option<Vec<(Cow<'a, str>, i64, i64)>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    coupon_id: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    template: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    trigger: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    coupon_kind: S<'a>,
    face_value_fen: Option<i64>,
    discount_fen: Option<i64>,
    merchant_share_fen: Option<i64>,
    issuer_share_fen: Option<i64>,
    valid_until_ms: Option<i64>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    reason: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    game_id: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    game_kind: S<'a>,
    draw: Option<i64>,
    odds_total: Option<i64>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    odds: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    prize_id: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    outcome: S<'a>,
    cost_points: Option<i64>,
    balance_after_fen: Option<i64>,
    seq: Option<i64>,
    #[serde(borrow)]
    state: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    key: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    value: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    record: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    payment_id: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    status: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    body: S<'a>,
    deadline_ms: Option<i64>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    operator: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    role: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    scope: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    action: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    target: S<'a>,
    http_status: Option<i64>,
    #[serde(borrow)]
    before: Option<&'a RawValue>,
    #[serde(borrow)]
    after: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    receipt_id: S<'a>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    receipt_no: S<'a>,
    purchased_at_ms: Option<i64>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    image: S<'a>,
    submitted_at_ms: Option<i64>,
}

#[derive(Deserialize)]
struct Guest<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    type_: Cow<'a, str>,
    #[serde(borrow)]
    payer_kind: Cow<'a, str>,
    #[serde(borrow)]
    payer_id: Cow<'a, str>,
    amount_fen: i64,
    #[serde(borrow)]
    bu_id: Cow<'a, str>,
    #[serde(borrow)]
    format: Cow<'a, str>,
    #[serde(borrow)]
    merchant_id: Cow<'a, str>,
    #[serde(borrow)]
    category: Cow<'a, str>,
    #[serde(borrow)]
    channel: Cow<'a, str>,
    occurred_at_ms: i64,
    #[serde(borrow)]
    refund_of: Cow<'a, str>,
    processed_at_ms: i64,
}

#[derive(Deserialize)]
struct Parking<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow)]
    plate: Cow<'a, str>,
    #[serde(borrow)]
    car_park: Cow<'a, str>,
    #[serde(borrow)]
    member_id: Cow<'a, str>,
    entry_ms: i64,
    exit_ms: i64,
    minutes: i64,
    gross_fee_fen: i64,
    fee_fen: i64,
    points_used: i64,
    points_value_fen: i64,
    due_fen: i64,
    #[serde(borrow)]
    deductions: &'a RawValue,
}

/// The keys a ledger-topic message may have.
const MESSAGE_FIELDS: &[&str] = &["ledger", "guests", "parking", "coupons"];

/// Where a message's rows go while it is read: each row is encoded as soon as it is
/// parsed (no list of rows is built), the first refusal kept to name the message.
struct Enc<'o> {
    tables: &'o mut [Block],
    boards: &'o mut Vec<(String, String, i64, i64)>,
    refused: Option<String>,
}

impl Enc<'_> {
    fn keep<E: serde::de::Error>(&mut self, done: Result<(), String>) -> Result<(), E> {
        done.map_err(|reason| {
            let e = E::custom(&reason);
            self.refused = Some(reason);
            e
        })
    }
}

/// A message `{"ledger": [...], "guests": [...], "parking": [...], "coupons": [...]}`
/// (every key optional, no other), read and encoded in one pass.
struct MessageVisitor<'e, 'o>(&'e mut Enc<'o>);

impl<'de> serde::de::Visitor<'de> for MessageVisitor<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a ledger message (an object of ledger, guests, parking and coupons lists)")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let enc = self.0;
        let mut seen = [false; 4];
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let Some(at) = MESSAGE_FIELDS.iter().position(|f| *f == key) else {
                return Err(serde::de::Error::unknown_field(&key, MESSAGE_FIELDS));
            };
            if std::mem::replace(&mut seen[at], true) {
                return Err(serde::de::Error::duplicate_field(MESSAGE_FIELDS[at]));
            }
            match at {
                0 | 3 => map.next_value_seed(Rows { enc: &mut *enc, coupons: at == 3 })?,
                1 => {
                    let guests: Vec<Guest<'de>> = map.next_value()?;
                    for g in &guests {
                        encode_guest(g, enc.tables);
                    }
                }
                _ => {
                    let sessions: Vec<Parking<'de>> = map.next_value()?;
                    for p in &sessions {
                        encode_parking(p, enc.tables);
                    }
                }
            }
        }
        Ok(())
    }
}

/// A message's "ledger" or "coupons" list, each row encoded as it is read.
struct Rows<'e, 'o> {
    enc: &'e mut Enc<'o>,
    coupons: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Rows<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Rows<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of rows")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(row) = seq.next_element::<Row<'de>>()? {
            let done = encode_row(&row, self.coupons, self.enc.tables, self.enc.boards);
            self.enc.keep(done)?;
        }
        Ok(())
    }
}

/// One table's rows of a batch of messages, encoded.
#[derive(Debug, Default, Clone)]
pub struct Block {
    pub rows: usize,
    pub data: Vec<u8>,
    /// A digest of the rows' identities (the insert's deduplication token).
    pub identity: Vec<u8>,
}

/// The blocks of a batch of ledger-topic messages.
#[derive(Debug, Default)]
pub struct Blocks {
    /// One per table of `TABLES`, in that order.
    pub tables: Vec<Block>,
    /// Leaderboard scores the rows carry: (board, member, score, version).
    pub boards: Vec<(String, String, i64, i64)>,
    /// Messages that cannot be stored: (index, reason). Nothing of them is in the blocks.
    pub poison: Vec<(usize, String)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(s.as_bytes());
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn need<'b>(v: &'b S<'_>, field: &str) -> Result<&'b str, String> {
    v.as_deref().ok_or_else(|| format!("field {field:?} is missing"))
}

fn need_i(v: Option<i64>, field: &str) -> Result<i64, String> {
    v.ok_or_else(|| format!("field {field:?} is missing"))
}

fn ident(id: &mut Vec<u8>, parts: &[&str]) {
    for p in parts {
        id.extend_from_slice(p.as_bytes());
        id.push(0x1f);
    }
    id.push(0x1e);
}

/// One ledger or coupon row of a message, encoded into its table (and its settlement lines).
fn encode_row(r: &Row, from_coupons: bool, out: &mut [Block], boards: &mut Vec<(String, String, i64, i64)>) -> Result<(), String> {
    let table = if from_coupons { Some("coupon_events") } else { r.table.as_deref() };
    match table {
        None => {
            let b = &mut out[0];
            let d = &mut b.data;
            let (eid, mid, kind) = (need(&r.event_id, "event_id")?, need(&r.member_id, "member_id")?, need(&r.kind, "kind")?);
            put_str(d, eid);
            put_str(d, mid);
            put_str(d, kind);
            put_i64(d, need_i(r.points, "points")?);
            put_i64(d, need_i(r.amount_fen, "amount_fen")?);
            put_str(d, need(&r.bu_id, "bu_id")?);
            put_str(d, need(&r.format, "format")?);
            put_str(d, need(&r.merchant_id, "merchant_id")?);
            put_str(d, need(&r.category, "category")?);
            put_str(d, need(&r.channel, "channel")?);
            put_i64(d, need_i(r.occurred_at_ms, "occurred_at_ms")?);
            put_str(d, need(&r.refund_of, "refund_of")?);
            put_str(d, need(&r.tier, "tier")?);
            put_str(d, need(&r.rules_version, "rules_version")?);
            put_i64(d, need_i(r.processed_at_ms, "processed_at_ms")?);
            put_str(d, r.explain.map_or("[]", |e| e.get()));
            let lots = r.lots.map(|l| l.get()).filter(|l| !l.trim().is_empty() && l.trim() != "[]").unwrap_or("");
            put_str(d, lots);
            d.extend_from_slice(&r.batch_index.unwrap_or(0).to_le_bytes());
            b.rows += 1;
            ident(&mut b.identity, &[mid, eid, kind]);
            for (board, score, version) in r.boards.iter().flatten() {
                boards.push((board.to_string(), mid.to_string(), *score, *version));
            }
        }
        Some("coupon_events") => {
            let b = &mut out[4];
            let d = &mut b.data;
            let (eid, mid, kind, cid) = (
                need(&r.event_id, "event_id")?,
                need(&r.member_id, "member_id")?,
                need(&r.kind, "kind")?,
                need(&r.coupon_id, "coupon_id")?,
            );
            put_str(d, eid);
            put_str(d, mid);
            put_str(d, kind);
            put_str(d, cid);
            put_str(d, r.template.as_deref().unwrap_or(""));
            put_str(d, r.trigger.as_deref().unwrap_or(""));
            put_str(d, r.coupon_kind.as_deref().unwrap_or(""));
            put_i64(d, r.face_value_fen.unwrap_or(0));
            put_i64(d, r.discount_fen.unwrap_or(0));
            put_i64(d, r.merchant_share_fen.unwrap_or(0));
            put_i64(d, r.issuer_share_fen.unwrap_or(0));
            put_i64(d, r.valid_until_ms.unwrap_or(0));
            put_i64(d, need_i(r.occurred_at_ms, "occurred_at_ms")?);
            put_i64(d, need_i(r.processed_at_ms, "processed_at_ms")?);
            put_str(d, r.rules_version.as_deref().unwrap_or(""));
            put_str(d, r.reason.as_deref().unwrap_or(""));
            put_str(d, r.bu_id.as_deref().unwrap_or(""));
            put_str(d, r.merchant_id.as_deref().unwrap_or(""));
            b.rows += 1;
            ident(&mut b.identity, &[cid, kind, eid]);
        }
        Some("game_draws") => {
            let b = &mut out[5];
            let d = &mut b.data;
            let (eid, mid, gid) = (need(&r.event_id, "event_id")?, need(&r.member_id, "member_id")?, need(&r.game_id, "game_id")?);
            put_str(d, eid);
            put_str(d, mid);
            put_str(d, gid);
            put_str(d, need(&r.game_kind, "game_kind")?);
            put_i64(d, need_i(r.draw, "draw")?);
            put_i64(d, need_i(r.odds_total, "odds_total")?);
            put_str(d, need(&r.odds, "odds")?);
            put_str(d, need(&r.prize_id, "prize_id")?);
            put_str(d, need(&r.outcome, "outcome")?);
            put_i64(d, need_i(r.cost_points, "cost_points")?);
            put_str(d, need(&r.rules_version, "rules_version")?);
            put_i64(d, need_i(r.occurred_at_ms, "occurred_at_ms")?);
            put_i64(d, need_i(r.processed_at_ms, "processed_at_ms")?);
            b.rows += 1;
            ident(&mut b.identity, &[gid, mid, eid]);
        }
        Some("stored_value") => {
            let b = &mut out[6];
            let d = &mut b.data;
            let (eid, mid) = (need(&r.event_id, "event_id")?, need(&r.member_id, "member_id")?);
            put_str(d, eid);
            put_str(d, mid);
            put_str(d, need(&r.kind, "kind")?);
            put_i64(d, need_i(r.amount_fen, "amount_fen")?);
            put_i64(d, need_i(r.balance_after_fen, "balance_after_fen")?);
            put_str(d, need(&r.bu_id, "bu_id")?);
            put_str(d, need(&r.merchant_id, "merchant_id")?);
            put_str(d, need(&r.category, "category")?);
            put_str(d, need(&r.channel, "channel")?);
            put_str(d, need(&r.refund_of, "refund_of")?);
            put_i64(d, need_i(r.occurred_at_ms, "occurred_at_ms")?);
            put_i64(d, need_i(r.processed_at_ms, "processed_at_ms")?);
            b.rows += 1;
            ident(&mut b.identity, &[mid, eid]);
        }
        Some("member_states") => {
            let b = &mut out[7];
            let d = &mut b.data;
            let mid = need(&r.member_id, "member_id")?;
            let seq = need_i(r.seq, "seq")?;
            let state = r.state.ok_or("field \"state\" is missing")?.get();
            put_str(d, mid);
            put_i64(d, seq);
            put_str(d, state);
            put_i64(d, need_i(r.processed_at_ms, "processed_at_ms")?);
            b.rows += 1;
            ident(&mut b.identity, &[mid, &seq.to_string()]);
        }
        Some("bindings") => {
            let b = &mut out[8];
            let d = &mut b.data;
            let key = need(&r.key, "key")?;
            let at = need_i(r.processed_at_ms, "processed_at_ms")?;
            put_str(d, key);
            put_str(d, need(&r.kind, "kind")?);
            put_str(d, r.member_id.as_deref().unwrap_or(""));
            put_str(d, r.value.as_deref().unwrap_or(""));
            put_i64(d, at);
            b.rows += 1;
            ident(&mut b.identity, &[key, &at.to_string()]);
        }
        Some("op_records") => {
            let b = &mut out[9];
            let d = &mut b.data;
            let (mid, eid) = (need(&r.member_id, "member_id")?, need(&r.event_id, "event_id")?);
            let at = need_i(r.processed_at_ms, "processed_at_ms")?;
            put_str(d, mid);
            put_str(d, eid);
            put_str(d, need(&r.record, "record")?);
            put_i64(d, at);
            b.rows += 1;
            ident(&mut b.identity, &[mid, eid, &at.to_string()]);
        }
        Some("held_refunds") => {
            let b = &mut out[10];
            let d = &mut b.data;
            let (mid, pid, eid, status) = (
                need(&r.member_id, "member_id")?,
                need(&r.payment_id, "payment_id")?,
                need(&r.event_id, "event_id")?,
                need(&r.status, "status")?,
            );
            put_str(d, mid);
            put_str(d, pid);
            put_str(d, eid);
            put_str(d, status);
            put_str(d, r.body.as_deref().unwrap_or(""));
            put_i64(d, need_i(r.deadline_ms, "deadline_ms")?);
            put_i64(d, need_i(r.processed_at_ms, "processed_at_ms")?);
            b.rows += 1;
            ident(&mut b.identity, &[mid, pid, eid, status]);
        }
        Some("audit_log") => {
            let b = &mut out[11];
            let d = &mut b.data;
            let rid = need(&r.event_id, "event_id")?;
            put_str(d, rid);
            put_i64(d, need_i(r.occurred_at_ms, "occurred_at_ms")?);
            put_str(d, need(&r.operator, "operator")?);
            put_str(d, need(&r.role, "role")?);
            put_str(d, r.scope.as_deref().unwrap_or(""));
            put_str(d, need(&r.action, "action")?);
            put_str(d, r.member_id.as_deref().unwrap_or(""));
            put_str(d, r.target.as_deref().unwrap_or(""));
            put_i64(d, need_i(r.http_status, "http_status")?);
            put_str(d, r.before.map_or("null", |v| v.get()));
            put_str(d, r.after.map_or("null", |v| v.get()));
            b.rows += 1;
            ident(&mut b.identity, &[rid]);
        }
        Some("receipts") => {
            let b = &mut out[12];
            let d = &mut b.data;
            let (rid, status, eid) = (need(&r.receipt_id, "receipt_id")?, need(&r.status, "status")?, need(&r.event_id, "event_id")?);
            put_str(d, rid);
            put_str(d, status);
            put_str(d, eid);
            put_str(d, need(&r.member_id, "member_id")?);
            put_str(d, need(&r.merchant_id, "merchant_id")?);
            put_str(d, r.bu_id.as_deref().unwrap_or(""));
            put_i64(d, need_i(r.amount_fen, "amount_fen")?);
            put_str(d, need(&r.receipt_no, "receipt_no")?);
            put_i64(d, need_i(r.purchased_at_ms, "purchased_at_ms")?);
            put_str(d, r.image.as_deref().unwrap_or(""));
            put_str(d, r.reason.as_deref().unwrap_or(""));
            put_str(d, r.operator.as_deref().unwrap_or(""));
            put_i64(d, need_i(r.submitted_at_ms, "submitted_at_ms")?);
            put_i64(d, need_i(r.occurred_at_ms, "occurred_at_ms")?);
            put_i64(d, need_i(r.processed_at_ms, "processed_at_ms")?);
            put_str(d, r.rules_version.as_deref().unwrap_or(""));
            b.rows += 1;
            ident(&mut b.identity, &[rid, status]);
        }
        Some(other) => return Err(format!("unknown table {other:?}")),
    }
    // The event's settlement lines (ledger, coupon and stored-value rows carry them).
    if let Some(lines) = &r.settlement {
        if table == Some("game_draws") {
            return Ok(());
        }
        let b = &mut out[2];
        let (eid, kind) = (need(&r.event_id, "event_id")?, need(&r.kind, "kind")?);
        for (n, line) in lines.iter().enumerate() {
            let d = &mut b.data;
            put_str(d, eid);
            put_str(d, kind);
            d.extend_from_slice(&u16::try_from(n).map_err(|_| "too many settlement lines")?.to_le_bytes());
            put_str(d, need(&r.member_id, "member_id")?);
            put_str(d, &line.account);
            put_i64(d, line.amount_fen);
            put_i64(d, line.points);
            put_str(d, need(&r.bu_id, "bu_id")?);
            put_str(d, need(&r.merchant_id, "merchant_id")?);
            put_i64(d, need_i(r.occurred_at_ms, "occurred_at_ms")?);
            put_i64(d, need_i(r.processed_at_ms, "processed_at_ms")?);
            b.rows += 1;
            ident(&mut b.identity, &[eid, kind, &n.to_string()]);
        }
    }
    Ok(())
}

/// A guest payment of a message.
fn encode_guest(g: &Guest, out: &mut [Block]) {
    let b = &mut out[1];
    let d = &mut b.data;
    put_str(d, &g.event_id);
    put_str(d, &g.type_);
    put_str(d, &g.payer_kind);
    put_str(d, &g.payer_id);
    put_i64(d, g.amount_fen);
    put_str(d, &g.bu_id);
    put_str(d, &g.format);
    put_str(d, &g.merchant_id);
    put_str(d, &g.category);
    put_str(d, &g.channel);
    put_i64(d, g.occurred_at_ms);
    put_str(d, &g.refund_of);
    put_i64(d, g.processed_at_ms);
    b.rows += 1;
    ident(&mut b.identity, &[&g.payer_id, &g.event_id, &g.type_]);
}

/// A parking session of a message.
fn encode_parking(p: &Parking, out: &mut [Block]) {
    let b = &mut out[3];
    let d = &mut b.data;
    put_str(d, &p.event_id);
    put_str(d, &p.status);
    put_str(d, &p.plate);
    put_str(d, &p.car_park);
    put_str(d, &p.member_id);
    put_i64(d, p.entry_ms);
    put_i64(d, p.exit_ms);
    for v in [p.minutes, p.gross_fee_fen, p.fee_fen, p.points_used, p.points_value_fen, p.due_fen] {
        put_i64(d, v);
    }
    put_str(d, p.deductions.get());
    b.rows += 1;
    ident(&mut b.identity, &[&p.car_park, &p.event_id]);
}

/// Encodes a batch of ledger-topic messages; a message that cannot be stored is left out
/// whole and named in `poison`.
pub fn encode(messages: &[&[u8]]) -> Blocks {
    let mut out = Blocks { tables: vec![Block::default(); TABLES.len()], ..Blocks::default() };
    for (i, raw) in messages.iter().enumerate() {
        // What the tables held before this message: a refused message is cut off whole.
        let marks: Vec<(usize, usize, usize)> = out.tables.iter().map(|b| (b.rows, b.data.len(), b.identity.len())).collect();
        let boards_mark = out.boards.len();
        let mut enc = Enc { tables: &mut out.tables, boards: &mut out.boards, refused: None };
        // The message's text checked as UTF-8 once, not string by string as it is read.
        let read = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8 text: {e}")).and_then(|text| {
            let mut de = serde_json::Deserializer::from_str(text);
            serde::Deserializer::deserialize_map(&mut de, MessageVisitor(&mut enc))
                .and_then(|()| de.end())
                .map_err(|e| e.to_string())
        });
        if let Err(e) = read {
            let reason = enc.refused.take().unwrap_or_else(|| format!("not a ledger message: {e}"));
            for (b, (rows, data, identity)) in out.tables.iter_mut().zip(marks) {
                b.rows = rows;
                b.data.truncate(data);
                b.identity.truncate(identity);
            }
            out.boards.truncate(boards_mark);
            out.poison.push((i, reason));
        }
    }
    // Only each member's newest score on a board matters (the consumer keeps the newest).
    let mut newest: rustc_hash::FxHashMap<(String, String), (i64, i64)> = rustc_hash::FxHashMap::default();
    for (board, member, score, version) in out.boards.drain(..) {
        let e = newest.entry((board, member)).or_insert((score, version));
        if version > e.1 {
            *e = (score, version);
        }
    }
    out.boards = newest.into_iter().map(|((b, m), (s, v))| (b, m, s, v)).collect();
    out.boards.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_str(d: &[u8], at: &mut usize) -> String {
        let (mut n, mut shift) = (0usize, 0);
        loop {
            let b = d[*at];
            *at += 1;
            n |= ((b & 0x7f) as usize) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let s = String::from_utf8(d[*at..*at + n].to_vec()).unwrap();
        *at += n;
        s
    }

    fn read_i64(d: &[u8], at: &mut usize) -> i64 {
        let v = i64::from_le_bytes(d[*at..*at + 8].try_into().unwrap());
        *at += 8;
        v
    }

    #[test]
    fn rows_become_rowbinary_blocks_and_poison_is_left_out_whole() {
        let good = serde_json::json!({
            "ledger": [
                {"boards": [["w:2026-W48:all", 120, 5]], "batch_index": 3, "event_id": "e1", "member_id": "m1",
                 "kind": "earn", "points": 120, "amount_fen": 12000, "bu_id": "mall", "format": "mall",
                 "merchant_id": "s", "category": "c", "channel": "wechat", "occurred_at_ms": 1000,
                 "refund_of": "", "tier": "normal", "rules_version": "v", "processed_at_ms": 2000,
                 "explain": [{"rule": "base", "points": 120}],
                 "settlement": [{"account": "gateway", "amount_fen": -12000, "points": 0},
                                {"account": "merchant:s", "amount_fen": 12000, "points": 0}]},
                {"table": "coupon_events", "event_id": "e1", "member_id": "m1", "kind": "issued",
                 "coupon_id": "c1", "occurred_at_ms": 1000, "processed_at_ms": 2000},
                {"table": "member_states", "member_id": "m1", "seq": 7, "processed_at_ms": 2000,
                 "state": {"lots": [[300, 120]], "coupons": [{"id": "c1"}]}},
                {"table": "bindings", "key": "plate:A1", "kind": "plate", "member_id": "m1", "value": "1",
                 "processed_at_ms": 2000},
                {"table": "op_records", "member_id": "m1", "event_id": "sv:k1", "record": "J|2000|{}",
                 "processed_at_ms": 2000},
                {"table": "held_refunds", "member_id": "m1", "payment_id": "p9", "event_id": "p9-rf",
                 "status": "held", "body": "{}", "deadline_ms": 9000, "processed_at_ms": 2000},
                {"table": "audit_log", "event_id": "req-1", "occurred_at_ms": 3000, "operator": "cs-li",
                 "role": "customer_service", "action": "member.adjust", "member_id": "m1", "http_status": 201,
                 "before": {"balance": 10}, "after": {"balance": 60}, "processed_at_ms": 3001},
                {"table": "receipts", "receipt_id": "rc-1", "status": "rejected", "event_id": "rc-1:d", "member_id": "m1",
                 "merchant_id": "s", "bu_id": "mall", "amount_fen": 880, "receipt_no": "R1", "purchased_at_ms": 500,
                 "image": "ab.jpg", "reason": "blurred", "operator": "cs-li", "submitted_at_ms": 900,
                 "occurred_at_ms": 1000, "processed_at_ms": 1000, "rules_version": "v"}
            ],
            "guests": [{"event_id": "g", "type": "payment", "payer_kind": "wechat", "payer_id": "o", "amount_fen": 5,
                        "bu_id": "mall", "format": "mall", "merchant_id": "s", "category": "c", "channel": "w",
                        "occurred_at_ms": 1, "refund_of": "", "processed_at_ms": 2}]
        })
        .to_string();
        let poison = br#"{"ledger": [{"event_id": "x", "member_id": "m", "kind": "earn"}]}"#;
        let latin1 = b"{\"ledger\": [{\"event_id\": \"caf\xe9\"}]}";
        let b = encode(&[good.as_bytes(), b"not json", poison, latin1]);
        assert_eq!(b.poison.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(b.poison[1].1.contains("\"points\" is missing"), "{:?}", b.poison);
        assert!(b.poison[2].1.starts_with("not a ledger message: not UTF-8 text"), "{:?}", b.poison);
        let rows: Vec<usize> = b.tables.iter().map(|t| t.rows).collect();
        assert_eq!(rows, vec![1, 1, 2, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1]);
        let rc = &b.tables[12].data;
        let mut at = 0;
        let head: Vec<String> = (0..5).map(|_| read_str(rc, &mut at)).collect();
        assert_eq!(head, ["rc-1", "rejected", "rc-1:d", "m1", "s"]);
        assert_eq!((read_str(rc, &mut at), read_i64(rc, &mut at)), ("mall".to_string(), 880));
        let au = &b.tables[11].data;
        let mut at = 0;
        assert_eq!(read_str(au, &mut at), "req-1");
        assert_eq!(read_i64(au, &mut at), 3000, "the audit row's own time, not the send's");
        let who: Vec<String> = (0..6).map(|_| read_str(au, &mut at)).collect();
        assert_eq!(who, ["cs-li", "customer_service", "", "member.adjust", "m1", ""]);
        assert_eq!(read_i64(au, &mut at), 201);
        assert_eq!([read_str(au, &mut at), read_str(au, &mut at)], [r#"{"balance":10}"#, r#"{"balance":60}"#]);
        assert_eq!(at, au.len());
        let st = &b.tables[7].data;
        let mut at = 0;
        assert_eq!(read_str(st, &mut at), "m1");
        assert_eq!(read_i64(st, &mut at), 7);
        let state: serde_json::Value = serde_json::from_str(&read_str(st, &mut at)).unwrap();
        assert_eq!(state["coupons"][0]["id"], "c1", "the state is stored whole, as JSON");
        let bd = &b.tables[8].data;
        let mut at = 0;
        let got: Vec<String> = (0..4).map(|_| read_str(bd, &mut at)).collect();
        assert_eq!(got, ["plate:A1", "plate", "m1", "1"]);
        assert_eq!(b.boards, vec![("w:2026-W48:all".into(), "m1".into(), 120, 5)]);
        let d = &b.tables[0].data;
        let mut at = 0;
        assert_eq!([read_str(d, &mut at), read_str(d, &mut at), read_str(d, &mut at)], ["e1", "m1", "earn"]);
        assert_eq!((read_i64(d, &mut at), read_i64(d, &mut at)), (120, 12000));
        for want in ["mall", "mall", "s", "c", "wechat"] {
            assert_eq!(read_str(d, &mut at), want);
        }
        assert_eq!(read_i64(d, &mut at), 1000);
        for want in ["", "normal", "v"] {
            assert_eq!(read_str(d, &mut at), want);
        }
        assert_eq!(read_i64(d, &mut at), 2000);
        assert_eq!(read_str(d, &mut at), r#"[{"points":120,"rule":"base"}]"#, "explain as it came");
        assert_eq!(read_str(d, &mut at), "");
        assert_eq!(u32::from_le_bytes(d[at..at + 4].try_into().unwrap()), 3);
        assert_eq!(at + 4, d.len());
        let long = "x".repeat(300);
        let mut v = Vec::new();
        put_str(&mut v, &long);
        assert_eq!(&v[..2], &[0xac, 0x02], "LEB128 length");
    }

    #[test]
    fn a_refused_message_leaves_nothing_behind_even_rows_read_before_the_refusal() {
        let row = |e: &str| {
            format!(
                r#"{{"boards": [["w:all", 5, 1]], "event_id": "{e}", "member_id": "m1", "kind": "earn", "points": 5,
                "amount_fen": 500, "bu_id": "mall", "format": "mall", "merchant_id": "s", "category": "c",
                "channel": "w", "occurred_at_ms": 1, "refund_of": "", "tier": "normal", "rules_version": "v",
                "processed_at_ms": 2, "settlement": [{{"account": "gateway", "amount_fen": -500, "points": 0}}]}}"#
            )
        };
        let good = format!(r#"{{"ledger": [{}], "guests": []}}"#, row("e1"));
        let alone = encode(&[good.as_bytes()]);
        let late_refusal = format!(r#"{{"ledger": [{}, {{"event_id": "e3", "member_id": "m1", "kind": "earn"}}]}}"#, row("e2"));
        let unknown_key = format!(r#"{{"ledger": [{}], "extra": []}}"#, row("e4"));
        let twice = format!(r#"{{"ledger": [{}], "ledger": []}}"#, row("e5"));
        let cut = format!(r#"{{"ledger": [{}], "guests": ["#, row("e6"));
        let b = encode(&[good.as_bytes(), late_refusal.as_bytes(), unknown_key.as_bytes(), twice.as_bytes(), cut.as_bytes()]);
        let reasons: Vec<(usize, &str)> = b.poison.iter().map(|(i, r)| (*i, r.as_str())).collect();
        assert_eq!(reasons[0], (1, r#"field "points" is missing"#));
        assert!(reasons[1].0 == 2 && reasons[1].1.contains("unknown field `extra`"), "{reasons:?}");
        assert!(reasons[2].0 == 3 && reasons[2].1.contains("duplicate field `ledger`"), "{reasons:?}");
        assert!(reasons[3].0 == 4 && reasons[3].1.starts_with("not a ledger message: EOF"), "{reasons:?}");
        for (with, without) in b.tables.iter().zip(&alone.tables) {
            assert_eq!((with.rows, &with.data, &with.identity), (without.rows, &without.data, &without.identity));
        }
        assert_eq!(b.boards, alone.boards);
        assert_eq!((alone.tables[0].rows, alone.tables[2].rows), (1, 1));
    }

    #[test]
    fn the_schema_check_names_what_differs() {
        let mut describe: Vec<(String, String, String)> = Vec::new();
        for t in TABLES {
            for (c, ty) in t.columns {
                let found = match ty {
                    Str => "String",
                    I64 => "Int64",
                    U16 => "UInt16",
                    U32 => "UInt32",
                    Ms => "DateTime64(3, 'UTC')",
                };
                describe.push((t.name.into(), (*c).into(), found.into()));
            }
        }
        assert!(schema_mismatches(&describe).is_empty());
        describe[3].2 = "Int32".into();
        describe.retain(|(t, c, _)| !(t == "game_draws" && c == "odds"));
        assert_eq!(schema_mismatches(&describe), vec!["ledger.points: is Int32, the sink writes I64", "game_draws.odds: missing"]);
    }
}
