//! The record Redis keeps of each applied event, for idempotency, refunds and the
//! member API: small, one line of '|'-separated fields, never the ledger rows.
//!
//! ```text
//! P|applied|digest|amount|points|used|r_amount|r_points|r_used|bu|merchant|category|format|commission|merchant_fen|offset|funded|at|tier_before|used_lots
//! R|applied|digest|amount|points          a refund
//! M|applied|digest|points                 a member event (registration, sign-in, review...)
//! J|applied|{json}                        an operation of the HTTP API (redemption, coupon, engagement)
//! ```
//!
//! `applied` is the apply time in ms (Redis' clock: the core writes `~` and the apply
//! function stamps it). `digest` is the low 48 bits of a 64-bit FNV-1a of the sender's
//! fields, in hex, so a second event with the same id and different content can be told
//! from a retry. The accrual appends `|@<token>`: the round outbox holding the rows.
//! Strings of a payment's booking (business unit, merchant, category, format) escape
//! `%` and `|` as `%25` and `%7C`. `used_lots` is `month:points` pairs joined by `;`
//! (the lots the points used at the till came from). Records from before `at` (15
//! fields) or before `tier_before`/`used_lots` (16) still read.

use crate::events::{Event, PaymentEvent};

/// Where a payment was booked and the split it booked: what its refunds reverse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Booking {
    pub bu_id: String,
    pub merchant_id: String,
    pub category: String,
    pub format: String,
    pub commission_fen: i64,
    pub merchant_fen: i64,
    pub offset_fen: i64,
    /// Fen the business unit funded the pool with for the points the payment earned.
    pub funded_fen: i64,
    /// When the payment happened (epoch ms; 0: not kept, a record from before): its day's
    /// spend, its month's task and its lot are what a refund takes back from.
    pub at_ms: i64,
    /// The tier the member held before the payment (empty: not kept, a record from
    /// before): a refund's tier re-check never goes below it.
    pub tier_before: String,
    /// The lots the points used at the till came from, oldest first: a refund gives
    /// them back there, with their own expiry.
    pub used_lots: Vec<[i64; 2]>,
}

/// What the store knows about an applied payment (the target of a refund).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PaymentRecord {
    pub amount_fen: i64,
    /// Points the payment earned (before points used at the till).
    pub points: i64,
    pub refunded_amount_fen: i64,
    pub refunded_points: i64,
    /// Points used at the till in this payment, and how many refunds gave back.
    pub used: i64,
    pub returned_used: i64,
}

/// A stored payment a refund names: its record and, when the store kept it, where
/// and with what split it was booked (a refund books there, never where its own
/// callback says, and reverses that split).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub payment: PaymentRecord,
    pub booking: Option<Booking>,
}

impl From<PaymentRecord> for Original {
    fn from(payment: PaymentRecord) -> Original {
        Original { payment, booking: None }
    }
}

// A record lives for one event's decision (decoded, updated, encoded): its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Payment { applied_ms: Option<i64>, digest: u64, payment: PaymentRecord, booking: Booking },
    Refund { applied_ms: Option<i64>, digest: u64, amount_fen: i64, points: i64 },
    Member { applied_ms: Option<i64>, digest: u64, points: i64 },
    Json { applied_ms: Option<i64>, json: String },
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bits: stable across versions and platforms (unlike std's hasher).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// FNV-1a over fields, each followed by a unit separator (no string is built).
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self.0 ^= 0x1f;
        self.0 = self.0.wrapping_mul(FNV_PRIME);
        self
    }

    fn int(&mut self, v: i64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
}

/// What the sender asserts of a payment or refund. A gateway's event (it names a payer)
/// leaves out what the ingress derives: the member the payer resolves to, and the time
/// (Alipay's falls back to its per-retry `notify_time`); the gateway signs the rest.
fn payment_digest(p: &PaymentEvent) -> u64 {
    let mut h = Fnv(FNV_OFFSET);
    let gateway = p.payer.is_some();
    h.bytes(p.kind.as_str().as_bytes()).bytes(if gateway { "" } else { p.member_id.as_deref().unwrap_or("") }.as_bytes());
    match &p.payer {
        Some((k, i)) => h.bytes(k.as_bytes()).bytes(i.as_bytes()),
        None => h.bytes(b"").bytes(b""),
    };
    h.int(p.amount_fen).bytes(p.bu_id.as_bytes()).bytes(p.merchant_id.as_bytes()).bytes(p.category.as_bytes());
    let at = if gateway { 0 } else { p.occurred_at_ms };
    h.bytes(p.channel.as_bytes()).int(at).bytes(p.refund_of.as_deref().unwrap_or("").as_bytes());
    h.bytes(p.hold_id.as_deref().unwrap_or("").as_bytes()).int(p.points_used).int(p.cumulative as i64);
    for c in &p.coupon_ids {
        h.bytes(c.as_bytes());
    }
    h.0
}

/// The digest of an event's content (what its sender said, not its id).
pub fn digest(ev: &Event) -> u64 {
    use crate::events::MemberKind as K;
    let h = match ev {
        Event::Payment(p) => payment_digest(p),
        // The engine's own events (schedules, the parking agent, the BI refresh) are stamped
        // with the time they were sent: a re-send is the same event.
        Event::Member(m) if matches!(m.kind, K::TierReview | K::WalletCheck | K::ParkingExit | K::Segments | K::CouponGrant | K::MergeIn | K::UnmergeIn) => {
            fnv1a(format!("{:?}", crate::events::MemberEvent { occurred_at_ms: 0, ..m.clone() }).as_bytes())
        }
        Event::Member(m) => fnv1a(format!("{:?}", m).as_bytes()),
    };
    h & 0xffff_ffff_ffff
}

/// The fields in which two events under one id differ (payments: each asserted field;
/// member events: their kind, time or the rest).
pub fn differing(a: &Event, b: &Event) -> Vec<&'static str> {
    match (a, b) {
        (Event::Payment(x), Event::Payment(y)) => {
            let gateway = x.payer.is_some() && y.payer.is_some();
            let checks: [(&'static str, bool); 13] = [
                ("type", x.kind != y.kind),
                ("member_id", !gateway && x.member_id != y.member_id),
                ("payer", x.payer != y.payer),
                ("amount_fen", x.amount_fen != y.amount_fen),
                ("bu_id", x.bu_id != y.bu_id),
                ("merchant_id", x.merchant_id != y.merchant_id),
                ("category", x.category != y.category),
                ("channel", x.channel != y.channel),
                ("occurred_at", !gateway && x.occurred_at_ms != y.occurred_at_ms),
                ("refund_of", x.refund_of != y.refund_of),
                ("hold_id", x.hold_id != y.hold_id),
                ("points_used", x.points_used != y.points_used || x.cumulative != y.cumulative),
                ("coupon_ids", x.coupon_ids != y.coupon_ids),
            ];
            checks.into_iter().filter(|c| c.1).map(|c| c.0).collect()
        }
        (Event::Member(x), Event::Member(y)) if x.kind != y.kind => vec!["type"],
        (Event::Member(x), Event::Member(y)) if x.occurred_at_ms != y.occurred_at_ms => vec!["occurred_at"],
        (Event::Member(_), Event::Member(_)) => Vec::new(),
        _ => vec!["type"],
    }
}

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['%', '|']) {
        s.replace('%', "%25").replace('|', "%7C").into()
    } else {
        s.into()
    }
}

fn unesc(s: &str) -> String {
    if s.contains('%') {
        s.replace("%7C", "|").replace("%25", "%")
    } else {
        s.to_string()
    }
}

fn push_applied(out: &mut String, a: Option<i64>) {
    match a {
        Some(v) => push_int(out, v),
        None => out.push('~'),
    }
}

/// An integer in decimal, without the formatting machinery.
pub fn push_int(out: &mut String, v: i64) {
    let mut buf = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(&buf[at..]).expect("digits"));
}

/// The digest as 12 hex digits (48 bits: a second event reusing an id is told apart all
/// but once in 2^48).
fn push_hex(out: &mut String, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..12).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize] as char);
    }
}

/// A record and the round outbox it names (`|@<token>` at its end, written by the accrual).
pub fn split_token(s: &str) -> (&str, Option<&str>) {
    if s.starts_with("J|") {
        return (s, None);
    }
    match s.rfind("|@") {
        Some(at) => (&s[..at], Some(&s[at + 2..])),
        None => (s, None),
    }
}

/// `month:points;month:points` (empty: none).
fn decode_lots(s: &str) -> Option<Vec<[i64; 2]>> {
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(';')
        .map(|l| {
            let (m, p) = l.split_once(':')?;
            Some([m.parse().ok()?, p.parse().ok()?])
        })
        .collect()
}

impl Record {
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(128);
        match self {
            Record::Payment { applied_ms, digest, payment: r, booking: b } => {
                out.push_str("P|");
                push_applied(&mut out, *applied_ms);
                out.push('|');
                push_hex(&mut out, *digest);
                for v in [r.amount_fen, r.points, r.used, r.refunded_amount_fen, r.refunded_points, r.returned_used] {
                    out.push('|');
                    push_int(&mut out, v);
                }
                for t in [&b.bu_id, &b.merchant_id, &b.category, &b.format] {
                    out.push('|');
                    out.push_str(&esc(t));
                }
                for v in [b.commission_fen, b.merchant_fen, b.offset_fen, b.funded_fen, b.at_ms] {
                    out.push('|');
                    push_int(&mut out, v);
                }
                out.push('|');
                out.push_str(&esc(&b.tier_before));
                out.push('|');
                for (i, l) in b.used_lots.iter().enumerate() {
                    if i > 0 {
                        out.push(';');
                    }
                    push_int(&mut out, l[0]);
                    out.push(':');
                    push_int(&mut out, l[1]);
                }
            }
            Record::Refund { applied_ms, digest, amount_fen, points } => {
                out.push_str("R|");
                push_applied(&mut out, *applied_ms);
                out.push('|');
                push_hex(&mut out, *digest);
                for v in [*amount_fen, *points] {
                    out.push('|');
                    push_int(&mut out, v);
                }
            }
            Record::Member { applied_ms, digest, points } => {
                out.push_str("M|");
                push_applied(&mut out, *applied_ms);
                out.push('|');
                push_hex(&mut out, *digest);
                out.push('|');
                push_int(&mut out, *points);
            }
            Record::Json { applied_ms, json } => {
                out.push_str("J|");
                push_applied(&mut out, *applied_ms);
                out.push('|');
                out.push_str(json);
            }
        }
        out
    }

    /// The record's fields by name, as the HTTP paths read them (strings, like a Redis
    /// hash): the one reading of the layout besides `decode`. An operation's JSON record
    /// gives `kind` "json" and its text under `json` (Python reads its own JSON).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let applied = |a: &Option<i64>| a.map(|v| v.to_string()).unwrap_or_default();
        match self {
            Record::Payment { applied_ms, digest, payment: r, booking: b } => vec![
                ("applied_at_ms", applied(applied_ms)),
                ("kind", "payment".into()),
                ("digest", format!("{digest:016x}")),
                ("amount", r.amount_fen.to_string()),
                ("points", r.points.to_string()),
                ("used", r.used.to_string()),
                ("refunded_amount", r.refunded_amount_fen.to_string()),
                ("refunded_points", r.refunded_points.to_string()),
                ("returned_used", r.returned_used.to_string()),
                ("bu_id", b.bu_id.clone()),
                ("merchant_id", b.merchant_id.clone()),
                ("category", b.category.clone()),
                ("format", b.format.clone()),
                ("at_ms", b.at_ms.to_string()),
            ],
            Record::Refund { applied_ms, digest, amount_fen, points } => vec![
                ("applied_at_ms", applied(applied_ms)),
                ("kind", "refund".into()),
                ("digest", format!("{digest:016x}")),
                ("amount", amount_fen.to_string()),
                ("points", points.to_string()),
            ],
            Record::Member { applied_ms, digest, points } => vec![
                ("applied_at_ms", applied(applied_ms)),
                ("kind", "member".into()),
                ("digest", format!("{digest:016x}")),
                ("points", points.to_string()),
            ],
            Record::Json { applied_ms, json } => {
                vec![("applied_at_ms", applied(applied_ms)), ("kind", "json".into()), ("json", json.clone())]
            }
        }
    }

    pub fn decode(s: &str) -> Result<Record, String> {
        let s = split_token(s).0;
        let bad = || format!("unreadable event record {:?}", s.chars().take(80).collect::<String>());
        let (kind, rest) = s.split_once('|').ok_or_else(bad)?;
        let (at, rest) = rest.split_once('|').ok_or_else(bad)?;
        let applied_ms = if at == "~" { None } else { Some(at.parse::<i64>().map_err(|_| bad())?) };
        if kind == "J" {
            return Ok(Record::Json { applied_ms, json: rest.to_string() });
        }
        let f: Vec<&str> = rest.split('|').collect();
        let num = |i: usize| -> Result<i64, String> { f.get(i).and_then(|v| v.parse().ok()).ok_or_else(bad) };
        let digest = u64::from_str_radix(f.first().ok_or_else(bad)?, 16).map_err(|_| bad())?;
        match (kind, f.len()) {
            ("P", 15 | 16 | 18) => Ok(Record::Payment {
                applied_ms,
                digest,
                payment: PaymentRecord {
                    amount_fen: num(1)?,
                    points: num(2)?,
                    used: num(3)?,
                    refunded_amount_fen: num(4)?,
                    refunded_points: num(5)?,
                    returned_used: num(6)?,
                },
                booking: Booking {
                    bu_id: unesc(f[7]),
                    merchant_id: unesc(f[8]),
                    category: unesc(f[9]),
                    format: unesc(f[10]),
                    commission_fen: num(11)?,
                    merchant_fen: num(12)?,
                    offset_fen: num(13)?,
                    funded_fen: num(14)?,
                    at_ms: if f.len() >= 16 { num(15)? } else { 0 },
                    tier_before: f.get(16).map(|t| unesc(t)).unwrap_or_default(),
                    used_lots: match f.get(17) {
                        Some(lots) => decode_lots(lots).ok_or_else(bad)?,
                        None => Vec::new(),
                    },
                },
            }),
            ("R", 3) => Ok(Record::Refund { applied_ms, digest, amount_fen: num(1)?, points: num(2)? }),
            ("M", 2) => Ok(Record::Member { applied_ms, digest, points: num(1)? }),
            _ => Err(bad()),
        }
    }

    /// The payment a refund can be made against, if this is one.
    pub fn as_payment(&self) -> Option<PaymentRecord> {
        match self {
            Record::Payment { payment, .. } if payment.amount_fen > 0 => Some(*payment),
            _ => None,
        }
    }

    /// The payment a refund can be made against, with where and how it was booked.
    pub fn as_original(&self) -> Option<Original> {
        match self {
            Record::Payment { payment, booking, .. } if payment.amount_fen > 0 => {
                Some(Original { payment: *payment, booking: Some(booking.clone()) })
            }
            _ => None,
        }
    }

    /// The fields in which `e` differs from the event this record was kept for, as far
    /// as the record tells (a payment's amount and booking; a refund's amount).
    pub fn differing(&self, e: &Event) -> Vec<&'static str> {
        match (self, e) {
            (Record::Payment { payment, booking, .. }, Event::Payment(p)) => {
                let mut out = Vec::new();
                if p.kind != crate::events::EventKind::Payment {
                    out.push("type");
                }
                if p.amount_fen != payment.amount_fen {
                    out.push("amount_fen");
                }
                if !booking.bu_id.is_empty() && p.bu_id != booking.bu_id {
                    out.push("bu_id");
                }
                if !booking.merchant_id.is_empty() && p.merchant_id != booking.merchant_id {
                    out.push("merchant_id");
                }
                out
            }
            (Record::Refund { amount_fen, .. }, Event::Payment(p)) if !p.cumulative && p.amount_fen != *amount_fen => {
                vec!["amount_fen"]
            }
            (Record::Member { .. }, Event::Payment(_)) | (Record::Payment { .. } | Record::Refund { .. }, Event::Member(_)) => {
                vec!["type"]
            }
            _ => Vec::new(),
        }
    }

    pub fn digest(&self) -> Option<u64> {
        match self {
            Record::Payment { digest, .. } | Record::Refund { digest, .. } | Record::Member { digest, .. } => {
                Some(*digest)
            }
            Record::Json { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_read_every_kind_with_escapes_and_the_outbox_token_undone() {
        let p = Record::Payment {
            applied_ms: Some(1_700_000_000_000),
            digest: 0xab,
            payment: PaymentRecord { amount_fen: 10_000, points: 100, used: 5, ..Default::default() },
            booking: Booking { bu_id: "mall|1".into(), merchant_id: "m%2".into(), category: "c".into(),
                               format: "mall".into(), ..Default::default() },
        };
        let text = format!("{}|@tok1", p.encode());
        let f: std::collections::HashMap<_, _> = Record::decode(&text).unwrap().fields().into_iter().collect();
        assert_eq!(f["kind"], "payment");
        assert_eq!(f["applied_at_ms"], "1700000000000");
        assert_eq!((f["amount"].as_str(), f["points"].as_str(), f["used"].as_str()), ("10000", "100", "5"));
        assert_eq!((f["bu_id"].as_str(), f["merchant_id"].as_str()), ("mall|1", "m%2"));
        let r = Record::Refund { applied_ms: None, digest: 1, amount_fen: 500, points: -5 }.encode();
        let f: std::collections::HashMap<_, _> = Record::decode(&r).unwrap().fields().into_iter().collect();
        assert_eq!((f["kind"].as_str(), f["applied_at_ms"].as_str(), f["points"].as_str()), ("refund", "", "-5"));
        let j = Record::decode("J|12|{\"kind\":\"redeem\"}").unwrap().fields();
        assert_eq!(j[2], ("json", "{\"kind\":\"redeem\"}".to_string()));
    }

    use super::*;

    #[test]
    fn records_round_trip() {
        let p = Record::Payment {
            applied_ms: Some(1_764_400_000_123),
            digest: 0xbeef_0000_0001,
            payment: PaymentRecord {
                amount_fen: 58_800,
                points: 1_176,
                refunded_amount_fen: 800,
                refunded_points: 16,
                used: 100,
                returned_used: 1,
            },
            booking: Booking {
                bu_id: "hotel-a".into(),
                merchant_id: "hotel-a-shop16".into(),
                category: "f|b 100%".into(),
                format: "hotel".into(),
                commission_fen: 3_234,
                merchant_fen: 55_566,
                offset_fen: 100,
                funded_fen: 588,
                at_ms: 1_764_399_000_000,
                tier_before: "normal".into(),
                used_lots: vec![[24_320, 60], [24_321, 40]],
            },
        };
        let s = p.encode();
        assert!(s.ends_with("|1764399000000|normal|24320:60;24321:40"), "{s}");
        // Records from before the tier and lots (16 fields) and the time (15) still read.
        let older = s.rsplit_once('|').unwrap().0.rsplit_once('|').unwrap().0;
        let Record::Payment { booking, .. } = Record::decode(older).unwrap() else { panic!() };
        assert_eq!((booking.at_ms, booking.tier_before.as_str(), booking.used_lots.len()), (1_764_399_000_000, "", 0));
        let oldest = older.rsplit_once('|').unwrap().0;
        let Record::Payment { booking, .. } = Record::decode(oldest).unwrap() else { panic!() };
        assert_eq!(booking.at_ms, 0);
        let none_used = Record::Payment { applied_ms: None, digest: 1, payment: PaymentRecord::default(), booking: Booking::default() };
        assert_eq!(Record::decode(&none_used.encode()).unwrap(), none_used);
        assert!(s.starts_with("P|1764400000123|beef00000001|58800|1176|100|800|16|1|hotel-a|"));
        assert!(s.contains("|f%7Cb 100%25|"));
        assert_eq!(Record::decode(&s).unwrap(), p);
        for r in [
            Record::Refund { applied_ms: None, digest: 7, amount_fen: 500, points: -10 },
            Record::Member { applied_ms: Some(5), digest: 0xffff_ffff_ffff, points: 0 },
            Record::Json { applied_ms: None, json: r#"{"kind":"redeem","result":"a|b"}"#.into() },
        ] {
            let s = r.encode();
            assert_eq!(Record::decode(&s).unwrap(), r, "{s}");
        }
        assert!(Record::Refund { applied_ms: None, digest: 1, amount_fen: 1, points: 1 }.encode().starts_with("R|~|"));
        let named = format!("{}|@ab12", p.encode());
        assert_eq!(split_token(&named), (p.encode().as_str(), Some("ab12")));
        assert_eq!(Record::decode(&named).unwrap(), p, "a record naming its outbox decodes the same");
        let bad_lots = s.replace("24320:60", "24320-60");
        for bad in ["", "P", "P|x|", "P|1|zz|1", "R|1|00|1", "Q|1|00|1|2", "M|1|00|1|2", bad_lots.as_str()] {
            assert!(Record::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn integers_print_like_rust() {
        for v in [0, 7, -7, 1_234_567_890_123, i64::MIN, i64::MAX] {
            let mut s = String::new();
            push_int(&mut s, v);
            assert_eq!(s, v.to_string());
        }
    }

    #[test]
    fn fnv_is_the_published_function() {
        // Test vectors of FNV-1a 64 (the reference implementation's).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
