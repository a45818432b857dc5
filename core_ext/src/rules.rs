//! The compiled rule set: rates, caps, tiers, campaigns and behaviour rules, with
//! the lookups the accrual needs. Built from TOML by `rules_file`.

use serde::Deserialize;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

/// How a fractional point is turned into an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    Floor,
    HalfUp,
    Ceil,
}

impl Rounding {
    /// `num / den` for `num >= 0`, `den > 0`, rounded by this rule.
    pub fn divide(self, num: i128, den: i128) -> i128 {
        debug_assert!(num >= 0 && den > 0);
        match self {
            Rounding::Floor => num / den,
            Rounding::Ceil => (num + den - 1) / den,
            Rounding::HalfUp => (2 * num + den) / (2 * den),
        }
    }
}

/// An earning rate without floats: `points` points for every `per_fen` fen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub points: i64,
    pub per_fen: i64,
}

#[derive(Debug, Clone)]
pub struct BusinessUnit {
    pub id: String,
    pub format: String,
    pub rate: Option<Rate>,
    /// The largest payment the business unit takes (fen); a larger one is refused.
    pub max_payment_fen: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Merchant {
    pub id: String,
    pub bu: String,
    pub category: String,
    pub rate: Option<Rate>,
    /// The mall's commission on this merchant's payments, basis points, and its minimum.
    pub commission_bp: Option<i64>,
    pub commission_min_fen: i64,
    /// The merchant's own maximum payment (fen), in place of its business unit's.
    pub max_payment_fen: Option<i64>,
}

/// How business units settle points with the pool, and where breakage goes.
#[derive(Debug, Clone)]
pub struct SettlementRules {
    /// Fen a business unit pays the pool per 100 points it issues.
    pub fund_fen_per_100: HashMap<String, i64>,
    /// Fen the pool pays a business unit per 100 points spent in it (default: its
    /// redemption rate).
    pub paid_fen_per_100: HashMap<String, i64>,
    pub default_fund_fen_per_100: i64,
    pub default_commission_bp: i64,
    /// "pool" or a business unit id.
    pub breakage_to: String,
    pub breakage_fen_per_100: i64,
    /// How commissions and a merchant's share of a coupon's discount are rounded.
    pub split_rounding: crate::settlement::Rounding,
}

impl Default for SettlementRules {
    fn default() -> Self {
        SettlementRules {
            fund_fen_per_100: HashMap::default(),
            paid_fen_per_100: HashMap::default(),
            default_fund_fen_per_100: 100,
            default_commission_bp: 0,
            breakage_to: "pool".into(),
            breakage_fen_per_100: 100,
            split_rounding: crate::settlement::Rounding::HalfUp,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CategoryRule {
    pub formats: Option<HashSet<String>>,
    pub excluded: bool,
    pub rate: Option<Rate>,
    /// Days the points of such a payment stay pending (goods can be returned).
    pub return_window_days: i64,
}

/// What a point is worth when spent: `points` points pay `value_fen` fen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedemptionRate {
    pub points: i64,
    pub value_fen: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortfall {
    /// A refund takes back everything; the balance may go below zero.
    AllowNegative,
    /// A refund takes what there is; the rest is owed and taken from later earnings.
    RecordDebt,
}

#[derive(Debug, Clone)]
pub struct WalletRules {
    /// Lots expire at the end of the month this many months after earning (None: never).
    pub validity_months: Option<i64>,
    /// Days before a lot expires that the member is reminded (None: no reminders).
    pub reminder_days: Option<i64>,
    pub shortfall: Shortfall,
    pub default_rate: RedemptionRate,
    pub rates_by_bu: HashMap<String, RedemptionRate>,
    pub lottery_cost_points: i64,
}

impl Default for WalletRules {
    fn default() -> Self {
        WalletRules {
            validity_months: None,
            reminder_days: None,
            shortfall: Shortfall::AllowNegative,
            default_rate: RedemptionRate { points: 100, value_fen: 100 },
            rates_by_bu: HashMap::default(),
            lottery_cost_points: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tier {
    pub id: String,
    /// Earning multiplier in percent (150 = 1.5x).
    pub multiplier_pct: i64,
    /// Qualification thresholds over the rolling window (None: not a criterion).
    pub qualify_points: Option<i64>,
    pub qualify_spend_fen: Option<i64>,
    pub free_parking_minutes: i64,
    pub redemption_bonus_pct: i64,
    /// Extra multiplier on payments in the member's birthday month (100 = none).
    pub birthday_multiplier_pct: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Downgrade {
    /// At review, the member gets the highest tier the window qualifies for.
    ToQualified,
    /// At review, at most one step down.
    OneStep,
}

#[derive(Debug, Clone)]
pub struct TierPolicy {
    /// Qualification window in calendar months, the current one included.
    pub window_months: i32,
    /// Days from reaching (or renewing) a tier to its review.
    pub review_after_days: i64,
    pub downgrade: Downgrade,
    /// What a refund does to a tier reached with the spend it refunds.
    pub on_refund: OnRefund,
}

/// `[tier_policy] on_refund`: what a refund does to the member's tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRefund {
    /// Re-check at once: fall back to the highest tier the window still qualifies for,
    /// never below the tier held before the refunded payment.
    Recheck,
    /// Keep the tier until its review.
    KeepUntilReview,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stacking {
    /// Only the campaign worth the most points applies (the first listed on a tie).
    BestOf,
    /// Every matching campaign adds its own points, each computed on the base.
    Add,
    /// Multipliers compound in file order; fixed bonuses add.
    Multiply,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignKind {
    /// Extra points = tier-adjusted points x (pct - 100) / 100.
    Multiplier(i64),
    /// A fixed number of points per qualifying payment.
    Bonus(i64),
}

#[derive(Debug, Clone, Default)]
pub struct CampaignFilter {
    pub bus: Option<HashSet<String>>,
    pub formats: Option<HashSet<String>>,
    pub merchants: Option<HashSet<String>>,
    pub categories: Option<HashSet<String>>,
    pub tiers: Option<HashSet<String>>,
    pub tags: Option<HashSet<String>>,
    /// Only members this scheduled campaign reached before the payment (a campaign window
    /// for an audience: "gold members who visited F&B get double points on Saturday").
    pub enrolled_by: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Campaign {
    pub id: String,
    pub kind: CampaignKind,
    pub starts_at_ms: Option<i64>,
    pub ends_at_ms: Option<i64>,
    /// Local dates as day numbers since 1970-01-01.
    pub dates: Option<HashSet<i64>>,
    /// Local weekdays, Monday = 0.
    pub weekdays: Option<HashSet<u32>>,
    /// Local hours [from, to).
    pub hours: Option<(u32, u32)>,
    pub min_amount_fen: i64,
    pub filter: CampaignFilter,
    pub budget_points: Option<i64>,
    pub per_member_cap_points: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreakBonus {
    pub days: i64,
    pub points: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    pub registration_gift: i64,
    pub birthday_month_bonus: i64,
    pub sign_in_points: i64,
    pub sign_in_streaks: Vec<StreakBonus>,
    /// Consecutive days with a payment: bonus when the streak reaches `days`.
    pub spend_streak: Option<(StreakBonus, i64)>,
    /// Monthly spend task: (spend_fen to reach, points).
    pub monthly_task: Option<(i64, i64)>,
    pub referral_points: i64,
    pub referral_max_per_month: i64,
    pub review_points: i64,
    pub review_max_per_day: i64,
    /// Referral rewards an inviter may ever get (None: no lifetime cap).
    pub referral_max_total: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct RuleSet {
    pub version: String,
    pub rounding: Rounding,
    /// The group's local time, for dates, weekdays, hours and day/month boundaries.
    pub utc_offset_minutes: i64,
    pub per_transaction_cap: Option<i64>,
    pub per_member_daily_cap: Option<i64>,
    pub formats: HashMap<String, Rate>,
    pub business_units: HashMap<String, BusinessUnit>,
    pub merchants: HashMap<String, Merchant>,
    pub categories: HashMap<String, Vec<CategoryRule>>,
    pub tiers: Vec<Tier>,
    pub tier_policy: TierPolicy,
    pub stacking: Stacking,
    pub campaigns: Vec<Campaign>,
    /// Campaign indexes that may match a payment at each business unit.
    pub campaigns_by_bu: HashMap<String, Vec<usize>>,
    pub behaviour: Behaviour,
    /// Days after a guest payment within which registering credits it.
    pub guest_credit_days: i64,
    pub wallet: WalletRules,
    pub settlement: SettlementRules,
    /// Car parks by business unit id.
    pub car_parks: HashMap<String, crate::parking_rules::CarPark>,
    /// Real-time marketing: coupon templates by id, and the triggers that issue them.
    pub coupon_templates: HashMap<String, crate::coupon_rules::CouponTemplate>,
    pub triggers: Vec<crate::coupon_rules::Trigger>,
    /// Games, sign-in plans, burn-side promotions, partners, stored value, channel
    /// rates and profile rewards (`engage_rules`).
    pub engagement: crate::engage_rules::Engagement,
}

impl RuleSet {
    pub fn default_tier(&self) -> &Tier {
        &self.tiers[0]
    }

    /// The largest payment a merchant of a business unit takes: the merchant's own limit,
    /// else its business unit's (None: no limit but the events' own 10^12 fen).
    pub fn max_payment_fen(&self, bu_id: &str, merchant_id: &str) -> Option<i64> {
        self.merchants
            .get(merchant_id)
            .filter(|m| m.bu == bu_id)
            .and_then(|m| m.max_payment_fen)
            .or_else(|| self.business_units.get(bu_id).and_then(|b| b.max_payment_fen))
    }

    pub fn tier_index(&self, id: Option<&str>) -> usize {
        id.and_then(|id| self.tiers.iter().position(|t| t.id == id)).unwrap_or(0)
    }

    /// The tier a member earns at; an unknown or missing tier earns at the default.
    pub fn tier(&self, id: Option<&str>) -> &Tier {
        &self.tiers[self.tier_index(id)]
    }

    /// The category a payment earns under: a configured merchant's own category wins.
    pub fn category_of<'a>(&'a self, merchant_id: &str, event_category: &'a str) -> &'a str {
        self.merchants
            .get(merchant_id)
            .map_or(event_category, |m| m.category.as_str())
    }

    /// The return window (days) of a payment's category at a business unit (0: none).
    pub fn return_window_days(&self, bu: &BusinessUnit, category: &str) -> i64 {
        self.categories.get(category).map_or(0, |rules| {
            rules
                .iter()
                .find(|r| r.formats.as_ref().is_none_or(|f| f.contains(&bu.format)))
                .map_or(0, |r| r.return_window_days)
        })
    }

    /// Fen the issuing business unit pays the pool for `points`.
    pub fn funding_fen(&self, bu_id: &str, points: i64) -> i64 {
        let per100 = self.settlement.fund_fen_per_100.get(bu_id).copied().unwrap_or(self.settlement.default_fund_fen_per_100);
        crate::settlement::value_of(points, per100, 100)
    }

    /// Fen the pool pays a business unit for `points` spent in it.
    pub fn paid_fen(&self, bu_id: &str, points: i64) -> i64 {
        match self.settlement.paid_fen_per_100.get(bu_id) {
            Some(&per100) => crate::settlement::value_of(points, per100, 100),
            None => {
                let r = self.redemption_rate(bu_id);
                crate::settlement::value_of(points, r.value_fen, r.points)
            }
        }
    }

    /// The split of a payment of `gross_fen` at `bu_id` / `merchant_id` in which
    /// `points_used` points were used at the till (valued at the unit's rate).
    pub fn split_of(&self, bu_id: &str, merchant_id: &str, gross_fen: i64, points_used: i64) -> crate::settlement::Split {
        let (bp, min_fen) = self.contract(merchant_id);
        crate::settlement::split_payment(gross_fen, bp, min_fen, self.paid_fen(bu_id, points_used), self.settlement.split_rounding)
    }

    /// (commission basis points, minimum fen) of a merchant's contract.
    pub fn contract(&self, merchant_id: &str) -> (i64, i64) {
        match self.merchants.get(merchant_id) {
            Some(m) => (m.commission_bp.unwrap_or(self.settlement.default_commission_bp), m.commission_min_fen),
            None => (self.settlement.default_commission_bp, 0),
        }
    }

    /// The redemption rate at a business unit.
    pub fn redemption_rate(&self, bu_id: &str) -> RedemptionRate {
        self.wallet.rates_by_bu.get(bu_id).copied().unwrap_or(self.wallet.default_rate)
    }

    /// The base earning rate of a payment, or `None` when it earns nothing.
    /// An excluded category earns nothing whatever else is set; otherwise a
    /// merchant's rate beats a category rule, which beats the business unit's,
    /// which beats the format's.
    pub fn base_rate(&self, bu: &BusinessUnit, merchant_id: &str, category: &str) -> Option<Rate> {
        let rule = self.categories.get(category).and_then(|rules| {
            rules
                .iter()
                .find(|r| r.formats.as_ref().is_none_or(|f| f.contains(&bu.format)))
        });
        if rule.is_some_and(|r| r.excluded) {
            return None;
        }
        if let Some(rate) = self.merchants.get(merchant_id).and_then(|m| m.rate) {
            return Some(rate);
        }
        rule.and_then(|r| r.rate)
            .or(bu.rate)
            .or_else(|| self.formats.get(&bu.format).copied())
    }
}
