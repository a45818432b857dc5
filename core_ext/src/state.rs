//! A member's state as the core needs it: kept in Redis as JSON next to the
//! balance, read before a batch, threaded through it, written back atomically.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero32(v: &i32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemberState {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered_at_ms: Option<i64>,
    /// "MM-DD"
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birthday: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The tier earned by qualification (None: the default tier).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier_since_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_until_ms: Option<i64>,
    /// Qualification buckets: [month_index, points, spend_fen], oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub qual: Vec<[i64; 3]>,
    #[serde(skip_serializing_if = "is_zero")]
    pub day: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub earned_day: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend_last_day: Option<i64>,
    #[serde(skip_serializing_if = "is_zero")]
    pub spend_streak: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign_in_last_day: Option<i64>,
    #[serde(skip_serializing_if = "is_zero")]
    pub sign_in_streak: i64,
    #[serde(skip_serializing_if = "is_zero32")]
    pub task_month: i32,
    #[serde(skip_serializing_if = "is_zero")]
    pub task_spend_fen: i64,
    #[serde(skip_serializing_if = "is_false")]
    pub task_done: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub review_day: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub reviews_today: i64,
    #[serde(skip_serializing_if = "is_zero32")]
    pub referral_month: i32,
    #[serde(skip_serializing_if = "is_zero")]
    pub referrals_month: i64,
    #[serde(skip_serializing_if = "is_zero32")]
    pub birthday_bonus_year: i32,
    /// When the member was last pushed something counted by `[frequency_cap]` (coupons of
    /// triggers and scheduled campaigns, campaign notices), oldest first, within the cap's window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pushes_at: Vec<i64>,
    /// Scheduled campaigns that reached this member, and when (last time each).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub campaigns_reached: BTreeMap<String, i64>,
    /// Points each campaign has given this member (for per-member caps).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub campaigns: BTreeMap<String, i64>,
    /// Available points by the month they were earned: [month_index, points], oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lots: Vec<[i64; 2]>,
    /// Points waiting for their payment's return window to pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Pending>,
    /// Points the balance is below zero by (refund shortfall, policy allow_negative):
    /// earnings repay it before they reach a lot.
    #[serde(skip_serializing_if = "is_zero")]
    pub neg: i64,
    /// Points a refund could not take back (policy record_debt): taken from later earnings.
    #[serde(skip_serializing_if = "is_zero")]
    pub owed: i64,
    /// Points locked for a checkout at the till, by hold id.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub holds: BTreeMap<String, Hold>,
    /// Today's spend per business unit (for free parking): the day it is for.
    #[serde(skip_serializing_if = "is_zero")]
    pub spend_day: i64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub spend_by_bu: BTreeMap<String, i64>,
    /// Month index of the newest lot an expiry reminder was sent for.
    #[serde(skip_serializing_if = "is_zero")]
    pub reminded_month: i64,
    /// The coupon wallet: active coupons and the newest used or expired ones.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub coupons: Vec<Coupon>,
    /// For marketing triggers: the last payment, the formats paid in, spend by local day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_paid_ms: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub formats_seen: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub spend_days: Vec<[i64; 2]>,
    #[serde(skip_serializing_if = "is_zero32")]
    pub birthday_coupon_year: i32,
    /// Tags and the RFM segment the BI refresh computed (`loyalty segments refresh`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segment_tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// Games: game id -> [local day, plays that day].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub game_plays: BTreeMap<String, [i64; 2]>,
    /// Card collections: game id -> card -> cards held.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cards: BTreeMap<String, BTreeMap<String, i64>>,
    /// Sign-in plans: plan id -> the member's cycle and contract.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub plans: BTreeMap<String, PlanState>,
    /// Partner exchanges sent out and not yet confirmed, by exchange id.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub exchanges: BTreeMap<String, PendingExchange>,
    /// partner id -> [local day, points sent out that day, points received that day].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub exchange_days: BTreeMap<String, [i64; 3]>,
    /// Stored value (prepaid money, fen), kept apart from points.
    #[serde(skip_serializing_if = "is_zero")]
    pub sv_fen: i64,
    /// Recent earnings where a burn-side promotion looks at origin (unspent by promotions).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earned_recent: Vec<Earned>,
    /// Profile fields the member has filled in, and the profile rewards given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profile_fields: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profile_rewarded: Vec<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub referrals_total: i64,
    /// Leaderboard scores of the current periods (`boards.rs`): board -> points.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub boards: BTreeMap<String, i64>,
    /// Points-mall purchases: item -> [local day, bought that day, bought in total].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub mall_bought: BTreeMap<String, [i64; 3]>,
    /// Points-mall orders (`mall.rs`): the open ones and the last closed ones.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub orders: BTreeMap<String, Order>,
    /// Receipts the member submitted (`receipts.rs`): the pending ones and the last decided.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub receipts: BTreeMap<String, Receipt>,
    /// Recent payments that earned, noted while the member has receipts (a receipt and a
    /// payment of one purchase earn once). Kept for the receipts' maximum age, at most 100.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub purchases: Vec<Purchase>,
    /// Members' events signed up for (`signups.rs`), by event: the open ones and the last few.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub signups: BTreeMap<String, Signup>,
    /// A no-show's ban from signing up for events, until this time.
    #[serde(skip_serializing_if = "is_zero")]
    pub no_show_until_ms: i64,
    /// Receipts approved automatically: [local day, how many that day].
    #[serde(skip_serializing_if = "is_zero_pair")]
    pub receipts_auto: [i64; 2],
    /// This account was merged into another (`merge.rs`): events for it go there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged: Option<MergedInto>,
    /// Accounts merged into this one, by merge id (kept for the undo window).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub merges_in: BTreeMap<String, MergeMark>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanState {
    /// Local day the current cycle started.
    pub start_day: i64,
    /// Days of the cycle signed in (bit i: start_day + i), and made up for points.
    pub signed: u32,
    pub made_up: u32,
    pub makeups: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractState {
    pub stake: i64,
    pub start_day: i64,
    /// Days of the contract period signed in (bit i: start_day + i).
    pub signed: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingExchange {
    pub partner: String,
    pub points: i64,
    pub units: i64,
    pub lots: Vec<[i64; 2]>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Earned {
    pub event_id: String,
    pub day: i64,
    pub bu: String,
    pub points: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    pub id: String,
    pub template: String,
    pub trigger: String,
    pub issued_at_ms: i64,
    pub valid_from_ms: i64,
    pub valid_until_ms: i64,
    /// active | used | expired
    pub status: String,
    /// The payment (or redemption) that used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by: Option<String>,
    /// Where it was used, the discount, and the part of it the business unit pays the merchant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bu_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub merchant_id: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub discount_fen: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub issuer_share_fen: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub points: i64,
    pub lots: Vec<[i64; 2]>,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub event_id: String,
    pub release_at_ms: i64,
    pub points: i64,
    pub month: i64,
}

impl MemberState {
    /// What the balance must be: lots + pending + held - neg (the invariant every movement keeps).
    pub fn wallet_total(&self) -> i64 {
        self.lots.iter().map(|l| l[1]).sum::<i64>()
            + self.pending.iter().map(|p| p.points).sum::<i64>()
            + self.holds.values().map(|h| h.points).sum::<i64>()
            - self.neg
    }

    pub fn from_json(s: Option<&str>) -> Result<MemberState, String> {
        match s {
            None | Some("") => Ok(MemberState::default()),
            Some(s) => serde_json::from_str(s).map_err(|e| format!("stored member state is not valid: {e}")),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("member state always serialises")
    }

    /// Whether the member has any of `wanted` among their own tags or the computed ones.
    pub fn has_any_tag(&self, wanted: &rustc_hash::FxHashSet<String>) -> bool {
        self.tags.iter().chain(&self.segment_tags).any(|t| wanted.contains(t))
    }

    /// Birthday month (1..=12), if a birthday is known.
    pub fn birthday_month(&self) -> Option<u32> {
        self.birthday.as_deref()?.get(..2)?.parse().ok()
    }

    /// Points and spend over the `window` months ending with `month_index`.
    pub fn window_totals(&self, month_index: i32, window: i32) -> (i64, i64) {
        let from = (month_index - window + 1) as i64;
        self.qual
            .iter()
            .filter(|b| b[0] >= from && b[0] <= month_index as i64)
            .fold((0, 0), |(p, s), b| (p + b[1], s + b[2]))
    }

    /// Adds to the bucket of `month_index` and drops buckets older than the window.
    pub fn add_qualification(&mut self, month_index: i32, window: i32, points: i64, spend: i64) {
        let m = month_index as i64;
        match self.qual.iter_mut().find(|b| b[0] == m) {
            Some(b) => {
                b[1] += points;
                b[2] += spend;
            }
            None => {
                self.qual.push([m, points, spend]);
                self.qual.sort_by_key(|b| b[0]);
            }
        }
        let oldest = m - window as i64 + 1;
        self.qual.retain(|b| b[0] >= oldest);
    }
}

// ---- merging accounts (the operations are in merge.rs) ----

/// What a merge moves from one account to the other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bundle {
    pub lots: Vec<[i64; 2]>,
    pub pending: Vec<Pending>,
    pub qual: Vec<[i64; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier_since_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_at_ms: Option<i64>,
    pub coupons: Vec<Coupon>,
    pub neg: i64,
    pub owed: i64,
    pub tags: Vec<String>,
}

impl Bundle {
    /// The balance the bundle carries: lots and pending points, less a negative balance.
    pub fn points(&self) -> i64 {
        self.lots.iter().map(|l| l[1]).sum::<i64>() + self.pending.iter().map(|p| p.points).sum::<i64>() - self.neg
    }
}

/// On the account merged away: where it went, and what went (until an undo brings it back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedInto {
    pub merge_id: String,
    pub into: String,
    pub at_ms: i64,
    pub bundle: Bundle,
}

/// On the account kept, per merge: where it came from, its own tier before, and once
/// undone, what the undo took back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MergeMark {
    pub from: String,
    pub at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier_since_before: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_at_before: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undone: Option<Bundle>,
}

/// A merge event's own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeSpec {
    pub merge_id: String,
    /// The other account: `merge_out`'s target, `merge_in`'s source, and so on.
    pub other: String,
    /// What moves (`merge_in`, `unmerge_in`: what the other half took; `unmerge_out`:
    /// what the merge brought).
    pub bundle: Option<Bundle>,
    /// `merge_in`: the merged account's event records (id, record).
    pub records: Vec<(String, String)>,
}

fn is_zero_pair(p: &[i64; 2]) -> bool {
    p[1] == 0
}

/// A sign-up for a members' event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Signup {
    /// registered | waitlisted | cancelled | attended | no_show
    pub status: String,
    /// Points the seat cost, and the lots they came from (a cancellation gives them back).
    pub points: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lots: Vec<[i64; 2]>,
    pub signed_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A receipt submitted for points (小票积分).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Receipt {
    pub merchant_id: String,
    pub receipt_no: String,
    pub amount_fen: i64,
    pub purchased_at_ms: i64,
    pub image: String,
    /// pending | approved | rejected
    pub status: String,
    pub submitted_at_ms: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub decided_at_ms: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A payment that earned, for a member who has receipts: (local day, merchant, amount,
/// receipt number or "", event id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase(pub i64, pub String, pub i64, pub String, pub String);

/// Whether a receipt and a payment are one purchase: the same merchant and receipt number
/// when both carry one, else the same merchant, amount and local day.
pub fn same_purchase(a: (i64, &str, i64, &str), b: (i64, &str, i64, &str)) -> bool {
    if a.1 != b.1 {
        return false;
    }
    if !a.3.is_empty() && !b.3.is_empty() {
        return a.3 == b.3;
    }
    a.0 == b.0 && a.2 == b.2
}

impl MemberState {
    /// The payment (of those noted) that was this receipt's purchase, if any.
    pub fn payment_like(&self, day: i64, merchant: &str, amount_fen: i64, receipt_no: &str) -> Option<&Purchase> {
        self.purchases.iter().find(|p| same_purchase((p.0, &p.1, p.2, &p.3), (day, merchant, amount_fen, receipt_no)))
    }

    /// Notes a payment that earned; forgets those older than `keep_days` (and beyond 100).
    pub fn note_purchase(&mut self, p: Purchase, keep_days: i64) {
        let oldest = p.0 - keep_days;
        self.purchases.retain(|x| x.0 >= oldest);
        self.purchases.push(p);
        if self.purchases.len() > 100 {
            let extra = self.purchases.len() - 100;
            self.purchases.drain(..extra);
        }
    }
}

impl Order {
    /// A payment of `amount_fen` pays the cash part (积分换购) of this order: an order awaiting
    /// it, paid in full, is placed, to be collected within `collect_ms`. Err: why not.
    pub fn pay_cash(&mut self, payment_id: &str, amount_fen: i64, at_ms: i64, collect_ms: i64) -> Result<(), String> {
        if self.status != "awaiting_payment" {
            return Err(format!("the order is {}", self.status));
        }
        if amount_fen < self.cash_fen {
            return Err(format!("{amount_fen} fen paid of {} fen", self.cash_fen));
        }
        self.status = "placed".into();
        self.paid_by = Some(payment_id.to_string());
        self.updated_at_ms = at_ms;
        self.collect_by_ms = at_ms + collect_ms;
        Ok(())
    }
}

/// A points-mall order: what it cost (and from which lots, to give them back), where it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Order {
    pub item: String,
    pub points: i64,
    pub lots: Vec<[i64; 2]>,
    /// placed | ready | shipped | collected | cancelled | expired
    pub status: String,
    pub placed_at_ms: i64,
    pub updated_at_ms: i64,
    /// Goods and benefits: when an order not collected expires.
    #[serde(skip_serializing_if = "is_zero")]
    pub collect_by_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coupon_id: Option<String>,
    /// Points + cash: the cash part, and the payment that paid it once paid.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cash_fen: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_by: Option<String>,
}
