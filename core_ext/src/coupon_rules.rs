//! Coupon templates and triggers as the rules file defines them (the compiled rules):
//! what `rules.rs` holds and `coupons.rs` issues and redeems. Rules layer: it names
//! nothing above it.

use rustc_hash::FxHashSet as HashSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CouponKind {
    /// `pct` percent off what is paid before the discount, at most `max_off_fen` (0: no cap).
    PercentOff { pct: i64, max_off_fen: i64 },
    /// `off_fen` off (满减 with a threshold).
    AmountOff { off_fen: i64 },
    /// An item in exchange (a coffee, a gift); `value_fen` is its cost for settlement.
    Item { item: String, value_fen: i64 },
    /// Free parking minutes at the car parks in scope.
    Parking { minutes: i64 },
}

impl CouponKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            CouponKind::PercentOff { .. } => "percent_off",
            CouponKind::AmountOff { .. } => "amount_off",
            CouponKind::Item { .. } => "item",
            CouponKind::Parking { .. } => "parking",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validity {
    /// Valid for N days from issue.
    Days(i64),
    /// Valid between two instants, whenever issued.
    Fixed { from_ms: i64, to_ms: i64 },
}

#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub bus: Option<HashSet<String>>,
    pub merchants: Option<HashSet<String>>,
    pub categories: Option<HashSet<String>>,
}

#[derive(Debug, Clone)]
pub struct CouponTemplate {
    pub id: String,
    pub kind: CouponKind,
    /// Least amount (before the discount) a redemption needs.
    pub threshold_fen: i64,
    pub validity: Validity,
    /// Coupons of this template the whole group may issue (a global budget).
    pub stock: Option<i64>,
    pub per_member_limit: Option<i64>,
    pub scope: Scope,
    /// Percent of the discount the merchant bears; the issuing business unit bears the rest.
    pub merchant_share_pct: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerKind {
    Register,
    /// A payment by a member whose previous payment is `dormant_days` or more ago.
    WinBack { dormant_days: i64 },
    /// One payment of at least `min_amount_fen`.
    Spend { min_amount_fen: i64 },
    /// Payments adding up to `min_total_fen` within `window_days` (local days).
    SpendWindow { min_total_fen: i64, window_days: i64 },
    /// A car park exit of a member (the parking agent's exit event).
    ParkingExit,
    /// The first event of a member in their birthday month, once a year.
    BirthdayMonth,
    /// A tier upgrade (to one of `to`, or any).
    TierUpgrade { to: Option<HashSet<String>> },
    /// An expiry reminder was due: points are about to expire.
    PointsExpiring,
    /// The first payment in a format the member never paid in (one of `formats`, or any).
    FirstFormat { formats: Option<HashSet<String>> },
}

impl TriggerKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TriggerKind::Register => "register",
            TriggerKind::WinBack { .. } => "win_back",
            TriggerKind::Spend { .. } => "spend",
            TriggerKind::SpendWindow { .. } => "spend_window",
            TriggerKind::ParkingExit => "parking_exit",
            TriggerKind::BirthdayMonth => "birthday_month",
            TriggerKind::TierUpgrade { .. } => "tier_upgrade",
            TriggerKind::PointsExpiring => "points_expiring",
            TriggerKind::FirstFormat { .. } => "first_format",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Trigger {
    pub id: String,
    pub kind: TriggerKind,
    pub coupon: String,
    pub tiers: Option<HashSet<String>>,
    pub tags: Option<HashSet<String>>,
    /// At most `max` coupons per member from this trigger within `per_days` days (0: ever).
    pub cap: Option<(i64, i64)>,
    /// Coupons this trigger may issue in all (a global budget).
    pub budget: Option<i64>,
}
