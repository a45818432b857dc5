//! Payment and refund events: decoding and validation of the raw JSON a gateway
//! sends. The same validator runs at the ingress (to answer 400 with the field)
//! and in the agents (a poison message on the topic is rejected, not trusted).

use crate::errors::{CoreError, CoreResult};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Longest identifier we accept (event, member, BU, merchant, category, channel).
pub const MAX_ID_LEN: usize = 64;
/// Largest single amount: 10 billion yuan in fen. Far above any real payment, far
/// below where `amount * rate * multiplier` could overflow i128 arithmetic.
pub const MAX_AMOUNT_FEN: i64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Payment,
    Refund,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Payment => "payment",
            EventKind::Refund => "refund",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentEvent {
    pub event_id: String,
    pub kind: EventKind,
    /// Milliseconds since the Unix epoch (UTC).
    pub occurred_at_ms: i64,
    /// None for a guest payment (a payer that is not bound to a member).
    pub member_id: Option<String>,
    /// The external id the gateway named: (kind, id), e.g. ("wechat", openid).
    pub payer: Option<(String, String)>,
    pub bu_id: String,
    pub merchant_id: String,
    pub category: String,
    pub amount_fen: i64,
    pub channel: String,
    pub refund_of: Option<String>,
    /// A hold taken at the till for this checkout (points locked beforehand).
    pub hold_id: Option<String>,
    /// Points the member used at the till for this payment (0: none).
    pub points_used: i64,
    /// A refund whose `amount_fen` is the payment's refunded total after it (the
    /// way Alipay reports `refund_fee`), not the amount of this refund: the engine
    /// applies the difference to what is refunded already.
    pub cumulative: bool,
    /// Coupons the member used at the till for this payment (redeemed with it).
    pub coupon_ids: Vec<String>,
    /// A points-mall order whose cash part this payment pays (积分换购).
    pub mall_order: Option<String>,
    /// The till's receipt number (a receipt submitted for the same purchase earns nothing).
    pub receipt_no: Option<String>,
}

/// The channel of a payment made from an approved receipt (小票积分).
pub const RECEIPT_CHANNEL: &str = "receipt";

/// Identifiers end up inside Redis keys and ClickHouse rows: a closed alphabet
/// keeps hash tags (`{`, `}`), separators and control characters out.
pub fn check_id(field: &str, value: &str) -> CoreResult<()> {
    if value.is_empty() {
        return Err(CoreError::invalid_event(field, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(CoreError::invalid_event(
            field,
            format!(
                "must be at most {MAX_ID_LEN} characters, got {}",
                value.len()
            ),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@')))
    {
        return Err(CoreError::invalid_event(
            field,
            format!("character {bad:?} not allowed (use letters, digits, _ - . : @)"),
        ));
    }
    Ok(())
}

fn get_str<'a>(obj: &'a Map<String, Value>, field: &str) -> CoreResult<&'a str> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(CoreError::invalid_event(field, "is required")),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(other) => Err(CoreError::invalid_event(
            field,
            format!("must be a string, got {}", type_name(other)),
        )),
    }
}

fn get_id(obj: &Map<String, Value>, field: &str) -> CoreResult<String> {
    let s = get_str(obj, field)?;
    check_id(field, s)?;
    Ok(s.to_owned())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses an ISO-8601 / RFC 3339 timestamp that carries an offset; returns epoch ms.
pub fn parse_instant(field: &str, s: &str) -> CoreResult<i64> {
    crate::time::parse_instant_ms(s)
        .map_err(|e| CoreError::invalid_event(field, e.reason().to_string()))
}

fn get_amount(obj: &Map<String, Value>, field: &str) -> CoreResult<i64> {
    let v = obj
        .get(field)
        .filter(|v| !v.is_null())
        .ok_or_else(|| CoreError::invalid_event(field, "is required"))?;
    let n = match v {
        Value::Number(n) => n,
        other => {
            return Err(CoreError::invalid_event(
                field,
                format!("must be an integer number of fen, got {}", type_name(other)),
            ))
        }
    };
    let out_of_range = || CoreError::invalid_event(field, format!("is out of range: at most {MAX_AMOUNT_FEN} fen"));
    let amount = match (n.as_i64(), n.as_f64()) {
        (Some(a), _) => a,
        // An integer too large for 64 bits arrives as a float: it is out of range, not a decimal.
        (None, Some(f)) if n.is_f64() && f.fract() == 0.0 && f.abs() > MAX_AMOUNT_FEN as f64 => {
            return Err(out_of_range())
        }
        (None, _) if n.is_f64() => {
            return Err(CoreError::invalid_event(field, "must be an integer number of fen, not a decimal"))
        }
        (None, _) => return Err(out_of_range()),
    };
    if amount <= 0 {
        return Err(CoreError::invalid_event(
            field,
            format!("must be > 0, got {amount}"),
        ));
    }
    if amount > MAX_AMOUNT_FEN {
        return Err(CoreError::invalid_event(
            field,
            format!("must be at most {MAX_AMOUNT_FEN} fen, got {amount}"),
        ));
    }
    Ok(amount)
}

/// A JSON value whose objects may not repeat a key: `{"amount_fen":1,"amount_fen":9}` is
/// refused rather than read as 9 (another parser could read it as 1).
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        use serde::de::Error;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(A::Error::custom(format!("duplicate key `{key}`")));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

fn parse_object(raw: &[u8]) -> CoreResult<Map<String, Value>> {
    let StrictValue(value) = serde_json::from_slice(raw)
        .map_err(|e| CoreError::invalid_event("body", format!("is not valid JSON: {e}")))?;
    match value {
        Value::Object(obj) => Ok(obj),
        other => Err(CoreError::invalid_event(
            "body",
            format!("must be a JSON object, got {}", type_name(&other)),
        )),
    }
}

/// Refuses a body that is not one JSON object or repeats a key at any depth (the
/// typed requests then read it with serde).
pub fn check_unique_keys(raw: &[u8]) -> CoreResult<()> {
    parse_object(raw).map(|_| ())
}

pub use crate::time::format_instant;

/// The profile fields a registration or profile event may name as filled in (never their values).
pub const PROFILE_FIELDS: [&str; 8] = ["name", "gender", "birthday", "email", "address", "city", "occupation", "interests"];

/// The largest manual adjustment, either way.
pub const MAX_ADJUSTMENT: i64 = 10_000_000;

/// Payer kinds a payment may name instead of a member id.
pub const PAYER_KINDS: [&str; 6] = ["phone", "wechat", "alipay", "unionpay", "plate", "card"];

fn get_external_id(v: &Value, field: &str) -> CoreResult<(String, String)> {
    let obj = v.as_object().ok_or_else(|| {
        CoreError::invalid_event(field, "must be an object {\"kind\": ..., \"id\": ...}")
    })?;
    let kind = get_str(obj, "kind")
        .map_err(|e| CoreError::invalid_event(format!("{field}.kind"), e.reason()))?;
    if !PAYER_KINDS.contains(&kind) {
        return Err(CoreError::invalid_event(
            format!("{field}.kind"),
            format!("must be one of {}", PAYER_KINDS.join(", ")),
        ));
    }
    let id = get_str(obj, "id")
        .map_err(|e| CoreError::invalid_event(format!("{field}.id"), e.reason()))?;
    check_id(&format!("{field}.id"), id)?;
    Ok((kind.to_string(), id.to_string()))
}

fn get_payer(obj: &Map<String, Value>) -> CoreResult<Option<(String, String)>> {
    match obj.get("payer") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => get_external_id(v, "payer").map(Some),
    }
}

/// Any event of the engine: a payment or refund, or a member event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Payment(PaymentEvent),
    Member(MemberEvent),
}

impl Event {
    pub fn event_id(&self) -> &str {
        match self {
            Event::Payment(p) => &p.event_id,
            Event::Member(m) => &m.event_id,
        }
    }

    pub fn member_id(&self) -> Option<&str> {
        match self {
            Event::Payment(p) => p.member_id.as_deref(),
            Event::Member(m) => Some(&m.member_id),
        }
    }

    pub fn occurred_at_ms(&self) -> i64 {
        match self {
            Event::Payment(p) => p.occurred_at_ms,
            Event::Member(m) => m.occurred_at_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    Register,
    Profile,
    SignIn,
    Referral,
    Review,
    TierOverride,
    TierReview,
    /// The scheduled wallet check: release pending points, expire lots, remind.
    WalletCheck,
    /// A member's car left a car park (sent by the parking agent): marketing triggers only.
    ParkingExit,
    /// Tags and the segment computed by the BI refresh (`tags`, `segment`).
    Segments,
    /// An operator's manual adjustment (`points`, positive or negative, and a `reason`).
    Adjustment,
    /// An operator's coupon to an audience (`template`, `send_id`): once per member per send.
    CouponGrant,
    /// A scheduled campaign's push to a member of its audience (`campaign`, `run`): once
    /// per member per run, held by the frequency cap, once per dormancy for a win-back.
    CampaignPush,
    /// Merging accounts (`merge.rs`): out of the account merged away, into the one kept,
    /// and the undo's two halves.
    MergeOut,
    MergeIn,
    UnmergeOut,
    UnmergeIn,
    /// A personal data erasure (PIPL): the account's points forfeited, its profile cleared.
    Erase,
}

impl MemberKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::Register => "register",
            MemberKind::Profile => "profile",
            MemberKind::SignIn => "sign_in",
            MemberKind::Referral => "referral",
            MemberKind::Review => "review",
            MemberKind::TierOverride => "tier_override",
            MemberKind::TierReview => "tier_review",
            MemberKind::WalletCheck => "wallet_check",
            MemberKind::ParkingExit => "parking_exit",
            MemberKind::Segments => "segments",
            MemberKind::Adjustment => "adjustment",
            MemberKind::CouponGrant => "coupon_grant",
            MemberKind::CampaignPush => "campaign_push",
            MemberKind::MergeOut => "merge_out",
            MemberKind::MergeIn => "merge_in",
            MemberKind::UnmergeOut => "unmerge_out",
            MemberKind::UnmergeIn => "unmerge_in",
            MemberKind::Erase => "erase",
        }
    }

    fn parse(s: &str) -> Option<MemberKind> {
        Some(match s {
            "register" => MemberKind::Register,
            "profile" => MemberKind::Profile,
            "sign_in" => MemberKind::SignIn,
            "referral" => MemberKind::Referral,
            "review" => MemberKind::Review,
            "tier_override" => MemberKind::TierOverride,
            "tier_review" => MemberKind::TierReview,
            "wallet_check" => MemberKind::WalletCheck,
            "parking_exit" => MemberKind::ParkingExit,
            "segments" => MemberKind::Segments,
            "adjustment" => MemberKind::Adjustment,
            "coupon_grant" => MemberKind::CouponGrant,
            "campaign_push" => MemberKind::CampaignPush,
            "merge_out" => MemberKind::MergeOut,
            "merge_in" => MemberKind::MergeIn,
            "unmerge_out" => MemberKind::UnmergeOut,
            "unmerge_in" => MemberKind::UnmergeIn,
            "erase" => MemberKind::Erase,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEvent {
    pub event_id: String,
    pub kind: MemberKind,
    pub occurred_at_ms: i64,
    pub member_id: String,
    /// "MM-DD"
    pub birthday: Option<String>,
    pub tags: Option<Vec<String>>,
    pub external_ids: Vec<(String, String)>,
    pub referred_member_id: Option<String>,
    pub tier: Option<String>,
    pub until_ms: Option<i64>,
    /// The RFM segment of a `segments` event.
    pub segment: Option<String>,
    /// An adjustment's points (non-zero) and its reason.
    pub points: i64,
    pub reason: Option<String>,
    /// Registration and profile: the names of the profile fields filled in (never values).
    pub profile_fields: Vec<String>,
    /// Registration: the member who invited this one.
    pub referred_by: Option<String>,
    /// A coupon grant: (template, send id).
    pub grant: Option<(String, String)>,
    /// A scheduled campaign's push: (campaign id, run id).
    pub campaign: Option<(String, String)>,
    /// A merge event's merge id, other account, bundle and records.
    pub merge: Option<Box<crate::state::MergeSpec>>,
}

fn get_birthday(obj: &Map<String, Value>) -> CoreResult<Option<String>> {
    let s = match obj.get("birthday") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(CoreError::invalid_event(
                "birthday",
                "must be a string MM-DD or YYYY-MM-DD",
            ))
        }
    };
    let md = if s.len() == 10 { &s[5..] } else { s };
    let ok = md.len() == 5
        && md.as_bytes()[2] == b'-'
        && matches!(md[..2].parse::<u32>(), Ok(1..=12))
        && matches!(md[3..].parse::<u32>(), Ok(1..=31));
    if !ok {
        return Err(CoreError::invalid_event(
            "birthday",
            "must be MM-DD or YYYY-MM-DD",
        ));
    }
    Ok(Some(md.to_string()))
}

fn get_tags(obj: &Map<String, Value>) -> CoreResult<Option<Vec<String>>> {
    match obj.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.len() <= 50 => items
            .iter()
            .map(|t| match t {
                Value::String(s) => check_id("tags", s).map(|_| s.clone()),
                _ => Err(CoreError::invalid_event(
                    "tags",
                    "must be a list of strings",
                )),
            })
            .collect::<CoreResult<Vec<_>>>()
            .map(Some),
        Some(_) => Err(CoreError::invalid_event(
            "tags",
            "must be a list of at most 50 strings",
        )),
    }
}

/// At most this many event records travel with a `merge_in` (the refund horizon's).
const MAX_MERGE_RECORDS: usize = 20_000;

fn get_merge(obj: &Map<String, Value>, kind: MemberKind) -> CoreResult<Box<crate::state::MergeSpec>> {
    let merge_id = get_id(obj, "merge_id")?;
    let other = get_id(obj, "other_member_id")?;
    let bundle = match (kind, obj.get("bundle")) {
        (MemberKind::MergeOut, None | Some(Value::Null)) => None,
        (MemberKind::MergeOut, Some(_)) => {
            return Err(CoreError::invalid_event("bundle", "merge_out takes the account's whole wallet; it names none"))
        }
        (_, Some(v @ Value::Object(_))) => Some(
            serde_json::from_value::<crate::state::Bundle>(v.clone())
                .map_err(|e| CoreError::invalid_event("bundle", format!("not a merge bundle: {e}")))?,
        ),
        _ => return Err(CoreError::invalid_event("bundle", "must be the object the other half of the merge made")),
    };
    let records = match (kind, obj.get("records")) {
        (_, None | Some(Value::Null)) => Vec::new(),
        (MemberKind::MergeIn, Some(Value::Object(m))) if m.len() <= MAX_MERGE_RECORDS => m
            .iter()
            .map(|(id, v)| match v.as_str() {
                Some(r) if check_id("records", id).is_ok() && r.len() <= 4096 => Ok((id.clone(), r.to_string())),
                _ => Err(CoreError::invalid_event("records", "event id -> record text")),
            })
            .collect::<CoreResult<Vec<_>>>()?,
        _ => {
            return Err(CoreError::invalid_event(
                "records",
                format!("only merge_in carries records: an object of at most {MAX_MERGE_RECORDS}"),
            ))
        }
    };
    if other == get_id(obj, "member_id")? {
        return Err(CoreError::invalid_event("other_member_id", "an account cannot merge with itself"));
    }
    Ok(Box::new(crate::state::MergeSpec { merge_id, other, bundle, records }))
}

fn parse_member_event(
    obj: &Map<String, Value>,
    kind: MemberKind,
    event_id: String,
) -> CoreResult<MemberEvent> {
    let occurred_at_ms = parse_instant("occurred_at", get_str(obj, "occurred_at")?)?;
    let member_id = get_id(obj, "member_id")?;
    let external_ids = match obj.get("external_ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= 10 => items
            .iter()
            .map(|v| get_external_id(v, "external_ids[]"))
            .collect::<CoreResult<Vec<_>>>()?,
        Some(_) => {
            return Err(CoreError::invalid_event(
                "external_ids",
                "must be a list of at most 10 {kind, id}",
            ))
        }
    };
    let referred_member_id = match kind {
        MemberKind::Referral => Some(get_id(obj, "referred_member_id")?),
        _ => None,
    };
    let (tier, until_ms) = match kind {
        MemberKind::TierOverride => (
            Some(get_id(obj, "tier")?),
            Some(parse_instant("until", get_str(obj, "until")?)?),
        ),
        _ => (None, None),
    };
    let segment = match kind {
        MemberKind::Segments => Some(get_id(obj, "segment")?),
        _ => None,
    };
    let (points, reason) = match kind {
        MemberKind::Adjustment => {
            let points = match obj.get("points") {
                Some(Value::Number(n)) => {
                    n.as_i64().filter(|p| *p != 0 && p.abs() <= MAX_ADJUSTMENT)
                }
                _ => None,
            }
            .ok_or_else(|| {
                CoreError::invalid_event(
                    "points",
                    format!("must be a non-zero integer within ±{MAX_ADJUSTMENT}"),
                )
            })?;
            let reason = get_str(obj, "reason")?.trim();
            if !(3..=200).contains(&reason.chars().count()) {
                return Err(CoreError::invalid_event(
                    "reason",
                    "must say why, 3-200 characters",
                ));
            }
            (points, Some(reason.to_string()))
        }
        _ => (0, None),
    };
    let profile_fields = match (kind, obj.get("profile_fields")) {
        (_, None | Some(Value::Null)) => Vec::new(),
        (MemberKind::Register | MemberKind::Profile, Some(Value::Array(items))) if items.len() <= 20 => items
            .iter()
            .map(|v| match v.as_str() {
                Some(f) if PROFILE_FIELDS.contains(&f) => Ok(f.to_string()),
                _ => Err(CoreError::invalid_event(
                    "profile_fields",
                    format!("each must be one of {}", PROFILE_FIELDS.join(", ")),
                )),
            })
            .collect::<CoreResult<Vec<_>>>()?,
        _ => {
            return Err(CoreError::invalid_event(
                "profile_fields",
                "a list of field names, on register and profile events only",
            ))
        }
    };
    let referred_by = match (kind, obj.get("referred_by")) {
        (_, None | Some(Value::Null)) => None,
        (MemberKind::Register, Some(_)) => Some(get_id(obj, "referred_by")?),
        _ => return Err(CoreError::invalid_event("referred_by", "only a registration names its inviter")),
    };
    let grant = match kind {
        MemberKind::CouponGrant => Some((get_id(obj, "template")?, get_id(obj, "send_id")?)),
        _ => None,
    };
    let campaign = match kind {
        MemberKind::CampaignPush => Some((get_id(obj, "campaign")?, get_id(obj, "run")?)),
        _ => None,
    };
    let merge = match kind {
        MemberKind::MergeOut | MemberKind::MergeIn | MemberKind::UnmergeOut | MemberKind::UnmergeIn => {
            Some(get_merge(obj, kind)?)
        }
        _ => None,
    };
    Ok(MemberEvent {
        merge,
        campaign,
        profile_fields,
        referred_by,
        grant,
        points,
        reason,
        segment,
        event_id,
        kind,
        occurred_at_ms,
        member_id,
        birthday: get_birthday(obj)?,
        tags: get_tags(obj)?,
        external_ids,
        referred_member_id,
        tier,
        until_ms,
    })
}

/// The common case, decoded without building a generic JSON tree: a payment or
/// refund with a member id. Anything else (or anything wrong) returns None and
/// goes through the general parser, which names the field at fault.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)] // (so a repeated unknown key reaches the strict parser too)
struct FastPayment<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    occurred_at: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "crate::text::opt_cow")]
    member_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    bu_id: Cow<'a, str>,
    #[serde(borrow)]
    merchant_id: Cow<'a, str>,
    #[serde(borrow)]
    category: Cow<'a, str>,
    amount_fen: i64,
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "crate::text::opt_cow")]
    refund_of: Option<Cow<'a, str>>,
    #[serde(default)]
    payer: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    hold_id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    points_used: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    cumulative: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    coupon_ids: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    mall_order: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    receipt_no: Option<serde::de::IgnoredAny>,
}

fn parse_fast(raw: &[u8]) -> Option<PaymentEvent> {
    // UTF-8 checked once for the body, not string by string as serde reads it.
    let f: FastPayment = serde_json::from_str(std::str::from_utf8(raw).ok()?).ok()?;
    let kind = match f.kind.as_ref() {
        "payment" => EventKind::Payment,
        "refund" => EventKind::Refund,
        _ => return None,
    };
    let member_id = f.member_id?;
    if f.payer.is_some()
        || f.hold_id.is_some()
        || f.points_used.is_some()
        || f.cumulative.is_some()
        || f.coupon_ids.is_some()
        || f.mall_order.is_some()
        || f.receipt_no.is_some()
        || !(1..=MAX_AMOUNT_FEN).contains(&f.amount_fen)
    {
        return None;
    }
    for id in [
        &f.event_id,
        &member_id,
        &f.bu_id,
        &f.merchant_id,
        &f.category,
        &f.channel,
    ] {
        check_id("", id).ok()?;
    }
    let refund_of = match (kind, f.refund_of) {
        (EventKind::Refund, Some(of)) if check_id("", &of).is_ok() && of != f.event_id => {
            Some(of.into_owned())
        }
        (EventKind::Payment, None) => None,
        _ => return None,
    };
    Some(PaymentEvent {
        occurred_at_ms: crate::time::parse_instant_ms(&f.occurred_at).ok()?,
        event_id: f.event_id.into_owned(),
        kind,
        member_id: Some(member_id.into_owned()),
        payer: None,
        bu_id: f.bu_id.into_owned(),
        merchant_id: f.merchant_id.into_owned(),
        category: f.category.into_owned(),
        amount_fen: f.amount_fen,
        channel: f.channel.into_owned(),
        refund_of,
        hold_id: None,
        points_used: 0,
        cumulative: false,
        coupon_ids: Vec::new(),
        mall_order: None,
        receipt_no: None,
    })
}

/// Decodes and validates any event (payment, refund or member event).
pub fn parse_event(raw: &[u8]) -> CoreResult<Event> {
    if let Some(p) = parse_fast(raw) {
        return Ok(Event::Payment(p));
    }
    let obj = &parse_object(raw)?;
    let event_id = get_id(obj, "event_id")?;
    let type_ = get_str(obj, "type")?;
    if let Some(kind) = MemberKind::parse(type_) {
        return parse_member_event(obj, kind, event_id).map(Event::Member);
    }
    parse_payment_object(obj, event_id).map(Event::Payment)
}

/// Decodes and validates one payment or refund from its raw JSON bytes.
pub fn parse_payment_event(raw: &[u8]) -> CoreResult<PaymentEvent> {
    let obj = &parse_object(raw)?;
    let event_id = get_id(obj, "event_id")?;
    parse_payment_object(obj, event_id)
}

fn parse_payment_object(obj: &Map<String, Value>, event_id: String) -> CoreResult<PaymentEvent> {
    let kind = match get_str(obj, "type")? {
        "payment" => EventKind::Payment,
        "refund" => EventKind::Refund,
        other => {
            return Err(CoreError::invalid_event(
                "type",
                format!(
                    "must be payment, refund, register, profile, sign_in, referral, review, \
                     tier_override, tier_review, wallet_check or adjustment, got {other:?}"
                ),
            ))
        }
    };
    let occurred_at_ms = parse_instant("occurred_at", get_str(obj, "occurred_at")?)?;
    let payer = get_payer(obj)?;
    let member_id = match (obj.get("member_id"), &payer) {
        (None | Some(Value::Null), Some(_)) => None,
        _ => Some(get_id(obj, "member_id")?),
    };
    let bu_id = get_id(obj, "bu_id")?;
    let merchant_id = get_id(obj, "merchant_id")?;
    let category = get_id(obj, "category")?;
    let amount_fen = get_amount(obj, "amount_fen")?;
    let channel = get_id(obj, "channel")?;
    let refund_of = match (kind, obj.get("refund_of")) {
        (EventKind::Refund, _) => {
            let of = get_id(obj, "refund_of")?;
            if of == event_id {
                return Err(CoreError::invalid_event(
                    "refund_of",
                    "must name another event",
                ));
            }
            Some(of)
        }
        (EventKind::Payment, None | Some(Value::Null)) => None,
        (EventKind::Payment, Some(_)) => {
            return Err(CoreError::invalid_event(
                "refund_of",
                "is only allowed when type is \"refund\"",
            ))
        }
    };
    let hold_id = match obj.get("hold_id") {
        None | Some(Value::Null) => None,
        Some(_) => Some(get_id(obj, "hold_id")?),
    };
    let points_used = match obj.get("points_used") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_i64() {
            Some(n @ 0..=1_000_000_000) if kind == EventKind::Payment => n,
            _ => {
                return Err(CoreError::invalid_event(
                    "points_used",
                    "must be an integer from 0 to 1000000000, on payments only",
                ))
            }
        },
    };
    if hold_id.is_some() && points_used == 0 {
        return Err(CoreError::invalid_event(
            "points_used",
            "is required (> 0) with hold_id",
        ));
    }
    let cumulative = match obj.get("cumulative") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) if kind == EventKind::Refund => true,
        Some(_) => {
            return Err(CoreError::invalid_event(
                "cumulative",
                "must be true or false, and true only on refunds",
            ))
        }
    };
    let coupon_ids = match obj.get("coupon_ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= 10 && kind == EventKind::Payment => {
            let mut ids = Vec::with_capacity(items.len());
            for v in items {
                let Value::String(id) = v else {
                    return Err(CoreError::invalid_event(
                        "coupon_ids",
                        "must be a list of coupon ids",
                    ));
                };
                check_id("coupon_ids", id)?;
                if ids.contains(id) {
                    return Err(CoreError::invalid_event(
                        "coupon_ids",
                        format!("{id} is listed twice"),
                    ));
                }
                ids.push(id.clone());
            }
            ids
        }
        Some(_) => {
            return Err(CoreError::invalid_event(
                "coupon_ids",
                "must be a list of at most 10 coupon ids, on payments",
            ))
        }
    };
    let mall_order = match obj.get("mall_order") {
        None | Some(Value::Null) => None,
        Some(_) if kind == EventKind::Refund => {
            return Err(CoreError::invalid_event("mall_order", "is only allowed on payments"))
        }
        Some(_) => Some(get_id(obj, "mall_order")?),
    };
    let receipt_no = match obj.get("receipt_no") {
        None | Some(Value::Null) => None,
        Some(_) if kind == EventKind::Refund => {
            return Err(CoreError::invalid_event("receipt_no", "is only allowed on payments"))
        }
        Some(_) => Some(get_id(obj, "receipt_no")?),
    };
    Ok(PaymentEvent {
        coupon_ids,
        mall_order,
        receipt_no,
        cumulative,
        hold_id,
        points_used,
        event_id,
        kind,
        occurred_at_ms,
        member_id,
        payer,
        bu_id,
        merchant_id,
        category,
        amount_fen,
        channel,
        refund_of,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(overrides: &[(&str, Value)]) -> Vec<u8> {
        let mut obj: Map<String, Value> = serde_json::from_str(
            r#"{"event_id":"tx-1","type":"payment","occurred_at":"2026-11-23T10:15:00+08:00",
                "member_id":"m-1","bu_id":"mall-01","merchant_id":"shop-7","category":"fashion",
                "amount_fen":12345,"channel":"wechat"}"#,
        )
        .unwrap();
        for (k, v) in overrides {
            if v.is_null() {
                obj.remove(*k);
            } else {
                obj.insert((*k).to_string(), v.clone());
            }
        }
        serde_json::to_vec(&Value::Object(obj)).unwrap()
    }

    fn err_field(raw: &[u8]) -> String {
        parse_payment_event(raw).unwrap_err().field().to_string()
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let ok = body(&[]);
        let mut dup = ok[..ok.len() - 1].to_vec();
        dup.extend_from_slice(br#","amount_fen":5}"#);
        assert_eq!(err_field(&dup), "body");
        let nested = br#"{"event_id":"e1","type":"payment","occurred_at":"2026-11-23T10:00:00+08:00","bu_id":"sh-mall","merchant_id":"m","category":"c","amount_fen":100,"channel":"x","payer":{"kind":"wechat","kind":"phone","id":"1"}}"#;
        assert_eq!(err_field(nested), "body");
    }

    #[test]
    fn parses_a_valid_payment() {
        let ev = parse_payment_event(&body(&[])).unwrap();
        assert_eq!(ev.amount_fen, 12345);
        assert_eq!(ev.kind, EventKind::Payment);
        // 10:15 at +08:00 is 02:15 UTC.
        assert_eq!(ev.occurred_at_ms, 1_795_400_100_000);
        assert_eq!(ev.refund_of, None);
    }

    #[test]
    fn names_the_field_that_is_wrong() {
        assert_eq!(
            err_field(&body(&[("amount_fen", Value::from(1.5))])),
            "amount_fen"
        );
        assert_eq!(
            err_field(&body(&[("amount_fen", Value::from(0))])),
            "amount_fen"
        );
        assert_eq!(
            err_field(&body(&[("amount_fen", Value::from("100"))])),
            "amount_fen"
        );
        assert_eq!(err_field(&body(&[("member_id", Value::Null)])), "member_id");
        assert_eq!(
            err_field(&body(&[("member_id", Value::from("{x}"))])),
            "member_id"
        );
        assert_eq!(err_field(&body(&[("type", Value::from("gift"))])), "type");
        assert_eq!(
            err_field(&body(&[("occurred_at", Value::from("2026-11-23 10:15"))])),
            "occurred_at"
        );
        assert_eq!(
            err_field(&body(&[("refund_of", Value::from("tx-0"))])),
            "refund_of"
        );
        assert_eq!(
            err_field(&body(&[("type", Value::from("refund"))])),
            "refund_of"
        );
        assert_eq!(err_field(b"[1,2]"), "body");
        assert_eq!(err_field(b"{not json"), "body");
        assert_eq!(
            err_field(&body(&[("amount_fen", Value::from(u64::MAX))])),
            "amount_fen"
        );
    }

    #[test]
    fn parses_a_refund() {
        let ev = parse_payment_event(&body(&[
            ("type", Value::from("refund")),
            ("event_id", Value::from("rf-1")),
            ("refund_of", Value::from("tx-1")),
        ]))
        .unwrap();
        assert_eq!(ev.kind, EventKind::Refund);
        assert_eq!(ev.refund_of.as_deref(), Some("tx-1"));
        assert!(!ev.cumulative);
    }

    #[test]
    fn cumulative_is_for_refunds_only() {
        let refund = [
            ("type", Value::from("refund")),
            ("event_id", Value::from("rf-1")),
            ("refund_of", Value::from("tx-1")),
            ("cumulative", Value::from(true)),
        ];
        assert!(parse_event(&body(&refund))
            .is_ok_and(|e| matches!(e, Event::Payment(p) if p.cumulative)));
        assert_eq!(
            err_field(&body(&[("cumulative", Value::from(true))])),
            "cumulative"
        );
        assert_eq!(
            err_field(&body(&[("cumulative", Value::from("yes"))])),
            "cumulative"
        );
    }
}

#[cfg(test)]
mod fast_tests {
    use super::*;

    #[test]
    fn the_fast_path_takes_ordinary_payments_and_agrees_with_the_general_parser() {
        let body = br#"{"event_id":"e1","type":"payment","occurred_at":"2026-11-23T10:00:00+08:00","member_id":"m-1","bu_id":"bu-mall","merchant_id":"shop-001","category":"food","amount_fen":12345,"channel":"wechat"}"#;
        let fast = parse_fast(body).expect("fast path");
        let obj = parse_object(body).unwrap();
        let slow = parse_payment_object(&obj, "e1".into()).unwrap();
        assert_eq!(fast, slow);
        let refund = br#"{"event_id":"r1","type":"refund","occurred_at":"2026-11-23T10:00:00+08:00","member_id":"m-1","bu_id":"b","merchant_id":"s","category":"c","amount_fen":5,"channel":"w","refund_of":"e1"}"#;
        assert!(parse_fast(refund).is_some());
        // Anything unusual goes the general way (and gets its field-named error there).
        assert!(parse_fast(br#"{"event_id":"e1","type":"payment","amount_fen":1.5}"#).is_none());
    }

    /// xorshift64*: a small seeded generator, so the property runs the same cases everywhere.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[(self.next() % xs.len() as u64) as usize]
        }
        fn chance(&mut self, pct: u64) -> bool {
            self.next() % 100 < pct
        }
    }

    /// A payment-like body: the usual fields in any order, each sometimes missing, odd,
    /// escaped, repeated or spaced, and sometimes a field the fast path leaves to the other.
    fn body(g: &mut Gen) -> String {
        let fields: [(&str, &[&str]); 10] = [
            ("event_id", &[r#""e1""#, r#""tx-9""#, r#""""#, r#""a b""#, "7", r#""\u0065\u0031""#]),
            ("type", &[r#""payment""#, r#""refund""#, r#""sign_in""#, r#""Payment""#, "null"]),
            ("occurred_at", &[r#""2026-11-23T10:00:00+08:00""#, r#""2026-11-23T10:00:00Z""#,
                              r#""2026-06-30T23:59:60Z""#, r#""2026-11-23 10:00""#, r#""9999-12-31T23:59:59Z""#]),
            ("member_id", &[r#""m-1""#, r#""m 1""#, "null", r#""m-\u0031""#]),
            ("bu_id", &[r#""sh-mall""#, r#""""#, "1"]),
            ("merchant_id", &[r#""s1""#, r#""s/1""#]),
            ("category", &[r#""food""#, r#""f|b""#]),
            ("amount_fen", &["12345", "0", "-1", "1.5", "1e3", r#""100""#, "1000000000000", "1000000000001",
                             "9223372036854775808"]),
            ("channel", &[r#""wechat""#, r#""""#]),
            ("refund_of", &["null", r#""e0""#, r#""e1""#]),
        ];
        let extras: [(&str, &[&str]); 5] = [
            ("payer", &[r#"{"kind":"wechat","id":"o-1"}"#]),
            ("points_used", &["100"]),
            ("hold_id", &[r#""h1""#]),
            ("coupon_ids", &[r#"["c1"]"#]),
            ("note", &[r#""x""#]),
        ];
        let mut parts: Vec<String> = Vec::new();
        for (name, values) in fields {
            let value = if g.chance(93) { values[0] } else { g.pick(values) };
            if g.chance(4) {
                continue;
            }
            parts.push(format!("\"{name}\":{value}"));
            if g.chance(2) {
                parts.push(format!("\"{name}\":{}", g.pick(values)));
            }
        }
        for (name, values) in extras {
            if g.chance(5) {
                parts.push(format!("\"{name}\":{}", g.pick(values)));
            }
        }
        for i in (1..parts.len()).rev() {
            if g.chance(20) {
                let j = (g.next() % (i as u64 + 1)) as usize;
                parts.swap(i, j);
            }
        }
        let sep = if g.chance(20) { " , " } else { "," };
        format!("{{{}}}", parts.join(sep))
    }

    #[test]
    fn whatever_the_fast_path_takes_the_general_parser_reads_the_same() {
        let mut g = Gen(0x5eed_2026_1129);
        let (mut fast_hits, mut general_only) = (0, 0);
        for _ in 0..20_000 {
            let raw = body(&mut g);
            let general = parse_object(raw.as_bytes())
                .and_then(|obj| get_id(&obj, "event_id").and_then(|id| parse_payment_object(&obj, id)));
            match parse_fast(raw.as_bytes()) {
                Some(fast) => {
                    assert_eq!(general.as_ref().ok(), Some(&fast), "{raw}");
                    fast_hits += 1;
                }
                None => general_only += usize::from(general.is_ok()),
            }
        }
        // Both ways are exercised: the fast path takes most good bodies, not all.
        assert!(fast_hits > 2_000 && general_only > 50, "{fast_hits} fast, {general_only} general only");
    }
}
